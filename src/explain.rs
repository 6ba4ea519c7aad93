//! `explain`: what the gateway would do with a request, from a compiled config, without
//! sending it anywhere. Serves `gatehouse explain` (offline) and the admin API's
//! `POST /explain` (the live config and live target health); no Pingora phase runs: it walks
//! the same router and compiled plugin chain `request_filter` and `upstream_peer` use.
//!
//! Each plugin describes its own decision through the plugin interface's `explain` hook
//! (key-auth checks the key, acl the roles, rate-limiting names its key, ...), and names its
//! credentials (`credential_headers`, `credential_query_param`), so nothing here names a
//! plugin. A plugin may also name the upstream the request goes to (`Explain::upstream`),
//! edit the headers and query the upstream receives (`Explain::header_edits`,
//! `Explain::query`): they are applied here, generically, to the upstream section. Nothing here consumes a rate-limit counter or moves a balancer cursor. Credential
//! values are never echoed: they are masked.

use crate::ctx::Runtime;
use crate::plugins::Plugin;
use crate::router::{self, Lookup};
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use pingora::http::RequestHeader;
use serde_json::{json, Value};

/// The request to explain.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ask {
    pub method: String,
    /// `https://host/path?q` or `/path?q` (then `Host` comes from `headers`).
    pub url: String,
    #[serde(default)]
    pub headers: Vec<(String, String)>,
    #[serde(default)]
    pub client_ip: Option<String>,
}

const MASK: &str = "[masked]";

/// Header names whose values are credentials whatever the config says.
fn always_secret(name: &str) -> bool {
    matches!(
        name.to_ascii_lowercase().as_str(),
        "authorization" | "proxy-authorization" | "cookie" | "x-api-key" | "apikey"
    )
}

/// Parses `Name: value` as given to `-H`.
pub fn parse_header(h: &str) -> Result<(String, String), String> {
    let (n, v) = h
        .split_once(':')
        .ok_or_else(|| format!("header {:?} is not \"Name: value\"", mask_tail(h)))?;
    let n = n.trim();
    HeaderName::from_bytes(n.as_bytes()).map_err(|_| format!("invalid header name {n:?}"))?;
    Ok((n.to_string(), v.trim().to_string()))
}

/// Parses `METHOD URL` as given on the command line.
pub fn parse_request_line(s: &str) -> Result<(String, String), String> {
    let mut it = s.split_whitespace();
    match (it.next(), it.next(), it.next()) {
        (Some(m), Some(u), None) => Ok((m.to_string(), u.to_string())),
        _ => Err(format!(
            "expected \"METHOD URL\" (e.g. 'GET https://api.example.com/v1/orders/7'), got {s:?}"
        )),
    }
}

fn mask_tail(h: &str) -> String {
    match h.split_once(':') {
        Some((n, _)) => format!("{n}: {MASK}"),
        None => h.chars().take(40).collect(),
    }
}

/// Explains `ask` against `rt`. `live`: targets' health is the process's own (admin API).
pub fn explain(rt: &Runtime, ask: &Ask, live: bool) -> Value {
    match explain_inner(rt, ask, live) {
        Ok(v) | Err(v) => v,
    }
}

fn bad(msg: impl Into<String>) -> Value {
    json!({"error": "bad_request", "message": msg.into()})
}

