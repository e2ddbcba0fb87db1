//! The `local` backend: real `fl coordinator` and `fl worker` processes on 127.0.0.1.
//!
//! Time here is wall time: `now_ms` is real milliseconds since the case started, plus any idle
//! `wait: { duration }` taken while no FL process runs (with nothing running such a wait costs no
//! wall time; with the case's etcd cluster running it lasts until etcd is steady, a few seconds
//! at most: see [`etcd`]; either way the skipped time is said in the step's detail and counted
//! in `local_idle_wait_skipped_ms`). Control-plane nodes of an etcd topology are real etcd
//! members ([`etcd`]). Every process is started by the [`supervisor`], logs to
//! `target/e2e/local/<case>/<process>.log` (the folder is named in `fl.start`'s detail and
//! `collect: [logs]` copies it into the case's artifacts), and is ended by PID when the session
//! is dropped. The coordinator's data dir is a temp dir removed after its processes are gone.
//!
//! Mapping of the scenario's FL workload to the binaries (the same numbers the sim backend
//! reads, taken from the simulator's `FlConfig` defaults where the scenario is silent):
//! clients, rounds, strategy (+ `byzantine_tolerance` as `num_malicious_clients`),
//! `min_fit_clients` (also the clients a round waits for, as in the sim), `round_timeout`,
//! `local_epochs`, learning rate and batch size, the seed (model init, data split, training).
//! Data: `fl`'s FedProx Synthetic(alpha, beta) with alpha = beta = `dirichlet_alpha` and the
//! model's own input width (`synthetic:A,B,FEATURES,MAX`), as the sim; with the sim's seeds and
//! round settings (`plan`), so a case gives the same per-round global digests on both backends
//! when no round timeout fires.

pub mod etcd;
pub mod flbin;
pub mod flower;
pub mod host;
pub mod http;
pub mod proxy;
pub mod services;
pub mod supervisor;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fl_core::job;
use fl_core::round::{FitOutcome, RoundRecord};

use crate::backend::{
    Advance, Backend, Capabilities, Check, Observations, Probe, Session, StopCheck,
    check_fl_accuracy, check_fl_round_latency, percentile,
};
use crate::load::Case;
use crate::outcome::{Marker, RoundReport, Timeline, Track};
use crate::scenario::{
    Assertion, ByzantineAttack, CLIENTS_GROUP, COORDINATOR_GROUP, ClientSet, Collect, Fault,
    FlEndpoint, FlWorkload, ModelCheck, Process, RoundPhase, Step, Trigger, Wait,
};
use flbin::FlBinary;
use supervisor::{Spec, Supervisor};

/// The scenario format's `round_timeout` default (documented there as 10m; the sim uses it too).
const DEFAULT_ROUND_TIMEOUT_MS: u64 = 10 * 60 * 1_000;
/// How often a session polls the coordinator while it waits.
const POLL_MS: u64 = 50;
/// How long a started coordinator may take to answer `/readyz` (it is up in well under 1 s
/// on loopback; the margin covers a loaded 2-core machine).
const READY_TIMEOUT_MS: u64 = 30_000;
/// Worker poll interval: short, so loopback rounds are not paced by polling.
const WORKER_POLL_MS: u64 = 50;
/// A straggler's SIGSTOP/SIGCONT duty cycle: it runs `period / factor` of every period.
const STRAGGLER_PERIOD_MS: u64 = 100;
/// A straggler runs at least this long per period: on a loaded 2-core machine the harness
/// thread that sends SIGSTOP is scheduled up to ~10 ms late, so a 1 ms slice would really be
/// 10 ms and a 100x straggler only 10x. The period grows instead (up to 2 s) so that the run
/// slice stays >= 10 ms and the slowdown is what the scenario asked for.
const STRAGGLER_MIN_RUN_MS: u64 = 10;
const STRAGGLER_MAX_PERIOD_MS: u64 = 2_000;

/// (run, stop) ms of a straggler's duty cycle for a slowdown `factor` >= 1.
fn duty(factor: f64) -> (u64, u64) {
    let period = ((STRAGGLER_MIN_RUN_MS as f64 * factor).round() as u64)
        .clamp(STRAGGLER_PERIOD_MS, STRAGGLER_MAX_PERIOD_MS);
    let run = ((period as f64 / factor).round() as u64).max(1);
    (run, period.saturating_sub(run))
}
/// The admin API key the session reads the coordinator with.
const ADMIN_KEY: &str = "harness-admin-key";

/// Real `fl` processes on 127.0.0.1.
pub struct LocalBackend {
    root: PathBuf,
    logs_root: PathBuf,
    services: services::Need,
}

impl LocalBackend {
    /// Logs go to `<workspace_root>/target/e2e/local/<case>/`.
    pub fn new(workspace_root: &Path) -> Self {
        Self {
            root: workspace_root.to_path_buf(),
            logs_root: workspace_root.join("target/e2e/local"),
            services: services::Need::from_env(),
        }
    }

    /// Whether the coordinator's PostgreSQL and S3 must run (default: required under
    /// `CI=true`, else used where installed).
    pub fn with_services(mut self, need: services::Need) -> Self {
        self.services = need;
        self
    }

    /// Keep process logs under `dir/<case>/` instead.
    pub fn with_logs_root(mut self, dir: &Path) -> Self {
        self.logs_root = dir.to_path_buf();
        self
    }

    /// Where a `system: flower` case logs (None for an `fl` job): see [`flower`].
    pub fn flower_logs(&self, case: &Case) -> Option<PathBuf> {
        case.fl
            .as_ref()
            .is_some_and(|f| f.system == crate::scenario::FlSystem::Flower)
            .then(|| {
                self.logs_root
                    .join(crate::runner::artifact_dir_name(&case.name))
            })
    }

