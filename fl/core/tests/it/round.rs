//! Round state machine tests: selection semantics, timeouts, dropouts, duplicate, stale and
//! future updates, replay, restart mid-round, evaluation, determinism.

use fl_core::round::{
    Action, ClientFailure, ClientId, Coordinator, CoordinatorState, Event, FederatedEvaluation,
    FitOutcome, Metrics, Phase, ProtocolError, RejectReason, RoundConfig, RoundFailure, Stage,
    TimerId, UpdateId, sample_size, select_clients, weighted_loss_avg,
};
use std::collections::BTreeSet;

fn cid(i: usize) -> ClientId {
    ClientId(format!("c{i:03}"))
}

fn coordinator(cfg: RoundConfig, clients: usize) -> (Coordinator, Vec<Action>) {
    let mut c = Coordinator::new(cfg).unwrap();
    for i in 0..clients {
        assert!(
            c.on_event(0, Event::ClientRegistered { client: cid(i) })
                .unwrap()
                .is_empty()
        );
    }
    let actions = c
        .on_event(
            0,
            Event::Start {
                global_digest: "g0".into(),
            },
        )
        .unwrap();
    (c, actions)
}

fn selected(actions: &[Action]) -> Vec<ClientId> {
    actions
        .iter()
        .find_map(|a| match a {
            Action::FitSelected { clients, .. } => Some(clients.clone()),
            _ => None,
        })
        .expect("fit selection in actions")
}

fn eval_selected(actions: &[Action]) -> Vec<ClientId> {
    actions
        .iter()
        .find_map(|a| match a {
            Action::EvaluateSelected { clients, .. } => Some(clients.clone()),
            _ => None,
        })
        .expect("evaluate selection in actions")
}

fn timer(actions: &[Action]) -> (TimerId, u64) {
    actions
        .iter()
        .find_map(|a| match a {
            Action::SetTimer { timer, at_ms } => Some((*timer, *at_ms)),
            _ => None,
        })
        .expect("a timer in actions")
}

fn update(client: &ClientId, round: u64, n: u64) -> Event {
    Event::UpdateReceived {
        client: client.clone(),
        round,
        update_id: UpdateId(format!("{client}-r{round}")),
        num_examples: n,
        metrics: Metrics::from([("train_loss".to_string(), n as f64)]),
    }
}

fn rejected(actions: &[Action]) -> RejectReason {
    match actions {
        [Action::RejectUpdate { reason, .. }] => reason.clone(),
        other => panic!("expected one rejection, got {other:?}"),
    }
}

fn no_eval() -> RoundConfig {
    RoundConfig {
        fraction_evaluate: 0.0,
        ..RoundConfig::default()
    }
}

/// Feeds updates from every selected client; returns the actions of the last one.
fn answer_all(c: &mut Coordinator, now: u64, round: u64, clients: &[ClientId]) -> Vec<Action> {
    let mut last = Vec::new();
    for (k, client) in clients.iter().enumerate() {
        last = c
            .on_event(now, update(client, round, 10 + k as u64))
            .unwrap();
        assert!(
            matches!(last[0], Action::AcceptUpdate { replay: false, .. }),
            "{last:?}"
        );
    }
    last
}

#[test]
fn flower_sample_size() {
    assert_eq!(sample_size(10, 1.0, 2), 10);
    assert_eq!(sample_size(10, 0.1, 2), 2);
    assert_eq!(sample_size(10, 0.3, 2), 3);
    assert_eq!(
        sample_size(100, 0.29, 2),
        28,
        "int() truncates 28.999999999999996 as Python does"
    );
    assert_eq!(sample_size(5, 0.5, 8), 8);
    assert_eq!(sample_size(0, 1.0, 0), 0);
}

#[test]
fn selection_is_deterministic_uniform_and_seeded() {
    let clients: BTreeSet<ClientId> = (0..50).map(cid).collect();
    let a = select_clients(&clients, 10, 7, 3, Stage::Fit);
    assert_eq!(a, select_clients(&clients, 10, 7, 3, Stage::Fit));
    assert_eq!(a.len(), 10);
    assert!(a.is_subset(&clients));
    assert_ne!(
        a,
        select_clients(&clients, 10, 8, 3, Stage::Fit),
        "seed changes the sample"
    );
    assert_ne!(
        a,
        select_clients(&clients, 10, 7, 4, Stage::Fit),
        "round changes the sample"
    );
    assert_ne!(
        a,
        select_clients(&clients, 10, 7, 3, Stage::Evaluate),
        "stage changes the sample"
    );
    // Roughly uniform: over 2000 rounds each of 50 clients is picked ~400 times (sd ~18).
    let mut counts = [0u32; 50];
    for r in 0..2000 {
        for c in select_clients(&clients, 10, 1, r, Stage::Fit) {
            counts[c.0[1..].parse::<usize>().unwrap()] += 1;
        }
    }
    assert!(
        counts.iter().all(|&n| (300..500).contains(&n)),
        "{counts:?}"
    );
}

