//! Baselines: the metrics of a run saved outside `target/` (`--save-baseline NAME` writes
//! `baselines/NAME.json`, a file users may commit) and compared later (`--baseline NAME|FILE`).
//!
//! Direction: metrics whose name ends in `accuracy` are better when higher; every other metric
//! (`*_ms`, `*_events`, `loss`) is better when lower. `wall_ms` is recorded but not compared: it
//! measures the machine, not the system under test.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::outcome::{BaselineComparison, BaselineRow, RunReport, Status};

pub const BASELINE_SCHEMA: &str = "fl-harness/baseline/v1";
/// Default regression threshold in percent.
pub const DEFAULT_THRESHOLD_PCT: f64 = 10.0;
/// Metrics recorded but never compared.
const NOT_COMPARED: &[&str] = &["wall_ms"];

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Baseline {
    pub schema: String,
    pub run_id: String,
    pub backend: String,
    /// case name -> metric -> value (passed cases only).
    pub cases: BTreeMap<String, BTreeMap<String, f64>>,
}

#[derive(Debug, thiserror::Error)]
pub enum BaselineError {
    #[error("failed to read baseline {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to parse baseline {path}: {message}")]
    Parse { path: String, message: String },
    #[error("baseline {path} has schema `{found}`, expected `{BASELINE_SCHEMA}`")]
    Schema { path: String, found: String },
    #[error("failed to write baseline {path}: {source}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid baseline name `{0}`: use letters, digits, `-`, `_` and `.`")]
    Name(String),
}

impl Baseline {
    pub fn from_run(run: &RunReport) -> Self {
        let cases = run
            .cases
            .iter()
            .filter(|c| c.status == Status::Passed)
            .map(|c| (c.name.clone(), c.metrics.clone()))
            .collect();
        Baseline {
            schema: BASELINE_SCHEMA.to_string(),
            run_id: run.run_id.clone(),
            backend: run.backend.clone(),
            cases,
        }
    }
}

/// `NAME` -> `dir/NAME.json`; a value containing `/` or ending in `.json` is a file path.
pub fn resolve(name_or_file: &str, dir: &Path) -> PathBuf {
    if name_or_file.contains('/') || name_or_file.ends_with(".json") {
        PathBuf::from(name_or_file)
    } else {
        dir.join(format!("{name_or_file}.json"))
    }
}

pub fn save(run: &RunReport, name: &str, dir: &Path) -> Result<PathBuf, BaselineError> {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
    {
        return Err(BaselineError::Name(name.to_string()));
    }
    let path = dir.join(format!("{name}.json"));
    std::fs::create_dir_all(dir).map_err(|source| BaselineError::Write {
        path: dir.display().to_string(),
        source,
    })?;
    let text = serde_json::to_string_pretty(&Baseline::from_run(run)).unwrap_or_default() + "\n";
    std::fs::write(&path, text).map_err(|source| BaselineError::Write {
        path: path.display().to_string(),
        source,
    })?;
    Ok(path)
}

pub fn load(path: &Path) -> Result<Baseline, BaselineError> {
    let text = std::fs::read_to_string(path).map_err(|source| BaselineError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let b: Baseline = serde_json::from_str(&text).map_err(|e| BaselineError::Parse {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    if b.schema != BASELINE_SCHEMA {
        return Err(BaselineError::Schema {
            path: path.display().to_string(),
            found: b.schema,
        });
    }
    Ok(b)
}

fn higher_is_better(metric: &str) -> bool {
    metric.ends_with("accuracy")
}

/// Compares the run's metrics with the baseline's, case by case, metric by metric.
pub fn compare(
    run: &RunReport,
    base: &Baseline,
    source: &str,
    threshold_pct: f64,
) -> BaselineComparison {
    let mut rows = Vec::new();
    for c in &run.cases {
        let Some(bm) = base.cases.get(&c.name) else {
            continue;
        };
        for (metric, &b) in bm {
            if NOT_COMPARED.contains(&metric.as_str()) {
                continue;
            }
            let Some(&cur) = c.metrics.get(metric) else {
                continue;
            };
            let worse = if higher_is_better(metric) {
                b - cur
            } else {
                cur - b
            };
            let worse_by_pct = if b.abs() > f64::EPSILON {
                worse / b.abs() * 100.0
            } else if worse > 0.0 {
                100.0
            } else {
                0.0
            };
            rows.push(BaselineRow {
                case: c.name.clone(),
                metric: metric.clone(),
                baseline: b,
                current: cur,
                worse_by_pct,
                regression: worse_by_pct > threshold_pct,
            });
        }
    }
    let regressions = rows.iter().filter(|r| r.regression).count();
    BaselineComparison {
        source: source.to_string(),
        threshold_pct,
        regressions,
        rows,
    }
}
