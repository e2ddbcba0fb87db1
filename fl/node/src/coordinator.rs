//! `fl coordinator`: the FL coordinator process. An axum HTTP shell around fl-core's sans-IO
//! round machine ([`fl_core::round::Coordinator`]), which it drives unchanged: HTTP handlers and
//! timers turn into [`Event`]s, the machine's [`Action`]s into storage, aggregation and replies.
//!
//! Durability: an upload is streamed to `tmp/`, fsynced, validated, renamed into `updates/`,
//! then the machine accepts it and its whole state is committed to the metadata database; only
//! then is the upload acknowledged. After a SIGKILL the restarted process restores that state,
//! recomputes the newest global model from its stored inputs (a round's aggregates are fsynced
//! after the commit that names them, see `App::undurable`) and feeds [`Event::Restart`], which
//! re-emits whatever was in flight.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use clap::Parser;
use fl_core::round::{
    AcceptedUpdate, Action, ClientId, Coordinator, Event, FitOutcome, Phase, RejectReason,
    RoundConfig, TimerId, UpdateId,
};
use fl_core::strategy::{Collector, Limits, Params, Update, build_strategy};
use fl_core::train::{Architecture, Trainer};
use fl_core::{FlError, Metrics as FlMetrics, ModelView};
use http_body_util::BodyExt;
use sha2::{Digest, Sha256};
use tokio::sync::Mutex;

use crate::api::*;
use crate::auth::{Auth, JwtConfig, Principal};
use crate::clock::{Clock, FileClock, SystemClock};
use crate::dataset;
use crate::metrics::Metrics;
use crate::modelio;
use crate::store::{Blobs, Commit, Meta, ModelRow, make_durable, rename_into, sync_dirs};

/// Default cap on one upload: 1 GiB (a 250M-parameter f32 model).
pub const DEFAULT_MAX_UPDATE_BYTES: u64 = 1 << 30;
/// Default `--read-timeout-ms`: hyper's own default for the request head (30 s), used for the
/// TLS handshake and the gaps inside a body too.
pub const DEFAULT_READ_TIMEOUT_MS: u64 = 30_000;
/// Cap on JSON request bodies (register, evaluate, inference).
pub const MAX_JSON_BYTES: usize = 4 << 20;
/// Rows per inference request.
pub const MAX_INFERENCE_ROWS: usize = 10_000;
/// Events one call may chain (aggregation -> evaluation -> next round ...): bounds the loop.
const MAX_CHAINED_EVENTS: usize = 64;
/// Longest a timer task sleeps before re-reading the (possibly skewed or file-driven) clock.
const TIMER_RECHECK: Duration = Duration::from_millis(200);
/// The embedded API description, also served at `/api/v1/openapi.json`.
pub const OPENAPI: &str = include_str!("../openapi.json");

#[derive(Parser, Debug, Clone)]
#[command(name = "fl coordinator", about = "run the FL coordinator (HTTP API)")]
pub struct Args {
    /// Address to listen on (127.0.0.1 only in tests; port 0 picks a free one, see --addr-file).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Where models, updates and (by default) the SQLite metadata live.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Metadata database: `sqlite://PATH` (default: DATA_DIR/meta.sqlite) or `postgres://...`.
    #[arg(long)]
    pub database: Option<String>,
    /// Where models and updates are durable: the data dir (default) or `s3://BUCKET[/PREFIX]`
    /// (then the data dir is a cache; S3 settings from the standard `AWS_*` variables).
    #[arg(long)]
    pub store: Option<String>,
    /// An S3 setting by object_store's name, repeatable: `--store-option endpoint=URL`,
    /// `allow_http=true`, `region=...`, `access_key_id=...`, `secret_access_key=...`.
    #[arg(long = "store-option", value_parser = parse_kv)]
    pub store_options: Vec<(String, String)>,
    /// Aggregation strategy (fl-core names: fedavg, fedprox, fedavgm, fedadam, krum, ...).
    #[arg(long, default_value = "fedavg")]
    pub strategy: String,
    /// Strategy parameter by Flower name, repeatable: `--strategy-param proximal_mu=0.1`.
    #[arg(long = "strategy-param", value_parser = parse_kv)]
    pub strategy_params: Vec<(String, String)>,
    /// Model architecture: softmax-<in>-<classes> or mlp-<in>-<hidden>-<classes>.
    #[arg(long, default_value = "softmax-64-10")]
    pub model: String,
    /// Seed of the initial model, client sampling and the DP noise.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, default_value_t = 1)]
    pub rounds: u64,
    #[arg(long, default_value_t = 2)]
    pub min_fit_clients: usize,
    #[arg(long, default_value_t = 2)]
    pub min_available_clients: usize,
    #[arg(long, default_value_t = 1.0)]
    pub fraction_fit: f64,
    /// Federated evaluation fraction (0 = none).
    #[arg(long, default_value_t = 0.0)]
    pub fraction_evaluate: f64,
    #[arg(long, default_value_t = 2)]
    pub min_evaluate_clients: usize,
    /// Fit (and evaluate) stage timeout; none = wait for every selected client.
    #[arg(long)]
    pub round_timeout_ms: Option<u64>,
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub accept_failures: bool,
    #[arg(long, default_value_t = 1)]
    pub min_fit_results: usize,
    /// Held-out data for centralised evaluation: digits=PATH, synthetic[:A,B[,FEATURES[,MAX]]].
    #[arg(long)]
    pub eval_data: Option<String>,
    /// At most this many rows of the held-out data, evenly spaced over it (default: all).
    #[arg(long)]
    pub eval_max_examples: Option<usize>,
    /// Number of clients the synthetic data is generated for (must match the workers').
    #[arg(long, default_value_t = 10)]
    pub data_clients: usize,
    #[arg(long, default_value_t = 0.2)]
    pub test_fraction: f64,
    #[arg(long, default_value_t = 0)]
    pub data_seed: u64,
    /// Local epochs the workers are told to run.
    #[arg(long, default_value_t = 1)]
    pub epochs: u32,
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 0.1)]
    pub learning_rate: f32,
    /// The proximal term the workers are told to use (default: FedProx's `proximal_mu`
    /// strategy parameter, which Flower's FedProx sends to its clients; 0 for other strategies).
    #[arg(long)]
    pub proximal_mu: Option<f32>,
    /// API-key file: `<key> <client-id|admin>` per line.
    #[arg(long)]
    pub api_keys: Option<PathBuf>,
    /// HS256 secret for JWT bearer tokens.
    #[arg(long)]
    pub jwt_secret_file: Option<PathBuf>,
    #[arg(long, default_value = "fl-coordinator")]
    pub jwt_audience: String,
    /// Serve without authentication (development only).
    #[arg(long)]
    pub no_auth: bool,
    /// TLS certificate chain (PEM); with --tls-key the API is served over TLS.
    #[arg(long)]
    pub tls_cert: Option<PathBuf>,
    #[arg(long)]
    pub tls_key: Option<PathBuf>,
    /// CA (PEM) whose certificates clients must present (mTLS).
    #[arg(long)]
    pub tls_client_ca: Option<PathBuf>,
    #[arg(long, default_value_t = DEFAULT_MAX_UPDATE_BYTES)]
    pub max_update_bytes: u64,
    /// The longest a client may keep a connection without sending: for the TLS handshake, for
    /// the request head, and between two pieces of a body. Past it the connection is closed
    /// (a body that stalls is answered 408 `read_timeout` first, and nothing of it is kept).
    #[arg(long, default_value_t = DEFAULT_READ_TIMEOUT_MS)]
    pub read_timeout_ms: u64,
    /// Shift the coordinator's clock by this much (a scenario's clock skew).
    #[arg(long, default_value_t = 0, allow_hyphen_values = true)]
    pub clock_skew_ms: i64,
    /// Read the clock (ms since the epoch) from this file instead of the system clock.
    #[arg(long)]
    pub clock_file: Option<PathBuf>,
    /// Write the bound address here once listening.
    #[arg(long)]
    pub addr_file: Option<PathBuf>,
}

pub(crate) fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("`{s}` is not KEY=VALUE"))
}

