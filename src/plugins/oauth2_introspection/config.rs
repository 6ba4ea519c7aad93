//! oauth2-introspection's config: the YAML entry, its checks (each error at its own path;
//! neither the endpoint's query nor the secret ever echoed) and the build of the plugin with
//! the state that survives reloads.

use super::cache::{DecisionCache, Flights};
use super::call::form_encode;
use super::{ClientAuth, ConsumerClaim, Endpoint, Oauth2Introspection, OnOutage, State};
use crate::config::diag::ErrorSink;
use crate::config::units::Dur;
use crate::plugins::{outbound, Build};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use http::HeaderValue;
use once_cell::sync::OnceCell;
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct CacheConfig {
    max_entries: usize,
    max_ttl: Dur,
    negative_ttl: Dur,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            max_entries: 10_000,
            max_ttl: Dur::secs(300),
            negative_ttl: Dur::secs(10),
        }
    }
}

/// `auth_method`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum AuthMethod {
    ClientSecretBasic,
    ClientSecretPost,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    endpoint: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
    auth_method: AuthMethod,
    timeout: Dur,
    ca_file: Option<String>,
    required_scopes: Vec<String>,
    consumer_claim: ConsumerClaim,
    cache: CacheConfig,
    on_outage: OnOutage,
    hide_credentials: bool,
    run_on_preflight: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            endpoint: None,
            client_id: None,
            client_secret: None,
            auth_method: AuthMethod::ClientSecretBasic,
            timeout: Dur::secs(2),
            ca_file: None,
            required_scopes: Vec::new(),
            consumer_claim: ConsumerClaim::ClientId,
            cache: CacheConfig::default(),
            on_outage: OnOutage::Reject,
            hide_credentials: true,
            run_on_preflight: true,
        }
    }
}

/// RFC 6749 3.3 `scope-token`: `1*( %x21 / %x23-5B / %x5D-7E )`.
fn scope_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b))
}

pub(super) fn build(b: Build<'_, '_>, cfg: Config) -> Option<Oauth2Introspection> {
    let Build { c, path, env, raw } = b;
    let cp = format!("{path}.config");
    let mut s = ErrorSink { c, failed: false };

    let url = outbound::service_url(
        &mut s,
        &format!("{cp}.endpoint"),
        cfg.endpoint.as_deref(),
        "the introspection endpoint's",
        "set client_id and client_secret",
    );

    let client_id = match cfg.client_id.as_deref() {
        Some(id) if !id.is_empty() => Some(id),
        _ => {
            s.error(
                &format!("{cp}.client_id"),
                "is required (the gateway's client id at the authorization server)",
            );
            None
        }
    };
    // Like basic-auth's plain passwords: a secret only from the environment, never from the
    // file's own text (which ends up in backups, repositories and tickets).
    let sp = format!("{cp}.client_secret");
    let secret = match cfg.client_secret.as_deref() {
        None => {
            s.error(
                &sp,
                "is required, from the environment: client_secret: ${NAME}",
            );
            None
        }
        Some(_) if !s.c.from_env(&sp) => {
            s.error(
                &sp,
                "a literal client secret is refused: take it from the environment (client_secret: ${NAME})",
            );
            None
        }
        Some("") => {
            s.error(&sp, "is empty (its environment variable is set to \"\")");
            None
        }
        Some(sec) => Some(sec),
    };

    let timeout = cfg.timeout.0;
    if timeout.is_zero() {
        s.error(&format!("{cp}.timeout"), "must be greater than 0");
    }

    let mut required_scopes: Vec<Box<str>> = Vec::new();
    for (i, sc) in cfg.required_scopes.iter().enumerate() {
        if !scope_token(sc) {
            s.error(
                &format!("{cp}.required_scopes[{i}]"),
                format!("{sc:?} is not a scope (printable ASCII, no space, '\"' or '\\\\')"),
            );
        } else if !required_scopes.iter().any(|r| **r == **sc) {
            required_scopes.push(sc.as_str().into());
        }
    }

    let cache_cfg = &cfg.cache;
    if cache_cfg.max_entries == 0 {
        s.error(&format!("{cp}.cache.max_entries"), "must be at least 1");
    }

    let ca = outbound::Ca::load(&mut s, &format!("{cp}.ca_file"), cfg.ca_file.as_deref());

    if s.failed {
        return None;
    }
    let (url, client_id, secret) = (url?, client_id?, secret?);

    let auth = match cfg.auth_method {
        AuthMethod::ClientSecretBasic => {
            // RFC 6749 2.3.1: both form-encoded, then Basic.
            let mut pair = Vec::new();
            form_encode(client_id.as_bytes(), &mut pair);
            pair.push(b':');
            form_encode(secret.as_bytes(), &mut pair);
            let mut v = HeaderValue::from_str(&format!("Basic {}", STANDARD.encode(&pair)))
                .map_err(|_| ())
                .ok()?;
            v.set_sensitive(true);
            ClientAuth::Basic(v)
        }
        AuthMethod::ClientSecretPost => {
            let mut extra = b"&client_id=".to_vec();
            form_encode(client_id.as_bytes(), &mut extra);
            extra.extend_from_slice(b"&client_secret=");
            form_encode(secret.as_bytes(), &mut extra);
            ClientAuth::Post(extra.into_boxed_slice())
        }
    };

    let mut challenge = String::from("Bearer error=\"insufficient_scope\"");
    if !required_scopes.is_empty() {
        challenge.push_str(", scope=\"");
        challenge.push_str(&required_scopes.join(" "));
        challenge.push('"');
    }
    // Scope tokens are visible ASCII without '"' or '\': always a valid value.
    let scope_challenge = HeaderValue::from_str(&challenge).ok()?;

    let endpoint_target = outbound::redacted(&url);
    let times = (timeout, timeout);
    let state = outbound::entry_state(
        &mut s,
        &cp,
        "oauth2-introspection",
        env,
        raw,
        times,
        ca,
        |client| {
            Ok(State {
                endpoint: Endpoint {
                    client,
                    url,
                    target: endpoint_target,
                    auth,
                    required_scopes,
                    consumer_claim: cfg.consumer_claim,
                    on_outage: cfg.on_outage,
                    max_ttl_ms: cache_cfg.max_ttl.0.as_millis() as u64,
                    negative_ttl_ms: cache_cfg.negative_ttl.0.as_millis() as u64,
                },
                cache: DecisionCache::new(cache_cfg.max_entries)
                    .ok_or_else(|| "cache.max_entries must be at least 1".to_string())?,
                flights: Flights::default(),
                warn: outbound::WarnGate::new(),
            })
        },
    )?;
    Some(Oauth2Introspection {
        state,
        consumers: env.consumer_index(),
        hide_credentials: cfg.hide_credentials,
        run_on_preflight: cfg.run_on_preflight,
        scope_challenge,
        route: env.route.map(Box::from),
        handles: OnceCell::new(),
    })
}
