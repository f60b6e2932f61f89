-- A user soft-deleted by Supabase Auth's admin API (`should_soft_delete`: an UPDATE that
-- sets auth.users.deleted_at and scrambles the email, phone and metadata, keeping the row)
-- takes their data along, exactly as a hard DELETE of the row does.

-- Supabase's auth.users has had deleted_at for years; a plain Postgres that got the local
-- shim before the shim had the column gets it here. Checked first, because on Supabase the
-- migration role does not own auth.users and even `add column if not exists` needs that.
do $$
begin
  if not exists (
    select 1 from pg_catalog.pg_attribute
     where attrelid = 'auth.users'::regclass and attname = 'deleted_at' and not attisdropped
  ) then
    alter table auth.users add column deleted_at timestamptz;
  end if;
end
$$;

-- The same function as the delete trigger (it reads only old.id): one definition of what a
-- user's data is. Only the first soft delete fires it; later updates of the row do not.
drop trigger if exists autopilot_on_auth_user_soft_deleted on auth.users;
create trigger autopilot_on_auth_user_soft_deleted
  after update of deleted_at on auth.users
  for each row
  when (new.deleted_at is not null and old.deleted_at is null)
  execute function autopilot_private.handle_auth_user_deleted();

select autopilot_private.secure_schema();
