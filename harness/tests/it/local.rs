//! The `local` backend on real `fl` processes: an FL scenario passes with its assertions run
//! (not skipped), the global model equals `fl aggregate`'s recompute, and no process is left
//! behind when a session is dropped mid-run or on a panic (the runner drops a session the same
//! way after a timeout or Ctrl-C).
//! The etcd cases run a real 3-member etcd (Debian `etcd-server`): quorum kept with one member
//! SIGKILLed and lost with two, a restored member rejoins from its WAL, a leader kill is timed,
//! and no etcd PID survives a dropped session; a partition between nodes (through the peer
//! proxies) keeps quorum on the majority and a partitioned leader is replaced; a full data
//! volume under one member is reported.
//! Without the `fl` binary (`cargo build -p fl-node`) or `etcd` (`cargo xtask setup local`)
//! these tests skip loudly; under CI they fail.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use harness::backend::{Advance, Probe, Session};
use harness::load::{Case, Catalog, expand, parse_str};
use harness::local::LocalBackend;
use harness::local::etcd::find_etcd;
use harness::local::flbin::find_fl;
use harness::local::supervisor::pid_alive;
use harness::outcome::Status;
use harness::runner::{RunOptions, Silent, run_cases};
use harness::scenario::Wait;

use crate::support::{in_ci, root};

/// Skips loudly (fails under CI) when no `fl` binary is next to this test binary or no `etcd`
/// is installed (`cargo xtask setup local`).
fn have_fl(test: &str) -> bool {
    let missing = match (find_fl(), find_etcd()) {
        (Ok(_), Ok(_)) => return true,
        (Err(e), _) => format!("{e}; CI builds it with `cargo test` (fl-node is a default member)"),
        (_, Err(e)) => e,
    };
    let msg = format!("{test}: {missing}");
    if in_ci() {
        panic!("{msg}");
    }
    crate::support::loud(&format!("SKIPPED {msg}"));
    false
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

/// Three clients, three rounds of softmax on the 8x8 digits: a few seconds on loopback.
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
    let _one_at_a_time = crate::support::exclusive();
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
    // The case asserts etcd.quorum, so its topology's three etcd members ran with it.
    assert_eq!(status("etcd.quorum"), Status::Passed, "{dump}");
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
    let by_name = s.pids();
    for name in ["coordinator", "worker-0", "worker-1", "worker-2"] {
        assert!(by_name.contains_key(name), "{name} runs: {by_name:?}");
    }
    // The case asserts etcd.quorum: its topology's three etcd members run too.
    assert_eq!(
        by_name.keys().filter(|k| k.starts_with("etcd-")).count(),
        3,
        "{by_name:?}"
    );
    // PostgreSQL and the S3 server when installed; their own children (PostgreSQL's
    // checkpointer, walwriter, ...) must go too.
    let mut pids: Vec<u32> = by_name.values().copied().collect();
    for p in by_name.values() {
        pids.extend(descendants(*p));
    }
    assert!(pids.iter().all(|p| pid_alive(*p)));
    (s, pids)
}

/// Every descendant of `pid`, from /proc.
fn descendants(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) else {
            continue;
        };
        for t in tasks.flatten() {
            let kids = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
            for k in kids
                .split_whitespace()
                .filter_map(|k| k.parse::<u32>().ok())
            {
                out.push(k);
                todo.push(k);
            }
        }
    }
    out
}

#[test]
fn nothing_is_left_behind_after_a_drop_mid_run_or_a_panic() {
    if !have_fl("nothing_is_left_behind") {
        return;
    }
    let _one_at_a_time = crate::support::exclusive();
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
    assert!(seen.len() >= 7, "{seen:?}");
    assert_all_gone(&seen, "panic while running");
}

