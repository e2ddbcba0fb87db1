//! The scenario file format (YAML). The types here are the format: the JSON Schema published at
//! `scenarios/scenario.schema.json` is generated from them (`cargo xtask validate --write-schema`),
//! and a test keeps the two in sync.
//!
//! A scenario names a topology and a seed, declares a workload, and lists steps. Each step does
//! exactly one thing (`wait`, `fault`, `assert`, `fl.start`, `collect`), optionally when a
//! trigger fires (`at`). `finally` steps always run, even after a failure or a timeout. A
//! `matrix` expands one file into named cases (seeds x topologies x strategies x clients).

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_saphyr::Spanned;

use crate::duration::Duration;

/// One scenario file.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "fl-harness scenario")]
pub struct Scenario {
    /// Unique name; it is the test name (`cargo test -- NAME`, `cargo xtask e2e NAME`).
    pub name: String,
    /// What the scenario shows, in one or two sentences; printed in the reports.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// A topology under `fixtures/topologies/<name>.yaml`.
    pub topology: String,
    /// The seed of the run; every random choice of the backend derives from it.
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Free labels, e.g. `gitops`, `fl`, `storage`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Wall-clock limit for one case of this scenario (default 60s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// Virtual-time limit of the whole case (default 2h); no wait can go past it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub horizon: Option<Duration>,
    /// What runs on the cluster besides the topology's own services.
    #[serde(default)]
    pub workload: Workload,
    /// The steps, in order.
    #[schemars(with = "Vec<Step>")]
    pub steps: Vec<Spanned<Step>>,
    /// Steps that always run at the end, even after a failure or a timeout.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(with = "Vec<Step>")]
    pub finally: Vec<Spanned<Step>>,
    /// Expands this scenario into one case per combination.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matrix: Option<Matrix>,
}

pub const fn default_seed() -> u64 {
    42
}

/// Default wall-clock limit of one case.
pub const DEFAULT_CASE_TIMEOUT: Duration = Duration::from_secs(60);
/// Default virtual-time horizon of one case.
pub const DEFAULT_HORIZON: Duration = Duration::from_secs(2 * 3_600);

/// Workloads started on top of the topology.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Workload {
    /// A federated-learning job: a coordinator plus clients doing rounds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fl: Option<FlWorkload>,
    /// The GitOps tree the cluster syncs from (ArgoCD app-of-apps or Flux Kustomizations).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gitops: Option<GitopsWorkload>,
    /// Extra Kubernetes workloads (Deployments, StatefulSets) with their requests and storage.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub k8s: Vec<K8sWorkload>,
}

/// A federated-learning job.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FlWorkload {
    /// Number of FL clients (the platform runs 5-50).
    pub clients: u32,
    /// Number of rounds.
    pub rounds: u32,
    /// Aggregation strategy (Flower semantics).
    #[serde(default)]
    pub strategy: Strategy,
    /// Clients sampled per round; a round needs at least this many updates (default: all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_fit_clients: Option<u32>,
    /// The model: `softmax-<in>-<classes>` or `mlp-<in>-<hidden>-<classes>`.
    #[serde(default = "default_model")]
    pub model: String,
    /// A round closes after this long with whatever updates arrived (default 10m).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub round_timeout: Option<Duration>,
    /// Local epochs per round (default 1).
    #[serde(default = "default_epochs")]
    pub local_epochs: u32,
    /// Label skew of the synthetic data: Dirichlet alpha (smaller is more non-IID; default 0.5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dirichlet_alpha: Option<f64>,
    /// Krum / MultiKrum / Bulyan: number of Byzantine clients tolerated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub byzantine_tolerance: Option<u32>,
    /// FedProx: the proximal term weight mu the clients train with (Flower's `proximal_mu`; default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proximal_mu: Option<f64>,
    /// Which FL system runs the job: `fl` (this workspace's coordinator and workers, default)
    /// or `flower` (a real Flower SuperLink and SuperNodes; `local` backend only).
    #[serde(default, skip_serializing_if = "FlSystem::is_default")]
    pub system: FlSystem,
    /// Options of a `system: flower` job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flower: Option<FlowerOptions>,
    /// Requests of each client pod (the `fl-worker` StatefulSet), over the topology's
    /// documented ones: what makes a documented pool that cannot fit run (simulator; the local
    /// backend runs processes, which have no requests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_requests: Option<PodRequests>,
    /// Requests of the coordinator pod (the `fl-coordinator` Deployment), likewise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coordinator_requests: Option<PodRequests>,
}

