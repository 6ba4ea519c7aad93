//! A bounded in-memory object store implementing Pingora's [`Storage`].
//!
//! - **Complete objects only.** A miss handler buffers the body and the object becomes
//!   visible in one step when the fill finishes; a failed or oversized fill leaves nothing
//!   behind (`support_streaming_partial_write` is false, so Pingora's cache lock keeps other
//!   requests for the key waiting until then).
//! - **Bounded by bytes.** Every object is charged its body, its serialized response header
//!   and meta, its purge tags and a fixed bookkeeping overhead ([`OBJECT_OVERHEAD`]). The sum
//!   never stays above the capacity: an insert evicts least-recently-used objects until it
//!   fits, and an object larger than the whole capacity is not admitted.
//! - **Sharded LRU.** Objects live in [`SHARDS`] shards by key hash, each a hash map plus an
//!   intrusive recency list under its own mutex (a hit locks one shard for well under a
//!   microsecond). The byte cap is global and exact; eviction removes the oldest of the shard
//!   tails, i.e. the least recently used object of the whole store.
//! - **Purge index.** Every object carries its route, path and normalized query; a per-shard
//!   index by (route, path) finds every variant of a path (all query strings, hosts and
//!   `Vary` variants) without a scan. Purging a whole route scans.
//! - **No fill resurrects purged content.** A fill that started before a purge that covers
//!   it is dropped when it finishes (a bounded log of recent purges is checked at commit).

use super::stores::note_usage;
use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
use pingora::cache::key::CacheHashKey;
use pingora::cache::storage::{HandleHit, HandleMiss, MissFinishType};
use pingora::cache::trace::SpanHandle;
use pingora::cache::{
    CacheEntryKey, CacheKey, CacheMeta, HitHandler, MissHandler, PurgeOutcome, PurgeTarget,
    PurgeType, Storage,
};
use pingora::http::ResponseHeader;
use pingora::{Error, ErrorType, Result};
use std::any::Any;
use std::collections::hash_map::RandomState;
use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

/// Number of shards per store.
pub const SHARDS: usize = 16;
/// Bytes charged per object on top of its body, header, meta and tags: map entry, list
/// slot, index entry, `Arc` and allocation headers (measured roughly, kept generous).
pub const OBJECT_OVERHEAD: usize = 256;
/// Recent purges remembered to drop fills that started before them.
const PURGE_LOG: usize = 64;
const NIL: u32 = u32::MAX;

/// Where an object came from: what purges match on. Carried from `response_cache_filter` to
/// the miss handler in the [`CacheMeta`] extensions.
#[derive(Debug, Clone)]
pub struct EntryTag {
    pub route: Arc<str>,
    /// Request path as the client sent it (after percent-encoding normalization).
    pub path: Box<str>,
    /// Normalized query ("" when none).
    pub query: Box<str>,
}

/// The stored form of a [`CacheMeta`].
///
/// Pingora's own serialization compresses the response head with zstd, so reading it back
/// costs a decompression and an HTTP parse on every hit. An object without variance (the
/// upstream sent no `Vary`) is kept as parts instead and rebuilt with [`CacheMeta::new`]: a
/// header clone. That is exact for such objects: `created`, `updated` (as the epoch, which
/// is all `age` and `fresh_sec` read) and the stale windows are kept; provenance, which only
/// `Vary` slot validation reads, is the creation time. Objects with variance keep Pingora's
/// serialized form, so their provenance stays exact.
enum StoredMeta {
    Parts {
        fresh_until: SystemTime,
        created: SystemTime,
        epoch: Option<SystemTime>,
        swr: u32,
        sie: u32,
        header: Box<ResponseHeader>,
        /// Approximate heap bytes of `header`.
        header_bytes: usize,
    },
    Serialized(Vec<u8>, Vec<u8>),
}

impl StoredMeta {
    fn new(meta: &CacheMeta) -> Result<StoredMeta> {
        if meta.variance().is_some() {
            let (internal, header) = meta.serialize()?;
            return Ok(StoredMeta::Serialized(internal, header));
        }
        let header = meta.response_header_copy();
        let header_bytes = 64
            + header
                .headers
                .iter()
                .map(|(k, v)| k.as_str().len() + v.len() + 48)
                .sum::<usize>();
        let epoch = meta
            .epoch_override()
            .or_else(|| (meta.updated() != meta.created()).then(|| meta.updated()));
        Ok(StoredMeta::Parts {
            fresh_until: meta.fresh_until(),
            created: meta.created(),
            epoch,
            swr: meta.stale_while_revalidate_sec(),
            sie: meta.stale_if_error_sec(),
            header: Box::new(header),
            header_bytes,
        })
    }

