//! The runner: cases in parallel on worker threads, steps in order, `finally` always, a wall-clock
//! budget per case, Ctrl-C honoured between simulation slices.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::backend::{Advance, Backend, Check, Probe, Session};
use crate::load::Case;
use crate::outcome::{AssertionReport, CaseReport, Status, StepReport};
use crate::scenario::{Action, DEFAULT_CASE_TIMEOUT, DEFAULT_HORIZON, Step, to_flow};

/// Default time a trigger may take to fire.
const DEFAULT_TRIGGER_TIMEOUT_MS: u64 = 30 * 60_000;

/// Options of one run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Worker threads (at least 1).
    pub jobs: usize,
    /// Overrides every scenario's wall-clock timeout.
    pub timeout_ms: Option<u64>,
    /// Where `collect` steps write (one subfolder per case); `None` disables collecting.
    pub artifacts_dir: Option<PathBuf>,
    /// The workspace root, for relative paths in reports and repro lines.
    pub root: PathBuf,
}

/// Receives progress while cases run. Called from worker threads.
pub trait Progress: Send + Sync {
    fn case_started(&self, _case: &Case) {}
    fn step_started(&self, _case: &Case, _index: usize, _description: &str) {}
    fn case_finished(&self, _case: &Case, _report: &CaseReport) {}
}

/// Progress that shows nothing.
pub struct Silent;
impl Progress for Silent {}

/// Runs cases on `backend` with `opts.jobs` threads. Results keep the order of `cases`.
/// `cancel` (set by a Ctrl-C handler) stops running cases at their next slice and leaves the
/// rest unstarted (reported as interrupted).
pub fn run_cases(
    backend: &dyn Backend,
    cases: &[Case],
    opts: &RunOptions,
    progress: &dyn Progress,
    cancel: &AtomicBool,
) -> Vec<CaseReport> {
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<CaseReport>>> = Mutex::new(vec![None; cases.len()]);
    let jobs = opts.jobs.clamp(1, cases.len().max(1));
    std::thread::scope(|s| {
        for _ in 0..jobs {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some(case) = cases.get(i) else { break };
                    let report = if cancel.load(Ordering::SeqCst) {
                        not_started(backend, case, opts)
                    } else {
                        progress.case_started(case);
                        // A backend bug must fail its case, not the whole run.
                        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            run_case(backend, case, opts, progress, cancel)
                        }))
                        .unwrap_or_else(|p| {
                            let msg = p
                                .downcast_ref::<String>()
                                .cloned()
                                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                                .unwrap_or_else(|| "unknown panic".into());
                            let mut r = empty_report(backend.name(), case, opts);
                            r.status = Status::Failed;
                            r.reason =
                                Some(format!("the `{}` backend panicked: {msg}", backend.name()));
                            r
                        });
                        progress.case_finished(case, &r);
                        r
                    };
                    if let Ok(mut g) = results.lock() {
                        g[i] = Some(report);
                    }
                }
            });
        }
    });
    let results = results.into_inner().unwrap_or_default();
    results
        .into_iter()
        .zip(cases)
        .map(|(r, c)| r.unwrap_or_else(|| not_started(backend, c, opts)))
        .collect()
}

fn not_started(backend: &dyn Backend, case: &Case, opts: &RunOptions) -> CaseReport {
    let mut r = empty_report(backend.name(), case, opts);
    r.status = Status::Skipped;
    r.interrupted = true;
    r.reason = Some("not run: the run was interrupted (Ctrl-C) before this case started".into());
    r
}

/// A one-line command that runs this case alone.
pub fn repro_line(backend: &str, case: &Case, root: &Path) -> String {
    let file = rel(&case.file, root);
    format!(
        "cargo xtask e2e --backend {backend} --scenario {file} --seed {} --exact '{}'",
        case.seed, case.name
    )
}

fn rel(p: &Path, root: &Path) -> String {
    p.strip_prefix(root).unwrap_or(p).display().to_string()
}

