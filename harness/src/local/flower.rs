//! `workload.fl.system: flower` on the `local` backend: a real Flower deployment on 127.0.0.1.
//!
//! `fl.start` starts `flower-superlink --insecure` (its Fleet, Control and Runtime HTTP APIs
//! share one free port on 127.0.0.1 in flwr 1.42) and one `flower-supernode --insecure` per
//! client (node config `partition-id`, `num-partitions`, `data-path`; its Runtime API on its own
//! free port), all under the [`Supervisor`], then submits the Flower App (default
//! `fixtures/flower`) with `flwr run APP harness --run-config ...` against the SuperLink's
//! Control API; the SuperLink connection `harness` is written to a Flower config file in a temp
//! `FLWR_HOME` (flwr 1.42 reads connections from there, not from `pyproject.toml`).
//! Every process runs from the venv `cargo xtask setup flower` makes (`target/tools/flower`)
//! with telemetry and update checks off, and each has its own `FLWR_HOME` in the case's temp
//! dir.
//!
//! The ServerApp writes a capture (see `fixtures/flower/README.md`): per round the global model
//! before and after Flower's aggregation and every update Flower accepted. Waits and triggers on
//! `fl.round` follow the capture's manifest; `fl.global_model: matches_offline_recompute` folds
//! exactly the captured updates into fl-core's strategy of the same name and parameters,
//! starting from Flower's own previous global model, and compares the result with Flower's
//! within the golden tolerances of Flower's FedAvg (1e-6 relative plus 1e-6 x the tensor's
//! largest magnitude).
//!
//! Faults: `kill_process`/`restore_process` of `fl-worker` on `client-N` and
//! `fl_client_dropout` SIGKILL the SuperNode with its children (`flower-superexec`,
//! `flwr-clientapp`) and start it again with the same flags; it registers as a new node.
//! Flower notices a dead node by its missed heartbeats (flwr 1.42
//! `HEARTBEAT_DEFAULT_INTERVAL` = 30 s, `HEARTBEAT_PATIENCE` = 2, `flwr/common/constant.py`)
//! and answers its message with a "Node Unavailable" error reply, so the round then aggregates
//! the others' updates; `min_fit_clients` below `clients` keeps the next round from waiting for
//! the dead node.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fl_core::strategy::{Limits, Params, build_strategy};
use fl_core::{ModelView, Update};

use super::supervisor::{self, Spec, Supervisor};
use super::{collect_file, epoch_ms};
use crate::backend::{
    Advance, Check, Observations, Probe, Session, StopCheck, check_fl_accuracy,
    check_fl_round_latency, percentile,
};
use crate::load::Case;
use crate::outcome::{Marker, RoundReport, Timeline, Track};
use crate::scenario::{
    Assertion, Collect, ConfigValue, Fault, FlWorkload, ModelCheck, Process, RoundPhase, Step,
    Trigger, Wait,
};

/// The venv `cargo xtask setup flower` creates, under the workspace root.
pub const VENV: &str = "target/tools/flower";
/// The Flower App the harness ships (the default `workload.fl.flower.app`).
pub const DEFAULT_APP: &str = "fixtures/flower";
const DIGITS_FIXTURE: &str = "fixtures/datasets/digits8x8.csv";
/// The SuperLink connection name written to the Flower config file.
const CONNECTION: &str = "harness";
/// How often the session reads the capture manifest.
const POLL_MS: u64 = 200;
/// How often the session looks in the SuperLink's log for the end of the ServerApp.
const LOG_CHECK_MS: u64 = 2_000;
/// How long the SuperLink may take to answer HTTP (Python start-up on a loaded 2-core machine
/// takes a few seconds).
const READY_TIMEOUT_MS: u64 = 60_000;
/// How long one `flwr run` / `flwr log` may take (it builds the FAB and makes one HTTP call).
const CLI_TIMEOUT_MS: u64 = 120_000;
/// `flwr run` attempts: the SuperLink's Control API can refuse a submission right after start.
const RUN_ATTEMPTS: u32 = 4;
/// The scenario format's `round_timeout` default (10m); Flower's own default is 3600 s
/// (`Strategy.start(timeout=3600)`, flwr/serverapp/strategy/strategy.py).
const DEFAULT_ROUND_TIMEOUT_S: f64 = 600.0;
/// The golden tolerance for Flower's FedAvg (the one `fixtures/flower/golden` is checked
/// with, from the notes that came with those vectors): 1e-6 relative plus 1e-6 x the layer's
/// largest magnitude. Flower's own two float32 FedAvg paths differ by up to 1e-5 relative, so
/// a bit-exact comparison is not the target; it is applied to every strategy.
const REL_TOL: f64 = 1e-6;
const LAYER_TOL: f64 = 1e-6;

/// The capture's `manifest.json` (format `fl-harness/flower-capture/v1`).
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Manifest {
    pub format: String,
    pub flwr_version: String,
    #[serde(default)]
    pub numpy_version: Option<String>,
    pub strategy: String,
    pub strategy_class: String,
    #[serde(default)]
    pub strategy_params: serde_json::Value,
    #[serde(default)]
    pub current_round: u64,
    pub phase: String,
    #[serde(default)]
    pub finished: bool,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub rounds: Vec<CapturedRound>,
}

#[derive(Debug, Clone, serde::Deserialize)]
pub struct CapturedRound {
    pub round: u64,
    pub started_unix_ms: u64,
    #[serde(default)]
    pub aggregated_unix_ms: Option<u64>,
    #[serde(default)]
    pub sampled_nodes: Vec<u64>,
    #[serde(default)]
    pub global_before: Option<String>,
    #[serde(default)]
    pub global_after: Option<String>,
    #[serde(default)]
    pub updates: Vec<CapturedUpdate>,
    #[serde(default)]
    pub failures: Vec<CapturedFailure>,
    #[serde(default)]
    pub missing_nodes: Vec<u64>,
    #[serde(default)]
    pub evaluation: Option<BTreeMap<String, f64>>,
}

#[derive(Debug, Clone, serde::Deserialize)]
pub struct CapturedUpdate {
    pub node_id: u64,
    pub num_examples: serde_json::Value,
    pub file: String,
    #[serde(default)]
    pub config: BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, Clone, serde::Deserialize)]
