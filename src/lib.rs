//! usher: authentication and authorization service and gateway authorizer of the online cinema.

pub mod routes;
