//! FL rounds on the simulated cluster: fl-core's [`Coordinator`] driven by the engine's event
//! queue, real local training, the real fl-core strategy every round, and an f64 oracle.
//!
//! [`FlModel`] is an engine [`Model`]. The coordinator and the clients are placed on topology
//! nodes (coordinator on the first node, clients round-robin over all nodes); a client
//! registers when its node becomes Ready, is lost when its node powers off and registers again
//! when it is Ready again; the coordinator crashes with its node and restarts from its persisted
//! state (serialised with serde, as the real shell stores it), resuming the round.
//!
//! Time: local training takes `6 * params * examples_processed / client_flops` (forward 2 and
//! backward 4 FLOPs per parameter and example, the usual estimate), models travel over links of
//! `bandwidth_bytes_per_s` plus `latency_us`; stragglers are slower and do partial work
//! (FedProx's systems heterogeneity), dropouts go silent for a round, slow links divide the
//! bandwidth, Byzantine clients send a sign-flipped, scaled update.
//!
//! Invariants (checked after every event of this model): each round's global model equals a
//! plain f64 recompute of the updates it accepted (FedAvg-family strategies; [`oracle`]), and
//! every acknowledged update is counted in its round exactly once.

pub mod oracle;

use std::any::Any;
use std::collections::{BTreeMap, BTreeSet};

use fl_core::data::Dataset;
use fl_core::job::{self, ClientData, DataPlan, Source, Synthetic};
use fl_core::model::Model as FlTensors;
use fl_core::round::{
    Action, ClientId, Coordinator, CoordinatorState, Event, Metrics, RoundConfig, RoundRecord,
    TimerId, UpdateId,
};
use fl_core::strategy::{Limits, Params, Update, build_strategy};
use fl_core::train::{Architecture, TrainConfig, Trainer};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::Time;
use crate::engine::{Model, ModelId, World};
use crate::trace::TraceEvent;

/// Scalar f32 training throughput of one core, in FLOP/s. A modelling assumption (not an
/// upstream default): plain loops without SIMD on a 2-3 GHz core reach about 1-2 GFLOP/s.
pub const FLOPS_PER_CORE: f64 = 1.5e9;

/// Bound on clients in one FL workload.
pub const MAX_FL_CLIENTS: usize = 100_000;

/// What the simulated FL workload does.
#[derive(Debug, Clone)]
pub struct FlConfig {
    pub clients: usize,
    /// Round semantics (num_rounds, fraction_fit, timeouts, ...). `seed` is replaced by one
    /// drawn from the simulation's stream.
    pub round: RoundConfig,
    /// Flower class name in lower case (`fedavg`, `fedprox`, `krum`, ...) and its parameters.
    pub strategy: String,
    pub strategy_params: Params,
    pub train: TrainConfig,
    /// Model: softmax regression or MLP over the synthetic features.
    pub hidden: Option<usize>,
    /// FedProx Synthetic(alpha, beta) data, one dataset per client.
    pub alpha: f64,
    pub beta: f64,
    pub num_features: usize,
    pub max_examples_per_client: usize,
    /// Held-out fraction of each client's data: its local evaluation set, and (capped at
    /// `central_test_examples`) the coordinator's centralised test set.
    pub test_fraction: f64,
    pub central_test_examples: usize,
    pub bandwidth_bytes_per_s: f64,
    pub latency_us: u64,
    /// Aggregation throughput of the coordinator (bytes of updates per second).
    pub coordinator_bytes_per_s: f64,
    pub faults: FlFaults,
}

/// FL-level faults, drawn per client (and per round for dropouts) from the simulation stream.
#[derive(Debug, Clone, PartialEq)]
pub struct FlFaults {
    pub straggler_fraction: f64,
    /// Training-time multiplier of a straggler.
    pub straggler_slowdown: f64,
    /// Fraction of the planned steps a straggler does.
    pub straggler_work_fraction: f64,
    /// Probability that a selected client goes silent for the round.
    pub dropout_probability: f64,
    pub slow_link_fraction: f64,
    /// Bandwidth divisor of a slow link.
    pub slow_link_factor: f64,
    /// The first `byzantine_clients` clients send `global - scale * (local - global)`.
    pub byzantine_clients: usize,
    pub byzantine_scale: f32,
}

impl Default for FlFaults {
    fn default() -> Self {
        Self {
            straggler_fraction: 0.0,
            straggler_slowdown: 4.0,
            straggler_work_fraction: 0.5,
            dropout_probability: 0.0,
            slow_link_fraction: 0.0,
            slow_link_factor: 10.0,
            byzantine_clients: 0,
            byzantine_scale: 10.0,
        }
    }
}

