//! FL rounds on the simulated cluster: fl-core's [`Coordinator`] driven by the engine's event
//! queue, real local training, the real fl-core strategy every round, and an f64 oracle.
//!
//! [`FlModel`] is an engine [`Model`]. The coordinator and the clients are pods of the
//! simulated cluster, placed by its scheduler: the coordinator a Deployment of one replica, the
//! clients a StatefulSet with `podManagementPolicy: Parallel` whose ordinal is the client index
//! (pod `fl-worker-3` is client 3, [`fl_core::job::client_id`]`(3)`). The job adopts the
//! cluster's workloads of those names (the topology's or a GitOps tree's, with their requests,
//! volumes and priority) and sets their replicas; otherwise it creates them in [`FlPods`]'s
//! namespace with [`FlPods`]'s requests. Requests set on the job win over both.
//!
//! A process runs only while its pod is live ([`crate::cluster::Pod::live`]: Running, Ready,
//! containers up, on a powered node; traced as [`TraceEvent::PodLive`]). A client registers when
//! its pod becomes live and is lost when it stops being so: its node dies (the round counts it
//! as a failure, or times out on it), its container is killed, it is evicted. A StatefulSet pod
//! on a dead node is not replaced until the node is back or its Node object is deleted, as
//! upstream; the coordinator's Deployment pod is replaced after the taint-based eviction. A
//! client that cannot be scheduled stays Pending with the scheduler's reason, and the summary
//! ([`FlModel::pod_status`]) says why. When the coordinator's pod stops being live the
//! coordinator's state is what its shell persisted (serialised with serde, as `fl coordinator`
//! stores it); the next live coordinator pod, on the same node or a rescheduled one, restores it
//! ([`Coordinator::restore`] + [`Event::Restart`]), learns which clients came and went
//! meanwhile, and resumes the round. Messages between a client and the coordinator are lost
//! while a partition cuts their nodes apart.
//!
//! Time: local training takes `6 * params * examples_processed / client_flops` (forward 2 and
//! backward 4 FLOPs per parameter and example, the usual estimate), where a client gets
//! [`FLOPS_PER_CORE`] times its share of its node's allocatable CPU among the live clients
//! there (CFS shares of equal requests; at most one core: the local step is single-threaded),
//! models travel over links of
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
use crate::cluster::Object;
use crate::engine::{Model, ModelId, World};
use crate::topology::{Bytes, Cpu, PodManagementPolicy, WorkloadKind, WorkloadSpec};
use crate::trace::TraceEvent;

/// Scalar f32 training throughput of one core, in FLOP/s. A modelling assumption (not an
/// upstream default): plain loops without SIMD on a 2-3 GHz core reach about 1-2 GFLOP/s.
pub const FLOPS_PER_CORE: f64 = 1.5e9;

/// Bound on clients in one FL workload.
pub const MAX_FL_CLIENTS: usize = 100_000;

/// CPU request of the coordinator pod when neither the job nor the cluster's workload sets one.
/// A modelling assumption (aggregating and evaluating small models), not a documented number.
pub const DEFAULT_COORDINATOR_CPU: Cpu = Cpu(500);
/// Memory request of the coordinator pod by default (assumption, as above).
pub const DEFAULT_COORDINATOR_MEMORY: Bytes = Bytes(512 << 20);
/// CPU request of a client pod by default: small, so that 100 clients share an 8-CPU node (an
/// assumption; the platforms that document a worker, mlworkbench, ask far more).
pub const DEFAULT_CLIENT_CPU: Cpu = Cpu(50);
/// Memory request of a client pod by default (assumption, as above).
pub const DEFAULT_CLIENT_MEMORY: Bytes = Bytes(128 << 20);

/// Retry period of the job's workload apply while the Kubernetes API is unavailable.
const APPLY_RETRY_US: Time = 10 * crate::timings::SEC;
/// [`World::wake`] tag of that retry.
const TAG_APPLY: u64 = 1;

