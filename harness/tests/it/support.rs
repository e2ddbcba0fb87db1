//! Shared helpers: the workspace root, the CI switch, a tiny topology, reports to render.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use harness::outcome::{
    AssertionReport, CaseReport, Marker, REPORT_SCHEMA, RoundReport, RunReport, Status, StepReport,
    Summary, Timeline, Track,
};

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("harness has a parent")
        .to_path_buf()
}

/// True under CI (`CI=true`): a missing tool fails the test there instead of skipping it.
pub use harness::in_ci;

/// A missing external tool: fail in CI, skip loudly elsewhere. Returns true when skipping.
pub fn missing_tool(test: &str, tool: &str, how: &str) -> bool {
    let msg = format!(
        "{test}: `{tool}` is not installed ({how}); install it with `cargo xtask setup ci`"
    );
    if in_ci() {
        panic!("{msg}; CI must have it");
    }
    loud(&format!("SKIPPED {msg}"));
    true
}

/// Prints `msg` straight to the process's stderr: libtest captures `eprintln!` and shows a
/// passing test's output only on failure, so a skip printed that way is never seen.
pub fn loud(msg: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "\n*** {msg} ***\n");
}

/// Finds an executable on PATH.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Two Talos control-plane nodes and a worker on one LAN, with local-path storage: small enough
/// that a case runs in milliseconds.
pub const TINY_TOPOLOGY: &str = r#"
name: tiny
description: three-node test cluster
source: harness tests
distribution: talos
infrastructure: kvm
datastore: etcd
nodes:
  - { name: cp-1, roles: [control-plane], cpu: "2", memory: 4Gi, disks: [{ name: data, size: 20Gi, purpose: local-path }] }
  - { name: cp-2, roles: [control-plane], cpu: "2", memory: 4Gi, disks: [{ name: data, size: 20Gi, purpose: local-path }] }
  - { name: cp-3, roles: [control-plane], cpu: "2", memory: 4Gi, disks: [{ name: data, size: 20Gi, purpose: local-path }] }
  - { name: worker-1, roles: [worker], cpu: "4", memory: 8Gi, disks: [{ name: data, size: 20Gi, purpose: local-path }] }
network: { latency_us: 200, bandwidth_mbps: 1000 }
storage_classes:
  - { name: local-path, provisioner: local-path, default: true }
"#;

/// A temporary workspace with `fixtures/topologies/tiny.yaml` and the given scenario files.
pub fn temp_workspace(scenarios: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    let topo = dir.path().join("fixtures/topologies");
    std::fs::create_dir_all(&topo).expect("mkdir topologies");
    std::fs::write(topo.join("tiny.yaml"), TINY_TOPOLOGY).expect("write topology");
    let sc = dir.path().join("scenarios");
    std::fs::create_dir_all(&sc).expect("mkdir scenarios");
    for (name, text) in scenarios {
        std::fs::write(sc.join(name), text).expect("write scenario");
    }
    dir
}

/// A run with one passed, one failed and one skipped case, with timelines and rounds, for the
/// report-format tests.
pub fn sample_run() -> RunReport {
    let mut cases = Vec::new();
    for (name, status, reason) in [
        ("cp-loss[seed=1]", Status::Passed, None),
        (
            "cp-loss[seed=2]",
            Status::Failed,
            Some(
                "assert etcd.quorum: `etcd.quorum` expected true, got: etcd quorum lost <&> \"x\"",
            ),
        ),
        (
            "fedavg-10",
            Status::Skipped,
            Some("every assertion was skipped: the `sim` backend cannot run an FL job"),
        ),
    ] {
        let steps = vec![StepReport {
            section: "steps".into(),
            index: 0,
            description: "assert etcd.quorum".into(),
            note: Some("two of three members remain".into()),
            status,
            detail: reason.unwrap_or("1/1 assertions passed").into(),
            at_ms: 65_000,
            assertions: vec![AssertionReport {
                kind: "etcd.quorum".into(),
                expected: "{etcd.quorum:true}".into(),
                status,
                detail: "etcd quorum held (leader cp-1)".into(),
            }],
        }];
        cases.push(CaseReport {
            name: name.into(),
            scenario: name.split('[').next().unwrap_or(name).into(),
            file: format!("scenarios/{}.yaml", name.split('[').next().unwrap_or(name)),
            description: "a sample".into(),
            params: BTreeMap::new(),
            seed: 1,
            topology: "tiny".into(),
            backend: "sim".into(),
            status,
            reason: reason.map(str::to_string),
            interrupted: false,
            wall_ms: 120,
            virtual_ms: 600_000,
            steps,
            timeline: Timeline {
                nodes: vec![
                    Track { name: "cp-1".into(), states: vec![(0, "off".into()), (1_000, "booting".into()), (90_000, "Ready".into())] },
                    Track { name: "cp-2".into(), states: vec![(0, "off".into()), (1_000, "booting".into()), (95_000, "Ready".into()), (300_000, "off".into())] },
                ],
                apps: vec![Track { name: "databases/postgres".into(), states: vec![(120_000, "Ready".into()), (360_000, "NotReady".into())] }],
                faults: vec![Marker { at_ms: 300_000, label: "kill_node cp-2".into() }],
            },
            rounds: vec![
                RoundReport { round: 1, started_ms: 100_000, finished_ms: 160_000, latency_ms: 60_000, clients_aggregated: 10, failures: 0, loss: Some(2.1), accuracy: Some(0.31), global_digest: None },
                RoundReport { round: 2, started_ms: 160_000, finished_ms: 230_000, latency_ms: 70_000, clients_aggregated: 9, failures: 1, loss: Some(1.4), accuracy: Some(0.55), global_digest: None },
            ],
            metrics: BTreeMap::from([("nodes_ready_ms".to_string(), 95_000.0), ("fl_final_accuracy".to_string(), 0.55)]),
            trace_hash: Some("ab".repeat(32)),
            violations: Vec::new(),
            repro: format!("cargo xtask e2e --backend sim --scenario scenarios/x.yaml --seed 1 --exact '{name}'"),
            artifacts: Vec::new(),
        });
    }
    RunReport {
        schema: REPORT_SCHEMA.into(),
        run_id: "20261125-060000-1".into(),
        started_at: "2026-11-25T06:00:00Z".into(),
        wall_ms: 400,
        backend: "sim".into(),
        jobs: 2,
        filters: Vec::new(),
        summary: Summary::of(&cases),
        cases,
        baseline: None,
        comparison: None,
    }
}

/// Serialises the tests that start many real processes (the `local` backend's `fl` processes,
/// a Flower deployment): on 2 cores a dozen Python processes starting at once starve a
/// loopback FL round far past its time budget. Poison-tolerant: one failed test does not fail
/// the others.
pub fn exclusive() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}
