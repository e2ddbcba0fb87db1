//! Baselines: saved outside target/, compared with a direction per metric and a threshold.

use harness::report::baseline::{self, Baseline};

use crate::support::sample_run;

#[test]
fn save_and_load_round_trip_and_only_passed_cases_are_kept() {
    let dir = tempfile::tempdir().expect("temp");
    let run = sample_run();
    let p = baseline::save(&run, "nightly", dir.path()).expect("save");
    assert_eq!(p, dir.path().join("nightly.json"));
    let b = baseline::load(&p).expect("load");
    assert_eq!(b.cases.len(), 1, "only the passed case is a baseline");
    assert!(baseline::save(&run, "../escape", dir.path()).is_err());
}

#[test]
fn a_slower_metric_beyond_the_threshold_is_a_regression() {
    let mut run = sample_run();
    let base = Baseline::from_run(&run);
    let case = run
        .cases
        .iter_mut()
        .find(|c| c.name == "cp-loss[seed=1]")
        .expect("case");
    case.metrics
        .insert("nodes_ready_ms".into(), 95_000.0 * 1.05);
    let cmp = baseline::compare(&run, &base, "mem", 10.0);
    assert_eq!(cmp.regressions, 0, "5% slower is within 10%");
    let case = run
        .cases
        .iter_mut()
        .find(|c| c.name == "cp-loss[seed=1]")
        .expect("case");
    case.metrics
        .insert("nodes_ready_ms".into(), 95_000.0 * 1.25);
    case.metrics.insert("fl_final_accuracy".into(), 0.60);
    let cmp = baseline::compare(&run, &base, "mem", 10.0);
    assert_eq!(cmp.regressions, 1, "{cmp:?}");
    let row = cmp.rows.iter().find(|r| r.regression).expect("row");
    assert_eq!(row.metric, "nodes_ready_ms");
    assert!((row.worse_by_pct - 25.0).abs() < 1e-9);
}

#[test]
fn lower_accuracy_is_worse() {
    let mut run = sample_run();
    let base = Baseline::from_run(&run);
    let case = run
        .cases
        .iter_mut()
        .find(|c| c.name == "cp-loss[seed=1]")
        .expect("case");
    case.metrics.insert("fl_final_accuracy".into(), 0.40);
    let cmp = baseline::compare(&run, &base, "mem", 10.0);
    assert_eq!(cmp.regressions, 1, "{cmp:?}");
}

#[test]
fn a_baseline_of_another_schema_is_refused() {
    let dir = tempfile::tempdir().expect("temp");
    let p = dir.path().join("old.json");
    std::fs::write(
        &p,
        r#"{"schema":"other/v0","run_id":"x","backend":"sim","cases":{}}"#,
    )
    .expect("write");
    let e = baseline::load(&p).expect_err("refused").to_string();
    assert!(e.contains("expected `fl-harness/baseline/v1`"), "{e}");
}
