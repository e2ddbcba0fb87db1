//! The `local` backend on real `fl` processes: an FL scenario passes with its assertions run
//! (not skipped), the global model equals `fl aggregate`'s recompute, and no process is left
//! behind when a session is dropped mid-run or on a panic (the runner drops a session the same
//! way after a timeout or Ctrl-C).
//! Without the `fl` binary (`cargo build -p fl-node`) these tests skip loudly; under CI they fail.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use harness::backend::{Advance, Probe, Session};
use harness::load::{Case, Catalog, expand, parse_str};
use harness::local::LocalBackend;
use harness::local::flbin::find_fl;
use harness::local::supervisor::pid_alive;
use harness::outcome::Status;
use harness::runner::{RunOptions, Silent, run_cases};
use harness::scenario::Wait;

use crate::support::{in_ci, root};

/// Skips loudly (fails under CI) when no `fl` binary is next to this test binary.
fn have_fl(test: &str) -> bool {
    match find_fl() {
        Ok(_) => true,
        Err(e) => {
            let msg = format!("{test}: {e}");
            if in_ci() {
                panic!("{msg}; CI builds it with `cargo test` (fl-node is a default member)");
            }
            eprintln!("\n*** SKIPPED {msg} ***\n");
            false
        }
    }
}

fn cases_of(text: &str) -> Vec<Case> {
    let root = root();
    let sc = parse_str(
        "scenarios/local-t.yaml",
        text,
        &Catalog::from_workspace(&root),
    )
    .expect("valid scenario");
    expand(&root.join("scenarios/local-t.yaml"), Arc::new(sc), &[])
}

/// Three clients, three rounds of softmax on FedProx Synthetic with 64 features: a few seconds
/// on loopback.
const SMALL_FEDAVG: &str = "name: local-small-fedavg
topology: mlworkbench-kvm
timeout: 60s
workload:
  fl: { clients: 3, rounds: 3, strategy: fedavg, model: softmax-64-10, round_timeout: 30s }
steps:
  - wait: { duration: 15m }
  - fl.start: {}
  - at: { fl.round: 2, phase: fit }
    fault: { kill_process: { node: cp-1, process: fl-coordinator } }
  - fault: { restore_process: { node: cp-1, process: fl-coordinator } }
  - wait: { fl.round: 3, timeout: 50s }
  - assert:
      - fl.round_completed: { round: 3 }
      - fl.clients_aggregated: { round: 3, at_least: 3 }
      - fl.global_model: matches_offline_recompute
      - fl.accuracy: { at_least: 0.5 }
      - etcd.quorum: true
";

#[test]
fn local_fedavg_survives_a_coordinator_kill_and_matches_the_offline_recompute() {
    if !have_fl("local_fedavg_survives_a_coordinator_kill") {
        return;
    }
    let logs = tempfile::tempdir().unwrap();
    let be = LocalBackend::new(&root()).with_logs_root(logs.path());
    let cases = cases_of(SMALL_FEDAVG);
    let opts = RunOptions {
        jobs: 1,
        timeout_ms: None,
        artifacts_dir: None,
        root: root(),
    };
    let r = run_cases(&be, &cases, &opts, &Silent, &AtomicBool::new(false));
    let case = &r[0];
    let dump = serde_json::to_string_pretty(case).unwrap();
    assert_eq!(case.status, Status::Passed, "{dump}");
    let asserts = &case.steps[5].assertions;
    let status = |k: &str| {
        asserts
            .iter()
            .find(|a| a.kind == k)
            .map(|a| a.status)
            .unwrap()
    };
    for k in [
        "fl.round_completed",
        "fl.clients_aggregated",
        "fl.global_model",
        "fl.accuracy",
    ] {
        assert_eq!(status(k), Status::Passed, "{k}: {dump}");
    }
    // No etcd on this backend yet: skipped with the reason, never passed.
    assert_eq!(status("etcd.quorum"), Status::Skipped, "{dump}");
    assert!(dump.contains("restore_process"), "{dump}");
    assert_eq!(case.rounds.len(), 3, "{dump}");
    // The idle wait cost no wall time and the processes logged where the session said.
    assert!(case.wall_ms < 60_000, "{dump}");
    let dir = logs.path().join("local-small-fedavg");
    for p in ["coordinator", "worker-0", "worker-2"] {
        let log = std::fs::read_to_string(dir.join(format!("{p}.log"))).unwrap();
        assert!(!log.is_empty(), "{p}.log is empty");
    }
}

/// Many rounds, so the job is still running when the test stops it.
fn long_job() -> Vec<Case> {
    cases_of(&SMALL_FEDAVG.replace("rounds: 3,", "rounds: 1000,"))
}

