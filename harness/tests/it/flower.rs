//! `workload.fl.system: flower`: the scenario format's checks, the sim backend's skip, and, on a
//! real Flower deployment (flwr from `cargo xtask setup flower`), that a Flower strategy
//! setting other than the one the scenario declares is caught by `matches_offline_recompute`
//! and that no Flower process (nor any child it started) outlives its session.
//! Without the venv the real-Flower tests skip loudly; under CI they fail.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use harness::backend::{Advance, Probe, Session};
use harness::load::{Case, Catalog, LoadError, expand, parse_str};
use harness::local::LocalBackend;
use harness::local::flower::{FlowerSession, VENV};
use harness::outcome::{CaseReport, Status};
use harness::runner::{RunOptions, Silent, run_cases};
use harness::scenario::{RoundPhase, Trigger};

use crate::support::{in_ci, root};

/// Skips loudly (fails under CI) without the Flower venv.
fn have_flower(test: &str) -> bool {
    if root().join(VENV).join("bin/flower-superlink").is_file() {
        return true;
    }
    let msg = format!("{test}: Flower is not installed in {VENV} (run `cargo xtask setup flower`)");
    if in_ci() {
        panic!("{msg}; CI must have it");
    }
    crate::support::loud(&format!("SKIPPED {msg}"));
    false
}

fn parse(text: &str) -> Result<harness::scenario::Scenario, LoadError> {
    parse_str(
        "scenarios/flower-t.yaml",
        text,
        &Catalog::from_workspace(&root()),
    )
}

fn cases_of(text: &str) -> Vec<Case> {
    let root = root();
    let sc = parse(text).expect("valid scenario");
    expand(&root.join("scenarios/flower-t.yaml"), Arc::new(sc), &[])
}

fn run(backend: &dyn harness::backend::Backend, cases: &[Case]) -> CaseReport {
    let opts = RunOptions {
        jobs: 1,
        timeout_ms: None,
        artifacts_dir: None,
        root: root(),
    };
    run_cases(backend, cases, &opts, &Silent, &AtomicBool::new(false)).remove(0)
}

fn assertion<'a>(case: &'a CaseReport, kind: &str) -> &'a harness::outcome::AssertionReport {
    case.steps
        .iter()
        .flat_map(|s| s.assertions.iter())
        .find(|a| a.kind == kind)
        .unwrap_or_else(|| panic!("no `{kind}` assertion in the report"))
}

#[test]
fn flower_options_need_system_flower_and_parameters_fl_core_knows() {
    let base = "name: f
topology: mlworkbench-kvm
workload:
  fl:
    clients: 3
    rounds: 2
    strategy: fedavgm
    flower: { strategy_params: { server_momentum: 0.5 } }
steps:
  - fl.start: {}
  - assert: [fl.global_model: matches_offline_recompute]
";
    let e = parse(base).unwrap_err().to_string();
    assert!(
        e.contains("scenarios/flower-t.yaml:8:")
            && e.contains("needs `workload.fl.system: flower`"),
        "{e}"
    );
    let typo = base
        .replace("    flower:", "    system: flower\n    flower:")
        .replace("server_momentum", "server_momentun");
    let e = parse(&typo).unwrap_err().to_string();
    assert!(
        e.contains("strategy_params") && e.contains("server_momentun"),
        "{e}"
    );
    let e = parse(&base.replace("    flower:", "    system: flwr\n    flower:"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("flwr") && e.contains("flower"), "{e}");
    let ok = parse(&base.replace("    flower:", "    system: flower\n    flower:"));
    assert!(ok.is_ok(), "{}", ok.unwrap_err());
}

#[test]
fn a_flower_case_is_skipped_on_sim_with_the_reason() {
    let text =
        std::fs::read_to_string(root().join("scenarios/flower-fedavg-supernode-restart.yaml"))
            .unwrap();
    let sim = harness::backend::by_name("sim", &root()).unwrap();
    let case = run(sim.as_ref(), &cases_of(&text));
    assert_eq!(case.status, Status::Skipped, "{case:?}");
    let reason = case.reason.unwrap_or_default();
    assert!(
        reason.contains("Flower") && reason.contains("--backend local"),
        "{reason}"
    );
}

/// Flower runs FedAvgM with server_momentum 0.9 (a run-config override) while the scenario
/// declares 0.0. FedAvgM's first momentum step is the plain average, so round 1 agrees and
/// round 2 must not.
const WRONG_MOMENTUM: &str = "name: flower-wrong-momentum
topology: mlworkbench-kvm
timeout: 5m
workload:
  fl:
    system: flower
    clients: 3
    rounds: 2
    strategy: fedavgm
    min_fit_clients: 3
    flower:
      strategy_params: { server_momentum: 0.0 }
      run_config: { strategy-params: '{\"server_momentum\": 0.9}' }
steps:
  - fl.start: {}
  - wait: { fl.round: 2, timeout: 4m }
  - assert:
      - fl.round_completed: { round: 2 }
      - fl.global_model: matches_offline_recompute
";

#[test]
fn a_wrong_flower_strategy_setting_is_caught_by_the_recompute() {
    if !have_flower("a_wrong_flower_strategy_setting_is_caught") {
        return;
    }
    let _one_at_a_time = crate::support::exclusive();
    let logs = tempfile::tempdir().unwrap();
    let be = LocalBackend::new(&root()).with_logs_root(logs.path());
    let case = run(&be, &cases_of(WRONG_MOMENTUM));
    let dump = serde_json::to_string_pretty(&case).unwrap();
    assert_eq!(case.status, Status::Failed, "{dump}");
    assert_eq!(
        assertion(&case, "fl.round_completed").status,
        Status::Passed,
        "{dump}"
    );
    let g = assertion(&case, "fl.global_model");
    assert_eq!(g.status, Status::Failed, "{dump}");
    // Names the round and the size of the error; round 1 agrees.
    assert!(
        g.detail.contains("round 2 differs: max abs err"),
        "{}",
        g.detail
    );
    assert!(!g.detail.contains("round 1 differs"), "{}", g.detail);
    assert!(
        g.detail.contains("round 1: 3 updates, max abs err"),
        "{}",
        g.detail
    );
    assert!(
        g.detail.contains("'server_momentum': 0.9") || g.detail.contains("\"server_momentum\":0.9"),
        "{}",
        g.detail
    );
    assert!(g.detail.contains("flwr 1.42.0"), "{}", g.detail);
}

/// A process is gone when it no longer exists or is a zombie waiting for its (new) parent.
fn gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(s) => s
            .rfind(')')
            .and_then(|i| s[i + 1..].split_whitespace().next())
            .is_some_and(|st| st == "Z" || st == "X"),
    }
}