    /// What the local backend can do today.
    pub fn caps() -> Capabilities {
        let set = |v: &[&'static str]| v.iter().copied().collect::<BTreeSet<_>>();
        Capabilities {
            faults: set(&[
                "kill_node",
                "restore_node",
                "kill_process",
                "restore_process",
                "etcd_member_loss",
                "fl_client_dropout",
                "fl_straggler",
                "fl_byzantine",
                "partition",
                "heal_partition",
                "link",
                "disk_full",
                "clock_skew",
            ]),
            assertions: set(&[
                "etcd.quorum",
                "fl.round_completed",
                "fl.global_model",
                "fl.accuracy",
                "fl.round_latency",
                "fl.clients_aggregated",
            ]),
            waits: set(&["duration", "cluster", "node", "fl.round"]),
            triggers: set(&["time", "after", "fl.round"]),
            workloads: set(&["fl", "flower"]),
            virtual_time: false,
            missing_reason: "the local backend runs real `fl` coordinator and worker processes and \
                             the etcd members of control-plane nodes; no kubelet, Kubernetes \
                             API or GitOps controller runs on it yet; network faults act on \
                             the FL links and the etcd peer links",
        }
    }

    /// Starts a session (nothing runs until `fl.start`), typed, for tests that look at PIDs.
    pub fn start_local(&self, case: &Case) -> Result<LocalSession, String> {
        let fl = flbin::find_or_build_fl(&self.root)?;
        let dir = tempfile::Builder::new()
            .prefix("harness-local-")
            .tempdir()
            .map_err(|e| format!("failed to create a temp dir for case {}: {e}", case.name))?;
        let logs = self
            .logs_root
            .join(crate::runner::artifact_dir_name(&case.name));
        if logs.exists() {
            std::fs::remove_dir_all(&logs)
                .map_err(|e| format!("failed to clear {}: {e}", logs.display()))?;
        }
        std::fs::create_dir_all(&logs)
            .map_err(|e| format!("failed to create {}: {e}", logs.display()))?;
        let faults: Vec<&Fault> = case
            .steps()
            .chain(case.finally())
            .filter_map(|s| s.fault.as_ref())
            .collect();
        let (tmpfs, tmpfs_error) = if faults
            .iter()
            .any(|f| matches!(f, Fault::DiskFull { node } if node == COORDINATOR_GROUP))
        {
            match host::Tmpfs::mount(&dir.path().join("coordinator")) {
                Ok(t) => (Some(t), None),
                Err(e) => (
                    None,
                    Some(format!(
                        "the coordinator's store could not get a volume of its own to fill ({e}; needs CAP_SYS_ADMIN)"
                    )),
                ),
            }
        } else {
            (None, None)
        };
        let wants_clock = faults.iter().any(|f| matches!(f, Fault::ClockSkew { .. }));
        let etcd_plan = etcd::Plan::of(&self.root, case)?;
        let mut s = LocalSession {
            tmpfs,
            tmpfs_error,
            wants_clock,
            clock: None,
            fl,
            root: self.root.clone(),
            workload: case.fl.clone(),
            seed: case.seed,
            sup: Supervisor::new(&logs),
            dir,
            started: Instant::now(),
            started_epoch_ms: epoch_ms(),
            idle_skipped_ms: 0,
            job: None,
            markers: Vec::new(),
            tracks: BTreeMap::new(),
            stragglers: Vec::new(),
            last: None,
            recomputed: BTreeMap::new(),
            links: BTreeMap::new(),
            need: self.services,
            services: None,
            stack_up_ms: None,
            etcd_plan,
            etcd: None,
            wait_note: None,
        };
        s.etcd_start()?;
        Ok(s)
    }
}

impl Backend for LocalBackend {
    fn name(&self) -> &'static str {
        "local"
    }

    fn capabilities(&self) -> Capabilities {
        Self::caps()
    }

    fn start(&self, case: &Case) -> Result<Box<dyn Session>, String> {
        if let Some(logs) = self.flower_logs(case) {
            return Ok(Box::new(flower::FlowerSession::new(
                &self.root, &logs, case,
            )?));
        }
        Ok(Box::new(self.start_local(case)?))
    }
}

/// The wall clock in ms since the Unix epoch (the coordinator's and Flower's time base).
pub(crate) fn epoch_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The FL job as started.
struct Job {
    addr: SocketAddr,
    clients: u32,
    /// Worker args by client index (without the Byzantine flag).
    worker_args: Vec<Vec<String>>,
    strategy: String,
    /// `fl.start`, in ms since the epoch (the coordinator's clock).
    started_epoch_ms: u64,
    /// The coordinator was stopped by a fault (not a crash).
    coordinator_killed: bool,
}

/// The coordinator's `/api/v1/fl/rounds`.
#[derive(Debug, Clone, serde::Deserialize)]
struct RoundsView {
    round: u64,
    phase: String,
    finished: bool,
    history: Vec<RoundRecord>,
}

struct Straggler {
    client: u32,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    pid: u32,
}

impl Straggler {
    fn end(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = supervisor::send_signal(self.pid, libc::SIGCONT);
    }
}

/// A case running on real processes.
pub struct LocalSession {
    fl: FlBinary,
    /// The workspace root (the S3 server venv under target/tools).
    root: PathBuf,
    workload: Option<FlWorkload>,
    seed: u64,
    sup: Supervisor,
    dir: tempfile::TempDir,
    started: Instant,
    started_epoch_ms: u64,
    idle_skipped_ms: u64,
    job: Option<Job>,
    markers: Vec<Marker>,
    tracks: BTreeMap<String, Track>,
    stragglers: Vec<Straggler>,
    last: Option<RoundsView>,
    /// Rounds already recomputed offline: round -> digest `fl aggregate` printed.
    recomputed: BTreeMap<u64, String>,
    /// The fault proxy each worker reaches the coordinator through, by client index.
    links: BTreeMap<u32, proxy::Proxy>,
    need: services::Need,
    /// The coordinator's PostgreSQL and S3, once `fl.start` stood them up.
    services: Option<services::Services>,
    /// From `fl.start` to the coordinator ready with every worker started, ms.
    stack_up_ms: Option<u64>,
    /// The coordinator's data dir as a volume of its own, for `disk_full`.
    tmpfs: Option<host::Tmpfs>,
    tmpfs_error: Option<String>,
    /// The case has a `clock_skew`: the coordinator reads a harness-driven clock.
    wants_clock: bool,
    clock: Option<host::ClockDriver>,
    etcd_plan: etcd::Plan,
    /// The case's etcd members, when its topology has them and it uses them.
    etcd: Option<etcd::Cluster>,
    /// What the last wait did beyond reaching its condition (for the step's detail).
    wait_note: Option<String>,
}

impl Drop for LocalSession {
    fn drop(&mut self) {
        for s in &mut self.stragglers {
            s.end();
        }
        // Processes first, then the proxies, then the temp dir (a field, dropped after this).
        services::Services::stop(&mut self.sup);
        self.sup.kill_all();
        self.links.clear();
        self.clock = None;
        // Unmount before the temp dir under it is removed.
        self.tmpfs = None;
        drop(self.etcd.take());
    }
}

/// `client-N` -> N.
fn client_index(node: &str) -> Option<u32> {
    node.strip_prefix("client-")?.parse().ok()
}

fn worker_name(i: u32) -> String {
    format!("worker-{i}")
}

impl LocalSession {
    /// PIDs of every running process, by name.
    pub fn pids(&mut self) -> BTreeMap<String, u32> {
        let mut p = self.sup.pids();
        p.extend(self.etcd_pids());
        p
    }

    /// Where the processes log.
    pub fn log_dir(&self) -> &Path {
        self.sup.log_dir()
    }

    fn track(&mut self, name: &str, state: &str) {
        let now = self.now_ms();
        Track::record(&mut self.tracks, name, now, state);
    }

    fn mark(&mut self, label: String) {
        let at_ms = self.now_ms();
        self.markers.push(Marker { at_ms, label });
    }

    fn spawn(&mut self, name: &str, args: Vec<String>) -> Result<u32, String> {
        let pid = self
            .sup
            .start(
                name,
                Spec {
                    program: self.fl.path.clone(),
                    args,
                },
            )
            .map_err(|e| e.to_string())?;
        self.track(name, "running");
        Ok(pid)
    }