impl Default for FlConfig {
    fn default() -> Self {
        Self {
            clients: 10,
            round: RoundConfig {
                num_rounds: 5,
                fit_timeout_ms: Some(600_000),
                evaluate_timeout_ms: Some(600_000),
                centralized_evaluation: true,
                ..RoundConfig::default()
            },
            strategy: "fedavg".into(),
            strategy_params: Params::new(),
            train: TrainConfig {
                epochs: 1,
                batch_size: 10,
                learning_rate: 0.05,
                ..TrainConfig::default()
            },
            hidden: None,
            alpha: 0.5,
            beta: 0.5,
            num_features: 60,
            max_examples_per_client: 100,
            test_fraction: 0.2,
            central_test_examples: 2_000,
            bandwidth_bytes_per_s: 12.5e6, // 100 Mbit/s
            latency_us: 1_000,
            coordinator_bytes_per_s: 1e9,
            faults: FlFaults::default(),
        }
    }
}

impl FlConfig {
    /// The job's data as `fl`'s `--dataset` / `--eval-data` spec describes it.
    pub fn synthetic(&self) -> Synthetic {
        Synthetic {
            alpha: self.alpha,
            beta: self.beta,
            num_features: self.num_features,
            max_examples_per_client: self.max_examples_per_client,
        }
    }

    pub fn architecture(&self) -> Architecture {
        match self.hidden {
            None => Architecture::Softmax {
                inputs: self.num_features,
                classes: SYNTH_CLASSES,
            },
            Some(hidden) => Architecture::Mlp {
                inputs: self.num_features,
                hidden,
                classes: SYNTH_CLASSES,
            },
        }
    }
}

/// FedProx Synthetic's class count (10 in the paper).
const SYNTH_CLASSES: usize = job::SYNTHETIC_CLASSES;

/// The sim's own stream for workload faults (straggler and slow-link draws), apart from every
/// stream of [`fl_core::job`] (those are below `2^41`).
const FAULT_STREAM: u64 = 3 << 40;

/// Per-round results for reports.
#[derive(Debug, Clone, PartialEq)]
pub struct RoundStats {
    pub round: u64,
    pub latency_ms: u64,
    /// Virtual time the round completed at.
    pub finished_us: Time,
    pub selected: usize,
    pub accepted: usize,
    pub failures: usize,
    pub aggregated: bool,
    pub central_loss: Option<f64>,
    pub central_accuracy: Option<f64>,
    pub federated_loss: Option<f64>,
    pub global_digest: String,
}

struct Client {
    id: ClientId,
    node: String,
    train: Dataset,
    val: Dataset,
    flops: f64,
    straggler: bool,
    slow_link: bool,
    byzantine: bool,
    /// Per-client attack scale (the workload's `byzantine_scale` unless a fault set another).
    byzantine_scale: f32,
    /// Training-time multiplier while a straggler.
    straggler_slowdown: f64,
    /// Fraction of the planned steps a straggler does (FedProx's partial work for the workload's
    /// random stragglers; 1 for a straggler fault, whose training only takes longer).
    straggler_work_fraction: f64,
    /// The fit in progress: its training window, so a fault that lands during it changes it.
    fit_in_flight: Option<FitInFlight>,
    /// Dropped out by a fault: the client answers no fit or evaluate request.
    silent: bool,
    alive: bool,
    /// Bumped when the client's node dies: replies of an older incarnation are dropped.
    incarnation: u64,
}

/// A client's fit between the model's arrival and the upload's departure.
#[derive(Debug, Clone, Copy, PartialEq)]
struct FitInFlight {
    round: u64,
    /// Virtual time local training starts (the global model arrived).
    train_start_us: Time,
    /// Virtual time local training ends (moved later when the client becomes a straggler).
    train_end_us: Time,
    /// The slowdown the training runs at.
    slowdown: f64,
}

/// A fault set on one client while the job runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ClientFault {
    /// The client goes silent (no fit, no evaluate) until [`ClientFault::Rejoin`].
    Dropout,
    Rejoin,
    /// Training takes `slowdown` times longer (all of it: the client is slow, it does not cut
    /// its work short). A fit already training slows down from the fault's time on.
    Straggler {
        slowdown: f64,
    },
    /// The client's link has `1 / slow_link_factor` of the bandwidth.
    SlowLink,
    /// The client sends `global - scale * (local - global)` (a negative scale sends a scaled,
    /// unflipped update).
    Byzantine {
        scale: f32,
    },
}

/// Payloads on the engine queue.
enum Msg {
    Timer(TimerId),
    Upload {
        client: usize,
        incarnation: u64,
        round: u64,
        params: Vec<f32>,
        num_examples: u64,
        metrics: Metrics,
    },
    EvalReply {
        client: usize,
        incarnation: u64,
        round: u64,
        num_examples: u64,
        loss: f64,
        accuracy: f64,
    },
    AggregationDone {
        round: u64,
        coordinator_incarnation: u64,
    },
    CentralEvalDone {
        round: u64,
        coordinator_incarnation: u64,
        loss: f64,
        accuracy: f64,
    },
}

