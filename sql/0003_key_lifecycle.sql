-- The key refresh-token successors are derived with (HMAC-SHA256 of the used token), so that
-- every use of a refresh token within its grace window returns the same successor. One row,
-- made by the first usher to start. It sits next to the token hashes on purpose: a successor
-- is derived from the used token's plaintext, which is never stored, so the key alone (or with
-- the hashes) yields no token.
create table refresh_secret (
    id         int primary key default 1 check (id = 1),
    secret     bytea not null,
    created_at timestamptz not null default now()
);

-- A signing key retired at once by `usher keys retire`: it leaves the JWKS and stops
-- verifying. Rotated-out keys also retire by themselves, computed from the next key's
-- `created_at`.
alter table signing_keys add column retired_at timestamptz;