/// What is stored beside the state: a restart with a different configuration is refused.
#[derive(serde::Serialize)]
struct StoredConfig<'a> {
    round: &'a RoundConfig,
    strategy: &'a str,
    strategy_params: &'a Params,
    model: String,
    seed: u64,
}

/// The DP noise seed of `round` (also written by `fl export-round`): fl-core's, which the
/// simulator's aggregation uses too.
pub use fl_core::job::strategy_seed as round_seed;

struct Core {
    machine: Coordinator,
    /// History records already in the metadata database.
    saved_rounds: usize,
    /// Global models stored since the last commit, recorded with the next one.
    new_models: Vec<ModelRow>,
}

/// What the request handlers outside the round machine read (task polls, downloads, the
/// uploads' choice of model to validate against, inference), as of the last commit: published
/// after each one (shared, never copied per request), so that they never wait for the core
/// lock, which a commit holds through its fsyncs and an aggregation through its whole run
/// (bench `round`: downloads and uploads queued behind every upload's commit).
struct Published {
    round: u64,
    global_digest: String,
    phase: &'static str,
    /// What `GET /api/v1/fl/task` tells a client to do: fit, evaluate, wait or finished.
    task: &'static str,
    /// Selected for the current phase's task (fit or evaluate).
    selected: BTreeSet<ClientId>,
    pending: BTreeSet<ClientId>,
    registered: BTreeSet<ClientId>,
}

impl Published {
    fn of(m: &Coordinator) -> Self {
        let cur = m.current();
        let (task, selected) = match m.phase() {
            Phase::Fit { .. } => ("fit", cur.map(|c| c.selected.clone())),
            Phase::Evaluate { .. } => ("evaluate", cur.map(|c| c.eval_selected.clone())),
            Phase::Finished => ("finished", None),
            _ => ("wait", None),
        };
        Self {
            round: m.round(),
            global_digest: m.global_digest().to_owned(),
            phase: phase_name(m.phase()),
            task,
            selected: selected.unwrap_or_default(),
            pending: m.pending_clients().into_iter().collect(),
            registered: m.state().clients.clone(),
        }
    }
}

/// An event waiting for the next group commit, and where its actions go.
type Pending = (
    Event,
    tokio::sync::oneshot::Sender<Result<Arc<Vec<Action>>, String>>,
);

/// A stored global model mapped once and shared (downloads, validation, inference).
#[derive(Clone)]
struct SharedModel(Arc<memmap2::Mmap>);

impl AsRef<[u8]> for SharedModel {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// A background fsync of aggregates: the files, and the thread making them durable.
type Durability = (Vec<PathBuf>, std::thread::JoinHandle<Result<()>>);

/// Blocking disk tasks of uploads in flight at once (see `App::disk`): each holds a blocking
/// thread's stack and allocator caches, and the fsyncs they wait on overlap on the disk.
/// Measured with frame writes on the runtime's threads and aggregates fsynced after the commit
/// (2026-12-04; memory: bench `round_scale`, 50 workers x 1M params, peak anonymous memory in
/// models, target <= 3.82; overhead: bench `round`, 10 workers x 1 MB, target < 5%): 4 tasks
/// 3.53 models but 6.3-7.1% (the 10 uploads' fsyncs ran in three waves); 8 tasks 3.64-3.78
/// models and 2.1-4.3%; 10 tasks 3.65-3.90 models and 0-5.6%; 16 tasks 3.86 models.
const UPLOAD_DISK_TASKS: usize = 8;

/// Body frame size for model downloads: slices of the shared map, never copies.
const MODEL_FRAME_BYTES: usize = 256 << 10;

pub struct App {
    core: Mutex<Core>,
    /// Events waiting for the core lock; whoever takes it next feeds them all and commits the
    /// state once (group commit), then answers each.
    pending: std::sync::Mutex<Vec<Pending>>,
    /// The machine's round, phase and global model as of the last commit.
    published: std::sync::Mutex<Arc<Published>>,
    /// Directories that accepted uploads were renamed into since the last commit: each is
    /// fsynced once, by the next commit, before the state that names the files is (one
    /// directory fsync per batch, not one per upload).
    unsynced_dirs: std::sync::Mutex<BTreeSet<PathBuf>>,
    /// Aggregates (new global models, strategy states) written since the last commit and not
    /// yet durable: the commit hands them to a background fsync (`durability`). They are
    /// derived from durable inputs, so the commit naming them need not wait for the disk: a
    /// power cut that loses one is repaired on restart (`recover_newest`).
    undurable: std::sync::Mutex<Vec<PathBuf>>,
    /// The background fsync of the last committed round's aggregates, and their paths. The
    /// next aggregation waits for it, so at most the newest round's aggregates are not yet
    /// durable: a lost one is recomputed from inputs that all are.
    durability: std::sync::Mutex<Option<Durability>>,
    /// The current global model's map, by digest (replaced when the round moves on; readers
    /// in flight keep the old one alive through their `Arc`).
    global: std::sync::Mutex<Option<(String, SharedModel)>>,
    /// Bounds the uploads' blocking work (file creation; fsync, validation and the rename
    /// into place) in flight at once: with 50 uploads each would otherwise take a blocking
    /// thread of its own (357 threads seen when every frame write was one), each with its
    /// stack and a share of the malloc arenas. Frame writes run on the runtime's threads
    /// (`receive_update`).
    disk: Arc<tokio::sync::Semaphore>,
    blobs: Blobs,
    meta: Meta,
    metrics: Metrics,
    clock: Arc<dyn Clock>,
    auth: Auth,
    arch: Architecture,
    config_json: String,
    strategy: String,
    strategy_params: Params,
    fit: FitConfig,
    eval: Option<fl_core::data::Dataset>,
    max_update_bytes: u64,
    /// `--read-timeout-ms`: the longest wait for the next piece of a request body.
    read_timeout: Duration,
    seed: u64,
    ready: AtomicBool,
}

/// Large buffers (an aggregate's output tensors, a connection's read buffer at its cap) come
/// from and go back to the kernel directly: this size and up is always `mmap`ed. glibc's
/// default threshold rises to the largest block freed so far (up to 32 MiB), after which such
/// buffers are carved from the arena of whichever thread ran the aggregation and stay there
/// when freed: over rounds run on different threads that kept ~2.5 models per arena (bench
/// `round_scale`, `/proc/<pid>/smaps`).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD_BYTES: i32 = 256 << 10;

/// Pins glibc's mmap and trim thresholds (setting them turns the dynamic adjustment off) and
/// bounds the number of malloc arenas (default 8 per core, each keeping its own free memory).
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; called before any other thread exists.
    unsafe {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 2 * MMAP_THRESHOLD_BYTES);
        libc::mallopt(libc::M_ARENA_MAX, cores.clamp(2, 16) as i32);
    }
}

/// `malloc_trim`: hands the allocator's free pages back to the kernel. Called before each
/// aggregation (`App::aggregate`): a round's upload buffers are freed on whichever threads
/// served them, and the holes they leave inside the arenas are never trimmed from the top, so
/// without it the resident memory crept up round after round, and the aggregate's buffers came
/// on top of that garbage.
fn trim_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free memory to the kernel; any thread may call it.
    unsafe {
        libc::malloc_trim(0);
    }
}

pub fn run(args: Vec<String>) -> Result<()> {
    let args = crate::parse_args::<Args>("fl coordinator", args);
    tune_allocator();
    crate::init_tracing();
    crate::tls::install_crypto_provider();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        // Each blocking thread costs its stack and thread-local allocator caches; 512 (tokio's
        // default) were nearly reached with 50 uploads. Uploads hold at most UPLOAD_DISK_TASKS
        // of these at once (each of which may nest one more, with --store s3://), so this
        // leaves room for aggregation, inference and model maps.
        .max_blocking_threads(3 * UPLOAD_DISK_TASKS)
        .build()
        .context("starting tokio")?;
    rt.block_on(serve(args))
}

