//! The copy of Nacos: the service lists, each service's catalog read and applied, the
//! departed and disabled instances watched, the sweep in turn (the module doc of
//! `registry::nacos` says why it is read this way).

use std::collections::{BTreeMap, BTreeSet};

use futures::StreamExt;
use reqwest::StatusCode;
use tokio::time::Instant;
use tracing::{info, warn};

use super::client::{self, INSTANCE_DETAIL, INSTANCE_LIST, SERVICE_LIST};
use super::model;
use super::{Book, Known, MEMORY, NacosRegistry, READ_CONCURRENCY, ServiceRef, placement_of};
use crate::domain::{Instance, InstanceKey, Status};
use crate::registry::RegistryError;
use crate::registry::cache::Change;
use crate::sync::lock;

impl NacosRegistry {
    /// Every service of the configured groups, page by page.
    pub(super) async fn list_services(&self) -> Result<BTreeSet<ServiceRef>, RegistryError> {
        let mut found = BTreeSet::new();
        for group in &self.settings().groups {
            let mut page_no = 1usize;
            loop {
                let params = [
                    ("namespaceId", self.settings().namespace.clone()),
                    ("groupName", group.clone()),
                    ("groupNameParam", group.clone()),
                    ("pageNo", page_no.to_string()),
                    ("pageSize", client::SERVICE_PAGE.to_string()),
                ];
                let answer = self.client.send(&SERVICE_LIST, &params).await?;
                if answer.status != StatusCode::OK {
                    return Err(refusal("list the services of", group, &answer));
                }
                let page = model::services(&answer.body, group).map_err(|why| {
                    RegistryError::malformed(format!(
                        "{} answered the service list of {group} with {why}",
                        answer.server
                    ))
                })?;
                let listed = page.names.len();
                found.extend(page.names.into_iter().map(|service| ServiceRef {
                    group: group.clone(),
                    service,
                }));
                if listed < client::SERVICE_PAGE || page_no * client::SERVICE_PAGE >= page.count {
                    break;
                }
                page_no += 1;
            }
        }
        Ok(found)
    }

    /// Every instance of one service, disabled ones included, read at the source. The
    /// catalog is the list; an instance the copy has that the catalog leaves out is asked
    /// for by itself before it counts as gone (rnacos's catalog leaves disabled instances
    /// out, as official Nacos's `instance/list` does).
    pub(super) async fn read_service(
        &self,
        service: &ServiceRef,
    ) -> Result<Vec<Instance>, RegistryError> {
        let mut instances = self.read_catalog(service).await?;
        let listed: BTreeSet<InstanceKey> = instances.iter().map(Instance::key).collect();
        let unlisted: Vec<Instance> = self
            .known_instances(service)
            .into_iter()
            .filter(|known| !listed.contains(&known.key()))
            .collect();
        for known in unlisted {
            if let Some(found) = self.read_detail(service, known).await? {
                instances.push(found);
            }
        }
        Ok(instances)
    }

    /// One instance by itself: `None` when the server says it has no such instance. An
    /// answer without `enabled` (official 2.x) keeps the status known before.
    pub(super) async fn read_detail(
        &self,
        service: &ServiceRef,
        known: Instance,
    ) -> Result<Option<Instance>, RegistryError> {
        let placement = placement_of(&known.instance_id)?;
        let mut params = self
            .client
            .instance_params(&placement, known.ip, known.port);
        params.retain(|(name, _)| *name != "ephemeral");
        let answer = self.client.send(&INSTANCE_DETAIL, &params).await?;
        if answer.status != StatusCode::OK {
            if model::detail_says_absent(&answer.body) {
                return Ok(None);
            }
            return Err(refusal("read", &known.instance_id, &answer));
        }
        let (mut found, said_enabled) =
            model::detail(&answer.body, &service.group, &service.service).map_err(|why| {
                RegistryError::malformed(format!(
                    "{} answered the detail of {} with {why}",
                    answer.server, known.instance_id
                ))
            })?;
        if found.key() != known.key() {
            return Ok(None);
        }
        if !said_enabled && known.status == Status::OutOfService {
            found.status = Status::OutOfService;
        }
        Ok(Some(found))
    }

    /// What the catalog lists of one service.
    pub(super) async fn read_catalog(
        &self,
        service: &ServiceRef,
    ) -> Result<Vec<Instance>, RegistryError> {
        let mut instances = Vec::new();
        let base = self.client.service_params(&service.group, &service.service);
        if self.client.uses_v3() {
            let answer = self.client.send(&INSTANCE_LIST, &base).await?;
            return self
                .page(service, &answer, &mut instances)
                .map(|_| instances);
        }
        for cluster in &self.settings().clusters {
            let mut page_no = 1usize;
            loop {
                let mut params = base.clone();
                params.extend([
                    ("clusterName", cluster.clone()),
                    ("pageNo", page_no.to_string()),
                    ("pageSize", client::CATALOG_PAGE.to_string()),
                ]);
                let answer = self.client.send(&INSTANCE_LIST, &params).await?;
                // The first read may have found a 3.x server: read it the v3 way.
                if self.client.uses_v3() {
                    instances.clear();
                    let answer = self.client.send(&INSTANCE_LIST, &base).await?;
                    return self
                        .page(service, &answer, &mut instances)
                        .map(|_| instances);
                }
                let count = self.page(service, &answer, &mut instances)?;
                if page_no * client::CATALOG_PAGE >= count {
                    break;
                }
                page_no += 1;
            }
        }
        Ok(instances)
    }

