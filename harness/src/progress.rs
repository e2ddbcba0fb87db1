//! Progress output: a bar per running case on a terminal (indicatif), plain lines otherwise
//! (CI, pipes). Both also log through `tracing`.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use crate::load::Case;
use crate::outcome::{CaseReport, Status};
use crate::report::human_ms;
use crate::runner::Progress;

/// Picks bars on an interactive terminal outside CI, plain lines elsewhere.
pub fn auto(total: usize) -> Box<dyn Progress> {
    if !crate::in_ci() && std::io::stderr().is_terminal() {
        Box::new(Bars::new(total))
    } else {
        Box::new(Lines::new(total))
    }
}

fn verdict(r: &CaseReport) -> String {
    let tag = match r.status {
        Status::Passed => "PASS",
        Status::Failed => "FAIL",
        Status::Skipped => "SKIP",
    };
    let mut s = format!(
        "{tag} {} (virtual {}, wall {})",
        r.name,
        human_ms(r.virtual_ms),
        human_ms(r.wall_ms)
    );
    if let Some(reason) = &r.reason {
        s.push_str(&format!(": {reason}"));
    }
    s
}

/// Plain lines on stderr: one when a case starts, one when it ends.
pub struct Lines {
    total: usize,
    done: AtomicUsize,
}

impl Lines {
    pub fn new(total: usize) -> Self {
        Self {
            total,
            done: AtomicUsize::new(0),
        }
    }
}

impl Progress for Lines {
    fn case_started(&self, case: &Case) {
        tracing::info!(case = %case.name, seed = case.seed, topology = %case.topology, "case started");
        eprintln!("     START {}", case.name);
    }

    fn step_started(&self, case: &Case, index: usize, description: &str) {
        tracing::debug!(case = %case.name, step = index, "{description}");
    }

    fn case_finished(&self, _case: &Case, report: &CaseReport) {
        let n = self.done.fetch_add(1, Ordering::SeqCst) + 1;
        tracing::info!(case = %report.name, status = report.status.as_str(), "case finished");
        eprintln!("[{n:>3}/{}] {}", self.total, verdict(report));
    }
}

/// A spinner per running case plus an overall bar.
pub struct Bars {
    multi: MultiProgress,
    overall: ProgressBar,
    bars: Mutex<BTreeMap<String, ProgressBar>>,
}

impl Bars {
    pub fn new(total: usize) -> Self {
        let multi = MultiProgress::new();
        let overall = multi.add(ProgressBar::new(total as u64));
        overall.set_style(
            ProgressStyle::with_template("{bar:30} {pos}/{len} cases {elapsed}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        Self {
            multi,
            overall,
            bars: Mutex::new(BTreeMap::new()),
        }
    }
}

impl Progress for Bars {
    fn case_started(&self, case: &Case) {
        let pb = self
            .multi
            .insert_before(&self.overall, ProgressBar::new_spinner());
        pb.set_style(
            ProgressStyle::with_template("{spinner} {prefix} {wide_msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        pb.set_prefix(case.name.clone());
        pb.enable_steady_tick(Duration::from_millis(120));
        if let Ok(mut b) = self.bars.lock() {
            b.insert(case.name.clone(), pb);
        }
    }

    fn step_started(&self, case: &Case, index: usize, description: &str) {
        if let Ok(b) = self.bars.lock()
            && let Some(pb) = b.get(&case.name)
        {
            pb.set_message(format!("step {index}: {description}"));
        }
    }

    fn case_finished(&self, case: &Case, report: &CaseReport) {
        if let Ok(mut b) = self.bars.lock()
            && let Some(pb) = b.remove(&case.name)
        {
            pb.finish_and_clear();
            self.multi.remove(&pb);
        }
        let _ = self.multi.println(verdict(report));
        self.overall.inc(1);
    }
}

impl Drop for Bars {
    fn drop(&mut self) {
        self.overall.finish_and_clear();
    }
}
