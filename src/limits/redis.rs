//! `policy: redis`: counts shared by every gateway node through one Redis.
//!
//! One round trip per request: an `EVALSHA` of a Lua script that implements the same
//! algorithm as [`super::local`] (sliding window counter over epoch-aligned buckets, or
//! GCRA), reads the clock with `TIME` so every node agrees on buckets, counts only when
//! every window has room, and returns the counts it saw; the headers are computed here with
//! the same code as the local policy. Keys expire by themselves (`PEXPIRE`).
//!
//! The connection is a `redis` crate `ConnectionManager`: one multiplexed connection per
//! URL (and timeout) in the process, created on first use inside the proxy's runtime,
//! reconnecting by itself. Each call is bounded by `timeout`; after a failure Redis is not
//! asked again for [`HOLD_OFF`], so an outage costs callers nothing but the decision of
//! `fault_tolerant`. The URL may hold a password: only [`redact_url`] output is ever logged.
//!
//! **Key names hold a digest, never the key.** Clients choose keys (`limit_by: header` takes
//! any header value), so a name holding the value would let distinct 31 KB values fill
//! Redis's memory for the window. The name ends with the first 16 bytes of the key's
//! SHA-256, in hex: 32 characters whatever the key ([`full_key`]). Unlike the local policy's
//! keyed SipHash, the digest has no secret, because every node of a fleet must compute the
//! same name for the same client to share its count; SHA-256 is collision resistant
//! without one, and 128 bits leave no collision to find or to stumble on.

use super::{decide_token, decide_windows, now_us, Decision, Limits, TokenBucket, WindowCounts};
use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::Script;
use once_cell::sync::{Lazy, OnceCell};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// After a failed call, Redis is skipped (the call fails at once) for this long.
pub const HOLD_OFF: Duration = Duration::from_millis(500);

/// KEYS[1]: key prefix. ARGV: n, then `window_ms limit` n times.
/// Returns {allowed, now_ms, curr_1, prev_1, elapsed_1, ...} with counts before this request.
const WINDOWS_LUA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local n = tonumber(ARGV[1])
local out = {0, now}
local allowed = 1
local keys = {}
for i = 0, n - 1 do
  local w = tonumber(ARGV[2 + 2 * i])
  local limit = tonumber(ARGV[3 + 2 * i])
  local b = math.floor(now / w)
  local base = KEYS[1] .. ':' .. string.format('%.0f', w) .. ':'
  local ck = base .. string.format('%.0f', b)
  local curr = tonumber(redis.call('GET', ck) or '0')
  local prev = tonumber(redis.call('GET', base .. string.format('%.0f', b - 1)) or '0')
  local elapsed = now - b * w
  local est = curr + math.ceil(prev * (w - elapsed) / w)
  if est >= limit then allowed = 0 end
  keys[i + 1] = {ck, w}
  out[#out + 1] = curr
  out[#out + 1] = prev
  out[#out + 1] = elapsed
end
if allowed == 1 then
  for i = 1, n do
    redis.call('INCR', keys[i][1])
    redis.call('PEXPIRE', keys[i][1], 2 * keys[i][2] + 1000)
  end
end
out[1] = allowed
return out
"#;

/// KEYS[1]: key. ARGV: interval_us, burst. Returns {allowed, now_us, tat_before}.
const TOKEN_LUA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local stored = tonumber(redis.call('GET', KEYS[1]) or '0')
local tat = stored
if tat < now then tat = now end
local new = tat + interval
local allowed = 0
if new - now <= burst * interval then
  allowed = 1
  redis.call('SET', KEYS[1], string.format('%.0f', new), 'PX', math.ceil((new - now) / 1000) + 1000)
end
return {allowed, now, stored}
"#;

static WINDOWS_SCRIPT: Lazy<Script> = Lazy::new(|| Script::new(WINDOWS_LUA));
static TOKEN_SCRIPT: Lazy<Script> = Lazy::new(|| Script::new(TOKEN_LUA));

/// Why a Redis check gave no answer. Never holds the URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendError {
    /// Skipped: a recent call failed.
    HoldOff,
    Timeout,
    Redis(String),
    BadReply,
}

impl fmt::Display for BackendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BackendError::HoldOff => f.write_str("skipped after a recent failure"),
            BackendError::Timeout => f.write_str("timed out"),
            BackendError::Redis(c) => write!(f, "redis error: {c}"),
            BackendError::BadReply => f.write_str("unexpected reply from the script"),
        }
    }
}

