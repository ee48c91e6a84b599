//! The orchestrator in process, without TCP (the doubles are in `crate::testing`). What these pin down: the soft transaction (all or nothing,
//! put back, no node told), idempotency claims and replays, and resuming what a previous run
//! left unfinished.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{DrainError, DrainOutcome, DrainRequest};
use crate::domain::{
    Action, Caller, FailureCode, Operation, OperationState, Origin, Status, Target,
};
use crate::groups::StaticGroups;
use crate::registry::Registry;
use crate::store::Store;
use crate::testing::{
    APP, Answer, GROUP, NODES, UnreachableGroups, app, harness, harness_with, ip, orchestrator_on,
};

fn request(action: Action, at: &str) -> DrainRequest {
    DrainRequest {
        action,
        targets: vec![Target {
            ip: ip(at),
            port: None,
            app: None,
        }],
        reason: None,
        caller: Caller {
            addr: ip("127.0.0.1"),
            principal: None,
        },
        origin: Origin::Api,
        dry_run: false,
        wait: Some(Duration::from_secs(10)),
        force: false,
        idempotency_key: None,
    }
}

fn settled(outcome: DrainOutcome) -> Operation {
    match outcome {
        DrainOutcome::Settled(operation) => operation,
        other => panic!("expected a settled operation, got {other:?}"),
    }
}

#[tokio::test]
async fn one_refused_write_puts_the_others_back_and_tells_no_node() {
    let h = harness().await;
    h.registry.answer("b", Answer::Refuse);
    let error = h
        .orchestrator
        .execute(request(Action::Offline, "10.0.0.5"))
        .await
        .unwrap_err();
    let DrainError::RegistryRefused { operation, .. } = error else {
        panic!("expected a refusal, got {error:?}");
    };
    assert_eq!(operation.state, OperationState::Failed);
    assert_eq!(
        operation.error.as_ref().map(|e| e.code),
        Some(FailureCode::RegistryRefused)
    );
    assert_eq!(h.registry.status_of("a"), Status::Up, "a was put back");
    assert!(
        h.registry.writes().contains(&("a".into(), Status::Up)),
        "{:?}",
        h.registry.writes()
    );
    assert!(h.notifier.heard().is_empty(), "no gateway hears of it");
    assert!(h.orchestrator.holds().is_empty(), "nothing is held");
    let journaled = h.store.operation(&operation.id).await.unwrap().unwrap();
    assert_eq!(journaled.state, OperationState::Failed);
}

#[tokio::test]
async fn a_write_without_an_answer_is_unavailable_and_put_back_in_case_it_lands() {
    let h = harness().await;
    h.registry.answer("a", Answer::TimedOut);
    h.registry.answer("b", Answer::TimedOut);
    let error = h
        .orchestrator
        .execute(request(Action::Offline, "10.0.0.5"))
        .await
        .unwrap_err();
    let DrainError::RegistryUnavailable {
        operation: Some(operation),
        ..
    } = error
    else {
        panic!("expected the registry to be unavailable, got {error:?}");
    };
    assert_eq!(
        operation.error.as_ref().map(|e| e.code),
        Some(FailureCode::RegistryUnavailable)
    );
    // Each write is followed by its undo: UP written back to both.
    let writes = h.registry.writes();
    for id in ["a", "b"] {
        assert!(writes.contains(&(id.into(), Status::Up)), "{writes:?}");
    }
    assert!(h.notifier.heard().is_empty());
}