async fn serve(args: Args) -> Result<()> {
    let (app, listener) = start(&args).await?;
    let addr = listener.local_addr()?;
    if let Some(p) = &args.addr_file {
        let tmp = p.with_extension("tmp");
        std::fs::write(&tmp, addr.to_string())
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, p).with_context(|| format!("writing {}", p.display()))?;
    }
    let router = router(app.clone());
    tracing::info!(%addr, "coordinator listening");
    app.ready.store(true, Ordering::SeqCst);
    let tls = crate::tls::server_config(&args)?;
    crate::http::serve(
        listener,
        tls,
        router,
        Duration::from_millis(args.read_timeout_ms),
    )
    .await
}

pub async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => {}
    }
}

async fn start(args: &Args) -> Result<(Arc<App>, tokio::net::TcpListener)> {
    let arch = modelio::parse_arch(&args.model)?;
    let blobs = Blobs::open(&args.data_dir, args.store.as_deref(), &args.store_options)?;
    tracing::info!(store = %blobs.describe(), "blobs are durable here");
    let db = args
        .database
        .clone()
        .unwrap_or_else(|| format!("sqlite://{}", args.data_dir.join("meta.sqlite").display()));
    let meta = Meta::open(&db).await?;
    let clock: Arc<dyn Clock> = match &args.clock_file {
        Some(p) => Arc::new(FileClock::new(p.clone())?),
        None => Arc::new(SystemClock {
            skew_ms: args.clock_skew_ms,
        }),
    };
    let auth = if args.no_auth {
        tracing::warn!("--no-auth: every request is trusted");
        Auth::open()
    } else {
        let jwt = match &args.jwt_secret_file {
            Some(p) => Some(JwtConfig {
                secret: std::fs::read(p)
                    .with_context(|| format!("reading jwt secret {}", p.display()))?
                    .trim_ascii()
                    .to_vec(),
                audience: args.jwt_audience.clone(),
            }),
            None => None,
        };
        Auth::new(args.api_keys.as_deref(), jwt)?
    };
    let round_cfg = RoundConfig {
        num_rounds: args.rounds,
        seed: args.seed,
        fraction_fit: args.fraction_fit,
        min_fit_clients: args.min_fit_clients,
        min_available_clients: args.min_available_clients,
        fraction_evaluate: args.fraction_evaluate,
        min_evaluate_clients: args.min_evaluate_clients,
        accept_failures: args.accept_failures,
        min_fit_results: args.min_fit_results,
        fit_timeout_ms: args.round_timeout_ms,
        evaluate_timeout_ms: args.round_timeout_ms,
        centralized_evaluation: args.eval_data.is_some(),
        ..RoundConfig::default()
    };
    let strategy_params: Params = args.strategy_params.iter().cloned().collect();
    // Fail at start, not at the first aggregation, on an unknown strategy or parameter.
    build_strategy(&args.strategy, &strategy_params, Limits::default(), 0)
        .with_context(|| format!("--strategy {}", args.strategy))?;
    let eval = match &args.eval_data {
        Some(s) => {
            let spec = dataset::Spec {
                source: dataset::parse_source(s)?,
                partition: dataset::Partition::Iid,
                num_clients: args.data_clients,
                test_fraction: args.test_fraction,
                seed: args.data_seed,
            };
            Some(spec.test_set(args.eval_max_examples)?)
        }
        None => None,
    };
    let config_json = serde_json::to_string(&StoredConfig {
        round: &round_cfg,
        strategy: &args.strategy,
        strategy_params: &strategy_params,
        model: arch.to_string(),
        seed: args.seed,
    })?;
    let stored = meta.load_state().await?;
    let (machine, first_event) = match stored {
        Some((cfg, state)) => {
            if cfg != config_json {
                bail!(
                    "the data dir holds a run with another configuration; restart with the same flags or a new --data-dir\n stored: {cfg}\n given:  {config_json}"
                );
            }
            tracing::info!(round = state.round, "resuming from stored state");
            (Coordinator::restore(round_cfg, state)?, Event::Restart)
        }
        None => {
            // The initial model the simulator starts the same job from (fl_core::job).
            let model = modelio::from_params(arch, &fl_core::job::initial_params(arch, args.seed))?;
            let digest = model.digest().to_hex();
            let size_bytes = blobs.write_model_durable(&blobs.model_path(&digest), &model)?;
            let now = clock.now_ms();
            meta.put_model(&ModelRow {
                digest: digest.clone(),
                round: 0,
                size_bytes,
                created_ms: now,
            })
            .await?;
            (
                Coordinator::new(round_cfg)?,
                Event::Start {
                    global_digest: digest,
                },
            )
        }
    };
    let proximal_mu = match args.proximal_mu {
        Some(mu) => mu,
        None => fl_core::job::client_proximal_mu(&args.strategy, &strategy_params)
            .with_context(|| format!("--strategy {}", args.strategy))?,
    };
    let published = std::sync::Mutex::new(Arc::new(Published::of(&machine)));
    let app = Arc::new(App {
        published,
        core: Mutex::new(Core {
            saved_rounds: machine.history().len(),
            machine,
            new_models: Vec::new(),
        }),
        pending: std::sync::Mutex::new(Vec::new()),
        unsynced_dirs: std::sync::Mutex::new(BTreeSet::new()),
        undurable: std::sync::Mutex::new(Vec::new()),
        durability: std::sync::Mutex::new(None),
        global: std::sync::Mutex::new(None),
        disk: Arc::new(tokio::sync::Semaphore::new(UPLOAD_DISK_TASKS)),
        blobs,
        meta,
        metrics: Metrics::default(),
        clock,
        auth,
        arch,
        config_json,
        strategy: args.strategy.clone(),
        strategy_params,
        fit: FitConfig {
            epochs: args.epochs,
            batch_size: args.batch_size,
            learning_rate: args.learning_rate,
            proximal_mu,
        },
        eval,
        max_update_bytes: args.max_update_bytes,
        read_timeout: Duration::from_millis(args.read_timeout_ms),
        seed: args.seed,
        ready: AtomicBool::new(false),
    });
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    {
        let mut core = app.core.lock().await;
        if matches!(first_event, Event::Restart) {
            tokio::task::block_in_place(|| app.recover_newest(&core.machine))?;
        }
        app.feed(&mut core, vec![first_event]).await?;
    }
    Ok((app, listener))
}

pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route(
            "/api/v1/openapi.json",
            get(|| async { ([(header::CONTENT_TYPE, "application/json")], OPENAPI) }),
        )
        .route("/api/v1/fl/register_client", post(register))
        .route("/api/v1/fl/task", get(task))
        .route("/api/v1/fl/model/latest", get(model_latest))
        .route("/api/v1/fl/upload_update", post(upload))
        .route("/api/v1/fl/evaluate", post(evaluate))
        .route("/api/v1/fl/rounds", get(rounds))
        .route("/api/v1/inference", post(inference))
        .route("/api/v1/models", get(models))
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "path",
                "no such endpoint",
            )
        })
        .layer(middleware::from_fn_with_state(
            app.clone(),
            count_rejections,
        ))
        .with_state(app)
}

/// Counts every 4xx/5xx answer by endpoint and reason.
async fn count_rejections(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let path = req.uri().path().to_owned();
    let resp = next.run(req).await;
    if let Some(Rejected(code)) = resp.extensions().get::<Rejected>() {
        let endpoint = if path.starts_with("/api/") {
            path.as_str()
        } else {
            "other"
        };
        app.metrics.inc(
            "fl_requests_rejected_total",
            &[("endpoint", endpoint), ("reason", code)],
            1,
        );
    }
    resp
}

