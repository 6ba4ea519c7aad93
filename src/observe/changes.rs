//! What a reload changed, by name: routes, upstreams, global plugins and consumers added,
//! removed or changed, and which settings sections changed. Computed off the request path
//! from the YAML text of the old and new file (before `${ENV}` substitution, so nothing here
//! ever holds a substituted secret; only names are reported).

use serde::Serialize;
use serde_yaml::Value;
use std::collections::hash_map::DefaultHasher;
use std::collections::BTreeMap;
use std::fmt;
use std::hash::{Hash, Hasher};

/// Named sections: (YAML key, the key naming an entry).
const LISTS: &[(&str, &str)] = &[
    ("routes", "name"),
    ("upstreams", "name"),
    ("plugins", "name"),
    ("consumers", "username"),
];
/// Sections compared as a whole.
const SETTINGS: &[&str] = &["server", "admin", "tiers"];

/// Hashes of each named entry and each settings section of one config text.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Fingerprint {
    lists: BTreeMap<&'static str, BTreeMap<String, u64>>,
    settings: BTreeMap<&'static str, u64>,
}

fn hash_value(v: &Value) -> u64 {
    let mut h = DefaultHasher::new();
    serde_yaml::to_string(v).unwrap_or_default().hash(&mut h);
    h.finish()
}

/// The fingerprint of a config text (an unparsable text gives an empty one).
pub fn fingerprint(text: &str) -> Fingerprint {
    let mut fp = Fingerprint::default();
    let Ok(mut doc) = serde_yaml::from_str::<Value>(text) else {
        return fp;
    };
    let _ = doc.apply_merge();
    for (section, key) in LISTS {
        let mut entries = BTreeMap::new();
        if let Some(items) = doc.get(*section).and_then(Value::as_sequence) {
            for (i, item) in items.iter().enumerate() {
                let name = item
                    .get(*key)
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .unwrap_or_else(|| format!("#{i}"));
                entries.insert(name, hash_value(item));
            }
        }
        fp.lists.insert(section, entries);
    }
    for section in SETTINGS {
        if let Some(v) = doc.get(*section) {
            fp.settings.insert(section, hash_value(v));
        }
    }
    fp
}

/// Names added, removed and changed in one section.
#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
pub struct Diff {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
}

impl Diff {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

/// What a reload changed.
#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
pub struct Changes {
    pub routes: Diff,
    pub upstreams: Diff,
    pub plugins: Diff,
    pub consumers: Diff,
    /// Settings sections (`server`, `admin`, `tiers`) that differ.
    pub settings: Vec<String>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
            && self.upstreams.is_empty()
            && self.plugins.is_empty()
            && self.consumers.is_empty()
            && self.settings.is_empty()
    }
}

fn diff_map(old: Option<&BTreeMap<String, u64>>, new: Option<&BTreeMap<String, u64>>) -> Diff {
    let empty = BTreeMap::new();
    let (old, new) = (old.unwrap_or(&empty), new.unwrap_or(&empty));
    let mut d = Diff::default();
    for (name, h) in new {
        match old.get(name) {
            None => d.added.push(name.clone()),
            Some(o) if o != h => d.changed.push(name.clone()),
            Some(_) => {}
        }
    }
    d.removed = old
        .keys()
        .filter(|n| !new.contains_key(*n))
        .cloned()
        .collect();
    d
}

/// Compares two fingerprints.
pub fn diff(old: &Fingerprint, new: &Fingerprint) -> Changes {
    let section = |s: &str| diff_map(old.lists.get(s), new.lists.get(s));
    Changes {
        routes: section("routes"),
        upstreams: section("upstreams"),
        plugins: section("plugins"),
        consumers: section("consumers"),
        settings: SETTINGS
            .iter()
            .filter(|s| old.settings.get(*s) != new.settings.get(*s))
            .map(|s| s.to_string())
            .collect(),
    }
}

impl fmt::Display for Changes {
    /// `routes +[new] -[old] ~[edited]; upstreams ~[u]; settings [server]`, or `no changes`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("no changes");
        }
        let mut parts = Vec::new();
        for (label, d) in [
            ("routes", &self.routes),
            ("upstreams", &self.upstreams),
            ("plugins", &self.plugins),
            ("consumers", &self.consumers),
        ] {
            if d.is_empty() {
                continue;
            }
            let mut s = label.to_string();
            for (sign, names) in [("+", &d.added), ("-", &d.removed), ("~", &d.changed)] {
                if !names.is_empty() {
                    s.push_str(&format!(" {sign}[{}]", names.join(", ")));
                }
            }
            parts.push(s);
        }
        if !self.settings.is_empty() {
            parts.push(format!("settings [{}]", self.settings.join(", ")));
        }
        f.write_str(&parts.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_added_removed_changed() {
        let a = fingerprint(
            "server: {threads: 1}\nupstreams:\n  - {name: u, targets: [{addr: \"1.1.1.1:1\"}]}\n  - {name: v, targets: [{addr: \"1.1.1.1:2\"}]}\nroutes:\n  - {name: r1, paths: [/a], upstream: u}\n  - {name: r2, paths: [/b], upstream: u}\n",
        );
        let b = fingerprint(
            "server: {threads: 1}\nupstreams:\n  - {name: u, targets: [{addr: \"1.1.1.1:9\"}]}\n  - {name: v, targets: [{addr: \"1.1.1.1:2\"}]}\nroutes:\n  - {name: r1, paths: [/a], upstream: u}\n  - {name: r3, paths: [/c], upstream: v}\nadmin: {listen: \"127.0.0.1:1\"}\n",
        );
        let c = diff(&a, &b);
        assert_eq!(c.routes.added, vec!["r3"]);
        assert_eq!(c.routes.removed, vec!["r2"]);
        assert!(c.routes.changed.is_empty());
        assert_eq!(c.upstreams.changed, vec!["u"]);
        assert_eq!(c.settings, vec!["admin"]);
        assert_eq!(
            c.to_string(),
            "routes +[r3] -[r2]; upstreams ~[u]; settings [admin]"
        );
        assert!(diff(&a, &a).is_empty());
        assert_eq!(diff(&a, &a).to_string(), "no changes");
    }
}
