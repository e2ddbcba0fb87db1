//! Backends: where a case runs. One trait, each backend declaring what it can do.
//!
//! A step a backend cannot perform is reported as skipped with the reason, never as passed:
//! [`Capabilities`] answers statically (by kind, before anything runs, so `--list` and the test
//! binary can show it) and [`Session::unsupported`] answers once the case's topology is known
//! (e.g. `etcd.quorum` on a K3s topology whose datastore is sqlite).

use std::collections::BTreeSet;
use std::path::Path;

use crate::load::Case;
use crate::outcome::{RoundReport, Timeline};
use crate::scenario::{Action, Assertion, Collect, Fault, Step, Trigger, Wait};

/// What a backend can perform, by kind as written in scenario files.
#[derive(Debug, Clone, Default)]
pub struct Capabilities {
    pub faults: BTreeSet<&'static str>,
    pub assertions: BTreeSet<&'static str>,
    /// Wait conditions (`duration`, `cluster`, `node`, ...).
    pub waits: BTreeSet<&'static str>,
    /// Trigger kinds (`time`, `after`, `fl.round`).
    pub triggers: BTreeSet<&'static str>,
    /// Workload kinds (`fl`, `gitops`, `k8s`, `flower`: an FL job with `system: flower`).
    pub workloads: BTreeSet<&'static str>,
    /// Time is virtual (a simulated hour costs milliseconds).
    pub virtual_time: bool,
    /// Why the missing kinds are missing, shown in skip reasons.
    pub missing_reason: &'static str,
}

impl Capabilities {
    /// Why this step cannot run on the backend, if it cannot.
    pub fn unsupported(&self, backend: &str, step: &Step, case: &Case) -> Option<String> {
        let why = |what: String| {
            Some(format!(
                "the `{backend}` backend cannot {what}{}",
                if self.missing_reason.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", self.missing_reason)
                }
            ))
        };
        if let Some(t) = &step.at {
            for k in t.condition_keys() {
                if !self.triggers.contains(k) {
                    return why(format!("trigger on `{k}`"));
                }
            }
        }
        match step.action()? {
            Action::Wait(w) => {
                for k in w.condition_keys() {
                    if !self.waits.contains(k) {
                        return why(format!("wait for `{k}`"));
                    }
                }
                None
            }
            Action::Fault(f) => {
                (!self.faults.contains(f.kind())).then(|| why(format!("inject `{}`", f.kind())))?
            }
            Action::FlStart => {
                (!self.workloads.contains("fl")).then(|| why("run an FL job".to_string()))?
            }
            Action::Assert(_) | Action::Collect(_) => {
                let _ = case;
                None
            }
        }
    }

    /// Why this assertion cannot be checked on the backend, if it cannot.
    pub fn unsupported_assertion(&self, backend: &str, a: &Assertion) -> Option<String> {
        (!self.assertions.contains(a.kind())).then(|| {
            format!(
                "the `{backend}` backend cannot check `{}`{}",
                a.kind(),
                if self.missing_reason.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", self.missing_reason)
                }
            )
        })
    }

    /// Whether every assertion of the case would be skipped (the case is then reported skipped
    /// without running). Also true when a workload the case needs is missing.
    pub fn skips_whole_case(&self, backend: &str, case: &Case) -> Option<String> {
        if case.fl.is_some() && !self.workloads.contains("fl") {
            return Some(format!(
                "the `{backend}` backend cannot run an FL job{}",
                suffix(self.missing_reason)
            ));
        }
        if case
            .fl
            .as_ref()
            .is_some_and(|f| f.system == crate::scenario::FlSystem::Flower)
            && !self.workloads.contains("flower")
        {
            return Some(format!(
                "the `{backend}` backend cannot run a real Flower deployment (`system: flower` runs only on `--backend local`, with `cargo xtask setup flower`)"
            ));
        }
        if case.scenario.workload.gitops.is_some() && !self.workloads.contains("gitops") {
            return Some(format!(
                "the `{backend}` backend cannot sync a GitOps tree{}",
                suffix(self.missing_reason)
            ));
        }
        let mut first: Option<String> = None;
        for step in case.steps() {
            if let Some(r) = self.unsupported(backend, step, case) {
                // A skipped wait/fault/fl.start skips everything after it.
                if !matches!(
                    step.action(),
                    Some(Action::Assert(_)) | Some(Action::Collect(_))
                ) {
                    return Some(r);
                }
            }
            if let Some(Action::Assert(list)) = step.action() {
                for a in list {
                    match self.unsupported_assertion(backend, a) {
                        None => return None,
                        Some(r) => {
                            first.get_or_insert(r);
                        }
                    }
                }
            }
        }
        first
    }
}

fn suffix(reason: &str) -> String {
    if reason.is_empty() {
        String::new()
    } else {
        format!(" ({reason})")
    }
}

/// The result of checking one assertion.
#[derive(Debug, Clone, PartialEq)]
pub enum Check {
    Pass(String),
    Fail(String),
    /// Not checkable here (with the reason).
    Skip(String),
}

impl Check {
    /// Pass or fail with the same description.
    pub fn verdict(ok: bool, d: String) -> Check {
        if ok { Check::Pass(d) } else { Check::Fail(d) }
    }
}

