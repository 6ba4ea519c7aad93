//! Stage two: raw serde structs -> typed immutable runtime. Applies defaults and units,
//! substitutes `${ENV}`, resolves paths against the config file's directory and checks
//! cross references. Collects every error (with YAML path and line) instead of stopping at
//! the first.

use super::diag::Compiler;
use super::error::{ConfigError, ConfigErrors};
use super::position::Positions;
use super::raw::{self, RawConfig, RawPlugin};
use crate::ctx::{Route, Runtime};
use crate::model::{
    AccessLog, AdminSettings, BasicCredential, Consumer, HmacCredential, JwtSecretSpec,
    MtlsCredential, PasswordSpec, Secret, ServerSettings, Tier, TlsSettings,
};
use crate::plugins::{self, Chain};
use crate::router::{self, HostPattern, Matcher, Router};
use crate::upstream::{HealthCheck, Passive, StateRegistry, Target, TargetSet, Timeouts, Upstream};
use arc_swap::ArcSwap;
use http::{HeaderName, HeaderValue, Method};
use ipnet::IpNet;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

fn socket_addr(s: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    // A URL would otherwise be looked up as a host name and fail with a DNS error.
    if let Some((scheme, _)) = s.split_once("://") {
        return Err(format!(
            "{s:?} is a URL, not an address: write host:port without \"{scheme}://\" \
             (targets are reached over plain HTTP)"
        ));
    }
    match s.to_socket_addrs() {
        Ok(mut it) => it
            .next()
            .ok_or_else(|| format!("address {s:?} resolves to nothing")),
        Err(e) => Err(format!("invalid address {s:?}: {e} (expected host:port)")),
    }
}

fn listen_addr(s: &str) -> Result<SocketAddr, String> {
    s.parse::<SocketAddr>().map_err(|_| {
        format!("invalid listen address {s:?} (expected ip:port such as 0.0.0.0:8080)")
    })
}

pub fn compile(
    parsed: super::Parsed,
    pos: &Positions,
    base_dir: &Path,
    states: &StateRegistry,
    registry: &crate::util::registry::Registry,
    version: u64,
    text: &str,
) -> Result<Runtime, ConfigErrors> {
    let raw: RawConfig = parsed.raw;
    let mut c = Compiler::new(pos, parsed.secrets, base_dir.to_path_buf());
    c.set_env_paths(parsed.env_paths);
    let (server, tls) = compile_server(&mut c, &raw.server);
    let admin = compile_admin(&mut c, &raw.admin);
    let cache = compile_cache(&mut c, &raw.cache);
    let upstreams = compile_upstreams(&mut c, &raw.upstreams, states);
    let consumers = compile_consumers(&mut c, &raw);
    let tiers: BTreeMap<String, Tier> = raw
        .tiers
        .iter()
        .map(|(n, t)| {
            let tier = Tier {
                second: t.second,
                minute: t.minute,
                hour: t.hour,
                day: t.day,
            };
            (n.clone(), tier)
        })
        .collect();
    let env = plugins::BuildEnv {
        consumers: &consumers,
        tiers: &tiers,
        registry,
        route: None,
        upstreams: &upstreams,
        client_auth: raw
            .server
            .tls
            .as_ref()
            .is_some_and(|t| t.client_auth.is_some()),
    };
    let globals = compile_plugin_list(&mut c, "plugins", &raw.plugins, &env);
    let (routes, router) = compile_routes(&mut c, &raw.routes, &upstreams, &globals, &env, states);
    let global_plugins = merge_chain(&globals, Vec::new());
    crate::probe::check_routes(&mut c, &server, &raw.routes);
    crate::https_redirect::check_listeners(&mut c, &server, &raw.routes);

    c.finish()?;
    let hash = hex::encode(&Sha256::digest(text.as_bytes())[..8]);
    Ok(Runtime {
        version,
        hash,
        server,
        admin,
        upstreams,
        consumers,
        tiers,
        routes,
        router,
        global_plugins,
        cache,
        tls,
    })
}