    fn get_json(&self, path: &str) -> Result<(u16, Vec<u8>), String> {
        let job = self.job.as_ref().ok_or("the FL job was never started")?;
        http::get(job.addr, path, &[("x-api-key", ADMIN_KEY)])
    }

    /// Waits until the coordinator answers `/readyz`.
    fn wait_ready(&mut self) -> Result<(), String> {
        let t0 = Instant::now();
        for _ in 0..READY_TIMEOUT_MS / POLL_MS + 1 {
            if let Ok((200, _)) = self.get_json("/readyz") {
                return Ok(());
            }
            if !self.sup.is_running("coordinator") {
                return Err(format!(
                    "the fl coordinator exited before it was ready (code {:?}):\n{}",
                    self.sup.exit_code("coordinator"),
                    self.sup.log_tail("coordinator", 15)
                ));
            }
            if t0.elapsed() >= Duration::from_millis(READY_TIMEOUT_MS) {
                break;
            }
            std::thread::sleep(Duration::from_millis(POLL_MS));
        }
        Err(format!(
            "the fl coordinator did not answer /readyz within {READY_TIMEOUT_MS} ms:\n{}",
            self.sup.log_tail("coordinator", 15)
        ))
    }

    /// Reads `/api/v1/fl/rounds` and keeps it for the reports.
    fn poll(&mut self) -> Result<&RoundsView, String> {
        let (status, body) = self.get_json("/api/v1/fl/rounds")?;
        if status != 200 {
            return Err(format!(
                "GET /api/v1/fl/rounds answered {status}: {}",
                String::from_utf8_lossy(&body)
            ));
        }
        let v: RoundsView = serde_json::from_slice(&body)
            .map_err(|e| format!("failed to parse /api/v1/fl/rounds: {e}"))?;
        self.last = Some(v);
        Ok(self.last.as_ref().expect("just set"))
    }

    /// Something that stops a wait: the coordinator exited without a fault asking for it.
    fn crashed(&mut self) -> Option<String> {
        let job = self.job.as_ref()?;
        if job.coordinator_killed || self.sup.is_running("coordinator") {
            return None;
        }
        Some(format!(
            "the fl coordinator exited by itself (code {:?}); last log lines:\n{}",
            self.sup.exit_code("coordinator"),
            self.sup.log_tail("coordinator", 15)
        ))
    }

    /// Polls until `pred` holds on the coordinator's rounds, the deadline passes or `stop`.
    fn poll_until(
        &mut self,
        deadline_ms: u64,
        stop: StopCheck<'_>,
        pred: impl Fn(&RoundsView) -> bool,
    ) -> Advance {
        // A killed coordinator does not answer: keep the last view and wait.
        self.poll_loop(deadline_ms, stop, |s| s.poll().is_ok_and(&pred))
    }

    /// Every [`POLL_MS`] until `reached`, the deadline, `stop`, or a coordinator that exited by
    /// itself.
    fn poll_loop(
        &mut self,
        deadline_ms: u64,
        stop: StopCheck<'_>,
        mut reached: impl FnMut(&mut Self) -> bool,
    ) -> Advance {
        let budget = deadline_ms.saturating_sub(self.now_ms());
        for _ in 0..budget / POLL_MS + 2 {
            if stop() {
                return Advance::Stopped;
            }
            if let Some(c) = self.crashed() {
                return Advance::Halted(c);
            }
            if reached(self) {
                return Advance::Reached;
            }
            if self.now_ms() >= deadline_ms {
                break;
            }
            std::thread::sleep(Duration::from_millis(POLL_MS));
        }
        Advance::DeadlinePassed(self.state_text())
    }

    fn state_text(&self) -> String {
        match &self.last {
            None => "the coordinator has not answered yet".into(),
            Some(v) => format!(
                "the coordinator is in round {} ({}), {} round(s) completed{}",
                v.round,
                v.phase,
                v.history.len(),
                if v.finished { ", job finished" } else { "" }
            ),
        }
    }

    /// Sleeps until `until_ms` (session time); a wait with nothing running costs no wall time.
    fn sleep_until(&mut self, until_ms: u64, stop: StopCheck<'_>) -> Advance {
        if let Some(a) = self.etcd_idle_wait(until_ms, stop) {
            return a;
        }
        if self.sup.pids().is_empty() {
            self.idle_skipped_ms += until_ms.saturating_sub(self.now_ms());
            return Advance::Reached;
        }
        let budget = until_ms.saturating_sub(self.now_ms());
        for _ in 0..budget / POLL_MS + 2 {
            if stop() {
                return Advance::Stopped;
            }
            if let Some(c) = self.crashed() {
                return Advance::Halted(c);
            }
            let now = self.now_ms();
            if now >= until_ms {
                return Advance::Reached;
            }
            std::thread::sleep(Duration::from_millis(POLL_MS.min(until_ms - now)));
        }
        Advance::Reached
    }

    fn check_fl(&mut self, a: &Assertion) -> Check {
        let Some(job) = self.job.as_ref() else {
            return Check::Fail("the FL job was never started (`fl.start`)".into());
        };
        let job_started_epoch = job.started_epoch_ms;
        let strategy = job.strategy.clone();
        if let Err(e) = self.poll()
            && self.last.is_none()
        {
            return Check::Fail(format!("could not read the coordinator's rounds: {e}"));
        }
        let Some(view) = self.last.clone() else {
            return Check::Fail("the coordinator never answered".into());
        };
        let rounds = &view.history;
        let verdict = Check::verdict;
        let find = |n: u32| rounds.iter().find(|r| r.round == u64::from(n));
        match a {
            Assertion::FlRoundCompleted { round, within } => match find(*round) {
                Some(r) if r.completed_ms.is_some() => {
                    let since = r
                        .completed_ms
                        .unwrap_or_default()
                        .saturating_sub(job_started_epoch);
                    verdict(
                        within.is_none_or(|w| since <= w.as_ms()),
                        format!(
                            "round {round} completed {} after the job started (wall clock), {} of {} updates accepted",
                            crate::duration::Duration::from_ms(since),
                            r.accepted.len(),
                            r.selected.len()
                        ),
                    )
                }
                _ => Check::Fail(format!(
                    "round {round} has not completed ({} done; {})",
                    rounds.len(),
                    self.state_text()
                )),
            },
            Assertion::FlGlobalModel(ModelCheck::MatchesOfflineRecompute) => {
                let aggregated: Vec<(u64, String)> = rounds
                    .iter()
                    .filter_map(|r| match &r.fit {
                        Some(FitOutcome::Aggregated { global_digest, .. }) => {
                            Some((r.round, global_digest.clone()))
                        }
                        _ => None,
                    })
                    .collect();
                if aggregated.is_empty() {
                    return Check::Fail("no round aggregated a model to compare".into());
                }
                let mut bad = Vec::new();
                for (round, want) in &aggregated {
                    match self.recompute(*round, &strategy) {
                        Ok(got) if &got == want => {}
                        Ok(got) => bad.push(format!(
                            "round {round}: coordinator {want}, `fl aggregate` {got}"
                        )),
                        Err(e) => return Check::Fail(e),
                    }
                }
                if bad.is_empty() {
                    Check::Pass(format!(
                        "{} aggregated round(s): the coordinator's global model digests equal `fl export-round` + `fl aggregate` of the stored updates ({strategy})",
                        aggregated.len()
                    ))
                } else {
                    Check::Fail(format!("digests differ: {}", bad.join("; ")))
                }
            }
            Assertion::FlAccuracy {
                round,
                at_least,
                at_most,
            } => {
                let r = match round {
                    Some(n) => find(*n),
                    None => rounds.iter().rev().find(|r| accuracy(r).is_some()),
                };
                check_fl_accuracy(
                    *round,
                    r.and_then(|r| accuracy(r).map(|a| (r.round, a))),
                    rounds.len(),
                    *at_least,
                    *at_most,
                )
            }
            Assertion::FlRoundLatency { p50, p95, p99 } => check_fl_round_latency(
                "wall-clock ",
                rounds.iter().filter_map(latency_ms).collect(),
                [("p50", 0.5, *p50), ("p95", 0.95, *p95), ("p99", 0.99, *p99)],
            ),
            Assertion::FlClientsAggregated {
                round,
                at_least,
                at_most,
            } => match find(*round) {
                None => Check::Fail(format!("round {round} has not completed")),
                Some(r) => {
                    let n = r.accepted.len() as u32;
                    verdict(
                        at_least.is_none_or(|m| n >= m) && at_most.is_none_or(|m| n <= m),
                        format!(
                            "round {round} aggregated {n} of {} selected updates ({} failures)",
                            r.selected.len(),
                            r.failures.len()
                        ),
                    )
                }
            },
            other => Check::Skip(format!(
                "the `local` backend cannot check `{}`",
                other.kind()
            )),
        }
    }

