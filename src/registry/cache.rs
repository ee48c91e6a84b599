//! The local registry cache: every instance by identity, indexed by IP and by app.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, RwLock};

use smallvec::SmallVec;

use tokio::sync::broadcast;

use super::{Observed, RegistryError};
use crate::domain::{AppName, Instance, InstanceKey, Status};

/// An instance without its key (the map's key holds that): a registry of tens of thousands
/// of instances is most of what synchspeed keeps in memory.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Record {
    ip: IpAddr,
    port: u16,
    status: Status,
    registered_at: Option<i64>,
    metadata: BTreeMap<String, String>,
}

impl Record {
    fn of(instance: Instance) -> (InstanceKey, Record) {
        let key = InstanceKey {
            app: instance.app,
            instance_id: instance.instance_id,
        };
        let record = Record {
            ip: instance.ip,
            port: instance.port,
            status: instance.status,
            registered_at: instance.registered_at,
            metadata: instance.metadata,
        };
        (key, record)
    }

    fn instance(&self, key: &InstanceKey) -> Instance {
        Instance {
            app: key.app.clone(),
            instance_id: key.instance_id.clone(),
            ip: self.ip,
            port: self.port,
            status: self.status,
            registered_at: self.registered_at,
            metadata: self.metadata.clone(),
        }
    }
}

/// One change to the copy.
#[derive(Debug, Clone)]
pub enum Change {
    Upsert(Instance),
    Remove(InstanceKey),
}

#[derive(Debug, Default)]
struct Indexed {
    by_key: HashMap<InstanceKey, Record>,
    /// Nearly always one instance per IP, kept inline: no allocation for it.
    by_ip: HashMap<IpAddr, SmallVec<[InstanceKey; 1]>>,
    /// The ids of each app; the map's key is the one copy of the app's name every instance
    /// of it shares.
    by_app: HashMap<AppName, BTreeSet<Arc<str>>>,
    /// Per app, a number that changes whenever one of its instances does, never to a value
    /// it had before (an app without instances reads 0, which no change gets): what was
    /// derived from an app's instances, such as a gateway group's nodes, holds until it moves.
    versions: HashMap<AppName, u64>,
    last_version: u64,
    loaded: bool,
}

impl Indexed {
    /// Whether anything changed.
    fn insert(&mut self, instance: Instance) -> bool {
        let (mut key, record) = Record::of(instance);
        if self.by_key.get(&key) == Some(&record) {
            // Unchanged: a full refresh repeats most of the registry.
            return false;
        }
        self.remove(&key);
        // One name per app, shared by all its instances and every index: the one parsed with
        // this instance is dropped here rather than kept ten thousand times.
        if let Some((name, _)) = self.by_app.get_key_value(&key.app) {
            key.app = name.clone();
        }
        self.by_app
            .entry(key.app.clone())
            .or_default()
            .insert(key.instance_id.clone());
        // `remove` above took any old entry out, so the key is not there twice.
        self.by_ip.entry(record.ip).or_default().push(key.clone());
        self.changed(&key.app);
        self.by_key.insert(key, record);
        true
    }

    fn changed(&mut self, app: &AppName) {
        self.last_version += 1;
        match self.versions.get_mut(app) {
            Some(version) => *version = self.last_version,
            None => {
                self.versions.insert(app.clone(), self.last_version);
            }
        }
    }

    fn remove(&mut self, key: &InstanceKey) -> Option<Record> {
        let old = self.by_key.remove(key)?;
        if let Some(keys) = self.by_ip.get_mut(&old.ip) {
            keys.retain(|k| k != key);
            if keys.is_empty() {
                self.by_ip.remove(&old.ip);
            }
        }
        if let Some(ids) = self.by_app.get_mut(&key.app) {
            ids.remove(&key.instance_id);
            if ids.is_empty() {
                self.by_app.remove(&key.app);
                self.versions.remove(&key.app);
                return Some(old);
            }
        }
        self.changed(&key.app);
        Some(old)
    }