/// `fl.accuracy`, shared by the backends: `found` is the (round, accuracy) of the asked round
/// (or of the last round with one), `completed` the rounds completed so far.
pub fn check_fl_accuracy(
    asked: Option<u32>,
    found: Option<(u64, f64)>,
    completed: usize,
    at_least: Option<f64>,
    at_most: Option<f64>,
) -> Check {
    let Some((n, acc)) = found else {
        return Check::Fail(format!(
            "no centralised accuracy for round {} yet ({completed} rounds completed)",
            asked.map_or("(last)".to_string(), |n| n.to_string()),
        ));
    };
    Check::verdict(
        at_least.is_none_or(|v| acc >= v) && at_most.is_none_or(|v| acc <= v),
        format!(
            "accuracy after round {n} is {acc:.4} (wanted{}{})",
            at_least.map_or(String::new(), |v| format!(" >= {v}")),
            at_most.map_or(String::new(), |v| format!(" <= {v}"))
        ),
    )
}

/// `fl.round_latency`, shared by the backends: nearest-rank percentiles of the completed
/// rounds' latencies against the limits; `clock` says which time they are in.
pub fn check_fl_round_latency(
    clock: &str,
    mut latencies_ms: Vec<u64>,
    limits: [(&str, f64, Option<crate::duration::Duration>); 3],
) -> Check {
    if latencies_ms.is_empty() {
        return Check::Fail("no round completed".into());
    }
    latencies_ms.sort_unstable();
    let mut ok = true;
    let mut parts = Vec::new();
    for (name, q, lim) in limits {
        let v = percentile(&latencies_ms, q);
        if let Some(l) = lim {
            ok &= v <= l.as_ms();
            parts.push(format!(
                "{name} {} (limit {l})",
                crate::duration::Duration::from_ms(v)
            ));
        }
    }
    Check::verdict(
        ok,
        format!(
            "{clock}round latency over {} rounds: {}",
            latencies_ms.len(),
            parts.join(", ")
        ),
    )
}

/// Nearest-rank percentile of `v` (sorted ascending), `q` in (0, 1].
pub fn percentile(v: &[u64], q: f64) -> u64 {
    if v.is_empty() {
        return 0;
    }
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

/// Something the runner waits for.
#[derive(Debug, Clone, Copy)]
pub enum Probe<'a> {
    Wait(&'a Wait),
    Trigger(&'a Trigger),
    /// Until the assertion passes (for `within`).
    Assertion(&'a Assertion),
}

/// How an advance ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Advance {
    /// The condition holds.
    Reached,
    /// The virtual deadline passed first; the text says what the state was.
    DeadlinePassed(String),
    /// The wall-clock budget of the case ran out or the run was interrupted.
    Stopped,
    /// The backend stopped by itself (invariant violation, nothing left to run).
    Halted(String),
}

/// Checked by sessions while they advance: true when they must stop (timeout or Ctrl-C).
pub type StopCheck<'a> = &'a dyn Fn() -> bool;

/// What a session observed, for the reports.
#[derive(Debug, Clone, Default)]
pub struct Observations {
    pub timeline: Timeline,
    pub rounds: Vec<RoundReport>,
    pub metrics: std::collections::BTreeMap<String, f64>,
    pub trace_hash: Option<String>,
    pub violations: Vec<String>,
    /// The backend's own repro line, if it has one.
    pub backend_repro: Option<String>,
}

/// A running case on a backend. Not `Send`: a session lives on the worker thread that started it.
pub trait Session {
    /// Current (virtual) time in ms since the start of the case.
    fn now_ms(&self) -> u64;
    /// Why this step cannot be performed on this case (beyond the static capabilities).
    fn unsupported(&self, step: &Step) -> Option<String>;
    /// Why this assertion cannot be checked on this case.
    fn unsupported_assertion(&self, a: &Assertion) -> Option<String>;
    /// Advance until the probe holds or `deadline_ms` passes. Must call `stop` regularly.
    fn advance_until(&mut self, probe: Probe<'_>, deadline_ms: u64, stop: StopCheck<'_>)
    -> Advance;
    /// Inject a fault now; returns what was done.
    fn inject(&mut self, fault: &Fault) -> Result<String, String>;
    /// Start the FL job of the case.
    fn start_fl(&mut self) -> Result<String, String>;
    /// Check an assertion now.
    fn check(&mut self, a: &Assertion) -> Check;
    /// Write the artifacts asked for into `dir`; returns file names written.
    fn collect(&mut self, what: &[Collect], dir: &Path) -> Result<Vec<String>, String>;
    /// Everything observed so far.
    fn observations(&self) -> Observations;
    /// What the last wait did beyond reaching its condition (e.g. the `local` backend's
    /// shortened idle wait, or the state a node wait saw), appended to the step's detail.
    fn take_note(&mut self) -> Option<String> {
        None
    }
}

/// A backend.
pub trait Backend: Send + Sync {
    fn name(&self) -> &'static str;
    fn capabilities(&self) -> Capabilities;
    /// Build the case's world (topology, seed, workloads). Nothing runs yet.
    fn start(&self, case: &Case) -> Result<Box<dyn Session>, String>;
}

/// Names of all backends, the first being the default.
pub const BACKENDS: &[&str] = &["sim", "local", "containers", "kvm", "cluster"];

/// The backend with this name, or why it is not available.
pub fn by_name(name: &str, workspace_root: &Path) -> Result<Box<dyn Backend>, String> {
    match name {
        "sim" => Ok(Box::new(crate::sim::SimBackend::new(workspace_root))),
        "local" => Ok(Box::new(crate::local::LocalBackend::new(workspace_root))),
        "containers" | "kvm" | "cluster" => Err(format!(
            "backend `{name}` is not built yet; use `sim` (available: sim)"
        )),
        other => {
            let names: Vec<String> = BACKENDS.iter().map(|s| s.to_string()).collect();
            let hint = crate::load::did_you_mean(other, &names)
                .map(|b| format!(", did you mean `{b}`?"))
                .unwrap_or_default();
            Err(format!(
                "unknown backend `{other}`{hint} (expected one of {})",
                BACKENDS.join(", ")
            ))
        }
    }
}