#[test]
fn no_flower_process_or_child_outlives_a_dropped_session() {
    if !have_flower("no_flower_process_or_child_outlives_a_dropped_session") {
        return;
    }
    let _one_at_a_time = crate::support::exclusive();
    let logs = tempfile::tempdir().unwrap();
    let case = cases_of(&WRONG_MOMENTUM.replace("rounds: 2", "rounds: 50")).remove(0);
    let mut s = FlowerSession::new(&root(), logs.path(), &case).unwrap();
    s.start_fl().unwrap();
    // Mid-round: the SuperNodes' flwr-clientapp processes are training.
    let t = Trigger {
        fl_round: Some(1),
        phase: Some(RoundPhase::Fit),
        ..Default::default()
    };
    let deadline = s.now_ms() + 180_000;
    assert_eq!(
        s.advance_until(Probe::Trigger(&t), deadline, &|| false),
        Advance::Reached
    );
    let named = s.pids();
    assert_eq!(named.len(), 4, "superlink + 3 supernodes: {named:?}");
    let all = s.all_pids();
    assert!(
        all.len() > named.len(),
        "the Flower processes have children (flower-superexec, flwr-serverapp): {all:?}"
    );
    drop(s);
    let t0 = Instant::now();
    while all.iter().any(|p| !gone(*p)) && t0.elapsed() < Duration::from_secs(15) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let left: Vec<u32> = all.iter().copied().filter(|p| !gone(*p)).collect();
    assert!(left.is_empty(), "Flower processes left behind: {left:?}");
}

/// A ServerApp that dies before writing its capture (here: a strategy name Flower does not
/// have, given to the app through the run config) stops the case with the app's own error
/// (a wait that ran out would say "condition not reached" instead).
#[test]
fn a_flower_serverapp_that_fails_early_stops_the_case_with_its_error() {
    if !have_flower("a_flower_serverapp_that_fails_early") {
        return;
    }
    let _one_at_a_time = crate::support::exclusive();
    let logs = tempfile::tempdir().unwrap();
    let be = LocalBackend::new(&root()).with_logs_root(logs.path());
    let text = WRONG_MOMENTUM
        .replace("clients: 3", "clients: 2")
        .replace("min_fit_clients: 3", "min_fit_clients: 2")
        .replace(
            "run_config: { strategy-params: '{\"server_momentum\": 0.9}' }",
            "run_config: { strategy: fedavgx }",
        );
    let case = run(&be, &cases_of(&text));
    let dump = serde_json::to_string_pretty(&case).unwrap();
    assert_eq!(case.status, Status::Failed, "{dump}");
    let reason = case.reason.clone().unwrap_or_default();
    assert!(
        reason.contains("ServerApp ended without finishing its capture")
            && reason.contains("`fedavgx` is not a Flower strategy"),
        "{dump}"
    );
}
