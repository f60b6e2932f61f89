-- Supabase's default privileges: the API roles get every table, sequence and function
-- created by the migration role. Reproduced here so that local runs are as exposed as a
-- hosted project: only RLS and explicit REVOKEs protect the data, here as there.
alter default privileges grant all on tables to anon, authenticated, service_role;
alter default privileges grant all on sequences to anon, authenticated, service_role;
alter default privileges grant execute on functions to anon, authenticated, service_role;