impl App {
    fn principal(&self, headers: &HeaderMap) -> Result<Principal, ApiError> {
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            });
        let key = headers.get(HDR_API_KEY).and_then(|v| v.to_str().ok());
        self.auth
            .authenticate(bearer, key, self.clock.now_ms())
            .map_err(|e| {
                let field = if key.is_some() {
                    HDR_API_KEY
                } else {
                    "authorization"
                };
                ApiError::new(StatusCode::UNAUTHORIZED, e.code(), field, e.to_string())
            })
    }

    fn act_for(
        &self,
        headers: &HeaderMap,
        field: &str,
        client: &str,
    ) -> Result<Principal, ApiError> {
        let p = self.principal(headers)?;
        check_client_id(field, client)?;
        if !p.may_act_for(client) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden_client",
                field,
                format!("credentials of {p:?} may not act for client `{client}`"),
            ));
        }
        // Over mTLS the certificate binds the client id too: a worker's certificate names
        // (subject alternative DNS names) the one client it may act for.
        if let Some(names) = headers
            .get(HDR_PEER_NAMES)
            .map(|v| v.to_str().unwrap_or_default())
            && !names.split(',').any(|n| n == client)
        {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden_client",
                field,
                format!(
                    "the client certificate (names: [{names}]) may not act for client `{client}`"
                ),
            ));
        }
        Ok(p)
    }

    /// Queues `event` for the next group commit and waits for its actions. The commit runs in
    /// its own task, so a request dropped halfway (a client gone) cannot stop the machine
    /// between a step and its commit.
    async fn submit(self: &Arc<Self>, event: Event) -> Result<Arc<Vec<Action>>, ApiError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((event, tx));
        let app = self.clone();
        tokio::spawn(async move {
            let mut core = app.core.lock().await;
            // Everything queued while the previous holder had the lock goes in one batch; an
            // empty queue means an earlier batch took this event.
            let batch = std::mem::take(&mut *app.pending.lock().unwrap_or_else(|e| e.into_inner()));
            if batch.is_empty() {
                return;
            }
            let (events, waiters): (Vec<Event>, Vec<_>) = batch.into_iter().unzip();
            app.metrics
                .inc("fl_state_commit_events_total", &[], events.len() as u64);
            let r = app
                .feed(&mut core, events)
                .await
                .map(Arc::new)
                .map_err(|e| format!("{e:#}"));
            drop(core);
            for w in waiters {
                let _ = w.send(r.clone());
            }
        });
        rx.await
            .map_err(|_| ApiError::internal("the commit task ended without an answer"))?
            .map_err(ApiError::internal)
    }

    /// Feeds events (and the events their actions produce) to the machine; the state is
    /// committed once, at the end, for the whole batch and chain, before anyone is answered.
    /// The side effects in between are pure and content-addressed: an aggregation writes the
    /// model under its digest (durably, before the state naming it is committed), and a crash
    /// before the commit leaves the stored state as it was, so no acknowledged update is lost
    /// and the unacknowledged uploads are retried and aggregated again (same digest). Returns
    /// the actions the callers answer with (accept/reject).
    async fn feed(self: &Arc<Self>, core: &mut Core, events: Vec<Event>) -> Result<Vec<Action>> {
        let limit = events.len() + MAX_CHAINED_EVENTS;
        let mut queue = VecDeque::from(events);
        let mut visible = Vec::new();
        let mut dirty = false;
        let mut steps = 0;
        while let Some(ev) = queue.pop_front() {
            steps += 1;
            if steps > limit {
                bail!("more than {MAX_CHAINED_EVENTS} chained events in one step");
            }
            let now = self.clock.now_ms();
            let actions = core
                .machine
                .on_event(now, ev)
                .map_err(|e| anyhow::anyhow!("round machine: {e}"))?;
            dirty = true;
            for a in actions {
                match a {
                    Action::SetTimer { timer, at_ms } => self.arm_timer(timer, at_ms),
                    Action::Aggregate {
                        round,
                        global_digest,
                        updates,
                    } => {
                        let t0 = Instant::now();
                        let r = tokio::task::block_in_place(|| {
                            self.aggregate(&core.machine, round, &global_digest, &updates)
                        });
                        match r {
                            Ok((digest, size, metrics)) => {
                                // Recorded with the commit of AggregationDone: a crash before
                                // it re-runs the aggregation, which gives the same digest.
                                core.new_models.push(ModelRow {
                                    digest: digest.clone(),
                                    round,
                                    size_bytes: size,
                                    created_ms: now,
                                });
                                self.metrics
                                    .observe("fl_aggregation_seconds", t0.elapsed().as_secs_f64());
                                tracing::info!(round, %digest, clients = updates.len(), "aggregated");
                                queue.push_back(Event::AggregationDone {
                                    round,
                                    global_digest: digest,
                                    metrics,
                                });
                            }
                            Err(e) => {
                                tracing::warn!(round, "aggregation failed: {e:#}");
                                queue.push_back(Event::AggregationFailed {
                                    round,
                                    reason: format!("{e:#}"),
                                });
                            }
                        }
                    }
                    Action::EvaluateCentralized {
                        round,
                        global_digest,
                    } => {
                        let (loss, metrics) =
                            tokio::task::block_in_place(|| self.evaluate_central(&global_digest))?;
                        queue.push_back(Event::CentralEvaluationDone {
                            round,
                            loss,
                            metrics,
                        });
                    }
                    Action::RoundCompleted(rec) => {
                        self.metrics.inc("fl_rounds_completed_total", &[], 1);
                        if let Some(l) = rec.latency_ms() {
                            self.metrics
                                .observe("fl_round_latency_seconds", l as f64 / 1000.0);
                        }
                        if let Some(acc) =
                            rec.central.as_ref().and_then(|c| c.metrics.get("accuracy"))
                        {
                            self.metrics.set("fl_global_accuracy", *acc);
                        }
                        // The record is written with the state that holds it (commit_state).
                        tracing::info!(round = rec.round, accepted = rec.accepted.len(), failures = rec.failures.len(),
                            central = ?rec.central, "round completed");
                    }
                    Action::FitRoundFailed { round, reason } => {
                        let code = match &reason {
                            fl_core::round::RoundFailure::SamplingFailed { .. } => {
                                "sampling_failed"
                            }
                            fl_core::round::RoundFailure::TooFewResults { .. } => "too_few_results",
                            fl_core::round::RoundFailure::FailuresNotAccepted { .. } => {
                                "failures_not_accepted"
                            }
                            fl_core::round::RoundFailure::Aggregation(_) => "aggregation_failed",
                        };
                        self.metrics
                            .inc("fl_rounds_failed_total", &[("reason", code)], 1);
                        tracing::warn!(round, %reason, "fit round failed");
                    }
                    Action::Finished {
                        rounds,
                        global_digest,
                    } => {
                        tracing::info!(rounds, %global_digest, "training finished");
                    }
                    other => visible.push(other),
                }
            }
        }
        if dirty {
            self.commit_state(core, &mut dirty, self.clock.now_ms())
                .await?;
        }
        self.metrics
            .set("fl_current_round", core.machine.round() as f64);
        self.metrics.set(
            "fl_registered_clients",
            core.machine.state().clients.len() as f64,
        );
        Ok(visible)
    }

    /// Commits the machine's state with its newly completed rounds and new models (one
    /// database transaction, durable on return), then publishes it to the readers that do
    /// not take the lock (`Published`).
    async fn commit_state(&self, core: &mut Core, dirty: &mut bool, now: u64) -> Result<()> {
        if !*dirty {
            return Ok(());
        }
        let t0 = Instant::now();
        // The renames the state depends on first: a crash after the commit must find every
        // file it names.
        let dirs: Vec<PathBuf> =
            std::mem::take(&mut *self.unsynced_dirs.lock().unwrap_or_else(|e| e.into_inner()))
                .into_iter()
                .collect();
        if let Err(e) = tokio::task::block_in_place(|| sync_dirs(&dirs)) {
            // Still unsynced: the next commit tries again.
            self.unsynced_dirs
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend(dirs);
            return Err(e);
        }
        self.meta
            .commit(&Commit {
                config: &self.config_json,
                state: core.machine.state(),
                saved_rounds: core.saved_rounds,
                models: &core.new_models,
                now_ms: now,
            })
            .await?;
        core.saved_rounds = core.machine.history().len();
        core.new_models.clear();
        self.start_durability();
        *self.published.lock().unwrap_or_else(|e| e.into_inner()) =
            Arc::new(Published::of(&core.machine));
        self.metrics.inc("fl_state_commits_total", &[], 1);
        self.metrics
            .observe("fl_state_commit_seconds", t0.elapsed().as_secs_f64());
        *dirty = false;
        Ok(())
    }

    /// The shared map of global model `digest`, if it is the one mapped.
    fn cached_global(&self, digest: &str) -> Option<SharedModel> {
        match &*self.global.lock().unwrap_or_else(|e| e.into_inner()) {
            Some((d, m)) if d == digest => Some(m.clone()),
            _ => None,
        }
    }

    /// The stored global model `digest`, mapped once and shared (may block: maps the file,
    /// or fetches it from the bucket first).
    fn global_model(&self, digest: &str) -> Result<SharedModel> {
        if let Some(m) = self.cached_global(digest) {
            return Ok(m);
        }
        let m = SharedModel(Arc::new(self.blobs.map(&self.blobs.model_path(digest))?));
        *self.global.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((digest.to_owned(), m.clone()));
        Ok(m)
    }

    fn arm_timer(self: &Arc<Self>, timer: TimerId, at_ms: u64) {
        let app = self.clone();
        tokio::spawn(async move {
            loop {
                let now = app.clock.now_ms();
                if now >= at_ms {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(at_ms - now).min(TIMER_RECHECK)).await;
            }
            let mut core = app.core.lock().await;
            if let Err(e) = app.feed(&mut core, vec![Event::TimerFired { timer }]).await {
                tracing::error!("timer {timer:?}: {e:#}");
            }
        });
    }

    /// Runs the strategy over exactly the machine's accepted updates and stores the model.
    fn aggregate(
        &self,
        machine: &Coordinator,
        round: u64,
        base: &str,
        updates: &[AcceptedUpdate],
    ) -> Result<(String, u64, FlMetrics)> {
        // The previous round's aggregates are durable before this one's exist (see `durability`).
        self.await_durable()?;
        // The round's upload buffers, freed on the threads that served them, go back to the
        // kernel before the aggregate's own buffers are mapped, so the two never add up (the
        // coordinator's peak memory, bench `round_scale`).
        trim_free_memory();
        let gmap = self.global_model(base)?;
        let umaps: Vec<memmap2::Mmap> = updates
            .iter()
            .map(|u| {
                self.blobs
                    .map(&self.blobs.update_path(round, &u.client.0, &u.update_id.0))
            })
            .collect::<Result<_>>()?;
        let prev_state = previous_state_path(&self.blobs, machine, round)?;
        // Mapped, not read: the state of FedAdam & co. is several models' worth of f64.
        let state_map = prev_state.as_deref().map(map_file).transpose()?;
        let global = ModelView::from_safetensors_labeled(gmap.as_ref(), "global model")?;
        let mut s = build_strategy(
            &self.strategy,
            &self.strategy_params,
            Limits::default(),
            round_seed(self.seed, round),
        )?;
        if let Some(b) = &state_map {
            s.load_state(&ModelView::from_safetensors_labeled(b, "strategy state")?)?;
        }
        s.begin(round, Some(global))?;
        for (u, m) in updates.iter().zip(&umaps) {
            let v = ModelView::from_safetensors_labeled(m, &u.client.0).with_context(|| {
                let p = self.blobs.update_path(round, &u.client.0, &u.update_id.0);
                format!("the stored update {}", p.display())
            })?;
            s.fold(
                Update::new(u.client.0.clone(), round, v, u.num_examples)
                    .with_metrics(u.metrics.clone()),
            )?;
        }
        let (model, metrics) = s.finish()?;
        let (digest, size, path) = self.blobs.write_aggregate(&model)?;
        self.undurable_file(path);
        drop(model);
        let st = s.state();
        if !st.is_empty() {
            let path = self.blobs.strategy_state_path(round);
            self.blobs.write_aggregate_at(&path, &st)?;
            self.undurable_file(path);
        }
        Ok((digest, size, metrics))
    }

    fn undurable_file(&self, path: PathBuf) {
        self.undurable
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(path);
    }

    /// Hands the aggregates written since the last commit to a background fsync (called once
    /// the commit that names them is durable). Without a thread they stay listed, for the
    /// next aggregation's `await_durable` to fsync.
    fn start_durability(&self) {
        let files = std::mem::take(&mut *self.undurable.lock().unwrap_or_else(|e| e.into_inner()));
        if files.is_empty() {
            return;
        }
        // Only an aggregation fills `undurable`, and it joined the previous task first.
        debug_assert!(self.durability.lock().is_ok_and(|d| d.is_none()));
        let paths = files.clone();
        let spawned = std::thread::Builder::new()
            .name("fl-durability".into())
            .spawn(move || make_durable(&paths));
        match spawned {
            Ok(h) => *self.durability.lock().unwrap_or_else(|e| e.into_inner()) = Some((files, h)),
            Err(e) => {
                tracing::warn!("no thread for the background fsync of a round's aggregates: {e}");
                self.undurable
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .extend(files);
            }
        }
    }

    /// Waits until every aggregate written so far is durable: joins the background fsync
    /// (doing again what it could not) and fsyncs what was never handed to one.
    fn await_durable(&self) -> Result<()> {
        let pending = self
            .durability
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some((files, h)) = pending {
            match h.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::warn!("background fsync of a round's aggregates: {e:#}; retrying");
                    make_durable(&files)?;
                }
                Err(_) => make_durable(&files)?,
            }
        }
        let left = std::mem::take(&mut *self.undurable.lock().unwrap_or_else(|e| e.into_inner()));
        make_durable(&left)
    }

    /// On restart: computes the current global model again from the stored inputs of the
    /// round that produced it (its accepted updates, its base model and the strategy state
    /// before it, all durable) and makes the result durable, with that round's strategy state.
    /// The coordinator commits a round without waiting for its aggregates to reach the disk
    /// (see `undurable`), so after a power cut they may be missing or cut short; after a
    /// plain kill they are intact and this rewrites the same bytes. A different digest is an
    /// error: the stored inputs no longer give the model the state names.
    fn recover_newest(&self, machine: &Coordinator) -> Result<()> {
        let global = machine.global_digest();
        let rec = machine
            .current()
            .into_iter()
            .chain(machine.history().iter().rev())
            .find(|r| {
                matches!(&r.fit, Some(FitOutcome::Aggregated { global_digest, .. })
                    if global_digest == global)
            });
        // None: the current global is the initial model, written durably before any commit.
        let Some(rec) = rec else {
            return Ok(());
        };
        let updates: Vec<AcceptedUpdate> = rec.accepted.values().cloned().collect();
        let t0 = Instant::now();
        let (digest, _, _) = self
            .aggregate(machine, rec.round, &rec.base_digest, &updates)
            .with_context(|| {
                format!(
                    "recomputing round {}'s global model {global} from its stored updates after a restart",
                    rec.round
                )
            })?;
        if digest != global {
            bail!(
                "round {}: its stored updates aggregate to {digest}, but the stored state names {global} as the global model",
                rec.round
            );
        }
        self.await_durable()?;
        tracing::info!(round = rec.round, %digest, ms = t0.elapsed().as_millis() as u64,
            "recomputed the newest global model from its stored updates");
        Ok(())
    }

    /// The machine's round, phase and global model as of the last commit.
    fn published(&self) -> Arc<Published> {
        self.published
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Notes a directory a file was renamed into, for the next commit to fsync.
    fn unsynced_dir(&self, dir: PathBuf) {
        self.unsynced_dirs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(dir);
    }

    fn evaluate_central(&self, digest: &str) -> Result<(f64, FlMetrics)> {
        let data = self
            .eval
            .as_ref()
            .context("centralised evaluation asked without --eval-data")?;
        let m = self.global_model(digest)?;
        let model = ModelView::from_safetensors_labeled(m.as_ref(), "global model")?;
        let params = modelio::to_params(self.arch, &model)?;
        let e = Trainer::new(self.arch).evaluate(&params, data)?;
        Ok((
            e.loss,
            FlMetrics::from([("accuracy".to_owned(), e.accuracy)]),
        ))
    }
}

