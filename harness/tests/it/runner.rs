//! The runner on the real sim backend, on a small topology: pass, fail, skip, timeout, Ctrl-C,
//! determinism, and a whole e2e run writing its five report files.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use harness::backend::Backend;
use harness::e2e::{E2eOptions, ProgressMode};
use harness::load::{Catalog, expand, parse_str};
use harness::outcome::Status;
use harness::runner::{RunOptions, Silent, run_cases};
use harness::sim::SimBackend;

use crate::support::{TINY_TOPOLOGY, temp_workspace};

fn cases_of(root: &Path, text: &str) -> Vec<harness::load::Case> {
    let sc = parse_str("scenarios/t.yaml", text, &Catalog::from_workspace(root))
        .expect("valid scenario");
    expand(&root.join("scenarios/t.yaml"), Arc::new(sc), &[])
}

fn run(text: &str, timeout_ms: Option<u64>, cancel: bool) -> Vec<harness::outcome::CaseReport> {
    let ws = temp_workspace(&[]);
    let cases = cases_of(ws.path(), text);
    let be = SimBackend::new(ws.path());
    let opts = RunOptions {
        jobs: 2,
        timeout_ms,
        artifacts_dir: None,
        root: ws.path().to_path_buf(),
    };
    run_cases(&be, &cases, &opts, &Silent, &AtomicBool::new(cancel))
}

const CP_LOSS: &str = "name: cp-loss
topology: tiny
steps:
  - wait: { cluster: ready, timeout: 20m }
  - fault: { kill_node: cp-2 }
  - assert:
      - node.condition: { node: cp-2, condition: NotReady, within: 2m }
      - etcd.quorum: true
";

#[test]
fn control_plane_loss_keeps_quorum_and_the_node_goes_not_ready() {
    let r = run(CP_LOSS, None, false);
    assert_eq!(r.len(), 1);
    let c = &r[0];
    assert_eq!(c.status, Status::Passed, "{:#?}", c.steps);
    assert!(
        c.virtual_ms > 60_000,
        "boot plus grace period took virtual time: {}",
        c.virtual_ms
    );
    let a = &c.steps[2].assertions;
    assert!(a[0].detail.contains("NotReady"), "{a:?}");
    assert!(a[1].detail.contains("quorum held"), "{a:?}");
    assert!(!c.timeline.nodes.is_empty() && !c.timeline.faults.is_empty());
}

#[test]
fn a_false_expectation_fails_with_the_observed_state_and_a_repro() {
    let text = CP_LOSS.replace("  - fault: { kill_node: cp-2 }\n", "  - fault: { kill_node: cp-2 }\n  - fault: { kill_node: cp-3 }\n  - wait: { duration: 30s }\n");
    let r = run(&text, None, false);
    let c = &r[0];
    assert_eq!(c.status, Status::Failed, "{:#?}", c.steps);
    let reason = c.reason.as_deref().unwrap_or_default();
    assert!(reason.contains("etcd quorum lost"), "{reason}");
    assert!(
        c.repro.contains("--seed 42") && c.repro.contains("--exact 'cp-loss'"),
        "{}",
        c.repro
    );
}

#[test]
fn a_case_whose_assertions_are_all_skipped_is_skipped_not_passed() {
    // The simulator models Pending and Running pods only: the one assertion is skipped.
    let text = "name: succeeded-only
topology: tiny
steps:
  - assert:
      - pod.phase: { pod: default/job-0, phase: Succeeded }
";
    let r = run(text, None, false);
    assert_eq!(r[0].status, Status::Skipped, "{:#?}", r[0]);
    assert!(
        r[0].reason
            .as_deref()
            .unwrap_or_default()
            .contains("Pending and Running"),
        "{:?}",
        r[0].reason
    );
    assert!(r[0].steps.iter().all(|s| s.status == Status::Skipped));
}