pub struct CapturedFailure {
    pub node_id: u64,
    pub reason: String,
}

impl CapturedRound {
    fn aggregated(&self) -> bool {
        self.aggregated_unix_ms.is_some() && self.global_after.is_some()
    }
}

/// fl-core's recompute of one captured round against Flower's global model.
#[derive(Debug, Clone)]
pub struct RoundComparison {
    pub round: u64,
    pub updates: usize,
    pub max_abs_err: f64,
    pub max_rel_err: f64,
    /// Largest |error| / tolerance over all coordinates (> 1 fails).
    pub worst_ratio: f64,
    /// Where the worst coordinate is (tensor, index).
    pub worst_at: (String, usize),
}

/// Reads the manifest in `dir`.
pub fn read_manifest(dir: &Path) -> Result<Manifest, String> {
    let p = dir.join("manifest.json");
    let bytes = std::fs::read(&p).map_err(|e| format!("failed to read {}: {e}", p.display()))?;
    let m: Manifest = serde_json::from_slice(&bytes)
        .map_err(|e| format!("{}: not a Flower capture manifest: {e}", p.display()))?;
    if m.format != "fl-harness/flower-capture/v1" {
        return Err(format!(
            "{}: format `{}`, expected `fl-harness/flower-capture/v1`",
            p.display(),
            m.format
        ));
    }
    Ok(m)
}

fn num_examples(u: &CapturedUpdate, round: u64) -> Result<u64, String> {
    let v = &u.num_examples;
    if let Some(n) = v.as_u64() {
        return Ok(n);
    }
    match v.as_f64() {
        Some(f) if f >= 0.0 && f.fract() == 0.0 && f < 9.0e15 => Ok(f as u64),
        _ => Err(format!(
            "round {round}, node {}: num_examples {v} is not a count (fl-core weighs by whole examples)",
            u.node_id
        )),
    }
}

/// Recomputes every aggregated round of the capture in `dir` with fl-core's `strategy` and
/// `params` (one strategy instance across rounds, so server state such as FedAvgM's momentum
/// carries over as in Flower), each round from Flower's captured previous global model.
pub fn recompute_capture(
    dir: &Path,
    manifest: &Manifest,
    strategy: &str,
    params: &Params,
    seed: u64,
) -> Result<Vec<RoundComparison>, String> {
    let read = |rel: &str| -> Result<Vec<u8>, String> {
        let p = dir.join(rel);
        std::fs::read(&p).map_err(|e| format!("failed to read {}: {e}", p.display()))
    };
    struct Loaded {
        round: u64,
        before: (String, Vec<u8>),
        after: (String, Vec<u8>),
        updates: Vec<(String, u64, String, Vec<u8>)>,
    }
    let mut rounds: Vec<&CapturedRound> =
        manifest.rounds.iter().filter(|r| r.aggregated()).collect();
    rounds.sort_by_key(|r| r.round);
    let mut loaded = Vec::new();
    for r in rounds {
        let before = r.global_before.clone().ok_or_else(|| {
            format!(
                "round {}: the capture has no global model before it",
                r.round
            )
        })?;
        let after = r.global_after.clone().unwrap_or_default();
        let mut updates = Vec::new();
        for u in &r.updates {
            updates.push((
                format!("node-{:020}", u.node_id),
                num_examples(u, r.round)?,
                u.file.clone(),
                read(&u.file)?,
            ));
        }
        loaded.push(Loaded {
            round: r.round,
            before: (before.clone(), read(&before)?),
            after: (after.clone(), read(&after)?),
            updates,
        });
    }
    let mut s = build_strategy(strategy, params, Limits::default(), seed)
        .map_err(|e| format!("fl-core strategy `{strategy}`: {e}"))?;
    let mut out = Vec::new();
    for l in &loaded {
        let label = |rel: &str| dir.join(rel).display().to_string();
        let before = ModelView::from_safetensors_labeled(&l.before.1, &label(&l.before.0))
            .map_err(|e| e.to_string())?;
        s.begin(l.round, Some(before))
            .map_err(|e| format!("round {}: fl-core begin: {e}", l.round))?;
        for (client, n, file, bytes) in &l.updates {
            let view = ModelView::from_safetensors_labeled(bytes, &label(file))
                .map_err(|e| e.to_string())?;
            s.fold(Update::new(client.clone(), l.round, view, *n))
                .map_err(|e| format!("round {}: fl-core refused {file}: {e}", l.round))?;
        }
        let (ours, _) = s
            .finish()
            .map_err(|e| format!("round {}: fl-core finish: {e}", l.round))?;
        let flower = ModelView::from_safetensors_labeled(&l.after.1, &label(&l.after.0))
            .map_err(|e| e.to_string())?;
        let mut cmp = RoundComparison {
            round: l.round,
            updates: l.updates.len(),
            max_abs_err: 0.0,
            max_rel_err: 0.0,
            worst_ratio: 0.0,
            worst_at: (String::new(), 0),
        };
        for ft in flower.tensors() {
            let ot = ours.tensor(ft.name()).ok_or_else(|| {
                format!(
                    "round {}: Flower's global model has tensor `{}`, fl-core's has not",
                    l.round,
                    ft.name()
                )
            })?;
            if ot.shape() != ft.shape() {
                return Err(format!(
                    "round {}: tensor `{}` is {:?} in Flower's global model, {:?} in fl-core's",
                    l.round,
                    ft.name(),
                    ft.shape(),
                    ot.shape()
                ));
            }
            let fv = ft.to_f64_vec();
            let ov = ot.to_f64_vec();
            let layer_max = fv.iter().fold(0.0f64, |m, v| m.max(v.abs()));
            for (i, (a, b)) in fv.iter().zip(&ov).enumerate() {
                let d = (a - b).abs();
                let tol = REL_TOL * a.abs() + LAYER_TOL * layer_max;
                cmp.max_abs_err = cmp.max_abs_err.max(d);
                if a.abs() > 0.0 {
                    cmp.max_rel_err = cmp.max_rel_err.max(d / a.abs());
                }
                let ratio = if tol > 0.0 {
                    d / tol
                } else if d > 0.0 {
                    f64::INFINITY
                } else {
                    0.0
                };
                if ratio > cmp.worst_ratio || d.is_nan() {
                    cmp.worst_ratio = if d.is_nan() { f64::INFINITY } else { ratio };
                    cmp.worst_at = (ft.name().to_string(), i);
                }
            }
        }
        if let Some(extra) = ours
            .tensors()
            .iter()
            .find(|t| flower.tensor(t.name()).is_none())
        {
            return Err(format!(
                "round {}: fl-core's global model has tensor `{}`, Flower's has not",
                l.round,
                extra.name()
            ));
        }
        out.push(cmp);
    }
    Ok(out)
}

