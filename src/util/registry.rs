//! [`Registry`]: state that survives config reloads, by identity key.
//!
//! A config reload builds every plugin and limit afresh, but some of their state must carry
//! over when the entry that owns it did not change: rate-limit counters, in-flight counts,
//! forward-auth's HTTP client and decision cache, a JWKS key set and its refresher, an OTLP
//! exporter. Each such value is kept here under a key naming what it is for (usually
//! `limits::identity` of the entry's place and exact config) and its type. Values are held weakly:
//! a value lives exactly as long as a runtime uses it, so a reload that drops or changes the
//! entry frees its state once the last request on the old runtime ended, and a reload that
//! keeps it finds the same value.
//!
//! The one exception is state Pingora needs for the life of the process (`&'static`
//! references: the proxy-cache stores and cache locks): [`Registry::pinned`] leaks it once per
//! key and keeps it findable; such sets are bounded by the configs ever loaded.
//!
//! The registry belongs to the app's shared state and reaches plugins through their build
//! environment; there is no process-wide instance. It is only used at load (and by admin
//! calls), never on the request path.

use parking_lot::Mutex;
use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::{Arc, Weak};

type Key = (TypeId, String);

#[derive(Default)]
struct Inner {
    weak: Mutex<HashMap<Key, Weak<dyn Any + Send + Sync>>>,
    /// With the order they were made in.
    pinned: Mutex<HashMap<Key, (usize, &'static (dyn Any + Send + Sync))>>,
}

/// State that survives reloads, by type and key (see the module doc). Cloning is cheap: the
/// clones share one registry.
#[derive(Clone, Default)]
pub struct Registry(Arc<Inner>);

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("weak", &self.0.weak.lock().len())
            .field("pinned", &self.0.pinned.lock().len())
            .finish()
    }
}

impl Registry {
    /// The live `T` under `key`, or a new one from `make` (kept weakly from then on).
    ///
    /// `make` runs under the registry's lock: it must not use the registry itself.
    pub fn get_or_insert_with<T: Any + Send + Sync>(
        &self,
        key: &str,
        make: impl FnOnce() -> T,
    ) -> Arc<T> {
        match self.try_get_or_insert_with(key, || Ok::<T, std::convert::Infallible>(make())) {
            Ok(v) => v,
            Err(never) => match never {},
        }
    }

    /// [`Self::get_or_insert_with`] with a constructor that may fail (nothing is kept then).
    pub fn try_get_or_insert_with<T: Any + Send + Sync, E>(
        &self,
        key: &str,
        make: impl FnOnce() -> Result<T, E>,
    ) -> Result<Arc<T>, E> {
        let id = (TypeId::of::<T>(), key.to_string());
        let mut map = self.0.weak.lock();
        if let Some(v) = map.get(&id).and_then(Weak::upgrade) {
            if let Ok(v) = v.downcast::<T>() {
                return Ok(v);
            }
        }
        // The only place entries are added: dead ones go here, so the map stays as small as
        // the live state.
        map.retain(|_, w| w.strong_count() > 0);
        let v = Arc::new(make()?);
        let erased: Arc<dyn Any + Send + Sync> = v.clone();
        map.insert(id, Arc::downgrade(&erased));
        Ok(v)
    }

    /// The live `T` under `key`, if any.
    pub fn get<T: Any + Send + Sync>(&self, key: &str) -> Option<Arc<T>> {
        let id = (TypeId::of::<T>(), key.to_string());
        let v = self.0.weak.lock().get(&id).and_then(Weak::upgrade)?;
        v.downcast::<T>().ok()
    }

    /// Whether a live `T` is kept under `key`. Runs `f` under the registry's lock when there
    /// is none, so a value created meanwhile ([`Self::get_or_insert_with`] takes the same
    /// lock) is seen: for a value's `Drop` that undoes what only the last one of its key may
    /// undo (metric series, for example).
    pub fn unless_live<T: Any + Send + Sync>(&self, key: &str, f: impl FnOnce()) {
        let id = (TypeId::of::<T>(), key.to_string());
        let map = self.0.weak.lock();
        if map.get(&id).is_none_or(|w| w.strong_count() == 0) {
            f();
        }
    }