/// The FL workload as an engine model.
pub struct FlModel {
    cfg: FlConfig,
    arch: Architecture,
    trainer: Trainer,
    clients: Vec<Client>,
    by_id: BTreeMap<ClientId, usize>,
    test: Dataset,
    coordinator_node: String,
    coordinator: Option<Coordinator>,
    coordinator_incarnation: u64,
    started: bool,
    /// What the coordinator's shell persisted (JSON of the machine state) while it is down.
    persisted: Option<String>,
    /// Global models by digest (the current one and the one a round started from).
    globals: BTreeMap<String, Vec<f32>>,
    global_digest: String,
    /// The shell's durable update store: update id -> (round, client, params, examples).
    store: BTreeMap<UpdateId, (u64, ClientId, Vec<f32>, u64)>,
    /// Strategy state between rounds (momentum, Adam moments).
    strategy_state: FlTensors,
    /// A finished aggregation awaiting its AggregationDone delivery.
    aggregated: Option<(u64, Vec<f32>, String, Metrics)>,
    acked: BTreeMap<u64, BTreeSet<ClientId>>,
    central: BTreeMap<u64, (f64, f64)>,
    stats: Vec<RoundStats>,
    violation: Option<(String, String)>,
    me: ModelId,
}

impl FlModel {
    /// Builds the workload: datasets (from `seed`), placement over the topology's nodes.
    pub fn new(cfg: FlConfig, node_names: &[String], seed: u64) -> Result<Self, String> {
        if cfg.clients == 0 || cfg.clients > MAX_FL_CLIENTS {
            return Err(format!(
                "fl: clients {} is not in 1..={MAX_FL_CLIENTS}",
                cfg.clients
            ));
        }
        if node_names.is_empty() {
            return Err(
                "fl: the topology has no nodes to place the coordinator and clients on".into(),
            );
        }
        let mut round = cfg.round.clone();
        round.seed = seed;
        round.validate().map_err(|e| format!("fl: {e}"))?;
        // Data, initial model, client ids: the derivations `fl coordinator` and `fl worker`
        // use too (fl_core::job), so the same seed gives the same global models on both.
        let plan = DataPlan {
            source: Source::Synthetic(cfg.synthetic()),
            num_clients: cfg.clients,
            test_fraction: cfg.test_fraction,
            seed,
        };
        let datasets = plan.clients().map_err(|e| format!("fl: {e}"))?;
        let arch = cfg.architecture();
        let per_node = cfg.clients.div_ceil(node_names.len());
        // Workload faults (which clients straggle or sit behind a slow link) are the
        // simulator's own: a stream apart from everything the job derives.
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(FAULT_STREAM);
        let mut clients = Vec::with_capacity(cfg.clients);
        let mut vals = Vec::new();
        for (k, d) in datasets.into_iter().enumerate() {
            let ClientData { train, test: val } = d;
            let node = node_names[k % node_names.len()].clone();
            let f = &cfg.faults;
            vals.push(val.clone());
            clients.push(Client {
                id: job::client_id(k),
                node,
                train,
                val,
                // Each client pod gets an equal share of one core per co-located client, at least
                // a tenth of a core.
                flops: FLOPS_PER_CORE / (per_node as f64).clamp(1.0, 10.0),
                straggler: rng.random_bool(f.straggler_fraction.clamp(0.0, 1.0)),
                slow_link: rng.random_bool(f.slow_link_fraction.clamp(0.0, 1.0)),
                byzantine: k < f.byzantine_clients,
                byzantine_scale: f.byzantine_scale,
                straggler_slowdown: f.straggler_slowdown,
                straggler_work_fraction: f.straggler_work_fraction,
                fit_in_flight: None,
                silent: false,
                alive: false,
                incarnation: 0,
            });
        }
        let test = job::central_test_of(&vals, Some(cfg.central_test_examples))
            .map_err(|e| format!("fl: {e}"))?;
        let init = job::initial_params(arch, seed);
        let digest = arch
            .to_model(&init)
            .map_err(|e| format!("fl: {e}"))?
            .digest()
            .to_hex();
        let by_id = clients
            .iter()
            .enumerate()
            .map(|(k, c)| (c.id.clone(), k))
            .collect();
        let coordinator = Coordinator::new(round.clone()).map_err(|e| format!("fl: {e}"))?;
        let mut cfg = cfg;
        cfg.round = round;
        // FedProx sends its proximal_mu to the clients (as `fl coordinator` does).
        if cfg.strategy == "fedprox" {
            cfg.train.proximal_mu = job::client_proximal_mu(&cfg.strategy, &cfg.strategy_params)
                .map_err(|e| format!("fl: {e}"))?;
        }
        Ok(Self {
            arch,
            trainer: Trainer::new(arch),
            clients,
            by_id,
            test,
            coordinator_node: node_names[0].clone(),
            coordinator: Some(coordinator),
            coordinator_incarnation: 0,
            started: false,
            persisted: None,
            globals: BTreeMap::from([(digest.clone(), init)]),
            global_digest: digest,
            store: BTreeMap::new(),
            strategy_state: FlTensors::default(),
            aggregated: None,
            acked: BTreeMap::new(),
            central: BTreeMap::new(),
            stats: Vec::new(),
            violation: None,
            me: ModelId(usize::MAX),
            cfg,
        })
    }