/// The strategy state saved after the last aggregated round before `round`.
pub fn previous_state_path(
    blobs: &Blobs,
    machine: &Coordinator,
    round: u64,
) -> Result<Option<PathBuf>> {
    let Some(p) = machine
        .history()
        .iter()
        .rev()
        .filter(|r| r.round < round && r.aggregated())
        .map(|r| blobs.strategy_state_path(r.round))
        .next()
    else {
        return Ok(None);
    };
    if !blobs.exists(&p)? {
        return Ok(None);
    }
    blobs.ensure_local(&p)?;
    Ok(Some(p))
}

pub fn map_file(p: &Path) -> Result<memmap2::Mmap> {
    let f = std::fs::File::open(p).with_context(|| format!("opening {}", p.display()))?;
    // SAFETY: files under their final names are never modified in place (written to tmp/,
    // fsynced, renamed), so the mapping does not change under us.
    unsafe { memmap2::Mmap::map(&f) }.with_context(|| format!("mapping {}", p.display()))
}

fn phase_name(p: &Phase) -> &'static str {
    match p {
        Phase::Idle => "idle",
        Phase::Waiting { .. } => "waiting-for-clients",
        Phase::Fit { .. } => "fit",
        Phase::Aggregating => "aggregating",
        Phase::CentralEval => "central-evaluation",
        Phase::Evaluate { .. } => "evaluate",
        Phase::Finished => "finished",
    }
}

