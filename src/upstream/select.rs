//! Target selection for `upstream_peer`: round_robin, smooth weighted round robin,
//! least_conn and ip_hash (Ketama), with backup targets used only when no primary is
//! available. Lock-free on the request path: counters are atomics, the weighted schedule is
//! precomputed at config load.

use super::{Target, TargetSet};
use crate::config::raw::Balance;
use crate::util::clock::now_ms;
use pingora_ketama::{Bucket, Continuum};
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Longest precomputed weighted schedule; weights are divided by their gcd first and scaled
/// down proportionally beyond this.
const MAX_SCHEDULE: u64 = 1 << 16;

pub enum Selector {
    RoundRobin,
    /// Indices into the primaries in NGINX's smooth weighted order (3:1 -> a a b a).
    Weighted(Box<[u16]>),
    LeastConn,
    IpHash(Box<Continuum>),
}

impl std::fmt::Debug for Selector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Selector::RoundRobin => f.write_str("RoundRobin"),
            Selector::Weighted(s) => write!(f, "Weighted({} slots)", s.len()),
            Selector::LeastConn => f.write_str("LeastConn"),
            Selector::IpHash(_) => f.write_str("IpHash"),
        }
    }
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// NGINX's smooth weighted round robin, run once over a full cycle.
pub fn smooth_schedule(weights: &[u32]) -> Vec<u16> {
    if weights.is_empty() {
        return Vec::new();
    }
    let g = weights.iter().fold(0u64, |g, w| gcd(g, *w as u64)).max(1);
    let mut w: Vec<u64> = weights.iter().map(|x| *x as u64 / g).collect();
    let total: u64 = w.iter().sum();
    if total > MAX_SCHEDULE {
        let scale = total.div_ceil(MAX_SCHEDULE);
        for x in &mut w {
            *x = (*x / scale).max(1);
        }
    }
    let total: i64 = w.iter().map(|x| *x as i64).sum();
    let mut current = vec![0i64; w.len()];
    let mut out = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for i in 0..w.len() {
            current[i] += w[i] as i64;
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        out.push(best as u16);
    }
    out
}

impl Selector {
    pub fn build(balance: Balance, primaries: &[Target]) -> Selector {
        match balance {
            Balance::RoundRobin => Selector::RoundRobin,
            Balance::Weighted => {
                let weights: Vec<u32> = primaries.iter().map(|t| t.weight).collect();
                Selector::Weighted(smooth_schedule(&weights).into_boxed_slice())
            }
            Balance::LeastConn => Selector::LeastConn,
            Balance::IpHash => {
                let buckets: Vec<Bucket> = primaries
                    .iter()
                    .map(|t| Bucket::new(t.sock, t.weight))
                    .collect();
                Selector::IpHash(Box::new(Continuum::new(&buckets)))
            }
        }
    }
}

/// Decrements the target's in-flight count when the request ends (kept in the request CTX).
#[derive(Debug)]
pub struct InflightGuard(Arc<super::TargetState>);

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What `select` returns: the index of the target in `TargetSet::targets`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Selection {
    pub index: usize,
}

/// Bit set of target indices already tried by this request (retries go elsewhere).
#[inline]
fn tried(mask: u64, i: usize) -> bool {
    i < 64 && mask & (1 << i) != 0
}