/// A pod's resource requests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PodRequests {
    /// CPU request in millicores.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_millis: Option<u64>,
    /// Memory request in MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<u64>,
}

/// The FL system a job runs on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum FlSystem {
    /// `fl coordinator` + `fl worker` (fl-node), or the simulator's model of them.
    #[default]
    Fl,
    /// A real Flower deployment (`flower-superlink`, `flower-supernode`, `flwr run`).
    Flower,
}

impl FlSystem {
    pub fn is_default(&self) -> bool {
        *self == FlSystem::Fl
    }
}

/// A `system: flower` job: which Flower App runs and how its strategy is set.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FlowerOptions {
    /// The Flower App directory (its `pyproject.toml`), relative to the workspace root
    /// (default `fixtures/flower`). Its ServerApp must write the capture described in
    /// `fixtures/flower/README.md`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    /// The strategy's parameters, by Flower's names (e.g. `server_momentum: 0.9`): given to
    /// Flower's strategy and to fl-core's recompute alike.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub strategy_params: BTreeMap<String, ConfigValue>,
    /// Extra `flwr run --run-config` keys, passed as they are after the ones the harness sets
    /// (they win): the app's own settings, or a deliberately different strategy setting.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub run_config: BTreeMap<String, ConfigValue>,
}

/// A scalar configuration value (TOML/JSON: bool, integer, float or string).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum ConfigValue {
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(String),
}

impl ConfigValue {
    /// As TOML (what `flwr run --run-config` parses).
    pub fn to_toml(&self) -> String {
        match self {
            ConfigValue::Bool(b) => b.to_string(),
            ConfigValue::Int(i) => i.to_string(),
            ConfigValue::Float(f) if f.is_finite() && f.fract() == 0.0 => format!("{f:.1}"),
            ConfigValue::Float(f) => format!("{f:?}"),
            ConfigValue::Text(t) => serde_json::to_string(t).unwrap_or_default(),
        }
    }

    /// As plain text (fl-core's `--param KEY=VALUE`).
    pub fn to_text(&self) -> String {
        match self {
            ConfigValue::Bool(b) => b.to_string(),
            ConfigValue::Int(i) => i.to_string(),
            ConfigValue::Float(f) => format!("{f:?}"),
            ConfigValue::Text(t) => t.clone(),
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        match self {
            ConfigValue::Bool(b) => (*b).into(),
            ConfigValue::Int(i) => (*i).into(),
            ConfigValue::Float(f) => serde_json::Number::from_f64(*f)
                .map(serde_json::Value::Number)
                .unwrap_or(serde_json::Value::Null),
            ConfigValue::Text(t) => t.clone().into(),
        }
    }
}

fn default_model() -> String {
    "softmax-20-10".to_string()
}

const fn default_epochs() -> u32 {
    1
}

/// Aggregation strategies, named as in Flower.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    #[default]
    Fedavg,
    Fedavgm,
    Fedprox,
    Fedadagrad,
    Fedadam,
    Fedyogi,
    Qfedavg,
    Fedmedian,
    Fedtrimmedavg,
    Krum,
    Multikrum,
    Bulyan,
}

impl Strategy {
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Fedavg => "fedavg",
            Strategy::Fedavgm => "fedavgm",
            Strategy::Fedprox => "fedprox",
            Strategy::Fedadagrad => "fedadagrad",
            Strategy::Fedadam => "fedadam",
            Strategy::Fedyogi => "fedyogi",
            Strategy::Qfedavg => "qfedavg",
            Strategy::Fedmedian => "fedmedian",
            Strategy::Fedtrimmedavg => "fedtrimmedavg",
            Strategy::Krum => "krum",
            Strategy::Multikrum => "multikrum",
            Strategy::Bulyan => "bulyan",
        }
    }
}

