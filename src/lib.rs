//! gatehouse: an edge API gateway on Cloudflare's Pingora.
//!
//! The library builds the whole gateway so the binary, the integration tests and the
//! benchmarks share one code path. See `gateway.rs` for the map of Pingora phases to modules.
#![forbid(unsafe_code)]
#![warn(unreachable_pub)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod acme;
pub mod admin;
pub mod app;
pub mod config;
pub mod ctx;
pub mod demo;
pub mod edge;
pub mod errors;
pub mod explain;
pub mod flood;
pub mod forward;
pub mod gateway;
pub mod grpc;
pub mod https_redirect;
pub mod import;
pub mod limits;
pub mod logging;
pub mod model;
pub mod observe;
pub mod owned_headers;
pub mod plugins;
pub mod probe;
pub mod process;
pub mod request;
pub mod resilience;
pub mod router;
pub mod runtime;
pub mod sdnotify;
pub mod server;
pub mod signals;
pub mod tls;
pub mod upgrade;
pub mod upstream;
pub mod util;
pub mod websocket;

pub use app::Shared;
