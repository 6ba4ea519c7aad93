//! DNS service discovery (`upstreams[].discovery`): the targets of an upstream are the A and
//! AAAA records of a host name (`dns` + `port`), or the targets of the SRV records of a
//! service name (`srv`: each record's target name, looked up in turn, with the record's port
//! and weight; the records of the lowest priority are the primaries, all others backups).
//! They are looked up again while the gateway runs. Lookups run in a Pingora background
//! service next to the health checks, never on the request path (`upstream_peer` only loads
//! the current [`TargetSet`]).
//!
//! - The next lookup is due when the answer's TTL ends (for SRV, the shortest TTL of the SRV
//!   answer and of its targets' addresses), bounded by `min_interval` and `interval`; after a
//!   failed or empty lookup, `min_interval` later.
//! - A changed answer builds a new set and swaps it in whole. Targets are keyed by `ip:port`
//!   in the [`StateRegistry`], so health, circuit state and in-flight counts carry over for
//!   addresses that stay. An address that appears later starts unhealthy when the upstream
//!   has active checks (it takes traffic once it passes them), unless no address of the new
//!   set could take traffic at all.
//! - A failed or empty lookup keeps the last good set: DNS trouble never empties a pool.
//! - The last good answer lives in a [`Registry`] by upstream name, so a reload that keeps the
//!   name, port (or SRV name) and resolvers starts from it without a lookup.
//!
//! hickory-resolver does the lookups, with its cache off: the TTL is honoured by the schedule
//! here, and a lookup always asks the server.

use super::{LiveConfig, StateRegistry, Target, TargetSet, TargetState, Upstream};
use crate::config::diag::Compiler;
use crate::config::raw::{RawDiscovery, RawUpstream};
use crate::util::clock::now_ms;
use async_trait::async_trait;
use hickory_resolver::config::{
    LookupIpStrategy, NameServerConfig, NameServerConfigGroup, Protocol, ResolverConfig,
    ResolverOpts,
};
use hickory_resolver::error::ResolveErrorKind;
use hickory_resolver::TokioAsyncResolver;
use parking_lot::Mutex;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often the scheduler looks for due lookups.
const TICK: Duration = Duration::from_millis(100);

/// Most addresses taken from one answer (an upstream has at most 64 targets).
const MAX_ADDRESSES: usize = 64;

/// `discovery` of one upstream, compiled.
#[derive(Debug)]
pub struct Discovery {
    /// The name looked up: the host name (`dns`) or the SRV name (`srv`), normalized.
    pub name: String,
    /// `Some(port)`: address records of `name`, all on this port; `None`: SRV records.
    pub port: Option<u16>,
    pub interval: Duration,
    pub min_interval: Duration,
    pub timeout: Duration,
    /// Explicit DNS servers (empty: the system's resolv.conf).
    pub resolvers: Vec<SocketAddr>,
    pub allow_empty: bool,
    /// The lookups and last good answer (shared with later configs that keep the name).
    pub state: Arc<DnsState>,
    /// Generation of the answer the upstream's current set was built from.
    built_from: AtomicU64,
    /// Held while a set is rebuilt, so two rebuilds (a lookup's and the scheduler's catch-up)
    /// cannot store an older set after a newer one. Never taken on the request path.
    sync_lock: Mutex<()>,
}

/// Result of the last lookup, for `/status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LookupResult {
    Ok,
    Empty,
    Error,
}

impl LookupResult {
    pub const ALL: [LookupResult; 3] = [LookupResult::Ok, LookupResult::Empty, LookupResult::Error];

    pub fn as_str(self) -> &'static str {
        match self {
            LookupResult::Ok => "ok",
            LookupResult::Empty => "empty",
            LookupResult::Error => "error",
        }
    }
}

/// One target found in DNS.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Found {
    /// SRV priority (0 for address records): the lowest of an answer are the primaries.
    priority: u16,
    ip: IpAddr,
    port: u16,
    /// SRV weight (0 counts as 1); 1 for address records.
    weight: u32,
    /// The name the target is reached as (`Host`, TLS server name): the SRV target, or the
    /// discovery name.
    host: String,
}

