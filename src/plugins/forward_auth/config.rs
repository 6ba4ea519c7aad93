//! forward-auth's config: the YAML entry, its checks (each error at its own path, the URL
//! never echoed) and the build of the plugin with its surviving state.

use super::cache::DecisionCache;
use super::{
    ForwardAuth, State, X_FORWARDED_FOR, X_FORWARDED_HOST, X_FORWARDED_METHOD, X_FORWARDED_PROTO,
    X_FORWARDED_URI, X_REQUEST_ID,
};
use crate::config::diag::ErrorSink;
use crate::config::units::Dur;
use crate::plugins::{outbound, Build};
use http::header::{
    CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, HOST, TE, TRAILER, TRANSFER_ENCODING, UPGRADE,
};
use http::{HeaderName, Method};
use once_cell::sync::OnceCell;
use serde::Deserialize;
use std::collections::HashMap;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct CacheConfig {
    ttl: Dur,
    /// Request headers whose values key the cache; `None`: the `request_headers`.
    key: Option<Vec<String>>,
    include_method: bool,
    include_path: bool,
    max_entries: usize,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            ttl: Dur::secs(300),
            key: None,
            include_method: false,
            include_path: false,
            max_entries: 10_000,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    url: Option<String>,
    method: String,
    timeout: Dur,
    connect_timeout: Option<Dur>,
    request_headers: Vec<String>,
    upstream_headers: Vec<String>,
    client_headers: Vec<String>,
    consumer_header: Option<String>,
    run_on_preflight: bool,
    ca_file: Option<String>,
    cache: CacheConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            url: None,
            method: "GET".into(),
            timeout: Dur::secs(1),
            connect_timeout: None,
            request_headers: vec!["Authorization".into()],
            upstream_headers: Vec::new(),
            client_headers: vec!["WWW-Authenticate".into()],
            consumer_header: None,
            run_on_preflight: true,
            ca_file: None,
            cache: CacheConfig::default(),
        }
    }
}

/// Method of the auth call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum AuthMethod {
    Fixed(Method),
    /// The client request's method.
    Original,
}

/// Connection-level headers and the ones the HTTP layer computes: never copied either way.
fn framing(h: &HeaderName) -> bool {
    *h == CONNECTION
        || *h == TRANSFER_ENCODING
        || *h == CONTENT_LENGTH
        || *h == TE
        || *h == TRAILER
        || *h == UPGRADE
        || *h == HOST
        || matches!(h.as_str(), "keep-alive" | "proxy-connection" | "expect")
}

/// Headers the gateway sets on the auth call itself.
fn set_on_call(h: &HeaderName) -> bool {
    [
        &X_FORWARDED_METHOD,
        &X_FORWARDED_URI,
        &X_FORWARDED_HOST,
        &X_FORWARDED_PROTO,
        &X_FORWARDED_FOR,
        &X_REQUEST_ID,
    ]
    .contains(&h)
}

/// Headers the gateway sets (or strips) on the upstream request after the plugins ran
/// (`forward::rewrite_request`): a copy from the auth service would be lost or wrong. Any
/// spelling counts (`X_Real_IP` is `X-Real-IP` to a CGI-style upstream).
fn set_upstream(h: &HeaderName) -> bool {
    let n = h.as_str().as_bytes();
    crate::owned_headers::IDENTITY
        .iter()
        .chain(&["x-forwarded-for", "x-forwarded-proto"])
        .any(|o| crate::owned_headers::same_name(n, o.as_bytes()))
}

/// Parses a list of header names, reporting each bad or refused one at its own path.
fn header_list(
    s: &mut ErrorSink,
    path: &str,
    names: &[String],
    refuse: &dyn Fn(&HeaderName) -> Option<&'static str>,
) -> Vec<HeaderName> {
    let mut out: Vec<HeaderName> = Vec::with_capacity(names.len());
    for (i, n) in names.iter().enumerate() {
        let p = format!("{path}[{i}]");
        match HeaderName::from_bytes(n.as_bytes()) {
            Ok(h) => {
                if let Some(why) = refuse(&h) {
                    s.error(&p, format!("{n:?} {why}"));
                } else if !out.contains(&h) {
                    out.push(h);
                }
            }
            Err(_) => s.error(&p, format!("invalid header name {n:?}")),
        }
    }
    out
}

