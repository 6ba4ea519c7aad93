//! gatehouse: an edge API gateway on Cloudflare's Pingora.
//!
//! The library builds the whole gateway so the binary, the integration tests and the
//! benchmarks share one code path. See `gateway.rs` for the map of Pingora phases to modules.
#![forbid(unsafe_code)]

pub mod admin;
pub mod config;
pub mod ctx;
pub mod demo;
pub mod errors;
pub mod forward;
pub mod gateway;
pub mod plugins;
pub mod request;
pub mod router;
pub mod runtime;
pub mod server;
pub mod signals;
pub mod upstream;

pub use runtime::Shared;
