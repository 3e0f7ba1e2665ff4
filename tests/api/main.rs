//! The integration tests: one binary, real PostgreSQL and Redis, usher over real HTTP.

mod auth;
mod bad_input;
mod cli;
mod faults;
mod helpers;
mod roles;
mod security;
mod users;
