//! Scenario model, runner, backends and reports.
//!
//! Data flow: scenario files ([`scenario`], loaded and checked by [`load`]) expand into
//! [`load::Case`]s; the [`runner`] runs each case on a [`backend::Backend`] (the default is
//! [`sim`], the embedded simulator) and collects [`outcome`]s; [`report`] writes them as
//! `report.json`, `junit.xml`, `report.md`, `report.html` and `repro.txt`; [`suite`] finds the
//! scenario files and selects cases by name. On a real backend, [`compare`] runs every case on
//! `sim` too and writes the sim-vs-real table.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

pub mod backend;
pub mod clock;
pub mod compare;
pub mod duration;
pub mod e2e;
pub mod load;
pub mod local;
pub mod model;
pub mod outcome;
pub mod progress;
pub mod report;
pub mod runner;
pub mod scenario;
pub mod sim;
pub mod suite;
pub mod validate;

/// True under CI (`CI` set to anything but empty, `false` or `0`): progress prints lines, and a
/// real backend's missing engine is an error instead of a fallback.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// The JSON Schema of the scenario format, pretty-printed (published as
/// `scenarios/scenario.schema.json`).
pub fn scenario_schema_json() -> String {
    let schema = schemars::schema_for!(scenario::Scenario);
    serde_json::to_string_pretty(&schema).unwrap_or_default() + "\n"
}
