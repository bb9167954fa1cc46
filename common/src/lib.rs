//! What every inetkit daemon shares: socket activation, the server loop with its limits and
//! lifecycle, configuration, TLS, logging and the bounded line reader.
//!
//! A daemon's `main` is `daemon::run`: it parses the command line, loads the config, sets up
//! logging and hands the daemon its listeners and a [`server::Server`] to serve them on.

pub mod activation;
pub mod auth;
pub mod cli;
pub mod config;
pub mod conn;
pub mod daemon;
pub mod lines;
pub mod log;
#[cfg(feature = "mail")]
pub mod mail;
pub mod ratelimit;
pub mod server;
/// The smtp-submit spool, shared with `inetkit queue`.
#[cfg(feature = "mail")]
pub mod spool;
pub mod tls;
