-- A Supabase user deleted: their profile and everything that hangs off it go too, and so
-- do the session records they claimed (they hold copies of the answers). A user
-- soft-deleted by Supabase Auth's admin API (`should_soft_delete`: an UPDATE that sets
-- auth.users.deleted_at and scrambles the email, phone and metadata, keeping the row)
-- takes their data along exactly as a hard DELETE of the row does: one function (it reads
-- only old.id), fired by both triggers; only the first soft delete fires it.
--
-- SECURITY DEFINER: Supabase Auth deletes as its own role, which has no rights on our
-- tables. Private, so PostgREST never exposes it.
create or replace function autopilot_private.handle_auth_user_deleted()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
begin
  delete from autopilot.sessions where claimed_by_profile_id = old.id;
  delete from autopilot.profiles where id = old.id;
  return old;
end
$$;
revoke all on function autopilot_private.handle_auth_user_deleted()
  from public, anon, authenticated;

create trigger autopilot_on_auth_user_deleted
  after delete on auth.users
  for each row execute function autopilot_private.handle_auth_user_deleted();

create trigger autopilot_on_auth_user_soft_deleted
  after update of deleted_at on auth.users
  for each row
  when (new.deleted_at is not null and old.deleted_at is null)
  execute function autopilot_private.handle_auth_user_deleted();