/// The workloads the job runs as.
#[derive(Debug, Clone, PartialEq)]
pub struct FlPods {
    /// Namespace of the workloads the job creates (an adopted workload keeps its own).
    pub namespace: String,
    /// Deployment of the coordinator (adopted if the cluster has one of that name).
    pub coordinator: String,
    /// StatefulSet of the clients (adopted if the cluster has one of that name).
    pub clients: String,
    /// Requests; `None`: the adopted workload's, else the `DEFAULT_*` constants.
    pub coordinator_cpu: Option<Cpu>,
    pub coordinator_memory: Option<Bytes>,
    pub client_cpu: Option<Cpu>,
    pub client_memory: Option<Bytes>,
}

impl Default for FlPods {
    fn default() -> Self {
        Self {
            namespace: "fl".into(),
            coordinator: "fl-coordinator".into(),
            clients: "fl-worker".into(),
            coordinator_cpu: None,
            coordinator_memory: None,
            client_cpu: None,
            client_memory: None,
        }
    }
}

impl FlPods {
    /// The coordinator's Deployment (one replica, with a Service) and the clients' Parallel
    /// StatefulSet (`clients` replicas) the job creates when the cluster has no workloads of
    /// those names: in [`FlPods::namespace`], with the job's requests or the `DEFAULT_*` ones.
    pub fn new_workloads(&self, clients: usize) -> (WorkloadSpec, WorkloadSpec) {
        let spec = |kind: WorkloadKind, name: &str, replicas: usize, cpu: Cpu, memory: Bytes| {
            WorkloadSpec {
                kind,
                name: name.to_string(),
                namespace: self.namespace.clone(),
                replicas: u32::try_from(replicas).unwrap_or(u32::MAX),
                cpu,
                memory,
                priority_class: None,
                volumes: Vec::new(),
                tolerations: Vec::new(),
                node_selector: BTreeMap::new(),
                service: kind == WorkloadKind::Deployment,
                pod_management_policy: match kind {
                    WorkloadKind::StatefulSet => PodManagementPolicy::Parallel,
                    _ => PodManagementPolicy::default(),
                },
                source: Some("fl job (simulator defaults)".into()),
            }
        };
        (
            spec(
                WorkloadKind::Deployment,
                &self.coordinator,
                1,
                self.coordinator_cpu.unwrap_or(DEFAULT_COORDINATOR_CPU),
                self.coordinator_memory
                    .unwrap_or(DEFAULT_COORDINATOR_MEMORY),
            ),
            spec(
                WorkloadKind::StatefulSet,
                &self.clients,
                clients,
                self.client_cpu.unwrap_or(DEFAULT_CLIENT_CPU),
                self.client_memory.unwrap_or(DEFAULT_CLIENT_MEMORY),
            ),
        )
    }
}

