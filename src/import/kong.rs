//! `gatehouse import kong`: a Kong declarative configuration (`_format_version` "1.1", "2.1" or
//! "3.0", as written by hand or by decK) converted into gatehouse's YAML. Offline tooling, no
//! Pingora phase.
//!
//! The input is read into a `serde_yaml::Value` first (any YAML gets that far), then entity by
//! entity into structs of Kong's format that keep unknown fields aside: an entity Kong would
//! refuse is reported and left out, never a panic. Every field or plugin without a gatehouse
//! equivalent becomes a note, written as a comment in the output and returned for stderr.
//! Fields at Kong's default (decK dumps write every field) and metadata (`id`, `tags`,
//! timestamps) are not reported.

use super::{render, Item, MapB, Notes, Y};
use serde::Deserialize;
use serde_yaml::{Mapping, Value};
use std::collections::{BTreeMap, HashMap, HashSet};

/// The result of a conversion.
#[derive(Debug)]
pub struct Converted {
    /// The gatehouse YAML.
    pub yaml: String,
    /// One line per field or plugin that was not carried over (`path: message`).
    pub warnings: Vec<String>,
}

/// Fields no entity reports: identifiers, labels and timestamps have no behaviour.
const METADATA: &[&str] = &[
    "id",
    "tags",
    "created_at",
    "updated_at",
    "ws_id",
    "instance_name",
    "_comment",
];

type Extra = BTreeMap<String, Value>;
/// A plugin entry and its path in the Kong file.
type Located = (Value, String);

/// Kong's entities as read: every field optional (`#[serde(default)]`), the fields gatehouse
/// does not read kept in `extra` (reported as not carried over).
macro_rules! kong_entities {
    ($( struct $name:ident { $( $field:ident: $ty:ty, )* } )*) => {
        $(
            #[derive(Deserialize, Default)]
            #[serde(default)]
            struct $name {
                $( $field: $ty, )*
                #[serde(flatten)]
                extra: Extra,
            }
        )*
    };
}

kong_entities! {
    struct Service {
        name: Option<String>,
        url: Option<String>,
        protocol: Option<String>,
        host: Option<String>,
        port: Option<u64>,
        path: Option<String>,
        retries: Option<u64>,
        connect_timeout: Option<u64>,
        read_timeout: Option<u64>,
        write_timeout: Option<u64>,
        enabled: Option<bool>,
        routes: Option<Vec<Value>>,
        plugins: Option<Vec<Value>>,
    }
    struct Route {
        name: Option<String>,
        paths: Option<Vec<String>>,
        hosts: Option<Vec<String>>,
        methods: Option<Vec<String>>,
        headers: Option<BTreeMap<String, Value>>,
        strip_path: Option<bool>,
        preserve_host: Option<bool>,
        protocols: Option<Vec<String>>,
        https_redirect_status_code: Option<u64>,
        service: Option<Value>,
        plugins: Option<Vec<Value>>,
    }
    struct Upstream {
        name: Option<String>,
        algorithm: Option<String>,
        hash_on: Option<String>,
        healthchecks: Option<Value>,
        targets: Option<Vec<Value>>,
    }
    struct Target {
        target: Option<String>,
        weight: Option<u64>,
    }
    struct Consumer {
        username: Option<String>,
        custom_id: Option<String>,
        keyauth_credentials: Option<Vec<Value>>,
        jwt_secrets: Option<Vec<Value>>,
        acls: Option<Vec<Value>>,
        plugins: Option<Vec<Value>>,
    }
    struct Plugin {
        name: Option<String>,
        config: Option<Value>,
        enabled: Option<bool>,
        route: Option<Value>,
        service: Option<Value>,
        consumer: Option<Value>,
    }
}

/// An entity's `plugins` entries, each with its path in the Kong file (`path` is the
/// entity's).
fn located_plugins(plugins: &Option<Vec<Value>>, path: &str) -> Vec<Located> {
    let list = plugins.as_deref().unwrap_or_default().iter().cloned();
    list.enumerate()
        .map(|(j, p)| (p, format!("{path}.plugins[{j}]")))
        .collect()
}

/// Reads `v` into `T`, or records why not.
fn read<T: for<'de> Deserialize<'de>>(v: &Value, path: &str, n: &mut Notes) -> Option<T> {
    match serde_yaml::from_value::<T>(v.clone()) {
        Ok(t) => Some(t),
        Err(e) => {
            n.add(path, format!("cannot be read ({e}); left out"));
            None
        }
    }
}

fn is_default(v: &Value, default: Option<&str>) -> bool {
    match v {
        Value::Null => true,
        Value::Sequence(s) if s.is_empty() => true,
        Value::Mapping(m) if m.is_empty() => true,
        _ => default
            .and_then(|d| serde_yaml::from_str::<Value>(d).ok())
            .is_some_and(|d| &d == v || num_eq(&d, v)),
    }
}

fn num_eq(a: &Value, b: &Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => x == y,
        _ => false,
    }
}

/// Reports every field of `extra` that is neither metadata nor at Kong's default.
fn leftovers(
    extra: &Extra,
    defaults: &[(&str, &str)],
    path: &str,
    n: &mut Notes,
    cm: &mut Vec<String>,
) {
    for (k, v) in extra {
        if METADATA.contains(&k.as_str()) {
            continue;
        }
        let d = defaults.iter().find(|(dk, _)| dk == k).map(|(_, dv)| *dv);
        if !is_default(v, d) {
            cm.push(n.add(
                &format!("{path}.{k}"),
                format!("{} is not carried over (no gatehouse equivalent)", show(v)),
            ));
        }
    }
}

/// A short rendering of a value for a note (never used for credentials).
fn show(v: &Value) -> String {
    let s = serde_json::to_string(v).unwrap_or_default();
    if s.chars().count() > 80 {
        format!("{}...", s.chars().take(77).collect::<String>())
    } else {
        s
    }
}

/// A plugin's `config`, read key by key; keys never read are reported at the end.
struct Cfg<'a> {
    m: Option<&'a Mapping>,
    used: HashSet<String>,
}

impl<'a> Cfg<'a> {
    fn new(v: Option<&'a Value>) -> Cfg<'a> {
        Cfg {
            m: v.and_then(Value::as_mapping),
            used: HashSet::new(),
        }
    }
    fn get(&mut self, k: &str) -> Option<&'a Value> {
        self.used.insert(k.to_string());
        self.m?.get(k).filter(|v| !v.is_null())
    }
    fn bool(&mut self, k: &str) -> Option<bool> {
        self.get(k)?.as_bool()
    }
    fn num(&mut self, k: &str) -> Option<f64> {
        let v = self.get(k)?;
        v.as_f64().or_else(|| v.as_str()?.trim().parse().ok())
    }
    fn str(&mut self, k: &str) -> Option<String> {
        scalar_text(self.get(k)?)
    }
    fn strs(&mut self, k: &str) -> Option<Vec<String>> {
        match self.get(k)? {
            Value::Sequence(s) => Some(s.iter().filter_map(scalar_text).collect()),
            other => scalar_text(other).map(|s| vec![s]),
        }
    }
    fn sub(&mut self, k: &str) -> Cfg<'a> {
        Cfg::new(self.get(k))
    }
    /// [`Cfg::finish`] for an auth plugin whose `realm` gatehouse does not take, after
    /// reporting `anonymous`: there is no anonymous consumer, a request without a valid
    /// `credential` gets 401.
    fn finish_auth(&mut self, credential: &str, path: &str, n: &mut Notes, cm: &mut Vec<String>) {
        if self.get("anonymous").is_some() {
            cm.push(n.add(
                &format!("{path}.anonymous"),
                format!("anonymous consumers are not supported: a request without a valid {credential} gets 401"),
            ));
        }
        self.finish(&[("realm", "null")], path, n, cm);
    }

    /// Reports keys not read whose value is not Kong's default.
    fn finish(&self, defaults: &[(&str, &str)], path: &str, n: &mut Notes, cm: &mut Vec<String>) {
        let Some(m) = self.m else { return };
        for (k, v) in m {
            let Some(k) = k.as_str() else { continue };
            if self.used.contains(k) {
                continue;
            }
            let d = defaults.iter().find(|(dk, _)| *dk == k).map(|(_, dv)| *dv);
            if !is_default(v, d) {
                cm.push(n.add(
                    &format!("{path}.{k}"),
                    format!("{} is not carried over (no gatehouse equivalent)", show(v)),
                ));
            }
        }
    }
}

/// `Some(plugin)` when the converted config has what the plugin needs (`usable`); otherwise
/// `None`, with a note that the plugin was left out and `why`.
fn kept_unless_empty(
    usable: bool,
    plugin: &'static str,
    why: &str,
    path: &str,
    n: &mut Notes,
    cm: &mut Vec<String>,
) -> Option<&'static str> {
    if usable {
        return Some(plugin);
    }
    cm.push(n.add(path, format!("{why}: plugin left out")));
    None
}

fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Strings gatehouse would read differently: `${` is its environment substitution, and Kong
/// vault references (`{vault://...}`) are resolved by Kong only.
fn foreign_syntax(s: &str) -> Option<&'static str> {
    if s.contains("${") {
        Some("contains \"${\", which gatehouse reads as an environment variable")
    } else if s.contains("{vault://") {
        Some("is a Kong vault reference, which gatehouse cannot resolve")
    } else {
        None
    }
}

/// Global state gathered while converting.
#[derive(Default)]
struct Ctx {
    /// `secret_is_base64` of the jwt plugins seen (Kong's is per plugin, gatehouse's per secret).
    jwt_base64: Option<bool>,
    jwt_base64_mixed: bool,
}

/// Converts a Kong declarative config. Errors only when the text is not a YAML map.
pub fn convert(text: &str, source_name: &str) -> Result<Converted, String> {
    let doc: Value = serde_yaml::from_str(text).map_err(|e| format!("not valid YAML: {e}"))?;
    let top = match &doc {
        Value::Mapping(m) => m,
        Value::Null => return Err("the file is empty".into()),
        _ => return Err("the top level must be a map (a Kong declarative config)".into()),
    };
    let mut n = Notes::default();
    let mut ctx = Ctx::default();
    let mut head_notes: Vec<String> = Vec::new();

    let version = top
        .get("_format_version")
        .and_then(scalar_text)
        .unwrap_or_default();
    match version.as_str() {
        "1.1" | "2.1" | "3.0" => {}
        "" => head_notes.push(n.add(
            "_format_version",
            "missing; read as \"3.0\" (Kong refuses a file without it)",
        )),
        other => head_notes.push(n.add(
            "_format_version",
            format!("{other:?} is not a known version (1.1, 2.1, 3.0); read as \"3.0\""),
        )),
    }
    let v3 = !matches!(version.as_str(), "1.1" | "2.1");

    let known_top = [
        "_format_version",
        "_transform",
        "_workspace",
        "_info",
        "_comment",
        "services",
        "routes",
        "upstreams",
        "consumers",
        "plugins",
    ];
    for (k, v) in top {
        let Some(k) = k.as_str() else { continue };
        if !known_top.contains(&k) && !is_default(v, None) {
            head_notes.push(n.add(
                k,
                "this section is not carried over (no gatehouse equivalent)",
            ));
        }
    }
    let list = |k: &str| -> Vec<Value> {
        top.get(k)
            .and_then(Value::as_sequence)
            .cloned()
            .unwrap_or_default()
    };
    for k in ["services", "routes", "upstreams", "consumers", "plugins"] {
        if let Some(v) = top.get(k) {
            if !v.is_null() && !v.is_sequence() {
                head_notes.push(n.add(k, "is not a list; left out"));
            }
        }
    }

    // ---- upstreams -------------------------------------------------------------------------
    let mut upstreams: Vec<(String, MapB, Vec<String>)> = Vec::new();
    let mut up_names: HashSet<String> = HashSet::new();
    // Kong upstream name -> index in `upstreams` (None: it had no usable target).
    let mut kong_ups: HashMap<String, Option<usize>> = HashMap::new();
    for (i, v) in list("upstreams").iter().enumerate() {
        let path = format!("upstreams[{i}]");
        let Some(u) = read::<Upstream>(v, &path, &mut n) else {
            continue;
        };
        let Some(name) = u.name.clone().filter(|s| !s.is_empty()) else {
            n.add(&path, "has no name; left out");
            continue;
        };
        let mut cm = Vec::new();
        match upstream_from_kong(&u, &path, &mut n, &mut cm) {
            Some(b) => {
                up_names.insert(name.clone());
                kong_ups.insert(name.clone(), Some(upstreams.len()));
                upstreams.push((name, b, cm));
            }
            None => {
                kong_ups.insert(name, None);
            }
        }
    }

    // ---- consumers -------------------------------------------------------------------------
    let consumers_raw = list("consumers");
    let mut consumer_names: HashSet<String> = HashSet::new();

    // ---- plugins scoped by reference (top-level list) ---------------------------------------
    // (plugin value, its path) by route / service name; global ones separately.
    let mut by_route: HashMap<String, Vec<(Value, String)>> = HashMap::new();
    let mut by_service: HashMap<String, Vec<(Value, String)>> = HashMap::new();
    let mut global_plugins: Vec<(Value, String)> = Vec::new();
    for (i, v) in list("plugins").iter().enumerate() {
        let path = format!("plugins[{i}]");
        let Some(p) = read::<Plugin>(v, &path, &mut n) else {
            continue;
        };
        if p.consumer.is_some() {
            n.add(
                &path,
                format!(
                    "plugin {:?} scoped to a consumer is not carried over (gatehouse plugins apply per route, per consumer only through rate-limiting tiers)",
                    p.name.unwrap_or_default()
                ),
            );
            continue;
        }
        if let Some(r) = p.route.as_ref().and_then(ref_name) {
            by_route.entry(r).or_default().push((v.clone(), path));
        } else if let Some(s) = p.service.as_ref().and_then(ref_name) {
            by_service.entry(s).or_default().push((v.clone(), path));
        } else {
            global_plugins.push((v.clone(), path));
        }
    }

    // ---- services and their routes ----------------------------------------------------------
    let mut routes_out: Vec<Item> = Vec::new();
    let mut route_names: HashSet<String> = HashSet::new();
    // service name -> (upstream name or None, plugins, path)
    let mut svc_info: HashMap<String, (Option<String>, Vec<Located>)> = HashMap::new();
    let mut pending_routes: Vec<(Value, String, Option<String>)> = Vec::new();
    let mut ups_timeouts_set: HashMap<String, String> = HashMap::new();
    for (i, v) in list("services").iter().enumerate() {
        let path = format!("services[{i}]");
        let Some(s) = read::<Service>(v, &path, &mut n) else {
            continue;
        };
        let sname = s.name.clone().unwrap_or_else(|| format!("service-{i}"));
        if s.enabled == Some(false) {
            n.add(
                &path,
                "is disabled (enabled: false); its routes are left out",
            );
            svc_info.insert(sname, (None, Vec::new()));
            continue;
        }
        let up = service_upstream(
            &s,
            &sname,
            &path,
            &mut n,
            &mut upstreams,
            &mut up_names,
            &kong_ups,
            &mut ups_timeouts_set,
        );
        let mut plugins = located_plugins(&s.plugins, &path);
        plugins.extend(by_service.remove(&sname).unwrap_or_default());
        svc_info.insert(sname.clone(), (up, plugins));
        for (j, r) in s.routes.clone().unwrap_or_default().into_iter().enumerate() {
            pending_routes.push((r, format!("{path}.routes[{j}]"), Some(sname.clone())));
        }
    }
    for (i, r) in list("routes").into_iter().enumerate() {
        pending_routes.push((r, format!("routes[{i}]"), None));
    }
    for (sname, _) in by_service {
        n.add(
            "plugins",
            format!("plugins for unknown service {sname:?} are left out"),
        );
    }

    for (idx, (rv, path, svc)) in pending_routes.into_iter().enumerate() {
        let Some(r) = read::<Route>(&rv, &path, &mut n) else {
            continue;
        };
        let svc = svc.or_else(|| r.service.as_ref().and_then(ref_name));
        let Some(svc) = svc else {
            n.add(&path, "has no service; left out");
            continue;
        };
        let Some((up, svc_plugins)) = svc_info.get(&svc) else {
            n.add(&path, format!("names unknown service {svc:?}; left out"));
            continue;
        };
        let Some(up) = up.clone() else {
            n.add(
                &path,
                format!("service {svc:?} could not be converted; route left out"),
            );
            continue;
        };
        let base = r
            .name
            .clone()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| format!("{svc}-route-{idx}"));
        let mut name = base.clone();
        let mut k = 2;
        while !route_names.insert(name.clone()) {
            name = format!("{base}-{k}");
            k += 1;
        }
        let mut plugins = located_plugins(&r.plugins, &path);
        if let Some(rn) = &r.name {
            plugins.extend(by_route.remove(rn).unwrap_or_default());
        }
        // A route's own plugin wins over the service's of the same name (Kong's precedence).
        let own: HashSet<String> = plugins.iter().filter_map(|(p, _)| plugin_name(p)).collect();
        for (p, pp) in svc_plugins {
            if plugin_name(p).is_some_and(|nm| !own.contains(&nm)) {
                plugins.push((p.clone(), pp.clone()));
            }
        }
        if let Some(item) = route_from_kong(&r, &name, &up, &plugins, &path, v3, &mut n, &mut ctx) {
            routes_out.push(item);
        }
    }
    for (rn, ps) in by_route {
        for (_, p) in ps {
            n.add(&p, format!("names unknown route {rn:?}; left out"));
        }
    }

    // ---- global plugins ---------------------------------------------------------------------
    let mut globals: Vec<Item> = Vec::new();
    for (pv, path) in &global_plugins {
        if let Some(item) = plugin_entry(pv, path, &mut n, &mut ctx) {
            globals.push(item);
        }
    }

    // ---- consumers (after the plugins: jwt's secret_is_base64 applies to their secrets) ----
    let mut consumers_out: Vec<Item> = Vec::new();
    let mut seen_keys: HashSet<String> = HashSet::new();
    let mut seen_jwt_keys: HashSet<String> = HashSet::new();
    if ctx.jwt_base64_mixed {
        head_notes.push(n.add(
            "plugins",
            "jwt plugins disagree on secret_is_base64; gatehouse sets it per secret: every secret is read as written by the first jwt plugin",
        ));
    }
    for (i, v) in consumers_raw.iter().enumerate() {
        let path = format!("consumers[{i}]");
        let Some(c) = read::<Consumer>(v, &path, &mut n) else {
            continue;
        };
        if let Some(item) = consumer_from_kong(
            &c,
            &path,
            &mut n,
            &mut consumer_names,
            &mut seen_keys,
            &mut seen_jwt_keys,
            ctx.jwt_base64.unwrap_or(false),
        ) {
            consumers_out.push(item);
        }
    }

    // ---- output -----------------------------------------------------------------------------
    let mut header = vec![
        format!(
            "Converted from the Kong declarative config {source_name} (_format_version {:?}) by `gatehouse import kong`.",
            if version.is_empty() { "3.0" } else { version.as_str() }
        ),
        "Lines starting with \"kong:\" name what could not be carried over; gatehouse -t validates the result.".to_string(),
        "server and admin are left at gatehouse's defaults (listen 0.0.0.0:8080, admin 127.0.0.1:9901).".to_string(),
    ];
    for h in head_notes {
        header.push(format!("kong: {h}"));
    }
    let mut doc: Vec<(String, Item)> = Vec::new();
    if !upstreams.is_empty() {
        let items = upstreams
            .into_iter()
            .map(|(name, b, cm)| {
                let mut m = MapB::new();
                m.put("name", Y::str(name));
                m.0.extend(b.0);
                Item {
                    comments: cm.into_iter().map(|c| format!("kong: {c}")).collect(),
                    value: m.build(),
                }
            })
            .collect();
        doc.push(("upstreams".into(), Y::Seq(items).into()));
    }
    if !consumers_out.is_empty() {
        doc.push(("consumers".into(), Y::Seq(consumers_out).into()));
    }
    if !globals.is_empty() {
        doc.push(("plugins".into(), Y::Seq(globals).into()));
    }
    doc.push(("routes".into(), Y::Seq(routes_out).into()));
    let mut yaml = render(&header, &doc);
    // Notes of entities that produced no output (left out) would otherwise only be on stderr.
    let in_yaml: Vec<&String> = n
        .lines
        .iter()
        .filter(|l| !yaml.contains(l.as_str()))
        .collect();
    if !in_yaml.is_empty() {
        yaml.push_str("\n# Not carried over:\n");
        for l in in_yaml {
            for part in l.split(['\n', '\r']) {
                yaml.push_str("# kong: ");
                yaml.push_str(part);
                yaml.push('\n');
            }
        }
    }
    Ok(Converted {
        yaml,
        warnings: n.lines,
    })
}

