//! The sim-vs-real table: the same cases on the simulator and on a real backend, side by side.
//!
//! A simulator is only as good as its agreement with reality. When `cargo xtask e2e` runs on a
//! real backend (`local`), every case is also run on `sim` with the same seed and the two are
//! compared on what both measured:
//!
//! | quantity | source on both sides | agreement |
//! |---|---|---|
//! | time to detect a dead etcd member | metric `etcd_dead_member_detected_ms` | within the tolerance |
//! | etcd leader election time | metric `etcd_leader_election_ms` | within the tolerance |
//! | FL round completion time | metric `fl_round_p50_ms` (and p95) | within the tolerance |
//! | accepted updates per round | `rounds[].clients_aggregated` | equal |
//! | global model digest per round | `rounds[].global_digest` | equal where both rounds accepted every selected client (no failure, no timeout) |
//!
//! Timings are a measurement, not a verdict: real election timeouts are randomized between 1x
//! and 2x, and a real round pays process start-up and loopback HTTP that the simulator models
//! only roughly, so a timing beyond the tolerance is listed as a disagreement and does not fail
//! the run. Counts and digests are deterministic given the same seed, data and strategy when no
//! timeout or failure picked the accepted set: a digest that differs then is a disagreement that
//! fails the run
//! ([`Comparison::mismatches`]), because then the simulator and the real coordinator did not
//! compute the same model.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::outcome::{CaseReport, Status};

/// Timings within this relative difference agree (the issue's "list every difference beyond
/// 20%").
pub const DEFAULT_TOLERANCE_PCT: f64 = 20.0;

/// Timing metrics both backends emit, with what they mean.
pub const TIMINGS: &[(&str, &str)] = &[
    (
        "etcd_dead_member_detected_ms",
        "time to detect a dead etcd member (kill to a new election)",
    ),
    (
        "etcd_leader_election_ms",
        "etcd leader election time (kill to a new leader)",
    ),
    ("fl_round_p50_ms", "FL round completion time, median"),
    ("fl_round_p95_ms", "FL round completion time, p95"),
];

/// How one row came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Agreement {
    Agree,
    /// Beyond the tolerance or unequal: listed, a measurement.
    Differ,
    /// Must be equal and is not: fails the run.
    Mismatch,
    /// Only one side measured it.
    OneSided,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct ComparisonRow {
    pub quantity: String,
    pub sim: String,
    pub real: String,
    pub agreement: Agreement,
    /// Why it agrees or not, in words.
    pub note: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct CaseComparison {
    pub case: String,
    pub sim_status: Status,
    pub real_status: Status,
    pub rows: Vec<ComparisonRow>,
}

/// The whole table of a run.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Comparison {
    /// The backend the real side ran on.
    pub real_backend: String,
    pub tolerance_pct: f64,
    pub cases: Vec<CaseComparison>,
    /// Rows that differ (timings beyond the tolerance, unequal counts).
    pub differences: usize,
    /// Rows that must agree and do not (digests of equal accepted sets): fail the run.
    pub mismatches: usize,
}

fn ms(v: f64) -> String {
    format!("{v:.0} ms")
}

/// Compares each real case with the sim case of the same name.
pub fn compare(
    real_backend: &str,
    sim: &[CaseReport],
    real: &[CaseReport],
    tolerance_pct: f64,
) -> Comparison {
    let by_name: BTreeMap<&str, &CaseReport> = sim.iter().map(|c| (c.name.as_str(), c)).collect();
    let mut cases = Vec::new();
    for r in real {
        let Some(s) = by_name.get(r.name.as_str()) else {
            continue;
        };
        let rows = compare_case(s, r, tolerance_pct);
        if rows.is_empty() {
            continue;
        }
        cases.push(CaseComparison {
            case: r.name.clone(),
            sim_status: s.status,
            real_status: r.status,
            rows,
        });
    }
    let count = |a: Agreement| {
        cases
            .iter()
            .flat_map(|c| &c.rows)
            .filter(|r| r.agreement == a)
            .count()
    };
    Comparison {
        real_backend: real_backend.to_string(),
        tolerance_pct,
        differences: count(Agreement::Differ),
        mismatches: count(Agreement::Mismatch),
        cases,
    }
}