impl Found {
    fn sock(&self) -> SocketAddr {
        SocketAddr::new(self.ip, self.port)
    }
}

/// The last good answer.
#[derive(Debug, Clone, Default)]
struct Answer {
    /// Sorted by priority, then address; one entry per `ip:port`.
    found: Vec<Found>,
    /// `now_ms()` when it was received (0: never).
    at_ms: u64,
    /// Increments when `found` changes.
    generation: u64,
}

/// Lookups of one name: what survives a reload.
#[derive(Debug)]
pub struct DnsState {
    /// Name, port and resolvers: a config that changes one of them starts afresh.
    key: String,
    answer: Mutex<Answer>,
    /// `now_ms()` when the next lookup is due.
    next_ms: AtomicU64,
    busy: AtomicBool,
    /// The last lookup's result and error text (for `/status`).
    last: Mutex<(Option<LookupResult>, Option<String>)>,
    /// `upstream_dns_resolutions_total` by [`LookupResult::ALL`] index.
    counts: [AtomicU64; 3],
}

impl DnsState {
    fn new(key: String, found: Vec<Found>, first: LookupResult, error: Option<String>) -> Self {
        let counts = [const { AtomicU64::new(0) }; 3];
        counts[first as usize].store(1, Ordering::Relaxed);
        DnsState {
            key,
            answer: Mutex::new(Answer {
                at_ms: if found.is_empty() { 0 } else { now_ms().max(1) },
                found,
                generation: 1,
            }),
            next_ms: AtomicU64::new(0),
            busy: AtomicBool::new(false),
            last: Mutex::new((Some(first), error)),
            counts,
        }
    }

    /// Lookups so far by result.
    pub fn count(&self, r: LookupResult) -> u64 {
        self.counts[r as usize].load(Ordering::Relaxed)
    }

    /// Targets in the last good answer.
    pub fn target_count(&self) -> usize {
        self.answer.lock().found.len()
    }

    /// Seconds since the last good answer (`None`: there never was one).
    pub fn age_seconds(&self) -> Option<f64> {
        let at = self.answer.lock().at_ms;
        (at > 0).then(|| now_ms().saturating_sub(at) as f64 / 1000.0)
    }
}

/// Last good answers by upstream name, kept across reloads.
#[derive(Debug, Default)]
pub struct Registry {
    by_upstream: Mutex<HashMap<String, Arc<DnsState>>>,
}

impl Registry {
    /// Forgets upstreams that no longer use discovery (after a reload is swapped in).
    pub fn retain(&self, upstreams: &[Arc<Upstream>]) {
        self.by_upstream.lock().retain(|name, st| {
            upstreams.iter().any(|u| {
                u.name == *name
                    && u.discovery
                        .as_ref()
                        .is_some_and(|d| Arc::ptr_eq(&d.state, st))
            })
        });
    }
}

impl Discovery {
    fn key(name: &str, port: Option<u16>, resolvers: &[SocketAddr]) -> String {
        format!("{name}|{port:?}|{resolvers:?}")
    }

    fn resolver(&self) -> Result<TokioAsyncResolver, String> {
        let (config, mut opts) = if self.resolvers.is_empty() {
            hickory_resolver::system_conf::read_system_conf()
                .map_err(|e| format!("cannot read the system's resolver configuration: {e}"))?
        } else {
            let mut group = NameServerConfigGroup::with_capacity(self.resolvers.len() * 2);
            for addr in &self.resolvers {
                // UDP first; TCP for answers that do not fit a datagram.
                group.push(NameServerConfig::new(*addr, Protocol::Udp));
                group.push(NameServerConfig::new(*addr, Protocol::Tcp));
            }
            let mut opts = ResolverOpts::default();
            // Only the servers named in the config answer: no /etc/hosts.
            opts.use_hosts_file = false;
            (ResolverConfig::from_parts(None, vec![], group), opts)
        };
        opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        // The schedule here honours the TTL; every lookup asks the server.
        opts.cache_size = 0;
        opts.timeout = self.timeout;
        opts.attempts = 1;
        Ok(TokioAsyncResolver::tokio(config, opts))
    }