    /// Every live `T`, with its key (in no particular order).
    pub fn live<T: Any + Send + Sync>(&self) -> Vec<(String, Arc<T>)> {
        let upgraded: Vec<(String, Arc<dyn Any + Send + Sync>)> = self
            .0
            .weak
            .lock()
            .iter()
            .filter(|((t, _), _)| *t == TypeId::of::<T>())
            .filter_map(|((_, k), w)| Some((k.clone(), w.upgrade()?)))
            .collect();
        // Downcast (and drop what is not a `T`, which cannot happen) outside the lock: a
        // value dropped here may take the lock in its `Drop`.
        upgraded
            .into_iter()
            .filter_map(|(k, v)| Some((k, v.downcast::<T>().ok()?)))
            .collect()
    }

    /// The `T` pinned under `key` for the life of the process, made by `make` the first
    /// time (for state Pingora keeps `&'static` references to).
    pub fn pinned<T: Any + Send + Sync>(&self, key: &str, make: impl FnOnce() -> T) -> &'static T {
        let id = (TypeId::of::<T>(), key.to_string());
        let mut map = self.0.pinned.lock();
        if let Some(v) = map.get(&id).and_then(|(_, v)| v.downcast_ref::<T>()) {
            return v;
        }
        let v: &'static T = Box::leak(Box::new(make()));
        let n = map.len();
        map.insert(id, (n, v));
        v
    }

    /// Every pinned `T`, in the order they were made.
    pub fn all_pinned<T: Any + Send + Sync>(&self) -> Vec<&'static T> {
        let mut all: Vec<(usize, &'static T)> = self
            .0
            .pinned
            .lock()
            .iter()
            .filter(|((t, _), _)| *t == TypeId::of::<T>())
            .filter_map(|(_, (n, v))| Some((*n, v.downcast_ref::<T>()?)))
            .collect();
        all.sort_by_key(|(n, _)| *n);
        all.into_iter().map(|(_, v)| v).collect()
    }

    /// Number of live `T` (tests).
    pub fn count<T: Any + Send + Sync>(&self) -> usize {
        self.0
            .weak
            .lock()
            .iter()
            .filter(|((t, _), w)| *t == TypeId::of::<T>() && w.strong_count() > 0)
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn kept_while_used_by_key_and_type() {
        let r = Registry::default();
        let a = r.get_or_insert_with("k", || AtomicUsize::new(1));
        a.store(7, Ordering::Relaxed);
        // Same key and type: the same value.
        let again = r.get_or_insert_with("k", || AtomicUsize::new(1));
        assert_eq!(again.load(Ordering::Relaxed), 7);
        // Same key, another type: another value.
        let s = r.get_or_insert_with("k", || String::from("x"));
        assert_eq!(*s, "x");
        assert_eq!(r.count::<AtomicUsize>(), 1);
        assert_eq!(r.live::<AtomicUsize>().len(), 1);
        drop((a, again));
        // Gone with its last user.
        assert_eq!(r.count::<AtomicUsize>(), 0);
        assert!(r.get::<AtomicUsize>("k").is_none());
        let fresh = r.get_or_insert_with("k", || AtomicUsize::new(1));
        assert_eq!(fresh.load(Ordering::Relaxed), 1);
        // A failing constructor keeps nothing.
        let e: Result<Arc<u8>, &str> = r.try_get_or_insert_with("bad", || Err("no"));
        assert!(e.is_err() && r.count::<u8>() == 0);
    }

    #[test]
    fn unless_live_sees_the_live_value() {
        let r = Registry::default();
        let v = r.get_or_insert_with("k", || 1u32);
        let mut ran = false;
        r.unless_live::<u32>("k", || ran = true);
        assert!(!ran);
        drop(v);
        r.unless_live::<u32>("k", || ran = true);
        assert!(ran);
    }

    #[test]
    fn pinned_once_per_key() {
        let r = Registry::default();
        let a: &'static u64 = r.pinned("a", || 1);
        let a2: &'static u64 = r.pinned("a", || 2);
        assert!(std::ptr::eq(a, a2));
        r.pinned::<u64>("c", || 3);
        r.pinned::<u64>("b", || 4);
        let all: Vec<u64> = r.all_pinned::<u64>().into_iter().copied().collect();
        assert_eq!(all, [1, 3, 4], "in the order made");
    }
}
