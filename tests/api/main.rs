//! The integration tests: one binary, real PostgreSQL and Redis, usher over real HTTP.

mod auth;
mod bad_input;
mod check;
mod faults;
mod gateway;
mod helpers;