fn explain_inner(rt: &Runtime, ask: &Ask, live: bool) -> Result<Value, Value> {
    let method = Method::from_bytes(ask.method.trim().to_ascii_uppercase().as_bytes())
        .map_err(|_| bad(format!("invalid method {:?}", ask.method)))?;
    let (scheme, authority, path_and_query) = split_url(&ask.url)?;
    let mut headers = HeaderMap::new();
    for (n, v) in &ask.headers {
        let name = HeaderName::from_bytes(n.trim().as_bytes())
            .map_err(|_| bad(format!("invalid header name {n:?}")))?;
        let val = HeaderValue::from_str(v.trim())
            .map_err(|_| bad(format!("invalid value for header {n}")))?;
        headers.append(name, val);
    }
    let host_hdr = headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string);
    let host_full = authority.clone().or(host_hdr);
    let host = host_full.as_deref().map(|h| {
        router::host_without_port(h)
            .trim_end_matches('.')
            .to_ascii_lowercase()
    });
    let client_ip: Option<std::net::IpAddr> = match &ask.client_ip {
        Some(s) => Some(
            s.parse()
                .map_err(|_| bad(format!("invalid client IP {s:?}")))?,
        ),
        None => None,
    };
    let https = scheme.as_deref() == Some("https");
    let (path, query) = match path_and_query.split_once('?') {
        Some((p, q)) => (p.to_string(), Some(q.to_string())),
        None => (path_and_query.clone(), None),
    };
    let mut out = serde_json::Map::new();
    out.insert(
        "request".into(),
        json!({
            "method": method.as_str(),
            "scheme": if https { "https" } else { "http" },
            "host": host,
            "path": path,
            "query": query.as_deref().map(|q| mask_query(rt, q)),
            "headers": masked_headers(rt, &headers, None),
            "client_ip": client_ip.map(|i| i.to_string()),
        }),
    );
    // Refused paths are answered before routing.
    let norm = match router::scan_path(&path) {
        Err(why) => {
            out.insert(
                "result".into(),
                json!({"status": 400, "error": "bad_request", "why": format!("refused path: {why}")}),
            );
            return Ok(Value::Object(out));
        }
        Ok(_) => match crate::util::percent::normalize_percent(&path) {
            Some(p) => p.into_owned(),
            None => {
                out.insert(
                    "result".into(),
                    json!({"status": 400, "error": "bad_request", "why": "refused path: malformed percent-encoding"}),
                );
                return Ok(Value::Object(out));
            }
        },
    };
    let found = match rt.router.lookup(&method, host.as_deref(), &headers, &norm) {
        Lookup::Found(m) => m,
        Lookup::MethodNotAllowed(node) => {
            let allow = rt.router.allow(node, host.as_deref(), &headers);
            out.insert(
                "result".into(),
                json!({"status": 405, "error": "method_not_allowed", "allow": allow,
                       "why": format!("routes at the longest matching prefix take {allow}, not {method}")}),
            );
            out.insert("plugins".into(), chain_names(&rt.global_plugins.plugins));
            return Ok(Value::Object(out));
        }
        Lookup::NotFound => {
            out.insert(
                "result".into(),
                json!({"status": 404, "error": "not_found",
                       "why": "no route's path prefix, hosts and headers match this request"}),
            );
            out.insert("plugins".into(), chain_names(&rt.global_plugins.plugins));
            return Ok(Value::Object(out));
        }
    };
    let route = rt
        .routes
        .get(found.route)
        .ok_or_else(|| json!({"error": "internal_error"}))?;
    let prefix = if found.prefix_len == 0 {
        "/".to_string()
    } else {
        norm.get(..found.prefix_len).unwrap_or("/").to_string()
    };
    out.insert(
        "route".into(),
        json!({
            "name": route.name,
            "matched_prefix": prefix,
            "why": format!("longest matching prefix {prefix}; its host, header and method conditions hold"),
        }),
    );
    if let Some(h) = &route.https_only {
        if !https {
            out.insert(
                "result".into(),
                json!({"status": h.status, "why": "the route is https-only (protocols: [https]) and the request is plain HTTP; no plugin runs"}),
            );
            return Ok(Value::Object(out));
        }
    }

    // Plugins, in execution order, with what each decides where that is known offline.
    let mut req = RequestHeader::build(method.clone(), path_and_query.as_bytes(), None)
        .map_err(|_| bad("the URL cannot be a request target"))?;
    for (n, v) in headers.iter() {
        let _ = req.append_header(n.clone(), v.clone());
    }
    let mut x = crate::plugins::Explain {
        rt,
        route,
        req: &req,
        client_ip,
        consumer: None,
        refused: None,
        deferred_identity: None,
        live,
        notes: Vec::new(),
        upstream: None,
        header_edits: Vec::new(),
        query: query.clone(),
    };
    let mut refused: Option<Value> = None;
    let mut steps = Vec::new();
    // Credentials never reach the upstream section.
    let mut hidden: Vec<HeaderName> = Vec::new();
    for p in &route.plugins.plugins {
        let name = p.name();
        let mut step = json!({"plugin": name});
        if refused.is_some() {
            step["decision"] = json!("not reached");
            steps.push(step);
            continue;
        }
        hidden.extend(p.credential_headers().iter().cloned());
        step["decision"] = p.explain(&mut x);
        if let Some(status) = x.refused {
            refused = Some(json!({"status": status, "by": name}));
        }
        steps.push(step);
    }
    let consumer = x.consumer;
    let added = x.notes;
    let header_edits = x.header_edits;
    let query = x.query;
    // A plugin that sends the request to another upstream names it.
    let up = x.upstream.unwrap_or_else(|| route.upstream.clone());
    out.insert("plugins".into(), Value::Array(steps));
    if let Some(r) = refused {
        out.insert("result".into(), r);
        return Ok(Value::Object(out));
    }

    // Upstream, target and what it would receive.
    let set = up.targets();
    let now = crate::util::clock::now_ms();
    let targets: Vec<Value> = set
        .targets
        .iter()
        .map(|t| {
            json!({"addr": t.addr, "weight": t.weight, "backup": t.backup,
                   "available": t.state.available(now)})
        })
        .collect();
    let first = set
        .targets
        .iter()
        .find(|t| t.state.available(now))
        .or_else(|| set.targets.first());
    // The query as the plugins left it, credentials masked.
    let with_query = match &query {
        Some(q) => format!("{norm}?{}", mask_query(rt, q)),
        None => norm.clone(),
    };
    let upstream_path = if route.strip_path {
        router::strip_prefix(&with_query, found.prefix_len)
    } else {
        with_query
    };
    let host_up = if route.preserve_host {
        host_full.clone()
    } else {
        first.map(|t| t.host.clone())
    };
    let mut sent = masked_headers(rt, &headers, Some(&hidden));
    if let Value::Object(m) = &mut sent {
        m.remove("host");
        m.insert("host".into(), json!(host_up));
        let ip = client_ip
            .map(|i| i.to_string())
            .unwrap_or_else(|| "<client IP>".into());
        m.insert("x-forwarded-for".into(), json!(ip));
        m.insert("x-real-ip".into(), json!(ip));
        m.insert(
            "x-forwarded-proto".into(),
            json!(if https { "https" } else { "http" }),
        );
        if let Some(i) = consumer {
            m.insert(
                "x-consumer-username".into(),
                json!(rt.consumers.get(i).map(|c| c.username.clone())),
            );
        }
        apply_header_edits(rt, m, &header_edits);
    }
    out.insert(
        "upstream".into(),
        json!({
            "name": up.name,
            "balance": format!("{:?}", up.balance),
            "targets": targets,
            "target": first.map(|t| t.addr.clone()),
            "target_note": if live {
                "the first available target; which one a request gets depends on the balancer's rotation (not moved by explain)"
            } else {
                "offline: every target counts as available; which one a request gets depends on the balancer's live state"
            },
            "path": upstream_path,
            "headers": sent,
            "notes": added,
        }),
    );
    out.insert("result".into(), json!({"status": "proxied"}));
    Ok(Value::Object(out))
}