    /// One answer of instances into `into`; the count the server gave.
    pub(super) fn page(
        &self,
        service: &ServiceRef,
        answer: &client::Answer,
        into: &mut Vec<Instance>,
    ) -> Result<usize, RegistryError> {
        let name = format!("{}@@{}", service.group, service.service);
        if answer.status != StatusCode::OK {
            // A service removed since it was listed, or a cluster it has no instance in.
            if model::says_not_found(&answer.body) {
                return Ok(0);
            }
            return Err(refusal("read the instances of", &name, answer));
        }
        let page =
            model::instances(&answer.body, &service.group, &service.service).map_err(|why| {
                RegistryError::malformed(format!(
                    "{} answered the instances of {name} with {why}",
                    answer.server
                ))
            })?;
        for why in &page.skipped {
            warn!(service = %name, server = %answer.server, "skipping an instance that cannot be read: {why}");
        }
        into.extend(page.instances);
        Ok(page.count)
    }

    /// Brings the copy of `service` in line with what was read; a disabled instance that
    /// left makes the service watched for [`MEMORY`].
    pub(super) fn apply(&self, service: &ServiceRef, instances: Vec<Instance>) {
        let mut book = lock(&self.book);
        let known = book.services.entry(service.clone()).or_default();
        let now: BTreeSet<InstanceKey> = instances.iter().map(Instance::key).collect();
        let gone: Vec<InstanceKey> = known.keys.difference(&now).cloned().collect();
        let lost_disabled = gone.iter().any(|key| {
            self.cache
                .get(key)
                .is_some_and(|i| i.status == Status::OutOfService)
        });
        known.disabled = instances.iter().any(|i| i.status == Status::OutOfService);
        known.keys = now;
        if lost_disabled {
            book.remembered
                .insert(service.clone(), Instant::now() + MEMORY);
        }
        drop(book);
        let mut changes: Vec<Change> = gone.into_iter().map(Change::Remove).collect();
        changes.extend(instances.into_iter().map(Change::Upsert));
        self.cache.apply(changes);
    }

    /// Drops the services no longer listed.
    pub(super) fn forget_services(&self, listed: &BTreeSet<ServiceRef>) {
        let mut book = lock(&self.book);
        let gone: Vec<ServiceRef> = book
            .services
            .keys()
            .filter(|s| !listed.contains(s))
            .cloned()
            .collect();
        let mut changes = Vec::new();
        for service in gone {
            if let Some(known) = book.services.remove(&service) {
                changes.extend(known.keys.into_iter().map(Change::Remove));
            }
        }
        drop(book);
        if !changes.is_empty() {
            self.cache.apply(changes);
        }
    }

    /// Reads these services at once, applying each; a failure is logged.
    pub(super) async fn read_and_apply(&self, services: Vec<ServiceRef>) {
        let reads = futures::stream::iter(services.into_iter().map(|service| async move {
            let read = self.read_service(&service).await;
            (service, read)
        }))
        .buffer_unordered(READ_CONCURRENCY)
        .collect::<Vec<_>>()
        .await;
        for (service, read) in reads {
            match read {
                Ok(instances) => self.apply(&service, instances),
                Err(e) => {
                    self.metrics.registry_error("nacos", "read_service");
                    warn!(group = %service.group, service = %service.service, "cannot read the service: {e}");
                }
            }
        }
    }

