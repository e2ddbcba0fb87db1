//! What running a case produced: the data every report format is written from.
//!
//! `report.json` is this structure serialized (`RunReport`), versioned by [`REPORT_SCHEMA`]; its
//! JSON Schema is generated from these types into `harness/report.schema.json` (kept in sync by
//! a test). Add fields freely; renaming or removing one bumps the version.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The version tag of `report.json`.
pub const REPORT_SCHEMA: &str = "fl-harness/report/v1";

/// Outcome of a case, a step or an assertion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Passed,
    Failed,
    /// Not performed (the backend cannot, or an earlier step could not); never counted as passed.
    Skipped,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Passed => "passed",
            Status::Failed => "failed",
            Status::Skipped => "skipped",
        }
    }
}

/// One whole run of `cargo xtask e2e` (or of the scenario test binary).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct RunReport {
    /// Always [`REPORT_SCHEMA`].
    pub schema: String,
    /// The folder name under `target/e2e/`.
    pub run_id: String,
    /// UTC start time, RFC 3339.
    pub started_at: String,
    /// Wall time of the whole run.
    pub wall_ms: u64,
    pub backend: String,
    pub jobs: usize,
    /// Name filters given on the command line.
    pub filters: Vec<String>,
    pub summary: Summary,
    pub cases: Vec<CaseReport>,
    /// Present when `--baseline` was given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<BaselineComparison>,
    /// The sim-vs-real table: present when the run was on a real backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comparison: Option<crate::compare::Comparison>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Summary {
    pub total: usize,
    pub passed: usize,
    pub failed: usize,
    pub skipped: usize,
    /// Cases not run because the run was interrupted (Ctrl-C); counted as failed too.
    pub interrupted: usize,
}

impl Summary {
    pub fn of(cases: &[CaseReport]) -> Self {
        let mut s = Summary {
            total: cases.len(),
            ..Summary::default()
        };
        for c in cases {
            match c.status {
                Status::Passed => s.passed += 1,
                Status::Failed => s.failed += 1,
                Status::Skipped => s.skipped += 1,
            }
            if c.interrupted {
                s.interrupted += 1;
            }
        }
        s
    }
}

/// One case: a scenario with one matrix combination.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct CaseReport {
    /// `scenario` or `scenario[seed=1,strategy=krum]`.
    pub name: String,
    pub scenario: String,
    /// The scenario file, relative to the workspace root.
    pub file: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    pub params: BTreeMap<String, String>,
    pub seed: u64,
    pub topology: String,
    pub backend: String,
    pub status: Status,
    /// Why it failed (the first failure) or why it was skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// True when Ctrl-C stopped this case.
    #[serde(default)]
    pub interrupted: bool,
    pub wall_ms: u64,
    /// Virtual time the case covered (sim backend); wall time elsewhere.
    pub virtual_ms: u64,
    pub steps: Vec<StepReport>,
    pub timeline: Timeline,
    pub rounds: Vec<RoundReport>,
    /// Numbers compared against a baseline. Names end with their unit.
    pub metrics: BTreeMap<String, f64>,
    /// Hash of the simulator's event trace (same seed, same hash).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_hash: Option<String>,
    /// Invariant violations the backend reported.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub violations: Vec<String>,
    /// A command that runs this case alone.
    pub repro: String,
    /// Files kept by `collect` steps, relative to the run folder.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub artifacts: Vec<String>,
}

/// One step of a case.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct StepReport {
    /// `steps` or `finally`.
    pub section: String,
    pub index: usize,
    pub description: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    pub status: Status,
    /// What happened, what was expected, or why it was skipped.
    pub detail: String,
    /// Virtual time when the step's action ran.
    pub at_ms: u64,
    /// One entry per assertion of an `assert` step.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub assertions: Vec<AssertionReport>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct AssertionReport {
    /// The kind as written in the scenario, e.g. `etcd.quorum`.
    pub kind: String,
    /// The assertion as written, in one line.
    pub expected: String,
    pub status: Status,
    /// The observed value, or why it was skipped.
    pub detail: String,
}

/// State timelines for the plots.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
pub struct Timeline {
    pub nodes: Vec<Track>,
    pub apps: Vec<Track>,
    pub faults: Vec<Marker>,
}

/// Successive states of one thing (a node, an application).
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
pub struct Track {
    pub name: String,
    /// `(virtual ms, state)` in time order; each state lasts until the next.
    pub states: Vec<(u64, String)>,
}

impl Track {
    /// Pushes `state` at `at_ms` onto the track called `name` in `tracks`, made if new.
    pub fn record(tracks: &mut BTreeMap<String, Track>, name: &str, at_ms: u64, state: &str) {
        tracks
            .entry(name.to_string())
            .or_insert_with(|| Track {
                name: name.to_string(),
                states: Vec::new(),
            })
            .push(at_ms, state);
    }

    /// Appends a state if it differs from the last one.
    pub fn push(&mut self, at_ms: u64, state: &str) {
        if self.states.last().is_none_or(|(_, s)| s != state) {
            self.states.push((at_ms, state.to_string()));
        }
    }
}

/// A fault injected at a virtual time.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Marker {
    pub at_ms: u64,
    pub label: String,
}

/// One FL round.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct RoundReport {
    pub round: u32,
    pub started_ms: u64,
    pub finished_ms: u64,
    pub latency_ms: u64,
    pub clients_aggregated: u32,
    /// Selected clients that failed or did not answer before the round timeout: when > 0 the
    /// accepted set depended on timing.
    #[serde(default)]
    pub failures: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accuracy: Option<f64>,
    /// sha256 of the global model this round aggregated (fl-core's canonical digest); absent
    /// when the round aggregated nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub global_digest: Option<String>,
}

/// `--baseline`: metrics of this run against a stored run.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct BaselineComparison {
    /// Where the baseline came from.
    pub source: String,
    /// A metric regresses when it is worse than the baseline by more than this percentage.
    pub threshold_pct: f64,
    pub regressions: usize,
    pub rows: Vec<BaselineRow>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct BaselineRow {
    pub case: String,
    pub metric: String,
    pub baseline: f64,
    pub current: f64,
    /// Signed change in percent, positive meaning worse.
    pub worse_by_pct: f64,
    pub regression: bool,
}