/// The GitOps tree to sync.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GitopsWorkload {
    /// A folder of manifests under `fixtures/gitops/`.
    pub repo: String,
    /// The root: an ArgoCD root Application (app-of-apps) or a Flux Kustomization.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root: Option<String>,
}

/// An extra Kubernetes workload.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct K8sWorkload {
    pub kind: WorkloadKind,
    pub name: String,
    #[serde(default = "default_namespace")]
    pub namespace: String,
    #[serde(default = "one")]
    pub replicas: u32,
    /// CPU request in millicores.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_millis: Option<u64>,
    /// Memory request in MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<u64>,
    /// A PVC per replica on this storage class (`local-path` pins the pod to its node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class: Option<String>,
    /// Pin the first replica to this node (what a local-path volume does after first bind).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// A PriorityClass name of the topology.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class: Option<String>,
}

fn default_namespace() -> String {
    "default".to_string()
}

const fn one() -> u32 {
    1
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub enum WorkloadKind {
    Deployment,
    StatefulSet,
}

/// One step. Exactly one action key (`wait`, `fault`, `assert`, `fl.start`, `collect`) per step.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// A label for the reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Why this step expects what it expects (shown next to its outcome in the reports).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Run the action when this trigger fires (default: right after the previous step).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<Trigger>,
    /// Advance until a condition holds or the timeout passes (a timeout fails the step).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait: Option<Wait>,
    /// Inject a fault.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<Fault>,
    /// Check one or more assertions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assert: Option<Vec<Assertion>>,
    /// Start the FL job declared in `workload.fl`.
    #[serde(default, rename = "fl.start", skip_serializing_if = "Option::is_none")]
    pub fl_start: Option<FlStart>,
    /// Keep artifacts in the report folder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collect: Option<Vec<Collect>>,
}

/// `fl.start: {}`: options of the start.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FlStart {}

/// What `collect` keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Collect {
    Logs,
    Metrics,
    Trace,
    Events,
}

/// When a step's action runs. Exactly one of `time`, `after`, `fl.round`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Trigger {
    /// At this virtual time since the start of the case.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<Duration>,
    /// This long after the previous step finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<Duration>,
    /// When the FL job reaches this round (with `phase`, that phase of it).
    #[serde(default, rename = "fl.round", skip_serializing_if = "Option::is_none")]
    pub fl_round: Option<u32>,
    /// With `fl.round`: the phase of the round (default `fit`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<RoundPhase>,
    /// Give up (the step fails) if the trigger has not fired after this long (default 30m).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
}

/// Phases of an FL round.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RoundPhase {
    /// Clients are training (the model was sent, updates are coming back).
    Fit,
    /// The coordinator is folding updates into the new model.
    Aggregate,
    /// Clients evaluate the new model.
    Evaluate,
    /// The round is closed.
    Done,
}