/// The next non-empty data frame of `body`, counted into `received`: a body that breaks off is
/// `truncated_body`, one past `limit` bytes `body_too_large` (413), one that sends nothing for
/// `timeout` `read_timeout` (408).
async fn next_chunk(
    body: &mut Body,
    received: &mut u64,
    limit: u64,
    timeout: Duration,
) -> Result<Option<Bytes>, ApiError> {
    loop {
        let Ok(next) = tokio::time::timeout(timeout, body.frame()).await else {
            return Err(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "read_timeout",
                "body",
                format!(
                    "nothing of the body arrived for {} ms after {received} bytes (--read-timeout-ms)",
                    timeout.as_millis()
                ),
            ));
        };
        let Some(frame) = next else {
            return Ok(None);
        };
        let frame = frame.map_err(|e| {
            ApiError::bad(
                "truncated_body",
                "body",
                format!("the body ended early after {received} bytes: {e}"),
            )
        })?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if data.is_empty() {
            continue;
        }
        *received += data.len() as u64;
        if *received > limit {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                "body",
                format!("over the limit of {limit} bytes"),
            ));
        }
        return Ok(Some(data));
    }
}

/// Reads a whole body up to `limit` bytes (for JSON bodies).
async fn read_limited(
    mut body: Body,
    limit: usize,
    timeout: Duration,
) -> Result<Vec<u8>, ApiError> {
    let mut out = Vec::new();
    let mut received = 0;
    while let Some(d) = next_chunk(&mut body, &mut received, limit as u64, timeout).await? {
        out.extend_from_slice(&d);
    }
    Ok(out)
}

/// Runs `f` on a blocking thread while it holds one of the disk permits (see `App::disk`).
async fn on_disk<T: Send + 'static>(
    disk: &Arc<tokio::sync::Semaphore>,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    let permit = disk
        .clone()
        .acquire_owned()
        .await
        .map_err(ApiError::internal)?;
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        f()
    })
    .await
    .map_err(|e| ApiError::internal(format!("blocking task: {e}")))
}

fn parse_json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| {
        let msg = e.to_string();
        // serde names the field in "missing field `x`" / "unknown field `x`" / "invalid type ... for `x`".
        let field = msg
            .split('`')
            .nth(1)
            .filter(|_| msg.contains("field"))
            .unwrap_or("body")
            .to_owned();
        ApiError::bad("invalid_json", field, msg)
    })
}

fn query_field<T: std::str::FromStr>(
    q: &BTreeMap<String, String>,
    name: &str,
) -> Result<T, ApiError>
where
    T::Err: std::fmt::Display,
{
    let v = q.get(name).ok_or_else(|| {
        ApiError::bad(
            "missing_field",
            name,
            format!("query parameter `{name}` is required"),
        )
    })?;
    v.parse::<T>()
        .map_err(|e| ApiError::bad("invalid_field", name, format!("`{v}`: {e}")))
}

async fn readyz(State(app): State<Arc<App>>) -> Response {
    if app.ready.load(Ordering::SeqCst) {
        "ready\n".into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting\n").into_response()
    }
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.metrics.render(),
    )
        .into_response()
}

async fn register(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    app.principal(&headers)?;
    let req: RegisterRequest =
        parse_json(&read_limited(body, MAX_JSON_BYTES, app.read_timeout).await?)?;
    app.act_for(&headers, "client_id", &req.client_id)?;
    app.submit(Event::ClientRegistered {
        client: ClientId(req.client_id.clone()),
    })
    .await?;
    app.metrics.inc("fl_clients_registered_total", &[], 1);
    let core = app.core.lock().await;
    let m = &core.machine;
    Ok(axum::Json(RegisterResponse {
        client_id: req.client_id,
        round: m.round(),
        phase: phase_name(m.phase()).into(),
        registered_clients: m.state().clients.len(),
    })
    .into_response())
}

async fn task(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Query(q): Query<BTreeMap<String, String>>,
) -> Result<Response, ApiError> {
    app.principal(&headers)?;
    let client: String = query_field(&q, "client_id")?;
    app.act_for(&headers, "client_id", &client)?;
    // From the last commit, without the core lock (held through commits and aggregations):
    // a worker is only told what is durable, so a restart cannot take back its selection.
    let p = app.published();
    let id = ClientId(client);
    Ok(axum::Json(TaskResponse {
        round: p.round,
        phase: p.phase.into(),
        task: p.task.into(),
        selected: p.selected.contains(&id),
        pending: p.pending.contains(&id),
        registered: p.registered.contains(&id),
        global_digest: p.global_digest.clone(),
        fit_config: app.fit,
    })
    .into_response())
}

async fn model_latest(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    app.principal(&headers)?;
    let p = app.published();
    let (round, digest) = (p.round, p.global_digest.clone());
    // The shared map is there after the first download of a round: no blocking thread then.
    let model = match app.cached_global(&digest) {
        Some(m) => m,
        None => {
            let (app, digest) = (app.clone(), digest.clone());
            tokio::task::spawn_blocking(move || app.global_model(&digest))
                .await
                .map_err(ApiError::internal)?
                .map_err(ApiError::internal)?
        }
    };
    let len = model.0.len();
    // Frames are slices of the one shared map: no per-request copy, whatever the model's size
    // (the pages are the page cache's, shared by every download).
    let whole = Bytes::from_owner(model);
    let frames = (0..len).step_by(MODEL_FRAME_BYTES).map(move |start| {
        Ok::<_, std::convert::Infallible>(whole.slice(start..(start + MODEL_FRAME_BYTES).min(len)))
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_LENGTH, len)
        .header(HDR_ROUND, round)
        .header(HDR_DIGEST, &digest)
        .body(Body::from_stream(futures_util::stream::iter(frames)))
        .map_err(ApiError::internal)
}

fn fl_error_to_api(e: FlError) -> ApiError {
    let t = |tensor: &str, what: &str| format!("body.tensors.{tensor}{what}");
    match &e {
        FlError::TruncatedSafetensors { .. } => {
            ApiError::bad("truncated_body", "body", e.to_string())
        }
        FlError::CorruptSafetensors { .. }
        | FlError::InvalidTensor { .. }
        | FlError::DuplicateTensor { .. } => ApiError::bad("corrupt_body", "body", e.to_string()),
        FlError::MissingTensor { tensor, .. } => {
            ApiError::bad("missing_tensor", t(tensor, ""), e.to_string())
        }
        FlError::UnexpectedTensor { tensor, .. } => {
            ApiError::bad("unexpected_tensor", t(tensor, ""), e.to_string())
        }
        FlError::TensorOrderMismatch { .. } => {
            ApiError::bad("tensor_order", "body.tensors", e.to_string())
        }
        FlError::ShapeMismatch { tensor, .. } => {
            ApiError::bad("bad_shape", t(tensor, ".shape"), e.to_string())
        }
        FlError::DTypeMismatch { tensor, .. } => {
            ApiError::bad("bad_dtype", t(tensor, ".dtype"), e.to_string())
        }
        FlError::NonFinite { tensor, .. } => {
            ApiError::bad("non_finite", t(tensor, ".values"), e.to_string())
        }
        FlError::NormTooLarge { .. } => ApiError::bad("norm_too_large", "body", e.to_string()),
        FlError::UpdateTooLarge { .. } => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            "body",
            e.to_string(),
        ),
        FlError::StaleRound { .. } => {
            ApiError::new(StatusCode::CONFLICT, "stale_round", "round", e.to_string())
        }
        FlError::FutureRound { .. } => {
            ApiError::new(StatusCode::CONFLICT, "future_round", "round", e.to_string())
        }
        _ => ApiError::bad("invalid_update", "body", e.to_string()),
    }
}