fn compile_cache(c: &mut Compiler, raw: &raw::RawCache) -> crate::model::CacheSettings {
    let purge_broadcast = raw.purge_broadcast.as_ref().and_then(|b| {
        let mut ok = true;
        if ::redis::Client::open(b.url.as_str()).is_err() {
            // Never echo the URL: it may hold a password.
            c.error(
                "cache.purge_broadcast.url",
                "invalid Redis URL (expected redis://[user:password@]host[:port][/db])",
            );
            ok = false;
        }
        if b.channel.is_empty() {
            c.error("cache.purge_broadcast.channel", "must not be empty");
            ok = false;
        }
        if b.timeout.0.is_zero() {
            c.error("cache.purge_broadcast.timeout", "must be greater than 0");
            ok = false;
        }
        ok.then(|| crate::model::PurgeBroadcast {
            url: Secret::new(b.url.clone()),
            addr: crate::util::redact::redact_url(&b.url),
            channel: b.channel.clone(),
            timeout: b.timeout.0,
        })
    });
    crate::model::CacheSettings { purge_broadcast }
}

/// `server`: its settings, and `server.tls`'s loaded certificates and client verifier.
fn compile_server(
    c: &mut Compiler,
    s: &raw::RawServer,
) -> (ServerSettings, Option<crate::runtime::TlsMaterial>) {
    let mut listen = Vec::new();
    for (i, l) in s.listen.iter().enumerate() {
        match listen_addr(l) {
            Ok(a) => listen.push(a),
            Err(e) => c.error(&format!("server.listen[{i}]"), e),
        }
    }
    if s.listen.is_empty() && s.tls.is_none() {
        c.error("server.listen", "at least one listen address is needed");
    }
    if s.threads == 0 {
        c.error("server.threads", "must be at least 1");
    }
    let mut trusted = Vec::new();
    for (i, t) in s.trusted_proxies.iter().enumerate() {
        let parsed = t
            .parse::<IpNet>()
            .or_else(|_| t.parse::<std::net::IpAddr>().map(IpNet::from));
        match parsed {
            Ok(n) => trusted.push(n),
            Err(_) => c.error(
                &format!("server.trusted_proxies[{i}]"),
                format!("invalid CIDR {t:?} (expected e.g. 10.0.0.0/8 or 192.0.2.1)"),
            ),
        }
    }
    let tls = s.tls.as_ref().map(|t| {
        let mut listen = Vec::new();
        for (i, l) in t.listen.iter().enumerate() {
            match listen_addr(l) {
                Ok(a) => listen.push(a),
                Err(e) => c.error(&format!("server.tls.listen[{i}]"), e),
            }
        }
        if !matches!(t.min_version.as_str(), "1.2" | "1.3") {
            c.error("server.tls.min_version", "must be \"1.2\" or \"1.3\"");
        }
        let policy = crate::tls::compile_policy(c, t, &s.listen);
        let certificates = crate::tls::compile_certificates(c, t);
        let acme = t
            .acme
            .as_ref()
            .and_then(|a| crate::acme::compile(c, a, &s.listen));
        let client_auth = t
            .client_auth
            .as_ref()
            .and_then(|a| crate::tls::client_auth::compile(c, a));
        let settings = TlsSettings {
            listen,
            min_version: t.min_version.clone(),
            max_version: policy.max_version,
            acme,
            cipher_suites: policy.cipher_suites,
        };
        let material = crate::runtime::TlsMaterial {
            certificates,
            client_auth,
        };
        (settings, material)
    });
    let (tls, tls_material) = tls.unzip();
    for (name, v) in [
        ("max_header_bytes", s.max_header_bytes.0),
        ("max_uri_bytes", s.max_uri_bytes.0),
    ] {
        if v < 256 {
            c.error(&format!("server.{name}"), "must be at least 256 bytes");
        }
    }
    let access_log = match s.access_log.as_str() {
        "stdout" => AccessLog::Stdout,
        "off" => AccessLog::Off,
        "" => {
            c.error("server.access_log", "use stdout, off or a file path");
            AccessLog::Off
        }
        p => AccessLog::File(c.file(p)),
    };
    let pid_file = s.pid_file.clone();
    let upgrade_sock = s.upgrade_sock.clone();
    let server = ServerSettings {
        listen,
        tls,
        threads: s.threads.max(1),
        max_body_bytes: s.max_body_bytes.0,
        max_header_bytes: s.max_header_bytes.0 as usize,
        max_uri_bytes: s.max_uri_bytes.0 as usize,
        header_timeout: s.header_timeout.0,
        body_timeout: s.body_timeout.0,
        keepalive_timeout: s.keepalive_timeout.0,
        max_connections: s.max_connections,
        max_requests_per_connection: s.max_requests_per_connection,
        work_stealing: s.work_stealing,
        trusted_proxies: trusted,
        grace_period: s.grace_period.0,
        pid_file: c.file(&pid_file),
        upgrade_sock: c.file(&upgrade_sock),
        access_log,
        error_log: (!s.error_log.is_empty()).then(|| c.file(&s.error_log)),
        health_check_path: crate::probe::compile_path(c, s.health_check_path.as_deref()),
        drain_delay: s.drain_delay.0,
        flood: s.flood,
        h2c: s.h2c,
    };
    (server, tls_material)
}