/// A shared Redis connection for rate limits.
pub struct RedisBackend {
    client: ::redis::Client,
    conn: OnceCell<ConnectionManager>,
    /// The URL without credentials or query, for logs.
    addr: String,
    timeout: Duration,
    down_until_us: AtomicU64,
    down: AtomicBool,
}

impl fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBackend")
            .field("addr", &self.addr)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// `redis://user:secret@host:6379/0?x=y` -> `redis://host:6379/0`.
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((s, r)) => (s, r),
        None => ("", url),
    };
    let rest = rest.split(['?', '#']).next().unwrap_or("");
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if scheme.is_empty() {
        format!("{host}{path}")
    } else {
        format!("{scheme}://{host}{path}")
    }
}

impl RedisBackend {
    pub fn new(client: ::redis::Client, addr: String, timeout: Duration) -> RedisBackend {
        RedisBackend {
            client,
            conn: OnceCell::new(),
            addr,
            timeout,
            down_until_us: AtomicU64::new(0),
            down: AtomicBool::new(false),
        }
    }

    /// The address (no credentials) for logs and docs.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The connection, created on first use on the caller's Tokio runtime.
    fn connection(&self) -> Result<ConnectionManager, BackendError> {
        self.conn
            .get_or_try_init(|| {
                let cfg = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(self.timeout.max(Duration::from_millis(500))))
                    .set_response_timeout(Some(self.timeout))
                    .set_number_of_retries(1)
                    .set_min_delay(Duration::from_millis(20))
                    .set_max_delay(Duration::from_millis(500));
                ConnectionManager::new_lazy_with_config(self.client.clone(), cfg)
            })
            .cloned()
            .map_err(|e| BackendError::Redis(e.category().to_string()))
    }

    async fn call(&self, inv: &::redis::ScriptInvocation<'_>) -> Result<Vec<i64>, BackendError> {
        let now = now_us();
        if now < self.down_until_us.load(Ordering::Relaxed) {
            return Err(BackendError::HoldOff);
        }
        let result = match self.connection() {
            Ok(mut conn) => {
                match tokio::time::timeout(self.timeout, inv.invoke_async::<Vec<i64>>(&mut conn))
                    .await
                {
                    Ok(Ok(v)) => Ok(v),
                    Ok(Err(e)) if e.is_timeout() => Err(BackendError::Timeout),
                    Ok(Err(e)) => Err(BackendError::Redis(e.category().to_string())),
                    Err(_) => Err(BackendError::Timeout),
                }
            }
            Err(e) => Err(e),
        };
        match &result {
            Ok(_) => {
                if self.down.swap(false, Ordering::Relaxed) {
                    tracing::info!(redis = %self.addr, "rate-limiting: redis answers again");
                }
            }
            Err(e) => {
                self.down_until_us
                    .store(now_us() + HOLD_OFF.as_micros() as u64, Ordering::Relaxed);
                if !self.down.swap(true, Ordering::Relaxed) {
                    tracing::warn!(redis = %self.addr, "rate-limiting: redis unavailable: {e}");
                }
            }
        }
        result
    }

    /// Sliding-window check-and-count of `key` (under `prefix`) against `limits`.
    pub async fn check_windows(
        &self,
        prefix: &str,
        key: &[u8],
        limits: &Limits,
    ) -> Result<Decision, BackendError> {
        let mut inv = WINDOWS_SCRIPT.prepare_invoke();
        inv.key(full_key(prefix, b'w', key))
            .arg(limits.windows.len());
        for w in &limits.windows {
            inv.arg(w.window_ms).arg(w.limit);
        }
        let v = self.call(&inv).await?;
        let n = limits.windows.len();
        if v.len() != 2 + 3 * n {
            return Err(BackendError::BadReply);
        }
        let mut counts = [WindowCounts::default(); 4];
        for (i, c) in counts.iter_mut().enumerate().take(n.min(4)) {
            *c = WindowCounts {
                curr: v[2 + 3 * i].max(0) as u64,
                prev: v[3 + 3 * i].max(0) as u64,
                elapsed_ms: v[4 + 3 * i].max(0) as u64,
            };
        }
        let mut d = decide_windows(limits, &counts[..n.min(4)]);
        // The script decided (and counted) atomically; its word is final.
        let allowed = v[0] == 1;
        if allowed != d.allowed {
            d.allowed = allowed;
            if allowed {
                d.retry_after_ms = 0;
            } else {
                d.status.remaining = 0;
                d.retry_after_ms = d.retry_after_ms.max(1000);
            }
        }
        Ok(d)
    }

    /// Token-bucket (GCRA) check-and-take of `key` (under `prefix`).
    pub async fn check_token(
        &self,
        prefix: &str,
        key: &[u8],
        tb: &TokenBucket,
    ) -> Result<Decision, BackendError> {
        let mut inv = TOKEN_SCRIPT.prepare_invoke();
        inv.key(full_key(prefix, b't', key))
            .arg(tb.interval_us)
            .arg(tb.burst);
        let v = self.call(&inv).await?;
        if v.len() != 3 {
            return Err(BackendError::BadReply);
        }
        let (mut d, _) = decide_token(tb, v[2].max(0) as u64, v[1].max(0) as u64);
        d.allowed = v[0] == 1;
        Ok(d)
    }
}

