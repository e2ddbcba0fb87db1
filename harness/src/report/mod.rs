//! Report files of a run, all written from one [`RunReport`]:
//! `report.json`, `junit.xml`, `report.md`, `report.html` and `repro.txt`.

pub mod baseline;
pub mod html;
pub mod junit;
pub mod markdown;

use std::path::{Path, PathBuf};

use crate::outcome::{RunReport, Status};

/// The five files every run writes.
pub const FILES: [&str; 5] = [
    "report.json",
    "junit.xml",
    "report.md",
    "report.html",
    "repro.txt",
];

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("failed to write report file {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to serialize {what}: {message}")]
    Serialize { what: &'static str, message: String },
}

fn write(dir: &Path, name: &str, text: &str) -> Result<PathBuf, ReportError> {
    let p = dir.join(name);
    std::fs::write(&p, text).map_err(|source| ReportError::Io {
        path: p.display().to_string(),
        source,
    })?;
    Ok(p)
}

/// Writes all report files into `dir` (created if needed). Returns their paths.
pub fn write_all(dir: &Path, run: &RunReport) -> Result<Vec<PathBuf>, ReportError> {
    std::fs::create_dir_all(dir).map_err(|source| ReportError::Io {
        path: dir.display().to_string(),
        source,
    })?;
    let json = to_json(run)?;
    let junit = junit::to_junit(run)?;
    Ok(vec![
        write(dir, "report.json", &json)?,
        write(dir, "junit.xml", &junit)?,
        write(dir, "report.md", &markdown::to_markdown(run))?,
        write(dir, "report.html", &html::to_html(run))?,
        write(dir, "repro.txt", &repro_txt(run))?,
    ])
}

pub fn to_json(run: &RunReport) -> Result<String, ReportError> {
    serde_json::to_string_pretty(run)
        .map(|s| s + "\n")
        .map_err(|e| ReportError::Serialize {
            what: "report.json",
            message: e.to_string(),
        })
}

/// One line per failed case: the command that runs it alone (scenario file, matrix case, seed,
/// backend), followed by the reason as a comment.
pub fn repro_txt(run: &RunReport) -> String {
    let mut s = String::new();
    let failed: Vec<_> = run
        .cases
        .iter()
        .filter(|c| c.status == Status::Failed)
        .collect();
    if failed.is_empty() {
        s.push_str(&format!(
            "# run {}: no failure ({} passed, {} skipped)\n",
            run.run_id, run.summary.passed, run.summary.skipped
        ));
        return s;
    }
    s.push_str(&format!(
        "# run {}: {} failed case(s); each line runs one alone\n",
        run.run_id,
        failed.len()
    ));
    for c in failed {
        let reason = c.reason.clone().unwrap_or_default().replace('\n', " ");
        s.push_str(&format!("{}  # {}\n", c.repro, reason));
    }
    s
}

/// The JSON Schema of `report.json`, pretty-printed.
pub fn report_schema_json() -> String {
    let schema = schemars::schema_for!(RunReport);
    serde_json::to_string_pretty(&schema).unwrap_or_default() + "\n"
}

/// Milliseconds as `1m02.5s` / `850ms` for humans.
pub fn human_ms(ms: u64) -> String {
    if ms < 1_000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{:.1}s", ms as f64 / 1_000.0)
    } else if ms < 3_600_000 {
        format!("{}m{:02}s", ms / 60_000, (ms / 1_000) % 60)
    } else {
        format!("{}h{:02}m", ms / 3_600_000, (ms / 60_000) % 60)
    }
}
