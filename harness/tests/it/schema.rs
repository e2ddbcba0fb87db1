//! The published schemas are generated from the types and kept in sync; every scenario of the
//! default suite loads and names only what its topology has.

use harness::suite;

use crate::support::root;

fn check_in_sync(path: &str, generated: &str) {
    let p = root().join(path);
    let on_disk =
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("cannot read {}: {e}", p.display()));
    assert!(
        on_disk == generated,
        "{path} is out of date with the types: run `cargo xtask validate --write-schema` and commit it"
    );
}

#[test]
fn scenario_schema_is_in_sync_with_the_types() {
    check_in_sync(
        "scenarios/scenario.schema.json",
        &harness::scenario_schema_json(),
    );
}

#[test]
fn report_schema_is_in_sync_with_the_types() {
    check_in_sync(
        "harness/report.schema.json",
        &harness::report::report_schema_json(),
    );
}

#[test]
fn scenario_schema_names_every_fault_and_assertion_kind() {
    let s = harness::scenario_schema_json();
    for k in harness::scenario::Fault::KINDS
        .iter()
        .chain(harness::scenario::Assertion::KINDS)
    {
        assert!(s.contains(&format!("\"{k}\"")), "schema lacks `{k}`");
    }
}

#[test]
fn every_scenario_of_the_default_suite_validates() {
    let root = root();
    let files = suite::scenario_files(&root.join(suite::SCENARIO_DIR)).expect("list scenarios");
    assert!(!files.is_empty(), "the default suite is empty");
    let mut errors = Vec::new();
    for f in &files {
        if let Err(e) = harness::validate::scenario_file(f, &root) {
            errors.push(e.to_string());
        }
    }
    assert!(
        errors.is_empty(),
        "invalid scenarios:\n{}",
        errors.join("\n")
    );
}