/// Every PID of the session is gone: not running and reaped (no zombie either).
fn assert_all_gone(pids: &[u32], how: &str) {
    let t0 = Instant::now();
    while pids.iter().any(|p| pid_alive(*p)) && t0.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let left: Vec<u32> = pids.iter().copied().filter(|p| pid_alive(*p)).collect();
    assert!(left.is_empty(), "{how}: processes left behind: {left:?}");
}

fn started_session(be: &LocalBackend) -> (harness::local::LocalSession, Vec<u32>) {
    let case = long_job().remove(0);
    let mut s = be.start_local(&case).unwrap();
    s.start_fl().unwrap();
    // Let the workers register and train a little: the kill lands mid-run.
    let w = Wait {
        duration: Some(harness::duration::Duration::from_ms(300)),
        ..Default::default()
    };
    let deadline = s.now_ms() + 1_000;
    assert_eq!(
        s.advance_until(Probe::Wait(&w), deadline, &|| false),
        Advance::Reached
    );
    let pids: Vec<u32> = s.pids().into_values().collect();
    assert_eq!(pids.len(), 4, "coordinator + 3 workers: {pids:?}");
    assert!(pids.iter().all(|p| pid_alive(*p)));
    (s, pids)
}

#[test]
fn nothing_is_left_behind_after_a_drop_mid_run_or_a_panic() {
    if !have_fl("nothing_is_left_behind") {
        return;
    }
    let logs = tempfile::tempdir().unwrap();
    let be = LocalBackend::new(&root()).with_logs_root(logs.path());

    let (s, pids) = started_session(&be);
    drop(s);
    assert_all_gone(&pids, "dropped mid-run");

    let mut seen = Vec::new();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let (_s, pids) = started_session(&be);
        seen = pids;
        panic!("a step panicked");
    }));
    assert!(r.is_err());
    assert_eq!(seen.len(), 4);
    assert_all_gone(&seen, "panic while running");
}

/// Five clients, three rounds, no fault: the accepted set of every round is all five clients
/// whatever the timing (no round timeout fires), so both backends must aggregate the same
/// updates into the same bits.
const PARITY_FEDAVG: &str = "name: local-parity-fedavg
topology: mlworkbench-kvm
timeout: 120s
workload:
  fl: { clients: 5, rounds: 3, strategy: fedavg, model: softmax-20-10 }
steps:
  - wait: { duration: 15m }
  - fl.start: {}
  - wait: { fl.round: 3, timeout: 100s }
  - assert:
      - fl.round_completed: { round: 3 }
      - fl.clients_aggregated: { round: 3, at_least: 5 }
";

/// The per-round global digests of one case on the sim and on the local backend.
fn digests_on_both(text: &str) -> (Vec<Option<String>>, Vec<Option<String>>) {
    let opts = RunOptions {
        jobs: 1,
        timeout_ms: None,
        artifacts_dir: None,
        root: root(),
    };
    let run = |be: &dyn harness::backend::Backend| {
        let r = run_cases(be, &cases_of(text), &opts, &Silent, &AtomicBool::new(false));
        let case = &r[0];
        let dump = serde_json::to_string_pretty(case).unwrap();
        assert_eq!(
            case.status,
            Status::Passed,
            "{} on {}: {dump}",
            case.name,
            be.name()
        );
        assert_eq!(case.rounds.len(), 3, "{dump}");
        let d: Vec<Option<String>> = case
            .rounds
            .iter()
            .map(|r| r.global_digest.clone())
            .collect();
        assert!(
            d.iter().all(Option::is_some),
            "a round without a digest: {dump}"
        );
        d
    };
    let sim = run(&harness::sim::SimBackend::new(&root()));
    let logs = tempfile::tempdir().unwrap();
    let local = run(&LocalBackend::new(&root()).with_logs_root(logs.path()));
    (sim, local)
}

#[test]
fn the_same_case_gives_the_same_global_digest_every_round_on_sim_and_local() {
    if !have_fl("the_same_case_gives_the_same_global_digest") {
        return;
    }
    let krum = PARITY_FEDAVG
        .replace("local-parity-fedavg", "local-parity-krum")
        .replace(
            "strategy: fedavg,",
            "strategy: krum, byzantine_tolerance: 1,",
        );
    let fedprox = PARITY_FEDAVG
        .replace("local-parity-fedavg", "local-parity-fedprox")
        .replace(
            "strategy: fedavg,",
            "strategy: fedprox, proximal_mu: 0.1, local_epochs: 2,",
        );
    for text in [PARITY_FEDAVG.to_string(), krum, fedprox] {
        let (sim, local) = digests_on_both(&text);
        eprintln!(
            "{}: sim {sim:?}\n local {local:?}",
            text.lines().next().unwrap()
        );
        assert_eq!(sim, local, "per-round global digests differ:\n{text}");
        // The rounds did something: three distinct models.
        assert_ne!(sim[0], sim[1]);
        assert_ne!(sim[1], sim[2]);
    }
}