/// The name in a reference: `route: name`, `route: { name: x }` or `{ id: x }`.
fn ref_name(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Mapping(m) => m.get("name").or_else(|| m.get("id")).and_then(scalar_text),
        _ => None,
    }
}

fn plugin_name(v: &Value) -> Option<String> {
    v.get("name").and_then(scalar_text)
}

fn secs(ms: f64) -> String {
    if ms >= 1000.0 && (ms % 1000.0) == 0.0 {
        format!("{}s", (ms / 1000.0) as u64)
    } else {
        format!("{}ms", ms.max(1.0).round() as u64)
    }
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Is `addr` (`host:port`) something gatehouse takes as a target address?
fn target_addr(t: &str) -> Option<String> {
    let t = t.trim();
    if t.is_empty() || t.contains(['/', ' ', '@']) {
        return None;
    }
    // [v6]:port, v6 without port, host:port, host
    if let Some(rest) = t.strip_prefix('[') {
        let (ip, after) = rest.split_once(']')?;
        ip.parse::<std::net::Ipv6Addr>().ok()?;
        let port = after.strip_prefix(':').unwrap_or("8000");
        port.parse::<u16>().ok().filter(|p| *p > 0)?;
        return Some(format!("[{ip}]:{port}"));
    }
    if t.parse::<std::net::Ipv6Addr>().is_ok() {
        return Some(format!("[{t}]:8000"));
    }
    let (host, port) = match t.rsplit_once(':') {
        Some((h, p)) => (h, p),
        None => (t, "8000"),
    };
    port.parse::<u16>().ok().filter(|p| *p > 0)?;
    if host.is_empty()
        || !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_')
    {
        return None;
    }
    Some(format!("{host}:{port}"))
}

fn upstream_from_kong(
    u: &Upstream,
    path: &str,
    n: &mut Notes,
    cm: &mut Vec<String>,
) -> Option<MapB> {
    let mut targets: Vec<(String, u64)> = Vec::new();
    for (j, tv) in u.targets.clone().unwrap_or_default().iter().enumerate() {
        let tp = format!("{path}.targets[{j}]");
        let Some(t) = read::<Target>(tv, &tp, n) else {
            continue;
        };
        let mut tcm = Vec::new();
        leftovers(&t.extra, &[], &tp, n, &mut tcm);
        cm.extend(tcm);
        let Some(raw) = t.target.clone() else {
            cm.push(n.add(&tp, "has no target; left out"));
            continue;
        };
        let Some(addr) = target_addr(&raw) else {
            cm.push(n.add(&tp, format!("target {raw:?} is not host:port; left out")));
            continue;
        };
        let w = t.weight.unwrap_or(100);
        if w == 0 {
            cm.push(n.add(
                &tp,
                format!("weight 0 (target {addr} disabled in Kong); left out"),
            ));
            continue;
        }
        targets.push((addr, w));
    }
    if targets.len() > 64 {
        cm.push(n.add(
            path,
            format!(
                "{} targets; gatehouse takes at most 64, the rest are left out",
                targets.len()
            ),
        ));
        targets.truncate(64);
    }
    if targets.is_empty() {
        n.add(
            path,
            "has no usable target; left out (routes to it are left out too)",
        );
        return None;
    }
    let g = targets.iter().fold(0, |g, (_, w)| gcd(g, *w)).max(1);
    let weighted = targets.iter().any(|(_, w)| *w != targets[0].1);
    let mut b = MapB::new();
    let algo = u.algorithm.as_deref().unwrap_or("round-robin");
    let balance = match algo {
        "round-robin" => {
            if weighted {
                "weighted"
            } else {
                "round_robin"
            }
        }
        "least-connections" => "least_conn",
        "consistent-hashing" => {
            let on = u.hash_on.as_deref().unwrap_or("none");
            if on == "ip" {
                "ip_hash"
            } else {
                n.fallback(
                    cm,
                    &format!("{path}.hash_on"),
                    format!("consistent hashing on {on:?} cannot be expressed (gatehouse hashes on the client IP only); weighted round robin is used"),
                    "weighted",
                )
            }
        }
        other => n.fallback(
            cm,
            &format!("{path}.algorithm"),
            format!("{other:?} cannot be expressed; weighted round robin is used"),
            "weighted",
        ),
    };
    b.put("balance", Y::str(balance));
    let tlist = targets
        .iter()
        .map(|(a, w)| {
            let mut t = MapB::new();
            t.put("addr", Y::str(a));
            if balance != "round_robin" {
                t.put("weight", Y::Int((*w / g) as i64));
            }
            t.build().into()
        })
        .collect();
    b.put("targets", Y::Seq(tlist));
    if let Some(hc) = &u.healthchecks {
        healthchecks(hc, &format!("{path}.healthchecks"), n, cm, &mut b);
    }
    leftovers(
        &u.extra,
        &[
            ("slots", "10000"),
            ("hash_fallback", "none"),
            ("hash_on_cookie_path", "/"),
            ("use_srv_name", "false"),
        ],
        path,
        n,
        cm,
    );
    if u.hash_on.is_some() && algo != "consistent-hashing" && u.hash_on.as_deref() != Some("none") {
        cm.push(n.add(
            &format!("{path}.hash_on"),
            "only used by consistent-hashing; not carried over",
        ));
    }
    Some(b)
}

fn healthchecks(hc: &Value, path: &str, n: &mut Notes, cm: &mut Vec<String>, b: &mut MapB) {
    let mut c = Cfg::new(Some(hc));
    let mut active = c.sub("active");
    let mut healthy = active.sub("healthy");
    let mut unhealthy = active.sub("unhealthy");
    let hi = healthy.num("interval").unwrap_or(0.0);
    let ui = unhealthy.num("interval").unwrap_or(0.0);
    let interval = [hi, ui]
        .into_iter()
        .filter(|x| *x > 0.0)
        .fold(f64::INFINITY, f64::min);
    let ap = format!("{path}.active");
    if interval.is_finite() {
        let mut h = MapB::new();
        let ty = active.str("type").unwrap_or_else(|| "http".into());
        match ty.as_str() {
            "http" | "https" => {
                let p = active.str("http_path").unwrap_or_else(|| "/".into());
                if p.starts_with('/') && !p.contains([' ', '\n', '\r']) {
                    h.put("path", Y::str(p));
                } else {
                    cm.push(n.add(
                        &format!("{ap}.http_path"),
                        format!("{p:?} is not a usable path; a TCP check is used"),
                    ));
                }
            }
            "tcp" => {}
            other => cm.push(n.add(
                &format!("{ap}.type"),
                format!("{other:?} checks cannot be expressed; a TCP connect check is used"),
            )),
        }
        if hi > 0.0 && ui > 0.0 && hi != ui {
            cm.push(n.add(
                &ap,
                format!("healthy and unhealthy intervals differ ({hi}s, {ui}s); gatehouse has one interval: the shorter is used"),
            ));
        }
        h.put("interval", Y::str(secs(interval * 1000.0)));
        if let Some(t) = active.num("timeout").filter(|t| *t > 0.0) {
            h.put("timeout", Y::str(secs(t * 1000.0)));
        }
        if let Some(s) = healthy.num("successes").filter(|s| *s >= 1.0) {
            h.put("healthy_threshold", Y::Int(s as i64));
        }
        let fails: Vec<f64> = ["http_failures", "tcp_failures", "timeouts"]
            .iter()
            .filter_map(|k| unhealthy.num(k))
            .filter(|x| *x >= 1.0)
            .collect();
        if let Some(f) = fails.iter().copied().reduce(f64::min) {
            h.put("unhealthy_threshold", Y::Int(f as i64));
            if fails.iter().any(|x| *x != f) {
                cm.push(n.add(
                    &format!("{ap}.unhealthy"),
                    format!("gatehouse counts every kind of failure together: unhealthy_threshold is the smallest of http_failures, tcp_failures and timeouts ({f})"),
                ));
            }
        }
        b.put("health_check", h.build());
    }
    let hs = "[200, 201, 202, 203, 204, 205, 206, 207, 208, 226, 300, 301, 302, 303, 304, 305, 306, 307, 308]";
    let us = "[429, 404, 500, 501, 502, 503, 504, 505]";
    healthy.finish(
        &[("http_statuses", hs), ("successes", "0"), ("interval", "0")],
        &format!("{ap}.healthy"),
        n,
        cm,
    );
    unhealthy.finish(
        &[
            ("http_statuses", us),
            ("interval", "0"),
            ("tcp_failures", "0"),
            ("http_failures", "0"),
            ("timeouts", "0"),
        ],
        &format!("{ap}.unhealthy"),
        n,
        cm,
    );
    active.finish(
        &[
            ("concurrency", "10"),
            ("https_verify_certificate", "true"),
            ("timeout", "1"),
            ("type", "http"),
            ("http_path", "/"),
        ],
        &ap,
        n,
        cm,
    );
    let mut passive = c.sub("passive");
    let mut punh = passive.sub("unhealthy");
    let pp = format!("{path}.passive");
    let pf: Vec<f64> = ["http_failures", "tcp_failures", "timeouts"]
        .iter()
        .filter_map(|k| punh.num(k))
        .filter(|x| *x >= 1.0)
        .collect();
    if let Some(f) = pf.iter().copied().reduce(f64::min) {
        let mut p = MapB::new();
        p.put("max_fails", Y::Int(f as i64));
        p.put("fail_timeout", Y::str("10s"));
        b.put("passive", p.build());
        cm.push(n.add(
            &pp,
            "Kong keeps a passively failed target out until an active check passes; gatehouse ejects it for fail_timeout (10s), then tries it again",
        ));
    }
    let phealthy = passive.sub("healthy");
    phealthy.finish(
        &[("http_statuses", hs), ("successes", "0")],
        &format!("{pp}.healthy"),
        n,
        cm,
    );
    punh.finish(
        &[("http_statuses", "[429, 500, 503]")],
        &format!("{pp}.unhealthy"),
        n,
        cm,
    );
    passive.finish(&[("type", "http")], &pp, n, cm);
    c.finish(&[("threshold", "0")], path, n, cm);
}

/// The upstream a service proxies to: a Kong upstream named by its host, or a new one.
#[allow(clippy::too_many_arguments)]
fn service_upstream(
    s: &Service,
    sname: &str,
    path: &str,
    n: &mut Notes,
    upstreams: &mut Vec<(String, MapB, Vec<String>)>,
    up_names: &mut HashSet<String>,
    kong_ups: &HashMap<String, Option<usize>>,
    timeouts_set: &mut HashMap<String, String>,
) -> Option<String> {
    let mut protocol = s.protocol.clone();
    let mut host = s.host.clone();
    let mut port = s.port;
    let mut spath = s.path.clone();
    if let Some(url) = &s.url {
        let Some((scheme, rest)) = url.split_once("://") else {
            n.add(
                &format!("{path}.url"),
                format!("{url:?} is not a URL; service left out"),
            );
            return None;
        };
        protocol = Some(scheme.to_ascii_lowercase());
        let (authority, p) = match rest.find('/') {
            Some(i) => (&rest[..i], Some(rest[i..].to_string())),
            None => (rest, None),
        };
        spath = p;
        let (h, pt) = match authority.rsplit_once(':') {
            Some((h, pt)) if !h.ends_with(']') || authority.starts_with('[') => {
                match pt.parse::<u64>() {
                    Ok(pt) => (h.to_string(), Some(pt)),
                    Err(_) => (authority.to_string(), None),
                }
            }
            _ => (authority.to_string(), None),
        };
        host = Some(h);
        port = pt;
    }
    let protocol = protocol.unwrap_or_else(|| "http".into());
    let Some(host) = host.filter(|h| !h.is_empty()) else {
        n.add(path, "has no host or url; service left out");
        return None;
    };
    let mut cm: Vec<String> = Vec::new();
    let (tls, proto) = match protocol.as_str() {
        "http" | "ws" => (false, None),
        "https" | "wss" => (true, None),
        "grpc" => (false, Some("h2c")),
        "grpcs" => (true, Some("h2")),
        other => {
            n.add(
                &format!("{path}.protocol"),
                format!("{other:?} services cannot be expressed (gatehouse proxies HTTP); service left out"),
            );
            return None;
        }
    };
    let default_port = if tls { 443 } else { 80 };
    let port = port.unwrap_or(default_port);
    if let Some(p) = spath.as_deref().filter(|p| !p.is_empty() && *p != "/") {
        cm.push(n.add(
            &format!("{path}.path"),
            format!("the service path {p:?} is not prepended to upstream paths (gatehouse has no path prefix rewrite); add it to your upstream or routes"),
        ));
    }
    let mut timeouts = MapB::new();
    for (k, v) in [
        ("connect", s.connect_timeout),
        ("read", s.read_timeout),
        ("write", s.write_timeout),
    ] {
        if let Some(ms) = v.filter(|ms| *ms > 0 && *ms != 60000) {
            timeouts.put(k, Y::str(secs(ms as f64)));
        }
    }
    let retries = s.retries.map(|r| r.min(15));
    if s.retries.is_some_and(|r| r > 15) {
        cm.push(n.add(
            &format!("{path}.retries"),
            "gatehouse retries at most 15 times; 15 is used",
        ));
    }
    let mut ex_cm = Vec::new();
    leftovers(
        &s.extra,
        &[("tls_verify_depth", "null"), ("client_certificate", "null")],
        path,
        n,
        &mut ex_cm,
    );
    cm.extend(ex_cm);
    let apply = |b: &mut MapB, timeouts: &MapB| {
        if let Some(r) = retries {
            b.put("retries", Y::Int(r as i64));
        }
        if !timeouts.is_empty() {
            b.put("timeouts", timeouts.clone().build());
        }
    };
    if let Some(found) = kong_ups.get(&host) {
        let Some(idx) = *found else {
            n.add(
                path,
                format!("upstream {host:?} has no usable target; service left out"),
            );
            return None;
        };
        let (uname, b, ucm) = &mut upstreams[idx];
        let sig = format!("{retries:?}{:?}", timeouts.0.len());
        match timeouts_set.get(uname) {
            None => {
                apply(b, &timeouts);
                timeouts_set.insert(uname.clone(), sig);
                if tls {
                    b.put("tls", MapB::new().build());
                    ucm.push(n.add(path, "https to the upstream: gatehouse verifies the targets' certificates (Kong does not unless tls_verify is set); add tls.verify: false for self-signed ones"));
                }
                if let Some(p) = proto {
                    b.put("protocol", Y::str(p));
                }
            }
            Some(prev) if *prev != sig => {
                ucm.push(n.add(
                    path,
                    format!("service {sname:?} shares upstream {uname:?} with another service with other retries or timeouts; the first service's are used"),
                ));
            }
            _ => {}
        }
        ucm.extend(cm);
        return Some(uname.clone());
    }
    let Some(addr) = target_addr(&format!("{host}:{port}")) else {
        n.add(
            &format!("{path}.host"),
            format!("{host:?} is not a host name; service left out"),
        );
        return None;
    };
    let mut uname = sname.to_string();
    let mut k = 2;
    while up_names.contains(&uname) {
        uname = format!("{sname}-{k}");
        k += 1;
    }
    up_names.insert(uname.clone());
    let mut b = MapB::new();
    let mut t = MapB::new();
    t.put("addr", Y::str(addr));
    b.put("targets", Y::Seq(vec![t.build().into()]));
    apply(&mut b, &timeouts);
    if tls {
        b.put("tls", MapB::new().build());
        cm.push(n.add(path, "https to the upstream: gatehouse verifies the target's certificate (Kong does not unless tls_verify is set); add tls.verify: false for a self-signed one"));
    }
    if let Some(p) = proto {
        b.put("protocol", Y::str(p));
    }
    upstreams.push((uname.clone(), b, cm));
    Some(uname)
}

/// Kong 2.x reads a path with regex characters as a regex; 3.x only one starting with `~`.
fn regex_path(p: &str, v3: bool) -> bool {
    if v3 {
        p.starts_with('~')
    } else {
        p.chars().any(|c| "^$*+?()[]{}|\\".contains(c))
    }
}

#[allow(clippy::too_many_arguments)]
fn route_from_kong(
    r: &Route,
    name: &str,
    up: &str,
    plugins: &[(Value, String)],
    path: &str,
    v3: bool,
    n: &mut Notes,
    ctx: &mut Ctx,
) -> Option<Item> {
    let mut cm: Vec<String> = Vec::new();
    let protos = r.protocols.clone().unwrap_or_default();
    let mut https_only = false;
    if !protos.is_empty() {
        let web: Vec<&str> = protos
            .iter()
            .map(String::as_str)
            .filter(|p| matches!(*p, "http" | "https" | "grpc" | "grpcs" | "ws" | "wss"))
            .collect();
        if web.is_empty() {
            n.add(
                &format!("{path}.protocols"),
                format!(
                    "{protos:?} routes cannot be expressed (gatehouse routes HTTP); route left out"
                ),
            );
            return None;
        }
        let plain = web.iter().any(|p| matches!(*p, "http" | "grpc" | "ws"));
        let secure = web.iter().any(|p| matches!(*p, "https" | "grpcs" | "wss"));
        if secure && !plain {
            https_only = true;
        } else if plain && !secure {
            cm.push(n.add(
                &format!("{path}.protocols"),
                "plain-HTTP-only routes cannot be expressed; the route also serves HTTPS",
            ));
        }
        if web.len() != protos.len() {
            cm.push(n.add(
                &format!("{path}.protocols"),
                "non-HTTP protocols are not carried over",
            ));
        }
    }
    let mut paths: Vec<String> = Vec::new();
    let raw_paths = r.paths.clone().unwrap_or_default();
    for (j, p) in raw_paths.iter().enumerate() {
        let pp = format!("{path}.paths[{j}]");
        if regex_path(p, v3) {
            cm.push(n.add(
                &pp,
                format!("regex path {p:?} cannot be expressed (gatehouse matches path prefixes); left out"),
            ));
            continue;
        }
        match crate::router::normalize_prefix(p) {
            Ok(_) => paths.push(p.clone()),
            Err(e) => cm.push(n.add(&pp, format!("{e}; left out"))),
        }
    }
    if !raw_paths.is_empty() && paths.is_empty() {
        n.add(
            path,
            format!("none of its paths can be expressed; route {name:?} left out"),
        );
        return None;
    }
    if paths.is_empty() {
        paths.push("/".into());
    }
    let mut hosts: Vec<String> = Vec::new();
    let raw_hosts = r.hosts.clone().unwrap_or_default();
    for (j, h) in raw_hosts.iter().enumerate() {
        let hp = format!("{path}.hosts[{j}]");
        let (bare, had_port) = match h.rsplit_once(':') {
            Some((b, p)) if p.chars().all(|c| c.is_ascii_digit()) && !b.contains(':') => {
                (b.to_string(), true)
            }
            _ => (h.clone(), false),
        };
        if bare.ends_with(".*") {
            cm.push(n.add(
                &hp,
                format!(
                    "suffix wildcard {h:?} cannot be expressed (only \"*.example.com\"); left out"
                ),
            ));
            continue;
        }
        if crate::router::HostPattern::parse(&bare).is_err() {
            cm.push(n.add(&hp, format!("{h:?} is not a valid host; left out")));
            continue;
        }
        if had_port {
            cm.push(n.add(
                &hp,
                format!("gatehouse matches hosts without the port: {h:?} is matched as {bare:?}"),
            ));
        }
        hosts.push(bare);
    }
    if !raw_hosts.is_empty() && hosts.is_empty() {
        n.add(
            path,
            format!("none of its hosts can be expressed; route {name:?} left out"),
        );
        return None;
    }
    let mut headers = MapB::new();
    for (hn, hv) in r.headers.clone().unwrap_or_default() {
        let vals: Vec<String> = match &hv {
            Value::Sequence(s) => s.iter().filter_map(scalar_text).collect(),
            other => scalar_text(other).into_iter().collect(),
        };
        let hp = format!("{path}.headers.{hn}");
        let Some(first) = vals.first() else {
            continue;
        };
        if first.starts_with("~*") {
            n.add(
                &hp,
                format!(
                    "regex header match {first:?} cannot be expressed; route {name:?} left out"
                ),
            );
            return None;
        }
        if vals.len() > 1 {
            cm.push(n.add(
                &hp,
                format!(
                    "gatehouse matches one value per header: only {first:?} of {} values matches",
                    vals.len()
                ),
            ));
        }
        if hn.eq_ignore_ascii_case("host") {
            continue;
        }
        headers.put(&hn, Y::str(first.clone()));
    }
    let mut b = MapB::new();
    b.put("name", Y::str(name));
    b.put("paths", Y::strs(&paths));
    if let Some(m) = &r.methods {
        if !m.is_empty() {
            let up: Vec<String> = m.iter().map(|s| s.to_ascii_uppercase()).collect();
            b.put("methods", Y::strs(&up));
        }
    }
    if !hosts.is_empty() {
        b.put("hosts", Y::strs(&hosts));
    }
    if !headers.is_empty() {
        b.put("headers", headers.build());
    }
    // Kong's defaults differ from gatehouse's: written out always.
    b.put("strip_path", Y::Bool(r.strip_path.unwrap_or(true)));
    b.put("preserve_host", Y::Bool(r.preserve_host.unwrap_or(false)));
    if https_only {
        // gatehouse refuses `protocols: [https]` unless it can tell an HTTPS request (a
        // server.tls listener, or trusted proxies sending X-Forwarded-Proto), which a Kong
        // file does not say: the route is written without it and the note says how to add it.
        let code = r.https_redirect_status_code.unwrap_or(426);
        cm.push(n.add(
            &format!("{path}.protocols"),
            format!("https only: add `protocols: [https]` and `https_redirect_status_code: {code}` to this route once server.tls or server.trusted_proxies is set (gatehouse refuses it without either); until then the route also serves plain HTTP"),
        ));
    }
    b.put("upstream", Y::str(up));
    let mut out_plugins: Vec<Item> = Vec::new();
    let mut names: HashSet<String> = HashSet::new();
    for (pv, pp) in plugins {
        if let Some(item) = plugin_entry(pv, pp, n, ctx) {
            let nm = match &item.value {
                Y::Map(m) => m
                    .iter()
                    .find(|(k, _)| k == "name")
                    .and_then(|(_, v)| match &v.value {
                        Y::Str(s) => Some(s.clone()),
                        _ => None,
                    })
                    .unwrap_or_default(),
                _ => String::new(),
            };
            if !names.insert(nm.clone()) {
                cm.push(n.add(pp, format!("a second {nm:?} plugin on one route; left out")));
                continue;
            }
            out_plugins.push(item);
        }
    }
    if names.contains("acl") && names.contains("jwt") {
        cm.push(n.add(
            path,
            "with jwt, gatehouse's acl reads the roles from the token's roles claim, not from the consumer's acls groups",
        ));
    }
    if !out_plugins.is_empty() {
        b.put("plugins", Y::Seq(out_plugins));
    }
    leftovers(
        &r.extra,
        &[
            ("regex_priority", "0"),
            ("path_handling", "v0"),
            ("request_buffering", "true"),
            ("response_buffering", "true"),
            ("https_redirect_status_code", "426"),
        ],
        path,
        n,
        &mut cm,
    );
    if r.extra.get("path_handling").and_then(Value::as_str) == Some("v1") {
        cm.retain(|c| !c.contains(".path_handling"));
    }
    Some(Item {
        comments: cm.into_iter().map(|c| format!("kong: {c}")).collect(),
        value: b.build(),
    })
}

/// A plugin entry `{ name, config }` or None (left out, with a note).
fn plugin_entry(pv: &Value, path: &str, n: &mut Notes, ctx: &mut Ctx) -> Option<Item> {
    let p = read::<Plugin>(pv, path, n)?;
    let Some(name) = p.name.clone() else {
        n.add(path, "has no name; left out");
        return None;
    };
    if p.enabled == Some(false) {
        n.add(
            path,
            format!("plugin {name:?} is disabled (enabled: false); left out"),
        );
        return None;
    }
    let mut cm: Vec<String> = Vec::new();
    let mut c = Cfg::new(p.config.as_ref());
    let config = map_plugin(&name, &mut c, path, n, &mut cm, ctx);
    let mut ex = Vec::new();
    leftovers(
        &p.extra,
        &[("protocols", "[grpc, grpcs, http, https]")],
        path,
        n,
        &mut ex,
    );
    cm.extend(ex);
    let (gname, config) = config?;
    let mut b = MapB::new();
    b.put("name", Y::str(gname));
    if !config.is_empty() {
        b.put("config", config.build());
    }
    Some(Item {
        comments: cm.into_iter().map(|c| format!("kong: {c}")).collect(),
        value: b.build(),
    })
}

fn no_templates(list: Vec<String>, p: &str, n: &mut Notes, cm: &mut Vec<String>) -> Vec<String> {
    list.into_iter()
        .filter(|e| {
            if e.contains("$(") {
                cm.push(n.add(
                    p,
                    format!("{e:?}: Kong template values cannot be expressed; left out"),
                ));
                false
            } else if let Some(why) = foreign_syntax(e) {
                cm.push(n.add(p, format!("{e:?} {why}; left out")));
                false
            } else {
                true
            }
        })
        .collect()
}

/// Maps one plugin's config. Returns the gatehouse plugin name and config, or None.
fn map_plugin(
    name: &str,
    c: &mut Cfg,
    path: &str,
    n: &mut Notes,
    cm: &mut Vec<String>,
    ctx: &mut Ctx,
) -> Option<(&'static str, MapB)> {
    let mut o = MapB::new();
    let cp = format!("{path}.config");
    let out: Option<&'static str> = match name {
        "key-auth" => {
            let names = c.strs("key_names").unwrap_or_else(|| vec!["apikey".into()]);
            let names: Vec<String> = names
                .into_iter()
                .filter(|h| {
                    let ok = http::HeaderName::from_bytes(h.as_bytes()).is_ok();
                    if !ok {
                        cm.push(n.add(
                            &format!("{cp}.key_names"),
                            format!("{h:?} is not a header name; left out"),
                        ));
                    }
                    ok
                })
                .collect();
            if names.is_empty() {
                cm.push(n.add(&cp, "no usable key_names; X-API-Key is used"));
            } else {
                o.put("key_names", Y::strs(&names));
            }
            if c.bool("key_in_header") == Some(false) {
                cm.push(n.add(
                    &format!("{cp}.key_in_header"),
                    "false cannot be expressed: gatehouse always reads the key_names headers",
                ));
            }
            if c.bool("key_in_body") == Some(true) {
                cm.push(n.add(
                    &format!("{cp}.key_in_body"),
                    "keys in the request body are not read",
                ));
            }
            if c.bool("key_in_query").unwrap_or(true) {
                let q = names.first().cloned().unwrap_or_else(|| "api_key".into());
                if names.len() > 1 {
                    cm.push(n.add(
                        &format!("{cp}.key_names"),
                        format!("gatehouse reads one query parameter: only {q:?} is read from the query string"),
                    ));
                }
                o.put("query_param", Y::str(q));
            } else {
                o.put("query_param", Y::Null);
            }
            o.put(
                "hide_credentials",
                Y::Bool(c.bool("hide_credentials").unwrap_or(false)),
            );
            if c.bool("run_on_preflight") == Some(false) {
                o.put("run_on_preflight", Y::Bool(false));
            }
            c.finish_auth("key", &cp, n, cm);
            Some("key-auth")
        }
        "jwt" => {
            if let Some(h) = c.strs("header_names") {
                o.put("header_names", Y::strs(&h));
            }
            let uri = c
                .strs("uri_param_names")
                .unwrap_or_else(|| vec!["jwt".into()]);
            if !uri.is_empty() {
                cm.push(n.add(
                    &format!("{cp}.uri_param_names"),
                    format!(
                        "tokens in the query string ({uri:?}) are not read: send them in a header"
                    ),
                ));
            }
            if c.strs("cookie_names").is_some_and(|v| !v.is_empty()) {
                cm.push(n.add(
                    &format!("{cp}.cookie_names"),
                    "tokens in cookies are not read",
                ));
            }
            if let Some(k) = c.str("key_claim_name") {
                o.put("key_claim_name", Y::str(k));
            }
            let claims = c.strs("claims_to_verify").unwrap_or_default();
            let claims: Vec<String> = claims
                .into_iter()
                .filter(|x| x == "exp" || x == "nbf")
                .collect();
            o.put("claims_to_verify", Y::strs(&claims));
            // Kong passes the token on to the upstream.
            o.put("hide_credentials", Y::Bool(false));
            if c.bool("run_on_preflight") == Some(false) {
                o.put("run_on_preflight", Y::Bool(false));
            }
            let b64 = c.bool("secret_is_base64").unwrap_or(false);
            match ctx.jwt_base64 {
                None => ctx.jwt_base64 = Some(b64),
                Some(prev) if prev != b64 => ctx.jwt_base64_mixed = true,
                _ => {}
            }
            if c.num("maximum_expiration").is_some_and(|m| m > 0.0) {
                cm.push(n.add(
                    &format!("{cp}.maximum_expiration"),
                    "a cap on token lifetime is not supported",
                ));
            }
            c.finish_auth("token", &cp, n, cm);
            Some("jwt")
        }
        "acl" => {
            let allow = c
                .strs("allow")
                .or_else(|| c.strs("whitelist"))
                .unwrap_or_default();
            let deny = c
                .strs("deny")
                .or_else(|| c.strs("blacklist"))
                .unwrap_or_default();
            // gatehouse sends no X-Consumer-Groups header, hidden or not.
            let _ = c.get("hide_groups_header");
            if !deny.is_empty() {
                cm.push(n.add(
                    &format!("{cp}.deny"),
                    format!("deny lists cannot be expressed (gatehouse's acl allows listed roles only): {deny:?} not carried over"),
                ));
            }
            c.finish(
                &[
                    ("include_consumer_groups", "false"),
                    ("always_use_authenticated_groups", "false"),
                ],
                &cp,
                n,
                cm,
            );
            if !allow.is_empty() {
                o.put("allow_roles", Y::strs(&allow));
            }
            kept_unless_empty(
                !allow.is_empty(),
                "acl",
                "acl without an allow list",
                path,
                n,
                cm,
            )
        }
        "rate-limiting" => {
            let mut any = false;
            for k in ["second", "minute", "hour", "day"] {
                if let Some(v) = c.num(k).filter(|v| *v >= 1.0) {
                    o.put(k, Y::Int(v as i64));
                    any = true;
                }
            }
            for k in ["month", "year"] {
                if let Some(v) = c.num(k) {
                    cm.push(n.add(
                        &format!("{cp}.{k}"),
                        format!("{v} per {k}: windows longer than a day are not supported"),
                    ));
                }
            }
            let by = c.str("limit_by").unwrap_or_else(|| "consumer".into());
            let gby = match by.as_str() {
                "consumer" => "consumer",
                "ip" => "ip",
                "header" => {
                    if let Some(h) = c.str("header_name") {
                        o.put("header_name", Y::str(h));
                        "header"
                    } else {
                        n.fallback(
                            cm,
                            &format!("{cp}.header_name"),
                            "missing for limit_by header; limited by ip",
                            "ip",
                        )
                    }
                }
                "credential" => n.fallback(
                    cm,
                    &format!("{cp}.limit_by"),
                    "credential: counted per consumer (all of a consumer's keys share one budget)",
                    "consumer",
                ),
                "service" => n.fallback(
                    cm,
                    &format!("{cp}.limit_by"),
                    "service: counted per route (each route of the service has its own budget)",
                    "route",
                ),
                other => n.fallback(
                    cm,
                    &format!("{cp}.limit_by"),
                    format!("{other:?} cannot be expressed; counted per route"),
                    "route",
                ),
            };
            o.put("limit_by", Y::str(gby));
            let policy = c.str("policy").unwrap_or_else(|| "local".into());
            match policy.as_str() {
                "redis" => {
                    let mut r = c.sub("redis");
                    let mut pick = |k: &str, c: &mut Cfg| -> Option<String> {
                        r.str(k).or_else(|| c.str(&format!("redis_{k}")))
                    };
                    let host = pick("host", c);
                    let port = pick("port", c).unwrap_or_else(|| "6379".into());
                    let user = pick("username", c);
                    let pass = pick("password", c);
                    let db = pick("database", c).unwrap_or_else(|| "0".into());
                    let ssl = pick("ssl", c).as_deref() == Some("true");
                    let timeout = pick("timeout", c);
                    for k in [
                        "ssl_verify",
                        "server_name",
                        "connect_timeout",
                        "send_timeout",
                        "read_timeout",
                        "keepalive_pool_size",
                        "keepalive_backlog",
                        "sentinel_master",
                        "sentinel_role",
                        "sentinel_nodes",
                        "sentinel_username",
                        "sentinel_password",
                        "cluster_nodes",
                        "cluster_addresses",
                        "cluster_max_redirections",
                        "connection_is_proxied",
                        "sentinel_addresses",
                    ] {
                        let _ = pick(k, c);
                    }
                    r.finish(&[], &format!("{cp}.redis"), n, cm);
                    match host {
                        Some(h) if target_addr(&format!("{h}:{port}")).is_some() => {
                            let mut url = String::from(if ssl { "rediss://" } else { "redis://" });
                            if user.is_some() || pass.is_some() {
                                url.push_str(&pct(user.as_deref().unwrap_or("")));
                                if let Some(p) = &pass {
                                    url.push(':');
                                    url.push_str(&pct(p));
                                }
                                url.push('@');
                            }
                            url.push_str(&format!("{h}:{port}/{db}"));
                            let mut rb = MapB::new();
                            rb.put("url", Y::str(url));
                            if let Some(t) = timeout
                                .and_then(|t| t.parse::<f64>().ok())
                                .filter(|t| *t > 0.0)
                            {
                                rb.put("timeout", Y::str(secs(t)));
                            }
                            o.put("policy", Y::str("redis"));
                            o.put("redis", rb.build());
                        }
                        _ => {
                            cm.push(n.add(
                                &format!("{cp}.redis_host"),
                                "redis policy without a usable host; counted locally",
                            ));
                        }
                    }
                }
                "local" => {}
                other => {
                    cm.push(n.add(
                        &format!("{cp}.policy"),
                        format!("{other:?} cannot be expressed (gatehouse counts locally or in Redis); counted locally on each node"),
                    ));
                }
            }
            if let Some(f) = c.bool("fault_tolerant") {
                o.put("fault_tolerant", Y::Bool(f));
            }
            if c.bool("hide_client_headers") == Some(true) {
                o.put("hide_client_headers", Y::Bool(true));
            }
            // Read so that they are not reported twice.
            let _ = c.get("header_name");
            let _ = c.get("path");
            for k in [
                "host",
                "port",
                "username",
                "password",
                "database",
                "ssl",
                "ssl_verify",
                "server_name",
                "timeout",
            ] {
                let _ = c.get(&format!("redis_{k}"));
            }
            c.finish(
                &[
                    ("sync_rate", "-1"),
                    ("error_code", "429"),
                    ("error_message", "\"API rate limit exceeded\""),
                ],
                &cp,
                n,
                cm,
            );
            let why = "no second, minute, hour or day limit";
            kept_unless_empty(any, "rate-limiting", why, path, n, cm)
        }
        "cors" => {
            let origins = c.strs("origins").unwrap_or_default();
            let mut keep: Vec<String> = Vec::new();
            for o2 in origins {
                if o2 == "*" {
                    keep = vec!["*".into()];
                    break;
                }
                let plain = o2.contains("://")
                    && !o2.chars().any(|ch| "^$*+?()[]{}|\\".contains(ch))
                    && !o2
                        .trim_end_matches('/')
                        .split("://")
                        .nth(1)
                        .unwrap_or("")
                        .contains('/')
                    && o2 != "null";
                if plain {
                    keep.push(o2.trim_end_matches('/').to_string());
                } else {
                    cm.push(n.add(
                        &format!("{cp}.origins"),
                        format!("{o2:?} (a regex or not scheme://host[:port]) cannot be expressed; left out"),
                    ));
                }
            }
            let star = keep.is_empty() || keep == ["*"];
            if keep.is_empty() {
                keep = vec!["*".into()];
            }
            o.put("origins", Y::strs(&keep));
            if let Some(m) = c.strs("methods") {
                o.put("methods", Y::strs(&m));
            }
            if let Some(h) = c.strs("headers") {
                o.put("headers", Y::strs(&h));
            }
            if let Some(h) = c.strs("exposed_headers") {
                o.put("exposed_headers", Y::strs(&h));
            }
            if c.bool("credentials") == Some(true) {
                if star {
                    cm.push(n.add(
                        &format!("{cp}.credentials"),
                        "not allowed with any origin (\"*\"); left out",
                    ));
                } else {
                    o.put("credentials", Y::Bool(true));
                }
            }
            if let Some(m) = c.num("max_age").filter(|m| *m >= 0.0) {
                o.put("max_age", Y::Int(m as i64));
            }
            c.finish(
                &[
                    ("preflight_continue", "false"),
                    ("private_network", "false"),
                ],
                &cp,
                n,
                cm,
            );
            Some("cors")
        }
        "request-transformer" | "response-transformer" => {
            let req = name == "request-transformer";
            for op in ["remove", "rename", "replace", "add", "append"] {
                let mut s = c.sub(op);
                let opp = format!("{cp}.{op}");
                let mut ob = MapB::new();
                if let Some(h) = s.strs("headers") {
                    let h = no_templates(h, &format!("{opp}.headers"), n, cm);
                    if !h.is_empty() {
                        ob.put("headers", Y::strs(&h));
                    }
                }
                if req {
                    if let Some(q) = s.strs("querystring") {
                        let q = no_templates(q, &format!("{opp}.querystring"), n, cm);
                        if !q.is_empty() {
                            ob.put("querystring", Y::strs(&q));
                        }
                    }
                    if op == "replace" {
                        if let Some(u) = s.str("uri") {
                            cm.push(n.add(
                                &format!("{opp}.uri"),
                                format!("rewriting the path to {u:?} is not supported"),
                            ));
                        }
                    }
                } else if let Some(j) = s.strs("json") {
                    if matches!(op, "remove" | "rename") {
                        ob.put("json", Y::strs(&j));
                    } else if !j.is_empty() {
                        cm.push(n.add(
                            &format!("{opp}.json"),
                            "adding or replacing JSON members of answers is not supported",
                        ));
                    }
                }
                s.finish(&[], &opp, n, cm);
                if ob.is_empty() {
                    continue;
                }
                if op == "append" {
                    cm.push(n.add(
                        &opp,
                        "append (add a value even when one is present) is not supported; left out",
                    ));
                    continue;
                }
                o.put(op, ob.build());
            }
            if let Some(m) = c.str("http_method") {
                cm.push(n.add(
                    &format!("{cp}.http_method"),
                    format!("changing the method to {m:?} is not supported"),
                ));
            }
            c.finish(&[], &cp, n, cm);
            Some(if req {
                "request-transformer"
            } else {
                "response-transformer"
            })
        }
        "ip-restriction" => {
            for (k, alt) in [("allow", "whitelist"), ("deny", "blacklist")] {
                let list = c.strs(k).or_else(|| c.strs(alt)).unwrap_or_default();
                let ok: Vec<String> = list
                    .into_iter()
                    .filter(|a| {
                        let good = a.parse::<ipnet::IpNet>().is_ok()
                            || a.parse::<std::net::IpAddr>().is_ok();
                        if !good {
                            cm.push(n.add(
                                &format!("{cp}.{k}"),
                                format!("{a:?} is not an IP or CIDR; left out"),
                            ));
                        }
                        good
                    })
                    .collect();
                if !ok.is_empty() {
                    o.put(k, Y::strs(&ok));
                }
            }
            c.finish(
                &[
                    ("status", "403"),
                    ("message", "\"Your IP address is not allowed\""),
                ],
                &cp,
                n,
                cm,
            );
            let why = "no usable allow or deny entry";
            kept_unless_empty(!o.is_empty(), "ip-restriction", why, path, n, cm)
        }
        "request-size-limiting" => {
            let size = c.num("allowed_payload_size").unwrap_or(128.0).max(0.0);
            let unit = c.str("size_unit").unwrap_or_else(|| "megabytes".into());
            let bytes = match unit.as_str() {
                "bytes" => size,
                "kilobytes" => size * 1024.0,
                _ => size * 1024.0 * 1024.0,
            };
            o.put("allowed_payload_size", Y::Int(bytes.round() as i64));
            if c.bool("require_content_length") == Some(true) {
                cm.push(n.add(
                    &format!("{cp}.require_content_length"),
                    "requiring Content-Length is not supported (chunked bodies are counted as they arrive)",
                ));
            }
            c.finish(&[], &cp, n, cm);
            Some("request-size-limiting")
        }
        "proxy-cache" => {
            let strategy = c.str("strategy").unwrap_or_else(|| "memory".into());
            if strategy != "memory" {
                cm.push(n.add(
                    &format!("{cp}.strategy"),
                    format!("{strategy:?}: gatehouse caches in memory only"),
                ));
            }
            if let Some(t) = c.num("cache_ttl").filter(|t| *t >= 0.0) {
                o.put("ttl", Y::str(format!("{}s", t as u64)));
            }
            if let Some(m) = c.strs("request_method") {
                let (ok, bad): (Vec<String>, Vec<String>) = m
                    .into_iter()
                    .map(|x| x.to_ascii_uppercase())
                    .partition(|x| x == "GET" || x == "HEAD");
                if !bad.is_empty() {
                    cm.push(n.add(
                        &format!("{cp}.request_method"),
                        format!("{bad:?}: only GET and HEAD are cached"),
                    ));
                }
                if !ok.is_empty() {
                    o.put("methods", Y::strs(&ok));
                }
            }
            if let Some(codes) = c.get("response_code").and_then(Value::as_sequence) {
                let mut ok = Vec::new();
                for v in codes {
                    match v.as_u64() {
                        Some(s) if (200..=599).contains(&s) && s != 206 && s != 304 => {
                            ok.push(Item::from(Y::Int(s as i64)))
                        }
                        _ => cm.push(n.add(
                            &format!("{cp}.response_code"),
                            format!("{} cannot be cached; left out", show(v)),
                        )),
                    }
                }
                if !ok.is_empty() {
                    o.put("status", Y::Seq(ok));
                }
            }
            if let Some(v) = c.strs("vary_headers") {
                if !v.is_empty() {
                    o.put("vary_headers", Y::strs(&v));
                }
            }
            if c.strs("content_type").is_none_or(|v| !v.is_empty()) {
                cm.push(n.add(
                    &format!("{cp}.content_type"),
                    "answers are cached whatever their Content-Type",
                ));
            }
            if c.bool("cache_control") != Some(true) {
                cm.push(n.add(
                    &format!("{cp}.cache_control"),
                    "gatehouse always honours the upstream's Cache-Control",
                ));
            }
            c.finish(
                &[("ignore_uri_case", "false"), ("cache_ttl", "300")],
                &cp,
                n,
                cm,
            );
            let _ = c.get("memory");
            Some("proxy-cache")
        }
        "correlation-id" => {
            let h = c
                .str("header_name")
                .unwrap_or_else(|| "Kong-Request-ID".into());
            if http::HeaderName::from_bytes(h.as_bytes()).is_ok() {
                o.put("header_name", Y::str(h));
            } else {
                cm.push(n.add(
                    &format!("{cp}.header_name"),
                    format!("{h:?} is not a header name; X-Request-ID is used"),
                ));
            }
            o.put(
                "echo_downstream",
                Y::Bool(c.bool("echo_downstream").unwrap_or(false)),
            );
            if let Some(g) = c
                .str("generator")
                .filter(|g| g != "uuid#counter" && g != "uuid")
            {
                cm.push(n.add(
                    &format!("{cp}.generator"),
                    format!("{g:?}: gatehouse generates its own ids (UUIDs)"),
                ));
            }
            c.finish(&[], &cp, n, cm);
            Some("correlation-id")
        }
        "prometheus" => {
            cm.push(n.add(
                path,
                "prometheus is not a plugin in gatehouse: metrics are always served at GET /metrics on the admin listener; plugin left out",
            ));
            for k in [
                "per_consumer",
                "status_code_metrics",
                "latency_metrics",
                "bandwidth_metrics",
                "upstream_health_metrics",
                "ai_metrics",
            ] {
                let _ = c.get(k);
            }
            None
        }
        "bot-detection" => {
            cm.push(n.add(
                path,
                "bot-detection (User-Agent allow/deny patterns) cannot be expressed; plugin left out",
            ));
            let _ = c.get("allow");
            let _ = c.get("deny");
            None
        }
        other => n.fallback(
            cm,
            path,
            format!("plugin {other:?} has no gatehouse equivalent; left out"),
            None,
        ),
    };
    out.map(|g| (g, o))
}