    /// `fl export-round` + `fl aggregate` of a stored round; the digest `fl aggregate` printed.
    fn recompute(&mut self, round: u64, strategy: &str) -> Result<String, String> {
        if let Some(d) = self.recomputed.get(&round) {
            return Ok(d.clone());
        }
        let data = self.dir.path().join("coordinator");
        let out = self.dir.path().join(format!("export-{round}"));
        let run = |args: Vec<String>, what: &str| -> Result<String, String> {
            let o = std::process::Command::new(&self.fl.path)
                .args(&args)
                .output()
                .map_err(|e| format!("failed to run `fl {what}` for round {round}: {e}"))?;
            if !o.status.success() {
                return Err(format!(
                    "`fl {what}` failed for round {round}: {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                ));
            }
            Ok(String::from_utf8_lossy(&o.stdout).into_owned())
        };
        let _ = std::fs::remove_dir_all(&out);
        // With PostgreSQL and S3 the export reads them alone, from an empty data dir: what the
        // coordinator acknowledged must be in the database and the bucket, not only on its disk.
        let svc_args = self.services.as_ref().map(|s| s.args()).unwrap_or_default();
        let data = if self.services.as_ref().is_some_and(|s| s.s3.is_some()) {
            let fresh = self.dir.path().join(format!("export-cache-{round}"));
            let _ = std::fs::remove_dir_all(&fresh);
            fresh
        } else {
            data
        };
        let mut export: Vec<String> = vec![
            "export-round".into(),
            "--data-dir".into(),
            data.display().to_string(),
            "--round".into(),
            round.to_string(),
            "--to".into(),
            out.display().to_string(),
        ];
        export.extend(svc_args);
        run(export, "export-round")?;
        let info_path = out.join("round.json");
        let info: serde_json::Value = std::fs::read(&info_path)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
            .map_err(|e| format!("failed to read {}: {e}", info_path.display()))?;
        let mut args: Vec<String> = vec![
            "aggregate".into(),
            "--strategy".into(),
            info["strategy"].as_str().unwrap_or(strategy).to_string(),
            "--updates".into(),
            out.display().to_string(),
            "--global".into(),
            out.join("global/base.safetensors").display().to_string(),
            "--state".into(),
            out.join("global/strategy-state.safetensors")
                .display()
                .to_string(),
            "--round".into(),
            round.to_string(),
            "--seed".into(),
            info["dp_seed"].to_string(),
            "--out".into(),
            out.join("recomputed.safetensors").display().to_string(),
        ];
        if let Some(params) = info["strategy_params"].as_object() {
            for (k, v) in params {
                let v = v
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| v.to_string());
                args.push("--param".into());
                args.push(format!("{k}={v}"));
            }
        }
        let stdout = run(args, "aggregate")?;
        let digest = stdout
            .lines()
            .map(str::trim)
            .rfind(|l| !l.is_empty())
            .ok_or_else(|| format!("`fl aggregate` printed no digest for round {round}"))?
            .to_string();
        self.recomputed.insert(round, digest.clone());
        Ok(digest)
    }

    /// Indices of the job's clients a set picks.
    fn clients_of(&self, set: &ClientSet, kind: &str) -> Result<Vec<u32>, String> {
        let job = self
            .job
            .as_ref()
            .ok_or_else(|| format!("`{kind}` needs a running FL job (`fl.start` first)"))?;
        let ids = set.resolve(job.clients);
        if ids.is_empty() {
            return Err(format!("`{kind}` selects no client"));
        }
        Ok(ids)
    }

    fn end_straggler(&mut self, client: u32) {
        for s in self.stragglers.iter_mut().filter(|s| s.client == client) {
            s.end();
        }
        self.stragglers.retain(|s| s.client != client);
    }

    fn kill_worker(&mut self, i: u32) -> Result<u32, String> {
        self.end_straggler(i);
        let name = worker_name(i);
        let pid = self.sup.kill(&name).map_err(|e| e.to_string())?;
        self.track(&name, "killed");
        Ok(pid)
    }

    fn inject_fl(&mut self, fault: &Fault) -> Result<String, String> {
        let kind = fault.kind();
        let text = match fault {
            Fault::FlClientDropout(set) => {
                let ids = self.clients_of(set, kind)?;
                let mut done = Vec::new();
                for i in ids {
                    let pid = self.kill_worker(i)?;
                    done.push(format!("client-{i} (pid {pid})"));
                }
                format!(
                    "fl_client_dropout: SIGKILL {} (they stop answering)",
                    done.join(", ")
                )
            }
            Fault::FlStraggler { clients, factor } => {
                if !(factor.is_finite() && *factor >= 1.0) {
                    return Err(format!(
                        "fl_straggler factor {factor} must be a finite number >= 1"
                    ));
                }
                let ids = self.clients_of(clients, kind)?;
                let (run_ms, stop_ms) = duty(*factor);
                let mut done = Vec::new();
                for i in ids {
                    self.end_straggler(i);
                    let name = worker_name(i);
                    let pid = self
                        .sup
                        .pid(&name)
                        .ok_or_else(|| format!("client-{i} is not running"))?;
                    let stop = Arc::new(AtomicBool::new(false));
                    let flag = stop.clone();
                    let thread = std::thread::Builder::new()
                        .name(format!("straggle-{name}"))
                        .spawn(move || duty_cycle(pid, run_ms, stop_ms, &flag))
                        .map_err(|e| format!("failed to start the straggler of {name}: {e}"))?;
                    self.stragglers.push(Straggler {
                        client: i,
                        stop,
                        thread: Some(thread),
                        pid,
                    });
                    self.track(&name, "straggling");
                    done.push(format!("client-{i} (pid {pid})"));
                }
                format!(
                    "fl_straggler x{factor}: {} run {run_ms} ms of every {} ms (SIGSTOP/SIGCONT)",
                    done.join(", "),
                    run_ms + stop_ms
                )
            }
            Fault::FlByzantine {
                clients,
                attack,
                scale,
            } => {
                let flag = match attack {
                    ByzantineAttack::SignFlip => format!("scale={}", -scale),
                    ByzantineAttack::Scale => format!("scale={scale}"),
                    ByzantineAttack::GaussianNoise => format!("noise={scale}"),
                };
                let ids = self.clients_of(clients, kind)?;
                let mut done = Vec::new();
                for i in ids {
                    let name = worker_name(i);
                    let mut args = self
                        .job
                        .as_ref()
                        .and_then(|j| j.worker_args.get(i as usize).cloned())
                        .ok_or_else(|| format!("client-{i} is not part of the job"))?;
                    args.extend(["--byzantine".to_string(), flag.clone()]);
                    if self.sup.is_running(&name) {
                        self.kill_worker(i)?;
                    }
                    let pid = self.spawn(&name, args)?;
                    self.track(&name, "byzantine");
                    done.push(format!("client-{i} (pid {pid})"));
                }
                format!(
                    "fl_byzantine: restarted {} with --byzantine {flag}",
                    done.join(", ")
                )
            }
            _ => return Err(format!("`{kind}` is not an FL fault")),
        };
        self.mark(text.clone());
        Ok(format!(
            "{text} at {}",
            crate::duration::Duration::from_ms(self.now_ms())
        ))
    }

    /// The process a `kill_process`/`restore_process` names, as a supervisor name.
    fn process_name(node: &str, process: Process) -> Result<String, String> {
        match process {
            Process::FlCoordinator => Ok("coordinator".into()),
            Process::FlWorker => client_index(node).map(worker_name).ok_or_else(|| {
                format!("an fl-worker is named by its client on the local backend (`client-N`), not `{node}`")
            }),
            other => Err(format!(
                "the local backend runs no `{}` process",
                serde_json::to_value(other)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default()
            )),
        }
    }
}

impl LocalSession {
    /// The client links a fault between groups `a` and `b` touches: a worker talks only to the
    /// coordinator, so only coordinator <-> client pairs are links.
    fn links_between(&self, a: &[String], b: &[String]) -> Result<BTreeSet<u32>, String> {
        let clients = self.job.as_ref().map_or(0, |j| j.clients);
        let side = |names: &[String]| -> Result<(bool, BTreeSet<u32>), String> {
            let mut coord = false;
            let mut ids = BTreeSet::new();
            for n in names {
                match FlEndpoint::parse(n) {
                    Some(FlEndpoint::Coordinator) => coord = true,
                    Some(FlEndpoint::AllClients) => ids.extend(0..clients),
                    Some(FlEndpoint::Client(i)) if i < clients => {
                        ids.insert(i);
                    }
                    Some(FlEndpoint::Client(i)) => {
                        return Err(format!(
                            "`client-{i}` is not part of the FL job (clients are client-0..client-{})",
                            clients.saturating_sub(1)
                        ));
                    }
                    None => {
                        return Err(format!(
                            "`{n}` is not an FL endpoint (`{COORDINATOR_GROUP}`, `{CLIENTS_GROUP}`, `client-N`)"
                        ));
                    }
                }
            }
            Ok((coord, ids))
        };
        let (ca, ia) = side(a)?;
        let (cb, ib) = side(b)?;
        let mut out = BTreeSet::new();
        if ca {
            out.extend(ib);
        }
        if cb {
            out.extend(ia);
        }
        if out.is_empty() {
            return Err(format!(
                "[{}] <-> [{}] holds no FL link: workers talk only to the `{COORDINATOR_GROUP}`",
                a.join(", "),
                b.join(", ")
            ));
        }
        Ok(out)
    }