/// Hex characters of a key's digest in its Redis name.
pub const KEY_DIGEST_HEX: usize = 32;

/// `<prefix><algorithm>:<hex of SHA-256(key)[..16]>`: a fixed length whatever the key, the
/// same on every node; window counters and token-bucket times never share a name.
fn full_key(prefix: &str, algorithm: u8, key: &[u8]) -> Vec<u8> {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(key);
    let mut k = Vec::with_capacity(prefix.len() + 2 + KEY_DIGEST_HEX);
    k.extend_from_slice(prefix.as_bytes());
    k.push(algorithm);
    k.push(b':');
    k.extend_from_slice(hex::encode(&digest[..KEY_DIGEST_HEX / 2]).as_bytes());
    k
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_names_have_a_fixed_length_and_hold_no_key() {
        let short = full_key("p:", b'w', b"h1.2.3.4");
        let long = full_key("p:", b'w', &[b'v'; 31_000]);
        assert_eq!(short.len(), 4 + KEY_DIGEST_HEX);
        assert_eq!(long.len(), short.len());
        assert!(long.starts_with(b"p:w:"));
        assert!(!long.windows(8).any(|w| w == b"vvvvvvvv"));
        // The same on every node (no secret), distinct per key and per algorithm.
        assert_eq!(full_key("p:", b'w', b"a"), full_key("p:", b'w', b"a"));
        assert_ne!(full_key("p:", b'w', b"a"), full_key("p:", b'w', b"b"));
        assert_ne!(full_key("p:", b'w', b"a"), full_key("p:", b't', b"a"));
        // SHA-256("a") begins ca978112ca1bbdcafac231b39a23dc4d.
        assert_eq!(
            full_key("", b'w', b"a"),
            b"w:ca978112ca1bbdcafac231b39a23dc4d".to_vec()
        );
    }

    #[test]
    fn urls_are_redacted() {
        assert_eq!(
            redact_url("redis://user:s3cret@10.0.0.5:6380/2?pass=x"),
            "redis://10.0.0.5:6380/2"
        );
        assert_eq!(
            redact_url("redis://:p%40ss@cache:6379"),
            "redis://cache:6379"
        );
        assert_eq!(redact_url("redis://127.0.0.1/"), "redis://127.0.0.1/");
        assert_eq!(redact_url("rediss://a:b@h"), "rediss://h");
    }

    #[tokio::test]
    async fn unreachable_redis_fails_fast_and_holds_off() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let url = format!("redis://:pw@127.0.0.1:{port}/");
        let b = RedisBackend::new(
            ::redis::Client::open(url.as_str()).unwrap(),
            redact_url(&url),
            Duration::from_millis(100),
        );
        let limits = Limits::from_slots([None, Some(5), None, None]);
        let t = std::time::Instant::now();
        let e = b.check_windows("t:", b"k", &limits).await.unwrap_err();
        assert!(
            matches!(e, BackendError::Redis(_) | BackendError::Timeout),
            "{e:?}"
        );
        assert!(t.elapsed() < Duration::from_secs(1));
        assert!(!format!("{e} {b:?}").contains("pw"));
        let e = b.check_windows("t:", b"k", &limits).await.unwrap_err();
        assert_eq!(e, BackendError::HoldOff);
    }
}
