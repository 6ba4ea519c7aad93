//! gatehouse's integration tests, one binary: each module was once its own test file
//! (`cargo test --test it fleet::` runs what `tests/fleet.rs` held). The shared harness
//! (`common`: backends, the gateway process, raw clients, config builders) and the auth
//! helpers are compiled once for all of them instead of once per file, which is most of the
//! link time and target-directory size the separate binaries cost.
//!
//! Every test starts its own gateway, upstreams and helper servers on ephemeral ports and temp
//! directories: modules share one process and run in parallel threads, so none may set the
//! process environment, change the working directory or hold a fixed port.

mod auth_support;
mod common;

mod access_log;
mod acl;
mod acme;
mod auth_jwt;
mod auth_key;
mod balancing;
mod basic_auth;
mod build_info;
mod cache;
mod certificates;
mod compression;
mod concurrency;
mod config_errors;
mod cors;
mod demo;
mod discovery;
mod docs_examples;
mod edge_conveniences;
mod error_responses;
mod errors;
mod explain;
mod fault_injection;
mod fleet;
mod flood;
mod forward_auth;
mod framing;
mod fuzz_core;
mod fuzz_plugins;
mod golden_conf;
mod health;
mod hmac_auth;
mod jwks;
mod kong_import;
mod layering;
mod metrics;
mod mtls_auth;
mod oauth2_introspection;
mod observability_assets;
mod pipelining;
mod plugins_edge;
mod process;
mod rate_limit;
mod rate_limit_redis;
mod reload;
mod request_body;
mod request_mirror;
mod resilience;
mod retries;
mod routing;
mod security_bodies;
mod security_headers;
mod security_paths;
mod slow_clients;
mod tls;
mod tracing;
mod traffic_split;
mod transform;
mod upgrade;
mod upstream_backends;