    /// Changes client `client`'s fault state from virtual time `now` on (a fault injected while
    /// the job runs). A straggler fault also slows the fit the client is training at `now`: the
    /// rest of its training takes `slowdown` times longer. Other faults take effect from the
    /// client's next request or reply.
    pub fn set_client_fault(
        &mut self,
        client: usize,
        fault: ClientFault,
        now: Time,
    ) -> Result<(), String> {
        let n = self.clients.len();
        let c = self.clients.get_mut(client).ok_or_else(|| {
            format!("fl: client {client} does not exist (the job has {n} clients)")
        })?;
        match fault {
            ClientFault::Dropout => c.silent = true,
            ClientFault::Rejoin => c.silent = false,
            ClientFault::Straggler { slowdown } => {
                if !(slowdown.is_finite() && slowdown >= 1.0) {
                    return Err(format!(
                        "fl: client {client}: straggler slowdown {slowdown} is not a finite factor >= 1"
                    ));
                }
                c.straggler = true;
                c.straggler_slowdown = slowdown;
                c.straggler_work_fraction = 1.0;
                if let Some(f) = c.fit_in_flight.as_mut()
                    && f.train_end_us > now
                {
                    let from = now.max(f.train_start_us);
                    let rest = (f.train_end_us - from) as f64 * slowdown / f.slowdown;
                    f.train_end_us = from + rest as Time;
                    f.slowdown = slowdown;
                }
            }
            ClientFault::SlowLink => c.slow_link = true,
            ClientFault::Byzantine { scale } => {
                if !scale.is_finite() {
                    return Err(format!(
                        "fl: client {client}: attack scale {scale} is not finite"
                    ));
                }
                c.byzantine = true;
                c.byzantine_scale = scale;
            }
        }
        Ok(())
    }

    /// The coordinator's state machine (None while its node is down): round and phase.
    pub fn coordinator(&self) -> Option<&Coordinator> {
        self.coordinator.as_ref()
    }

    /// Number of clients of the job.
    pub fn num_clients(&self) -> usize {
        self.clients.len()
    }

    /// The workload's configuration (strategy, rounds, faults).
    pub fn config(&self) -> &FlConfig {
        &self.cfg
    }

    /// Per-round results so far.
    pub fn rounds(&self) -> &[RoundStats] {
        &self.stats
    }

    pub fn is_finished(&self) -> bool {
        self.coordinator
            .as_ref()
            .is_some_and(Coordinator::is_finished)
    }

    /// The coordinator's history (None while it is down).
    pub fn history(&self) -> Option<&[RoundRecord]> {
        self.coordinator.as_ref().map(Coordinator::history)
    }

    pub fn global_params(&self) -> &[f32] {
        &self.globals[&self.global_digest]
    }

    fn model_bytes(&self) -> f64 {
        (self.arch.num_params() * 4) as f64
    }

    fn transfer_us(&self, client: usize) -> Time {
        let mut bw = self.cfg.bandwidth_bytes_per_s;
        if self.clients[client].slow_link {
            bw /= self.cfg.faults.slow_link_factor.max(1.0);
        }
        self.cfg.latency_us + (self.model_bytes() / bw * 1e6) as Time
    }

    /// Feeds one event to the coordinator and carries out its actions.
    fn feed(&mut self, world: &mut World, event: Event) {
        let now_ms = world.now() / 1_000;
        let Some(coord) = self.coordinator.as_mut() else {
            return;
        };
        match coord.on_event(now_ms, event) {
            Ok(actions) => {
                for a in actions {
                    self.act(world, a);
                }
            }
            Err(e) => self.violate("fl-protocol", e.to_string()),
        }
    }

    fn violate(&mut self, invariant: &str, message: String) {
        if self.violation.is_none() {
            self.violation = Some((invariant.to_string(), message));
        }
    }