/// Three etcd members: one killed keeps quorum, two killed lose it, one restored brings it back.
const ETCD_QUORUM: &str = "name: local-etcd-quorum
topology: mlworkbench-kvm
timeout: 60s
steps:
  - wait: { cluster: ready, timeout: 20s }
  - fault: { kill_node: talos-k8s-1 }
  - wait: { duration: 10s }
  - assert:
      - etcd.quorum: true
  - fault: { kill_process: { node: talos-k8s-2, process: etcd } }
  - assert:
      - etcd.quorum: false
  - fault: { restore_node: talos-k8s-1 }
  - wait: { node: talos-k8s-1, condition: Ready, timeout: 20s }
  - assert:
      - etcd.quorum: true
  - fault: { restore_process: { node: talos-k8s-2, process: etcd } }
  - wait: { cluster: ready, timeout: 20s }
";

#[test]
fn local_etcd_keeps_quorum_with_one_member_killed_loses_it_with_two_and_a_restored_member_rejoins()
{
    let Some((case, dump, logs)) = run_passing("local_etcd_quorum", ETCD_QUORUM) else {
        return;
    };
    let case = &case;
    // Every step ran: none skipped, each assertion checked for real.
    for s in &case.steps {
        assert_eq!(s.status, Status::Passed, "{}: {dump}", s.description);
        for a in &s.assertions {
            assert_eq!(a.status, Status::Passed, "{dump}");
        }
    }
    let detail = |i: usize| case.steps[i].assertions[0].detail.clone();
    assert!(detail(3).contains("committed"), "{dump}");
    assert!(detail(5).contains("no running member committed"), "{dump}");
    assert!(detail(8).contains("2/3 members running"), "{dump}");
    // The restored member is caught up, said in the wait's detail.
    assert!(
        case.steps[7].detail.contains("caught up"),
        "{}",
        case.steps[7].detail
    );
    // The 10 s idle wait lasted until etcd was steady and said what it skipped.
    assert!(
        case.steps[2].detail.contains("skipped"),
        "{}",
        case.steps[2].detail
    );
    let dir = logs.path().join("local-etcd-quorum");
    for m in ["talos-k8s-1", "talos-k8s-2", "talos-k8s-3"] {
        let log = std::fs::read_to_string(dir.join(format!("etcd-{m}.log"))).unwrap();
        assert!(log.contains(m), "etcd-{m}.log does not name its member");
    }
}

const ETCD_IDLE: &str = "name: local-etcd-leader-kill
topology: mlworkbench-kvm
timeout: 60s
steps:
  - wait: { cluster: ready, timeout: 20s }
  - assert:
      - etcd.quorum: true
";

fn etcd_session(be: &LocalBackend) -> harness::local::LocalSession {
    be.start_local(&cases_of(ETCD_IDLE).remove(0)).unwrap()
}