#[test]
fn waits_for_min_available_then_samples_fraction() {
    let cfg = RoundConfig {
        fraction_fit: 0.5,
        min_fit_clients: 3,
        min_available_clients: 4,
        ..no_eval()
    };
    let (mut c, actions) = coordinator(cfg, 2);
    assert!(matches!(
        c.phase(),
        Phase::Waiting {
            stage: Stage::Fit,
            ..
        }
    ));
    let (_, at) = timer(&actions);
    assert_eq!(at, fl_core::round::FLOWER_WAIT_FOR_CLIENTS_TIMEOUT_MS);
    assert!(
        c.on_event(5, Event::ClientRegistered { client: cid(2) })
            .unwrap()
            .is_empty()
    );
    let actions = c
        .on_event(6, Event::ClientRegistered { client: cid(3) })
        .unwrap();
    // 4 available: max(int(4 * 0.5), 3) = 3.
    let sel = selected(&actions);
    assert_eq!(sel.len(), 3);
    let sends = actions
        .iter()
        .filter(|a| matches!(a, Action::SendFit { round: 1, .. }))
        .count();
    assert_eq!(sends, 3);
    assert_eq!(c.current().unwrap().fit_started_ms, Some(6));
    assert_eq!(c.current().unwrap().started_ms, 0);
}