#[test]
fn an_unsupported_assertion_next_to_a_checked_one_is_skipped_and_the_case_passes() {
    let text = "name: mixed
topology: tiny
steps:
  - wait: { cluster: ready, timeout: 20m }
  - assert:
      - etcd.quorum: true
      - pod.phase: { pod: default/x, phase: Succeeded }
";
    let r = run(text, None, false);
    assert_eq!(r[0].status, Status::Passed);
    let a = &r[0].steps[1].assertions;
    assert_eq!(a[1].status, Status::Skipped, "{a:?}");
    assert!(a[1].detail.contains("Pending and Running"), "{a:?}");
}

#[test]
fn the_wall_clock_timeout_fails_the_case_with_a_clear_message() {
    let r = run(CP_LOSS, Some(0), false);
    assert_eq!(r[0].status, Status::Failed);
    let reason = r[0].reason.as_deref().unwrap_or_default();
    assert!(
        reason.contains("timed out after 0s (wall clock) in steps[0]"),
        "{reason}"
    );
    assert!(reason.contains("--timeout"), "{reason}");
}

#[test]
fn ctrl_c_before_start_reports_interrupted_cases() {
    let r = run(CP_LOSS, None, true);
    assert!(r[0].interrupted);
    assert_ne!(r[0].status, Status::Passed);
}

#[test]
fn the_same_seed_gives_the_same_trace_hash_and_another_seed_another() {
    let a = run(CP_LOSS, None, false);
    let b = run(CP_LOSS, None, false);
    assert_eq!(a[0].trace_hash, b[0].trace_hash);
    let c = run(
        &CP_LOSS.replace("topology: tiny", "topology: tiny\nseed: 7"),
        None,
        false,
    );
    assert_ne!(a[0].trace_hash, c[0].trace_hash);
}

#[test]
fn statefulset_on_local_path_cannot_move_off_a_dead_worker() {
    let text = "name: sts
topology: tiny
workload:
  k8s:
    - { kind: StatefulSet, name: pg, namespace: databases, storage_class: local-path, node: worker-1 }
steps:
  - wait: { workload: databases/pg, timeout: 20m }
  - fault: { kill_node: worker-1 }
  - wait: { duration: 10m }
  - assert:
      - workload.ready: { workload: databases/pg, at_most: 0 }
";
    let r = run(text, None, false);
    assert_eq!(r[0].status, Status::Passed, "{:#?}", r[0].steps);
}

#[test]
fn matrix_expands_into_named_cases() {
    let ws = temp_workspace(&[]);
    let text = format!("{CP_LOSS}matrix:\n  seeds: [1, 2]\n");
    let cases = cases_of(ws.path(), &text);
    let names: Vec<&str> = cases.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["cp-loss[seed=1]", "cp-loss[seed=2]"]);
    let _ = TINY_TOPOLOGY;
}

#[test]
fn an_e2e_run_writes_the_five_report_files_and_counts_outcomes() {
    let ws = temp_workspace(&[
        ("cp-loss.yaml", CP_LOSS),
        (
            "succeeded.yaml",
            "name: succeeded\ntopology: tiny\nsteps:\n  - assert:\n      - pod.phase: { pod: default/job-0, phase: Succeeded }\n",
        ),
    ]);
    let mut opts = E2eOptions::defaults(ws.path());
    opts.progress = ProgressMode::Silent;
    opts.jobs = 2;
    let res = harness::e2e::run(&opts, &AtomicBool::new(false)).expect("e2e run");
    assert_eq!(
        (
            res.run.summary.passed,
            res.run.summary.failed,
            res.run.summary.skipped
        ),
        (1, 0, 1)
    );
    for f in harness::report::FILES {
        let p = res.dir.join(f);
        assert!(p.is_file(), "{} missing", p.display());
    }
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(res.dir.join("report.json")).expect("json"))
            .expect("parse");
    assert_eq!(json["schema"], "fl-harness/report/v1");
    let md = std::fs::read_to_string(res.dir.join("report.md")).expect("md");
    assert!(md.contains("1 passed, 0 failed, 1 skipped"), "{md}");
    assert!(!res.failed());
    let _ = SimBackend::new(ws.path()).name();
}

