//! The integration tests: one binary, real PostgreSQL and Redis, usher over real HTTP.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod auth;
mod bad_input;
mod binary;
mod check;
mod cli;
mod cluster;
mod connections;
mod deploy;
mod escalation;
mod failover;
mod faults;
mod gateway;
mod helpers;
mod keys;
mod login_limits;
mod operations;
mod refresh;
mod revocation;
mod roles;
mod seams;
mod security;
mod sentinel;
mod tls;
mod topology;
mod users;