    fn inject_net(&mut self, fault: &Fault) -> Result<String, String> {
        if self.job.is_none() {
            return Err(format!(
                "`{}` on the local backend acts on the FL job's links: `fl.start` first",
                fault.kind()
            ));
        }
        let (ids, text) = match fault {
            Fault::Partition { a, b } => {
                let ids = self.links_between(a, b)?;
                for i in &ids {
                    self.links[i].update(|r| r.blackhole = true);
                }
                (
                    ids,
                    "partition: the fault proxy drops every byte and holds new connections"
                        .to_string(),
                )
            }
            Fault::HealPartition { a, b } => {
                let ids = if a.is_empty() && b.is_empty() {
                    self.links.keys().copied().collect()
                } else {
                    self.links_between(a, b)?
                };
                for i in &ids {
                    self.links[i].update(|r| r.blackhole = false);
                }
                (
                    ids,
                    "heal_partition: held bytes and connections flow again".to_string(),
                )
            }
            Fault::Link {
                a,
                b,
                latency,
                loss_pct,
                bandwidth_mbps,
            } => {
                if let Some(l) = loss_pct
                    && !(l.is_finite() && (0.0..=100.0).contains(l))
                {
                    return Err(format!("link loss_pct {l} must be between 0 and 100"));
                }
                if *bandwidth_mbps == Some(0) {
                    return Err(
                        "link bandwidth_mbps must be at least 1 (a cut link is a `partition`)"
                            .into(),
                    );
                }
                let ids = self.links_between(a, b)?;
                let mut desc = String::new();
                for i in &ids {
                    self.links[i].update(|r| {
                        r.latency_ms = latency.map_or(0, |d| d.as_ms());
                        r.loss_pct = loss_pct.unwrap_or(0.0);
                        r.bandwidth_bps = bandwidth_mbps.map(|m| m * 1_000_000 / 8);
                        desc = r.describe();
                    });
                }
                (ids, format!("link: {desc} each way, by the fault proxy"))
            }
            other => return Err(format!("`{}` is not a network fault", other.kind())),
        };
        for i in &ids {
            let state = self.links[i].rules().describe();
            self.track(&format!("link client-{i}"), &state);
        }
        let names: Vec<String> = ids.iter().map(|i| format!("client-{i}")).collect();
        let text = format!("{text} on coordinator <-> {}", names.join(", "));
        self.mark(text.clone());
        Ok(format!(
            "{text} at {}",
            crate::duration::Duration::from_ms(self.now_ms())
        ))
    }
}

/// What `collect: [metrics]` and `collect: [trace|events]` write on the local backend's
/// sessions (the `fl` job's and the Flower job's alike): the file name written.
pub(crate) fn collect_file(
    c: Collect,
    metrics: &BTreeMap<String, f64>,
    markers: &[Marker],
    dir: &Path,
) -> Result<&'static str, String> {
    let (name, text) = match c {
        Collect::Metrics => (
            "metrics.json",
            serde_json::to_string_pretty(metrics).unwrap_or_default(),
        ),
        Collect::Trace | Collect::Events => (
            if matches!(c, Collect::Trace) {
                "trace.txt"
            } else {
                "events.txt"
            },
            markers
                .iter()
                .map(|m| format!("{} {}\n", m.at_ms, m.label))
                .collect(),
        ),
        Collect::Logs => return Err("logs are copied by the session".into()),
    };
    let to = dir.join(name);
    std::fs::write(&to, text).map_err(|e| format!("failed to write {}: {e}", to.display()))?;
    Ok(name)
}