pub(super) fn build(b: Build<'_, '_>, cfg: Config) -> Option<ForwardAuth> {
    let Build { c, path, env, raw } = b;
    let cp = format!("{path}.config");
    let mut s = ErrorSink { c, failed: false };

    let url = outbound::service_url(
        &mut s,
        &format!("{cp}.url"),
        cfg.url.as_deref(),
        "the auth service's",
        "the client's request_headers are sent instead",
    );

    let method = if cfg.method.eq_ignore_ascii_case("original") {
        AuthMethod::Original
    } else {
        match Method::from_bytes(cfg.method.to_ascii_uppercase().as_bytes()) {
            Ok(m) => AuthMethod::Fixed(m),
            Err(_) => {
                s.error(
                    &format!("{cp}.method"),
                    format!(
                        "invalid method {:?} (a method such as GET, or original)",
                        cfg.method
                    ),
                );
                AuthMethod::Fixed(Method::GET)
            }
        }
    };

    let timeout = cfg.timeout.0;
    if timeout.is_zero() {
        s.error(&format!("{cp}.timeout"), "must be greater than 0");
    }
    let connect_timeout = match cfg.connect_timeout {
        None => timeout,
        Some(Dur(d)) => {
            if d.is_zero() {
                s.error(&format!("{cp}.connect_timeout"), "must be greater than 0");
            } else if d > timeout {
                s.error(
                    &format!("{cp}.connect_timeout"),
                    "must not be longer than timeout (the whole call)",
                );
            }
            d
        }
    };

    let request_headers = header_list(
        &mut s,
        &format!("{cp}.request_headers"),
        &cfg.request_headers,
        &|h| {
            if framing(h) {
                Some("is a connection header and is never copied")
            } else if set_on_call(h) {
                Some("is set by the gateway on the auth call")
            } else {
                None
            }
        },
    );
    let upstream_headers = header_list(
        &mut s,
        &format!("{cp}.upstream_headers"),
        &cfg.upstream_headers,
        &|h| {
            if framing(h) || *h == CONTENT_TYPE {
                Some("is a connection or body header and is never copied")
            } else if set_upstream(h) {
                Some("is set by the gateway on the upstream request")
            } else {
                // Authorization and Cookie are allowed: an auth service may swap the
                // client's credential for an internal one (token exchange).
                None
            }
        },
    );
    for (i, h) in cfg.upstream_headers.iter().enumerate() {
        if let Ok(n) = HeaderName::from_bytes(h.as_bytes()) {
            if request_headers.contains(&n) {
                s.error(
                    &format!("{cp}.upstream_headers[{i}]"),
                    format!("{h:?} is also in request_headers: the client's value would be sent to the auth service, then replaced"),
                );
            }
        }
    }
    let client_headers = header_list(
        &mut s,
        &format!("{cp}.client_headers"),
        &cfg.client_headers,
        &|h| {
            (framing(h) || *h == CONTENT_TYPE)
                .then_some("is a connection or body header and is never copied")
        },
    );
    let consumer_header = cfg.consumer_header.as_ref().and_then(|n| {
        let h = HeaderName::from_bytes(n.as_bytes()).ok();
        if h.is_none() {
            s.error(
                &format!("{cp}.consumer_header"),
                format!("invalid header name {n:?}"),
            );
        }
        h
    });

    let cache_cfg = &cfg.cache;
    let key_headers = match &cache_cfg.key {
        None => request_headers.clone(),
        Some(k) => header_list(&mut s, &format!("{cp}.cache.key"), k, &|_| None),
    };
    if !cache_cfg.ttl.0.is_zero() {
        if cache_cfg.max_entries == 0 {
            s.error(
                &format!("{cp}.cache.max_entries"),
                "must be at least 1 (cache.ttl: 0s switches the cache off)",
            );
        }
        if key_headers.is_empty() {
            s.error(
                &format!("{cp}.cache.key"),
                "needs at least one header: without one every client would share one cached decision (cache.ttl: 0s switches the cache off)",
            );
        }
        // A header the auth service sees but the cache key ignores would let two clients
        // that differ only in it share a decision.
        for (i, n) in cfg.request_headers.iter().enumerate() {
            if let Ok(h) = HeaderName::from_bytes(n.as_bytes()) {
                if !key_headers.is_empty()
                    && !key_headers.contains(&h)
                    && !set_on_call(&h)
                    && !framing(&h)
                {
                    s.error(
                        &format!("{cp}.request_headers[{i}]"),
                        format!("{n:?} is sent to the auth service but is not in cache.key: clients that differ only in it would share a cached decision (add it to cache.key, or set cache.ttl: 0s)"),
                    );
                }
            }
        }
    }

    let ca = outbound::Ca::load(&mut s, &format!("{cp}.ca_file"), cfg.ca_file.as_deref());

    if s.failed {
        return None;
    }
    let url = url?;

    let times = (timeout, connect_timeout);
    let state =
        outbound::entry_state(&mut s, &cp, "forward-auth", env, raw, times, ca, |client| {
            Ok(State {
                client,
                cache: DecisionCache::new(cache_cfg.ttl.0, cache_cfg.max_entries),
                warn: outbound::WarnGate::new(),
            })
        })?;
    let consumers = if consumer_header.is_some() {
        env.consumer_index()
    } else {
        HashMap::new()
    };
    Some(ForwardAuth {
        target: outbound::redacted(&url),
        url,
        method,
        request_headers,
        upstream_headers,
        client_headers,
        consumer_header,
        consumers,
        run_on_preflight: cfg.run_on_preflight,
        key_headers,
        key_method: cache_cfg.include_method,
        key_path: cache_cfg.include_path,
        state,
        route: env.route.map(Box::from),
        handles: OnceCell::new(),
    })
}
