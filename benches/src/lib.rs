//! Shared helpers for the criterion benches: where results go, and the row format that
//! `cargo xtask bench` reads to print one table.
//!
//! A bench writes `<target>/bench-results/<bench>.json`: `{"bench": NAME, "rows": [ROW...]}`.
//! A row names its case and either a criterion benchmark id (`group/function`, whose
//! `<target>/criterion/<group>/<function>/new/estimates.json` gives the time) or a measured
//! `value` with its `unit`; optionally the bytes read (for GB/s), a reference benchmark id
//! measured in the same run (for the ratio of throughputs), the peak extra memory as a multiple
//! of one model, Flower's figure for the same case, and targets checked by the table.

pub mod node;

use std::path::PathBuf;

use serde_json::{Value, json};

/// The cargo target directory: `CARGO_TARGET_DIR` if set, else derived from the running
/// bench binary (`<target>/release/deps/<bench>-<hash>`).
pub fn target_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(dir);
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.ancestors().nth(3).map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("target"))
}

/// A target one row must meet.
#[derive(Debug, Clone, Copy)]
pub enum Target {
    /// Throughput at least this multiple of the reference's.
    MinRatio(f64),
    /// Time at most this many milliseconds.
    MaxTimeMs(f64),
    /// Peak extra memory at most this many models.
    MaxMemoryModels(f64),
    /// A measured `value` at most this.
    MaxValue(f64),
    /// A measured `value` at least this.
    MinValue(f64),
}

impl Target {
    fn to_json(self) -> Value {
        let (metric, op, value) = match self {
            Target::MinRatio(v) => ("ratio", ">=", v),
            Target::MaxTimeMs(v) => ("time_ms", "<=", v),
            Target::MaxMemoryModels(v) => ("memory_models", "<=", v),
            Target::MaxValue(v) => ("value", "<=", v),
            Target::MinValue(v) => ("value", ">=", v),
        };
        json!({ "metric": metric, "op": op, "value": value })
    }
}

/// One table row (see the module docs).
#[derive(Debug, Clone, Default)]
pub struct Row {
    pub case: String,
    /// Criterion id `group/function` whose median time this row reports.
    pub criterion: Option<String>,
    /// A value measured by the bench itself, with `unit`.
    pub value: Option<f64>,
    pub unit: Option<String>,
    /// Bytes read per iteration (gives GB/s).
    pub bytes: Option<u64>,
    /// Criterion id of the reference measured in the same run (ratio of throughputs).
    pub reference: Option<String>,
    /// Peak extra heap during one call, as a multiple of one f32 model.
    pub memory_models: Option<f64>,
    /// Flower's figure for the same case, as written in its measurement notes.
    pub flower: Option<String>,
    pub targets: Vec<Target>,
}

impl Row {
    fn to_json(&self) -> Value {
        json!({
            "case": self.case,
            "criterion": self.criterion,
            "value": self.value,
            "unit": self.unit,
            "bytes": self.bytes,
            "reference": self.reference,
            "memory_models": self.memory_models,
            "flower": self.flower,
            "targets": self.targets.iter().map(|t| t.to_json()).collect::<Vec<_>>(),
        })
    }
}

/// Writes `<target>/bench-results/<bench>.json`.
pub fn write_rows(bench: &str, rows: &[Row]) -> std::io::Result<PathBuf> {
    let dir = target_dir().join("bench-results");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!("{bench}.json"));
    let doc = json!({
        "bench": bench,
        "rows": rows.iter().map(Row::to_json).collect::<Vec<_>>(),
    });
    let text = serde_json::to_string_pretty(&doc).map_err(std::io::Error::other)?;
    std::fs::write(&path, text)?;
    Ok(path)
}