/// Where the job's pods stand ([`FlModel::pod_status`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlPodStatus {
    /// Node of the live coordinator pod.
    pub coordinator_node: Option<String>,
    /// Client pods live, Pending (not bound to a node), starting (bound, not yet live, e.g.
    /// containers starting or their node down), Terminating.
    pub clients_live: usize,
    pub clients_pending: usize,
    pub clients_starting: usize,
    pub clients_terminating: usize,
    /// Pods of the job the scheduler cannot place, with its reason (`namespace/name`, reason).
    pub unschedulable: Vec<(String, String)>,
}

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
    /// The coordinator's and the clients' workloads and requests.
    pub pods: FlPods,
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
            pods: FlPods::default(),
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
    /// Node of the client's live pod.
    node: Option<usize>,
    train: Dataset,
    val: Dataset,
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
    /// Its pod is live.
    alive: bool,
    /// Bumped when the client's pod stops being live: replies of an older incarnation are
    /// dropped.
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
    /// The job's workloads (resolved at start: adopted from the cluster or created).
    coordinator_spec: Option<WorkloadSpec>,
    client_spec: Option<WorkloadSpec>,
    /// Applied so far: 0 nothing, 1 the coordinator's Deployment and Service, 2 the clients'
    /// StatefulSet too.
    applied: u8,
    /// `namespace/name-` of the coordinator's and the clients' pods.
    coordinator_prefix: String,
    client_prefix: String,
    /// The live coordinator pod and its node.
    coordinator_pod: Option<(String, usize)>,
    /// Live client pods per node (their CPU share).
    live_on_node: Vec<u32>,
    /// The running machine (None while no coordinator pod is live).
    coordinator: Option<Coordinator>,
    coordinator_incarnation: u64,
    started: bool,
    /// What the coordinator's shell persisted (JSON of the machine state) while it is down.
    persisted: Option<String>,
    /// Coordinator starts from persisted state.
    restarts: u32,
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
    /// Builds the workload: datasets (from `seed`); its pods are created when it is added to a
    /// simulation ([`crate::Sim::add_model`]).
    pub fn new(cfg: FlConfig, seed: u64) -> Result<Self, String> {
        if cfg.clients == 0 || cfg.clients > MAX_FL_CLIENTS {
            return Err(format!(
                "fl: clients {} is not in 1..={MAX_FL_CLIENTS}",
                cfg.clients
            ));
        }
        let pods = &cfg.pods;
        for (what, name) in [
            ("pods.namespace", &pods.namespace),
            ("pods.coordinator", &pods.coordinator),
            ("pods.clients", &pods.clients),
        ] {
            let ok = !name.is_empty()
                && name.len() <= 63
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !name.starts_with('-')
                && !name.ends_with('-');
            if !ok {
                return Err(format!(
                    "fl: {what} {name:?} is not a Kubernetes name (lower-case letters, digits, '-', at most 63)"
                ));
            }
        }
        if pods.coordinator == pods.clients {
            return Err(format!(
                "fl: pods.coordinator and pods.clients are both {:?}: their pods would be confused",
                pods.clients
            ));
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
        // Workload faults (which clients straggle or sit behind a slow link) are the
        // simulator's own: a stream apart from everything the job derives.
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(FAULT_STREAM);
        let mut clients = Vec::with_capacity(cfg.clients);
        let mut vals = Vec::new();
        for (k, d) in datasets.into_iter().enumerate() {
            let ClientData { train, test: val } = d;
            let f = &cfg.faults;
            vals.push(val.clone());
            clients.push(Client {
                id: job::client_id(k),
                node: None,
                train,
                val,
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
        // The machine starts when the coordinator's pod is live; build one now to check.
        Coordinator::new(round.clone()).map_err(|e| format!("fl: {e}"))?;
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
            coordinator_spec: None,
            client_spec: None,
            applied: 0,
            coordinator_prefix: String::new(),
            client_prefix: String::new(),
            coordinator_pod: None,
            live_on_node: Vec::new(),
            coordinator: None,
            coordinator_incarnation: 0,
            started: false,
            persisted: None,
            restarts: 0,
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

    /// Whether client `k`'s node and the coordinator's can reach each other (no partition).
    fn reaches(&self, world: &World, k: usize) -> bool {
        match (self.clients[k].node, &self.coordinator_pod) {
            (Some(a), Some((_, b))) => world.nodes_reachable(a, *b),
            _ => false,
        }
    }

    /// Training throughput of client `k`: its share of its node's allocatable CPU among the
    /// live clients there, at most one core.
    fn client_flops(&self, world: &World, k: usize) -> f64 {
        let Some(n) = self.clients[k].node else {
            return FLOPS_PER_CORE;
        };
        let cores = world.nodes()[n].cpu.cores();
        let share = cores / f64::from(self.live_on_node[n].max(1));
        FLOPS_PER_CORE * share.clamp(1e-3, 1.0)
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
                if !c.alive || c.silent || self.drops(k, round, 1) || !self.reaches(world, k) {
                    return;
                }
                let flops = self.client_flops(world, k);
                let params = &self.globals[&global_digest];
                let Ok(eval) = self.trainer.evaluate(params, &c.val) else {
                    return;
                };
                let compute_us = (2.0 * self.arch.num_params() as f64 * c.val.len() as f64 / flops
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
        if !self.clients[k].alive
            || self.clients[k].silent
            || self.drops(k, round, 0)
            || !self.reaches(world, k)
        {
            return;
        }
        let client_flops = self.client_flops(world, k);
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
        let train_us = (flops / client_flops * slowdown * 1e6) as Time;
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

    /// Resolves the job's two workloads: the cluster's of those names (topology or GitOps) with
    /// the job's replicas, else new ones; requests set on the job win.
    fn resolve_workloads(&mut self, world: &World) {
        let pods = &self.cfg.pods;
        let find = |kind: WorkloadKind, name: &str| {
            world
                .workloads()
                .find(|w| w.spec.kind == kind && w.spec.name == name)
                .map(|w| w.spec.clone())
        };
        let (new_coord, new_clients) = pods.new_workloads(self.clients.len());
        let mut coord = find(WorkloadKind::Deployment, &pods.coordinator).unwrap_or(new_coord);
        coord.replicas = 1;
        coord.cpu = pods.coordinator_cpu.unwrap_or(coord.cpu);
        coord.memory = pods.coordinator_memory.unwrap_or(coord.memory);
        let mut clients = find(WorkloadKind::StatefulSet, &pods.clients).unwrap_or(new_clients);
        clients.replicas = self.clients.len() as u32;
        // Clients start together, not one by one behind each other's readiness.
        clients.pod_management_policy = PodManagementPolicy::Parallel;
        clients.cpu = pods.client_cpu.unwrap_or(clients.cpu);
        clients.memory = pods.client_memory.unwrap_or(clients.memory);
        self.coordinator_prefix = format!("{}/{}-", coord.namespace, coord.name);
        self.client_prefix = format!("{}/{}-", clients.namespace, clients.name);
        self.coordinator_spec = Some(coord);
        self.client_spec = Some(clients);
    }

    /// Applies the job's workloads in the platform's order (mlworkbench's GitOps tree syncs the
    /// coordinator in wave 2 and the workers in wave 3, once wave 2 is Healthy): first the
    /// coordinator's Deployment and Service, then, once its pod is live, the clients'
    /// StatefulSet. Retried while the API is unavailable.
    fn ensure_applied(&mut self, world: &mut World) {
        let (Some(coord), Some(clients)) =
            (self.coordinator_spec.clone(), self.client_spec.clone())
        else {
            return;
        };
        let objects = match self.applied {
            0 => {
                let service = Object::Service {
                    namespace: coord.namespace.clone(),
                    name: coord.name.clone(),
                    workload: coord.name.clone(),
                };
                vec![Object::Workload(coord), service]
            }
            1 if self.coordinator_pod.is_some() => vec![Object::Workload(clients)],
            _ => return,
        };
        for obj in objects {
            if let Err(e) = world.apply(obj) {
                world.trace_ext("fl", "apply-failed", e.to_string());
                let at = world.now() + APPLY_RETRY_US;
                world.wake(at, self.me, TAG_APPLY);
                return;
            }
        }
        self.applied += 1;
        if self.applied == 1 && self.coordinator_pod.is_some() {
            self.ensure_applied(world);
        }
    }

    /// Client index of a pod key of the job's StatefulSet (`ns/name-<ordinal>`).
    fn client_of(&self, pod: &str) -> Option<usize> {
        let rest = pod.strip_prefix(self.client_prefix.as_str())?;
        if rest.is_empty() || !rest.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        rest.parse::<usize>()
            .ok()
            .filter(|&k| k < self.clients.len())
    }

    /// Whether a pod key is one of the coordinator Deployment's (`ns/name-<5-char suffix>`).
    fn is_coordinator_pod(&self, pod: &str) -> bool {
        pod.strip_prefix(self.coordinator_prefix.as_str())
            .is_some_and(|rest| rest.len() == 5 && !rest.contains('-'))
    }

    fn pod_live(&mut self, world: &mut World, pod: &str, node: &str, live: bool) {
        if let Some(k) = self.client_of(pod) {
            if live {
                self.client_up(world, k, node);
            } else {
                self.client_down(world, k);
            }
        } else if self.is_coordinator_pod(pod) {
            if live {
                self.coordinator_up(world, pod, node);
            } else if self.coordinator_pod.as_ref().is_some_and(|(p, _)| p == pod) {
                self.coordinator_down(world, pod);
            }
        }
    }

    fn client_up(&mut self, world: &mut World, k: usize, node: &str) {
        let Some(n) = world.node_idx(node) else {
            return;
        };
        let c = &mut self.clients[k];
        if c.alive {
            return;
        }
        c.alive = true;
        c.node = Some(n);
        self.live_on_node[n] += 1;
        let ev = Event::ClientRegistered {
            client: c.id.clone(),
        };
        self.feed(world, ev);
    }

    fn client_down(&mut self, world: &mut World, k: usize) {
        let c = &mut self.clients[k];
        if !c.alive {
            return;
        }
        c.alive = false;
        c.incarnation += 1;
        c.fit_in_flight = None;
        if let Some(n) = c.node.take() {
            self.live_on_node[n] -= 1;
        }
        let ev = Event::ClientLost {
            client: c.id.clone(),
        };
        self.feed(world, ev);
    }

    fn coordinator_up(&mut self, world: &mut World, pod: &str, node: &str) {
        // One coordinator at a time (the Deployment has one replica; a second live pod would be
        // a standby that never serves).
        if self.coordinator_pod.is_some() {
            return;
        }
        let Some(n) = world.node_idx(node) else {
            return;
        };
        let machine = match &self.persisted {
            None => Coordinator::new(self.cfg.round.clone()).map_err(|e| e.to_string()),
            Some(json) => serde_json::from_str::<CoordinatorState>(json)
                .map_err(|e| e.to_string())
                .and_then(|st| {
                    Coordinator::restore(self.cfg.round.clone(), st).map_err(|e| e.to_string())
                }),
        };
        let machine = match machine {
            Ok(m) => m,
            Err(e) => {
                self.violate("fl-restore", e);
                return;
            }
        };
        self.coordinator_pod = Some((pod.to_string(), n));
        self.coordinator = Some(machine);
        self.ensure_applied(world);
        if !self.started {
            self.started = true;
            world.trace_ext(
                "fl",
                "coordinator-started",
                format!("pod {pod} node {node}"),
            );
            for k in 0..self.clients.len() {
                if self.clients[k].alive {
                    let ev = Event::ClientRegistered {
                        client: self.clients[k].id.clone(),
                    };
                    self.feed(world, ev);
                }
            }
            let ev = Event::Start {
                global_digest: self.global_digest.clone(),
            };
            self.feed(world, ev);
            return;
        }
        self.restarts += 1;
        let (round, done) = self
            .coordinator
            .as_ref()
            .map(|c| (c.round(), c.history().len()))
            .unwrap_or_default();
        world.trace_ext(
            "fl",
            "coordinator-restarted",
            format!("pod {pod} node {node} round {round} restored {done} completed rounds"),
        );
        self.feed(world, Event::Restart);
        // Clients that came and went while no coordinator served: the live ones reconnect,
        // the others are gone.
        let registered: BTreeSet<ClientId> = self
            .coordinator
            .as_ref()
            .map(|c| c.state().clients.clone())
            .unwrap_or_default();
        for k in 0..self.clients.len() {
            let id = self.clients[k].id.clone();
            match (self.clients[k].alive, registered.contains(&id)) {
                (false, true) => self.feed(world, Event::ClientLost { client: id }),
                (true, false) => self.feed(world, Event::ClientRegistered { client: id }),
                _ => {}
            }
        }
    }

    fn coordinator_down(&mut self, world: &mut World, pod: &str) {
        self.coordinator_pod = None;
        let Some(c) = self.coordinator.take() else {
            return;
        };
        // The shell persisted the state before acknowledging anything; a crash loses the rest.
        match serde_json::to_string(c.state()) {
            Ok(s) => self.persisted = Some(s),
            Err(e) => self.violate("fl-persist", e.to_string()),
        }
        self.coordinator_incarnation += 1;
        self.aggregated = None;
        world.trace_ext("fl", "coordinator-down", format!("pod {pod}"));
    }

    /// Where the job's pods stand: the coordinator's node, client pods live / Pending /
    /// Terminating, and every pod of the job the scheduler cannot place, with its reason.
    pub fn pod_status(&self, world: &World) -> FlPodStatus {
        let mut st = FlPodStatus {
            coordinator_node: self
                .coordinator_pod
                .as_ref()
                .map(|(_, n)| world.nodes()[*n].name.clone()),
            ..FlPodStatus::default()
        };
        for p in world.pods() {
            let key = p.key();
            let client = self.client_of(&key).is_some();
            if !client && !self.is_coordinator_pod(&key) {
                continue;
            }
            if p.node.is_none()
                && p.deleting.is_none()
                && let Some(r) = &p.unschedulable
            {
                st.unschedulable.push((key, r.clone()));
            }
            if !client {
                continue;
            }
            if p.live() {
                st.clients_live += 1;
            } else if p.deleting.is_some() {
                st.clients_terminating += 1;
            } else if p.node.is_none() {
                st.clients_pending += 1;
            } else {
                st.clients_starting += 1;
            }
        }
        st
    }

    /// Coordinator starts from persisted state so far.
    pub fn coordinator_restarts(&self) -> u32 {
        self.restarts
    }

    /// One line on the job's pods, for reports (`fl pods: ...`), naming why pods are Pending.
    pub fn pods_line(&self, world: &World) -> String {
        let st = self.pod_status(world);
        let coord = match &st.coordinator_node {
            Some(n) => format!("live on {n}"),
            None => "not live".to_string(),
        };
        let name = |s: &Option<WorkloadSpec>| {
            s.as_ref()
                .map(|s| format!("{}/{}", s.namespace, s.name))
                .unwrap_or_default()
        };
        let mut line = format!(
            "fl pods: coordinator {} {coord}; clients {}: {} live of {}, {} Pending, {} starting, {} Terminating",
            name(&self.coordinator_spec),
            name(&self.client_spec),
            st.clients_live,
            self.clients.len(),
            st.clients_pending,
            st.clients_starting,
            st.clients_terminating
        );
        if self.applied < 2 {
            line.push_str(" (the StatefulSet is applied once the coordinator is live)");
        }
        // The scheduler's reasons, each once with how many pods it holds back.
        let mut reasons: BTreeMap<&str, (usize, &str)> = BTreeMap::new();
        for (pod, r) in &st.unschedulable {
            reasons.entry(r.as_str()).or_insert((0, pod.as_str())).0 += 1;
        }
        for (r, (count, first)) in reasons {
            line.push_str(&format!(
                "; unschedulable: {count} pod(s) (e.g. {first}): {r}"
            ));
        }
        line
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
                    || !self.reaches(world, client)
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
                if incarnation != c.incarnation
                    || !c.alive
                    || c.silent
                    || !self.reaches(world, client)
                {
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
        self.live_on_node = vec![0; world.nodes().len()];
        self.resolve_workloads(world);
        self.ensure_applied(world);
        // Pods of an adopted workload that are live already (a job started on a running cluster).
        let live: Vec<(String, String)> = world
            .pods()
            .filter(|p| p.live())
            .map(|p| (p.key(), world.pod_node(p).unwrap_or_default().to_string()))
            .collect();
        for (pod, node) in live {
            self.pod_live(world, &pod, &node, true);
        }
    }

    fn on_wake(&mut self, world: &mut World, _me: ModelId, tag: u64) {
        if tag == TAG_APPLY {
            self.ensure_applied(world);
        }
    }

    fn on_message(&mut self, world: &mut World, _me: ModelId, payload: Box<dyn Any>) {
        if let Ok(msg) = payload.downcast::<Msg>() {
            self.on_msg(world, *msg);
        }
    }

    fn observe(&mut self, world: &mut World, _me: ModelId, event: &TraceEvent) {
        if let TraceEvent::PodLive { pod, node, live } = event {
            self.pod_live(world, pod, node, *live);
        }
    }

    fn check(&self, _world: &World) -> Result<(), (String, String)> {
        match &self.violation {
            Some(v) => Err(v.clone()),
            None => Ok(()),
        }
    }

    fn summary(&self, world: &World) -> Vec<String> {
        let mut out = vec![
            format!(
                "fl: {} clients, {} rounds completed of {}, strategy {}, model {}, coordinator restarts {}",
                self.clients.len(),
                self.stats.len(),
                self.cfg.round.num_rounds,
                self.cfg.strategy,
                self.arch,
                self.restarts
            ),
            self.pods_line(world),
        ];
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

/// Runs an FL workload on `topology` (its pods scheduled on the cluster, the topology's own
/// workloads not created) from `seed` until training finishes, an invariant breaks, or
/// `limit_us` of virtual time passes.
pub fn run(
    topology: crate::Topology,
    seed: u64,
    cfg: FlConfig,
    limit_us: Time,
) -> Result<FlRun, String> {
    let options = crate::SimOptions {
        apply_topology_workloads: false,
        ..crate::SimOptions::default()
    };
    let mut sim = crate::Sim::new(topology, seed, options);
    let fl = FlModel::new(cfg, seed)?;
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
