-- Who may open the live event stream without an Authorization header. EventSource cannot
-- send one, so a signed-in browser trades its bearer token for a short-lived, single-use
-- ticket (stored hashed) to put in the stream's URL. A native EventSource reconnects to the
-- very URL it was opened with (the ticket, now spent, included), sending only Last-Event-ID
-- and its cookies. So the first use of a ticket also hands out a stream credential, set as
-- an HttpOnly cookie scoped to the events path; a reconnect is accepted with the spent
-- ticket AND a live credential of the same user, never with the ticket alone (someone who
-- saw the URL later has no cookie). Both live no longer than the access token that bought
-- the ticket (`not_after`, its exp).
create table autopilot.event_tickets (
  ticket_hash text primary key check (ticket_hash ~ '^[0-9a-f]{64}$'),
  profile_id uuid not null,
  expires_at timestamptz not null,
  created_at timestamptz not null default now(),
  used_at timestamptz,
  not_after timestamptz
);
create index event_tickets_expires_idx on autopilot.event_tickets (expires_at);
alter table autopilot.event_tickets enable row level security;
revoke all on autopilot.event_tickets from public, anon, authenticated;
grant all on autopilot.event_tickets to service_role;
grant select on autopilot.event_tickets to authenticated;

create table autopilot.event_stream_credentials (
  credential_hash text primary key check (credential_hash ~ '^[0-9a-f]{64}$'),
  profile_id uuid not null,
  -- Short, and pushed forward by every accepted (re)connect, never past not_after.
  expires_at timestamptz not null,
  not_after timestamptz not null,
  created_at timestamptz not null default now(),
  check (expires_at <= not_after)
);
create index event_stream_credentials_expires_idx
  on autopilot.event_stream_credentials (expires_at);
alter table autopilot.event_stream_credentials enable row level security;
revoke all on autopilot.event_stream_credentials from public, anon, authenticated;
grant all on autopilot.event_stream_credentials to service_role;
grant select on autopilot.event_stream_credentials to authenticated;

create or replace function autopilot.issue_event_ticket(
  p_ticket_hash text, p_profile_id uuid, p_ttl_seconds integer, p_not_after timestamptz
) returns timestamptz
language plpgsql
set search_path = ''
as $$
declare
  expiry timestamptz := least(now() + make_interval(secs => p_ttl_seconds), p_not_after);
begin
  if p_not_after is null or p_not_after <= now() then
    perform autopilot_private.fail(401, 'invalid_token', 'The access token has expired.', null);
  end if;
  -- Spent tickets stay until their token expires: reconnects present them.
  delete from autopilot.event_tickets
   where coalesce(not_after, expires_at) < now() - interval '1 hour';
  delete from autopilot.event_stream_credentials where expires_at < now() - interval '1 hour';
  insert into autopilot.event_tickets (ticket_hash, profile_id, expires_at, not_after)
  values (p_ticket_hash, p_profile_id, expiry, p_not_after);
  return expiry;
end
$$;
revoke all on function autopilot.issue_event_ticket(text, uuid, integer, timestamptz)
  from public, anon, authenticated;
grant execute on function autopilot.issue_event_ticket(text, uuid, integer, timestamptz)
  to service_role;

-- Opens (or re-opens) a stream with a ticket. Returns null when refused, else
-- {profileId, notAfter, credentialExpiresAt, issued}: `issued` when this was the ticket's
-- first use and p_new_credential_hash was stored; otherwise p_credential_hash was renewed.
create or replace function autopilot.open_event_stream(
  p_ticket_hash text,
  p_credential_hash text,
  p_new_credential_hash text,
  p_credential_ttl_seconds integer
) returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  t autopilot.event_tickets;
  c autopilot.event_stream_credentials;
  ttl interval := make_interval(secs => p_credential_ttl_seconds);
  ticket_not_after timestamptz;
begin
  select * into t from autopilot.event_tickets where ticket_hash = p_ticket_hash for update;
  if not found then
    return null;
  end if;
  ticket_not_after := coalesce(t.not_after, t.expires_at);
  if ticket_not_after <= now() then
    return null;
  end if;

  if t.used_at is null then
    if t.expires_at <= now() then
      return null;
    end if;
    update autopilot.event_tickets set used_at = now() where ticket_hash = p_ticket_hash;
    insert into autopilot.event_stream_credentials (credential_hash, profile_id, expires_at, not_after)
    values (p_new_credential_hash, t.profile_id, least(now() + ttl, ticket_not_after),
            ticket_not_after)
    returning * into c;
    return jsonb_build_object('profileId', t.profile_id, 'notAfter', ticket_not_after,
                              'credentialExpiresAt', c.expires_at, 'issued', true);
  end if;

  -- A spent ticket: a reconnect, accepted only with a live credential of the same user.
  if p_credential_hash is null then
    return null;
  end if;
  update autopilot.event_stream_credentials
     set expires_at = least(now() + ttl, not_after)
   where credential_hash = p_credential_hash
     and profile_id = t.profile_id
     and expires_at > now()
  returning * into c;
  if not found then
    return null;
  end if;
  return jsonb_build_object('profileId', t.profile_id, 'notAfter', ticket_not_after,
                            'credentialExpiresAt', c.expires_at, 'issued', false);
end
$$;
revoke all on function autopilot.open_event_stream(text, text, text, integer)
  from public, anon, authenticated;
grant execute on function autopilot.open_event_stream(text, text, text, integer)
  to service_role;