    fn act(&mut self, world: &mut World, action: Action) {
        let now = world.now();
        match action {
            Action::SetTimer { timer, at_ms } => {
                world.send_to_model(
                    at_ms.saturating_mul(1_000),
                    self.me,
                    Box::new(Msg::Timer(timer)),
                );
            }
            Action::SendFit {
                round,
                client,
                global_digest,
            } => self.fit(world, round, &client, &global_digest),
            Action::SendEvaluate {
                round,
                client,
                global_digest,
            } => {
                let k = self.by_id[&client];
                let c = &self.clients[k];
                if !c.alive || c.silent || self.drops(k, round, 1) {
                    return;
                }
                let params = &self.globals[&global_digest];
                let Ok(eval) = self.trainer.evaluate(params, &c.val) else {
                    return;
                };
                let compute_us = (2.0 * self.arch.num_params() as f64 * c.val.len() as f64
                    / c.flops
                    * 1e6) as Time;
                let at = now + 2 * self.transfer_us(k) + compute_us;
                let msg = Msg::EvalReply {
                    client: k,
                    incarnation: self.clients[k].incarnation,
                    round,
                    num_examples: eval.num_examples as u64,
                    loss: eval.loss,
                    accuracy: eval.accuracy,
                };
                world.send_to_model(at, self.me, Box::new(msg));
            }
            Action::AcceptUpdate {
                round,
                client,
                replay,
                update_id,
            } => {
                let fresh = self.acked.entry(round).or_default().insert(client.clone());
                if fresh == replay {
                    self.violate("fl-ack-once", format!("round {round}: {client} acknowledged with replay={replay} ({update_id})"));
                }
            }
            Action::RejectUpdate { update_id, .. } => {
                self.store.remove(&update_id);
            }
            Action::Aggregate {
                round,
                global_digest,
                updates,
            } => {
                world.trace_ext("fl", "phase", format!("round {round} aggregate"));
                self.aggregate(world, round, &global_digest, &updates)
            }
            Action::EvaluateCentralized {
                round,
                global_digest,
            } => {
                let params = &self.globals[&global_digest];
                let eval = self.trainer.evaluate(params, &self.test);
                let (loss, accuracy) = eval
                    .map(|e| (e.loss, e.accuracy))
                    .unwrap_or((f64::NAN, 0.0));
                let compute_us = (2.0 * self.arch.num_params() as f64 * self.test.len() as f64
                    / FLOPS_PER_CORE
                    * 1e6) as Time;
                let msg = Msg::CentralEvalDone {
                    round,
                    coordinator_incarnation: self.coordinator_incarnation,
                    loss,
                    accuracy,
                };
                world.send_to_model(now + compute_us, self.me, Box::new(msg));
            }
            Action::RoundCompleted(rec) => self.round_completed(world, &rec),
            Action::Finished {
                rounds,
                global_digest,
            } => {
                world.trace_ext(
                    "fl",
                    "finished",
                    format!("rounds {rounds} global {global_digest}"),
                );
            }
            // Phase starts, traced so a scenario can act at "round N, fit phase".
            Action::FitSelected { round, clients } => world.trace_ext(
                "fl",
                "phase",
                format!("round {round} fit clients {}", clients.len()),
            ),
            Action::EvaluateSelected { round, clients } => world.trace_ext(
                "fl",
                "phase",
                format!("round {round} evaluate clients {}", clients.len()),
            ),
            Action::FitRoundFailed { .. } | Action::RejectEvaluate { .. } => {}
        }
    }

    /// Whether client `k` goes silent in `round` (`stage` 0 fit, 1 evaluate): a draw from a
    /// stream keyed by (seed, client, round, stage), so it does not depend on event order.
    fn drops(&self, k: usize, round: u64, stage: u64) -> bool {
        let p = self.cfg.faults.dropout_probability;
        if p <= 0.0 {
            return false;
        }
        let mut r = ChaCha8Rng::seed_from_u64(self.cfg.round.seed ^ 0xD80F);
        r.set_stream(((k as u64) << 20) | (round << 1) | stage);
        r.random_bool(p.min(1.0))
    }

    fn fit(&mut self, world: &mut World, round: u64, client: &ClientId, global_digest: &str) {
        let k = self.by_id[client];
        if !self.clients[k].alive || self.clients[k].silent || self.drops(k, round, 0) {
            return;
        }
        let global = self.globals[global_digest].clone();
        let c = &self.clients[k];
        let mut cfg = self.cfg.train;
        let mut slowdown = 1.0;
        if c.straggler {
            cfg.work_fraction = c.straggler_work_fraction;
            slowdown = c.straggler_slowdown;
        }
        // Training randomness keyed by (seed, client, round): independent of event order, and
        // the stream `fl worker` trains with.
        let mut rng = job::train_rng(self.cfg.round.seed, k, round);
        let mut params = global.clone();
        let report = match self.trainer.train(&mut params, &c.train, &cfg, &mut rng) {
            Ok(r) => r,
            Err(e) => {
                let ev = Event::FitFailed {
                    client: client.clone(),
                    round,
                    reason: e.to_string(),
                };
                self.feed(world, ev);
                return;
            }
        };
        if c.byzantine {
            let s = c.byzantine_scale;
            for (p, g) in params.iter_mut().zip(&global) {
                *p = g - s * (*p - g);
            }
        }
        let flops = 6.0 * self.arch.num_params() as f64 * report.examples_seen as f64;
        let train_us = (flops / c.flops * slowdown * 1e6) as Time;
        let transfer = self.transfer_us(k);
        let train_start_us = world.now() + transfer;
        let at = train_start_us + train_us + transfer;
        self.clients[k].fit_in_flight = Some(FitInFlight {
            round,
            train_start_us,
            train_end_us: train_start_us + train_us,
            slowdown,
        });
        let c = &self.clients[k];
        let msg = Msg::Upload {
            client: k,
            incarnation: c.incarnation,
            round,
            params,
            num_examples: report.num_examples as u64,
            metrics: Metrics::from([("train_loss".to_string(), report.train_loss)]),
        };
        world.send_to_model(at, self.me, Box::new(msg));
    }