fn empty_report(backend: &str, case: &Case, opts: &RunOptions) -> CaseReport {
    CaseReport {
        name: case.name.clone(),
        scenario: case.scenario.name.clone(),
        file: rel(&case.file, &opts.root),
        description: case.scenario.description.trim().to_string(),
        params: case
            .params
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
        seed: case.seed,
        topology: case.topology.clone(),
        backend: backend.to_string(),
        status: Status::Skipped,
        reason: None,
        interrupted: false,
        wall_ms: 0,
        virtual_ms: 0,
        steps: Vec::new(),
        timeline: Default::default(),
        rounds: Vec::new(),
        metrics: Default::default(),
        trace_hash: None,
        violations: Vec::new(),
        repro: repro_line(backend, case, &opts.root),
        artifacts: Vec::new(),
    }
}

/// Why the case stopped early, if it did.
#[derive(Debug, Clone, PartialEq)]
enum Halt {
    Failed(String),
    TimedOut(String),
    Interrupted,
    /// An earlier wait/fault/fl.start could not run, so later steps cannot either.
    SkippedFrom(String),
}

struct Ctx<'a> {
    backend: &'a dyn Backend,
    case: &'a Case,
    opts: &'a RunOptions,
    cancel: &'a AtomicBool,
    started: Instant,
    timeout_ms: u64,
    horizon_ms: u64,
    timed_out: Arc<AtomicBool>,
}

impl Ctx<'_> {
    fn should_stop(&self) -> bool {
        if self.cancel.load(Ordering::SeqCst) {
            return true;
        }
        // `>=`: a limit of N ms allows less than N ms (a 0 limit allows nothing).
        if self.started.elapsed() >= std::time::Duration::from_millis(self.timeout_ms) {
            self.timed_out.store(true, Ordering::SeqCst);
            return true;
        }
        false
    }

    fn stopped_halt(&self, where_: &str) -> Halt {
        if self.timed_out.load(Ordering::SeqCst) || !self.cancel.load(Ordering::SeqCst) {
            Halt::TimedOut(format!(
                "timed out after {} (wall clock) in {where_}; the limit is the scenario's `timeout` (default {}) or `cargo xtask e2e --timeout`",
                crate::duration::Duration::from_ms(self.timeout_ms),
                DEFAULT_CASE_TIMEOUT
            ))
        } else {
            Halt::Interrupted
        }
    }
}

/// Runs one case to completion (including `finally`).
pub fn run_case(
    backend: &dyn Backend,
    case: &Case,
    opts: &RunOptions,
    progress: &dyn Progress,
    cancel: &AtomicBool,
) -> CaseReport {
    let started = Instant::now();
    let mut report = empty_report(backend.name(), case, opts);
    let timeout_ms = opts
        .timeout_ms
        .or(case.scenario.timeout.map(|d| d.as_ms()))
        .unwrap_or(DEFAULT_CASE_TIMEOUT.as_ms());
    let horizon_ms = case.scenario.horizon.unwrap_or(DEFAULT_HORIZON).as_ms();
    let ctx = Ctx {
        backend,
        case,
        opts,
        cancel,
        started,
        timeout_ms,
        horizon_ms,
        timed_out: Arc::new(AtomicBool::new(false)),
    };
    let caps = backend.capabilities();
    if let Some(reason) = caps.skips_whole_case(backend.name(), case) {
        report.status = Status::Skipped;
        report.reason = Some(reason.clone());
        for (i, st) in case.steps().enumerate() {
            report.steps.push(skipped_step("steps", i, st, &reason));
        }
        report.wall_ms = started.elapsed().as_millis() as u64;
        return report;
    }
    let mut session = match backend.start(case) {
        Ok(s) => s,
        Err(e) => {
            report.status = Status::Failed;
            report.reason = Some(format!(
                "backend `{}` could not start the case: {e}",
                backend.name()
            ));
            report.wall_ms = started.elapsed().as_millis() as u64;
            return report;
        }
    };
    let mut halt: Option<Halt> = None;
    for (i, step) in case.steps().enumerate() {
        let sr = match &halt {
            Some(Halt::SkippedFrom(r)) => skipped_step(
                "steps",
                i,
                step,
                &format!("an earlier step could not run: {r}"),
            ),
            Some(Halt::Failed(_)) => {
                skipped_step("steps", i, step, "not run: an earlier step failed")
            }
            Some(Halt::TimedOut(_)) => {
                skipped_step("steps", i, step, "not run: the case timed out")
            }
            Some(Halt::Interrupted) => {
                skipped_step("steps", i, step, "not run: interrupted (Ctrl-C)")
            }
            None => {
                progress.step_started(case, i, &step.describe());
                let (sr, h) = run_step(&ctx, session.as_mut(), "steps", i, step);
                halt = h;
                sr
            }
        };
        report.steps.push(sr);
    }
    // `finally` runs whatever happened, except after Ctrl-C or a wall-clock timeout, where the
    // budget is gone: its steps are then reported as skipped with that reason.
    let finally_blocked = matches!(halt, Some(Halt::Interrupted) | Some(Halt::TimedOut(_)));
    for (i, step) in case.finally().enumerate() {
        let sr = if finally_blocked {
            skipped_step(
                "finally",
                i,
                step,
                "not run: the case was stopped (timeout or Ctrl-C)",
            )
        } else {
            progress.step_started(case, i, &format!("finally: {}", step.describe()));
            let (sr, h) = run_step(&ctx, session.as_mut(), "finally", i, step);
            if halt.is_none() && matches!(h, Some(Halt::Failed(_)) | Some(Halt::TimedOut(_))) {
                halt = h;
            }
            sr
        };
        report.steps.push(sr);
    }
    let obs = session.observations();
    report.timeline = obs.timeline;
    report.rounds = obs.rounds;
    report.metrics = obs.metrics;
    report.trace_hash = obs.trace_hash;
    report.violations = obs.violations;
    report.virtual_ms = session.now_ms();
    if let Some(dir) = &opts.artifacts_dir {
        report.artifacts = list_artifacts(dir, case);
    }
    drop(session);
    report.wall_ms = started.elapsed().as_millis() as u64;
    report
        .metrics
        .insert("wall_ms".into(), report.wall_ms as f64);
    let (status, reason) = decide(&report.steps, halt.as_ref());
    report.status = status;
    report.reason = reason;
    report.interrupted = matches!(halt, Some(Halt::Interrupted));
    report
}

