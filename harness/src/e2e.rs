//! One e2e run end to end: select cases, run them, compare with a baseline, write the reports.
//! `cargo xtask e2e` is a thin shell around [`run`].

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::{Instant, SystemTime};

use crate::backend;
use crate::outcome::{REPORT_SCHEMA, RunReport, Summary};
use crate::report::{self, baseline};
use crate::runner::{self, Progress, RunOptions};
use crate::suite::{self, Selection};

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressMode {
    /// Bars on a terminal, lines in CI or a pipe.
    Auto,
    /// Plain lines.
    Lines,
    /// Nothing.
    Silent,
}

#[derive(Debug, Clone)]
pub struct E2eOptions {
    pub root: PathBuf,
    pub selection: Selection,
    pub backend: String,
    pub jobs: usize,
    pub timeout_ms: Option<u64>,
    /// Reports go to `out_dir/<run-id>/`.
    pub out_dir: PathBuf,
    pub baseline: Option<String>,
    pub save_baseline: Option<String>,
    pub baseline_dir: PathBuf,
    pub threshold_pct: f64,
    pub progress: ProgressMode,
    /// On a real backend, also run every case on `sim` and write the sim-vs-real table.
    pub compare_with_sim: bool,
}

impl E2eOptions {
    /// The defaults of `cargo xtask e2e` for a workspace root.
    pub fn defaults(root: &Path) -> Self {
        Self {
            root: root.to_path_buf(),
            selection: Selection::default(),
            backend: backend::BACKENDS[0].to_string(),
            jobs: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
            timeout_ms: None,
            out_dir: root.join("target/e2e"),
            baseline: None,
            save_baseline: None,
            baseline_dir: root.join("baselines"),
            threshold_pct: baseline::DEFAULT_THRESHOLD_PCT,
            progress: ProgressMode::Auto,
            compare_with_sim: true,
        }
    }
}

#[derive(Debug)]
pub struct E2eResult {
    pub run: RunReport,
    pub dir: PathBuf,
    pub files: Vec<PathBuf>,
    pub saved_baseline: Option<PathBuf>,
    /// The same cases on `sim`, when the run was on a real backend (the comparison's source).
    pub sim_cases: Vec<crate::outcome::CaseReport>,
}

impl E2eResult {
    /// The run failed: a case failed, a metric regressed, or it was interrupted.
    pub fn failed(&self) -> bool {
        self.run.summary.failed > 0
            || self.run.summary.interrupted > 0
            || self
                .run
                .comparison
                .as_ref()
                .is_some_and(|c| c.mismatches > 0)
            || self
                .run
                .baseline
                .as_ref()
                .is_some_and(|b| b.regressions > 0)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum E2eError {
    #[error("{0}")]
    Suite(#[from] suite::SuiteError),
    #[error("{0}")]
    Backend(String),
    #[error("{0}")]
    Report(#[from] report::ReportError),
    #[error("{0}")]
    Baseline(#[from] baseline::BaselineError),
    #[error(
        "no case matches the selection (scenarios {scenarios:?}, filters {filters:?}); `cargo xtask e2e --list` shows the names"
    )]
    NothingSelected {
        scenarios: Vec<String>,
        filters: Vec<String>,
    },
}

/// Runs the selected cases and writes the reports.
pub fn run(opts: &E2eOptions, cancel: &AtomicBool) -> Result<E2eResult, E2eError> {
    let started_at = SystemTime::now();
    let t0 = Instant::now();
    let cases = suite::select(&opts.root, &opts.selection)?;
    if cases.is_empty() {
        return Err(E2eError::NothingSelected {
            scenarios: opts.selection.scenarios.clone(),
            filters: opts.selection.filters.clone(),
        });
    }
    let be = backend::by_name(&opts.backend, &opts.root).map_err(E2eError::Backend)?;
    // Load the baseline before running, so a bad name fails fast.
    let base = match &opts.baseline {
        Some(b) => {
            let path = baseline::resolve(b, &opts.baseline_dir);
            Some((baseline::load(&path)?, path))
        }
        None => None,
    };
    let run_id = crate::clock::run_id(started_at);
    let dir = opts.out_dir.join(&run_id);
    let ropts = RunOptions {
        jobs: opts.jobs.max(1),
        timeout_ms: opts.timeout_ms,
        artifacts_dir: Some(dir.join("artifacts")),
        root: opts.root.clone(),
    };
    let progress: Box<dyn Progress> = match opts.progress {
        ProgressMode::Auto => crate::progress::auto(cases.len()),
        ProgressMode::Lines => Box::new(crate::progress::Lines::new(cases.len())),
        ProgressMode::Silent => Box::new(runner::Silent),
    };
    tracing::info!(
        cases = cases.len(),
        backend = be.name(),
        jobs = ropts.jobs,
        "e2e run {run_id}"
    );
    let reports = runner::run_cases(be.as_ref(), &cases, &ropts, progress.as_ref(), cancel);
    drop(progress);
    let mut sim_cases = Vec::new();
    let comparison = if opts.compare_with_sim && be.name() != "sim" {
        // The same cases, seeds and matrix on the simulator: virtual time, seconds in all.
        let sim = backend::by_name("sim", &opts.root).map_err(E2eError::Backend)?;
        let sopts = RunOptions {
            artifacts_dir: None,
            ..ropts.clone()
        };
        eprintln!(
            "e2e: running the {} case(s) on `sim` too, for the sim-vs-real table",
            cases.len()
        );
        sim_cases = runner::run_cases(sim.as_ref(), &cases, &sopts, &runner::Silent, cancel);
        Some(crate::compare::compare(
            be.name(),
            &sim_cases,
            &reports,
            crate::compare::DEFAULT_TOLERANCE_PCT,
        ))
    } else {
        None
    };
    let mut filters = opts.selection.filters.clone();
    filters.extend(opts.selection.skip.iter().map(|s| format!("--skip {s}")));
    let mut run = RunReport {
        schema: REPORT_SCHEMA.to_string(),
        run_id,
        started_at: crate::clock::rfc3339(started_at),
        wall_ms: 0,
        backend: be.name().to_string(),
        jobs: ropts.jobs,
        filters,
        summary: Summary::of(&reports),
        cases: reports,
        baseline: None,
        comparison,
    };
    if let Some((b, path)) = &base {
        run.baseline = Some(baseline::compare(
            &run,
            b,
            &path.display().to_string(),
            opts.threshold_pct,
        ));
    }
    run.wall_ms = t0.elapsed().as_millis() as u64;
    let files = report::write_all(&dir, &run)?;
    update_latest(&opts.out_dir, &run.run_id);
    let saved_baseline = match &opts.save_baseline {
        Some(name) => Some(baseline::save(&run, name, &opts.baseline_dir)?),
        None => None,
    };
    Ok(E2eResult {
        run,
        dir,
        files,
        saved_baseline,
        sim_cases,
    })
}

/// `out_dir/latest` points at the newest run (best effort: a symlink where supported).
fn update_latest(out_dir: &Path, run_id: &str) {
    let link = out_dir.join("latest");
    let _ = std::fs::remove_file(&link);
    #[cfg(unix)]
    {
        let _ = std::os::unix::fs::symlink(run_id, &link);
    }
}