/// A straggler: SIGSTOP for `stop_ms`, SIGCONT for `run_ms`, until `stop` is set.
fn duty_cycle(pid: u32, run_ms: u64, stop_ms: u64, stop: &AtomicBool) {
    // At most one day of cycles; a case never lasts that long.
    let max_cycles = 24 * 3_600_000 / STRAGGLER_PERIOD_MS;
    for _ in 0..max_cycles {
        if stop.load(Ordering::SeqCst) || stop_ms == 0 {
            break;
        }
        if supervisor::send_signal(pid, libc::SIGSTOP).is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(stop_ms));
        let _ = supervisor::send_signal(pid, libc::SIGCONT);
        std::thread::sleep(Duration::from_millis(run_ms));
    }
    let _ = supervisor::send_signal(pid, libc::SIGCONT);
}

fn accuracy(r: &RoundRecord) -> Option<f64> {
    r.central.as_ref()?.metrics.get("accuracy").copied()
}

fn latency_ms(r: &RoundRecord) -> Option<u64> {
    Some(r.completed_ms?.saturating_sub(r.started_ms))
}

/// Whether the coordinator shows round `want` reaching `phase`.
fn reached(v: &RoundsView, want: u64, phase: RoundPhase) -> bool {
    if v.finished
        || v.history
            .iter()
            .any(|r| r.round >= want && r.completed_ms.is_some())
    {
        return true;
    }
    let rank = |p: &str| match p {
        "idle" | "waiting-for-clients" => 0,
        "fit" => 1,
        "aggregating" => 2,
        "central-evaluation" | "evaluate" => 3,
        _ => 4,
    };
    let need = match phase {
        RoundPhase::Fit => 1,
        RoundPhase::Aggregate => 2,
        RoundPhase::Evaluate => 3,
        RoundPhase::Done => 5,
    };
    v.round > want || (v.round == want && rank(&v.phase) >= need)
}

/// The binaries' flags for a scenario's FL workload: the simulator's configuration of the
/// same workload (`crate::sim::fl_config`), so both backends run the same job. Data, initial
/// model, client ids, training streams and DP seeds are then derived by `fl_core::job` on both
/// sides; with no round timeout firing, the per-round global digests are identical.
struct Plan {
    /// The sim's `FlConfig` for this workload: rounds, selection, timeouts, local training,
    /// data (FedProx Synthetic with the model's own input width) and strategy parameters.
    sim: simulator::fl::FlConfig,
    /// `--dataset` / `--eval-data`: `synthetic:ALPHA,BETA,FEATURES,MAX_EXAMPLES_PER_CLIENT`.
    dataset: String,
}

fn plan(w: &FlWorkload) -> Result<Plan, String> {
    let sim = crate::sim::fl_config(w)?;
    let dataset = sim.synthetic().to_string();
    Ok(Plan { sim, dataset })
}

/// The coordinator's flags for `plan` (listen address, data dir and keys aside).
fn coordinator_flags(w: &FlWorkload, p: &Plan, seed: u64) -> Vec<String> {
    let c = &p.sim;
    let r = &c.round;
    let mut out: Vec<String> = vec![
        "--strategy".into(),
        c.strategy.clone(),
        "--model".into(),
        w.model.clone(),
        "--seed".into(),
        seed.to_string(),
        "--rounds".into(),
        r.num_rounds.to_string(),
        "--fraction-fit".into(),
        r.fraction_fit.to_string(),
        "--min-fit-clients".into(),
        r.min_fit_clients.to_string(),
        "--min-available-clients".into(),
        r.min_available_clients.to_string(),
        "--fraction-evaluate".into(),
        r.fraction_evaluate.to_string(),
        "--min-evaluate-clients".into(),
        r.min_evaluate_clients.to_string(),
        "--accept-failures".into(),
        r.accept_failures.to_string(),
        "--min-fit-results".into(),
        r.min_fit_results.to_string(),
        "--round-timeout-ms".into(),
        r.fit_timeout_ms
            .unwrap_or(DEFAULT_ROUND_TIMEOUT_MS)
            .to_string(),
        "--eval-data".into(),
        p.dataset.clone(),
        "--eval-max-examples".into(),
        c.central_test_examples.to_string(),
        "--data-clients".into(),
        c.clients.to_string(),
        "--data-seed".into(),
        seed.to_string(),
        "--test-fraction".into(),
        c.test_fraction.to_string(),
        "--epochs".into(),
        c.train.epochs.to_string(),
        "--learning-rate".into(),
        c.train.learning_rate.to_string(),
        "--batch-size".into(),
        c.train.batch_size.to_string(),
    ];
    for (k, v) in &c.strategy_params {
        out.extend(["--strategy-param".to_string(), format!("{k}={v}")]);
    }
    out
}