    fn meta(&self) -> Result<CacheMeta> {
        match self {
            StoredMeta::Parts {
                fresh_until,
                created,
                epoch,
                swr,
                sie,
                header,
                ..
            } => {
                let mut m =
                    CacheMeta::new(*fresh_until, *created, *swr, *sie, header.as_ref().clone());
                if let Some(e) = epoch {
                    m.set_epoch_override(*e);
                }
                Ok(m)
            }
            StoredMeta::Serialized(internal, header) => CacheMeta::deserialize(internal, header),
        }
    }

    fn bytes(&self) -> usize {
        match self {
            StoredMeta::Parts { header_bytes, .. } => *header_bytes,
            StoredMeta::Serialized(internal, header) => internal.len() + header.len(),
        }
    }
}

/// One stored response.
struct Object {
    meta: StoredMeta,
    body: Bytes,
    tag: EntryTag,
    path_hash: u64,
    size: usize,
}

impl Object {
    fn charge(meta: &StoredMeta, body: usize, tag: &EntryTag) -> usize {
        body + meta.bytes() + tag.path.len() + tag.query.len() + OBJECT_OVERHEAD
    }
}

/// Keys are already uniform 128-bit hashes: use their low bits as the map hash.
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.0 = self.0.rotate_left(5) ^ u64::from_le_bytes(b);
        }
    }
    fn write_u128(&mut self, n: u128) {
        self.0 ^= n as u64;
    }
    fn write_u64(&mut self, n: u64) {
        self.0 ^= n;
    }
}

type KeyMap<V> = HashMap<u128, V, BuildHasherDefault<KeyHasher>>;

struct Slot {
    key: u128,
    obj: Option<Arc<Object>>,
    tick: u64,
    prev: u32,
    next: u32,
}

/// One shard: map + recency list (head = most recent) + purge index.
#[derive(Default)]
struct Shard {
    map: KeyMap<u32>,
    slots: Vec<Slot>,
    free: Vec<u32>,
    head: u32,
    tail: u32,
    /// (route, path) hash -> keys of every variant of that path.
    paths:
        HashMap<u64, HashSet<u128, BuildHasherDefault<KeyHasher>>, BuildHasherDefault<KeyHasher>>,
}

impl Shard {
    fn new() -> Self {
        Shard {
            head: NIL,
            tail: NIL,
            ..Default::default()
        }
    }

    fn unlink(&mut self, i: u32) {
        let (prev, next) = {
            let s = &self.slots[i as usize];
            (s.prev, s.next)
        };
        match prev {
            NIL => self.head = next,
            p => self.slots[p as usize].next = next,
        }
        match next {
            NIL => self.tail = prev,
            n => self.slots[n as usize].prev = prev,
        }
    }

    fn push_front(&mut self, i: u32) {
        let old = self.head;
        {
            let s = &mut self.slots[i as usize];
            s.prev = NIL;
            s.next = old;
        }
        match old {
            NIL => self.tail = i,
            o => self.slots[o as usize].prev = i,
        }
        self.head = i;
    }

    fn get(&mut self, key: u128, tick: u64) -> Option<Arc<Object>> {
        let i = *self.map.get(&key)?;
        if self.head != i {
            self.unlink(i);
            self.push_front(i);
        }
        let s = &mut self.slots[i as usize];
        s.tick = tick;
        s.obj.clone()
    }

    /// Inserts or replaces; returns the replaced object.
    fn insert(&mut self, key: u128, obj: Arc<Object>, tick: u64) -> Option<Arc<Object>> {
        self.paths.entry(obj.path_hash).or_default().insert(key);
        if let Some(&i) = self.map.get(&key) {
            let old = self.slots[i as usize].obj.replace(obj);
            self.slots[i as usize].tick = tick;
            if self.head != i {
                self.unlink(i);
                self.push_front(i);
            }
            if let Some(o) = &old {
                let new_hash = self.slots[i as usize].obj.as_ref().map(|n| n.path_hash);
                if Some(o.path_hash) != new_hash {
                    self.unindex(o.path_hash, key);
                }
            }
            return old;
        }
        let slot = Slot {
            key,
            obj: Some(obj),
            tick,
            prev: NIL,
            next: NIL,
        };
        let i = match self.free.pop() {
            Some(i) => {
                self.slots[i as usize] = slot;
                i
            }
            None => {
                self.slots.push(slot);
                (self.slots.len() - 1) as u32
            }
        };
        self.map.insert(key, i);
        self.push_front(i);
        None
    }