    /// What the copy has of one service now.
    fn known_instances(&self, service: &ServiceRef) -> Vec<Instance> {
        let book = lock(&self.book);
        book.services
            .get(service)
            .map(|known| {
                known
                    .keys
                    .iter()
                    .filter_map(|key| self.cache.get(key))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Lists the services and reads every one of them: the first load, and a caller's miss.
    pub(super) async fn read_everything(&self) -> Result<(), RegistryError> {
        let _one = self.full_read.lock().await;
        let listed = self.list_services().await?;
        let mut instances = Vec::new();
        let reads = futures::stream::iter(listed.iter().cloned().map(|service| async move {
            let read = self.read_service(&service).await;
            (service, read)
        }))
        .buffer_unordered(READ_CONCURRENCY)
        .collect::<Vec<_>>()
        .await;
        let mut book = Book {
            remembered: std::mem::take(&mut lock(&self.book).remembered),
            last_full_read: Some(Instant::now()),
            ..Book::default()
        };
        let mut failures = Vec::new();
        for (service, read) in reads {
            let read = match read {
                Ok(read) => read,
                Err(e) => {
                    // One service that cannot be read keeps what the copy had of it (nothing,
                    // on the first load) and is read again with the next pass; it does not
                    // keep every other service out of the copy.
                    warn!(group = %service.group, service = %service.service, "cannot read the service: {e}");
                    self.metrics.registry_error("nacos", "read_service");
                    lock(&self.dirty).insert(service.clone());
                    failures.push(e);
                    self.known_instances(&service)
                }
            };
            let known = book.services.entry(service.clone()).or_default();
            known.keys = read.iter().map(Instance::key).collect();
            known.disabled = read.iter().any(|i| i.status == Status::OutOfService);
            instances.extend(read);
        }
        if !listed.is_empty() && failures.len() == listed.len() {
            // Nothing could be read: the copy is not made of nothing.
            return Err(failures.swap_remove(0));
        }
        let count = instances.len();
        *lock(&self.book) = book;
        self.cache.replace_all(instances);
        info!(
            services = listed.len(),
            instances = count,
            api = if self.client.uses_v3() { "v3" } else { "v1" },
            "Nacos registry read"
        );
        Ok(())
    }

    /// One refresh: the service list, the watched services, a slice of the sweep.
    pub(super) async fn pass(&self) -> Result<(), RegistryError> {
        if !self.cache.is_loaded() {
            return self.read_everything().await;
        }
        let listed = self.list_services().await.inspect_err(|_| {
            self.metrics.registry_error("nacos", "list_services");
        })?;
        self.forget_services(&listed);
        let budget = usize::try_from(
            (u128::from(self.settings().sweep_per_second) * self.settings().refresh.as_millis())
                .div_ceil(1000),
        )
        .unwrap_or(usize::MAX)
        .max(1);
        let services: Vec<ServiceRef> = {
            let mut book = lock(&self.book);
            let now = Instant::now();
            book.remembered.retain(|_, until| *until > now);
            let mut read: BTreeSet<ServiceRef> = listed
                .iter()
                .filter(|s| !book.services.contains_key(*s))
                .cloned()
                .collect();
            read.extend(
                book.services
                    .iter()
                    .filter(|(_, known)| known.disabled)
                    .map(|(s, _)| s.clone()),
            );
            read.extend(book.remembered.keys().cloned());
            read.extend(std::mem::take(&mut *lock(&self.dirty)));
            let turn = next_in_turn(&book.services, book.cursor.as_ref(), budget);
            if let Some(last) = turn.last() {
                book.cursor = Some(last.clone());
            }
            read.extend(turn);
            read.into_iter().collect()
        };
        // A service that cannot be read keeps its copy, said in the log; the next pass reads
        // it again. Only a listing that fails makes the copy untrusted.
        self.read_and_apply(services).await;
        Ok(())
    }

    /// The services that pushes should follow.
    pub(super) fn known_services(&self) -> Vec<ServiceRef> {
        lock(&self.book).services.keys().cloned().collect()
    }

    pub(super) fn set_trouble(&self, trouble: Option<String>) {
        *lock(&self.trouble) = trouble;
    }
}

/// The next `budget` services after `cursor`, going round.
fn next_in_turn(
    services: &BTreeMap<ServiceRef, Known>,
    cursor: Option<&ServiceRef>,
    budget: usize,
) -> Vec<ServiceRef> {
    let start = cursor.map_or(0, |cursor| services.range(..=cursor).count());
    services
        .keys()
        .cycle()
        .skip(start)
        .take(budget.min(services.len()))
        .cloned()
        .collect()
}

/// An answer that refused a read, said with what it was reading.
fn refusal(what: &str, name: &str, answer: &client::Answer) -> RegistryError {
    let body = model::excerpt(&answer.body);
    let message = format!(
        "{} refused to {what} {name} ({}): {body}",
        answer.server, answer.status
    );
    if answer.status == StatusCode::FORBIDDEN || answer.status == StatusCode::UNAUTHORIZED {
        RegistryError::Refused(message)
    } else {
        RegistryError::malformed(message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sweep_goes_round_every_service_in_turn() {
        let services: BTreeMap<ServiceRef, Known> = ["a", "b", "c"]
            .into_iter()
            .map(|name| {
                let service = ServiceRef {
                    group: "G".into(),
                    service: name.into(),
                };
                (service, Known::default())
            })
            .collect();
        let names = |turn: Vec<ServiceRef>| -> Vec<String> {
            turn.into_iter().map(|s| s.service).collect()
        };
        let first = next_in_turn(&services, None, 2);
        assert_eq!(names(first.clone()), ["a", "b"]);
        let second = next_in_turn(&services, first.last(), 2);
        assert_eq!(names(second.clone()), ["c", "a"]);
        assert_eq!(
            names(next_in_turn(&services, second.last(), 10)),
            ["b", "c", "a"]
        );
        assert!(next_in_turn(&BTreeMap::new(), None, 5).is_empty());
    }
}