    /// One lookup: the targets (sorted, one per `ip:port`) and the answer's TTL.
    async fn lookup(&self) -> Result<(Vec<Found>, Duration), (LookupResult, String)> {
        let resolver = self.resolver().map_err(|e| (LookupResult::Error, e))?;
        let (mut found, valid_until) = match self.port {
            Some(port) => {
                let (ips, until) = addresses(&resolver, self.name.as_str(), self.timeout).await?;
                let found = ips
                    .into_iter()
                    .map(|ip| Found {
                        priority: 0,
                        ip,
                        port,
                        weight: 1,
                        host: self.name.clone(),
                    })
                    .collect();
                (found, until)
            }
            None => self.lookup_srv(&resolver).await?,
        };
        found.sort();
        // One target per address: the first (lowest priority) record that names it wins.
        let mut seen = std::collections::HashSet::new();
        found.retain(|f| seen.insert(f.sock()));
        found.truncate(MAX_ADDRESSES);
        if found.is_empty() {
            return Err((LookupResult::Empty, "no address records".into()));
        }
        Ok((found, valid_until.saturating_duration_since(Instant::now())))
    }

    /// The SRV records of `name`, each target looked up for its addresses (in parallel). A
    /// target without addresses is left out; a target whose lookup fails fails the whole
    /// lookup (the last good answer stays rather than a set missing a live target).
    async fn lookup_srv(
        &self,
        resolver: &TokioAsyncResolver,
    ) -> Result<(Vec<Found>, Instant), (LookupResult, String)> {
        let res = tokio::time::timeout(
            self.timeout + Duration::from_millis(100),
            resolver.srv_lookup(self.name.as_str()),
        )
        .await;
        let srv = match res {
            Err(_) => return Err((LookupResult::Error, "timed out".into())),
            Ok(Err(e)) => return Err(lookup_error(e, "SRV")),
            Ok(Ok(l)) => l,
        };
        let mut valid_until = srv.as_lookup().valid_until();
        // A target of "." means "no such service here" (RFC 2782).
        let mut records: Vec<(u16, u16, u16, hickory_resolver::Name)> = srv
            .iter()
            .filter(|r| !r.target().is_root())
            .map(|r| (r.priority(), r.weight(), r.port(), r.target().clone()))
            .collect();
        if records.is_empty() {
            return Err((LookupResult::Empty, "no SRV record names a target".into()));
        }
        records.sort();
        records.truncate(MAX_ADDRESSES);
        let mut names: Vec<hickory_resolver::Name> = records.iter().map(|r| r.3.clone()).collect();
        names.sort();
        names.dedup();
        let mut lookups = tokio::task::JoinSet::new();
        for n in names {
            let (resolver, timeout) = (resolver.clone(), self.timeout);
            lookups.spawn(async move {
                // The target as a fully qualified name: no search domains.
                let res = addresses(&resolver, &n.to_utf8(), timeout).await;
                (n, res)
            });
        }
        let mut by_name = HashMap::new();
        while let Some(done) = lookups.join_next().await {
            let Ok((n, res)) = done else {
                return Err((LookupResult::Error, "a target lookup failed".into()));
            };
            match res {
                Ok((ips, until)) => {
                    valid_until = valid_until.min(until);
                    by_name.insert(n, ips);
                }
                // A target without addresses is not there: the others still are.
                Err((LookupResult::Empty, _)) => {}
                Err((r, e)) => return Err((r, format!("SRV target {n}: {e}"))),
            }
        }
        let mut found = Vec::new();
        for (priority, weight, port, target) in records {
            let Some(ips) = by_name.get(&target) else {
                continue;
            };
            let host = target.to_utf8().trim_end_matches('.').to_ascii_lowercase();
            for ip in ips {
                found.push(Found {
                    priority,
                    ip: *ip,
                    port,
                    weight: u32::from(weight.max(1)),
                    host: host.clone(),
                });
            }
        }
        Ok((found, valid_until))
    }

