//! `fl worker`: registers with a coordinator, then polls its task; when selected it pulls the
//! global model, trains locally with fl-core's trainers on its shard of a dataset, and uploads
//! the result (retrying the same bytes through coordinator restarts: uploads are idempotent).
//!
//! Knobs for scenarios: `--straggle-ms` (answer late), `--work-fraction` (partial work),
//! `--dropout-round` (die when selected for that round), `--byzantine` (send a poisoned update).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use fl_core::ModelView;
use fl_core::train::{TrainConfig, Trainer};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::api::*;
use crate::dataset;
use crate::modelio;

#[derive(Parser, Debug, Clone)]
#[command(name = "fl worker", about = "run an FL worker against a coordinator")]
pub struct Args {
    /// Coordinator base URL, e.g. http://127.0.0.1:8080 (https:// with --ca-cert).
    #[arg(long)]
    pub coordinator: String,
    /// This worker's client id (default: worker-<client-index>).
    #[arg(long)]
    pub client_id: Option<String>,
    #[arg(long)]
    pub api_key: Option<String>,
    /// A JWT bearer token (or --token-file).
    #[arg(long)]
    pub token: Option<String>,
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// CA that signed the coordinator's certificate.
    #[arg(long)]
    pub ca_cert: Option<PathBuf>,
    /// Client certificate and key for mTLS.
    #[arg(long)]
    pub client_cert: Option<PathBuf>,
    #[arg(long)]
    pub client_key: Option<PathBuf>,
    /// digits=PATH, synthetic or synthetic:ALPHA,BETA[,FEATURES[,MAX_EXAMPLES_PER_CLIENT]].
    #[arg(long)]
    pub dataset: String,
    /// iid or dirichlet=ALPHA (digits only; synthetic data is non-IID by construction).
    #[arg(long, default_value = "iid")]
    pub partition: String,
    #[arg(long, default_value_t = 10)]
    pub num_clients: usize,
    #[arg(long, default_value_t = 0)]
    pub client_index: usize,
    #[arg(long, default_value_t = 0.2)]
    pub test_fraction: f64,
    #[arg(long, default_value_t = 0)]
    pub data_seed: u64,
    /// Seed of the local shuffles (the stream of (seed, client index, round), fl_core::job).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Override the coordinator's local-training settings.
    #[arg(long)]
    pub epochs: Option<u32>,
    #[arg(long)]
    pub learning_rate: Option<f32>,
    #[arg(long)]
    pub batch_size: Option<usize>,
    #[arg(long)]
    pub proximal_mu: Option<f32>,
    /// Sleep this long after training, before uploading (a straggler).
    #[arg(long, default_value_t = 0)]
    pub straggle_ms: u64,
    /// Fraction of the planned SGD steps to do (FedProx partial work), in [0, 1].
    #[arg(long, default_value_t = 1.0)]
    pub work_fraction: f64,
    /// Exit (code 3) without answering when selected for this round (a dropout).
    #[arg(long)]
    pub dropout_round: Option<u64>,
    /// none, sign-flip, scale=K, noise=STDDEV or nan.
    #[arg(long, default_value = "none")]
    pub byzantine: String,
    #[arg(long, default_value_t = 100)]
    pub poll_ms: u64,
    /// Give up after this long without finishing.
    #[arg(long, default_value_t = 3600)]
    pub timeout_s: u64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Byzantine {
    None,
    /// Send `g - (w - g)`: the honest step reversed.
    SignFlip,
    /// Send `g + k (w - g)`.
    Scale(f32),
    /// Add Gaussian noise of this standard deviation to every weight.
    Noise(f32),
    /// Put a NaN in the first weight (the coordinator must refuse it).
    Nan,
}

pub fn parse_byzantine(s: &str) -> Result<Byzantine> {
    let num = |v: &str| {
        v.parse::<f32>()
            .with_context(|| format!("--byzantine {s}: `{v}` is not a number"))
    };
    Ok(match s {
        "none" => Byzantine::None,
        "sign-flip" => Byzantine::SignFlip,
        "nan" => Byzantine::Nan,
        _ => match s.split_once('=') {
            Some(("scale", v)) => Byzantine::Scale(num(v)?),
            Some(("noise", v)) => Byzantine::Noise(num(v)?),
            _ => bail!("--byzantine {s}: expected none, sign-flip, scale=K, noise=STDDEV or nan"),
        },
    })
}

/// Applies a Byzantine transform to trained parameters `w` given the global `g`.
pub fn poison(mode: Byzantine, g: &[f32], w: &mut [f32], rng: &mut ChaCha8Rng) {
    match mode {
        Byzantine::None => {}
        Byzantine::SignFlip => w.iter_mut().zip(g).for_each(|(w, g)| *w = g - (*w - g)),
        Byzantine::Scale(k) => w.iter_mut().zip(g).for_each(|(w, g)| *w = g + k * (*w - g)),
        Byzantine::Noise(sd) => {
            for w in w.iter_mut() {
                // Box-Muller from two uniforms of the worker's own stream.
                let (u1, u2): (f32, f32) = (rng.random_range(f32::EPSILON..1.0), rng.random());
                *w += sd * (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos();
            }
        }
        Byzantine::Nan => {
            if let Some(x) = w.first_mut() {
                *x = f32::NAN;
            }
        }
    }
}

pub fn run(args: Vec<String>) -> Result<()> {
    let args = crate::parse_args::<Args>("fl worker", args);
    crate::init_tracing();
    crate::tls::install_crypto_provider();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting tokio")?;
    rt.block_on(Worker::new(args)?.run())
}

struct Worker {
    args: Args,
    id: String,
    http: reqwest::Client,
    base: String,
    auth: Option<(&'static str, String)>,
    /// The client's training data and its held-out part (federated evaluation).
    data: fl_core::job::ClientData,
    byzantine: Byzantine,
    deadline: Instant,
}

impl Worker {
    fn new(args: Args) -> Result<Self> {
        let id = args
            .client_id
            .clone()
            .unwrap_or_else(|| format!("worker-{}", args.client_index));
        let mut b = reqwest::Client::builder()
            .timeout(Duration::from_secs(600))
            .connect_timeout(Duration::from_secs(5))
            // Below the coordinator's default read timeout (30 s), which closes connections
            // idle that long: a pooled connection is dropped here first, not reused as the
            // coordinator closes it.
            .pool_idle_timeout(Duration::from_secs(20));
        if let Some(ca) = &args.ca_cert {
            let ck = match (&args.client_cert, &args.client_key) {
                (Some(c), Some(k)) => Some((c.as_path(), k.as_path())),
                (None, None) => None,
                _ => bail!("--client-cert and --client-key go together"),
            };
            b = b.use_preconfigured_tls(crate::tls::client_config(ca, ck)?);
        }
        let token = match (&args.token, &args.token_file) {
            (Some(t), _) => Some(t.clone()),
            (None, Some(p)) => Some(
                std::fs::read_to_string(p)
                    .with_context(|| format!("reading {}", p.display()))?
                    .trim()
                    .to_owned(),
            ),
            (None, None) => None,
        };
        let auth = match (&args.api_key, token) {
            (Some(k), _) => Some((HDR_API_KEY, k.clone())),
            (None, Some(t)) => Some(("authorization", format!("Bearer {t}"))),
            (None, None) => None,
        };
        let spec = dataset::Spec {
            source: dataset::parse_source(&args.dataset)?,
            partition: dataset::parse_partition(&args.partition)?,
            num_clients: args.num_clients,
            test_fraction: args.test_fraction,
            seed: args.data_seed,
        };
        let data = spec.client(args.client_index)?;
        if !(0.0..=1.0).contains(&args.work_fraction) {
            bail!("--work-fraction {} is not in [0, 1]", args.work_fraction);
        }
        Ok(Self {
            byzantine: parse_byzantine(&args.byzantine)?,
            deadline: Instant::now() + Duration::from_secs(args.timeout_s),
            base: args.coordinator.trim_end_matches('/').to_owned(),
            http: b.build().context("building the http client")?,
            id,
            auth,
            data,
            args,
        })
    }

    fn req(&self, r: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.auth {
            Some((h, v)) => r.header(*h, v),
            None => r,
        }
    }

    fn check_deadline(&self, what: &str) -> Result<()> {
        if Instant::now() > self.deadline {
            bail!(
                "worker {}: gave up {what} after --timeout-s {}",
                self.id,
                self.args.timeout_s
            );
        }
        Ok(())
    }

    async fn pause(&self) {
        tokio::time::sleep(Duration::from_millis(self.args.poll_ms)).await;
    }

    /// Sends a request, retrying transport errors (the coordinator may be restarting) until the
    /// deadline; an HTTP error status is returned as an error with the server's JSON body.
    async fn send(
        &self,
        what: &str,
        make: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response> {
        loop {
            self.check_deadline(what)?;
            match self.req(make()).send().await {
                Ok(r) if r.status().is_success() => return Ok(r),
                Ok(r) => {
                    let s = r.status();
                    let body = r.text().await.unwrap_or_default();
                    if s.is_server_error() {
                        tracing::warn!(client = %self.id, "{what}: {s} {body}; retrying");
                    } else {
                        bail!("{what}: {s} {body}");
                    }
                }
                Err(e) => tracing::debug!(client = %self.id, "{what}: {e}; retrying"),
            }
            self.pause().await;
        }
    }

    async fn run(self) -> Result<()> {
        let url = format!("{}/api/v1/fl/register_client", self.base);
        let reg: RegisterResponse = self
            .send("register", || {
                self.http.post(&url).json(&RegisterRequest {
                    client_id: self.id.clone(),
                })
            })
            .await?
            .json()
            .await?;
        tracing::info!(client = %self.id, round = reg.round, examples = self.data.train.len(), "registered");
        let mut done_fit: Option<u64> = None;
        let mut done_eval: Option<u64> = None;
        let task_url = format!("{}/api/v1/fl/task", self.base);
        loop {
            let task: TaskResponse = self
                .send("task", || {
                    self.http.get(&task_url).query(&[("client_id", &self.id)])
                })
                .await?
                .json()
                .await?;
            if !task.registered {
                // The coordinator lost us (it never does across restarts, but be robust).
                self.send("register", || {
                    self.http.post(&url).json(&RegisterRequest {
                        client_id: self.id.clone(),
                    })
                })
                .await?;
            }
            match task.task.as_str() {
                "finished" => {
                    tracing::info!(client = %self.id, round = task.round, "training finished");
                    return Ok(());
                }
                "fit" if task.pending && done_fit != Some(task.round) => {
                    if self.args.dropout_round == Some(task.round) {
                        tracing::warn!(client = %self.id, round = task.round, "dropping out (--dropout-round)");
                        std::process::exit(3);
                    }
                    self.fit(&task).await?;
                    done_fit = Some(task.round);
                }
                "evaluate" if task.pending && done_eval != Some(task.round) => {
                    self.evaluate(&task).await?;
                    done_eval = Some(task.round);
                }
                _ => self.pause().await,
            }
        }
    }

    /// The global model's bytes as received (not copied again), if it is still `want_digest`.
    async fn fetch_model(&self, want_digest: &str) -> Result<Option<axum::body::Bytes>> {
        let url = format!("{}/api/v1/fl/model/latest", self.base);
        let r = self.send("model", || self.http.get(&url)).await?;
        let digest = r
            .headers()
            .get(HDR_DIGEST)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let bytes = r.bytes().await.context("downloading the model")?;
        if digest != want_digest {
            // The round moved on between the task and the download: ask again.
            return Ok(None);
        }
        Ok(Some(bytes))
    }

    async fn fit(&self, task: &TaskResponse) -> Result<()> {
        let Some(bytes) = self.fetch_model(&task.global_digest).await? else {
            return Ok(());
        };
        let global = ModelView::from_safetensors_labeled(&bytes, "global model")?;
        let arch = modelio::arch_of(&global)?;
        let g = modelio::to_params(arch, &global)?;
        let mut w = g.clone();
        let fc = task.fit_config;
        let cfg = TrainConfig {
            epochs: self.args.epochs.unwrap_or(fc.epochs),
            batch_size: self.args.batch_size.unwrap_or(fc.batch_size),
            learning_rate: self.args.learning_rate.unwrap_or(fc.learning_rate),
            proximal_mu: self.args.proximal_mu.unwrap_or(fc.proximal_mu),
            work_fraction: self.args.work_fraction,
        };
        // The stream the simulator trains this client with in this round (fl_core::job).
        let mut rng = fl_core::job::train_rng(self.args.seed, self.args.client_index, task.round);
        let report = Trainer::new(arch).train(&mut w, &self.data.train, &cfg, &mut rng)?;
        poison(self.byzantine, &g, &mut w, &mut rng);
        let body: Vec<u8> = modelio::from_params(arch, &w)?.to_safetensors();
        if self.args.straggle_ms > 0 {
            tokio::time::sleep(Duration::from_millis(self.args.straggle_ms)).await;
        }
        let metrics = serde_json::json!({ "train_loss": report.train_loss }).to_string();
        let n = report.num_examples.to_string();
        let round = task.round.to_string();
        let url = format!("{}/api/v1/fl/upload_update", self.base);
        let r = self
            .send("upload", || {
                self.http
                    .post(&url)
                    .query(&[
                        ("client_id", self.id.as_str()),
                        ("round", &round),
                        ("num_examples", &n),
                        ("metrics", &metrics),
                    ])
                    .header("content-type", "application/octet-stream")
                    .body(body.clone())
            })
            .await;
        match r {
            Ok(r) => {
                let up: UploadResponse = r.json().await?;
                tracing::info!(client = %self.id, round = task.round, loss = report.train_loss, replay = up.replay, "uploaded");
            }
            // A refusal (stale round, poisoned update...) is the coordinator's call: log, go on.
            Err(e) => {
                tracing::warn!(client = %self.id, round = task.round, "upload refused: {e:#}")
            }
        }
        Ok(())
    }

    async fn evaluate(&self, task: &TaskResponse) -> Result<()> {
        let Some(bytes) = self.fetch_model(&task.global_digest).await? else {
            return Ok(());
        };
        let global = ModelView::from_safetensors_labeled(&bytes, "global model")?;
        let arch = modelio::arch_of(&global)?;
        let p = modelio::to_params(arch, &global)?;
        let e = Trainer::new(arch).evaluate(&p, &self.data.test)?;
        let url = format!("{}/api/v1/fl/evaluate", self.base);
        let req = EvaluateRequest {
            client_id: self.id.clone(),
            round: task.round,
            num_examples: e.num_examples as u64,
            loss: e.loss,
            metrics: [("accuracy".to_owned(), e.accuracy)].into(),
        };
        if let Err(err) = self
            .send("evaluate", || self.http.post(&url).json(&req))
            .await
        {
            tracing::warn!(client = %self.id, round = task.round, "evaluate refused: {err:#}");
        }
        Ok(())
    }
}