#[test]
fn local_etcd_leader_kill_yields_the_election_metrics() {
    let _one_at_a_time = crate::support::exclusive();
    if !have_fl("local_etcd_leader_kill") {
        return;
    }
    let logs = tempfile::tempdir().unwrap();
    let be = LocalBackend::new(&root()).with_logs_root(logs.path());
    let mut s = etcd_session(&be);
    assert!(s.observations().metrics["local_etcd_standup_ms"] > 0.0);
    let leader = s.etcd_leader().expect("a leader after stand-up");
    let follower = s
        .etcd_members()
        .into_iter()
        .map(|(n, _)| n)
        .find(|n| *n != leader)
        .unwrap();
    // A follower's death starts no election: no number is made up for it.
    let d = s
        .inject(&harness::scenario::Fault::KillNode(follower.clone()))
        .unwrap();
    assert!(d.contains("was a follower"), "{d}");
    assert!(d.contains("no election"), "{d}");
    s.inject(&harness::scenario::Fault::RestoreNode(follower.clone()))
        .unwrap();
    let w = Wait {
        node: Some(follower),
        timeout: Some(harness::duration::Duration::from_ms(20_000)),
        ..Default::default()
    };
    let deadline = s.now_ms() + 20_000;
    assert_eq!(
        s.advance_until(Probe::Wait(&w), deadline, &|| false),
        Advance::Reached
    );
    assert!(
        !s.observations()
            .metrics
            .contains_key("etcd_leader_election_ms")
    );

    let leader = s.etcd_leader().expect("a leader");
    let d = s
        .inject(&harness::scenario::Fault::KillNode(leader.clone()))
        .unwrap();
    assert!(d.contains("was the leader"), "{d}");
    // The idle wait lasts until the survivors agree on a new leader.
    let w = Wait {
        duration: Some(harness::duration::Duration::from_ms(10_000)),
        ..Default::default()
    };
    let deadline = s.now_ms() + 10_000;
    assert_eq!(
        s.advance_until(Probe::Wait(&w), deadline, &|| false),
        Advance::Reached
    );
    let new = s.etcd_leader().expect("a new leader");
    assert_ne!(new, leader);
    let m = s.observations().metrics;
    let detected = m["etcd_dead_member_detected_ms"];
    let elected = m["etcd_leader_election_ms"];
    // Nobody notices a dead leader before the first election timeout can fire, and a leader is
    // elected no sooner than the term rose.
    assert!(detected >= 0.0 && detected <= elected, "{m:?}");
    let c = s.check(&harness::scenario::Assertion::EtcdQuorum(true));
    match c {
        harness::backend::Check::Pass(d) => {
            assert!(
                d.contains(&format!("after the leader {leader} was killed")),
                "{d}"
            )
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn no_etcd_member_survives_a_dropped_session() {
    let _one_at_a_time = crate::support::exclusive();
    if !have_fl("no_etcd_member_survives") {
        return;
    }
    let logs = tempfile::tempdir().unwrap();
    let be = LocalBackend::new(&root()).with_logs_root(logs.path());
    let mut s = etcd_session(&be);
    let members = s.etcd_members();
    assert_eq!(members.len(), 3, "{members:?}");
    let pids: Vec<u32> = members.iter().filter_map(|(_, p)| *p).collect();
    assert_eq!(pids.len(), 3, "{members:?}");
    assert!(pids.iter().all(|p| pid_alive(*p)));
    drop(s);
    assert_all_gone(&pids, "dropped etcd session");
}

/// `etcd_member_loss`: the member is killed and its data dir deleted; a restore does not bring
/// it back (as on the sim), so losing one more member loses quorum.
const ETCD_MEMBER_LOSS: &str = "name: local-etcd-member-loss
topology: mlworkbench-kvm
timeout: 60s
steps:
  - wait: { cluster: ready, timeout: 20s }
  - fault: { etcd_member_loss: talos-k8s-3 }
  - wait: { duration: 10s }
  - assert:
      - etcd.quorum: true
  - fault: { restore_node: talos-k8s-3 }
  - fault: { kill_node: talos-k8s-2 }
  - assert:
      - etcd.quorum: false
";

#[test]
fn local_etcd_member_loss_keeps_the_member_out() {
    let Some((case, dump, _logs)) = run_passing("local_etcd_member_loss", ETCD_MEMBER_LOSS) else {
        return;
    };
    let case = &case;
    assert!(case.steps[1].detail.contains("data dir deleted"), "{dump}");
    assert!(case.steps[4].detail.contains("stays out"), "{dump}");
    assert!(
        case.steps[6].assertions[0]
            .detail
            .contains("1/3 members running"),
        "{dump}"
    );
}

/// A worker cut off by the fault proxy misses the rounds of its partition (the round closes on
/// its timeout with the other two), and the job's rounds live in PostgreSQL and S3: the
/// offline recompute reads them from there alone.
const PARTITIONED: &str = "name: local-partition
topology: mlworkbench-kvm
timeout: 90s
workload:
  fl: { clients: 3, rounds: 4, strategy: fedavg, min_fit_clients: 2, model: softmax-64-10, round_timeout: 3s }
steps:
  - fl.start: {}
  - wait: { fl.round: 1, timeout: 30s }
  - fault: { partition: { a: [client-2], b: [coordinator] } }
  - fault: { link: { a: [client-0], b: [coordinator], latency: 20ms, bandwidth_mbps: 50 } }
  - wait: { fl.round: 3, timeout: 40s }
  - assert:
      - fl.clients_aggregated: { round: 3, at_most: 2, at_least: 2 }
  - fault: { heal_partition: {} }
  - wait: { fl.round: 4, timeout: 40s }
  - assert:
      - fl.round_completed: { round: 4 }
      - fl.global_model: matches_offline_recompute
";

#[test]
fn a_partitioned_worker_misses_rounds_and_the_rounds_live_in_postgres_and_s3() {
    let Some((case, dump, _logs)) = run_passing("a_partitioned_worker_misses_rounds", PARTITIONED)
    else {
        return;
    };
    let case = &case;
    for st in &case.steps {
        assert_ne!(st.status, Status::Skipped, "{}: {dump}", st.description);
    }
    let link = |name: &str| {
        case.timeline
            .nodes
            .iter()
            .find(|t| t.name == name)
            .map(|t| t.states.iter().map(|(_, s)| s.clone()).collect::<Vec<_>>())
            .unwrap_or_default()
    };
    assert_eq!(link("link client-2"), ["partitioned", "clean"], "{dump}");
    assert_eq!(
        link("link client-0"),
        ["latency 20 ms, 50.000 Mbit/s"],
        "{dump}"
    );
    // The backing services: used where installed (required under CI, see services.rs).
    let start = &case.steps[0].detail;
    let pg = start.contains("metadata in PostgreSQL");
    let s3 = start.contains("models and updates in s3://");
    if in_ci() {
        assert!(pg && s3, "CI must run PostgreSQL and S3: {start}");
    } else if !(pg && s3) {
        crate::support::loud(&format!(
            "PARTLY SKIPPED: the local backend ran without PostgreSQL/S3: {start}"
        ));
    }
    if s3 {
        let recompute = &case.steps[8].assertions[1];
        assert_eq!(recompute.status, Status::Passed, "{dump}");
    }
}

/// The coordinator's store fills up mid-job: uploads after that are refused, nothing it had
/// accepted is lost (every aggregated round still matches the recompute), and it keeps serving.
const DISK_FULL: &str = "name: local-disk-full
topology: mlworkbench-kvm
timeout: 90s
workload:
  fl: { clients: 3, rounds: 6, strategy: fedavg, min_fit_clients: 3, model: softmax-64-10, round_timeout: 3s }
steps:
  - fl.start: {}
  - wait: { fl.round: 2, timeout: 40s }
  - fault: { disk_full: { node: coordinator } }
  - wait: { duration: 8s }
  - assert:
      - fl.round_completed: { round: 2 }
      - fl.global_model: matches_offline_recompute
";

/// The coordinator's clock jumps an hour ahead during a round: its 10-minute round timer fires
/// at once instead of after 10 minutes. client-2's link is slowed to 1 s each way first, so it
/// registers (the round waits for all three) but cannot have uploaded when it is killed at the
/// start of the fit: the round then waits on it, until the jump. Federated evaluation then
/// waits on it again (it is still registered), until a second jump.
const CLOCK_SKEW: &str = "name: local-clock-skew
topology: mlworkbench-kvm
timeout: 90s
workload:
  fl: { clients: 3, rounds: 1, strategy: fedavg, min_fit_clients: 3, model: softmax-64-10, round_timeout: 10m }
steps:
  - fl.start: {}
  - fault: { link: { a: [client-2], b: [coordinator], latency: 1s } }
  - at: { fl.round: 1, phase: fit }
    fault: { kill_process: { node: client-2, process: fl-worker } }
  - at: { after: 1s }
    fault: { clock_skew: { node: coordinator, offset: 1h } }
  - at: { fl.round: 1, phase: evaluate, timeout: 20s }
    fault: { clock_skew: { node: coordinator, offset: 2h } }
  - wait: { fl.round: 1, timeout: 20s }
  - assert:
      - fl.clients_aggregated: { round: 1, at_least: 2, at_most: 2 }
";

/// Runs the scenario's one case alone (the process lock held) and asserts it passed; `None`
/// when the `fl` binary or etcd is missing (skipped loudly, a failure under CI). Also returns
/// the case as JSON for failure messages and the folder its process logs are under.
fn run_passing(
    test: &str,
    text: &str,
) -> Option<(harness::outcome::CaseReport, String, tempfile::TempDir)> {
    if !have_fl(test) {
        return None;
    }
    let _one_at_a_time = crate::support::exclusive();
    let (case, logs) = run_one(text);
    let dump = serde_json::to_string_pretty(&case).unwrap();
    assert_eq!(case.status, Status::Passed, "{dump}");
    Some((case, dump, logs))
}

/// Runs the scenario's one case; also returns the folder its process logs are under.
fn run_one(text: &str) -> (harness::outcome::CaseReport, tempfile::TempDir) {
    let logs = tempfile::tempdir().unwrap();
    let be = LocalBackend::new(&root()).with_logs_root(logs.path());
    let opts = RunOptions {
        jobs: 1,
        timeout_ms: None,
        artifacts_dir: None,
        root: root(),
    };
    let r = run_cases(
        &be,
        &cases_of(text),
        &opts,
        &Silent,
        &AtomicBool::new(false),
    )
    .remove(0);
    (r, logs)
}

#[test]
fn a_full_store_refuses_uploads_and_loses_nothing_accepted() {
    let _one_at_a_time = crate::support::exclusive();
    if !have_fl("a_full_store_refuses_uploads") {
        return;
    }
    let (case, logs) = run_one(DISK_FULL);
    let dump = serde_json::to_string_pretty(&case).unwrap();
    if case.steps[2].status == Status::Skipped && !in_ci() {
        crate::support::loud(&format!("SKIPPED a_full_store: {}", case.steps[2].detail));
        return;
    }
    assert_eq!(case.status, Status::Passed, "{dump}");
    // Only the round in progress when the disk filled may still aggregate after round 2: rounds
    // take tens of ms, so the round after the one waited for can have all its updates stored
    // before the volume is fixed (the offline recompute above checks it). No round that began
    // after the fill aggregates, and some round after 2 ends without a model. Both times are on
    // the case's clock: the fault's mark is taken once the volume is fixed, a round's start is
    // the coordinator's own.
    let filled = case
        .timeline
        .faults
        .iter()
        .find(|m| m.label.starts_with("disk_full"))
        .map(|m| m.at_ms)
        .expect("disk_full marked on the timeline");
    let later: Vec<_> = case.rounds.iter().filter(|r| r.round > 2).collect();
    let aggregated: Vec<_> = later.iter().filter(|r| r.global_digest.is_some()).collect();
    assert!(
        aggregated.len() <= 1,
        "more than one round aggregated after round 2: {dump}"
    );
    for r in &aggregated {
        assert!(
            r.started_ms <= filled,
            "round {} began at {} ms, after the disk filled at {filled} ms, and aggregated: {dump}",
            r.round,
            r.started_ms
        );
    }
    assert!(
        later
            .iter()
            .any(|r| r.global_digest.is_none() && r.failures > 0),
        "no round after the disk filled ended without a model: {dump}"
    );
    // The workers were told the store is full (507 storage_full), not that their body was bad.
    let dir = logs.path().join("local-disk-full");
    let worker = std::fs::read_to_string(dir.join("worker-0.log")).unwrap();
    assert!(worker.contains("storage_full"), "{worker}");
    assert!(!worker.contains("truncated_body"), "{worker}");
}

#[test]
fn a_coordinator_clock_jump_fires_its_round_timer() {
    let _one_at_a_time = crate::support::exclusive();
    if !have_fl("a_coordinator_clock_jump") {
        return;
    }
    let (case, _logs) = run_one(CLOCK_SKEW);
    let dump = serde_json::to_string_pretty(&case).unwrap();
    assert_eq!(case.status, Status::Passed, "{dump}");
    // Without the jump the round would have waited 10 minutes for client-2.
    let r1 = case.rounds.iter().find(|r| r.round == 1).expect("round 1");
    assert_eq!(r1.clients_aggregated, 2, "{dump}");
    assert!(case.wall_ms < 90_000, "{dump}");
}

/// Five clients, three rounds, no fault: the accepted set of every round is all five clients
/// whatever the timing (no round timeout fires), so both backends must aggregate the same
/// updates into the same bits. The pods' requests fit mlworkbench-kvm's nodes (the documented
/// 4 CPU / 16Gi worker pool does not, see scenarios/fl-documented-pool-unschedulable.yaml).
const PARITY_FEDAVG: &str = "name: local-parity-fedavg
topology: mlworkbench-kvm
timeout: 120s
workload:
  fl: { clients: 5, rounds: 3, strategy: fedavg, model: softmax-20-10,
        client_requests: { cpu_millis: 20, memory_mib: 128 }, coordinator_requests: { cpu_millis: 500, memory_mib: 1024 } }
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
    let _one_at_a_time = crate::support::exclusive();
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

fn partition(a: &[&str], b: &[&str]) -> harness::scenario::Fault {
    harness::scenario::Fault::Partition {
        a: a.iter().map(|s| s.to_string()).collect(),
        b: b.iter().map(|s| s.to_string()).collect(),
    }
}

fn heal_all() -> harness::scenario::Fault {
    harness::scenario::Fault::HealPartition {
        a: Vec::new(),
        b: Vec::new(),
    }
}

/// Waits (real time, at most 20 s) until `node`'s member is caught up with a leader.
fn wait_ready(s: &mut harness::local::LocalSession, node: &str) {
    let w = Wait {
        node: Some(node.to_string()),
        timeout: Some(harness::duration::Duration::from_ms(20_000)),
        ..Default::default()
    };
    let deadline = s.now_ms() + 20_000;
    assert_eq!(
        s.advance_until(Probe::Wait(&w), deadline, &|| false),
        Advance::Reached,
        "{node} did not catch up"
    );
}

/// A partition between topology nodes cuts the etcd peer links through the peer proxies:
/// the two-member side keeps quorum, the isolated follower cannot write, and a heal brings it
/// back. The harness's own client requests are not cut (the sim's `etcd.quorum` is a view of
/// the whole cluster too).
#[test]
fn local_etcd_minority_partition_keeps_quorum_on_the_majority_and_heals() {
    let _one_at_a_time = crate::support::exclusive();
    if !have_fl("local_etcd_minority_partition") {
        return;
    }
    let logs = tempfile::tempdir().unwrap();
    let be = LocalBackend::new(&root()).with_logs_root(logs.path());
    let mut s = etcd_session(&be);
    let leader = s.etcd_leader().expect("a leader after stand-up");
    let names: Vec<String> = s.etcd_members().into_iter().map(|(n, _)| n).collect();
    let lone = names.iter().find(|n| **n != leader).unwrap().clone();
    let rest: Vec<&str> = names
        .iter()
        .filter(|n| **n != lone)
        .map(String::as_str)
        .collect();
    let d = s.inject(&partition(&[&lone], &rest)).unwrap();
    assert!(d.contains("keeps a majority"), "{d}");
    assert!(
        d.contains(&format!("{} <-> {lone}", rest[0]))
            || d.contains(&format!("{lone} <-> {}", rest[0])),
        "{d}"
    );
    // The majority writes; the isolated member cannot (its put waits for a leader it cannot reach).
    for n in &rest {
        s.etcd_put_through(n)
            .unwrap_or_else(|e| panic!("{n} on the majority side: {e}"));
    }
    let e = s.etcd_put_through(&lone).unwrap_err();
    assert!(e.contains("no answer within"), "{e}");
    match s.check(&harness::scenario::Assertion::EtcdQuorum(true)) {
        harness::backend::Check::Pass(d) => {
            assert!(d.contains(&format!("{lone} (cut off from")), "{d}");
            assert!(d.contains("failed"), "{d}");
        }
        other => panic!("{other:?}"),
    }
    // No election: the leader kept its majority.
    assert!(
        !s.observations()
            .metrics
            .contains_key("etcd_leader_election_ms")
    );
    let d = s.inject(&heal_all()).unwrap();
    assert!(d.contains("flows again"), "{d}");
    wait_ready(&mut s, &lone);
    s.etcd_put_through(&lone)
        .unwrap_or_else(|e| panic!("{lone} after the heal: {e}"));
}

/// Partitioning the leader away from both followers makes them elect a new leader; the
/// election watch of a leader kill times it (`etcd_leader_election_ms`).
#[test]
fn local_etcd_partitioning_the_leader_triggers_an_election() {
    let _one_at_a_time = crate::support::exclusive();
    if !have_fl("local_etcd_leader_partition") {
        return;
    }
    let logs = tempfile::tempdir().unwrap();
    let be = LocalBackend::new(&root()).with_logs_root(logs.path());
    let mut s = etcd_session(&be);
    // A settled cluster (see SETTLE_MS): an idle wait returns once etcd is steady.
    let w = Wait {
        duration: Some(harness::duration::Duration::from_ms(3_000)),
        ..Default::default()
    };
    let deadline = s.now_ms() + 3_000;
    assert_eq!(
        s.advance_until(Probe::Wait(&w), deadline, &|| false),
        Advance::Reached
    );
    let leader = s.etcd_leader().expect("a leader after stand-up");
    let names: Vec<String> = s.etcd_members().into_iter().map(|(n, _)| n).collect();
    let rest: Vec<&str> = names
        .iter()
        .filter(|n| **n != leader)
        .map(String::as_str)
        .collect();
    let d = s.inject(&partition(&[&leader], &rest)).unwrap();
    assert!(d.contains("cut off from a majority"), "{d}");
    let w = Wait {
        duration: Some(harness::duration::Duration::from_ms(10_000)),
        ..Default::default()
    };
    let deadline = s.now_ms() + 10_000;
    assert_eq!(
        s.advance_until(Probe::Wait(&w), deadline, &|| false),
        Advance::Reached
    );
    let m = s.observations().metrics;
    let detected = m["etcd_dead_member_detected_ms"];
    let elected = m["etcd_leader_election_ms"];
    eprintln!(
        "leader {leader} partitioned: term rose after {detected} ms, new leader after {elected} ms"
    );
    assert!(detected <= elected, "{m:?}");
    match s.check(&harness::scenario::Assertion::EtcdQuorum(true)) {
        harness::backend::Check::Pass(d) => {
            assert!(
                d.contains(&format!("after the leader {leader} was partitioned")),
                "{d}"
            );
            // The old leader, alone, cannot write.
            assert!(d.contains(&format!("{leader} (cut off from")), "{d}");
        }
        other => panic!("{other:?}"),
    }
    assert!(s.etcd_put_through(&leader).is_err());
    s.inject(&heal_all()).unwrap();
    wait_ready(&mut s, &leader);
    let new = s.etcd_leader().expect("a leader after the heal");
    assert_ne!(
        new, leader,
        "pre-vote keeps the rejoining old leader from taking over"
    );
}

/// `disk_full` of a member's node: its data dir is a tmpfs of its own fixed at what it holds.
/// etcd 3.4 keeps committing small writes into its preallocated WAL segment and free bolt
/// pages, and exits on the first write that needs new space; the others keep quorum.
const ETCD_DISK_FULL: &str = "name: local-etcd-disk-full
topology: mlworkbench-kvm
timeout: 60s
steps:
  - wait: { cluster: ready, timeout: 20s }
  - fault: { disk_full: { node: talos-k8s-2 } }
  - assert:
      - etcd.quorum: true
";

#[test]
fn local_etcd_disk_full_reports_the_member_and_keeps_quorum() {
    let _one_at_a_time = crate::support::exclusive();
    if !have_fl("local_etcd_disk_full") {
        return;
    }
    let (case, _logs) = run_one(ETCD_DISK_FULL);
    let dump = serde_json::to_string_pretty(&case).unwrap();
    if case.steps[1].status == Status::Skipped && !in_ci() {
        crate::support::loud(&format!(
            "SKIPPED local_etcd_disk_full: {}",
            case.steps[1].detail
        ));
        return;
    }
    assert_eq!(case.status, Status::Passed, "{dump}");
    assert!(case.steps[1].detail.contains("fixed at"), "{dump}");
    let q = &case.steps[2].assertions[0].detail;
    assert!(q.contains("talos-k8s-2 (data volume full at"), "{dump}");
}