/// A condition to wait for. Exactly one of `duration`, `cluster`, `node`, `pod`, `workload`,
/// `app`, `kustomization`, `fl.round`; all but `duration` take a `timeout`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Wait {
    /// Just let this much virtual time pass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<Duration>,
    /// The whole cluster: every node Ready, etcd has quorum, system pods running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterState>,
    /// A node, with `condition`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// With `node`: the condition to reach (default Ready).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condition: Option<NodeCondition>,
    /// A pod `namespace/name`, with `phase`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// With `pod`: the phase to reach (default Running).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<PodPhase>,
    /// A workload `namespace/name` until all its replicas are ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<String>,
    /// An ArgoCD Application until `sync` and `health` hold (default Synced and Healthy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync: Option<SyncStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthStatus>,
    /// A Flux Kustomization until Ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kustomization: Option<String>,
    /// The FL job until this round is done.
    #[serde(default, rename = "fl.round", skip_serializing_if = "Option::is_none")]
    pub fl_round: Option<u32>,
    /// Fail the step if the condition does not hold within this (virtual) time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ClusterState {
    Ready,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub enum NodeCondition {
    Ready,
    NotReady,
    Unknown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub enum PodPhase {
    Pending,
    Running,
    Succeeded,
    Failed,
    Unknown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub enum SyncStatus {
    Synced,
    OutOfSync,
    Unknown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub enum HealthStatus {
    Healthy,
    Progressing,
    Degraded,
    Suspended,
    Missing,
    Unknown,
}

/// Processes a fault can kill on a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Process {
    Etcd,
    Kubelet,
    Containerd,
    KubeApiserver,
    FlCoordinator,
    FlWorker,
    ArgocdApplicationController,
    FluxKustomizeController,
}

/// Faults. Each is written `kind: argument`, e.g. `kill_node: cp-2`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Fault {
    /// Power a node off (VM destroyed, no graceful shutdown).
    KillNode(String),
    /// Power a killed node back on (it boots again).
    RestoreNode(String),
    /// Kill one process on a node (SIGKILL); it stays down until `restore_process`.
    KillProcess { node: String, process: Process },
    /// Start a killed process again.
    RestoreProcess { node: String, process: Process },
    /// Drop all traffic between two groups of nodes (or the FL job's `coordinator`,
    /// `fl-clients` and `client-N`).
    Partition { a: Vec<String>, b: Vec<String> },
    /// Remove a partition between two groups (both empty: all partitions).
    HealPartition {
        #[serde(default)]
        a: Vec<String>,
        #[serde(default)]
        b: Vec<String>,
    },
    /// Degrade the links between two groups: added one-way latency, packet loss and a
    /// bandwidth cap in Mbit/s.
    Link {
        a: Vec<String>,
        b: Vec<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        latency: Option<Duration>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        loss_pct: Option<f64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        bandwidth_mbps: Option<u64>,
    },
    /// An etcd member loses its data directory and leaves the cluster.
    EtcdMemberLoss(String),
    /// A node's disk fills up (kubelet DiskPressure, etcd writes fail on a control plane).
    DiskFull { node: String },
    /// A node's clock jumps by this much (leases and certificates misjudged).
    ClockSkew {
        node: String,
        offset: Duration,
        #[serde(default)]
        behind: bool,
    },
    /// Someone edits a live object of an Application by hand: `object` is `Kind/namespace/name`
    /// of a Deployment, StatefulSet or DaemonSet the app manages, scaled to `replicas` (default
    /// 0, `kubectl scale`); with `delete: true` any modelled object is deleted instead.
    ArgocdDrift {
        app: String,
        object: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        replicas: Option<u32>,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        delete: bool,
    },
    /// A Git commit lands in the GitOps repo, changing the file at `path` (relative to the
    /// repository root): `breaks` makes it YAML that does not parse, `replace` edits its text
    /// (a new image tag, a bigger request), `remove` deletes it (a removed app).
    GitCommit {
        path: String,
        #[serde(default)]
        breaks: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        replace: Option<TextEdit>,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        remove: bool,
    },
    /// FL clients stop answering (a fraction of the clients or a named list).
    FlClientDropout(ClientSet),
    /// FL clients become slow: each round's training takes `factor` times longer.
    FlStraggler { clients: ClientSet, factor: f64 },
    /// FL clients send poisoned updates.
    FlByzantine {
        clients: ClientSet,
        attack: ByzantineAttack,
        #[serde(default = "default_attack_scale")]
        scale: f64,
    },
}

/// A text edit of a committed file: the first occurrence of `from` becomes `to`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TextEdit {
    pub from: String,
    pub to: String,
}

fn default_attack_scale() -> f64 {
    10.0
}

/// Which FL clients a fault touches.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClientSet {
    /// A fraction of the clients in (0, 1], taken from the highest ids down (deterministic).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fraction: Option<f64>,
    /// This many clients, from the highest ids down.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u32>,
    /// Exactly these client ids (0-based).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ids: Vec<u32>,
}