    /// Looks the name up once and records the result; returns true when the answer changed.
    async fn refresh(&self, upstream: &str) -> bool {
        let st = &self.state;
        let res = self.lookup().await;
        let now = now_ms();
        let (result, wait) = match &res {
            Ok((_, ttl)) => (
                LookupResult::Ok,
                (*ttl).clamp(self.min_interval, self.interval),
            ),
            Err((r, _)) => (*r, self.min_interval),
        };
        st.counts[result as usize].fetch_add(1, Ordering::Relaxed);
        st.next_ms
            .store(now + wait.as_millis() as u64, Ordering::Relaxed);
        match res {
            Ok((found, _)) => {
                *st.last.lock() = (Some(LookupResult::Ok), None);
                let mut a = st.answer.lock();
                a.at_ms = now.max(1);
                if a.found == found {
                    return false;
                }
                tracing::info!(
                    upstream,
                    name = %self.name,
                    before = %summary(&a.found),
                    now = %summary(&found),
                    "DNS answer changed: the upstream's targets follow"
                );
                a.found = found;
                a.generation += 1;
                true
            }
            Err((r, e)) => {
                let kept = st.answer.lock().found.len();
                tracing::warn!(
                    upstream,
                    name = %self.name,
                    result = r.as_str(),
                    error = %e,
                    kept_addresses = kept,
                    "DNS lookup failed; the last good addresses stay in use"
                );
                *st.last.lock() = (Some(r), Some(e));
                false
            }
        }
    }

    /// Rebuilds `up`'s target set when the last good answer is newer than the set.
    pub fn sync(&self, up: &Upstream, states: &StateRegistry) {
        let _one_at_a_time = self.sync_lock.lock();
        let answer = {
            let a = self.state.answer.lock();
            if self.built_from.load(Ordering::Acquire) == a.generation {
                return;
            }
            a.clone()
        };
        self.built_from.store(answer.generation, Ordering::Release);
        let old = up.targets();
        let checked = up.health_check.is_some();
        let mut created = Vec::new();
        let (primaries, backups) = split(&answer.found, |f, backup| {
            let (t, new) = target(&up.name, f, backup, states, checked);
            if new {
                created.push(t.state.clone());
            }
            t
        });
        let now = now_ms();
        let all = || primaries.iter().chain(&backups);
        if all().next().is_some() && !all().any(|t| t.state.available(now)) {
            // Nothing could take traffic until the new addresses pass a check: better to
            // try them at once than to answer 503 meanwhile.
            for st in &created {
                st.healthy.store(true, Ordering::Relaxed);
            }
        }
        let removed: Vec<&Target> = old
            .targets
            .iter()
            .filter(|o| !answer.found.iter().any(|f| f.sock() == o.sock))
            .collect();
        for t in &removed {
            states.forget(&up.name, &t.addr);
            crate::observe::metrics::forget_target(&up.name, &t.addr);
        }
        up.set
            .store(Arc::new(TargetSet::new(up.balance, primaries, backups)));
    }

    /// The `discovery` part of `/status`.
    pub fn describe(&self) -> serde_json::Value {
        let st = &self.state;
        let (last, error) = st.last.lock().clone();
        let next = st.next_ms.load(Ordering::Relaxed).saturating_sub(now_ms());
        let found = st.answer.lock().found.clone();
        let mut v = serde_json::json!({
            "answer_age_seconds": st.age_seconds(),
            "last_lookup": last.map(LookupResult::as_str),
            "last_error": error,
            "next_lookup_in_seconds": next as f64 / 1000.0,
        });
        let extra = match self.port {
            Some(port) => serde_json::json!({
                "dns": self.name,
                "port": port,
                "addresses": found.iter().map(|f| f.ip.to_string()).collect::<Vec<_>>(),
            }),
            None => {
                let lowest = found.first().map_or(0, |f| f.priority);
                serde_json::json!({
                    "srv": self.name,
                    "records": found.iter().map(|f| serde_json::json!({
                        "target": f.host,
                        "addr": f.sock().to_string(),
                        "priority": f.priority,
                        "weight": f.weight,
                        "backup": f.priority > lowest,
                    })).collect::<Vec<_>>(),
                })
            }
        };
        if let (Some(v), serde_json::Value::Object(extra)) = (v.as_object_mut(), extra) {
            v.extend(extra);
        }
        v
    }
}