/// The flwr version installed in the venv (from its `dist-info` folder name).
fn installed_flwr_version(venv: &Path) -> Option<String> {
    let lib = venv.join("lib");
    for py in std::fs::read_dir(&lib).ok()?.flatten() {
        let sp = py.path().join("site-packages");
        for e in std::fs::read_dir(&sp).ok()?.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if let Some(v) = n
                .strip_prefix("flwr-")
                .and_then(|r| r.strip_suffix(".dist-info"))
            {
                return Some(v.to_string());
            }
        }
    }
    None
}

/// PIDs of every descendant of `pid` (from `/proc/*/stat`).
fn descendants(pid: u32) -> Vec<u32> {
    let mut parent: Vec<(u32, u32)> = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
                continue;
            };
            // `pid (comm) state ppid ...`; comm may hold spaces and parentheses.
            let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
                continue;
            };
            if let Some(pp) = rest.split_whitespace().nth(1).and_then(|s| s.parse().ok()) {
                parent.push((p, pp));
            }
        }
    }
    let mut out = Vec::new();
    let mut frontier = vec![pid];
    while let Some(p) = frontier.pop() {
        for (c, pp) in &parent {
            if *pp == p && !out.contains(c) {
                out.push(*c);
                frontier.push(*c);
            }
        }
    }
    out
}

fn client_index(node: &str) -> Option<u32> {
    node.strip_prefix("client-")?.parse().ok()
}

fn supernode_name(i: u32) -> String {
    format!("supernode-{i}")
}

/// The Flower job as started.
struct Job {
    superlink: SocketAddr,
    clients: u32,
    capture: PathBuf,
    run_id: String,
    app: PathBuf,
    started_epoch_ms: u64,
    /// Session time when `fl.start` began (`started_epoch_ms` on the session clock).
    started_session_ms: u64,
}

/// A case whose FL job is a real Flower deployment.
pub struct FlowerSession {
    root: PathBuf,
    venv: PathBuf,
    workload: FlWorkload,
    seed: u64,
    flwr_version: String,
    sup: Supervisor,
    dir: tempfile::TempDir,
    started: Instant,
    idle_skipped_ms: u64,
    job: Option<Job>,
    markers: Vec<Marker>,
    tracks: BTreeMap<String, Track>,
    manifest: Option<Manifest>,
    /// Recomputed rounds, keyed by the capture's aggregated round count when computed.
    recomputed: Option<(usize, Vec<RoundComparison>)>,
    last_log_check: Instant,
}

impl Drop for FlowerSession {
    fn drop(&mut self) {
        self.kill_everything();
    }
}

impl FlowerSession {
    /// A session for `case` (nothing runs until `fl.start`); logs under `logs/`.
    pub fn new(root: &Path, logs: &Path, case: &Case) -> Result<Self, String> {
        let workload = case
            .fl
            .clone()
            .ok_or("a Flower session needs a `workload.fl`")?;
        let venv = root.join(VENV);
        let flwr_version = match installed_flwr_version(&venv) {
            Some(v) if venv.join("bin/flower-superlink").exists() => v,
            _ => {
                return Err(format!(
                    "Flower is not installed: `system: flower` needs the venv {VENV} with flwr (run `cargo xtask setup flower`)"
                ));
            }
        };
        let dir = tempfile::Builder::new()
            .prefix("harness-flower-")
            .tempdir()
            .map_err(|e| format!("failed to create a temp dir for case {}: {e}", case.name))?;
        if logs.exists() {
            std::fs::remove_dir_all(logs)
                .map_err(|e| format!("failed to clear {}: {e}", logs.display()))?;
        }
        std::fs::create_dir_all(logs)
            .map_err(|e| format!("failed to create {}: {e}", logs.display()))?;
        Ok(Self {
            root: root.to_path_buf(),
            venv,
            workload,
            seed: case.seed,
            flwr_version,
            sup: Supervisor::new(logs),
            dir,
            started: Instant::now(),
            idle_skipped_ms: 0,
            job: None,
            markers: Vec::new(),
            tracks: BTreeMap::new(),
            manifest: None,
            recomputed: None,
            last_log_check: Instant::now(),
        })
    }

    /// PIDs of every supervised process, by name (descendants not included).
    pub fn pids(&mut self) -> BTreeMap<String, u32> {
        self.sup.pids()
    }

    /// Supervised PIDs and all their descendants.
    pub fn all_pids(&mut self) -> BTreeSet<u32> {
        let mut out = BTreeSet::new();
        for (_, p) in self.sup.pids() {
            out.insert(p);
            out.extend(descendants(p));
        }
        out
    }

    pub fn log_dir(&self) -> &Path {
        self.sup.log_dir()
    }

    /// The capture directory of the running job.
    pub fn capture_dir(&self) -> Option<&Path> {
        self.job.as_ref().map(|j| j.capture.as_path())
    }

    fn kill_everything(&mut self) {
        let mut kids = Vec::new();
        for (_, p) in self.sup.pids() {
            kids.extend(descendants(p));
        }
        self.sup.kill_all();
        for k in kids {
            let _ = supervisor::send_signal(k, libc::SIGKILL);
        }
    }

    fn track(&mut self, name: &str, state: &str) {
        let now = self.now_ms();
        Track::record(&mut self.tracks, name, now, state);
    }

    fn mark(&mut self, label: String) {
        let at_ms = self.now_ms();
        self.markers.push(Marker { at_ms, label });
    }