fn reject_to_api(r: &RejectReason) -> ApiError {
    let msg = r.to_string();
    match r {
        RejectReason::UnknownClient => ApiError::new(
            StatusCode::FORBIDDEN,
            "unknown_client",
            "client_id",
            format!("{msg}: register first"),
        ),
        RejectReason::StaleRound { .. } => {
            ApiError::new(StatusCode::CONFLICT, "stale_round", "round", msg)
        }
        RejectReason::FutureRound { .. } => {
            ApiError::new(StatusCode::CONFLICT, "future_round", "round", msg)
        }
        RejectReason::RoundClosed { .. } => {
            ApiError::new(StatusCode::CONFLICT, "round_closed", "round", msg)
        }
        RejectReason::NotSelected => {
            ApiError::new(StatusCode::FORBIDDEN, "not_selected", "client_id", msg)
        }
        RejectReason::Duplicate { .. } => {
            ApiError::new(StatusCode::CONFLICT, "duplicate_update", "body", msg)
        }
        RejectReason::AlreadyFailed { .. } => {
            ApiError::new(StatusCode::CONFLICT, "already_failed", "client_id", msg)
        }
        RejectReason::ZeroExamples => ApiError::bad("zero_examples", "num_examples", msg),
        RejectReason::NonFiniteLoss => ApiError::bad("non_finite_loss", "loss", msg),
    }
}

/// Removes a temporary file when dropped unless it was committed.
struct TmpGuard(Option<PathBuf>);

impl Drop for TmpGuard {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Streams an upload body into a new file at `tmp`: each body frame (at most the connection's
/// 64 KiB read buffer) is hashed and written before the next is read, so one frame of the
/// body is in memory at a time, whatever its size (the kernel's socket buffer keeps receiving
/// meanwhile). The frames are written on the runtime's own thread, as nginx writes request
/// bodies to its temporary files: a write of one frame into the page cache takes tens of
/// microseconds, less than the hand-off to a blocking thread and back that it replaced (two
/// wake-ups per frame, 16 per megabyte: the largest share of the coordinator's CPU per round
/// in bench `round`). The fsync, which waits for the disk, is the caller's, on a blocking
/// thread with the validation and the rename. Returns the open file, the size and the SHA-256
/// of the body (the update's content id), unless `hash` is false: then the caller hashes the
/// file while it is fsynced ([`hash_while_syncing`]).
async fn receive_update(
    body: Body,
    tmp: &Path,
    limit: u64,
    timeout: Duration,
    hash: bool,
    disk: &Arc<tokio::sync::Semaphore>,
) -> Result<(std::fs::File, u64, Option<String>), ApiError> {
    let path = tmp.to_owned();
    let mut file = on_disk(disk, move || std::fs::File::create(path))
        .await?
        .map_err(|e| ApiError::storage("creating the update file", e))?;
    let mut hasher = hash.then(Sha256::new);
    let mut size: u64 = 0;
    let mut body = body;
    while let Some(data) = next_chunk(&mut body, &mut size, limit, timeout).await? {
        if let Some(h) = &mut hasher {
            h.update(&data);
        }
        std::io::Write::write_all(&mut file, &data)
            .map_err(|e| ApiError::storage("writing the update", e))?;
    }
    Ok((file, size, hasher.map(|h| hex::encode(h.finalize()))))
}

/// Uploads at least this large (by their content-length) are hashed on a thread of their own
/// while their file is fsynced, not frame by frame as they arrive: SHA-256 runs at about
/// 2 GB/s, so inline it slowed a 100 MB upload's receiving by ~50 ms that the fsync's wait
/// for the disk (longer still) can hide. Below it, the thread costs more than it hides.
const PARALLEL_HASH_BYTES: u64 = 8 << 20;

fn sync_update(file: std::fs::File) -> Result<(), ApiError> {
    file.sync_all()
        .map_err(|e| ApiError::storage("fsync of the update", e))
}

/// Fsyncs `file` (written in full at `tmp`) while a scoped thread hashes the file's bytes.
/// Returns the SHA-256 of the body.
fn hash_while_syncing(file: std::fs::File, tmp: &Path) -> Result<String, ApiError> {
    // The pages were just written: hashing reads them from the page cache.
    let map = map_file(tmp).map_err(ApiError::internal)?;
    std::thread::scope(|s| {
        let h = s.spawn(|| hex::encode(Sha256::digest(&map[..])));
        let synced = sync_update(file);
        let id = h
            .join()
            .map_err(|_| ApiError::internal("hashing the update panicked"))?;
        synced.map(|()| id)
    })
}

/// Checks an update against the open round's global model (names, shapes, dtypes, finite
/// values, size), as the strategy's fold would.
fn validate_update(
    app: &App,
    global_digest: &str,
    limit: u64,
    update: Update<'_>,
) -> Result<(), ApiError> {
    let gmap = app
        .global_model(global_digest)
        .map_err(ApiError::internal)?;
    let global = ModelView::from_safetensors_labeled(gmap.as_ref(), "global model")
        .map_err(ApiError::internal)?;
    let mut c = Collector::new(
        "upload",
        Limits {
            max_update_bytes: Some(limit),
            ..Limits::default()
        },
    );
    c.begin(update.round, Some(global))
        .map_err(ApiError::internal)?;
    c.fold(update).map_err(fl_error_to_api)?;
    Ok(())
}

async fn upload(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Query(q): Query<BTreeMap<String, String>>,
    body: Body,
) -> Result<Response, ApiError> {
    let r = upload_inner(&app, &headers, &q, body).await;
    if let Err(e) = &r {
        app.metrics
            .inc("fl_updates_rejected_total", &[("reason", e.code)], 1);
    }
    r
}

async fn upload_inner(
    app: &Arc<App>,
    headers: &HeaderMap,
    q: &BTreeMap<String, String>,
    body: Body,
) -> Result<Response, ApiError> {
    // Authentication first: an anonymous request learns nothing about its fields.
    app.principal(headers)?;
    let client: String = query_field(q, "client_id")?;
    app.act_for(headers, "client_id", &client)?;
    let round: u64 = query_field(q, "round")?;
    let num_examples: u64 = query_field(q, "num_examples")?;
    if num_examples == 0 {
        return Err(ApiError::bad(
            "zero_examples",
            "num_examples",
            "must be at least 1",
        ));
    }
    let metrics: FlMetrics = match q.get("metrics") {
        Some(m) => {
            let v: FlMetrics = serde_json::from_str(m).map_err(|e| {
                ApiError::bad(
                    "invalid_field",
                    "metrics",
                    format!("not a JSON object of numbers: {e}"),
                )
            })?;
            if let Some((k, _)) = v.iter().find(|(_, x)| !x.is_finite()) {
                return Err(ApiError::bad(
                    "non_finite",
                    format!("metrics.{k}"),
                    "metric is not finite",
                ));
            }
            v
        }
        None => FlMetrics::new(),
    };
    let limit = app.max_update_bytes;
    let content_length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(len) = content_length
        && len > limit
    {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            "body",
            format!("content-length {len} is over the limit of {limit} bytes"),
        ));
    }

    // 1. Stream to tmp/, bounded, hashing as it comes unless it is large.
    let tmp = app.blobs.tmp_path();
    let mut guard = TmpGuard(Some(tmp.clone()));
    let hash_inline = content_length.is_none_or(|n| n < PARALLEL_HASH_BYTES);
    let (file, size, inline_id) =
        receive_update(body, &tmp, limit, app.read_timeout, hash_inline, &app.disk).await?;