#[test]
fn fedavg_rounds_complete_and_match_the_recompute_and_a_dropout_shows_in_the_round() {
    let text = "name: fl
topology: tiny
workload:
  fl: { clients: 4, rounds: 3, strategy: fedavg, min_fit_clients: 2, round_timeout: 1m }
steps:
  - wait: { cluster: ready, timeout: 20m }
  - fl.start: {}
  - at: { fl.round: 2, phase: fit }
    fault: { fl_client_dropout: { count: 1 } }
  - wait: { fl.round: 3, timeout: 60m }
  - assert:
      - fl.round_completed: { round: 3 }
      - fl.global_model: matches_offline_recompute
      - fl.clients_aggregated: { round: 1, at_least: 4 }
      - fl.clients_aggregated: { round: 3, at_most: 3 }
";
    let r = run(text, None, false);
    assert_eq!(r[0].status, Status::Passed, "{:#?}", r[0].steps);
    assert_eq!(r[0].rounds.len(), 3, "{:?}", r[0].rounds);
    assert!(
        r[0].rounds
            .iter()
            .all(|x| x.accuracy.is_some() && x.loss.is_some())
    );
}

#[test]
fn an_fl_assertion_that_does_not_hold_fails_with_the_observed_value() {
    let text = "name: fl-acc
topology: tiny
workload:
  fl: { clients: 4, rounds: 1 }
steps:
  - wait: { cluster: ready, timeout: 20m }
  - fl.start: {}
  - wait: { fl.round: 1, timeout: 60m }
  - assert:
      - fl.accuracy: { at_least: 1.0 }
";
    let r = run(text, None, false);
    assert_eq!(r[0].status, Status::Failed, "{:#?}", r[0].steps);
    let reason = r[0].reason.as_deref().unwrap_or_default();
    assert!(reason.contains("accuracy after round 1 is"), "{reason}");
}

/// The sim reports the same election metrics as the local backend: with the leader killed,
/// the time to a higher term and to a new leader; with a follower killed, none, and says so.
#[test]
fn sim_times_an_election_only_when_the_leader_dies() {
    let text = "name: leader-or-not
topology: tiny
steps:
  - wait: { cluster: ready, timeout: 20m }
  - wait: { duration: 1m }
  - fault: { kill_node: cp-2 }
  - wait: { duration: 30s }
  - assert:
      - etcd.quorum: true
matrix:
  seeds: [1, 2, 3, 4, 5, 6, 7, 8]
";
    let r = run(text, None, false);
    let (mut leaders, mut followers) = (0, 0);
    for c in &r {
        assert_eq!(c.status, Status::Passed, "{:#?}", c.steps);
        let kill = &c.steps[2].detail;
        let m = &c.metrics;
        if kill.contains("was the leader") {
            leaders += 1;
            let d = m["etcd_dead_member_detected_ms"];
            let e = m["etcd_leader_election_ms"];
            // A follower notices after its randomized election timeout, in [1 s, 2 s) of
            // ticks since the leader's last heartbeat (100 ms before the kill at most).
            assert!((900.0..2_100.0).contains(&d), "{}: {m:?}", c.name);
            assert!(d <= e, "{}: {m:?}", c.name);
        } else {
            assert!(kill.contains("no election follows"), "{kill}");
            followers += 1;
            assert!(!m.contains_key("etcd_leader_election_ms"), "{m:?}");
            assert!(!m.contains_key("etcd_dead_member_detected_ms"), "{m:?}");
        }
    }
    assert!(
        leaders > 0 && followers > 0,
        "{leaders} leader kills, {followers} follower kills"
    );
}