/// The plugins' header edits, in order, on the headers shown for the upstream (one value
/// per name); a value set under a credential's name is masked.
fn apply_header_edits(
    rt: &Runtime,
    m: &mut serde_json::Map<String, Value>,
    edits: &[crate::plugins::HeaderEdit],
) {
    use crate::plugins::HeaderEdit;
    let secret_names = secret_header_names(rt);
    let shown = |n: &HeaderName, v: &str| {
        if always_secret(n.as_str()) || secret_names.contains(n) {
            json!(MASK)
        } else {
            json!(v)
        }
    };
    for e in edits {
        match e {
            HeaderEdit::Remove(n) => {
                m.remove(n.as_str());
            }
            HeaderEdit::Rename(from, to) => {
                if let Some(v) = m.remove(from.as_str()) {
                    let v = match v.as_str() {
                        Some(s) => shown(to, s),
                        None => v,
                    };
                    m.insert(to.as_str().to_string(), v);
                }
            }
            HeaderEdit::Replace(n, v) => {
                if m.contains_key(n.as_str()) {
                    m.insert(n.as_str().to_string(), shown(n, v));
                }
            }
            HeaderEdit::Add(n, v) => {
                if !m.contains_key(n.as_str()) {
                    m.insert(n.as_str().to_string(), shown(n, v));
                }
            }
        }
    }
}

fn chain_names(plugins: &[std::sync::Arc<Plugin>]) -> Value {
    json!(plugins.iter().map(|p| p.name()).collect::<Vec<_>>())
}

