-- Indexes the background pruning needs: expired sessions and old login history are found
-- without scanning the whole table.
create index if not exists sessions_expires_at on sessions (expires_at);
create index if not exists login_history_at on login_history (at);