/// The files the process itself creates: `server.pid_file`, `server.upgrade_sock` and
/// `server.error_log` need an existing, writable directory. Checked by `-t` and at startup
/// (not by a reload, which cannot change them), before Pingora runs: Pingora's binary
/// upgrade panicked on a missing `upgrade_sock` directory, and a SIGQUIT then had nowhere to
/// hand the sockets to. `text` is the config file, for the lines.
pub fn check_process_files(text: &str, s: &ServerSettings) -> Result<(), ConfigErrors> {
    let pos = Positions::build(text);
    let mut errors = Vec::new();
    let mut files = vec![
        ("server.pid_file", s.pid_file.as_path()),
        ("server.upgrade_sock", s.upgrade_sock.as_path()),
    ];
    if let Some(e) = &s.error_log {
        files.push(("server.error_log", e.as_path()));
    }
    for (key, file) in files {
        let problem = process_file_problem(file, key == "server.upgrade_sock");
        if let Some(message) = problem {
            let line = pos.exact(key);
            let message = if line.is_none() {
                format!("{message} (the default; set {key} to a writable place)")
            } else {
                message
            };
            errors.push(ConfigError {
                path: key.to_string(),
                line,
                message,
            });
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ConfigErrors(errors))
    }
}

fn process_file_problem(file: &Path, socket: bool) -> Option<String> {
    use nix::unistd::{access, AccessFlags};
    // A Unix socket path is limited to the 108 bytes of `sun_path`, terminator included.
    if socket && file.as_os_str().len() > 107 {
        return Some(format!(
            "{} is longer than the 107 bytes a Unix socket path may have",
            file.display()
        ));
    }
    let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) else {
        return Some(format!("{} names no file", file.display()));
    };
    if file.is_dir() {
        return Some(format!("{} is a directory", file.display()));
    }
    match std::fs::metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some(format!(
            "directory {} of {} does not exist",
            dir.display(),
            file.display()
        )),
        Err(e) => Some(format!("directory {}: {e}", dir.display())),
        Ok(m) if !m.is_dir() => Some(format!("{} is not a directory", dir.display())),
        // access(2) asks with the real user and group, the ones the process runs as.
        Ok(_) => match access(dir, AccessFlags::W_OK | AccessFlags::X_OK) {
            Ok(()) => None,
            Err(e) => Some(format!(
                "directory {} of {} is not writable: {e}",
                dir.display(),
                file.display()
            )),
        },
    }
}