    fn get(&self, key: &InstanceKey) -> Option<Instance> {
        self.by_key.get(key).map(|record| record.instance(key))
    }
}

/// Shared by the backends that keep a full copy of the registry (Eureka, ZooKeeper, file).
/// Reads take a read lock and clone the few matching instances; writers replace or patch
/// under the write lock, so a reader never sees a half-applied refresh.
#[derive(Debug)]
pub struct InstanceCache {
    inner: RwLock<Indexed>,
    /// What a refresh, a scan or a watch event changed, for the re-assertion path: every
    /// backend with a copy reports the same way, whether a watch or a poll fed it.
    observed: broadcast::Sender<Observed>,
}

impl Default for InstanceCache {
    fn default() -> Self {
        Self {
            inner: RwLock::default(),
            // A burst beyond this lags the reader, which then checks every hold instead.
            observed: broadcast::channel(1024).0,
        }
    }
}

impl InstanceCache {
    /// The changes from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Observed> {
        self.observed.subscribe()
    }

    /// Passes on what the backend itself saw (a peer answering again).
    pub fn announce(&self, observed: Observed) {
        let _ = self.observed.send(observed);
    }

    /// Reports a change. The first load reports everything: a reader that cannot keep up
    /// lags, and then checks every hold, which is what a first load calls for anyway.
    fn report(&self, observed: Observed) {
        let _ = self.observed.send(observed);
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Indexed> {
        crate::sync::read(&self.inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Indexed> {
        crate::sync::write(&self.inner)
    }

    pub fn is_loaded(&self) -> bool {
        self.read().loaded
    }

    /// Replaces everything (a full fetch). The copy is brought in line in place, not rebuilt
    /// beside the old one: two copies of a large registry at once would be the process's
    /// peak, and what a peak leaves behind the allocator keeps.
    pub fn replace_all(&self, instances: impl IntoIterator<Item = Instance>) {
        let mut instances: Vec<Instance> = instances.into_iter().collect();
        instances.sort_unstable_by(|a, b| (&a.app, &a.instance_id).cmp(&(&b.app, &b.instance_id)));
        let mut indexed = self.write();
        let gone: Vec<InstanceKey> = indexed
            .by_key
            .keys()
            .filter(|key| {
                instances
                    .binary_search_by(|i| {
                        (&i.app, &i.instance_id).cmp(&(&key.app, &key.instance_id))
                    })
                    .is_err()
            })
            .cloned()
            .collect();
        for key in gone {
            if let Some(old) = indexed.remove(&key) {
                self.report(Observed::Left { key, ip: old.ip });
            }
        }
        let more = instances.len().saturating_sub(indexed.by_key.len());
        indexed.by_key.reserve(more);
        indexed.by_ip.reserve(more);
        for instance in instances {
            let seen = instance.clone();
            if indexed.insert(instance) {
                self.report(Observed::Seen(seen));
            }
        }
        indexed.loaded = true;
    }

    /// Applies a batch of changes atomically and in order (a delta: the same instance may
    /// change more than once in it, and the last change is the one that stands).
    pub fn apply(&self, changes: Vec<Change>) {
        let mut indexed = self.write();
        for change in changes {
            match change {
                Change::Upsert(instance) => {
                    let seen = instance.clone();
                    if indexed.insert(instance) {
                        self.report(Observed::Seen(seen));
                    }
                }
                Change::Remove(key) => {
                    if let Some(old) = indexed.remove(&key) {
                        self.report(Observed::Left { key, ip: old.ip });
                    }
                }
            }
        }
    }

    /// Records a status synchspeed just wrote, so reads reflect it before the next refresh.
    pub fn set_status(&self, key: &InstanceKey, status: Status) {
        let mut indexed = self.write();
        if let Some(record) = indexed.by_key.get_mut(key)
            && record.status != status
        {
            record.status = status;
            indexed.changed(&key.app);
        }
    }

    /// Changes whenever an instance of `app` does: added, removed, or changed in any way.
    /// 0 while the app has no instances.
    pub fn app_version(&self, app: &AppName) -> u64 {
        self.read().versions.get(app).copied().unwrap_or(0)
    }

    /// [`Self::on_ip`], or `NotReady(why)` while the copy was never loaded.
    pub fn loaded_on_ip(&self, ip: IpAddr, why: &str) -> Result<Vec<Instance>, RegistryError> {
        if !self.is_loaded() {
            return Err(RegistryError::NotReady(why.into()));
        }
        Ok(self.on_ip(ip))
    }

    /// [`Self::of_app`], or `NotReady(why)` while the copy was never loaded.
    pub fn loaded_of_app(&self, app: &AppName, why: &str) -> Result<Vec<Instance>, RegistryError> {
        if !self.is_loaded() {
            return Err(RegistryError::NotReady(why.into()));
        }
        Ok(self.of_app(app))
    }

    pub fn on_ip(&self, ip: IpAddr) -> Vec<Instance> {
        let indexed = self.read();
        indexed
            .by_ip
            .get(&ip)
            .map(|keys| keys.iter().filter_map(|key| indexed.get(key)).collect())
            .unwrap_or_default()
    }

    pub fn of_app(&self, app: &AppName) -> Vec<Instance> {
        let indexed = self.read();
        let Some((name, ids)) = indexed.by_app.get_key_value(app) else {
            return Vec::new();
        };
        ids.iter()
            .filter_map(|id| {
                indexed.get(&InstanceKey {
                    app: name.clone(),
                    instance_id: id.clone(),
                })
            })
            .collect()
    }

    pub fn get(&self, key: &InstanceKey) -> Option<Instance> {
        self.read().get(key)
    }

    /// How many instances have each status (the registry's hash code is built from these).
    pub fn status_counts(&self) -> HashMap<Status, usize> {
        let mut counts = HashMap::new();
        for record in self.read().by_key.values() {
            *counts.entry(record.status).or_default() += 1;
        }
        counts
    }

    pub fn len(&self) -> usize {
        self.read().by_key.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance(app: &str, id: &str, ip: &str, port: u16) -> Instance {
        Instance {
            app: AppName::parse(app).unwrap(),
            instance_id: id.into(),
            ip: ip.parse().unwrap(),
            port,
            status: Status::Up,
            registered_at: None,
            metadata: Default::default(),
        }
    }

    #[test]
    fn an_app_version_moves_with_its_own_instances_only() {
        let cache = InstanceCache::default();
        let (a, b) = (AppName::parse("A").unwrap(), AppName::parse("B").unwrap());
        cache.replace_all([
            instance("A", "a1", "10.0.0.1", 80),
            instance("B", "b1", "10.0.0.2", 80),
        ]);
        let mut seen = vec![cache.app_version(&a)];
        let mut moved = |cache: &InstanceCache| {
            let now = cache.app_version(&a);
            let moved = !seen.contains(&now);
            seen.push(now);
            moved
        };

        // What the registry repeats unchanged, and changes to other apps, leave it.
        cache.replace_all([
            instance("A", "a1", "10.0.0.1", 80),
            instance("B", "b1", "10.0.0.2", 80),
        ]);
        let b_before = cache.app_version(&b);
        cache.apply(vec![Change::Upsert(instance("B", "b2", "10.0.0.3", 80))]);
        assert_ne!(cache.app_version(&b), b_before);
        cache.set_status(&instance("A", "a1", "10.0.0.1", 80).key(), Status::Up);
        assert!(!moved(&cache));

        // Every kind of change to its instances moves it, never back to an earlier value.
        cache.set_status(
            &instance("A", "a1", "10.0.0.1", 80).key(),
            Status::OutOfService,
        );
        assert!(moved(&cache), "a status synchspeed wrote");
        cache.apply(vec![Change::Upsert(instance("A", "a1", "10.0.0.9", 80))]);
        assert!(moved(&cache), "a move");
        cache.apply(vec![Change::Upsert(instance("A", "a2", "10.0.0.4", 80))]);
        assert!(moved(&cache), "an instance added");
        cache.apply(vec![Change::Remove(
            instance("A", "a2", "10.0.0.4", 80).key(),
        )]);
        assert!(moved(&cache), "an instance removed");
        cache.replace_all([instance("B", "b1", "10.0.0.2", 80)]);
        assert!(moved(&cache), "the app gone in a full fetch");
        assert_eq!(
            cache.app_version(&a),
            0,
            "nothing is kept for an app that is gone"
        );
        cache.replace_all([instance("A", "a1", "10.0.0.9", 80)]);
        assert!(moved(&cache), "the app back as it was");
    }

    #[test]
    fn indexes_follow_moves_and_removals() {
        let cache = InstanceCache::default();
        cache.replace_all([
            instance("A", "a1", "10.0.0.1", 80),
            instance("A", "a2", "10.0.0.1", 81),
            instance("B", "b1", "10.0.0.2", 80),
        ]);
        assert_eq!(cache.on_ip("10.0.0.1".parse().unwrap()).len(), 2);

        // a2 moved to another IP: the old IP must forget it.
        cache.apply(vec![Change::Upsert(instance("A", "a2", "10.0.0.3", 81))]);
        assert_eq!(cache.on_ip("10.0.0.1".parse().unwrap()).len(), 1);
        assert_eq!(cache.on_ip("10.0.0.3".parse().unwrap()).len(), 1);

        let b1 = instance("B", "b1", "10.0.0.2", 80).key();
        cache.apply(vec![Change::Remove(b1)]);
        assert!(cache.on_ip("10.0.0.2".parse().unwrap()).is_empty());
        assert!(cache.of_app(&AppName::parse("B").unwrap()).is_empty());
        assert_eq!(cache.of_app(&AppName::parse("a").unwrap()).len(), 2);
    }

    #[test]
    fn a_full_replace_drops_the_departed_and_updates_the_changed_in_place() {
        let cache = InstanceCache::default();
        cache.replace_all([
            instance("A", "a1", "10.0.0.1", 80),
            instance("A", "a2", "10.0.0.2", 80),
            instance("B", "b1", "10.0.0.3", 80),
        ]);
        let mut moved = instance("A", "a2", "10.0.0.4", 80);
        moved.status = Status::OutOfService;
        cache.replace_all([instance("A", "a1", "10.0.0.1", 80), moved.clone()]);

        assert_eq!(cache.len(), 2);
        assert!(cache.on_ip("10.0.0.2".parse().unwrap()).is_empty());
        assert!(cache.on_ip("10.0.0.3".parse().unwrap()).is_empty());
        assert!(cache.of_app(&AppName::parse("B").unwrap()).is_empty());
        assert_eq!(cache.on_ip("10.0.0.4".parse().unwrap()), vec![moved]);
        assert_eq!(cache.of_app(&AppName::parse("A").unwrap()).len(), 2);
        assert_eq!(cache.status_counts()[&Status::OutOfService], 1);
    }

    #[test]
    fn changes_apply_in_order_and_the_last_one_stands() {
        let cache = InstanceCache::default();
        let up = instance("A", "a1", "10.0.0.1", 80);
        let mut out = up.clone();
        out.status = Status::OutOfService;
        cache.replace_all([up.clone()]);
        cache.apply(vec![
            Change::Upsert(out.clone()),
            Change::Upsert(up.clone()),
            Change::Upsert(out.clone()),
        ]);
        assert_eq!(cache.get(&up.key()), Some(out.clone()));
        cache.apply(vec![Change::Upsert(up.clone()), Change::Remove(up.key())]);
        assert_eq!(cache.get(&up.key()), None);
        cache.apply(vec![Change::Remove(up.key()), Change::Upsert(out.clone())]);
        assert_eq!(cache.get(&up.key()), Some(out));
    }
}