impl ClientSet {
    /// The client ids this set picks among `total` clients (highest ids first for fractions and
    /// counts, so the choice never depends on a random draw).
    pub fn resolve(&self, total: u32) -> Vec<u32> {
        let mut ids: Vec<u32> = if !self.ids.is_empty() {
            self.ids.iter().copied().filter(|i| *i < total).collect()
        } else {
            let n = match (self.count, self.fraction) {
                (Some(c), _) => c.min(total),
                (None, Some(f)) => ((f * total as f64).round() as u32).min(total),
                (None, None) => 0,
            };
            (total - n..total).collect()
        };
        ids.sort_unstable();
        ids.dedup();
        ids
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ByzantineAttack {
    /// Send `-scale` times the honest update.
    SignFlip,
    /// Send the honest update plus Gaussian noise of std `scale`.
    GaussianNoise,
    /// Send `scale` times the honest update.
    Scale,
}

/// Assertions. Each is written `kind: argument`, e.g. `etcd.quorum: true`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub enum Assertion {
    /// etcd has (true) or has lost (false) quorum right now.
    #[serde(rename = "etcd.quorum")]
    EtcdQuorum(bool),
    /// A node is in this condition (within a time, if given).
    #[serde(rename = "node.condition")]
    NodeCondition {
        node: String,
        condition: NodeCondition,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        within: Option<Duration>,
    },
    /// A pod `namespace/name` is in this phase (within a time, if given), optionally on a node.
    #[serde(rename = "pod.phase")]
    PodPhase {
        pod: String,
        phase: PodPhase,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        node: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        within: Option<Duration>,
    },
    /// A workload `namespace/name` has at least / at most this many ready replicas.
    #[serde(rename = "workload.ready")]
    WorkloadReady {
        workload: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        at_least: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        at_most: Option<u32>,
    },
    /// Pods of a namespace were refused by its ResourceQuota (at least this many times).
    #[serde(rename = "quota.exceeded")]
    QuotaExceeded {
        namespace: String,
        #[serde(default = "one")]
        at_least: u32,
    },
    /// An ArgoCD Application reaches this sync and health status within a time.
    #[serde(rename = "app.status")]
    AppStatus {
        app: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sync: Option<SyncStatus>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        health: Option<HealthStatus>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        within: Option<Duration>,
    },
    /// Flux Kustomizations became Ready in this order (their dependsOn order).
    #[serde(rename = "flux.ready_order")]
    FluxReadyOrder(Vec<String>),
    /// A Flux Kustomization or HelmRelease is Ready (true) or not (false) right now.
    #[serde(rename = "flux.status")]
    FluxStatus { kustomization: String, ready: bool },
    /// ArgoCD Applications first became Synced and Healthy in this order (their sync waves).
    #[serde(rename = "argocd.sync_order")]
    ArgocdSyncOrder(Vec<String>),
    /// An Application's sync is held at a wave by a resource that is not Healthy (the wave and
    /// a part of the blocking object's `Kind namespace/name`, if given).
    #[serde(rename = "app.blocked")]
    AppBlocked {
        app: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        wave: Option<i64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        by: Option<String>,
    },
    /// An FL round completed (within a time since the job started, if given).
    #[serde(rename = "fl.round_completed")]
    FlRoundCompleted {
        round: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        within: Option<Duration>,
    },
    /// The global model equals what an offline recompute from the stored updates gives.
    #[serde(rename = "fl.global_model")]
    FlGlobalModel(ModelCheck),
    /// Test accuracy of the global model after a round (default: the last completed one).
    #[serde(rename = "fl.accuracy")]
    FlAccuracy {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        round: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        at_least: Option<f64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        at_most: Option<f64>,
    },
    /// Round latency percentiles over completed rounds are at most these.
    #[serde(rename = "fl.round_latency")]
    FlRoundLatency {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        p50: Option<Duration>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        p95: Option<Duration>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        p99: Option<Duration>,
    },
    /// Number of client updates a round aggregated.
    #[serde(rename = "fl.clients_aggregated")]
    FlClientsAggregated {
        round: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        at_least: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        at_most: Option<u32>,
    },
    /// The simulator's invariant checkers found no violation so far.
    #[serde(rename = "invariants.hold")]
    InvariantsHold(bool),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ModelCheck {
    MatchesOfflineRecompute,
}

impl Assertion {
    /// The kind as written in scenario files.
    pub fn kind(&self) -> &'static str {
        match self {
            Assertion::EtcdQuorum(_) => "etcd.quorum",
            Assertion::NodeCondition { .. } => "node.condition",
            Assertion::PodPhase { .. } => "pod.phase",
            Assertion::WorkloadReady { .. } => "workload.ready",
            Assertion::QuotaExceeded { .. } => "quota.exceeded",
            Assertion::AppStatus { .. } => "app.status",
            Assertion::FluxReadyOrder(_) => "flux.ready_order",
            Assertion::ArgocdSyncOrder(_) => "argocd.sync_order",
            Assertion::FluxStatus { .. } => "flux.status",
            Assertion::AppBlocked { .. } => "app.blocked",
            Assertion::FlRoundCompleted { .. } => "fl.round_completed",
            Assertion::FlGlobalModel(_) => "fl.global_model",
            Assertion::FlAccuracy { .. } => "fl.accuracy",
            Assertion::FlRoundLatency { .. } => "fl.round_latency",
            Assertion::FlClientsAggregated { .. } => "fl.clients_aggregated",
            Assertion::InvariantsHold(_) => "invariants.hold",
        }
    }

    /// Every assertion kind, as written in scenario files.
    pub const KINDS: &'static [&'static str] = &[
        "etcd.quorum",
        "node.condition",
        "pod.phase",
        "workload.ready",
        "quota.exceeded",
        "app.status",
        "flux.ready_order",
        "argocd.sync_order",
        "flux.status",
        "app.blocked",
        "fl.round_completed",
        "fl.global_model",
        "fl.accuracy",
        "fl.round_latency",
        "fl.clients_aggregated",
        "invariants.hold",
    ];
}