fn compile_admin(c: &mut Compiler, a: &raw::RawAdmin) -> AdminSettings {
    let listen = match listen_addr(&a.listen) {
        Ok(l) => l,
        Err(e) => {
            c.error("admin.listen", e);
            SocketAddr::from(([127, 0, 0, 1], 9901))
        }
    };
    let token = a.token.clone();
    let mut allowed_hosts = Vec::new();
    for (i, h) in a.allowed_hosts.iter().enumerate() {
        let name = h.trim().to_ascii_lowercase();
        let name = name.strip_suffix('.').unwrap_or(&name);
        let valid = !name.is_empty()
            && name.len() <= 253
            && name.split('.').all(|l| {
                !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        if valid {
            allowed_hosts.push(name.to_string());
        } else {
            c.error(
                &format!("admin.allowed_hosts[{i}]"),
                format!("{h:?} is not a host name (no port, scheme or wildcard)"),
            );
        }
    }
    AdminSettings {
        listen,
        token: (!token.is_empty()).then(|| Secret::new(token)),
        allowed_hosts,
    }
}

fn compile_upstreams(
    c: &mut Compiler,
    raws: &[raw::RawUpstream],
    states: &StateRegistry,
) -> Vec<Arc<Upstream>> {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    let mut out = Vec::new();
    for (i, u) in raws.iter().enumerate() {
        let p = format!("upstreams[{i}]");
        if u.name.trim().is_empty() {
            c.error(&format!("{p}.name"), "must not be empty");
        }
        if let Some(first) = seen.insert(&u.name, i) {
            let line = c.line_of(&format!("upstreams[{first}].name"));
            c.error(
                &format!("{p}.name"),
                format!(
                    "duplicate upstream name \"{}\" (first defined at line {})",
                    u.name,
                    line.unwrap_or(0)
                ),
            );
        }
        if u.targets.is_empty() && u.discovery.is_none() {
            c.error(
                &format!("{p}.targets"),
                "needs at least one target (or `discovery` to take them from DNS)",
            );
        }
        let mut primaries = Vec::new();
        let mut backups = Vec::new();
        let mut addrs: HashMap<SocketAddr, usize> = HashMap::new();
        for (j, t) in u.targets.iter().enumerate() {
            let tp = format!("{p}.targets[{j}]");
            if t.weight == 0 {
                c.error(&format!("{tp}.weight"), "must be at least 1");
            }
            let addr = t.addr.clone();
            let sock = match socket_addr(&addr) {
                Ok(s) => s,
                Err(e) => {
                    c.error(&format!("{tp}.addr"), e);
                    continue;
                }
            };
            if let Some(first) = addrs.insert(sock, j) {
                c.error(
                    &format!("{tp}.addr"),
                    format!("duplicate target {addr:?} (also targets[{first}])"),
                );
            }
            let target = Target {
                state: states.get_or_create(&u.name, &addr),
                host: addr.clone(),
                addr,
                sock,
                weight: t.weight.max(1),
                backup: t.backup,
            };
            if t.backup {
                backups.push(target);
            } else {
                primaries.push(target);
            }
        }
        // Judged on the config, not on what resolved: a target whose address is wrong is
        // reported once, as such, and not again as a missing primary.
        if !u.targets.is_empty() && u.targets.iter().all(|t| t.backup) {
            c.error(
                &format!("{p}.targets"),
                "needs at least one target that is not a backup",
            );
        }
        if primaries.len() + backups.len() > 64 {
            c.error(&format!("{p}.targets"), "at most 64 targets per upstream");
        }
        let timeouts = Timeouts {
            connect: u.timeouts.connect.0,
            read: u.timeouts.read.0,
            write: u.timeouts.write.0,
        };
        for (k, d) in [
            ("connect", timeouts.connect),
            ("read", timeouts.read),
            ("write", timeouts.write),
        ] {
            if d.is_zero() {
                c.error(&format!("{p}.timeouts.{k}"), "must be greater than 0");
            }
        }
        let health_check = u.health_check.as_ref().map(|h| {
            let hp = format!("{p}.health_check");
            if let Some(path) = &h.path {
                if !path.starts_with('/') || path.contains([' ', '\r', '\n']) {
                    c.error(&format!("{hp}.path"), "must be a path starting with \"/\"");
                }
            }
            if h.interval.0.is_zero() {
                c.error(&format!("{hp}.interval"), "must be greater than 0");
            }
            if h.timeout.0.is_zero() {
                c.error(&format!("{hp}.timeout"), "must be greater than 0");
            }
            if h.unhealthy_threshold == 0 {
                c.error(&format!("{hp}.unhealthy_threshold"), "must be at least 1");
            }
            if h.healthy_threshold == 0 {
                c.error(&format!("{hp}.healthy_threshold"), "must be at least 1");
            }
            HealthCheck {
                path: h.path.clone(),
                host: h.host.clone(),
                interval: h.interval.0,
                timeout: h.timeout.0,
                unhealthy_threshold: h.unhealthy_threshold.max(1),
                healthy_threshold: h.healthy_threshold.max(1),
            }
        });
        let passive = u.passive.as_ref().map(|pv| {
            if pv.max_fails == 0 {
                c.error(&format!("{p}.passive.max_fails"), "must be at least 1");
            }
            if pv.fail_timeout.0.is_zero() {
                c.error(
                    &format!("{p}.passive.fail_timeout"),
                    "must be greater than 0",
                );
            }
            Passive {
                max_fails: pv.max_fails.max(1),
                fail_timeout: pv.fail_timeout.0,
            }
        });
        let discovery = u.discovery.as_ref().map(|d| {
            let (disc, found) = crate::upstream::discovery::compile(c, &p, u, d, states);
            (primaries, backups) = found;
            disc
        });
        out.push(Arc::new(Upstream {
            name: u.name.clone(),
            balance: u.balance,
            set: ArcSwap::from_pointee(TargetSet::new(u.balance, primaries, backups)),
            discovery,
            keepalive: u.keepalive,
            timeouts,
            retries: u.retries,
            health_check,
            passive,
            cursor: AtomicUsize::new(0),
            resilience: crate::resilience::compile_upstream(c, &p, u, &states.resilience),
            transport: crate::upstream::peer::compile(c, &p, u),
        }));
    }
    out
}

fn compile_consumers(c: &mut Compiler, raw: &RawConfig) -> Vec<Consumer> {
    for (name, t) in &raw.tiers {
        if t.second.is_none() && t.minute.is_none() && t.hour.is_none() && t.day.is_none() {
            c.error(
                &format!("tiers.{name}"),
                "sets no limit (use second, minute, hour or day)",
            );
        }
    }
    let mut seen: HashMap<&str, usize> = HashMap::new();
    let mut keys: HashMap<String, usize> = HashMap::new();
    let mut basic_users = std::collections::HashSet::new();
    let mut hmac_users = std::collections::HashSet::new();
    let mut mtls_seen = MtlsSeen::default();
    let mut out = Vec::new();
    for (i, r) in raw.consumers.iter().enumerate() {
        let p = format!("consumers[{i}]");
        if r.username.trim().is_empty() {
            c.error(&format!("{p}.username"), "must not be empty");
        }
        let header = http::HeaderValue::from_str(&r.username).unwrap_or_else(|_| {
            c.error(
                &format!("{p}.username"),
                "cannot be sent as a header value (control characters)",
            );
            http::HeaderValue::from_static("")
        });
        if seen.insert(&r.username, i).is_some() {
            c.error(
                &format!("{p}.username"),
                format!("duplicate consumer \"{}\"", r.username),
            );
        }
        if let Some(t) = &r.tier {
            if !raw.tiers.contains_key(t) {
                c.error(&format!("{p}.tier"), format!("unknown tier \"{t}\""));
            }
        }
        let mut api_keys = Vec::new();
        for (j, k) in r.keyauth_credentials.iter().enumerate() {
            let kp = format!("{p}.keyauth_credentials[{j}].key");
            let key = k.key.clone();
            if key.is_empty() {
                c.error(&kp, "must not be empty");
                continue;
            }
            if keys.insert(key.clone(), i).is_some() {
                // Never print the key itself.
                c.error(&kp, "this API key is already used by another credential");
            }
            api_keys.push(Secret::new(key));
        }
        let mut jwt_secrets = Vec::new();
        for (j, s) in r.jwt_secrets.iter().enumerate() {
            let sp = format!("{p}.jwt_secrets[{j}]");
            let alg = s.algorithm.as_str();
            let hs = alg.starts_with("HS");
            if !matches!(
                alg,
                "HS256" | "HS384" | "HS512" | "RS256" | "RS384" | "RS512" | "ES256" | "ES384"
            ) {
                c.error(
                    &format!("{sp}.algorithm"),
                    format!("unsupported algorithm {alg:?}"),
                );
            }
            let key_file = s
                .rsa_public_key_file
                .as_deref()
                .or(s.ecdsa_public_key_file.as_deref())
                .map(|f| c.file(f));
            if let Some(f) = &key_file {
                if !f.is_file() {
                    c.error(&sp, format!("public key file {} not found", f.display()));
                }
            }
            jwt_secrets.push(JwtSecretSpec {
                key: s.key.clone(),
                algorithm: alg.to_string(),
                secret: s.secret.clone().map(Secret::new),
                secret_is_base64: s.secret_is_base64,
                public_key_file: key_file,
            });
            match (
                hs,
                &s.secret,
                &s.rsa_public_key_file,
                &s.ecdsa_public_key_file,
            ) {
                (true, None, ..) => {
                    c.error(&format!("{sp}.secret"), format!("{alg} needs a secret"))
                }
                (false, _, None, None) => c.error(
                    &sp,
                    format!("{alg} needs rsa_public_key_file or ecdsa_public_key_file"),
                ),
                _ => {}
            }
        }
        let basic_credentials = compile_basic_credentials(c, &p, r, &mut basic_users);
        let mut hmac_credentials = Vec::new();
        for (j, h) in r.hmacauth_credentials.iter().enumerate() {
            let hp = format!("{p}.hmacauth_credentials[{j}]");
            if h.username.is_empty() {
                c.error(&format!("{hp}.username"), "must not be empty");
                continue;
            }
            if !hmac_users.insert(h.username.clone()) {
                c.error(
                    &format!("{hp}.username"),
                    format!(
                        "hmac-auth username \"{}\" is already used by another credential",
                        h.username
                    ),
                );
            }
            if h.secret.is_empty() {
                // Never print the secret itself.
                c.error(&format!("{hp}.secret"), "must not be empty");
                continue;
            }
            hmac_credentials.push(HmacCredential {
                username: h.username.clone(),
                secret: Secret::new(h.secret.clone()),
            });
        }
        let mtls_credentials = compile_mtls_credentials(c, &p, r, &mut mtls_seen);
        out.push(Consumer {
            username: r.username.clone(),
            header,
            tier: r.tier.clone(),
            roles: r.roles.clone(),
            api_keys,
            jwt_secrets,
            basic_credentials,
            hmac_credentials,
            mtls_credentials,
        });
    }
    out
}

/// The `mtls_credentials` already seen: normalised subject or SAN -> (consumer, YAML path).
#[derive(Default)]
struct MtlsSeen {
    subjects: HashMap<Box<[crate::util::dn::Token]>, (String, String)>,
    sans: HashMap<String, (String, String)>,
}

/// `consumers[i].mtls_credentials`: each entry exactly one of `subject` (an RFC 4514 name,
/// normalised) or `san`; a subject or SAN identifies one consumer only, so a second claim
/// names both.
fn compile_mtls_credentials(
    c: &mut Compiler,
    p: &str,
    r: &raw::RawConsumer,
    seen: &mut MtlsSeen,
) -> Vec<MtlsCredential> {
    let mut out = Vec::new();
    for (j, m) in r.mtls_credentials.iter().enumerate() {
        let mp = format!("{p}.mtls_credentials[{j}]");
        let (cred, at, owner) = match (&m.subject, &m.san) {
            (Some(subject), None) => {
                let at = format!("{mp}.subject");
                let normal = match crate::util::dn::normalise(subject) {
                    Ok(n) => n,
                    Err(why) => {
                        c.error(&at, format!("{subject:?} is not an RFC 4514 name: {why}"));
                        continue;
                    }
                };
                let owner = seen
                    .subjects
                    .insert(normal.clone(), (r.username.clone(), at.clone()));
                let cred = MtlsCredential::Subject {
                    text: subject.clone(),
                    normal,
                };
                (cred, at, owner)
            }
            (None, Some(san)) => {
                let at = format!("{mp}.san");
                if san.trim().is_empty() || san.trim() != san {
                    c.error(&at, "must not be empty or have spaces around it");
                    continue;
                }
                let owner = seen
                    .sans
                    .insert(san.clone(), (r.username.clone(), at.clone()));
                (MtlsCredential::San(san.clone()), at, owner)
            }
            _ => {
                c.error(
                    &mp,
                    "needs exactly one of subject (an RFC 4514 name) or san (a subjectAltName)",
                );
                continue;
            }
        };
        if let Some((first, first_at)) = owner {
            let what = match &cred {
                MtlsCredential::Subject { text, .. } => format!("subject {text:?}"),
                MtlsCredential::San(san) => format!("san {san:?}"),
            };
            let msg = if first == r.username {
                format!("{what} is listed twice for consumer \"{first}\" (also {first_at})")
            } else {
                format!(
                    "{what} is claimed by consumers \"{first}\" ({first_at}) and \"{}\": \
                     a certificate identifies one consumer",
                    r.username
                )
            };
            c.error(&at, msg);
            continue;
        }
        out.push(cred);
    }
    out
}

/// `consumers[i].basicauth_credentials`: usernames unique over every consumer, passwords an
/// Argon2id or bcrypt hash, or plain text only when it came from `${ENV}` (a plain password
/// never sits in the file). Neither passwords nor hashes appear in messages.
fn compile_basic_credentials(
    c: &mut Compiler,
    p: &str,
    r: &raw::RawConsumer,
    users: &mut std::collections::HashSet<String>,
) -> Vec<BasicCredential> {
    let mut out = Vec::new();
    for (j, b) in r.basicauth_credentials.iter().enumerate() {
        let bp = format!("{p}.basicauth_credentials[{j}]");
        if b.username.is_empty() || b.username.contains(':') {
            c.error(
                &format!("{bp}.username"),
                "must be non-empty and without ':' (Basic credentials are user:password)",
            );
            continue;
        }
        if !users.insert(b.username.clone()) {
            c.error(
                &format!("{bp}.username"),
                format!(
                    "basic-auth username \"{}\" is already used by another credential",
                    b.username
                ),
            );
        }
        let pp = format!("{bp}.password");
        let pw = b.password.as_str();
        let spec = if pw.starts_with("$argon2") {
            match argon2::PasswordHash::new(pw) {
                Ok(h) if h.algorithm == argon2::Algorithm::Argon2id.ident() && h.hash.is_some() => {
                    PasswordSpec::Argon2(Secret::new(pw.to_string()))
                }
                Ok(_) => {
                    c.error(&pp, "only Argon2id hashes ($argon2id$...) are accepted");
                    continue;
                }
                Err(_) => {
                    c.error(&pp, "not a valid Argon2id hash (PHC string $argon2id$v=19$m=...,t=...,p=...$salt$hash)");
                    continue;
                }
            }
        } else if pw.starts_with("$2") {
            if pw.parse::<bcrypt::HashParts>().is_err() {
                c.error(&pp, "not a valid bcrypt hash ($2b$<cost>$<53 characters>)");
                continue;
            }
            PasswordSpec::Bcrypt(Secret::new(pw.to_string()))
        } else if c.from_env(&pp) && !pw.is_empty() {
            PasswordSpec::Plain(Secret::new(pw.to_string()))
        } else {
            c.error(
                &pp,
                "a plain-text password is refused: write an Argon2id or bcrypt hash \
                 ($argon2id$..., $2b$...), or take the password from the environment (${NAME})",
            );
            continue;
        };
        out.push(BasicCredential {
            username: b.username.clone(),
            password: spec,
        });
    }
    out
}

/// Builds one plugin list (global or a route's), rejecting duplicates.
fn compile_plugin_list(
    c: &mut Compiler,
    path: &str,
    list: &[RawPlugin],
    env: &plugins::BuildEnv,
) -> PluginList {
    let mut out: PluginList = Vec::new();
    for (i, p) in list.iter().enumerate() {
        let pp = format!("{path}[{i}]");
        if out.iter().any(|(n, ..)| *n == p.name) {
            c.error(
                &format!("{pp}.name"),
                format!("plugin \"{}\" listed twice", p.name),
            );
            continue;
        }
        let built = plugins::build(c, &pp, &p.name, p.config.as_ref(), env);
        out.push((p.name.clone(), p.enabled, built.map(Arc::new)));
    }
    out
}

type PluginList = Vec<(String, bool, Option<Arc<plugins::Plugin>>)>;

fn compile_routes(
    c: &mut Compiler,
    raws: &[raw::RawRoute],
    upstreams: &[Arc<Upstream>],
    globals: &PluginList,
    env: &plugins::BuildEnv,
    states: &StateRegistry,
) -> (Vec<Route>, Router) {
    let by_name: HashMap<&str, &Arc<Upstream>> =
        upstreams.iter().map(|u| (u.name.as_str(), u)).collect();
    let mut seen: HashMap<&str, usize> = HashMap::new();
    let mut routes = Vec::new();
    let mut index: Vec<(usize, Vec<String>, Matcher)> = Vec::new();
    for (i, r) in raws.iter().enumerate() {
        let p = format!("routes[{i}]");
        if r.name.trim().is_empty() {
            c.error(&format!("{p}.name"), "must not be empty");
        }
        if let Some(first) = seen.insert(&r.name, i) {
            let line = c.line_of(&format!("routes[{first}].name")).unwrap_or(0);
            c.error(
                &format!("{p}.name"),
                format!(
                    "duplicate route name \"{}\" (first defined at line {line})",
                    r.name
                ),
            );
        }
        if r.paths.is_empty() {
            c.error(&format!("{p}.paths"), "needs at least one path prefix");
        }
        let mut prefixes = Vec::new();
        for (j, path) in r.paths.iter().enumerate() {
            match router::normalize_prefix(path) {
                Ok(n) if n.contains("%2F") && !r.allow_encoded_slashes => c.error(
                    &format!("{p}.paths[{j}]"),
                    format!("path {path:?} has an encoded slash (%2F), which requests may only carry on a route with allow_encoded_slashes: true"),
                ),
                Ok(n) => prefixes.push(n),
                Err(e) => c.error(&format!("{p}.paths[{j}]"), e),
            }
        }
        let mut matcher = Matcher::default();
        for (j, m) in r.methods.iter().enumerate() {
            match Method::from_bytes(m.to_ascii_uppercase().as_bytes()) {
                Ok(m) => matcher.methods.push(m),
                Err(_) => c.error(
                    &format!("{p}.methods[{j}]"),
                    format!("invalid method {m:?}"),
                ),
            }
        }
        for (j, h) in r.hosts.iter().enumerate() {
            match HostPattern::parse(h) {
                Ok(h) => matcher.hosts.push(h),
                Err(e) => c.error(&format!("{p}.hosts[{j}]"), e),
            }
        }
        for (name, value) in &r.headers {
            let hp = format!("{p}.headers.{name}");
            match (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(value),
            ) {
                (Ok(n), Ok(v)) => matcher.headers.push((n, v)),
                _ => c.error(&hp, "invalid header name or value"),
            }
        }
        let upstream = match by_name.get(r.upstream.as_str()) {
            Some(u) => Some(Arc::clone(u)),
            None => {
                c.error(
                    &format!("{p}.upstream"),
                    format!("unknown upstream \"{}\"", r.upstream),
                );
                None
            }
        };
        let route_env = plugins::BuildEnv {
            route: Some(&r.name),
            ..env.clone()
        };
        let own = compile_plugin_list(c, &format!("{p}.plugins"), &r.plugins, &route_env);
        let chain = merge_chain(globals, own);
        let timeout =
            crate::resilience::compile_route_timeout(c, &p, &r.name, r.timeout, &states.resilience);
        let websocket_idle_timeout = crate::websocket::compile_idle_timeout(c, &p, r);
        let owned_headers = crate::owned_headers::OwnedHeaders::new(
            chain.identity_headers().iter().map(|h| h.as_str()),
        );
        if let Some(upstream) = upstream {
            index.push((routes.len(), prefixes, matcher));
            routes.push(Route {
                name: r.name.clone(),
                upstream,
                strip_path: r.strip_path,
                preserve_host: r.preserve_host,
                allow_encoded_slashes: r.allow_encoded_slashes,
                forwarded_host: r.forwarded_host,
                plugins: chain,
                https_only: crate::https_redirect::compile(c, &p, r),
                timeout,
                owned_headers,
                websocket_idle_timeout,
            });
        }
    }
    let router = Router::build(index.iter().map(|(i, p, m)| (*i, p.as_slice(), m)));
    (routes, router)
}

/// Route entries replace global entries of the same name (`enabled: false` switches a global
/// plugin off for that route); the result runs in the table's order.
fn merge_chain(globals: &PluginList, own: PluginList) -> Chain {
    let mut merged: Vec<Arc<plugins::Plugin>> = globals
        .iter()
        .filter(|(n, enabled, _)| *enabled && !own.iter().any(|(o, ..)| o == n))
        .filter_map(|(_, _, p)| p.clone())
        .collect();
    merged.extend(
        own.into_iter()
            .filter(|(_, enabled, _)| *enabled)
            .filter_map(|(_, _, p)| p),
    );
    Chain::new(merged)
}