    fn aggregate(
        &mut self,
        world: &mut World,
        round: u64,
        base: &str,
        updates: &[fl_core::round::AcceptedUpdate],
    ) {
        let arch = self.arch;
        let mut models = Vec::with_capacity(updates.len());
        let mut flat = Vec::with_capacity(updates.len());
        let mut problem = None;
        for u in updates {
            match self.store.get(&u.update_id) {
                Some((r, c, params, n))
                    if *r == round && *c == u.client && *n == u.num_examples =>
                {
                    models.push((
                        u.client.0.clone(),
                        arch.to_model(params).expect("layout"),
                        *n,
                        u.metrics.clone(),
                    ));
                    flat.push((params.as_slice(), *n));
                }
                Some(_) => {
                    problem = Some(format!(
                        "round {round}: stored update {} does not match",
                        u.update_id
                    ))
                }
                None => {
                    problem = Some(format!(
                        "round {round}: accepted update {} is not in the store",
                        u.update_id
                    ))
                }
            }
            if problem.is_some() {
                break;
            }
        }
        if let Some(p) = problem {
            self.violate("fl-no-update-lost", p);
            return;
        }
        let base_params = self.globals[base].clone();
        let base_model = arch.to_model(&base_params).expect("layout");
        let result = (|| {
            let mut s = build_strategy(
                &self.cfg.strategy,
                &self.cfg.strategy_params,
                Limits::default(),
                job::strategy_seed(self.cfg.round.seed, round),
            )?;
            s.load_state(&self.strategy_state.view())?;
            s.begin(round, Some(base_model.view()))?;
            // As `fl coordinator` folds them: with the client's fit metrics.
            for (client, m, n, metrics) in &models {
                s.fold(
                    Update::new(client.clone(), round, m.view(), *n).with_metrics(metrics.clone()),
                )?;
            }
            let (model, metrics) = s.finish()?;
            Ok::<_, fl_core::FlError>((model, metrics, s.state()))
        })();
        let now = world.now();
        let bytes = self.model_bytes() * updates.len() as f64;
        let at = now + (bytes / self.cfg.coordinator_bytes_per_s * 1e6) as Time;
        match result {
            Ok((model, metrics, state)) => {
                let params = match arch.params_from_model(&model.view()) {
                    Ok(p) => p,
                    Err(e) => {
                        self.violate("fl-aggregate", format!("round {round}: {e}"));
                        return;
                    }
                };
                if let Some(why) = oracle::check(&self.cfg.strategy, &arch, &flat, &params) {
                    self.violate(
                        "fl-global-equals-recompute",
                        format!("round {round}: {why}"),
                    );
                }
                self.strategy_state = state;
                let digest = model.digest().to_hex();
                self.aggregated = Some((round, params, digest, metrics));
                let msg = Msg::AggregationDone {
                    round,
                    coordinator_incarnation: self.coordinator_incarnation,
                };
                world.send_to_model(at, self.me, Box::new(msg));
            }
            Err(e) => {
                let ev = Event::AggregationFailed {
                    round,
                    reason: e.to_string(),
                };
                self.feed(world, ev);
            }
        }
    }

    fn round_completed(&mut self, world: &mut World, rec: &RoundRecord) {
        let round = rec.round;
        // No acknowledged update lost, none counted twice.
        let acked = self.acked.remove(&round).unwrap_or_default();
        let accepted: BTreeSet<ClientId> = rec.accepted.keys().cloned().collect();
        if acked != accepted {
            self.violate(
                "fl-no-update-lost",
                format!(
                    "round {round}: acknowledged {} updates, the round counts {}",
                    acked.len(),
                    accepted.len()
                ),
            );
        }
        let (central_loss, central_accuracy) = match self.central.get(&round) {
            Some((l, a)) => (Some(*l), Some(*a)),
            None => (None, None),
        };
        let stats = RoundStats {
            round,
            latency_ms: rec.latency_ms().unwrap_or(0),
            finished_us: world.now(),
            selected: rec.selected.len(),
            accepted: rec.accepted.len(),
            failures: rec.failures.len(),
            aggregated: rec.aggregated(),
            central_loss,
            central_accuracy,
            federated_loss: rec.federated_loss(),
            global_digest: rec.global_digest.clone(),
        };
        world.trace_ext(
            "fl",
            "round-completed",
            format!(
                "round {round} selected {} accepted {} failures {} aggregated {} loss {:?} accuracy {:?} fed-loss {:?} global {}",
                stats.selected,
                stats.accepted,
                stats.failures,
                stats.aggregated,
                stats.central_loss,
                stats.central_accuracy,
                stats.federated_loss,
                &stats.global_digest[..16.min(stats.global_digest.len())]
            ),
        );
        self.stats.push(stats);
        // The round's updates are no longer needed (the audit path would keep them).
        self.store.retain(|_, (r, ..)| *r > round);
        let keep = [rec.global_digest.clone(), self.global_digest.clone()];
        self.globals.retain(|d, _| keep.contains(d));
    }