#[tokio::test]
async fn groups_that_cannot_be_asked_stop_it_before_the_registry() {
    let h = harness_with(Arc::new(UnreachableGroups)).await;
    let error = h
        .orchestrator
        .execute(request(Action::Offline, "10.0.0.5"))
        .await
        .unwrap_err();
    assert!(matches!(error, DrainError::Groups(_)), "{error:?}");
    assert!(
        h.registry.writes().is_empty(),
        "the registry is not touched"
    );
    assert!(h.notifier.heard().is_empty());
    let journaled = h
        .orchestrator
        .operations(&crate::store::OperationFilter {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap()
        .operations;
    assert!(journaled.is_empty(), "nothing was journaled: {journaled:?}");
}

#[tokio::test]
async fn an_offline_holds_every_instance_and_tells_every_node_once() {
    let h = harness().await;
    let operation = settled(
        h.orchestrator
            .execute(request(Action::Offline, "10.0.0.5"))
            .await
            .unwrap(),
    );
    assert_eq!(operation.state, OperationState::Succeeded);
    let held: HashSet<String> = h
        .orchestrator
        .holds()
        .into_iter()
        .map(|hold| hold.instance_id)
        .collect();
    assert_eq!(held, HashSet::from(["a".into(), "b".into()]));
    let heard: HashSet<String> = h.notifier.heard().into_iter().map(|(n, ..)| n).collect();
    assert_eq!(heard, NODES.map(String::from).into_iter().collect());
    assert_eq!(
        h.notifier.heard().len(),
        NODES.len(),
        "one notification per node"
    );
}

#[tokio::test]
async fn the_same_key_replays_the_first_operation_and_refuses_another_request() {
    let h = harness().await;
    let mut first = request(Action::Offline, "10.0.0.5");
    first.idempotency_key = Some("deploy-4711".into());
    let operation = settled(h.orchestrator.execute(first.clone()).await.unwrap());

    match h.orchestrator.execute(first).await.unwrap() {
        DrainOutcome::Replayed(replayed) => assert_eq!(replayed.id, operation.id),
        other => panic!("expected a replay, got {other:?}"),
    }
    assert_eq!(
        h.notifier.heard().len(),
        NODES.len(),
        "nobody is told twice"
    );

    let mut other = request(Action::Offline, "10.0.0.6");
    other.idempotency_key = Some("deploy-4711".into());
    let error = h.orchestrator.execute(other).await.unwrap_err();
    assert!(
        matches!(error, DrainError::IdempotencyKeyReused(_)),
        "{error:?}"
    );

    // Keys of another principal never meet this one's.
    let mut theirs = request(Action::Offline, "10.0.0.6");
    theirs.idempotency_key = Some("deploy-4711".into());
    theirs.caller.principal = Some("ci".into());
    let operation = settled(h.orchestrator.execute(theirs).await.unwrap());
    assert_eq!(operation.state, OperationState::Succeeded);
}

#[tokio::test]
async fn a_key_is_claimed_while_its_first_request_runs() {
    let h = harness().await;
    let mut request = request(Action::Offline, "10.0.0.5");
    request.idempotency_key = Some("deploy-4712".into());
    let key = super::idempotency::key_of(&request).unwrap();
    let claim = h.orchestrator.claimed_keys.claim(&key).unwrap();
    let error = h.orchestrator.execute(request.clone()).await.unwrap_err();
    assert!(
        matches!(error, DrainError::IdempotencyKeyInFlight(_)),
        "{error:?}"
    );
    assert!(h.registry.writes().is_empty());
    drop(claim);
    let operation = settled(h.orchestrator.execute(request).await.unwrap());
    assert_eq!(operation.state, OperationState::Succeeded);
}

#[tokio::test]
async fn an_operation_left_before_its_registry_step_is_carried_to_the_end() {
    let h = harness().await;
    // What a process that died right after the journal left behind.
    let mut planned = request(Action::Offline, "10.0.0.6");
    planned.dry_run = true;
    let DrainOutcome::Planned(mut operation) = h.orchestrator.execute(planned).await.unwrap()
    else {
        panic!("a dry run plans");
    };
    operation.state = OperationState::InProgress;
    h.store.insert_operation(&operation, None).await.unwrap();
    assert!(h.registry.writes().is_empty());

    // The next start on the same store.
    let store: Arc<dyn Store> = Arc::clone(&h.store) as Arc<dyn Store>;
    let restarted = orchestrator_on(
        &h.registry,
        Arc::new(StaticGroups::new(BTreeMap::from([(
            app(APP),
            vec![app(GROUP)],
        )]))),
        &store,
        &h.notifier,
    )
    .await;
    let resumed = restarted
        .resume_unfinished(&CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(resumed, 1);
    let mut settled = None;
    for _ in 0..500 {
        let now = restarted.operation(&operation.id).await.unwrap().unwrap();
        if now.state.is_terminal() {
            settled = Some(now);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let settled = settled.expect("the resumed operation settles");
    assert_eq!(settled.state, OperationState::Succeeded);
    assert_eq!(h.registry.status_of("c"), Status::OutOfService);
    let told: Vec<_> = h
        .notifier
        .heard()
        .into_iter()
        .filter(|(_, id, _)| *id == operation.id)
        .collect();
    assert_eq!(
        told.len(),
        NODES.len(),
        "every node hears it, same operation id"
    );
    assert_eq!(restarted.holds().len(), 1);
    // Nothing is left for the start after that.
    assert!(h.store.unfinished_operations().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_re_assertion_continues_the_hold_it_enforces() {
    let h = harness().await;
    settled(
        h.orchestrator
            .execute(request(Action::Offline, "10.0.0.6"))
            .await
            .unwrap(),
    );
    let since = h.orchestrator.holds()[0].since;
    tokio::time::sleep(Duration::from_millis(5)).await;
    // A caller that names itself like the reconciler is still a caller: its offline starts
    // a hold of its own.
    let mut pretender = request(Action::Offline, "10.0.0.6");
    pretender.force = true;
    pretender.caller.principal = Some(crate::domain::operation::RECONCILER_PRINCIPAL.into());
    settled(h.orchestrator.execute(pretender).await.unwrap());
    let renewed = h.orchestrator.holds()[0].since;
    assert!(renewed > since, "an API call starts a new hold");
    tokio::time::sleep(Duration::from_millis(5)).await;
    // The registry lost the override (what a re-assertion is for).
    for instance in h.registry.instances_on(ip("10.0.0.6")).await.unwrap() {
        h.registry.overwrite(&instance.instance_id, Status::Up);
    }
    let mut reassertion = request(Action::Offline, "10.0.0.6");
    reassertion.force = true;
    reassertion.origin = Origin::Reconciler;
    settled(h.orchestrator.execute(reassertion).await.unwrap());
    assert_eq!(
        h.orchestrator.holds()[0].since,
        renewed,
        "the reconciler's correction keeps the hold's start"
    );
}