/// The address records of `name` (A and AAAA, sorted, no duplicates) and when they expire.
async fn addresses(
    resolver: &TokioAsyncResolver,
    name: &str,
    timeout: Duration,
) -> Result<(Vec<IpAddr>, Instant), (LookupResult, String)> {
    // hickory has its own per-query timeout; this bounds the whole lookup (A and AAAA).
    let res = tokio::time::timeout(
        timeout * 2 + Duration::from_millis(100),
        resolver.lookup_ip(name),
    )
    .await;
    let lookup = match res {
        Err(_) => return Err((LookupResult::Error, "timed out".into())),
        Ok(Err(e)) => return Err(lookup_error(e, "address")),
        Ok(Ok(l)) => l,
    };
    let mut ips: Vec<IpAddr> = lookup.iter().collect();
    ips.sort();
    ips.dedup();
    if ips.is_empty() {
        return Err((LookupResult::Empty, "no address records".into()));
    }
    Ok((ips, lookup.valid_until()))
}

/// A failed query as a lookup result: no records is `Empty`, anything else an `Error`.
fn lookup_error(e: hickory_resolver::error::ResolveError, what: &str) -> (LookupResult, String) {
    match e.kind() {
        ResolveErrorKind::NoRecordsFound { response_code, .. } => (
            LookupResult::Empty,
            format!("no {what} records ({response_code})"),
        ),
        _ => (LookupResult::Error, e.to_string()),
    }
}

/// `ip:port` of each target, with priority and weight for SRV answers (for the log).
fn summary(found: &[Found]) -> String {
    let parts: Vec<String> = found
        .iter()
        .map(|f| {
            if f.priority == 0 && f.weight == 1 {
                f.sock().to_string()
            } else {
                format!(
                    "{} (priority {}, weight {})",
                    f.sock(),
                    f.priority,
                    f.weight
                )
            }
        })
        .collect();
    format!("[{}]", parts.join(", "))
}

/// The answer as targets: the lowest priority's are the primaries, the others backups.
fn split(
    found: &[Found],
    mut make: impl FnMut(&Found, bool) -> Target,
) -> (Vec<Target>, Vec<Target>) {
    let lowest = found.iter().map(|f| f.priority).min().unwrap_or(0);
    let (mut primaries, mut backups) = (Vec::new(), Vec::new());
    for f in found {
        if f.priority == lowest {
            primaries.push(make(f, false));
        } else {
            backups.push(make(f, true));
        }
    }
    (primaries, backups)
}

/// The target for one answer entry, with its state from the registry (made if new).
fn target(
    upstream: &str,
    f: &Found,
    backup: bool,
    states: &StateRegistry,
    start_unhealthy: bool,
) -> (Target, bool) {
    let sock = f.sock();
    let addr = sock.to_string();
    let (state, new) = states.get_or_insert_with(upstream, &addr, || {
        let st = TargetState::default();
        if start_unhealthy {
            st.healthy.store(false, Ordering::Relaxed);
        }
        st
    });
    let target = Target {
        addr,
        host: format!("{}:{}", f.host, f.port),
        sock,
        weight: f.weight,
        backup,
        state,
    };
    (target, new)
}

/// `name` trimmed, without a final dot, lower case; `None` when it is not a host name.
fn host_name(name: &str) -> Option<String> {
    let n = name.trim().trim_end_matches('.').to_ascii_lowercase();
    let valid = !n.is_empty()
        && n.len() <= 253
        && n.parse::<IpAddr>().is_err()
        && n.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    valid.then_some(n)
}