#[test]
fn sampling_fails_when_min_fit_exceeds_available() {
    // Flower: wait_for(min_available) succeeds, then num_clients > available -> no clients.
    let cfg = RoundConfig {
        num_rounds: 2,
        min_fit_clients: 5,
        min_available_clients: 3,
        ..no_eval()
    };
    let (c, actions) = coordinator(cfg, 4);
    let failed: Vec<_> = actions
        .iter()
        .filter_map(|a| match a {
            Action::FitRoundFailed { round, reason } => Some((*round, reason.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(
        failed,
        vec![
            (
                1,
                RoundFailure::SamplingFailed {
                    available: 4,
                    requested: 5
                }
            ),
            (
                2,
                RoundFailure::SamplingFailed {
                    available: 4,
                    requested: 5
                }
            )
        ]
    );
    assert!(c.is_finished());
    assert_eq!(c.global_digest(), "g0", "no round changed the model");
}

#[test]
fn wait_timeout_samples_with_what_is_there() {
    let cfg = RoundConfig {
        min_fit_clients: 1,
        min_available_clients: 3,
        wait_for_clients_timeout_ms: 1000,
        ..no_eval()
    };
    let (mut c, actions) = coordinator(cfg, 2);
    let (t, at) = timer(&actions);
    assert_eq!(at, 1000);
    let actions = c.on_event(1000, Event::TimerFired { timer: t }).unwrap();
    assert_eq!(selected(&actions).len(), 2);
}

#[test]
fn full_round_aggregates_in_client_order_and_completes() {
    let (mut c, actions) = coordinator(no_eval(), 3);
    let sel = selected(&actions);
    assert_eq!(sel, vec![cid(0), cid(1), cid(2)]);
    // Answer in reverse order: the aggregate list is still sorted by client.
    let mut last = Vec::new();
    for client in sel.iter().rev() {
        last = c.on_event(100, update(client, 1, 10)).unwrap();
    }
    let Action::Aggregate {
        round,
        global_digest,
        updates,
    } = &last[1]
    else {
        panic!("{last:?}")
    };
    assert_eq!((*round, global_digest.as_str()), (1, "g0"));
    assert_eq!(
        updates.iter().map(|u| u.client.clone()).collect::<Vec<_>>(),
        sel
    );
    assert_eq!(c.phase(), &Phase::Aggregating);
    let done = c
        .on_event(
            150,
            Event::AggregationDone {
                round: 1,
                global_digest: "g1".into(),
                metrics: Metrics::new(),
            },
        )
        .unwrap();
    let Action::RoundCompleted(rec) = &done[0] else {
        panic!("{done:?}")
    };
    assert_eq!(rec.latency_ms(), Some(150));
    assert_eq!(rec.accepted.len(), 3);
    assert!(rec.aggregated());
    assert_eq!(rec.fit_metrics["train_loss"], 10.0);
    assert!(matches!(done[1], Action::Finished { rounds: 1, .. }));
    assert_eq!(c.global_digest(), "g1");
    assert_eq!(c.history().len(), 1);
}

#[test]
fn rejects_unknown_future_stale_unselected_duplicate_and_zero() {
    let cfg = RoundConfig {
        num_rounds: 3,
        fraction_fit: 0.5,
        min_fit_clients: 2,
        ..no_eval()
    };
    let (mut c, actions) = coordinator(cfg, 4);
    let sel = selected(&actions);
    let outsider = (0..4).map(cid).find(|x| !sel.contains(x)).unwrap();
    assert_eq!(
        rejected(&c.on_event(1, update(&cid(99), 1, 5)).unwrap()),
        RejectReason::UnknownClient
    );
    assert_eq!(
        rejected(&c.on_event(1, update(&sel[0], 2, 5)).unwrap()),
        RejectReason::FutureRound { current: 1 }
    );
    assert_eq!(
        rejected(&c.on_event(1, update(&outsider, 1, 5)).unwrap()),
        RejectReason::NotSelected
    );
    assert_eq!(
        rejected(&c.on_event(1, update(&sel[0], 1, 0)).unwrap()),
        RejectReason::ZeroExamples
    );
    let a = c.on_event(1, update(&sel[0], 1, 5)).unwrap();
    assert!(matches!(
        a[..],
        [Action::AcceptUpdate { replay: false, .. }]
    ));
    let other_payload = Event::UpdateReceived {
        client: sel[0].clone(),
        round: 1,
        update_id: UpdateId("different".into()),
        num_examples: 5,
        metrics: Metrics::new(),
    };
    assert_eq!(
        rejected(&c.on_event(1, other_payload).unwrap()),
        RejectReason::Duplicate {
            accepted: format!("{}-r1", sel[0])
        }
    );
    assert_eq!(
        c.current().unwrap().accepted.len(),
        1,
        "rejections change nothing"
    );
    let a = c.on_event(2, update(&sel[1], 1, 5)).unwrap();
    assert!(matches!(a[1], Action::Aggregate { .. }));
    // While aggregating, a late fit result of an unselected client for the round is refused.
    assert!(matches!(
        rejected(&c.on_event(2, update(&outsider, 1, 5)).unwrap()),
        RejectReason::RoundClosed { round: 1, .. }
    ));
    c.on_event(
        3,
        Event::AggregationDone {
            round: 1,
            global_digest: "g1".into(),
            metrics: Metrics::new(),
        },
    )
    .unwrap();
    assert_eq!(c.round(), 2);
    assert_eq!(
        rejected(&c.on_event(4, update(&outsider, 1, 5)).unwrap()),
        RejectReason::StaleRound { current: 2 }
    );
}

#[test]
fn replay_is_idempotent_in_current_and_past_rounds() {
    let cfg = RoundConfig {
        num_rounds: 2,
        ..no_eval()
    };
    let (mut c, actions) = coordinator(cfg, 2);
    let sel = selected(&actions);
    c.on_event(1, update(&sel[0], 1, 5)).unwrap();
    let replay = c.on_event(2, update(&sel[0], 1, 5)).unwrap();
    assert!(
        matches!(
            &replay[..],
            [Action::AcceptUpdate {
                replay: true,
                round: 1,
                ..
            }]
        ),
        "{replay:?}"
    );
    assert_eq!(c.current().unwrap().accepted.len(), 1);
    assert_eq!(
        c.current().unwrap().accepted[&sel[0]].accepted_ms,
        1,
        "the first acceptance stands"
    );
    c.on_event(3, update(&sel[1], 1, 7)).unwrap();
    c.on_event(
        4,
        Event::AggregationDone {
            round: 1,
            global_digest: "g1".into(),
            metrics: Metrics::new(),
        },
    )
    .unwrap();
    // Round 2 is running; a replayed round-1 upload is acknowledged again, not counted.
    let replay = c.on_event(5, update(&sel[1], 1, 7)).unwrap();
    assert!(
        matches!(
            &replay[..],
            [Action::AcceptUpdate {
                replay: true,
                round: 1,
                ..
            }]
        ),
        "{replay:?}"
    );
    assert_eq!(c.history()[0].accepted.len(), 2);
    // Even after the client is gone.
    c.on_event(
        6,
        Event::ClientLost {
            client: sel[1].clone(),
        },
    )
    .unwrap();
    let replay = c.on_event(7, update(&sel[1], 1, 7)).unwrap();
    assert!(
        matches!(&replay[..], [Action::AcceptUpdate { replay: true, .. }]),
        "{replay:?}"
    );
}

#[test]
fn timeout_counts_pending_as_failures_and_accept_failures_aggregates() {
    let cfg = RoundConfig {
        fit_timeout_ms: Some(500),
        ..no_eval()
    };
    let (mut c, actions) = coordinator(cfg, 3);
    let sel = selected(&actions);
    let (t, at) = timer(&actions);
    assert_eq!(at, 500);
    c.on_event(100, update(&sel[0], 1, 5)).unwrap();
    // A stale timer id does nothing.
    assert!(
        c.on_event(
            200,
            Event::TimerFired {
                timer: TimerId(t.0 + 100)
            }
        )
        .unwrap()
        .is_empty()
    );
    let a = c.on_event(500, Event::TimerFired { timer: t }).unwrap();
    let Action::Aggregate { updates, .. } = &a[0] else {
        panic!("{a:?}")
    };
    assert_eq!(updates.len(), 1);
    let rec = c.current().unwrap();
    assert_eq!(rec.failures.len(), 2);
    assert!(rec.failures.values().all(|f| *f == ClientFailure::Timeout));
    assert_eq!(rec.fit_closed_ms, Some(500));
    // The timer firing again (duplicate delivery) is harmless.
    assert!(
        c.on_event(501, Event::TimerFired { timer: t })
            .unwrap()
            .is_empty()
    );
    // A straggler's late upload is refused as the round is closed.
    assert!(matches!(
        rejected(&c.on_event(502, update(&sel[1], 1, 5)).unwrap()),
        RejectReason::RoundClosed { .. }
    ));
}

#[test]
fn accept_failures_false_fails_the_round_and_keeps_the_model() {
    let cfg = RoundConfig {
        accept_failures: false,
        num_rounds: 2,
        ..no_eval()
    };
    let (mut c, actions) = coordinator(cfg, 3);
    let sel = selected(&actions);
    c.on_event(1, update(&sel[0], 1, 5)).unwrap();
    c.on_event(2, update(&sel[1], 1, 5)).unwrap();
    let a = c
        .on_event(
            3,
            Event::FitFailed {
                client: sel[2].clone(),
                round: 1,
                reason: "oom".into(),
            },
        )
        .unwrap();
    assert_eq!(
        a[0],
        Action::FitRoundFailed {
            round: 1,
            reason: RoundFailure::FailuresNotAccepted { failures: 1 }
        }
    );
    assert!(
        matches!(&a[1], Action::RoundCompleted(r) if !r.aggregated() && r.global_digest == "g0")
    );
    assert_eq!(c.round(), 2, "the next round starts");
    assert_eq!(
        c.history()[0].failures[&sel[2]],
        ClientFailure::Reported("oom".into())
    );
}

#[test]
fn min_fit_results_fails_a_round_that_lost_too_many() {
    let cfg = RoundConfig {
        min_fit_results: 3,
        ..no_eval()
    };
    let (mut c, actions) = coordinator(cfg, 4);
    let sel = selected(&actions);
    c.on_event(1, update(&sel[0], 1, 5)).unwrap();
    c.on_event(1, update(&sel[1], 1, 5)).unwrap();
    c.on_event(
        2,
        Event::ClientLost {
            client: sel[2].clone(),
        },
    )
    .unwrap();
    let a = c
        .on_event(
            3,
            Event::ClientLost {
                client: sel[3].clone(),
            },
        )
        .unwrap();
    assert_eq!(
        a[0],
        Action::FitRoundFailed {
            round: 1,
            reason: RoundFailure::TooFewResults {
                results: 2,
                required: 3
            }
        }
    );
    assert_eq!(c.history()[0].failures[&sel[3]], ClientFailure::ClientLost);
}

#[test]
fn all_clients_lost_is_a_failed_round_with_no_results() {
    let (mut c, actions) = coordinator(no_eval(), 2);
    let sel = selected(&actions);
    c.on_event(
        1,
        Event::ClientLost {
            client: sel[0].clone(),
        },
    )
    .unwrap();
    let a = c
        .on_event(
            2,
            Event::ClientLost {
                client: sel[1].clone(),
            },
        )
        .unwrap();
    assert_eq!(
        a[0],
        Action::FitRoundFailed {
            round: 1,
            reason: RoundFailure::TooFewResults {
                results: 0,
                required: 1
            }
        }
    );
    assert!(c.is_finished());
}

#[test]
fn aggregation_failure_and_protocol_misuse() {
    let cfg = RoundConfig {
        num_rounds: 2,
        ..no_eval()
    };
    let (mut c, actions) = coordinator(cfg, 2);
    let sel = selected(&actions);
    // An aggregation result before anything was asked is shell misuse.
    let err = c
        .on_event(
            1,
            Event::AggregationDone {
                round: 1,
                global_digest: "x".into(),
                metrics: Metrics::new(),
            },
        )
        .unwrap_err();
    assert!(
        matches!(
            err,
            ProtocolError::Unexpected {
                round: 1,
                current: 1,
                ..
            }
        ),
        "{err}"
    );
    assert!(
        c.on_event(
            1,
            Event::Start {
                global_digest: "again".into()
            }
        )
        .is_err()
    );
    answer_all(&mut c, 2, 1, &sel);
    let a = c
        .on_event(
            3,
            Event::AggregationFailed {
                round: 1,
                reason: "bulyan needs 4f+3".into(),
            },
        )
        .unwrap();
    assert_eq!(
        a[0],
        Action::FitRoundFailed {
            round: 1,
            reason: RoundFailure::Aggregation("bulyan needs 4f+3".into())
        }
    );
    // A second (duplicate) answer for round 1 is ignored, not an error.
    assert!(
        c.on_event(
            4,
            Event::AggregationDone {
                round: 1,
                global_digest: "x".into(),
                metrics: Metrics::new()
            }
        )
        .unwrap()
        .is_empty()
    );
    assert_eq!(c.global_digest(), "g0");
}

#[test]
fn federated_evaluation_is_weighted_loss_avg() {
    let cfg = RoundConfig {
        fraction_evaluate: 1.0,
        min_evaluate_clients: 2,
        ..RoundConfig::default()
    };
    let (mut c, actions) = coordinator(cfg, 3);
    let sel = selected(&actions);
    answer_all(&mut c, 1, 1, &sel);
    let a = c
        .on_event(
            2,
            Event::AggregationDone {
                round: 1,
                global_digest: "g1".into(),
                metrics: Metrics::new(),
            },
        )
        .unwrap();
    let ev = eval_selected(&a);
    assert_eq!(ev.len(), 3);
    assert!(
        a.iter().any(
            |x| matches!(x, Action::SendEvaluate { global_digest, .. } if global_digest == "g1")
        )
    );
    let eval = |k: usize, n: u64, loss: f64| Event::EvaluateReceived {
        client: ev[k].clone(),
        round: 1,
        num_examples: n,
        loss,
        metrics: Metrics::from([("accuracy".to_string(), loss / 10.0)]),
    };
    assert!(matches!(
        &c.on_event(3, eval(0, 10, f64::NAN)).unwrap()[..],
        [Action::RejectEvaluate {
            reason: RejectReason::NonFiniteLoss,
            ..
        }]
    ));
    c.on_event(3, eval(0, 10, 1.0)).unwrap();
    assert!(matches!(
        &c.on_event(3, eval(0, 10, 1.0)).unwrap()[..],
        [Action::RejectEvaluate {
            reason: RejectReason::Duplicate { .. },
            ..
        }]
    ));
    c.on_event(4, eval(1, 30, 2.0)).unwrap();
    let a = c
        .on_event(
            5,
            Event::EvaluateFailed {
                client: ev[2].clone(),
                round: 1,
                reason: "x".into(),
            },
        )
        .unwrap();
    let Action::RoundCompleted(rec) = &a[0] else {
        panic!("{a:?}")
    };
    let (expected, _) = weighted_loss_avg([(10u64, 1.0f64), (30, 2.0)].into_iter());
    assert_eq!(expected, 1.75);
    match rec.federated.as_ref().unwrap() {
        FederatedEvaluation::Aggregated {
            loss,
            num_examples,
            num_results,
            num_failures,
            metrics,
        } => {
            assert_eq!(
                (*loss, *num_examples, *num_results, *num_failures),
                (1.75, 40, 2, 1)
            );
            assert!((metrics["accuracy"] - 0.175).abs() < 1e-12);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn centralized_evaluation_covers_round_zero_and_every_round() {
    let cfg = RoundConfig {
        centralized_evaluation: true,
        num_rounds: 2,
        ..no_eval()
    };
    let (mut c, actions) = coordinator(cfg, 2);
    assert_eq!(
        actions,
        vec![Action::EvaluateCentralized {
            round: 0,
            global_digest: "g0".into()
        }]
    );
    let a = c
        .on_event(
            1,
            Event::CentralEvaluationDone {
                round: 0,
                loss: 2.3,
                metrics: Metrics::new(),
            },
        )
        .unwrap();
    let sel = selected(&a);
    let last = answer_all(&mut c, 2, 1, &sel);
    assert!(matches!(last.last(), Some(Action::Aggregate { .. })));
    let a = c
        .on_event(
            3,
            Event::AggregationDone {
                round: 1,
                global_digest: "g1".into(),
                metrics: Metrics::new(),
            },
        )
        .unwrap();
    assert_eq!(
        a,
        vec![Action::EvaluateCentralized {
            round: 1,
            global_digest: "g1".into()
        }]
    );
    let a = c
        .on_event(
            4,
            Event::CentralEvaluationDone {
                round: 1,
                loss: 1.2,
                metrics: Metrics::new(),
            },
        )
        .unwrap();
    let Action::RoundCompleted(rec) = &a[0] else {
        panic!("{a:?}")
    };
    assert_eq!(rec.central.as_ref().unwrap().loss, 1.2);
    assert_eq!(c.state().initial_central.as_ref().unwrap().loss, 2.3);
}

/// Persist (JSON), drop, restore, restart: in-flight work is re-emitted, acknowledged updates
/// are counted once and replays are idempotent.
#[test]
fn restart_mid_round_resumes_and_counts_each_update_once() {
    let cfg = RoundConfig {
        fit_timeout_ms: Some(1000),
        num_rounds: 2,
        ..no_eval()
    };
    let (mut c, actions) = coordinator(cfg.clone(), 4);
    let sel = selected(&actions);
    let (t, _) = timer(&actions);
    c.on_event(10, update(&sel[0], 1, 5)).unwrap();
    c.on_event(11, update(&sel[1], 1, 6)).unwrap();
    let saved = serde_json::to_string(c.state()).unwrap();
    drop(c);

    let state: CoordinatorState = serde_json::from_str(&saved).unwrap();
    let mut c = Coordinator::restore(cfg.clone(), state).unwrap();
    let a = c.on_event(2000, Event::Restart).unwrap();
    let resent: Vec<_> = a
        .iter()
        .filter_map(|x| match x {
            Action::SendFit { client, .. } => Some(client.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(
        resent,
        sel[2..].to_vec(),
        "only clients that have not answered are re-sent"
    );
    assert!(
        a.contains(&Action::SetTimer {
            timer: t,
            at_ms: 1000
        }),
        "{a:?}"
    );
    // The worker retries an upload acknowledged before the crash: idempotent.
    let r = c.on_event(2001, update(&sel[1], 1, 6)).unwrap();
    assert!(matches!(
        &r[..],
        [Action::AcceptUpdate { replay: true, .. }]
    ));
    c.on_event(2002, update(&sel[2], 1, 7)).unwrap();
    let a = c.on_event(2003, update(&sel[3], 1, 8)).unwrap();
    let Action::Aggregate { updates, .. } = &a[1] else {
        panic!("{a:?}")
    };
    assert_eq!(
        updates.iter().map(|u| u.num_examples).collect::<Vec<_>>(),
        vec![5, 6, 7, 8]
    );

    // Crash while aggregating: the restart asks again for the very same aggregation.
    let saved = serde_json::to_string(c.state()).unwrap();
    let mut c = Coordinator::restore(cfg, serde_json::from_str(&saved).unwrap()).unwrap();
    let again = c.on_event(3000, Event::Restart).unwrap();
    assert_eq!(again, vec![a[1].clone()]);
    c.on_event(
        3001,
        Event::AggregationDone {
            round: 1,
            global_digest: "g1".into(),
            metrics: Metrics::new(),
        },
    )
    .unwrap();
    assert_eq!(c.history()[0].accepted.len(), 4);
    assert_eq!(c.round(), 2);
}

#[test]
fn restore_rejects_inconsistent_state() {
    let (mut c, actions) = coordinator(no_eval(), 2);
    let sel = selected(&actions);
    c.on_event(1, update(&sel[0], 1, 5)).unwrap();
    let mut state = c.state().clone();
    state.current.as_mut().unwrap().selected.remove(&sel[0]);
    let err = Coordinator::restore(no_eval(), state).unwrap_err();
    assert!(
        err.to_string()
            .contains("accepted update from unselected client c000"),
        "{err}"
    );
    let mut state = c.state().clone();
    state.current = None;
    assert!(Coordinator::restore(no_eval(), state).is_err());
}

#[test]
fn config_validation_names_the_field() {
    for (cfg, field) in [
        (
            RoundConfig {
                num_rounds: 0,
                ..RoundConfig::default()
            },
            "num_rounds",
        ),
        (
            RoundConfig {
                fraction_fit: 1.5,
                ..RoundConfig::default()
            },
            "fraction_fit",
        ),
        (
            RoundConfig {
                fraction_evaluate: -0.1,
                ..RoundConfig::default()
            },
            "fraction_evaluate",
        ),
        (
            RoundConfig {
                min_fit_results: 0,
                ..RoundConfig::default()
            },
            "min_fit_results",
        ),
    ] {
        assert_eq!(Coordinator::new(cfg).unwrap_err().field, field);
    }
}

/// Many rounds with random dropouts: same seed, same trace; every round's accepted set is
/// a subset of its selection; rounds complete in order.
#[test]
fn determinism_over_many_rounds_with_dropouts() {
    fn run(seed: u64) -> Vec<Action> {
        let cfg = RoundConfig {
            num_rounds: 20,
            seed,
            fraction_fit: 0.3,
            min_fit_clients: 3,
            fit_timeout_ms: Some(100),
            fraction_evaluate: 0.2,
            min_evaluate_clients: 2,
            evaluate_timeout_ms: Some(50),
            ..RoundConfig::default()
        };
        let (mut c, first) = coordinator(cfg, 20);
        let mut trace = first.clone();
        let mut pending = first;
        let mut now = 0u64;
        for step in 0..10_000u64 {
            if c.is_finished() {
                break;
            }
            now += 1;
            let mut next = Vec::new();
            for a in std::mem::take(&mut pending) {
                let ev = match a {
                    // Every 7th client (by a hash of round and id) never answers.
                    Action::SendFit { round, client, .. } => {
                        let k: usize = client.0[1..].parse().unwrap();
                        if (k as u64 + round * 3).is_multiple_of(7) {
                            continue;
                        }
                        update(&client, round, 1 + k as u64)
                    }
                    Action::SendEvaluate { round, client, .. } => Event::EvaluateReceived {
                        client,
                        round,
                        num_examples: 4,
                        loss: 1.0 / round as f64,
                        metrics: Metrics::new(),
                    },
                    Action::Aggregate { round, .. } => Event::AggregationDone {
                        round,
                        global_digest: format!("g{round}"),
                        metrics: Metrics::new(),
                    },
                    Action::SetTimer { timer, at_ms } => {
                        now = now.max(at_ms);
                        Event::TimerFired { timer }
                    }
                    _ => continue,
                };
                next.extend(c.on_event(now, ev).unwrap());
            }
            if next.is_empty() && !c.is_finished() {
                panic!("stalled at step {step} in {:?}", c.phase());
            }
            trace.extend(next.iter().cloned());
            pending = next;
        }
        assert!(c.is_finished());
        for r in c.history() {
            assert!(r.accepted.keys().all(|k| r.selected.contains(k)));
            assert_eq!(r.accepted.len() + r.failures.len(), r.selected.len());
            assert!(matches!(r.fit, Some(FitOutcome::Aggregated { .. })));
        }
        trace
    }
    let a = run(42);
    assert_eq!(a, run(42));
    assert_ne!(a, run(43));
    let failures = a
        .iter()
        .filter_map(|x| match x {
            Action::RoundCompleted(r) => Some(r.failures.len()),
            _ => None,
        })
        .sum::<usize>();
    assert!(failures > 0, "the dropout pattern produced timeouts");
}