    /// `env FLWR_HOME=... PATH=venv/bin:... program args...`: the supervisor's spec for a
    /// Flower process with its own Flower home.
    fn env_args(&self, home: &Path) -> Vec<String> {
        let path = std::env::var("PATH").unwrap_or_default();
        vec![
            format!("FLWR_HOME={}", home.display()),
            "FLWR_TELEMETRY_ENABLED=0".into(),
            "FLWR_DISABLE_UPDATE_CHECK=1".into(),
            format!("PATH={}:{path}", self.venv.join("bin").display()),
        ]
    }

    fn spawn(&mut self, name: &str, program: &str, args: Vec<String>) -> Result<u32, String> {
        let home = self.dir.path().join(format!("home-{name}"));
        std::fs::create_dir_all(&home)
            .map_err(|e| format!("failed to create {}: {e}", home.display()))?;
        let mut a = self.env_args(&home);
        a.push(self.venv.join("bin").join(program).display().to_string());
        a.extend(args);
        let pid = self
            .sup
            .start(
                name,
                Spec {
                    program: PathBuf::from("env"),
                    args: a,
                },
            )
            .map_err(|e| e.to_string())?;
        self.track(name, "running");
        Ok(pid)
    }

    /// SIGKILL a supervised process and everything it started.
    fn kill_tree(&mut self, name: &str) -> Result<u32, String> {
        let kids = self.sup.pid(name).map(descendants).unwrap_or_default();
        let pid = self.sup.kill(name).map_err(|e| e.to_string())?;
        for k in &kids {
            let _ = supervisor::send_signal(*k, libc::SIGKILL);
        }
        self.track(name, "killed");
        Ok(pid)
    }