fn compare_case(s: &CaseReport, r: &CaseReport, tol: f64) -> Vec<ComparisonRow> {
    let mut rows = Vec::new();
    for (metric, what) in TIMINGS {
        let (a, b) = (s.metrics.get(*metric), r.metrics.get(*metric));
        let row = match (a, b) {
            (None, None) => continue,
            (Some(a), Some(b)) => {
                let base = a.abs().max(b.abs()).max(1.0);
                let pct = (a - b).abs() / base * 100.0;
                let agree = pct <= tol;
                ComparisonRow {
                    quantity: format!("{what} (`{metric}`)"),
                    sim: ms(*a),
                    real: ms(*b),
                    agreement: if agree {
                        Agreement::Agree
                    } else {
                        Agreement::Differ
                    },
                    note: format!(
                        "{pct:.0}% apart ({} the {tol:.0}% tolerance)",
                        if agree { "within" } else { "beyond" }
                    ),
                }
            }
            (a, b) => ComparisonRow {
                quantity: format!("{what} (`{metric}`)"),
                sim: a.map_or("-".into(), |v| ms(*v)),
                real: b.map_or("-".into(), |v| ms(*v)),
                agreement: Agreement::OneSided,
                note: format!(
                    "measured on {} only",
                    if a.is_some() { "sim" } else { "the real side" }
                ),
            },
        };
        rows.push(row);
    }
    let sim_rounds: BTreeMap<u32, _> = s.rounds.iter().map(|x| (x.round, x)).collect();
    let real_rounds: BTreeMap<u32, _> = r.rounds.iter().map(|x| (x.round, x)).collect();
    let all: std::collections::BTreeSet<u32> = sim_rounds
        .keys()
        .chain(real_rounds.keys())
        .copied()
        .collect();
    for n in all {
        match (sim_rounds.get(&n), real_rounds.get(&n)) {
            (Some(a), Some(b)) => {
                let same = a.clients_aggregated == b.clients_aggregated;
                // No failure and no timeout on either side: the accepted set is every selected
                // client whatever the timing, so the models must be the same bits.
                let timing_free = same && a.failures == 0 && b.failures == 0;
                rows.push(ComparisonRow {
                    quantity: format!("round {n}: accepted updates"),
                    sim: a.clients_aggregated.to_string(),
                    real: b.clients_aggregated.to_string(),
                    agreement: if same {
                        Agreement::Agree
                    } else {
                        Agreement::Differ
                    },
                    note: if same {
                        "equal".into()
                    } else {
                        "the accepted set depends on timing here (timeouts, dropouts)".into()
                    },
                });
                if let (Some(da), Some(db)) = (&a.global_digest, &b.global_digest) {
                    let (agreement, note) = if da == db {
                        (Agreement::Agree, "identical".to_string())
                    } else if timing_free {
                        (
                            Agreement::Mismatch,
                            "the same updates (every selected client, no timeout) gave different models: sim and real did not compute the same round".into(),
                        )
                    } else if same {
                        (
                            Agreement::Differ,
                            format!(
                                "{} / {} failed or timed-out client(s): which updates were accepted depended on timing; each side is checked against fl-core's recompute of its own set",
                                a.failures, b.failures
                            ),
                        )
                    } else {
                        (
                            Agreement::Differ,
                            "different accepted sets; each side's model is checked against fl-core's recompute of its own set".into(),
                        )
                    };
                    rows.push(ComparisonRow {
                        quantity: format!("round {n}: global model digest"),
                        sim: short(da),
                        real: short(db),
                        agreement,
                        note,
                    });
                }
            }
            (a, b) => rows.push(ComparisonRow {
                quantity: format!("round {n}"),
                sim: if a.is_some() { "completed" } else { "-" }.into(),
                real: if b.is_some() { "completed" } else { "-" }.into(),
                agreement: Agreement::OneSided,
                note: "completed on one side only".into(),
            }),
        }
    }
    rows
}

