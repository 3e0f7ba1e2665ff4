//! PostgreSQL and Redis faults: clear 503s, nothing lost, recovery without restart.