/// The initial targets of a discovery: primaries and backups.
pub type Initial = (Vec<Target>, Vec<Target>);

/// Compiles `discovery` of upstream `p`, looking the name up now unless a previous config
/// already has an answer for the same name, port and resolvers. Returns the discovery and the
/// initial primaries and backups (which start healthy, as configured targets do).
pub fn compile(
    c: &mut Compiler,
    p: &str,
    u: &RawUpstream,
    d: &RawDiscovery,
    states: &StateRegistry,
) -> (Discovery, Initial) {
    let dp = format!("{p}.discovery");
    // No lookup for a discovery that is wrong anyway: its errors come at once.
    let errors_before = c.error_count();
    // `dns` + `port` (address records) or `srv` (SRV records, which carry the ports).
    let (key_path, written, port) = match (&d.dns, &d.srv) {
        (Some(dns), None) => {
            if d.port.is_none() {
                c.error(
                    &dp,
                    "`dns` needs `port` (the port of every address; or use `srv`, whose records carry the ports)",
                );
            }
            (format!("{dp}.dns"), dns.as_str(), Some(d.port.unwrap_or(1)))
        }
        (None, Some(srv)) => {
            if d.port.is_some() {
                c.error(
                    &format!("{dp}.port"),
                    "not used with `srv`: each SRV record carries its target's port",
                );
            }
            (format!("{dp}.srv"), srv.as_str(), None)
        }
        (Some(_), Some(srv)) => {
            c.error(
                &format!("{dp}.srv"),
                "`srv` and `dns` exclude each other: use `dns` + `port` for address records, `srv` for SRV records",
            );
            (format!("{dp}.srv"), srv.as_str(), None)
        }
        (None, None) => {
            c.error(
                &dp,
                "needs `dns` (a host name, with `port`) or `srv` (an SRV record name such as _http._tcp.api.internal)",
            );
            (format!("{dp}.dns"), "", Some(1))
        }
    };
    let name = host_name(written);
    if name.is_none() && !written.is_empty() {
        let what = if port.is_some() {
            "a host name"
        } else {
            "an SRV record name"
        };
        c.error(
            &key_path,
            format!(
                "{written:?} is not {what} (write the name alone: no port, scheme or IP address)"
            ),
        );
    }
    let name = name.unwrap_or_default();
    if d.port == Some(0) {
        c.error(&format!("{dp}.port"), "must be between 1 and 65535");
    }
    if d.min_interval.0.is_zero() {
        c.error(&format!("{dp}.min_interval"), "must be greater than 0");
    }
    if d.interval.0 < d.min_interval.0 {
        c.error(
            &format!("{dp}.interval"),
            "must not be shorter than min_interval",
        );
    }
    if d.timeout.0.is_zero() {
        c.error(&format!("{dp}.timeout"), "must be greater than 0");
    }
    let mut resolvers = Vec::new();
    for (i, r) in d.resolvers.iter().enumerate() {
        let parsed = r
            .parse::<SocketAddr>()
            .or_else(|_| r.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)));
        match parsed {
            Ok(a) => resolvers.push(a),
            Err(_) => c.error(
                &format!("{dp}.resolvers[{i}]"),
                format!("{r:?} is not an IP address or ip:port"),
            ),
        }
    }
    if !u.targets.is_empty() {
        c.error(
            &format!("{p}.targets"),
            "an upstream takes its targets from `targets` or from `discovery`, not both",
        );
    }
    let key = Discovery::key(&name, port, &resolvers);
    let mut disc = Discovery {
        name,
        port: port.map(|p| p.max(1)),
        interval: d.interval.0,
        min_interval: d.min_interval.0,
        timeout: d.timeout.0,
        resolvers,
        allow_empty: d.allow_empty,
        state: Arc::new(DnsState::new(
            String::new(),
            Vec::new(),
            LookupResult::Error,
            None,
        )),
        built_from: AtomicU64::new(0),
        sync_lock: Mutex::new(()),
    };
    if c.error_count() > errors_before {
        return (disc, (Vec::new(), Vec::new()));
    }
    let previous = states
        .discovery
        .by_upstream
        .lock()
        .get(&u.name)
        .filter(|s| s.key == key)
        .cloned();
    let state = match previous {
        Some(st) => st,
        None => {
            let res = lookup_now(&disc);
            let st = match res {
                Ok((found, ttl)) => {
                    let st = DnsState::new(key, found, LookupResult::Ok, None);
                    let wait = ttl.clamp(disc.min_interval, disc.interval.max(disc.min_interval));
                    st.next_ms
                        .store(now_ms() + wait.as_millis() as u64, Ordering::Relaxed);
                    st
                }
                Err((r, e)) => {
                    if !d.allow_empty {
                        c.error(
                            &key_path,
                            format!(
                                "{:?} has no address: {e} (set discovery.allow_empty: true to \
                                 start without targets until it resolves)",
                                disc.name
                            ),
                        );
                    }
                    let st = DnsState::new(key, Vec::new(), r, Some(e));
                    st.next_ms.store(
                        now_ms() + disc.min_interval.as_millis() as u64,
                        Ordering::Relaxed,
                    );
                    st
                }
            };
            let st = Arc::new(st);
            states
                .discovery
                .by_upstream
                .lock()
                .insert(u.name.clone(), st.clone());
            st
        }
    };
    let answer = state.answer.lock().clone();
    disc.state = state;
    disc.built_from.store(answer.generation, Ordering::Relaxed);
    let initial = split(&answer.found, |f, backup| {
        target(&u.name, f, backup, states, false).0
    });
    (disc, initial)
}