fn list_artifacts(dir: &Path, case: &Case) -> Vec<String> {
    let d = dir.join(artifact_dir_name(&case.name));
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(&d) {
        for e in rd.flatten() {
            out.push(format!(
                "artifacts/{}/{}",
                artifact_dir_name(&case.name),
                e.file_name().to_string_lossy()
            ));
        }
    }
    out.sort();
    out
}

/// A file-system-safe folder name for a case.
pub fn artifact_dir_name(case: &str) -> String {
    case.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '=' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The case's status from its steps: failed if anything failed; skipped if no assertion was
/// actually checked (everything skipped); passed otherwise.
fn decide(steps: &[StepReport], halt: Option<&Halt>) -> (Status, Option<String>) {
    match halt {
        Some(Halt::Failed(m)) | Some(Halt::TimedOut(m)) => {
            return (Status::Failed, Some(m.clone()));
        }
        Some(Halt::Interrupted) => {
            return (
                Status::Failed,
                Some("interrupted (Ctrl-C) while running".into()),
            );
        }
        _ => {}
    }
    if let Some(s) = steps.iter().find(|s| s.status == Status::Failed) {
        return (
            Status::Failed,
            Some(format!("{}: {}", s.description, s.detail)),
        );
    }
    let checked = steps
        .iter()
        .flat_map(|s| &s.assertions)
        .filter(|a| a.status == Status::Passed)
        .count();
    if checked == 0 {
        let why = steps
            .iter()
            .flat_map(|s| {
                s.assertions
                    .iter()
                    .map(|a| a.detail.clone())
                    .chain(std::iter::once(s.detail.clone()))
            })
            .find(|d| !d.is_empty())
            .unwrap_or_else(|| "no assertion could be checked".into());
        return (
            Status::Skipped,
            Some(format!("every assertion was skipped: {why}")),
        );
    }
    (Status::Passed, None)
}

fn skipped_step(section: &str, index: usize, step: &Step, reason: &str) -> StepReport {
    let assertions = match step.action() {
        Some(Action::Assert(list)) => list
            .iter()
            .map(|a| AssertionReport {
                kind: a.kind().to_string(),
                expected: to_flow(a),
                status: Status::Skipped,
                detail: reason.to_string(),
            })
            .collect(),
        _ => Vec::new(),
    };
    StepReport {
        section: section.to_string(),
        index,
        description: step.describe(),
        note: step.note.clone(),
        status: Status::Skipped,
        detail: reason.to_string(),
        at_ms: 0,
        assertions,
    }
}

fn run_step(
    ctx: &Ctx<'_>,
    session: &mut dyn Session,
    section: &str,
    index: usize,
    step: &Step,
) -> (StepReport, Option<Halt>) {
    let backend = ctx.backend.name();
    let caps = ctx.backend.capabilities();
    let mut sr = StepReport {
        section: section.to_string(),
        index,
        description: step.describe(),
        note: step.note.clone(),
        status: Status::Passed,
        detail: String::new(),
        at_ms: session.now_ms(),
        assertions: Vec::new(),
    };
    let blocking = !matches!(
        step.action(),
        Some(Action::Assert(_)) | Some(Action::Collect(_))
    );
    if let Some(reason) = caps
        .unsupported(backend, step, ctx.case)
        .or_else(|| session.unsupported(step))
    {
        let sk = skipped_step(section, index, step, &reason);
        let halt = blocking.then_some(Halt::SkippedFrom(reason));
        return (sk, halt);
    }
    let stop = || ctx.should_stop();
    // Trigger first.
    if let Some(t) = &step.at {
        let limit = t
            .timeout
            .map(|d| d.as_ms())
            .unwrap_or(DEFAULT_TRIGGER_TIMEOUT_MS);
        let deadline = session.now_ms().saturating_add(limit).min(ctx.horizon_ms);
        match session.advance_until(Probe::Trigger(t), deadline, &stop) {
            Advance::Reached => {}
            Advance::DeadlinePassed(state) => {
                return fail(
                    sr,
                    format!(
                        "trigger `{}` did not fire within {}: {state}",
                        t.describe(),
                        crate::duration::Duration::from_ms(limit)
                    ),
                    session,
                );
            }
            Advance::Stopped => {
                let h = ctx.stopped_halt(&format!(
                    "{section}[{index}] `{}` (waiting for its trigger)",
                    step.describe()
                ));
                sr.status = Status::Failed;
                sr.detail = halt_text(&h);
                return (sr, Some(h));
            }
            Advance::Halted(m) => return fail(sr, m, session),
        }
    }
    sr.at_ms = session.now_ms();
    match step.action() {
        None => fail(sr, "step has no action".into(), session),
        Some(Action::Wait(w)) => {
            let limit = w.timeout.or(w.duration).map(|d| d.as_ms()).unwrap_or(0);
            let deadline = session.now_ms().saturating_add(limit);
            if deadline > ctx.horizon_ms && w.duration.is_some() {
                return fail(
                    sr,
                    format!(
                        "waiting {} would pass the case's virtual horizon of {}",
                        crate::duration::Duration::from_ms(limit),
                        crate::duration::Duration::from_ms(ctx.horizon_ms)
                    ),
                    session,
                );
            }
            let t0 = session.now_ms();
            match session.advance_until(Probe::Wait(w), deadline.min(ctx.horizon_ms), &stop) {
                Advance::Reached => {
                    sr.detail = format!(
                        "reached after {}",
                        crate::duration::Duration::from_ms(session.now_ms() - t0)
                    );
                    if let Some(n) = session.take_note() {
                        sr.detail.push_str(&format!("; {n}"));
                    }
                    (sr, None)
                }
                Advance::DeadlinePassed(state) => fail(
                    sr,
                    format!(
                        "condition not reached within {}: {state}",
                        crate::duration::Duration::from_ms(limit)
                    ),
                    session,
                ),
                Advance::Stopped => {
                    let h = ctx.stopped_halt(&format!("{section}[{index}] `{}`", step.describe()));
                    sr.status = Status::Failed;
                    sr.detail = halt_text(&h);
                    (sr, Some(h))
                }
                Advance::Halted(m) => fail(sr, m, session),
            }
        }
        Some(Action::Fault(f)) => match session.inject(f) {
            Ok(d) => {
                sr.detail = d;
                (sr, None)
            }
            Err(e) => fail(sr, format!("could not inject `{}`: {e}", f.kind()), session),
        },
        Some(Action::FlStart) => match session.start_fl() {
            Ok(d) => {
                sr.detail = d;
                (sr, None)
            }
            Err(e) => fail(sr, e, session),
        },
        Some(Action::Collect(what)) => {
            let Some(dir) = &ctx.opts.artifacts_dir else {
                sr.status = Status::Skipped;
                sr.detail = "collecting is off for this run".into();
                return (sr, None);
            };
            let d = dir.join(artifact_dir_name(&ctx.case.name));
            if let Err(e) = std::fs::create_dir_all(&d) {
                return fail(
                    sr,
                    format!("failed to create {}: {e}", d.display()),
                    session,
                );
            }
            match session.collect(what, &d) {
                Ok(files) => {
                    sr.detail = format!("kept {}", files.join(", "));
                    (sr, None)
                }
                Err(e) => fail(sr, e, session),
            }
        }
        Some(Action::Assert(list)) => {
            let mut halt = None;
            for a in list {
                let expected = to_flow(a);
                let skip = caps
                    .unsupported_assertion(backend, a)
                    .or_else(|| session.unsupported_assertion(a));
                let (status, detail) = if let Some(r) = skip {
                    (Status::Skipped, r)
                } else {
                    let within = match a {
                        crate::scenario::Assertion::NodeCondition { within, .. }
                        | crate::scenario::Assertion::PodPhase { within, .. }
                        | crate::scenario::Assertion::AppStatus { within, .. }
                        | crate::scenario::Assertion::FlRoundCompleted { within, .. } => *within,
                        _ => None,
                    };
                    let mut stopped = None;
                    if let Some(wi) = within {
                        let deadline = session
                            .now_ms()
                            .saturating_add(wi.as_ms())
                            .min(ctx.horizon_ms);
                        match session.advance_until(Probe::Assertion(a), deadline, &stop) {
                            Advance::Stopped => {
                                stopped = Some(
                                    ctx.stopped_halt(&format!("{section}[{index}] `{}`", a.kind())),
                                );
                            }
                            Advance::Halted(m) => stopped = Some(Halt::Failed(m)),
                            Advance::Reached | Advance::DeadlinePassed(_) => {}
                        }
                    }
                    if let Some(h) = stopped {
                        let t = halt_text(&h);
                        halt = Some(h);
                        (Status::Failed, t)
                    } else {
                        match session.check(a) {
                            Check::Pass(d) => (Status::Passed, d),
                            Check::Fail(d) => {
                                let d = match within {
                                    Some(wi) => format!("not within {wi}: {d}"),
                                    None => d,
                                };
                                (Status::Failed, d)
                            }
                            Check::Skip(d) => (Status::Skipped, d),
                        }
                    }
                };
                sr.assertions.push(AssertionReport {
                    kind: a.kind().to_string(),
                    expected,
                    status,
                    detail,
                });
                if halt.is_some() {
                    break;
                }
            }
            let failed: Vec<&AssertionReport> = sr
                .assertions
                .iter()
                .filter(|a| a.status == Status::Failed)
                .collect();
            if !failed.is_empty() {
                sr.status = Status::Failed;
                sr.detail = failed
                    .iter()
                    .map(|a| format!("`{}` expected {}, got: {}", a.kind, a.expected, a.detail))
                    .collect::<Vec<_>>()
                    .join("; ");
                let h = halt
                    .unwrap_or_else(|| Halt::Failed(format!("{}: {}", sr.description, sr.detail)));
                return (sr, Some(h));
            }
            if sr.assertions.iter().all(|a| a.status == Status::Skipped) {
                sr.status = Status::Skipped;
                sr.detail = sr
                    .assertions
                    .first()
                    .map(|a| a.detail.clone())
                    .unwrap_or_default();
            } else {
                let n = sr
                    .assertions
                    .iter()
                    .filter(|a| a.status == Status::Passed)
                    .count();
                sr.detail = format!("{n}/{} assertions passed", sr.assertions.len());
            }
            (sr, None)
        }
    }
}

fn halt_text(h: &Halt) -> String {
    match h {
        Halt::Failed(m) | Halt::TimedOut(m) | Halt::SkippedFrom(m) => m.clone(),
        Halt::Interrupted => "interrupted (Ctrl-C)".into(),
    }
}

fn fail(mut sr: StepReport, msg: String, _session: &mut dyn Session) -> (StepReport, Option<Halt>) {
    sr.status = Status::Failed;
    sr.detail = msg.clone();
    let h = Halt::Failed(format!("{}: {msg}", sr.description));
    (sr, Some(h))
}