impl Session for LocalSession {
    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64 + self.idle_skipped_ms
    }

    fn unsupported(&self, step: &Step) -> Option<String> {
        if let Some(r) = self.etcd_unsupported(step) {
            return Some(r);
        }
        match step.fault.as_ref()? {
            Fault::KillProcess {
                process: Process::Etcd,
                ..
            }
            | Fault::RestoreProcess {
                process: Process::Etcd,
                ..
            } => None,
            Fault::KillProcess { node, process } | Fault::RestoreProcess { node, process } => {
                Self::process_name(node, *process).err()
            }
            Fault::DiskFull { node } if node != COORDINATOR_GROUP => {
                self.etcd_disk_unsupported(node)
            }
            Fault::DiskFull { .. } => self.tmpfs_error.clone(),
            Fault::ClockSkew { node, .. } if node != COORDINATOR_GROUP => Some(format!(
                "the `local` backend skews only the coordinator's clock (`clock_skew: {{ node: {COORDINATOR_GROUP} }}`), not `{node}`"
            )),
            f @ (Fault::Partition { .. } | Fault::HealPartition { .. } | Fault::Link { .. }) => {
                match self.net_target(f) {
                    Some(etcd::NetTarget::Unsupported(r)) => Some(r),
                    _ => None,
                }
            }
            _ => None,
        }
    }

    fn unsupported_assertion(&self, a: &Assertion) -> Option<String> {
        self.etcd_unsupported_assertion(a)
    }

    fn take_note(&mut self) -> Option<String> {
        self.wait_note.take()
    }

    fn advance_until(
        &mut self,
        probe: Probe<'_>,
        deadline_ms: u64,
        stop: StopCheck<'_>,
    ) -> Advance {
        self.wait_note = None;
        match probe {
            Probe::Wait(Wait {
                duration: Some(d), ..
            }) => {
                let until = self.now_ms().saturating_add(d.as_ms());
                self.sleep_until(until, stop)
            }
            Probe::Wait(Wait {
                fl_round: Some(r), ..
            }) => {
                if self.job.is_none() {
                    return Advance::Halted(
                        "waiting on an FL round needs a running FL job (`fl.start` first)".into(),
                    );
                }
                let r = u64::from(*r);
                self.poll_until(deadline_ms, stop, move |v| reached(v, r, RoundPhase::Done))
            }
            Probe::Wait(w) => self.etcd_wait(w, deadline_ms, stop).unwrap_or_else(|| {
                Advance::Halted("the local backend cannot wait for this".into())
            }),
            Probe::Trigger(t) => self.trigger(t, deadline_ms, stop),
            Probe::Assertion(a) => self.poll_loop(deadline_ms, stop, |s| {
                matches!(s.check_fl(a), Check::Pass(_))
            }),
        }
    }

    fn inject(&mut self, fault: &Fault) -> Result<String, String> {
        if let Some(r) = self.etcd_inject(fault) {
            return r;
        }
        match fault {
            Fault::KillProcess { node, process } => {
                let name = Self::process_name(node, *process)?;
                let pid = if name == "coordinator" {
                    let job = self.job.as_mut().ok_or("the FL job was never started")?;
                    job.coordinator_killed = true;
                    let pid = self.sup.kill(&name).map_err(|e| e.to_string())?;
                    self.track(&name, "killed");
                    pid
                } else {
                    let i = client_index(node).unwrap_or_default();
                    self.kill_worker(i)?
                };
                let text = format!("kill_process: SIGKILL {name} (pid {pid})");
                self.mark(text.clone());
                Ok(text)
            }
            Fault::RestoreProcess { node, process } => {
                let name = Self::process_name(node, *process)?;
                let pid = self.sup.restart(&name).map_err(|e| e.to_string())?;
                self.track(&name, "running");
                if name == "coordinator" {
                    self.wait_ready()?;
                    if let Some(j) = self.job.as_mut() {
                        j.coordinator_killed = false;
                    }
                }
                let text = format!(
                    "restore_process: {name} started again with the same flags (pid {pid})"
                );
                self.mark(text.clone());
                Ok(text)
            }
            Fault::FlClientDropout(_) | Fault::FlStraggler { .. } | Fault::FlByzantine { .. } => {
                self.inject_fl(fault)
            }
            Fault::Partition { .. } | Fault::HealPartition { .. } | Fault::Link { .. } => {
                match self.net_target(fault) {
                    Some(etcd::NetTarget::Peers) => self.etcd_net(fault),
                    Some(etcd::NetTarget::All) => {
                        // Heals whichever of the FL links and the etcd peer links run.
                        let mut done = Vec::new();
                        if self.job.is_some() {
                            done.push(self.inject_net(fault)?);
                        }
                        if self.etcd.is_some() {
                            done.push(self.etcd_net(fault)?);
                        }
                        if done.is_empty() {
                            Ok(
                                "heal_partition: no FL job and no etcd member run: no link to heal"
                                    .into(),
                            )
                        } else {
                            Ok(done.join("; "))
                        }
                    }
                    Some(etcd::NetTarget::Unsupported(r)) => Err(r),
                    _ => self.inject_net(fault),
                }
            }
            Fault::DiskFull { node } if node != COORDINATOR_GROUP => self.etcd_disk_full(node),
            Fault::DiskFull { .. } => {
                let t = self.tmpfs.as_ref().ok_or_else(|| {
                    self.tmpfs_error
                        .clone()
                        .unwrap_or_else(|| "the coordinator's store has no volume to fill".into())
                })?;
                let size = t.fill()?;
                let text = format!(
                    "disk_full: the coordinator's data dir volume is fixed at the {size} bytes it holds; its next write fails with ENOSPC"
                );
                self.track(COORDINATOR_GROUP, "disk full");
                self.mark(text.clone());
                Ok(text)
            }
            Fault::ClockSkew { offset, behind, .. } => {
                let c = self.clock.as_ref().ok_or(
                    "clock_skew needs the FL job running (`fl.start` first): the coordinator reads the harness's clock",
                )?;
                let ms = i64::try_from(offset.as_ms()).map_err(|_| "clock skew too large")?;
                let skew = if *behind { -ms } else { ms };
                c.set_skew(skew);
                let text = format!(
                    "clock_skew: the coordinator's clock is now {} {} the wall clock",
                    crate::duration::Duration::from_ms(offset.as_ms()),
                    if *behind { "behind" } else { "ahead of" }
                );
                self.mark(text.clone());
                Ok(text)
            }
            other => Err(format!(
                "the `local` backend cannot inject `{}`",
                other.kind()
            )),
        }
    }

    fn start_fl(&mut self) -> Result<String, String> {
        if self.job.is_some() {
            return Err("the FL job is already running (a second `fl.start`)".into());
        }
        let w = self
            .workload
            .clone()
            .ok_or("`fl.start` needs a `workload.fl` in the scenario")?;
        let p = plan(&w)?;
        let port = supervisor::free_port()
            .map_err(|e| format!("failed to find a free port on 127.0.0.1: {e}"))?;
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let dir = self.dir.path().to_path_buf();
        let mut keys = format!("{ADMIN_KEY} admin\n");
        for i in 0..w.clients {
            keys.push_str(&format!("key-{i} {}\n", job::client_id(i as usize)));
        }
        let keys_path = dir.join("api-keys");
        std::fs::write(&keys_path, keys)
            .map_err(|e| format!("failed to write {}: {e}", keys_path.display()))?;
        let seed = self.seed.to_string();
        let mut coord: Vec<String> = vec![
            "coordinator".into(),
            "--listen".into(),
            addr.to_string(),
            "--data-dir".into(),
            dir.join("coordinator").display().to_string(),
            "--api-keys".into(),
            keys_path.display().to_string(),
        ];
        coord.extend(coordinator_flags(&w, &p, self.seed));
        let stack_t0 = Instant::now();
        let svc =
            services::Services::start(self.need, &mut self.sup, self.dir.path(), &self.root, "fl")?;
        coord.extend(svc.args());
        if self.wants_clock {
            let c = host::ClockDriver::start(&dir.join("coordinator.clock"))?;
            coord.extend(["--clock-file".to_string(), c.path().display().to_string()]);
            self.clock = Some(c);
        }
        // Every worker reaches the coordinator through its own fault proxy (`partition`, `link`).
        for i in 0..w.clients {
            let p = proxy::Proxy::start(addr, self.seed ^ u64::from(i).wrapping_mul(0x9E37))
                .map_err(|e| format!("failed to start the fault proxy of client-{i}: {e}"))?;
            self.links.insert(i, p);
        }
        let urls: Vec<String> = (0..w.clients)
            .map(|i| format!("http://{}", self.links[&i].addr()))
            .collect();
        let worker_args: Vec<Vec<String>> = (0..w.clients)
            .map(|i| {
                [
                    "worker",
                    "--coordinator",
                    &urls[i as usize],
                    "--client-id",
                    &job::client_id(i as usize).0,
                    "--api-key",
                    &format!("key-{i}"),
                    "--dataset",
                    &p.dataset,
                    "--num-clients",
                    &w.clients.to_string(),
                    "--client-index",
                    &i.to_string(),
                    "--test-fraction",
                    &p.sim.test_fraction.to_string(),
                    "--data-seed",
                    &seed,
                    "--seed",
                    &seed,
                    "--poll-ms",
                    &WORKER_POLL_MS.to_string(),
                ]
                .iter()
                .map(|s| s.to_string())
                .collect()
            })
            .collect();
        self.job = Some(Job {
            addr,
            clients: w.clients,
            worker_args: worker_args.clone(),
            strategy: w.strategy.as_str().to_string(),
            started_epoch_ms: epoch_ms(),
            coordinator_killed: false,
        });
        let svc_notes = svc.notes.join("; ");
        let svc_ms = svc.startup_ms;
        self.services = Some(svc);
        self.spawn("coordinator", coord)?;
        self.wait_ready()?;
        for (i, args) in worker_args.into_iter().enumerate() {
            self.spawn(&worker_name(i as u32), args)?;
        }
        self.stack_up_ms = Some(stack_t0.elapsed().as_millis() as u64);
        Ok(format!(
            "FL job started on real processes: fl coordinator on {addr} + {} fl workers (each through its own fault proxy), {} rounds, strategy {}, model {}, data {}; {svc_notes} (up in {svc_ms} ms); fl binary {} ({}); logs in {}",
            w.clients,
            w.rounds,
            w.strategy.as_str(),
            w.model,
            p.dataset,
            self.fl.path.display(),
            self.fl.how,
            self.sup.log_dir().display()
        ))
    }

    fn check(&mut self, a: &Assertion) -> Check {
        self.etcd_check(a).unwrap_or_else(|| self.check_fl(a))
    }

    fn collect(&mut self, what: &[Collect], dir: &Path) -> Result<Vec<String>, String> {
        let mut files = Vec::new();
        for c in what {
            match c {
                Collect::Logs => {
                    for (name, log, _) in self.sup.logs().into_iter().chain(self.etcd_logs()) {
                        let to = dir.join(format!("{name}.log"));
                        std::fs::copy(&log, &to).map_err(|e| {
                            format!("failed to copy {} to {}: {e}", log.display(), to.display())
                        })?;
                        files.push(format!("{name}.log"));
                    }
                }
                Collect::Metrics | Collect::Trace | Collect::Events => {
                    let m = self.observations().metrics;
                    files.push(collect_file(*c, &m, &self.markers, dir)?.into());
                }
            }
        }
        Ok(files)
    }

    fn observations(&self) -> Observations {
        // Coordinator times are ms since the epoch; session time adds the idle waits skipped
        // before `fl.start`.
        let rel = |t: u64| t.saturating_sub(self.started_epoch_ms) + self.idle_skipped_ms;
        let rounds: Vec<RoundReport> = self
            .last
            .iter()
            .flat_map(|v| v.history.iter())
            .filter_map(|r| {
                let done = r.completed_ms?;
                Some(RoundReport {
                    round: r.round as u32,
                    started_ms: rel(r.started_ms),
                    finished_ms: rel(done),
                    latency_ms: done.saturating_sub(r.started_ms),
                    clients_aggregated: r.accepted.len() as u32,
                    failures: r.failures.len() as u32,
                    loss: r.central.as_ref().map(|c| c.loss),
                    accuracy: accuracy(r),
                    global_digest: match &r.fit {
                        Some(FitOutcome::Aggregated { global_digest, .. }) => {
                            Some(global_digest.clone())
                        }
                        _ => None,
                    },
                })
            })
            .collect();
        let mut metrics = BTreeMap::new();
        let mut lat: Vec<u64> = rounds.iter().map(|r| r.latency_ms).collect();
        lat.sort_unstable();
        if !lat.is_empty() {
            metrics.insert("fl_round_p50_ms".to_string(), percentile(&lat, 0.5) as f64);
            metrics.insert("fl_round_p95_ms".to_string(), percentile(&lat, 0.95) as f64);
        }
        if let Some(a) = rounds.iter().rev().find_map(|r| r.accuracy) {
            metrics.insert("fl_final_accuracy".to_string(), a);
        }
        metrics.insert(
            "local_idle_wait_skipped_ms".to_string(),
            self.idle_skipped_ms as f64,
        );
        if let Some(ms) = self.stack_up_ms {
            metrics.insert("local_stack_up_ms".to_string(), ms as f64);
        }
        if let Some(s) = &self.services {
            metrics.insert("local_services_up_ms".to_string(), s.startup_ms as f64);
        }
        let (mut bytes, mut lost) = (0u64, 0u64);
        for p in self.links.values() {
            let st = p.stats();
            bytes += st.bytes_forwarded;
            lost += st.chunks_lost;
        }
        if !self.links.is_empty() {
            metrics.insert("local_proxy_bytes".to_string(), bytes as f64);
            metrics.insert("local_proxy_chunks_lost_count".to_string(), lost as f64);
        }
        self.etcd_metrics(&mut metrics);
        Observations {
            timeline: Timeline {
                nodes: self.tracks.values().cloned().collect(),
                apps: Vec::new(),
                faults: self.markers.clone(),
            },
            rounds,
            metrics,
            trace_hash: None,
            violations: Vec::new(),
            backend_repro: None,
        }
    }
}

impl LocalSession {
    fn trigger(&mut self, t: &Trigger, deadline_ms: u64, stop: StopCheck<'_>) -> Advance {
        if let Some(at) = t.time {
            let out = self.sleep_until(at.as_ms().min(deadline_ms), stop);
            if out == Advance::Reached && self.now_ms() < at.as_ms() {
                return Advance::DeadlinePassed(format!(
                    "the case is at {} (wall clock)",
                    crate::duration::Duration::from_ms(self.now_ms())
                ));
            }
            return out;
        }
        if let Some(after) = t.after {
            let until = self.now_ms().saturating_add(after.as_ms()).min(deadline_ms);
            return self.sleep_until(until, stop);
        }
        match t.fl_round {
            Some(r) => {
                if self.job.is_none() {
                    return Advance::Halted(
                        "a trigger on an FL round needs a running FL job (`fl.start` first)".into(),
                    );
                }
                let phase = t.phase.unwrap_or(RoundPhase::Fit);
                let r = u64::from(r);
                self.poll_until(deadline_ms, stop, move |v| reached(v, r, phase))
            }
            None => Advance::Halted("a trigger without a condition".into()),
        }
    }
}