/// `https://host[:port]/path?q` or `/path?q`: (scheme, authority, path and query).
fn split_url(url: &str) -> Result<(Option<String>, Option<String>, String), Value> {
    let url = url.trim();
    if url.starts_with('/') {
        return Ok((None, None, url.to_string()));
    }
    let (scheme, rest) = url.split_once("://").ok_or_else(|| {
        bad(format!(
            "URL {url:?} must be absolute (http://host/path) or start with /"
        ))
    })?;
    let scheme = scheme.to_ascii_lowercase();
    if scheme != "http" && scheme != "https" {
        return Err(bad(format!("scheme {scheme:?} is not http or https")));
    }
    let (auth, pq) = match rest.find(['/', '?']) {
        Some(i) if rest.as_bytes()[i] == b'/' => (&rest[..i], rest[i..].to_string()),
        Some(i) => (&rest[..i], format!("/{}", &rest[i..])),
        None => (rest, "/".to_string()),
    };
    if auth.is_empty() || auth.contains('@') {
        return Err(bad("the URL's host is missing or has user info"));
    }
    Ok((Some(scheme), Some(auth.to_string()), pq))
}

/// Headers as JSON, credential values masked (the plugins' credential headers,
/// `Authorization`, ...).
fn masked_headers(rt: &Runtime, h: &HeaderMap, drop: Option<&[HeaderName]>) -> Value {
    let secret_names = secret_header_names(rt);
    let mut m = serde_json::Map::new();
    for (n, v) in h {
        if drop.is_some_and(|d| d.contains(n)) {
            continue;
        }
        let s = if always_secret(n.as_str()) || secret_names.contains(n) {
            MASK.to_string()
        } else {
            String::from_utf8_lossy(v.as_bytes()).into_owned()
        };
        m.insert(n.as_str().to_string(), json!(s));
    }
    Value::Object(m)
}

fn secret_header_names(rt: &Runtime) -> Vec<HeaderName> {
    let mut v = Vec::new();
    for r in &rt.routes {
        for p in &r.plugins.plugins {
            v.extend(p.credential_headers().iter().cloned());
        }
    }
    v
}

/// The query string with the plugins' credential parameters (key-auth's) masked.
fn mask_query(rt: &Runtime, q: &str) -> String {
    let mut params: Vec<String> = Vec::new();
    for r in &rt.routes {
        for p in &r.plugins.plugins {
            if let Some(qp) = p.credential_query_param() {
                params.push(qp.to_string());
            }
        }
    }
    q.split('&')
        .map(|kv| match kv.split_once('=') {
            Some((k, _)) if params.iter().any(|p| p == k) || k == "jwt" => format!("{k}={MASK}"),
            _ => kv.to_string(),
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// A text rendering for the terminal.
pub fn render_text(v: &Value) -> String {
    let mut o = String::new();
    if let Some(e) = v.get("error") {
        return format!(
            "error: {}\n",
            v.get("message")
                .and_then(Value::as_str)
                .unwrap_or(e.as_str().unwrap_or(""))
        );
    }
    let r = &v["request"];
    o.push_str(&format!(
        "request:  {} {}://{}{}\n",
        r["method"].as_str().unwrap_or(""),
        r["scheme"].as_str().unwrap_or(""),
        r["host"].as_str().unwrap_or(""),
        r["path"].as_str().unwrap_or("")
    ));
    if let Some(rt) = v.get("route") {
        o.push_str(&format!(
            "route:    {} (prefix {})\n",
            rt["name"].as_str().unwrap_or(""),
            rt["matched_prefix"].as_str().unwrap_or("")
        ));
    }
    if let Some(ps) = v.get("plugins").and_then(Value::as_array) {
        o.push_str("plugins:\n");
        for p in ps {
            match p.get("plugin") {
                Some(name) => o.push_str(&format!(
                    "  - {}: {}\n",
                    name.as_str().unwrap_or(""),
                    p["decision"]
                )),
                None => o.push_str(&format!("  - {} (global)\n", p.as_str().unwrap_or(""))),
            }
        }
    }
    if let Some(u) = v.get("upstream") {
        o.push_str(&format!(
            "upstream: {} -> {} ({})\n",
            u["name"].as_str().unwrap_or(""),
            u["target"].as_str().unwrap_or("none"),
            u["target_note"].as_str().unwrap_or("")
        ));
        o.push_str(&format!(
            "  path:    {}\n",
            u["path"].as_str().unwrap_or("")
        ));
        if let Some(h) = u["headers"].as_object() {
            for (k, val) in h {
                o.push_str(&format!("  header:  {k}: {}\n", val.as_str().unwrap_or("")));
            }
        }
        if let Some(ns) = u["notes"].as_array() {
            for n in ns {
                o.push_str(&format!("  note:    {}\n", n.as_str().unwrap_or("")));
            }
        }
    }
    o.push_str(&format!("result:   {}\n", v["result"]));
    o
}