impl TargetSet {
    /// Picks a target for one attempt. `tried_mask` holds targets this request already used;
    /// they are avoided while an untried one is available. `None`: no target is available.
    /// `cursor` is the upstream's rotating start point (it outlives a set).
    pub fn select(
        &self,
        cursor: &AtomicUsize,
        client_ip: Option<IpAddr>,
        tried_mask: u64,
    ) -> Option<Selection> {
        let now = now_ms();
        let prim = &self.targets[..self.primaries];
        let ok = |i: usize| self.targets[i].state.available(now);
        if let Some(index) = self.pick_primary(cursor, prim, client_ip, tried_mask, now) {
            return Some(Selection { index });
        }
        if !(0..self.primaries).any(ok) {
            // Backups serve only while no primary is available at all.
            let nb = self.targets.len() - self.primaries;
            let start = cursor.fetch_add(1, Ordering::Relaxed);
            let backup = |k: usize| self.primaries + (start + k) % nb.max(1);
            return (0..nb)
                .map(backup)
                .find(|i| ok(*i) && !tried(tried_mask, *i))
                .or_else(|| (0..nb).map(backup).find(|i| ok(*i)))
                .map(|index| Selection { index });
        }
        // Every available primary was tried already: try one again.
        let start = cursor.fetch_add(1, Ordering::Relaxed);
        (0..self.primaries)
            .map(|k| (start + k) % self.primaries)
            .find(|i| ok(*i))
            .map(|index| Selection { index })
    }

    fn pick_primary(
        &self,
        cursor: &AtomicUsize,
        prim: &[Target],
        client_ip: Option<IpAddr>,
        tried_mask: u64,
        now: u64,
    ) -> Option<usize> {
        let n = prim.len();
        if n == 0 {
            return None;
        }
        let usable = |i: usize| prim[i].state.available(now) && !tried(tried_mask, i);
        match &self.selector {
            Selector::RoundRobin => {
                let start = cursor.fetch_add(1, Ordering::Relaxed);
                (0..n).map(|k| (start + k) % n).find(|i| usable(*i))
            }
            Selector::Weighted(schedule) => {
                let len = schedule.len();
                let start = cursor.fetch_add(1, Ordering::Relaxed);
                // Walking on along the schedule from an unusable slot keeps the remaining
                // targets in their relative proportions.
                (0..len)
                    .map(|k| schedule[(start + k) % len] as usize)
                    .find(|i| usable(*i))
            }
            Selector::LeastConn => {
                let start = cursor.fetch_add(1, Ordering::Relaxed);
                let mut best: Option<(usize, u64)> = None;
                for k in 0..n {
                    let i = (start + k) % n;
                    if !usable(i) {
                        continue;
                    }
                    // Compare inflight/weight without division.
                    let load = (prim[i].state.inflight.load(Ordering::Relaxed) as u64 + 1)
                        * 1_000_000
                        / prim[i].weight.max(1) as u64;
                    if best.is_none_or(|(_, b)| load < b) {
                        best = Some((i, load));
                    }
                }
                best.map(|(i, _)| i)
            }
            Selector::IpHash(ring) => {
                let mut key = [0u8; 16];
                let key: &[u8] = match client_ip {
                    Some(IpAddr::V4(v4)) => {
                        key[..4].copy_from_slice(&v4.octets());
                        &key[..4]
                    }
                    Some(IpAddr::V6(v6)) => {
                        key.copy_from_slice(&v6.octets());
                        &key[..]
                    }
                    None => &key[..0],
                };
                // Walk the ring from the client's point: when its target is down only its
                // clients move, everyone else keeps their target.
                for addr in ring.node_iter(key).take(n * 160) {
                    if let Some(i) = prim.iter().position(|t| t.sock == *addr) {
                        if usable(i) {
                            return Some(i);
                        }
                    }
                }
                (0..n).find(|i| usable(*i))
            }
        }
    }

    /// Counts the request in the target's in-flight gauge for as long as the guard lives.
    pub fn track(&self, sel: Selection) -> InflightGuard {
        let st = self.targets[sel.index].state.clone();
        st.inflight.fetch_add(1, Ordering::Relaxed);
        InflightGuard(st)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smooth_3_1() {
        assert_eq!(smooth_schedule(&[3, 1]), vec![0, 0, 1, 0]);
        assert_eq!(smooth_schedule(&[5, 1, 1]), vec![0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(smooth_schedule(&[5, 5]), vec![0, 1]);
    }

    #[test]
    fn schedule_is_bounded() {
        let s = smooth_schedule(&[1_000_000, 999_999, 3]);
        assert!(s.len() as u64 <= MAX_SCHEDULE + 3);
        assert!(s.contains(&2));
    }
}