    fn node_down(&mut self, world: &mut World, node: &str) {
        for k in 0..self.clients.len() {
            if self.clients[k].node == node && self.clients[k].alive {
                self.clients[k].alive = false;
                self.clients[k].incarnation += 1;
                let ev = Event::ClientLost {
                    client: self.clients[k].id.clone(),
                };
                self.feed(world, ev);
            }
        }
        if self.coordinator_node == node
            && let Some(c) = self.coordinator.take()
        {
            // The shell persisted the state before acknowledging anything; a crash loses the rest.
            match serde_json::to_string(c.state()) {
                Ok(s) => self.persisted = Some(s),
                Err(e) => self.violate("fl-persist", e.to_string()),
            }
            self.coordinator_incarnation += 1;
            self.aggregated = None;
            world.trace_ext("fl", "coordinator-down", format!("node {node}"));
        }
    }

    fn node_ready(&mut self, world: &mut World, node: &str) {
        if self.coordinator_node == node && self.coordinator.is_none() {
            let state: Result<CoordinatorState, _> =
                serde_json::from_str(self.persisted.as_deref().unwrap_or_default());
            match state.map_err(|e| e.to_string()).and_then(|s| {
                Coordinator::restore(self.cfg.round.clone(), s).map_err(|e| e.to_string())
            }) {
                Ok(c) => {
                    self.coordinator = Some(c);
                    world.trace_ext("fl", "coordinator-restarted", format!("node {node}"));
                    self.feed(world, Event::Restart);
                }
                Err(e) => self.violate("fl-restore", e),
            }
        }
        for k in 0..self.clients.len() {
            if self.clients[k].node == node && !self.clients[k].alive {
                self.clients[k].alive = true;
                let ev = Event::ClientRegistered {
                    client: self.clients[k].id.clone(),
                };
                self.feed(world, ev);
            }
        }
        if !self.started && self.coordinator.is_some() && node == self.coordinator_node {
            self.started = true;
            let ev = Event::Start {
                global_digest: self.global_digest.clone(),
            };
            self.feed(world, ev);
        }
    }

    fn on_msg(&mut self, world: &mut World, msg: Msg) {
        match msg {
            Msg::Timer(timer) => self.feed(world, Event::TimerFired { timer }),
            Msg::Upload {
                client,
                incarnation,
                round,
                params,
                num_examples,
                metrics,
            } => {
                let c = &self.clients[client];
                if incarnation != c.incarnation
                    || !c.alive
                    || c.silent
                    || self.coordinator.is_none()
                {
                    return;
                }
                // A fault slowed this fit while it trained: the upload leaves later.
                if let Some(f) = c.fit_in_flight
                    && f.round == round
                {
                    let due = f.train_end_us + self.transfer_us(client);
                    if due > world.now() {
                        let msg = Msg::Upload {
                            client,
                            incarnation,
                            round,
                            params,
                            num_examples,
                            metrics,
                        };
                        world.send_to_model(due, self.me, Box::new(msg));
                        return;
                    }
                }
                let c = &mut self.clients[client];
                c.fit_in_flight = None;
                let c = &self.clients[client];
                // The shell stores the update durably before telling the machine.
                let update_id = UpdateId(format!("{}-r{round}", c.id));
                let id = c.id.clone();
                self.store
                    .insert(update_id.clone(), (round, id.clone(), params, num_examples));
                self.feed(
                    world,
                    Event::UpdateReceived {
                        client: id,
                        round,
                        update_id,
                        num_examples,
                        metrics,
                    },
                );
            }
            Msg::EvalReply {
                client,
                incarnation,
                round,
                num_examples,
                loss,
                accuracy,
            } => {
                let c = &self.clients[client];
                if incarnation != c.incarnation || !c.alive || c.silent {
                    return;
                }
                let metrics = Metrics::from([("accuracy".to_string(), accuracy)]);
                let ev = Event::EvaluateReceived {
                    client: c.id.clone(),
                    round,
                    num_examples,
                    loss,
                    metrics,
                };
                self.feed(world, ev);
            }
            Msg::AggregationDone {
                round,
                coordinator_incarnation,
            } => {
                if coordinator_incarnation != self.coordinator_incarnation {
                    return;
                }
                let Some((r, params, digest, metrics)) = self.aggregated.take() else {
                    return;
                };
                debug_assert_eq!(r, round);
                self.globals.insert(digest.clone(), params);
                self.global_digest = digest.clone();
                self.feed(
                    world,
                    Event::AggregationDone {
                        round,
                        global_digest: digest,
                        metrics,
                    },
                );
            }
            Msg::CentralEvalDone {
                round,
                coordinator_incarnation,
                loss,
                accuracy,
            } => {
                if coordinator_incarnation != self.coordinator_incarnation {
                    return;
                }
                self.central.insert(round, (loss, accuracy));
                let metrics = Metrics::from([("accuracy".to_string(), accuracy)]);
                self.feed(
                    world,
                    Event::CentralEvaluationDone {
                        round,
                        loss,
                        metrics,
                    },
                );
            }
        }
    }
}

