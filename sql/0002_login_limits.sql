-- E-mails are unique by their canonical form, computed by usher (one Rust function, used to
-- store, look up and count them) rather than by lower(), whose Unicode rules depend on the
-- database's locale. usher fills the column for existing users right after this migration;
-- it stays null only for an account whose canonical e-mail another, older account already has.
alter table users add column email_canonical text;
drop index users_email_key;
create unique index users_email_key on users (email_canonical);
-- Finds the users still to fill cheaply: usher looks for them at every start.
create index users_email_canonical_missing on users (id) where email_canonical is null;

-- Login attempts counted here while Redis is down: one row per account or unknown e-mail,
-- reserved before the password is hashed.
create table login_attempts (
    key         text primary key,
    count       integer not null,
    window_ends timestamptz not null
);