    fn unindex(&mut self, path_hash: u64, key: u128) {
        if let Some(set) = self.paths.get_mut(&path_hash) {
            set.remove(&key);
            if set.is_empty() {
                self.paths.remove(&path_hash);
            }
        }
    }

    fn remove(&mut self, key: u128) -> Option<Arc<Object>> {
        let i = self.map.remove(&key)?;
        self.unlink(i);
        let obj = self.slots[i as usize].obj.take();
        self.free.push(i);
        if let Some(o) = &obj {
            self.unindex(o.path_hash, key);
        }
        obj
    }

    fn pop_lru(&mut self) -> Option<Arc<Object>> {
        match self.tail {
            NIL => None,
            t => {
                let key = self.slots[t as usize].key;
                self.remove(key)
            }
        }
    }

    fn tail_tick(&self) -> Option<u64> {
        match self.tail {
            NIL => None,
            t => Some(self.slots[t as usize].tick),
        }
    }

    /// Keys of the objects `pred` selects.
    fn select(&self, mut pred: impl FnMut(&Object) -> bool) -> Vec<u128> {
        self.map
            .iter()
            .filter(|(_, &i)| self.slots[i as usize].obj.as_deref().is_some_and(&mut pred))
            .map(|(&k, _)| k)
            .collect()
    }
}

/// What a purge covered (for fills that started before it).
#[derive(Debug, Clone)]
enum Scope {
    All,
    /// Objects of routes not in the list.
    RoutesExcept(Vec<String>),
    Route(String),
    Path(String, String, Option<String>),
}

impl Scope {
    fn covers(&self, tag: &EntryTag) -> bool {
        match self {
            Scope::All => true,
            Scope::RoutesExcept(keep) => !keep.iter().any(|r| **r == *tag.route),
            Scope::Route(r) => **r == *tag.route,
            Scope::Path(r, p, q) => {
                **r == *tag.route
                    && **p == *tag.path
                    && q.as_deref().is_none_or(|q| *q == *tag.query)
            }
        }
    }
}

/// Counters of one store.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub capacity: usize,
    pub used: usize,
    pub objects: usize,
    pub evictions: u64,
    pub evicted_bytes: u64,
}

/// A bounded LRU object store (see the module docs).
pub struct Store {
    name: String,
    shards: Box<[Mutex<Shard>]>,
    capacity: AtomicUsize,
    used: AtomicUsize,
    objects: AtomicUsize,
    evictions: AtomicU64,
    evicted_bytes: AtomicU64,
    /// Bumped by every purge; a fill compares it with the value it started with.
    generation: AtomicU64,
    purges: Mutex<VecDeque<(u64, Scope)>>,
    paths: RandomState,
    epoch: Instant,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("name", &self.name)
            .field("stats", &self.stats())
            .finish()
    }
}

/// Result of an insert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inserted {
    Yes {
        evicted: usize,
    },
    /// Larger than the whole capacity.
    TooLarge,
    /// A purge covering it ran while it was being fetched.
    Purged,
}