/// A lookup from synchronous code (config load, which may itself run on a runtime thread):
/// on a thread of its own with a small runtime.
fn lookup_now(disc: &Discovery) -> Result<(Vec<Found>, Duration), (LookupResult, String)> {
    std::thread::scope(|s| {
        s.spawn(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| (LookupResult::Error, format!("cannot start a resolver: {e}")))?;
            rt.block_on(disc.lookup())
        })
        .join()
        .unwrap_or_else(|_| Err((LookupResult::Error, "resolver thread failed".into())))
    })
}

/// The background service that runs the lookups of every upstream with `discovery`.
pub struct DiscoveryScheduler {
    live: Arc<dyn LiveConfig>,
}

impl DiscoveryScheduler {
    pub fn new(live: Arc<dyn LiveConfig>) -> Self {
        DiscoveryScheduler { live }
    }

    fn run_due(&self) {
        self.live
            .with_upstreams(&mut |upstreams| self.start_due(upstreams));
    }

    fn start_due(&self, upstreams: &[Arc<Upstream>]) {
        let now = now_ms();
        for up in upstreams {
            let Some(d) = &up.discovery else {
                continue;
            };
            // A reload may have compiled this upstream from an answer older than the one a
            // lookup stored meanwhile: catch up.
            d.sync(up, self.live.states());
            let st = &d.state;
            if st.next_ms.load(Ordering::Relaxed) > now || st.busy.swap(true, Ordering::AcqRel) {
                continue;
            }
            let (up, live) = (up.clone(), self.live.clone());
            tokio::spawn(async move {
                let Some(d) = &up.discovery else {
                    return;
                };
                if d.refresh(&up.name).await {
                    // Apply to the config in use now (a reload may have replaced `up`).
                    live.with_upstreams(&mut |upstreams| {
                        for u in upstreams {
                            if let Some(ud) = &u.discovery {
                                if Arc::ptr_eq(&ud.state, &d.state) {
                                    ud.sync(u, live.states());
                                }
                            }
                        }
                    });
                }
                d.state.busy.store(false, Ordering::Release);
            });
        }
    }
}

#[async_trait]
impl BackgroundService for DiscoveryScheduler {
    async fn start(&self, shutdown: ShutdownWatch) {
        super::tick_until_shutdown(TICK, shutdown, || self.run_due()).await;
    }
}