/// The word the reports print for an agreement.
pub fn agreement_word(a: Agreement) -> &'static str {
    match a {
        Agreement::Agree => "agree",
        Agreement::Differ => "DIFFER",
        Agreement::Mismatch => "MISMATCH",
        Agreement::OneSided => "one side only",
    }
}

fn short(d: &str) -> String {
    d.chars().take(16).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::{RoundReport, Timeline};

    fn case(name: &str, metrics: &[(&str, f64)], rounds: &[(u32, u32, &str)]) -> CaseReport {
        CaseReport {
            name: name.into(),
            scenario: name.into(),
            file: String::new(),
            description: String::new(),
            params: BTreeMap::new(),
            seed: 1,
            topology: "t".into(),
            backend: "x".into(),
            status: Status::Passed,
            reason: None,
            interrupted: false,
            wall_ms: 0,
            virtual_ms: 0,
            steps: Vec::new(),
            timeline: Timeline::default(),
            rounds: rounds
                .iter()
                .map(|(n, k, d)| RoundReport {
                    round: *n,
                    started_ms: 0,
                    finished_ms: 0,
                    latency_ms: 0,
                    clients_aggregated: *k,
                    failures: if *n == 4 { 1 } else { 0 },
                    loss: None,
                    accuracy: None,
                    global_digest: Some(d.to_string()),
                })
                .collect(),
            metrics: metrics.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            trace_hash: None,
            violations: Vec::new(),
            repro: String::new(),
            artifacts: Vec::new(),
        }
    }

    #[test]
    fn timings_beyond_the_tolerance_differ_and_digests_of_equal_sets_must_match() {
        let sim = case(
            "c",
            &[
                ("etcd_leader_election_ms", 1000.0),
                ("fl_round_p50_ms", 100.0),
            ],
            &[(1, 5, "aa"), (2, 5, "bb"), (3, 4, "cc"), (4, 5, "dd")],
        );
        let real = case(
            "c",
            &[
                ("etcd_leader_election_ms", 1150.0),
                ("fl_round_p50_ms", 200.0),
            ],
            &[(1, 5, "aa"), (2, 5, "xx"), (3, 5, "yy"), (4, 5, "zz")],
        );
        let c = compare("local", &[sim], &[real], DEFAULT_TOLERANCE_PCT);
        let rows = &c.cases[0].rows;
        let get = |q: &str| rows.iter().find(|r| r.quantity.starts_with(q)).unwrap();
        assert_eq!(get("etcd leader").agreement, Agreement::Agree, "13% apart");
        assert_eq!(
            get("FL round completion time, median").agreement,
            Agreement::Differ
        );
        assert_eq!(get("round 1: global").agreement, Agreement::Agree);
        assert_eq!(get("round 2: global").agreement, Agreement::Mismatch);
        assert_eq!(get("round 3: accepted").agreement, Agreement::Differ);
        assert_eq!(get("round 3: global").agreement, Agreement::Differ);
        // Round 4 had a failure on both sides: equal counts, but timing picked the set.
        assert_eq!(get("round 4: accepted").agreement, Agreement::Agree);
        assert_eq!(get("round 4: global").agreement, Agreement::Differ);
        assert_eq!(c.mismatches, 1);
        assert_eq!(c.differences, 4);
    }

    #[test]
    fn one_sided_measurements_are_listed_and_unmatched_cases_dropped() {
        let sim = case(
            "c",
            &[("etcd_dead_member_detected_ms", 900.0)],
            &[(1, 3, "a")],
        );
        let real = case("c", &[], &[]);
        let other = case("only-real", &[("fl_round_p50_ms", 5.0)], &[]);
        let c = compare("local", &[sim], &[real, other], 20.0);
        assert_eq!(c.cases.len(), 1);
        assert!(
            c.cases[0]
                .rows
                .iter()
                .all(|r| r.agreement == Agreement::OneSided)
        );
        assert_eq!(c.mismatches, 0);
    }
}