/// Percent-encodes a URL userinfo part.
fn pct(s: &str) -> String {
    let mut o = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            o.push(b as char);
        } else {
            o.push_str(&format!("%{b:02X}"));
        }
    }
    o
}

fn consumer_from_kong(
    c: &Consumer,
    path: &str,
    n: &mut Notes,
    names: &mut HashSet<String>,
    seen_keys: &mut HashSet<String>,
    seen_jwt: &mut HashSet<String>,
    jwt_b64: bool,
) -> Option<Item> {
    let mut cm: Vec<String> = Vec::new();
    let Some(username) = c
        .username
        .clone()
        .or_else(|| c.custom_id.clone())
        .filter(|u| !u.is_empty())
    else {
        n.add(path, "has neither username nor custom_id; left out");
        return None;
    };
    if !names.insert(username.clone()) {
        n.add(path, format!("duplicate consumer {username:?}; left out"));
        return None;
    }
    if c.username.is_none() {
        cm.push(n.add(path, "no username: its custom_id is used as the username"));
    }
    let mut b = MapB::new();
    b.put("username", Y::str(&username));
    let roles: Vec<String> = c
        .acls
        .clone()
        .unwrap_or_default()
        .iter()
        .filter_map(|a| a.get("group").and_then(scalar_text))
        .collect();
    if !roles.is_empty() {
        b.put("roles", Y::strs(&roles));
    }
    let mut keys = Vec::new();
    for (j, k) in c
        .keyauth_credentials
        .clone()
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        let kp = format!("{path}.keyauth_credentials[{j}]");
        match k.get("key").and_then(scalar_text) {
            None => {
                cm.push(n.add(
                    &kp,
                    "has no key (Kong generates one); left out: set the key explicitly",
                ));
            }
            Some(key) if key.is_empty() => {
                cm.push(n.add(&kp, "empty key; left out"));
            }
            Some(key) => {
                if let Some(why) = foreign_syntax(&key) {
                    // Never the key itself in a note.
                    cm.push(n.add(&kp, format!("the key {why}; left out")));
                } else if !seen_keys.insert(key.clone()) {
                    cm.push(n.add(
                        &kp,
                        "this key is already used by another credential; left out",
                    ));
                } else {
                    let mut m = MapB::new();
                    m.put("key", Y::str(key));
                    keys.push(m.build().into());
                }
            }
        }
        if let Some(ttl) = k.get("ttl").filter(|v| !v.is_null()) {
            cm.push(n.add(
                &kp,
                format!(
                    "ttl {} is not supported: the key does not expire",
                    show(ttl)
                ),
            ));
        }
    }
    if !keys.is_empty() {
        b.put("keyauth_credentials", Y::Seq(keys));
    }
    let mut secrets = Vec::new();
    for (j, s) in c.jwt_secrets.clone().unwrap_or_default().iter().enumerate() {
        let sp = format!("{path}.jwt_secrets[{j}]");
        let Some(key) = s.get("key").and_then(scalar_text) else {
            cm.push(n.add(&sp, "has no key (Kong generates one); left out"));
            continue;
        };
        let alg = s
            .get("algorithm")
            .and_then(scalar_text)
            .unwrap_or_else(|| "HS256".into());
        let mut m = MapB::new();
        m.put("key", Y::str(&key));
        m.put("algorithm", Y::str(&alg));
        match alg.as_str() {
            "HS256" | "HS384" | "HS512" => {
                let Some(secret) = s.get("secret").and_then(scalar_text) else {
                    cm.push(n.add(&sp, "has no secret (Kong generates one); left out"));
                    continue;
                };
                let need = match alg.as_str() {
                    "HS256" => 32,
                    "HS384" => 48,
                    _ => 64,
                };
                let len = if jwt_b64 {
                    use base64::Engine as _;
                    base64::engine::general_purpose::STANDARD
                        .decode(secret.as_bytes())
                        .map(|v| v.len())
                        .unwrap_or(0)
                } else {
                    secret.len()
                };
                if let Some(why) = foreign_syntax(&secret) {
                    cm.push(n.add(&sp, format!("the secret {why}; left out")));
                    continue;
                }
                if len < need {
                    cm.push(n.add(
                        &sp,
                        format!("the {alg} secret is shorter than {need} bytes, which gatehouse refuses; left out"),
                    ));
                    continue;
                }
                m.put("secret", Y::str(secret));
                if jwt_b64 {
                    m.put("secret_is_base64", Y::Bool(true));
                }
            }
            "RS256" | "RS384" | "RS512" | "ES256" | "ES384" => {
                cm.push(n.add(
                    &sp,
                    format!("{alg} key {key:?}: the inline rsa_public_key cannot be carried over; save it to a PEM file and add rsa_public_key_file or ecdsa_public_key_file to this entry; left out"),
                ));
                continue;
            }
            other => {
                cm.push(n.add(
                    &sp,
                    format!("algorithm {other:?} is not supported; left out"),
                ));
                continue;
            }
        }
        if !seen_jwt.insert(key.clone()) {
            cm.push(n.add(
                &sp,
                format!("key {key:?} is already used by another consumer; left out"),
            ));
            continue;
        }
        secrets.push(m.build().into());
    }
    if !secrets.is_empty() {
        b.put("jwt_secrets", Y::Seq(secrets));
    }
    for k in [
        "basicauth_credentials",
        "hmacauth_credentials",
        "oauth2_credentials",
        "mtls_auth_credentials",
    ] {
        if c.extra.get(k).is_some_and(|v| !is_default(v, None)) {
            cm.push(n.add(
                &format!("{path}.{k}"),
                "this kind of credential is not supported; left out",
            ));
        }
    }
    if c.plugins.as_ref().is_some_and(|p| !p.is_empty()) {
        cm.push(n.add(
            &format!("{path}.plugins"),
            "plugins scoped to a consumer are not carried over",
        ));
    }
    let extra: Extra = c
        .extra
        .iter()
        .filter(|(k, _)| !k.ends_with("_credentials"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let mut ex = Vec::new();
    leftovers(&extra, &[], path, n, &mut ex);
    cm.extend(ex);
    Some(Item {
        comments: cm.into_iter().map(|c| format!("kong: {c}")).collect(),
        value: b.build(),
    })
}