impl Store {
    pub fn new(name: impl Into<String>, capacity: usize) -> Store {
        Store {
            name: name.into(),
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::new())).collect(),
            capacity: AtomicUsize::new(capacity),
            used: AtomicUsize::new(0),
            objects: AtomicUsize::new(0),
            evictions: AtomicU64::new(0),
            evicted_bytes: AtomicU64::new(0),
            generation: AtomicU64::new(0),
            purges: Mutex::new(VecDeque::new()),
            paths: RandomState::new(),
            epoch: Instant::now(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn stats(&self) -> Stats {
        Stats {
            capacity: self.capacity.load(Ordering::Relaxed),
            used: self.used.load(Ordering::Relaxed),
            objects: self.objects.load(Ordering::Relaxed),
            evictions: self.evictions.load(Ordering::Relaxed),
            evicted_bytes: self.evicted_bytes.load(Ordering::Relaxed),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.objects.load(Ordering::Relaxed) == 0
    }

    /// Changes the byte cap; shrinking evicts at once.
    pub fn set_capacity(&self, capacity: usize) {
        self.capacity.store(capacity, Ordering::Relaxed);
        self.evict_to_capacity();
    }

    #[inline]
    fn tick(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    #[inline]
    fn shard_of(key: u128) -> usize {
        ((key >> 64) as usize) % SHARDS
    }

    fn path_hash(&self, route: &str, path: &str) -> u64 {
        self.paths.hash_one((route, path))
    }

    /// The object under `key`, marked most recently used.
    fn get(&self, key: u128) -> Option<Arc<Object>> {
        let tick = self.tick();
        self.shards[Self::shard_of(key)].lock().get(key, tick)
    }

    /// [`Storage::lookup`] without the async wrapper: the object under `key` (marked most
    /// recently used) with its deserialized meta and a hit handler over its body.
    pub fn lookup_now(&self, key: &CacheKey) -> Result<Option<(CacheMeta, HitHandler)>> {
        let k = u128::from_be_bytes(key.combined_bin());
        let Some(obj) = self.get(k) else {
            return Ok(None);
        };
        let meta = obj.meta.meta()?;
        let hit = Hit {
            body: obj.body.clone(),
            start: 0,
            end: obj.body.len(),
            done: false,
        };
        Ok(Some((meta, Box::new(hit))))
    }

    /// Whether an object is stored under `key` (no recency change).
    pub fn contains(&self, key: &CacheKey) -> bool {
        let k = u128::from_be_bytes(key.combined_bin());
        self.shards[Self::shard_of(k)].lock().map.contains_key(&k)
    }

    fn account_removed(&self, obj: &Object) {
        self.used.fetch_sub(obj.size, Ordering::Relaxed);
        self.objects.fetch_sub(1, Ordering::Relaxed);
    }

    /// Stores a complete object (replacing any under the same key) and evicts down to the
    /// capacity. `generation` is [`Self::generation`] as seen when the fetch started.
    fn insert(&self, key: u128, obj: Object, generation: u64) -> Inserted {
        if obj.size > self.capacity.load(Ordering::Relaxed) {
            return Inserted::TooLarge;
        }
        let s = Self::shard_of(key);
        let size = obj.size;
        {
            let mut shard = self.shards[s].lock();
            // Checked under the shard lock: a purge bumps the generation before it visits
            // the shards, so either it sees this object or this sees its log entry.
            if self.generation.load(Ordering::Acquire) != generation
                && self.purged_since(generation, &obj.tag)
            {
                return Inserted::Purged;
            }
            let old = shard.insert(key, Arc::new(obj), self.tick());
            self.used.fetch_add(size, Ordering::Relaxed);
            self.objects.fetch_add(1, Ordering::Relaxed);
            if let Some(old) = old {
                self.account_removed(&old);
                note_usage(size as isize - old.size as isize, 0);
            } else {
                note_usage(size as isize, 0);
            }
        }
        let evicted = self.evict_to_capacity();
        Inserted::Yes { evicted }
    }

    fn purged_since(&self, generation: u64, tag: &EntryTag) -> bool {
        let log = self.purges.lock();
        match log.front() {
            // Older than the log: assume covered.
            Some((first, _)) if *first > generation + 1 => true,
            _ => log
                .iter()
                .any(|(g, scope)| *g > generation && scope.covers(tag)),
        }
    }

    /// Evicts least-recently-used objects until the byte count is within the capacity: the
    /// oldest of the shard tails each time, so the order is a global LRU (an uncontended
    /// lock per shard; this only runs when a fill pushes the store over its cap).
    /// Returns how many were evicted.
    fn evict_to_capacity(&self) -> usize {
        let mut evicted = 0usize;
        let mut bytes = 0u64;
        while self.used.load(Ordering::Relaxed) > self.capacity.load(Ordering::Relaxed) {
            let mut oldest: Option<(usize, u64)> = None;
            for (i, shard) in self.shards.iter().enumerate() {
                if let Some(t) = shard.lock().tail_tick() {
                    if oldest.is_none_or(|(_, o)| t < o) {
                        oldest = Some((i, t));
                    }
                }
            }
            let Some((victim, _)) = oldest else {
                break;
            };
            let popped = self.shards[victim].lock().pop_lru();
            if let Some(obj) = popped {
                self.account_removed(&obj);
                evicted += 1;
                bytes += obj.size as u64;
            }
        }
        if evicted > 0 {
            self.evictions.fetch_add(evicted as u64, Ordering::Relaxed);
            self.evicted_bytes.fetch_add(bytes, Ordering::Relaxed);
            note_usage(-(bytes as isize), evicted as u64);
        }
        evicted
    }

    /// Removes one object. True if it was there.
    fn remove_key(&self, key: u128) -> bool {
        let removed = self.shards[Self::shard_of(key)].lock().remove(key);
        match removed {
            Some(obj) => {
                self.account_removed(&obj);
                note_usage(-(obj.size as isize), 0);
                true
            }
            None => false,
        }
    }

    fn begin_purge(&self, scope: Scope) {
        let mut log = self.purges.lock();
        let g = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
        log.push_back((g, scope));
        while log.len() > PURGE_LOG {
            log.pop_front();
        }
    }

    /// Removes object `k` of a purge from `shard`, counted in `purged`.
    fn purge_one(&self, shard: &mut Shard, k: u128, purged: &mut Purged) {
        if let Some(obj) = shard.remove(k) {
            self.account_removed(&obj);
            purged.objects += 1;
            purged.bytes += obj.size;
        }
    }

    /// Removes every object `pred` selects from every shard.
    fn remove_where(&self, pred: impl Fn(&Object) -> bool) -> usize {
        let mut purged = Purged::default();
        for shard in self.shards.iter() {
            let mut shard = shard.lock();
            for k in shard.select(&pred) {
                self.purge_one(&mut shard, k, &mut purged);
            }
        }
        purged.done()
    }

    /// Every variant of `path` on `route`: all hosts, `Vary` variants and query strings, or
    /// only those with the normalized `query` when given.
    pub fn purge_path(&self, route: &str, path: &str, query: Option<&str>) -> usize {
        self.begin_purge(Scope::Path(
            route.to_string(),
            path.to_string(),
            query.map(str::to_string),
        ));
        let ph = self.path_hash(route, path);
        let mut purged = Purged::default();
        for shard in self.shards.iter() {
            let mut shard = shard.lock();
            let Some(keys) = shard.paths.get(&ph) else {
                continue;
            };
            let keys: Vec<u128> = keys.iter().copied().collect();
            for k in keys {
                let matches = shard
                    .map
                    .get(&k)
                    .and_then(|&i| shard.slots[i as usize].obj.as_deref())
                    .is_some_and(|o| {
                        *o.tag.route == *route
                            && *o.tag.path == *path
                            && query.is_none_or(|q| *o.tag.query == *q)
                    });
                if matches {
                    self.purge_one(&mut shard, k, &mut purged);
                }
            }
        }
        purged.done()
    }

    /// Every object of `route`.
    pub fn purge_route(&self, route: &str) -> usize {
        self.begin_purge(Scope::Route(route.to_string()));
        self.remove_where(|o| *o.tag.route == *route)
    }

    /// Drops the objects of routes not in `keep` (a reload removed or re-homed them).
    pub fn retain_routes(&self, keep: &[String]) -> usize {
        self.begin_purge(Scope::RoutesExcept(keep.to_vec()));
        self.remove_where(|o| !keep.iter().any(|r| **r == *o.tag.route))
    }

    /// Drops everything.
    pub fn clear(&self) -> usize {
        self.begin_purge(Scope::All);
        self.remove_where(|_| true)
    }
}

/// What one purge removed so far.
#[derive(Default)]
struct Purged {
    objects: usize,
    bytes: usize,
}

impl Purged {
    /// Reports the freed bytes to the usage gauge; the number of objects removed.
    fn done(self) -> usize {
        if self.objects > 0 {
            note_usage(-(self.bytes as isize), 0);
        }
        self.objects
    }
}

/// A hit: the whole body as one `Bytes` (no copy), seekable for range requests.
struct Hit {
    body: Bytes,
    start: usize,
    end: usize,
    done: bool,
}

#[async_trait]
impl HandleHit for Hit {
    async fn read_body(&mut self) -> Result<Option<Bytes>> {
        if self.done {
            return Ok(None);
        }
        self.done = true;
        Ok(Some(self.body.slice(self.start..self.end)))
    }

    async fn finish(
        self: Box<Self>,
        _storage: &'static (dyn Storage + Sync),
        _key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<()> {
        Ok(())
    }

    fn can_seek(&self) -> bool {
        true
    }

    fn seek(&mut self, start: usize, end: Option<usize>) -> Result<()> {
        let len = self.body.len();
        if start >= len {
            return Error::e_explain(
                ErrorType::InternalError,
                format!("seek start out of range {start} >= {len}"),
            );
        }
        self.start = start;
        self.end = end.map_or(len, |e| e.min(len)).max(start);
        self.done = false;
        Ok(())
    }

    fn get_eviction_weight(&self) -> usize {
        self.body.len()
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync) {
        self
    }

    fn as_any_mut(&mut self) -> &mut (dyn Any + Send + Sync) {
        self
    }
}

/// A fill in progress: buffers the body; the object is stored by `finish`.
struct Miss {
    store: &'static Store,
    key: u128,
    meta: StoredMeta,
    tag: EntryTag,
    path_hash: u64,
    body: Vec<u8>,
    /// Stop buffering above this (the store's capacity: nothing larger can be admitted).
    limit: usize,
    over: bool,
    generation: u64,
}

#[async_trait]
impl HandleMiss for Miss {
    async fn write_body(&mut self, data: Bytes, _eof: bool) -> Result<()> {
        if self.over {
            return Ok(());
        }
        if self.body.len() + data.len() > self.limit {
            self.over = true;
            self.body = Vec::new();
            return Error::e_explain(
                ErrorType::InternalError,
                "response larger than the cache capacity",
            );
        }
        self.body.extend_from_slice(&data);
        Ok(())
    }

    async fn finish(self: Box<Self>) -> Result<MissFinishType> {
        if self.over {
            return Error::e_explain(
                ErrorType::InternalError,
                "response larger than the cache capacity",
            );
        }
        let Miss {
            store,
            key,
            meta,
            tag,
            path_hash,
            mut body,
            generation,
            ..
        } = *self;
        // Exact-size buffer: the charge is what the object really holds.
        body.shrink_to_fit();
        let size = Object::charge(&meta, body.len(), &tag);
        let obj = Object {
            meta,
            body: Bytes::from(body),
            tag,
            path_hash,
            size,
        };
        match store.insert(key, obj, generation) {
            Inserted::Yes { .. } => Ok(MissFinishType::Created(size)),
            Inserted::TooLarge | Inserted::Purged => Ok(MissFinishType::Created(0)),
        }
    }
}

#[async_trait]
impl Storage for Store {
    async fn lookup(
        &'static self,
        key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<Option<(CacheMeta, HitHandler)>> {
        self.lookup_now(key)
    }

    async fn get_miss_handler(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<MissHandler> {
        let tag = meta
            .extensions()
            .get::<EntryTag>()
            .cloned()
            .unwrap_or_else(|| EntryTag {
                route: Arc::from(""),
                path: "".into(),
                query: "".into(),
            });
        let path_hash = self.path_hash(&tag.route, &tag.path);
        let generation = self.generation.load(Ordering::Acquire);
        Ok(Box::new(Miss {
            store: self,
            key: u128::from_be_bytes(key.combined_bin()),
            meta: StoredMeta::new(meta)?,
            tag,
            path_hash,
            body: Vec::new(),
            limit: self.capacity.load(Ordering::Relaxed),
            over: false,
            generation,
        }))
    }

    async fn purge(
        &'static self,
        target: PurgeTarget<'_>,
        _purge_type: PurgeType,
        _trace: &SpanHandle,
    ) -> Result<PurgeOutcome> {
        // This store does not identify generations beyond the key.
        if matches!(target, PurgeTarget::Exact(CacheEntryKey::Identified { .. })) {
            return Ok(PurgeOutcome::NotFound);
        }
        let k = u128::from_be_bytes(target.key().combined_bin());
        Ok(if self.remove_key(k) {
            PurgeOutcome::Purged(None)
        } else {
            PurgeOutcome::NotFound
        })
    }

    async fn update_meta(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<bool> {
        let k = u128::from_be_bytes(key.combined_bin());
        let meta = StoredMeta::new(meta)?;
        let s = Self::shard_of(k);
        let mut shard = self.shards[s].lock();
        let Some(old) = shard
            .map
            .get(&k)
            .and_then(|&i| shard.slots[i as usize].obj.clone())
        else {
            return Ok(false);
        };
        let size = Object::charge(&meta, old.body.len(), &old.tag);
        let obj = Object {
            meta,
            body: old.body.clone(),
            tag: old.tag.clone(),
            path_hash: old.path_hash,
            size,
        };
        let tick = self.tick();
        shard.insert(k, Arc::new(obj), tick);
        self.used.fetch_add(size, Ordering::Relaxed);
        self.used.fetch_sub(old.size, Ordering::Relaxed);
        note_usage(size as isize - old.size as isize, 0);
        drop(shard);
        self.evict_to_capacity();
        Ok(true)
    }

    fn support_streaming_partial_write(&self) -> bool {
        false
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync + 'static) {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora::cache::key::HashBinary;
    use pingora::http::ResponseHeader;
    use std::time::{Duration, SystemTime};

    fn span() -> SpanHandle {
        pingora::cache::trace::Span::inactive().handle()
    }

    fn leak(capacity: usize) -> &'static Store {
        Box::leak(Box::new(Store::new("test", capacity)))
    }

    fn key(n: u32) -> CacheKey {
        let mut k = CacheKey::new(Vec::new(), String::new());
        let mut h: HashBinary = [0; 16];
        // Spread over the shards (the shard is chosen by byte 7).
        h[..4].copy_from_slice(&n.to_le_bytes());
        h[4..8].copy_from_slice(&n.wrapping_mul(2654435761).to_le_bytes());
        k.set_primary_bin_override(h);
        k
    }

    fn meta(route: &str, path: &str, query: &str) -> CacheMeta {
        let header = ResponseHeader::build(200, None).unwrap();
        let now = SystemTime::now();
        let mut m = CacheMeta::new(now + Duration::from_secs(60), now, 0, 0, header);
        m.extensions_mut().insert(EntryTag {
            route: Arc::from(route),
            path: path.into(),
            query: query.into(),
        });
        m
    }

    async fn fill(store: &'static Store, k: &CacheKey, m: &CacheMeta, body: &[u8]) {
        let trace = span();
        let mut miss = store.get_miss_handler(k, m, &trace).await.unwrap();
        miss.write_body(Bytes::copy_from_slice(body), true)
            .await
            .unwrap();
        miss.finish().await.unwrap();
    }

    async fn read(store: &'static Store, k: &CacheKey) -> Option<Vec<u8>> {
        let trace = span();
        let (_, mut hit) = store.lookup(k, &trace).await.unwrap()?;
        let mut out = Vec::new();
        while let Some(b) = hit.read_body().await.unwrap() {
            out.extend_from_slice(&b);
        }
        Some(out)
    }

    #[tokio::test]
    async fn fill_then_hit_and_visible_only_when_complete() {
        let store = leak(1 << 20);
        let k = key(1);
        let m = meta("r", "/a", "");
        let trace = span();
        let mut miss = store.get_miss_handler(&k, &m, &trace).await.unwrap();
        miss.write_body(Bytes::from_static(b"hello "), false)
            .await
            .unwrap();
        assert!(
            read(store, &k).await.is_none(),
            "partial write is invisible"
        );
        miss.write_body(Bytes::from_static(b"world"), true)
            .await
            .unwrap();
        miss.finish().await.unwrap();
        assert_eq!(read(store, &k).await.unwrap(), b"hello world");
        assert_eq!(store.stats().objects, 1);

        // A dropped (unfinished) fill leaves nothing.
        let k2 = key(2);
        let mut miss = store.get_miss_handler(&k2, &m, &trace).await.unwrap();
        miss.write_body(Bytes::from_static(b"x"), false)
            .await
            .unwrap();
        drop(miss);
        assert!(read(store, &k2).await.is_none());
    }

    #[tokio::test]
    async fn lru_eviction_keeps_bytes_under_capacity() {
        let body = vec![b'x'; 1000];
        let per = {
            let m = meta("r", "/p0", "");
            Object::charge(
                &StoredMeta::new(&m).unwrap(),
                body.len(),
                &EntryTag {
                    route: Arc::from("r"),
                    path: "/p0".into(),
                    query: "".into(),
                },
            )
        };
        let cap = per * 10 + per / 2;
        let store = leak(cap);
        for i in 0..10u32 {
            fill(store, &key(i), &meta("r", &format!("/p{i}"), ""), &body).await;
        }
        assert_eq!(store.stats().objects, 10);
        // Touch key 0 so it is the most recently used of the first ten.
        assert!(read(store, &key(0)).await.is_some());
        for i in 10..15u32 {
            fill(store, &key(i), &meta("r", &format!("/p{i}"), ""), &body).await;
            assert!(store.stats().used <= cap);
        }
        assert!(
            read(store, &key(0)).await.is_some(),
            "recently used survives"
        );
        for i in 1..=5u32 {
            assert!(
                read(store, &key(i)).await.is_none(),
                "key {i} is least recent"
            );
        }
        for i in 6..15u32 {
            assert!(read(store, &key(i)).await.is_some(), "key {i} stays");
        }
        for i in 15..40u32 {
            fill(store, &key(i), &meta("r", &format!("/p{i}"), ""), &body).await;
        }
        let st = store.stats();
        assert!(st.used <= cap, "{st:?}");
        assert_eq!(st.objects, 10, "{st:?}");
        assert_eq!(st.evictions, 30);
        assert!(read(store, &key(39)).await.is_some());

        // Larger than the whole capacity: not admitted, nothing evicted for it.
        let trace = span();
        let big = vec![b'y'; cap + 1];
        let k = key(1000);
        let mut miss = store
            .get_miss_handler(&k, &meta("r", "/big", ""), &trace)
            .await
            .unwrap();
        assert!(miss.write_body(Bytes::from(big), true).await.is_err());
        assert!(miss.finish().await.is_err());
        assert_eq!(store.stats().objects, 10);

        // Shrinking the capacity evicts at once.
        // (Paths here are one byte longer than "/p0".)
        store.set_capacity(per * 3 + 10);
        assert!(store.stats().used <= per * 3 + 10);
        assert_eq!(store.stats().objects, 3);
    }

    #[tokio::test]
    async fn purge_by_path_query_and_route() {
        let store = leak(1 << 20);
        fill(store, &key(1), &meta("r", "/a", ""), b"1").await;
        fill(store, &key(2), &meta("r", "/a", "x=1"), b"2").await;
        fill(store, &key(3), &meta("r", "/a/b", ""), b"3").await;
        fill(store, &key(4), &meta("other", "/a", ""), b"4").await;
        fill(store, &key(5), &meta("r", "/c", ""), b"5").await;
        assert_eq!(store.purge_path("r", "/a", Some("x=1")), 1);
        assert!(read(store, &key(1)).await.is_some());
        assert_eq!(store.purge_path("r", "/a", None), 1);
        assert!(read(store, &key(1)).await.is_none());
        assert!(read(store, &key(3)).await.is_some(), "not a prefix purge");
        assert!(
            read(store, &key(4)).await.is_some(),
            "other route untouched"
        );
        assert_eq!(store.purge_route("r"), 2);
        assert_eq!(store.stats().objects, 1);
        assert_eq!(store.retain_routes(&["r".to_string()]), 1);
        assert!(store.is_empty());
        assert_eq!(store.stats().used, 0);
    }

    #[tokio::test]
    async fn fill_started_before_a_covering_purge_is_dropped() {
        let store = leak(1 << 20);
        let trace = span();
        let m = meta("r", "/a", "");
        let mut miss = store.get_miss_handler(&key(1), &m, &trace).await.unwrap();
        let mut other = store
            .get_miss_handler(&key(2), &meta("r", "/b", ""), &trace)
            .await
            .unwrap();
        miss.write_body(Bytes::from_static(b"old"), true)
            .await
            .unwrap();
        other
            .write_body(Bytes::from_static(b"b"), true)
            .await
            .unwrap();
        store.purge_path("r", "/a", None);
        miss.finish().await.unwrap();
        other.finish().await.unwrap();
        assert!(
            read(store, &key(1)).await.is_none(),
            "purged while fetching"
        );
        assert!(
            read(store, &key(2)).await.is_some(),
            "not covered by the purge"
        );
    }

    #[test]
    fn stored_meta_round_trips() {
        let mut h = ResponseHeader::build(200, None).unwrap();
        h.insert_header("content-type", "application/json").unwrap();
        h.insert_header("etag", "\"v1\"").unwrap();
        let created = SystemTime::now() - Duration::from_secs(30);
        let fresh = created + Duration::from_secs(60);
        let m = CacheMeta::new(fresh, created, 5, 9, h);
        let s = StoredMeta::new(&m).unwrap();
        assert!(matches!(s, StoredMeta::Parts { .. }));
        let back = s.meta().unwrap();
        assert_eq!(back.fresh_until(), fresh);
        assert_eq!(back.created(), created);
        assert_eq!(back.stale_while_revalidate_sec(), 5);
        assert_eq!(back.stale_if_error_sec(), 9);
        assert_eq!(back.headers().get("etag").unwrap(), "\"v1\"");
        assert!(back.age() >= Duration::from_secs(30));
        assert_eq!(back.variance(), None);

        // With variance: Pingora's serialized form, variance kept.
        let mut v = CacheMeta::new(
            fresh,
            created,
            0,
            0,
            ResponseHeader::build(200, None).unwrap(),
        );
        v.set_variance_key([7; 16]);
        let s = StoredMeta::new(&v).unwrap();
        assert!(matches!(s, StoredMeta::Serialized(..)));
        let back = s.meta().unwrap();
        assert_eq!(back.variance(), Some([7; 16]));
        assert_eq!(back.created(), v.created());
    }

    #[tokio::test]
    async fn update_meta_and_seek() {
        let store = leak(1 << 20);
        let k = key(7);
        fill(store, &k, &meta("r", "/a", ""), b"0123456789").await;
        assert!(store
            .update_meta(&k, &meta("r", "/a", ""), &span())
            .await
            .unwrap());
        assert!(!store
            .update_meta(&key(8), &meta("r", "/a", ""), &span())
            .await
            .unwrap());
        let (_, mut hit) = store.lookup(&k, &span()).await.unwrap().unwrap();
        assert!(hit.can_seek());
        hit.seek(2, Some(5)).unwrap();
        assert_eq!(hit.read_body().await.unwrap().unwrap(), &b"234"[..]);
        assert!(hit.read_body().await.unwrap().is_none());
        assert!(hit.seek(10, None).is_err());
    }
}