impl Model for FlModel {
    fn name(&self) -> &'static str {
        "fl"
    }

    fn start(&mut self, world: &mut World, me: ModelId) {
        self.me = me;
        // Nodes that are already Ready (a model added after boot) host their pods now.
        let ready: Vec<String> = world
            .topology()
            .nodes
            .iter()
            .map(|n| n.name.clone())
            .filter(|n| world.node(n).is_some_and(|s| s.ready))
            .collect();
        for n in ready {
            self.node_ready(world, &n);
        }
    }

    fn on_message(&mut self, world: &mut World, _me: ModelId, payload: Box<dyn Any>) {
        if let Ok(msg) = payload.downcast::<Msg>() {
            self.on_msg(world, *msg);
        }
    }

    fn observe(&mut self, world: &mut World, _me: ModelId, event: &TraceEvent) {
        match event {
            TraceEvent::NodePowerOff { node } => self.node_down(world, node),
            TraceEvent::NodeReady { node } => self.node_ready(world, node),
            // After a restart the node may never leave Ready in the control plane's eyes (its
            // own node controller died with it): its pods come back when it has booted.
            TraceEvent::NodeBooted { node } if self.started => self.node_ready(world, node),
            _ => {}
        }
    }

    fn check(&self, _world: &World) -> Result<(), (String, String)> {
        match &self.violation {
            Some(v) => Err(v.clone()),
            None => Ok(()),
        }
    }

    fn summary(&self, _world: &World) -> Vec<String> {
        let mut out = vec![format!(
            "fl: {} clients, {} rounds completed of {}, strategy {}, model {}",
            self.clients.len(),
            self.stats.len(),
            self.cfg.round.num_rounds,
            self.cfg.strategy,
            self.arch
        )];
        if let Some(last) = self.stats.last() {
            out.push(format!(
                "fl: last round {} accuracy {:?} loss {:?} latency {} ms",
                last.round, last.central_accuracy, last.central_loss, last.latency_ms
            ));
        }
        out
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

/// The outcome of [`run`].
#[derive(Debug, Clone)]
pub struct FlRun {
    pub rounds: Vec<RoundStats>,
    pub finished: bool,
    pub trace_hash: String,
    pub events: u64,
    pub virtual_time_us: Time,
    pub repro: String,
    /// The violated invariant, if the run stopped on one.
    pub violation: Option<String>,
}

/// Runs an FL workload on `topology` (placed on all its nodes, the topology's own workloads not
/// created) from `seed` until training finishes, an invariant breaks, or `limit_us` of virtual
/// time passes.
pub fn run(
    topology: crate::Topology,
    seed: u64,
    cfg: FlConfig,
    limit_us: Time,
) -> Result<FlRun, String> {
    let nodes: Vec<String> = topology.nodes.iter().map(|n| n.name.clone()).collect();
    let options = crate::SimOptions {
        apply_topology_workloads: false,
        ..crate::SimOptions::default()
    };
    let mut sim = crate::Sim::new(topology, seed, options);
    let fl = FlModel::new(cfg, &nodes, seed)?;
    let id = sim.add_model(Box::new(fl));
    // Run in slices so the finished workload stops the run; bounded by the virtual limit.
    const SLICE_US: Time = 10 * crate::timings::SEC;
    while sim.now() < limit_us && sim.violation().is_none() {
        if sim.model::<FlModel>(id).is_some_and(FlModel::is_finished) {
            break;
        }
        sim.run_until(sim.now() + SLICE_US);
    }
    let fl = sim.model::<FlModel>(id).ok_or("fl: model vanished")?;
    Ok(FlRun {
        rounds: fl.rounds().to_vec(),
        finished: fl.is_finished(),
        trace_hash: sim.trace_hash(),
        events: sim.world().events_processed(),
        virtual_time_us: sim.now(),
        repro: sim.repro(),
        violation: sim.violation().map(|v| v.to_string()),
    })
}

#[cfg(test)]
mod tests;