    /// Runs a `flwr` CLI command (bounded by [`CLI_TIMEOUT_MS`]); its stdout.
    fn flwr_cli(&self, args: &[String], what: &str) -> Result<String, String> {
        let home = self.dir.path().join("home-cli");
        let out_path = self.dir.path().join(format!("{what}.stdout"));
        let err_path = self.sup.log_dir().join(format!("{what}.log"));
        let out = std::fs::File::create(&out_path)
            .map_err(|e| format!("failed to create {}: {e}", out_path.display()))?;
        let err = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&err_path)
            .map_err(|e| format!("failed to create {}: {e}", err_path.display()))?;
        let mut cmd = Command::new("env");
        cmd.args(self.env_args(&home))
            .arg(self.venv.join("bin/flwr"))
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("failed to start `flwr {what}`: {e}"))?;
        let t0 = Instant::now();
        loop {
            match child.try_wait() {
                Ok(Some(status)) => {
                    let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
                    if !status.success() {
                        return Err(format!(
                            "`flwr {what}` failed with {status}: {}",
                            stdout.trim()
                        ));
                    }
                    return Ok(stdout);
                }
                Ok(None) if t0.elapsed() < Duration::from_millis(CLI_TIMEOUT_MS) => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!(
                        "`flwr {what}` did not finish within {CLI_TIMEOUT_MS} ms (killed)"
                    ));
                }
            }
        }
    }

    /// Waits until the SuperLink answers HTTP on its port.
    fn wait_superlink(&mut self, addr: SocketAddr) -> Result<(), String> {
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_millis(READY_TIMEOUT_MS) {
            if super::http::get(addr, "/", &[]).is_ok() {
                return Ok(());
            }
            if !self.sup.is_running("superlink") {
                return Err(format!(
                    "flower-superlink exited before it answered (code {:?}):\n{}",
                    self.sup.exit_code("superlink"),
                    self.sup.log_tail("superlink", 15)
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(format!(
            "flower-superlink did not answer on {addr} within {READY_TIMEOUT_MS} ms:\n{}",
            self.sup.log_tail("superlink", 15)
        ))
    }

    /// The strategy parameters the scenario declares, as fl-core's `--param` text.
    fn declared_params(&self) -> Params {
        self.workload
            .flower
            .iter()
            .flat_map(|f| f.strategy_params.iter())
            .map(|(k, v)| (k.clone(), v.to_text()))
            .collect()
    }

    fn run_config(&self, capture: &Path) -> Vec<(String, String)> {
        let w = &self.workload;
        let sim = simulator::fl::FlConfig::default();
        let min_fit = w.min_fit_clients.unwrap_or(w.clients).max(1);
        let params: serde_json::Map<String, serde_json::Value> = w
            .flower
            .iter()
            .flat_map(|f| f.strategy_params.iter())
            .map(|(k, v)| (k.clone(), v.to_json()))
            .collect();
        let text = |s: &str| ConfigValue::Text(s.to_string()).to_toml();
        let timeout = w
            .round_timeout
            .map(|d| d.as_ms() as f64 / 1000.0)
            .unwrap_or(DEFAULT_ROUND_TIMEOUT_S);
        let mut rc: Vec<(String, String)> = vec![
            ("num-server-rounds".into(), w.rounds.to_string()),
            ("strategy".into(), text(w.strategy.as_str())),
            (
                "strategy-params".into(),
                text(&serde_json::Value::Object(params).to_string()),
            ),
            ("fraction-train".into(), "1.0".into()),
            ("fraction-evaluate".into(), "0.0".into()),
            ("min-train-nodes".into(), min_fit.to_string()),
            ("min-available-nodes".into(), min_fit.to_string()),
            (
                "round-timeout".into(),
                ConfigValue::Float(timeout).to_toml(),
            ),
            ("seed".into(), self.seed.to_string()),
            ("local-epochs".into(), w.local_epochs.to_string()),
            (
                "learning-rate".into(),
                // Through its decimal text: 0.05f32 as f64 would be 0.05000000074505806.
                ConfigValue::Float(sim.train.learning_rate.to_string().parse().unwrap_or(0.05))
                    .to_toml(),
            ),
            ("batch-size".into(), sim.train.batch_size.to_string()),
            ("capture-dir".into(), text(&capture.display().to_string())),
            (
                "eval-data-path".into(),
                text(&self.root.join(DIGITS_FIXTURE).display().to_string()),
            ),
        ];
        for (k, v) in w.flower.iter().flat_map(|f| f.run_config.iter()) {
            rc.retain(|(key, _)| key != k);
            rc.push((k.clone(), v.to_toml()));
        }
        rc
    }

    /// Reads the manifest (keeps the last good one).
    fn poll(&mut self) -> Option<&Manifest> {
        let dir = self.job.as_ref()?.capture.clone();
        if let Ok(m) = read_manifest(&dir) {
            self.manifest = Some(m);
        }
        self.manifest.as_ref()
    }

    fn serverapp_log(&self) -> String {
        let Some(job) = &self.job else {
            return String::new();
        };
        let args = vec![
            "log".to_string(),
            job.run_id.clone(),
            CONNECTION.to_string(),
            "--show".to_string(),
        ];
        self.flwr_cli(&args, "flwr-log").unwrap_or_else(|e| e)
    }

    /// Something that stops a wait: the SuperLink died by itself or the ServerApp failed.
    fn crashed(&mut self) -> Option<String> {
        self.job.as_ref()?;
        if !self.sup.is_running("superlink") {
            return Some(format!(
                "flower-superlink exited by itself (code {:?}):\n{}",
                self.sup.exit_code("superlink"),
                self.sup.log_tail("superlink", 15)
            ));
        }
        let failed = match self.manifest.as_ref() {
            Some(m) if m.phase == "failed" => m.error.clone().unwrap_or_default(),
            Some(m) if m.finished => return None,
            // The SuperLink logs `Finished task T of run R` when the ServerApp process ends;
            // without a finished capture that is a ServerApp that failed before (or without)
            // writing it. Read at most every few seconds.
            _ if self.last_log_check.elapsed() >= Duration::from_millis(LOG_CHECK_MS) => {
                self.last_log_check = Instant::now();
                let run = format!("of run {}", self.job.as_ref()?.run_id);
                let log = std::fs::read_to_string(self.sup.log_dir().join("superlink.log"))
                    .unwrap_or_default();
                if !log
                    .lines()
                    .any(|l| l.contains("Finished task") && l.contains(&run))
                {
                    return None;
                }
                // The capture may have been finished just now.
                if self.poll().is_some_and(|m| m.finished) {
                    return None;
                }
                "the ServerApp ended without finishing its capture (capture-dir not honoured?)"
                    .to_string()
            }
            _ => return None,
        };
        let log = self.serverapp_log();
        let tail: Vec<&str> = log.lines().rev().take(20).collect();
        Some(format!(
            "the Flower ServerApp failed: {failed}\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        ))
    }

    fn state_text(&self) -> String {
        match &self.manifest {
            None => "the ServerApp has not written its capture manifest yet".into(),
            Some(m) => format!(
                "Flower is in round {} ({}), {} round(s) aggregated{}",
                m.current_round,
                m.phase,
                m.rounds.iter().filter(|r| r.aggregated()).count(),
                if m.finished { ", run finished" } else { "" }
            ),
        }
    }

    fn poll_until(
        &mut self,
        deadline_ms: u64,
        stop: StopCheck<'_>,
        pred: impl Fn(&Manifest) -> bool,
    ) -> Advance {
        if self.job.is_none() {
            return Advance::Halted(
                "waiting on Flower needs a running job (`fl.start` first)".into(),
            );
        }
        self.poll_loop(deadline_ms, stop, |s| s.poll().is_some_and(&pred))
    }

    /// Every [`POLL_MS`] until `reached`, the deadline, `stop`, or a Flower process that
    /// exited by itself.
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
            if reached(self) {
                return Advance::Reached;
            }
            if let Some(c) = self.crashed() {
                return Advance::Halted(c);
            }
            if self.now_ms() >= deadline_ms {
                break;
            }
            std::thread::sleep(Duration::from_millis(POLL_MS));
        }
        Advance::DeadlinePassed(self.state_text())
    }

    fn sleep_until(&mut self, until_ms: u64, stop: StopCheck<'_>) -> Advance {
        if self.sup.pids().is_empty() {
            self.idle_skipped_ms += until_ms.saturating_sub(self.now_ms());
            return Advance::Reached;
        }
        let budget = until_ms.saturating_sub(self.now_ms());
        for _ in 0..budget / POLL_MS + 2 {
            if stop() {
                return Advance::Stopped;
            }
            let now = self.now_ms();
            if now >= until_ms {
                return Advance::Reached;
            }
            std::thread::sleep(Duration::from_millis(POLL_MS.min(until_ms - now)));
        }
        Advance::Reached
    }

    fn trigger(&mut self, t: &Trigger, deadline_ms: u64, stop: StopCheck<'_>) -> Advance {
        if let Some(at) = t.time {
            return self.sleep_until(at.as_ms().min(deadline_ms), stop);
        }
        if let Some(after) = t.after {
            let until = self.now_ms().saturating_add(after.as_ms()).min(deadline_ms);
            return self.sleep_until(until, stop);
        }
        match t.fl_round {
            Some(r) => {
                let phase = t.phase.unwrap_or(RoundPhase::Fit);
                self.poll_until(deadline_ms, stop, move |m| reached(m, u64::from(r), phase))
            }
            None => Advance::Halted("a trigger without a condition".into()),
        }
    }

    fn comparisons(&mut self) -> Result<Vec<RoundComparison>, String> {
        let m = self
            .manifest
            .clone()
            .ok_or("the Flower ServerApp wrote no capture")?;
        let n = m.rounds.iter().filter(|r| r.aggregated()).count();
        if let Some((k, c)) = &self.recomputed
            && *k == n
        {
            return Ok(c.clone());
        }
        let dir = self.job.as_ref().ok_or("no job")?.capture.clone();
        let c = recompute_capture(
            &dir,
            &m,
            self.workload.strategy.as_str(),
            &self.declared_params(),
            self.seed,
        )?;
        self.recomputed = Some((n, c.clone()));
        Ok(c)
    }

    fn check_fl(&mut self, a: &Assertion) -> Check {
        let Some(job) = self.job.as_ref() else {
            return Check::Fail("the Flower job was never started (`fl.start`)".into());
        };
        let started = job.started_epoch_ms;
        let Some(m) = self.poll().cloned() else {
            return Check::Fail(format!(
                "Flower has written no capture yet ({})",
                self.state_text()
            ));
        };
        let find = |n: u32| {
            m.rounds
                .iter()
                .find(|r| r.round == u64::from(n) && r.aggregated())
        };
        let verdict = Check::verdict;
        match a {
            Assertion::FlRoundCompleted { round, within } => match find(*round) {
                Some(r) => {
                    let since = r
                        .aggregated_unix_ms
                        .unwrap_or_default()
                        .saturating_sub(started);
                    verdict(
                        within.is_none_or(|w| since <= w.as_ms()),
                        format!(
                            "Flower aggregated round {round} {} after fl.start (wall clock): {} of {} sampled nodes' updates{}",
                            crate::duration::Duration::from_ms(since),
                            r.updates.len(),
                            r.sampled_nodes.len(),
                            failures_text(r)
                        ),
                    )
                }
                None => Check::Fail(format!(
                    "Flower has not aggregated round {round} ({})",
                    self.state_text()
                )),
            },
            Assertion::FlClientsAggregated {
                round,
                at_least,
                at_most,
            } => match find(*round) {
                None => Check::Fail(format!("Flower has not aggregated round {round}")),
                Some(r) => {
                    let n = r.updates.len() as u32;
                    verdict(
                        at_least.is_none_or(|x| n >= x) && at_most.is_none_or(|x| n <= x),
                        format!(
                            "Flower aggregated {n} of {} sampled nodes' updates in round {round} ({}){}",
                            r.sampled_nodes.len(),
                            clients_text(r),
                            failures_text(r)
                        ),
                    )
                }
            },
            Assertion::FlGlobalModel(ModelCheck::MatchesOfflineRecompute) => {
                let declared = format!(
                    "fl-core `{}` {}",
                    self.workload.strategy.as_str(),
                    params_text(&self.declared_params())
                );
                let ran = format!(
                    "Flower {} {} (flwr {})",
                    m.strategy_class, m.strategy_params, m.flwr_version
                );
                match self.comparisons() {
                    Err(e) => Check::Fail(e),
                    Ok(c) if c.is_empty() => {
                        Check::Fail("Flower aggregated no round to compare".into())
                    }
                    Ok(c) => {
                        let per: Vec<String> = c
                            .iter()
                            .map(|r| {
                                format!(
                                    "round {}: {} updates, max abs err {:.3e}, max rel err {:.3e}",
                                    r.round, r.updates, r.max_abs_err, r.max_rel_err
                                )
                            })
                            .collect();
                        let bad: Vec<String> = c
                            .iter()
                            .filter(|r| r.worst_ratio > 1.0)
                            .map(|r| {
                                format!(
                                    "round {} differs: max abs err {:.3e} (max rel err {:.3e}) is {:.1}x the tolerance at `{}`[{}]",
                                    r.round,
                                    r.max_abs_err,
                                    r.max_rel_err,
                                    r.worst_ratio,
                                    r.worst_at.0,
                                    r.worst_at.1
                                )
                            })
                            .collect();
                        if bad.is_empty() {
                            Check::Pass(format!(
                                "{ran}'s global model equals {declared} recomputed over the updates Flower accepted, within 1e-6 rel + 1e-6 x layer max, in {} round(s): {}",
                                c.len(),
                                per.join("; ")
                            ))
                        } else {
                            Check::Fail(format!(
                                "{ran}'s global model is not {declared} of the updates it accepted: {} (all rounds: {})",
                                bad.join("; "),
                                per.join("; ")
                            ))
                        }
                    }
                }
            }
            Assertion::FlAccuracy {
                round,
                at_least,
                at_most,
            } => {
                let acc = |r: &CapturedRound| r.evaluation.as_ref()?.get("accuracy").copied();
                let r = match round {
                    Some(n) => find(*n),
                    None => m.rounds.iter().rev().find(|r| acc(r).is_some()),
                };
                check_fl_accuracy(
                    *round,
                    r.and_then(|r| acc(r).map(|a| (r.round, a))),
                    m.rounds.iter().filter(|r| r.aggregated()).count(),
                    *at_least,
                    *at_most,
                )
            }
            Assertion::FlRoundLatency { p50, p95, p99 } => check_fl_round_latency(
                "wall-clock Flower ",
                m.rounds.iter().filter_map(latency_ms).collect(),
                [("p50", 0.5, *p50), ("p95", 0.95, *p95), ("p99", 0.99, *p99)],
            ),
            other => Check::Skip(format!(
                "a Flower job on the `local` backend cannot check `{}`",
                other.kind()
            )),
        }
    }

    fn supernode_index(&self, node: &str, process: Process) -> Result<u32, String> {
        match process {
            Process::FlWorker => {
                let i = client_index(node).ok_or_else(|| {
                    format!("a Flower SuperNode is named by its client (`client-N`), not `{node}`")
                })?;
                let n = self.workload.clients;
                if i >= n {
                    return Err(format!("`{node}`: the Flower job has clients client-0..client-{}", n - 1));
                }
                Ok(i)
            }
            Process::FlCoordinator => Err(
                "killing the Flower SuperLink is not supported: its state (runs, messages) is in memory, a restart would lose the run".into(),
            ),
            other => Err(format!(
                "a Flower job runs no `{}` process",
                serde_json::to_value(other)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default()
            )),
        }
    }
}

fn latency_ms(r: &CapturedRound) -> Option<u64> {
    Some(r.aggregated_unix_ms?.saturating_sub(r.started_unix_ms))
}

fn params_text(p: &Params) -> String {
    if p.is_empty() {
        return "(defaults)".into();
    }
    let v: Vec<String> = p.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("{{{}}}", v.join(", "))
}

fn clients_text(r: &CapturedRound) -> String {
    let mut v: Vec<String> = r
        .updates
        .iter()
        .map(|u| match u.config.get("partition-id") {
            Some(p) => format!("client-{p}"),
            None => format!("node {}", u.node_id),
        })
        .collect();
    v.sort();
    v.join(", ")
}

fn failures_text(r: &CapturedRound) -> String {
    if r.failures.is_empty() && r.missing_nodes.is_empty() {
        return String::new();
    }
    let reasons: BTreeSet<&str> = r.failures.iter().map(|f| f.reason.as_str()).collect();
    format!(
        "; {} failure(s), no update from node(s) {:?}: {}",
        r.failures.len(),
        r.missing_nodes,
        reasons.into_iter().collect::<Vec<_>>().join(" | ")
    )
}

/// Whether the capture shows round `want` reaching `phase`.
fn reached(m: &Manifest, want: u64, phase: RoundPhase) -> bool {
    if m.finished || m.rounds.iter().any(|r| r.round >= want && r.aggregated()) {
        return true;
    }
    let rank = |p: &str| match p {
        "starting" | "configure" => 0,
        "fit" => 1,
        "aggregate" => 2,
        _ => 3,
    };
    let need = match phase {
        RoundPhase::Fit => 1,
        RoundPhase::Aggregate => 2,
        RoundPhase::Evaluate | RoundPhase::Done => 4,
    };
    m.current_round > want || (m.current_round == want && rank(&m.phase) >= need)
}

impl Session for FlowerSession {
    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64 + self.idle_skipped_ms
    }

    fn unsupported(&self, step: &Step) -> Option<String> {
        match step.fault.as_ref()? {
            Fault::KillProcess { node, process } | Fault::RestoreProcess { node, process } => {
                self.supernode_index(node, *process).err()
            }
            Fault::FlClientDropout(_) => None,
            other => Some(format!(
                "a Flower job on the `local` backend cannot inject `{}` (only kill_process/restore_process of a SuperNode and fl_client_dropout)",
                other.kind()
            )),
        }
    }

    fn unsupported_assertion(&self, _a: &Assertion) -> Option<String> {
        None
    }

    fn advance_until(
        &mut self,
        probe: Probe<'_>,
        deadline_ms: u64,
        stop: StopCheck<'_>,
    ) -> Advance {
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
                let r = u64::from(*r);
                self.poll_until(deadline_ms, stop, move |m| reached(m, r, RoundPhase::Done))
            }
            Probe::Wait(_) => Advance::Halted("a Flower job cannot wait for this".into()),
            Probe::Trigger(t) => self.trigger(t, deadline_ms, stop),
            Probe::Assertion(a) => self.poll_loop(deadline_ms, stop, |s| {
                matches!(s.check_fl(a), Check::Pass(_))
            }),
        }
    }

    fn inject(&mut self, fault: &Fault) -> Result<String, String> {
        let text = match fault {
            Fault::KillProcess { node, process } => {
                let i = self.supernode_index(node, *process)?;
                let name = supernode_name(i);
                let pid = self.kill_tree(&name)?;
                format!("kill_process: SIGKILL {name} of {node} (pid {pid}) and its children")
            }
            Fault::RestoreProcess { node, process } => {
                let i = self.supernode_index(node, *process)?;
                let name = supernode_name(i);
                let pid = self.sup.restart(&name).map_err(|e| e.to_string())?;
                self.track(&name, "running");
                format!(
                    "restore_process: {name} of {node} started again with the same flags (pid {pid}); it registers as a new node"
                )
            }
            Fault::FlClientDropout(set) => {
                let ids = set.resolve(self.workload.clients);
                if ids.is_empty() {
                    return Err("`fl_client_dropout` selects no client".into());
                }
                let mut done = Vec::new();
                for i in ids {
                    let pid = self.kill_tree(&supernode_name(i))?;
                    done.push(format!("client-{i} (pid {pid})"));
                }
                format!(
                    "fl_client_dropout: SIGKILL the SuperNodes of {}",
                    done.join(", ")
                )
            }
            other => {
                return Err(format!(
                    "a Flower job on the `local` backend cannot inject `{}`",
                    other.kind()
                ));
            }
        };
        self.mark(text.clone());
        Ok(format!(
            "{text} at {}",
            crate::duration::Duration::from_ms(self.now_ms())
        ))
    }

    fn start_fl(&mut self) -> Result<String, String> {
        if self.job.is_some() {
            return Err("the Flower job is already running (a second `fl.start`)".into());
        }
        let t0 = Instant::now();
        let started_epoch_ms = epoch_ms();
        let started_session_ms = self.now_ms();
        let w = self.workload.clone();
        let app_rel = w
            .flower
            .as_ref()
            .and_then(|f| f.app.clone())
            .unwrap_or_else(|| DEFAULT_APP.to_string());
        let app = self.root.join(&app_rel);
        if !app.join("pyproject.toml").is_file() {
            return Err(format!(
                "`workload.fl.flower.app` `{app_rel}`: {} has no pyproject.toml (expected a Flower App directory)",
                app.display()
            ));
        }
        let data = self.root.join(DIGITS_FIXTURE);
        let link_port = supervisor::free_port()
            .map_err(|e| format!("failed to find a free port on 127.0.0.1: {e}"))?;
        let superlink: SocketAddr = ([127, 0, 0, 1], link_port).into();
        let capture = self.dir.path().join("capture");
        self.spawn(
            "superlink",
            "flower-superlink",
            vec![
                "--insecure".into(),
                "--host".into(),
                "127.0.0.1".into(),
                "--port".into(),
                link_port.to_string(),
                "--disable-runtime-dependency-installation".into(),
            ],
        )?;
        for i in 0..w.clients {
            let port = supervisor::free_port()
                .map_err(|e| format!("failed to find a free port on 127.0.0.1: {e}"))?;
            self.spawn(
                &supernode_name(i),
                "flower-supernode",
                vec![
                    "--insecure".into(),
                    "--superlink".into(),
                    superlink.to_string(),
                    "--host".into(),
                    "127.0.0.1".into(),
                    "--port".into(),
                    port.to_string(),
                    "--node-config".into(),
                    format!(
                        "partition-id={i} num-partitions={} data-path={}",
                        w.clients,
                        ConfigValue::Text(data.display().to_string()).to_toml()
                    ),
                ],
            )?;
        }
        self.wait_superlink(superlink)?;
        let up_ms = t0.elapsed().as_millis() as u64;
        let home = self.dir.path().join("home-cli");
        std::fs::create_dir_all(&home)
            .map_err(|e| format!("failed to create {}: {e}", home.display()))?;
        let conf = format!(
            "[superlink]\ndefault = \"{CONNECTION}\"\n\n[superlink.{CONNECTION}]\naddress = \"{superlink}\"\ninsecure = true\n"
        );
        std::fs::write(home.join("config.toml"), conf).map_err(|e| {
            format!(
                "failed to write the Flower config in {}: {e}",
                home.display()
            )
        })?;
        let mut args = vec![
            "run".to_string(),
            app.display().to_string(),
            CONNECTION.to_string(),
            "--format".into(),
            "json".into(),
        ];
        // A TOML file, not `key=value` arguments: flwr splits those at spaces and quotes.
        let rc_path = self.dir.path().join("run-config.toml");
        let rc: String = self
            .run_config(&capture)
            .into_iter()
            .map(|(k, v)| format!("{} = {v}\n", ConfigValue::Text(k).to_toml()))
            .collect();
        std::fs::write(&rc_path, rc)
            .map_err(|e| format!("failed to write {}: {e}", rc_path.display()))?;
        args.push("--run-config".into());
        args.push(rc_path.display().to_string());
        let mut run_id = None;
        let mut last = String::new();
        for attempt in 1..=RUN_ATTEMPTS {
            let out = self.flwr_cli(&args, "flwr-run")?;
            let v: serde_json::Value = serde_json::from_str(&out)
                .map_err(|e| format!("`flwr run` printed no JSON ({e}): {}", out.trim()))?;
            if v["success"].as_bool() == Some(true) {
                run_id = v["run-id"].as_str().map(str::to_string);
                break;
            }
            last = v["error-message"].as_str().unwrap_or_default().to_string();
            let retry = last.contains("unavailable") && attempt < RUN_ATTEMPTS;
            if !retry {
                break;
            }
            std::thread::sleep(Duration::from_millis(1_000));
        }
        let run_id = run_id.ok_or_else(|| format!("`flwr run` was refused: {last}"))?;
        self.job = Some(Job {
            superlink,
            clients: w.clients,
            capture,
            run_id: run_id.clone(),
            app,
            started_epoch_ms,
            started_session_ms,
        });
        let submitted_ms = t0.elapsed().as_millis() as u64;
        let params = self.declared_params();
        let job = self.job.as_ref().expect("just set");
        let text = format!(
            "real Flower deployment (flwr {}): flower-superlink on {} + {} flower-supernode, run {run_id} of {} submitted with `flwr run`, {} rounds, strategy {} {}, min_train_nodes {}; SuperLink up after {up_ms} ms, run submitted after {submitted_ms} ms; logs in {}",
            self.flwr_version,
            job.superlink,
            job.clients,
            job.app.display(),
            w.rounds,
            w.strategy.as_str(),
            params_text(&params),
            w.min_fit_clients.unwrap_or(w.clients),
            self.sup.log_dir().display()
        );
        self.mark(format!("fl.start: flwr {} run {run_id}", self.flwr_version));
        Ok(text)
    }

    fn check(&mut self, a: &Assertion) -> Check {
        self.check_fl(a)
    }

    fn collect(&mut self, what: &[Collect], dir: &Path) -> Result<Vec<String>, String> {
        let mut files = Vec::new();
        for c in what {
            match c {
                Collect::Logs => {
                    for (name, log, _) in self.sup.logs() {
                        let to = dir.join(format!("{name}.log"));
                        std::fs::copy(&log, &to).map_err(|e| {
                            format!("failed to copy {} to {}: {e}", log.display(), to.display())
                        })?;
                        files.push(format!("{name}.log"));
                    }
                    if self.job.is_some() {
                        let log = self.serverapp_log();
                        std::fs::write(dir.join("serverapp.log"), log)
                            .map_err(|e| format!("failed to write serverapp.log: {e}"))?;
                        files.push("serverapp.log".into());
                    }
                    if let Some(cap) = self.capture_dir() {
                        let from = cap.join("manifest.json");
                        if from.exists() {
                            std::fs::copy(&from, dir.join("flower-capture-manifest.json"))
                                .map_err(|e| format!("failed to copy {}: {e}", from.display()))?;
                            files.push("flower-capture-manifest.json".into());
                        }
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
        let start = self.job.as_ref().map_or(0, |j| j.started_epoch_ms);
        let t0 = self.job.as_ref().map_or(0, |j| j.started_session_ms);
        let rel = |t: u64| t.saturating_sub(start) + t0;
        let rounds: Vec<RoundReport> = self
            .manifest
            .iter()
            .flat_map(|m| m.rounds.iter())
            .filter(|r| r.aggregated())
            .map(|r| RoundReport {
                round: r.round as u32,
                started_ms: rel(r.started_unix_ms),
                finished_ms: rel(r.aggregated_unix_ms.unwrap_or_default()),
                latency_ms: latency_ms(r).unwrap_or_default(),
                clients_aggregated: r.updates.len() as u32,
                failures: r.failures.len() as u32,
                loss: r.evaluation.as_ref().and_then(|e| e.get("loss").copied()),
                accuracy: r
                    .evaluation
                    .as_ref()
                    .and_then(|e| e.get("accuracy").copied()),
                // No sim side to compare with: a Flower job runs only on local.
                global_digest: None,
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
        if let Some(first) = self
            .manifest
            .as_ref()
            .and_then(|m| m.rounds.iter().map(|r| r.started_unix_ms).min())
        {
            // fl.start to the ServerApp's first configure_train: processes, `flwr run`, the
            // ServerApp's own start-up.
            metrics.insert(
                "flower_standup_ms".to_string(),
                first.saturating_sub(start) as f64,
            );
        }
        // flwr's version as a number (1.42.0 -> 14200), so baselines notice an upgrade.
        let v: Vec<u64> = self
            .flwr_version
            .split('.')
            .filter_map(|p| p.parse().ok())
            .collect();
        if v.len() >= 2 {
            metrics.insert(
                "flwr_version_number".to_string(),
                (v[0] * 10_000 + v[1] * 100 + v.get(2).copied().unwrap_or(0)) as f64,
            );
        }
        metrics.insert(
            "local_idle_wait_skipped_ms".to_string(),
            self.idle_skipped_ms as f64,
        );
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