impl Fault {
    /// The kind as written in scenario files.
    pub fn kind(&self) -> &'static str {
        match self {
            Fault::KillNode(_) => "kill_node",
            Fault::RestoreNode(_) => "restore_node",
            Fault::KillProcess { .. } => "kill_process",
            Fault::RestoreProcess { .. } => "restore_process",
            Fault::Partition { .. } => "partition",
            Fault::HealPartition { .. } => "heal_partition",
            Fault::Link { .. } => "link",
            Fault::EtcdMemberLoss(_) => "etcd_member_loss",
            Fault::DiskFull { .. } => "disk_full",
            Fault::ClockSkew { .. } => "clock_skew",
            Fault::ArgocdDrift { .. } => "argocd_drift",
            Fault::GitCommit { .. } => "git_commit",
            Fault::FlClientDropout(_) => "fl_client_dropout",
            Fault::FlStraggler { .. } => "fl_straggler",
            Fault::FlByzantine { .. } => "fl_byzantine",
        }
    }

    /// Every fault kind, as written in scenario files.
    pub const KINDS: &'static [&'static str] = &[
        "kill_node",
        "restore_node",
        "kill_process",
        "restore_process",
        "partition",
        "heal_partition",
        "link",
        "etcd_member_loss",
        "disk_full",
        "clock_skew",
        "argocd_drift",
        "git_commit",
        "fl_client_dropout",
        "fl_straggler",
        "fl_byzantine",
    ];
}

/// Dimensions a scenario expands over. Every combination is one case.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Matrix {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub seeds: Vec<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub topologies: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub strategies: Vec<Strategy>,
    /// FL client counts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub clients: Vec<u32>,
}

