-- The whole data model of usher. PostgreSQL holds the truth; Redis only mirrors revocations.

create table users (
    id            uuid primary key,
    email         text not null,
    password_hash text not null,
    disabled      boolean not null default false,
    -- bumped whenever the user's roles change; access tokens carry the value they were issued with
    roles_version bigint not null default 0,
    roles_changed_at timestamptz,
    created_at    timestamptz not null default now(),
    updated_at    timestamptz not null default now()
);
create unique index users_email_key on users (lower(email));

create table permissions (
    name        text primary key,
    description text not null,
    builtin     boolean not null
);

create table roles (
    id          uuid primary key,
    name        text not null,
    description text not null default '',
    builtin     boolean not null default false,
    created_at  timestamptz not null default now(),
    updated_at  timestamptz not null default now(),
    constraint roles_name_key unique (name)
);

create table role_permissions (
    role_id    uuid not null references roles (id) on delete cascade,
    permission text not null references permissions (name) on delete cascade,
    primary key (role_id, permission)
);

create table user_roles (
    user_id uuid not null references users (id) on delete cascade,
    role_id uuid not null references roles (id) on delete cascade,
    primary key (user_id, role_id)
);
create index user_roles_role on user_roles (role_id);

-- One row; bumped on every change of roles or grants so replicas can tell their snapshot is old.
create table catalog_version (
    id      int primary key default 1 check (id = 1),
    version bigint not null default 0
);
insert into catalog_version (id, version) values (1, 0);

create table sessions (
    id           uuid primary key,
    user_id      uuid not null references users (id) on delete cascade,
    created_at   timestamptz not null default now(),
    last_used_at timestamptz not null default now(),
    expires_at   timestamptz not null,
    revoked_at   timestamptz,
    ip           text,
    user_agent   text
);
create index sessions_user on sessions (user_id, created_at desc);
create index sessions_revoked_at on sessions (revoked_at) where revoked_at is not null;

-- Refresh tokens, stored only as SHA-256 hashes. A used token keeps its row so that a replay
-- can be told from an unknown token.
create table refresh_tokens (
    hash       bytea primary key,
    session_id uuid not null references sessions (id) on delete cascade,
    issued_at  timestamptz not null default now(),
    used_at    timestamptz
);
create index refresh_tokens_session on refresh_tokens (session_id);

create table login_history (
    id         bigserial primary key,
    user_id    uuid not null references users (id) on delete cascade,
    event      text not null,
    at         timestamptz not null default now(),
    ip         text,
    user_agent text,
    session_id uuid
);
create index login_history_user_at on login_history (user_id, at desc, id desc);

create table signing_keys (
    kid         text primary key,
    algorithm   text not null,
    -- PKCS#8 DER of an Ed25519 key, or the HS256 secret
    private_key bytea not null,
    -- raw Ed25519 public key; empty for HS256
    public_key  bytea not null,
    created_at  timestamptz not null default now()
);
