//! What every inetkit daemon runs on: socket activation, the server loop with its limits and
//! lifecycle, configuration, TLS, logging, the bounded line reader and line connection, and the
//! session skeleton line protocols run on.
//!
//! A daemon's `main` is [`daemon::run`]: it parses the command line, loads the config, sets up
//! logging and hands the daemon its listeners and a [`server::Server`] to serve them on. Users
//! and logins are `inetkit-auth`, the mail store `inetkit-maildir`, the submission spool
//! `inetkit-spool`: a daemon that needs none of them (echo, dns-forwarder) links none of them.
#![warn(missing_docs)]

pub mod activation;
pub mod cli;
pub mod config;
pub mod conn;
pub mod daemon;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
pub mod lines;
pub mod log;
pub mod proxy;
pub mod ratelimit;
pub mod server;
pub mod session;
pub mod stream;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod tls;