/// The action of a step, once validated (exactly one per step).
#[derive(Debug, Clone, Copy)]
pub enum Action<'a> {
    Wait(&'a Wait),
    Fault(&'a Fault),
    Assert(&'a [Assertion]),
    FlStart,
    Collect(&'a [Collect]),
}

impl Step {
    /// The step's action keys that are present (a valid step has exactly one).
    pub fn action_keys(&self) -> Vec<&'static str> {
        let mut keys = Vec::new();
        if self.wait.is_some() {
            keys.push("wait");
        }
        if self.fault.is_some() {
            keys.push("fault");
        }
        if self.assert.is_some() {
            keys.push("assert");
        }
        if self.fl_start.is_some() {
            keys.push("fl.start");
        }
        if self.collect.is_some() {
            keys.push("collect");
        }
        keys
    }

    /// The action; `None` only for a step that failed validation.
    pub fn action(&self) -> Option<Action<'_>> {
        if let Some(w) = &self.wait {
            return Some(Action::Wait(w));
        }
        if let Some(f) = &self.fault {
            return Some(Action::Fault(f));
        }
        if let Some(a) = &self.assert {
            return Some(Action::Assert(a));
        }
        if self.fl_start.is_some() {
            return Some(Action::FlStart);
        }
        if let Some(c) = &self.collect {
            return Some(Action::Collect(c));
        }
        None
    }

    /// A one-line description for reports and progress output.
    pub fn describe(&self) -> String {
        if let Some(n) = &self.name {
            return n.clone();
        }
        let what = match self.action() {
            Some(Action::Wait(w)) => format!("wait {}", w.describe()),
            Some(Action::Fault(f)) => format!("fault {}", to_flow(f)),
            Some(Action::Assert(a)) => {
                let kinds: Vec<&str> = a.iter().map(Assertion::kind).collect();
                format!("assert {}", kinds.join(", "))
            }
            Some(Action::FlStart) => "fl.start".to_string(),
            Some(Action::Collect(c)) => format!("collect {}", to_flow(&c)),
            None => "(empty step)".to_string(),
        };
        match &self.at {
            Some(t) => format!("at {}: {what}", t.describe()),
            None => what,
        }
    }
}

impl Wait {
    /// The condition keys present (a valid wait has exactly one).
    pub fn condition_keys(&self) -> Vec<&'static str> {
        let mut keys = Vec::new();
        let pairs: [(&'static str, bool); 8] = [
            ("duration", self.duration.is_some()),
            ("cluster", self.cluster.is_some()),
            ("node", self.node.is_some()),
            ("pod", self.pod.is_some()),
            ("workload", self.workload.is_some()),
            ("app", self.app.is_some()),
            ("kustomization", self.kustomization.is_some()),
            ("fl.round", self.fl_round.is_some()),
        ];
        for (k, present) in pairs {
            if present {
                keys.push(k);
            }
        }
        keys
    }

    pub fn describe(&self) -> String {
        to_flow(self)
    }
}

impl Trigger {
    pub fn condition_keys(&self) -> Vec<&'static str> {
        let mut keys = Vec::new();
        if self.time.is_some() {
            keys.push("time");
        }
        if self.after.is_some() {
            keys.push("after");
        }
        if self.fl_round.is_some() {
            keys.push("fl.round");
        }
        keys
    }

    pub fn describe(&self) -> String {
        to_flow(self)
    }
}

/// Compact one-line JSON-ish text of a value (for descriptions).
pub fn to_flow<T: Serialize + ?Sized>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        Ok(other) => other.to_string().replace('"', ""),
        Err(_) => String::from("?"),
    }
}

/// The parameters of one matrix case, in a stable order.
pub type CaseParams = BTreeMap<&'static str, String>;

/// The FL job's coordinator as a network group in `partition`/`link`.
pub const COORDINATOR_GROUP: &str = "coordinator";
/// Every FL client of the job as one network group.
pub const CLIENTS_GROUP: &str = "fl-clients";

/// One end of an FL link, as `partition`/`link` name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum FlEndpoint {
    Coordinator,
    AllClients,
    Client(u32),
}

impl FlEndpoint {
    /// `coordinator`, `fl-clients` or `client-N`; anything else is not an FL endpoint.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            COORDINATOR_GROUP => Some(Self::Coordinator),
            CLIENTS_GROUP => Some(Self::AllClients),
            n => n
                .strip_prefix("client-")
                .and_then(|i| i.parse().ok())
                .map(Self::Client),
        }
    }
}

/// The FL group names a job of `clients` clients answers to.
pub fn fl_groups(clients: u32) -> Vec<String> {
    if clients == 0 {
        return Vec::new();
    }
    [COORDINATOR_GROUP.to_string(), CLIENTS_GROUP.to_string()]
        .into_iter()
        .chain((0..clients).map(|i| format!("client-{i}")))
        .collect()
}
