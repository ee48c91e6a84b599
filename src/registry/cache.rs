//! The local registry cache: every instance by identity, indexed by IP and by app.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::RwLock;

use crate::domain::{AppName, Instance, InstanceKey, Status};

#[derive(Debug, Default)]
struct Indexed {
    by_key: HashMap<InstanceKey, Instance>,
    /// Nearly always one instance per IP: a `Vec` of one costs one key, where a one-element
    /// `BTreeSet` allocates a whole node (eleven slots); with 10,000 instances that was most of
    /// the cache's memory.
    by_ip: HashMap<IpAddr, Vec<InstanceKey>>,
    by_app: HashMap<AppName, BTreeSet<InstanceKey>>,
    loaded: bool,
}

impl Indexed {
    fn insert(&mut self, instance: Instance) {
        let key = instance.key();
        self.remove(&key);
        // `remove` above took any old entry out, so the key is not there twice.
        self.by_ip.entry(instance.ip).or_default().push(key.clone());
        self.by_app
            .entry(instance.app.clone())
            .or_default()
            .insert(key.clone());
        self.by_key.insert(key, instance);
    }

    fn remove(&mut self, key: &InstanceKey) -> Option<Instance> {
        let old = self.by_key.remove(key)?;
        if let Some(keys) = self.by_ip.get_mut(&old.ip) {
            keys.retain(|k| k != key);
            if keys.is_empty() {
                self.by_ip.remove(&old.ip);
            }
        }
        if let Some(keys) = self.by_app.get_mut(&old.app) {
            keys.remove(key);
            if keys.is_empty() {
                self.by_app.remove(&old.app);
            }
        }
        Some(old)
    }

    fn collect<'a>(&self, keys: impl IntoIterator<Item = &'a InstanceKey>) -> Vec<Instance> {
        keys.into_iter()
            .filter_map(|key| self.by_key.get(key).cloned())
            .collect()
    }
}

/// Shared by the backends that keep a full copy of the registry (Eureka, file). Reads take a
/// read lock and clone the few matching instances; writers replace or patch under the write
/// lock, so a reader never sees a half-applied refresh.
#[derive(Debug, Default)]
pub struct InstanceCache {
    inner: RwLock<Indexed>,
}

impl InstanceCache {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Indexed> {
        // A panic while holding the lock cannot leave the maps inconsistent (every mutation
        // is a sequence of complete map operations), so a poisoned lock is still usable.
        self.inner
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Indexed> {
        self.inner
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn is_loaded(&self) -> bool {
        self.read().loaded
    }

    /// Replaces everything (a full fetch).
    pub fn replace_all(&self, instances: impl IntoIterator<Item = Instance>) {
        let mut fresh = Indexed::default();
        for instance in instances {
            fresh.insert(instance);
        }
        fresh.loaded = true;
        *self.write() = fresh;
    }

    /// Applies a batch of changes atomically (a delta).
    pub fn apply(&self, upserts: Vec<Instance>, removals: Vec<InstanceKey>) {
        let mut indexed = self.write();
        for key in &removals {
            indexed.remove(key);
        }
        for instance in upserts {
            indexed.insert(instance);
        }
    }

    /// Records a status synchspeed just wrote, so reads reflect it before the next refresh.
    pub fn set_status(&self, key: &InstanceKey, status: Status) {
        if let Some(instance) = self.write().by_key.get_mut(key) {
            instance.status = status;
        }
    }

    pub fn on_ip(&self, ip: IpAddr) -> Vec<Instance> {
        let indexed = self.read();
        indexed
            .by_ip
            .get(&ip)
            .map(|keys| indexed.collect(keys))
            .unwrap_or_default()
    }

    pub fn of_app(&self, app: &AppName) -> Vec<Instance> {
        let indexed = self.read();
        indexed
            .by_app
            .get(app)
            .map(|keys| indexed.collect(keys))
            .unwrap_or_default()
    }

    pub fn get(&self, key: &InstanceKey) -> Option<Instance> {
        self.read().by_key.get(key).cloned()
    }

    pub fn len(&self) -> usize {
        self.read().by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
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
    fn indexes_follow_moves_and_removals() {
        let cache = InstanceCache::default();
        cache.replace_all([
            instance("A", "a1", "10.0.0.1", 80),
            instance("A", "a2", "10.0.0.1", 81),
            instance("B", "b1", "10.0.0.2", 80),
        ]);
        assert_eq!(cache.on_ip("10.0.0.1".parse().unwrap()).len(), 2);

        // a2 moved to another IP: the old IP must forget it.
        cache.apply(vec![instance("A", "a2", "10.0.0.3", 81)], vec![]);
        assert_eq!(cache.on_ip("10.0.0.1".parse().unwrap()).len(), 1);
        assert_eq!(cache.on_ip("10.0.0.3".parse().unwrap()).len(), 1);

        let b1 = instance("B", "b1", "10.0.0.2", 80).key();
        cache.apply(vec![], vec![b1]);
        assert!(cache.on_ip("10.0.0.2".parse().unwrap()).is_empty());
        assert!(cache.of_app(&AppName::parse("B").unwrap()).is_empty());
        assert_eq!(cache.of_app(&AppName::parse("a").unwrap()).len(), 2);
    }
}