    // 2. Fsync, validate against the open round's global model (zero-copy over the mapped
    //    files) and 3. move into place under its content id, in one blocking task.
    let published = app.published();
    // A round past the published one is refused here, as the machine refuses it, instead of
    // being left to the machine: in the moment between the machine's move to that round and
    // the publish after its commit, the machine could accept an update that was never checked
    // against the round's global model below (and a bad one would then fail the round's
    // aggregation). An honest worker only learns of a round from a published snapshot.
    if round > published.round && published.registered.contains(&ClientId(client.clone())) {
        return Err(reject_to_api(&RejectReason::FutureRound {
            current: published.round,
        }));
    }
    let (update_id, dest) = {
        let (app, tmp, client) = (app.clone(), tmp.clone(), client.clone());
        // Whatever the published phase: the machine may already be further (a round's fit
        // opening) than the snapshot says, and an update it accepts must have been checked.
        // Every phase of a round has a global model of the round's layout (its base, or after
        // the fit its aggregate: the same names, shapes and dtypes), so a late or replayed
        // upload is checked too, and then answered by the machine as before.
        let check_global = round == published.round;
        let disk = app.disk.clone();
        on_disk(&disk, move || -> Result<(String, PathBuf), ApiError> {
            // Fsynced before anything reads it (a large one is hashed meanwhile).
            let update_id = match inline_id {
                Some(id) => sync_update(file).map(|()| id)?,
                None => hash_while_syncing(file, &tmp)?,
            };
            let dest = app.blobs.update_path(round, &client, &update_id);
            let umap = map_file(&tmp).map_err(ApiError::internal)?;
            let view =
                ModelView::from_safetensors_labeled(&umap, &client).map_err(fl_error_to_api)?;
            if check_global {
                let update = Update::new(client, round, view, num_examples);
                validate_update(&app, &published.global_digest, limit, update)?;
            }
            drop(umap);
            // Under its content id. Durable in the bucket too (with --store s3://...) before
            // the machine may accept it; the rename is made durable by the directory's fsync
            // in the commit that accepts it (commit_state), before the ack.
            let dir = rename_into(&tmp, &dest).map_err(ApiError::internal)?;
            app.unsynced_dir(dir);
            app.blobs.persist(&dest).map_err(ApiError::internal)?;
            Ok((update_id, dest))
        })
        .await??
    };
    guard.0 = None;
    // 4. The machine decides; its state is committed (with whatever else arrived meanwhile)
    //    before we answer.
    let actions = app
        .submit(Event::UpdateReceived {
            client: ClientId(client.clone()),
            round,
            update_id: UpdateId(update_id.clone()),
            num_examples,
            metrics,
        })
        .await?;
    for a in actions.iter() {
        match a {
            Action::AcceptUpdate {
                client: c,
                update_id: id,
                replay,
                ..
            } if c.0 == client && id.0 == update_id => {
                let replay = *replay;
                if replay {
                    app.metrics.inc("fl_updates_replayed_total", &[], 1);
                } else {
                    app.metrics.inc("fl_updates_accepted_total", &[], 1);
                    app.metrics.inc("fl_update_bytes_total", &[], size);
                }
                return Ok(axum::Json(UploadResponse {
                    client_id: client,
                    round,
                    update_id,
                    replay,
                })
                .into_response());
            }
            Action::RejectUpdate {
                client: c,
                update_id: id,
                reason,
                ..
            } if c.0 == client && id.0 == update_id => {
                // Not accepted: drop our copy (an accepted update never has this path, since
                // an accepted one with the same id would have been a replay).
                let _ = std::fs::remove_file(&dest);
                return Err(reject_to_api(reason));
            }
            _ => {}
        }
    }
    Err(ApiError::internal(format!(
        "the round machine neither accepted nor rejected update {update_id}"
    )))
}

async fn evaluate(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    app.principal(&headers)?;
    let req: EvaluateRequest =
        parse_json(&read_limited(body, MAX_JSON_BYTES, app.read_timeout).await?)?;
    app.act_for(&headers, "client_id", &req.client_id)?;
    if !req.loss.is_finite() {
        return Err(ApiError::bad(
            "non_finite_loss",
            "loss",
            "loss is not finite",
        ));
    }
    let actions = app
        .submit(Event::EvaluateReceived {
            client: ClientId(req.client_id.clone()),
            round: req.round,
            num_examples: req.num_examples,
            loss: req.loss,
            metrics: req.metrics.clone(),
        })
        .await?;
    for a in actions.iter() {
        if let Action::RejectEvaluate { client, reason, .. } = a
            && client.0 == req.client_id
        {
            return Err(reject_to_api(reason));
        }
    }
    Ok(axum::Json(
        serde_json::json!({ "client_id": req.client_id, "round": req.round, "accepted": true }),
    )
    .into_response())
}

async fn rounds(State(app): State<Arc<App>>, headers: HeaderMap) -> Result<Response, ApiError> {
    app.principal(&headers)?;
    let core = app.core.lock().await;
    let m = &core.machine;
    Ok(axum::Json(serde_json::json!({
        "round": m.round(),
        "phase": phase_name(m.phase()),
        "finished": m.is_finished(),
        "global_digest": m.global_digest(),
        "initial_central": m.state().initial_central,
        "current": m.current(),
        "history": m.history(),
    }))
    .into_response())
}

async fn models(State(app): State<Arc<App>>, headers: HeaderMap) -> Result<Response, ApiError> {
    app.principal(&headers)?;
    let rows = app.meta.list_models().await.map_err(ApiError::internal)?;
    let core = app.core.lock().await;
    let m = &core.machine;
    let central = |digest: &str, round: u64| {
        if round == 0 {
            return m.state().initial_central.clone();
        }
        m.history()
            .iter()
            .find(|r| r.round == round && r.global_digest == digest)
            .and_then(|r| r.central.clone())
    };
    let models = rows
        .into_iter()
        .map(|r| {
            let c = central(&r.digest, r.round);
            ModelInfo {
                current: r.digest == m.global_digest(),
                accuracy: c.as_ref().and_then(|c| c.metrics.get("accuracy").copied()),
                loss: c.as_ref().map(|c| c.loss),
                digest: r.digest,
                round: r.round,
                size_bytes: r.size_bytes,
                created_ms: r.created_ms,
            }
        })
        .collect();
    Ok(axum::Json(ModelsResponse {
        current_round: m.round(),
        finished: m.is_finished(),
        models,
    })
    .into_response())
}

async fn inference(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    app.principal(&headers)?;
    let req: InferenceRequest =
        parse_json(&read_limited(body, MAX_JSON_BYTES, app.read_timeout).await?)?;
    if req.inputs.is_empty() || req.inputs.len() > MAX_INFERENCE_ROWS {
        return Err(ApiError::bad(
            "invalid_field",
            "inputs",
            format!("needs 1..={MAX_INFERENCE_ROWS} rows"),
        ));
    }
    let n = app.arch.inputs();
    for (i, row) in req.inputs.iter().enumerate() {
        if row.len() != n {
            return Err(ApiError::bad(
                "bad_shape",
                format!("inputs[{i}]"),
                format!("has {} values, the model takes {n}", row.len()),
            ));
        }
        if let Some(j) = row.iter().position(|v| !v.is_finite()) {
            return Err(ApiError::bad(
                "non_finite",
                format!("inputs[{i}][{j}]"),
                "value is not finite",
            ));
        }
    }
    let p = app.published();
    let (round, digest) = (p.round, &p.global_digest);
    let m = tokio::task::block_in_place(|| app.global_model(digest)).map_err(ApiError::internal)?;
    let model = ModelView::from_safetensors_labeled(m.as_ref(), "global model")
        .map_err(ApiError::internal)?;
    let params = modelio::to_params(app.arch, &model).map_err(ApiError::internal)?;
    let mut t = Trainer::new(app.arch);
    let predictions = req
        .inputs
        .iter()
        .map(|x| t.predict(&params, x))
        .collect::<Result<Vec<_>, _>>()
        .map_err(ApiError::internal)?;
    Ok(axum::Json(InferenceResponse {
        round,
        model_digest: digest.clone(),
        predictions,
    })
    .into_response())
}
