//! The Kubernetes cluster model: VMs and boot, kubelet leases and the node lifecycle controller,
//! workload controllers (Deployment, StatefulSet, DaemonSet), the scheduler (requests, capacity,
//! taints, priority classes, preemption, ResourceQuotas), PVCs (local-path, Longhorn), Services.
//!
//! The API is available while a control-plane node runs kube-apiserver and its datastore serves
//! (etcd: the local member reaches the quorum leader, as Talos points kube-apiserver at the local
//! member; sqlite: the K3s server is up and its disk not full). Without the API nothing is written:
//! leases are not renewed, controllers and the scheduler stand still.

use std::collections::{BTreeMap, BTreeSet};

use crate::engine::{Event, World};
use crate::fault::{Fault, Process};
use crate::timings::*;
use crate::topology::{
    Bytes, Cpu, Datastore, DiskPurpose, Distribution, NamespaceSpec, PodManagementPolicy,
    PriorityClassSpec, Provisioner, QuotaSpec, Role, StorageClassSpec, TaintEffect, Topology,
    WorkloadKind, WorkloadSpec,
};
use crate::trace::TraceEvent;
use crate::{SimOptions, Time};

/// Taint the node controller puts on a node whose lease expired.
pub const TAINT_UNREACHABLE: &str = "node.kubernetes.io/unreachable";
/// Taint on a node under disk pressure.
pub const TAINT_DISK_PRESSURE: &str = "node.kubernetes.io/disk-pressure";
/// Taint on control-plane nodes that do not allow scheduling.
pub const TAINT_CONTROL_PLANE: &str = "node-role.kubernetes.io/control-plane";
/// kubelet crash-loop back-off initial delay 10 s (kubelet: "back-off 10s restarting failed
/// container", doubling up to 5 min; Pod lifecycle docs).
pub const CRASH_BACKOFF_US: u64 = 10 * SEC;
/// Time a pod takes to exit after SIGTERM on a healthy node (estimate; the grace period
/// [`POD_TERMINATION_GRACE_US`] bounds it).
pub const POD_EXIT_US: u64 = 2 * SEC;
/// Most controller passes at one virtual instant before the run is stopped as a livelock.
pub const MAX_PASSES_PER_INSTANT: u32 = 1_000;

/// Talos kubelet `systemReserved.cpu` default "50m" (siderolabs/talos
/// `pkg/machinery/constants`: `KubeletSystemReservedCPU`, applied by the kubelet spec controller).
pub const TALOS_SYSTEM_RESERVED_CPU_MILLIS: u64 = 50;
/// Talos kubelet `systemReserved.memory` default on control-plane nodes, "512Mi" (siderolabs/talos
/// `pkg/machinery/constants`: `KubeletSystemReservedMemoryControlPlane`).
pub const TALOS_SYSTEM_RESERVED_MEMORY_CONTROL_PLANE_BYTES: u64 = 512 << 20;
/// Talos kubelet `systemReserved.memory` default on workers, "384Mi" (siderolabs/talos
/// `pkg/machinery/constants`: `KubeletSystemReservedMemoryWorker`).
pub const TALOS_SYSTEM_RESERVED_MEMORY_WORKER_BYTES: u64 = 384 << 20;
/// kubelet `evictionHard` default `memory.available<100Mi` (KubeletConfiguration reference). The
/// Node Allocatable docs: allocatable = capacity - kube-reserved - system-reserved - the hard
/// eviction threshold. K3s and kubeadm set no reservations by default, only this threshold.
pub const KUBELET_EVICTION_HARD_MEMORY_BYTES: u64 = 100 << 20;

/// What the scheduler may hand out on a node of `cpu`/`memory` capacity: the capacity less the
/// distribution's kubelet reservations and the hard eviction threshold.
pub fn allocatable(
    distribution: Distribution,
    control_plane: bool,
    cpu: Cpu,
    memory: Bytes,
) -> (Cpu, Bytes) {
    let (cpu_reserved, mem_reserved) = match distribution {
        Distribution::Talos if control_plane => (
            TALOS_SYSTEM_RESERVED_CPU_MILLIS,
            TALOS_SYSTEM_RESERVED_MEMORY_CONTROL_PLANE_BYTES,
        ),
        Distribution::Talos => (
            TALOS_SYSTEM_RESERVED_CPU_MILLIS,
            TALOS_SYSTEM_RESERVED_MEMORY_WORKER_BYTES,
        ),
        Distribution::K3s | Distribution::Kubeadm => (0, 0),
    };
    (
        Cpu(cpu.0.saturating_sub(cpu_reserved)),
        Bytes(
            memory
                .0
                .saturating_sub(mem_reserved + KUBELET_EVICTION_HARD_MEMORY_BYTES),
        ),
    )
}

/// A node (VM and Node object).
#[derive(Debug, Clone)]
pub struct Node {
    /// Name.
    pub name: String,
    /// Roles.
    pub roles: Vec<Role>,
    /// Allocatable CPU (capacity less kubelet reservations, see [`allocatable`]).
    pub cpu: Cpu,
    /// Allocatable memory (capacity less reservations and the hard eviction threshold).
    pub memory: Bytes,
    /// CPU capacity of the VM (the topology's number).
    pub capacity_cpu: Cpu,
    /// Memory capacity of the VM.
    pub capacity_memory: Bytes,
    /// Network group.
    pub group: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Powered on.
    pub powered: bool,
    /// OS booted, services started.
    pub booted: bool,
    /// kubelet process alive.
    pub kubelet: bool,
    /// kube-apiserver (K3s: the server process) alive.
    pub apiserver: bool,
    /// Node object exists (registered, not deleted).
    pub exists: bool,
    /// Ready condition as the API shows it.
    pub ready: bool,
    /// Taints (key -> effect) as the API shows them.
    pub taints: BTreeMap<String, TaintEffect>,
    /// When the NoExecute unreachable taint was added.
    pub unreachable_since: Option<Time>,
    /// Last lease renewal the API accepted.
    pub last_lease: Option<Time>,
    /// Data disk full.
    pub disk_full: bool,
    /// Wall-clock skew in ms.
    pub clock_skew_ms: i64,
    /// Has a local-path disk.
    pub local_path: bool,
    /// Has a Longhorn disk.
    pub longhorn: bool,
    epoch: u64,
    /// Bumped when the server process is killed: a start still pending is then void.
    restart: u64,
}

impl Node {
    /// Is a control-plane node.
    pub fn is_control_plane(&self) -> bool {
        self.roles.contains(&Role::ControlPlane)
    }
}

/// Pod phase as the API shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum PodPhase {
    /// Not scheduled, or scheduled and starting.
    Pending,
    /// Containers started.
    Running,
}

/// A pod.
#[derive(Debug, Clone)]
pub struct Pod {
    /// Unique id.
    pub uid: u64,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Owning workload.
    pub owner: Option<(WorkloadKind, String)>,
    /// StatefulSet ordinal.
    pub ordinal: Option<u32>,
    /// CPU request.
    pub cpu: Cpu,
    /// Memory request.
    pub memory: Bytes,
    /// Priority value.
    pub priority: i32,
    /// Tolerated taint keys (`*` = all).
    pub tolerations: Vec<String>,
    /// DaemonSet pod: tolerates unreachable/not-ready without limit and is pinned to a node.
    pub pinned: Option<usize>,
    /// Node selector.
    pub node_selector: BTreeMap<String, String>,
    /// PVC names.
    pub pvcs: Vec<String>,
    /// Bound node.
    pub node: Option<usize>,
    /// Phase.
    pub phase: PodPhase,
    /// Ready condition (API view).
    pub ready: bool,
    /// Containers actually up and passing readiness (kubelet view).
    pub healthy: bool,
    /// Deletion requested at, and why.
    pub deleting: Option<(Time, String)>,
    /// Last unschedulable reason.
    pub unschedulable: Option<String>,
    /// Preemption nominated node.
    pub nominated: Option<usize>,
    /// Container restarts.
    pub restarts: u32,
    incarnation: u64,
    /// Live: see [`Pod::live`].
    live: bool,
}

impl Pod {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
    /// Running, containers up and passing readiness, Ready in the API, not terminating, on a
    /// powered node: an application in the pod is up and reachable. Changes are traced as
    /// [`TraceEvent::PodLive`].
    pub fn live(&self) -> bool {
        self.live
    }
}

/// A PVC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pvc {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Storage class.
    pub class: String,
    /// Provisioner.
    pub provisioner: Provisioner,
    /// Size.
    pub size: Bytes,
    /// local-path: the node holding the volume.
    pub node: Option<usize>,
    /// Longhorn: nodes holding replicas.
    pub replicas: Vec<usize>,
}

impl Pvc {
    /// Bound (has a volume).
    pub fn bound(&self) -> bool {
        self.node.is_some() || !self.replicas.is_empty()
    }
}

/// A workload object.
#[derive(Debug, Clone)]
pub struct Workload {
    /// Spec.
    pub spec: WorkloadSpec,
    /// Last quota admission error.
    pub quota_error: Option<String>,
    /// Ready replicas.
    pub ready_replicas: u32,
    /// Desired pods (DaemonSet: eligible nodes).
    pub desired: u32,
    was_ready: bool,
    /// Deployment: its ReplicaSet exists. The Deployment controller creates the ReplicaSet and
    /// the ReplicaSet controller creates the pods, one controller pass later; StatefulSet and
    /// DaemonSet controllers create pods directly. So the scheduler's queue (ordered by priority,
    /// then creation time) sees a Deployment's pods after pods created in the same pass.
    replica_set: bool,
}

/// A Service selecting one workload's pods.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Workload name whose pods it selects.
    pub workload: String,
    /// Ready endpoints.
    pub ready_endpoints: u32,
}

/// A workload's per-replica override (scenarios use it to make documented workloads fit).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WorkloadOverride {
    /// Replicas.
    pub replicas: Option<u32>,
    /// CPU request.
    pub cpu: Option<Cpu>,
    /// Memory request.
    pub memory: Option<Bytes>,
}

impl WorkloadOverride {
    /// Parse `replicas:3,cpu:1,memory:2Gi`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut o = WorkloadOverride::default();
        for part in s.split(',').filter(|p| !p.is_empty()) {
            let (k, v) = part
                .split_once(':')
                .ok_or_else(|| format!("override {part:?}: expected key:value"))?;
            match k {
                "replicas" => {
                    o.replicas = Some(
                        v.parse()
                            .map_err(|_| format!("override replicas {v:?}: not a number"))?,
                    )
                }
                "cpu" => o.cpu = Some(Cpu::parse(v)?),
                "memory" => o.memory = Some(Bytes::parse(v)?),
                _ => {
                    return Err(format!(
                        "override key {k:?}: expected replicas, cpu or memory"
                    ));
                }
            }
        }
        Ok(o)
    }
    /// Back to the `parse` form.
    pub fn to_arg(&self) -> String {
        let mut v = Vec::new();
        if let Some(r) = self.replicas {
            v.push(format!("replicas:{r}"));
        }
        if let Some(c) = self.cpu {
            v.push(format!("cpu:{c}"));
        }
        if let Some(m) = self.memory {
            v.push(format!("memory:{m}"));
        }
        v.join(",")
    }
}

/// A Kubernetes object the GitOps models (or a scenario) apply.
#[derive(Debug, Clone, PartialEq)]
pub enum Object {
    /// Namespace (with an optional quota).
    Namespace(NamespaceSpec),
    /// ResourceQuota of a namespace (replaces the previous one).
    ResourceQuota {
        /// Namespace.
        namespace: String,
        /// Hard limits.
        quota: QuotaSpec,
    },
    /// PriorityClass.
    PriorityClass(PriorityClassSpec),
    /// Deployment, StatefulSet or DaemonSet.
    Workload(WorkloadSpec),
    /// Service selecting a workload's pods.
    Service {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// Workload whose pods it selects.
        workload: String,
    },
    /// A standalone PVC.
    Pvc {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// Size.
        size: Bytes,
        /// Storage class (default class when `None`).
        storage_class: Option<String>,
    },
    /// A StorageClass.
    StorageClass(StorageClassSpec),
}

/// Object kinds, for [`World::delete`] and [`World::health`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ObjectKind {
    /// Namespace.
    Namespace,
    /// ResourceQuota.
    ResourceQuota,
    /// PriorityClass.
    PriorityClass,
    /// Deployment.
    Deployment,
    /// StatefulSet.
    StatefulSet,
    /// DaemonSet.
    DaemonSet,
    /// Service.
    Service,
    /// PVC.
    Pvc,
    /// StorageClass.
    StorageClass,
}

impl From<WorkloadKind> for ObjectKind {
    fn from(k: WorkloadKind) -> Self {
        match k {
            WorkloadKind::Deployment => ObjectKind::Deployment,
            WorkloadKind::StatefulSet => ObjectKind::StatefulSet,
            WorkloadKind::DaemonSet => ObjectKind::DaemonSet,
        }
    }
}

/// Health of an object, in ArgoCD's terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// Exists and is fully available.
    Healthy,
    /// Converging (pods starting, PVC waiting for its first consumer).
    Progressing(String),
    /// Cannot converge as things stand (unschedulable, quota exceeded).
    Degraded(String),
    /// Not present.
    Missing,
}

/// Why an apply or delete failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    /// The API server is unavailable (no datastore quorum, all apiservers down or unreachable).
    #[error("kubernetes api unavailable: cannot {action} {object}")]
    ApiUnavailable {
        /// What was attempted.
        action: &'static str,
        /// The object.
        object: String,
    },
    /// A reference does not resolve.
    #[error("cannot apply {object}: {message}")]
    Invalid {
        /// The object.
        object: String,
        /// What is wrong.
        message: String,
    },
}

/// The cluster state.
#[derive(Debug, Clone)]
pub struct Cluster {
    pub(crate) nodes: Vec<Node>,
    pub(crate) pods: BTreeMap<u64, Pod>,
    pub(crate) workloads: BTreeMap<(WorkloadKind, String, String), Workload>,
    pub(crate) pvcs: BTreeMap<(String, String), Pvc>,
    pub(crate) services: BTreeMap<(String, String), Service>,
    pub(crate) namespaces: BTreeMap<String, Option<QuotaSpec>>,
    pub(crate) priority_classes: BTreeMap<String, i32>,
    pub(crate) storage_classes: Vec<StorageClassSpec>,
    /// Pods by owning workload (kind, namespace, name): the controllers' and status passes'
    /// index, so a pass over one workload does not scan every pod.
    pub(crate) owned: BTreeMap<(WorkloadKind, String, String), BTreeSet<u64>>,
    /// Bumped when a pod is created, bound, marked for deletion or removed, and on every apply
    /// (quotas): the pod-set invariants (capacity, quota, identity, volume affinity) re-run only
    /// then, not after each of the many readiness and lease events.
    pub(crate) pods_generation: u64,
    next_uid: u64,
    pub(crate) api_up: bool,
    monitor_running: bool,
    retry_at: Option<Time>,
    distribution: Distribution,
    datastore: Datastore,
}

impl Cluster {
    /// The cluster of a topology, before anything boots; documented workloads are already
    /// objects (applied with overrides) so they come up as soon as the API does.
    pub fn new(topo: &Topology, options: &SimOptions) -> Self {
        let nodes = topo
            .nodes
            .iter()
            .map(|n| {
                let mut taints: BTreeMap<String, TaintEffect> =
                    n.taints.iter().map(|t| (t.key.clone(), t.effect)).collect();
                if n.roles.contains(&Role::ControlPlane)
                    && !n.roles.contains(&Role::Worker)
                    && !topo.allow_scheduling_on_control_plane
                {
                    taints.insert(TAINT_CONTROL_PLANE.into(), TaintEffect::NoSchedule);
                }
                let (cpu, memory) = allocatable(
                    topo.distribution,
                    n.roles.contains(&Role::ControlPlane),
                    n.cpu,
                    n.memory,
                );
                Node {
                    name: n.name.clone(),
                    roles: n.roles.clone(),
                    cpu,
                    memory,
                    capacity_cpu: n.cpu,
                    capacity_memory: n.memory,
                    group: n.group.clone(),
                    labels: n.labels.clone(),
                    powered: false,
                    booted: false,
                    kubelet: false,
                    apiserver: false,
                    exists: false,
                    ready: false,
                    taints,
                    unreachable_since: None,
                    last_lease: None,
                    disk_full: false,
                    clock_skew_ms: 0,
                    local_path: n.disks.iter().any(|d| d.purpose == DiskPurpose::LocalPath),
                    longhorn: n.disks.iter().any(|d| d.purpose == DiskPurpose::Longhorn),
                    epoch: 0,
                    restart: 0,
                }
            })
            .collect();
        let mut c = Cluster {
            nodes,
            pods: BTreeMap::new(),
            workloads: BTreeMap::new(),
            pvcs: BTreeMap::new(),
            services: BTreeMap::new(),
            namespaces: topo
                .namespaces
                .iter()
                .map(|n| (n.name.clone(), n.quota.clone()))
                .collect(),
            priority_classes: topo
                .priority_classes
                .iter()
                .map(|p| (p.name.clone(), p.value))
                .collect(),
            storage_classes: topo.storage_classes.clone(),
            owned: BTreeMap::new(),
            pods_generation: 0,
            next_uid: 1,
            api_up: false,
            monitor_running: false,
            retry_at: None,
            distribution: topo.distribution,
            datastore: topo.datastore,
        };
        if options.apply_topology_workloads {
            for w in &topo.workloads {
                let mut w = w.clone();
                if let Some(o) = options.overrides.get(&w.name) {
                    w.replicas = o.replicas.unwrap_or(w.replicas);
                    w.cpu = o.cpu.unwrap_or(w.cpu);
                    w.memory = o.memory.unwrap_or(w.memory);
                }
                c.namespaces.entry(w.namespace.clone()).or_insert(None);
                if w.service {
                    c.services.insert(
                        (w.namespace.clone(), w.name.clone()),
                        Service {
                            namespace: w.namespace.clone(),
                            name: w.name.clone(),
                            workload: w.name.clone(),
                            ready_endpoints: 0,
                        },
                    );
                }
                c.workloads.insert(
                    (w.kind, w.namespace.clone(), w.name.clone()),
                    Workload {
                        spec: w,
                        quota_error: None,
                        ready_replicas: 0,
                        desired: 0,
                        was_ready: false,
                        replica_set: false,
                    },
                );
            }
        }
        c
    }
}

fn tolerates(p: &Pod, key: &str) -> bool {
    p.tolerations.iter().any(|t| t == "*" || t == key)
        || (p.pinned.is_some() && key == TAINT_UNREACHABLE)
}

/// What a controller pass needs of one of its workload's pods.
struct Owned {
    uid: u64,
    ordinal: Option<u32>,
    pinned: Option<usize>,
    node: Option<usize>,
    ready: bool,
    deleting: bool,
}

/// A scheduling verdict on one node.
enum Fit {
    Ok,
    Reasons(Vec<String>),
}

impl World {
    // ---------- queries ----------

    /// All nodes, in topology order.
    pub fn nodes(&self) -> &[Node] {
        &self.cluster.nodes
    }
    /// A node by name.
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.cluster.nodes.iter().find(|n| n.name == name)
    }
    pub(crate) fn node_idx(&self, name: &str) -> Option<usize> {
        self.cluster.nodes.iter().position(|n| n.name == name)
    }
    /// Whether node `a` can reach node `b` (indices into [`World::nodes`]; no partition cuts
    /// their link).
    pub fn nodes_reachable(&self, a: usize, b: usize) -> bool {
        self.net.reachable(a, b)
    }
    /// All pods, by uid.
    pub fn pods(&self) -> impl Iterator<Item = &Pod> {
        self.cluster.pods.values()
    }
    /// A pod by namespace and name (the live one if several objects share the name).
    pub fn pod(&self, namespace: &str, name: &str) -> Option<&Pod> {
        self.cluster
            .pods
            .values()
            .find(|p| p.namespace == namespace && p.name == name)
    }
    /// Name of the node a pod is bound to.
    pub fn pod_node(&self, p: &Pod) -> Option<&str> {
        p.node.map(|i| self.cluster.nodes[i].name.as_str())
    }
    /// All PVCs.
    pub fn pvcs(&self) -> impl Iterator<Item = &Pvc> {
        self.cluster.pvcs.values()
    }
    /// All workloads.
    pub fn workloads(&self) -> impl Iterator<Item = &Workload> {
        self.cluster.workloads.values()
    }
    /// A workload.
    pub fn workload(&self, kind: WorkloadKind, namespace: &str, name: &str) -> Option<&Workload> {
        self.cluster
            .workloads
            .get(&(kind, namespace.to_string(), name.to_string()))
    }
    /// All services.
    pub fn services(&self) -> impl Iterator<Item = &Service> {
        self.cluster.services.values()
    }
    /// Whether the Kubernetes API is available.
    pub fn api_available(&self) -> bool {
        self.cluster.api_up
    }
    /// Pods that cannot be scheduled, with the scheduler's reason.
    pub fn unschedulable(&self) -> Vec<(String, String)> {
        self.cluster
            .pods
            .values()
            .filter(|p| p.node.is_none() && p.deleting.is_none())
            .filter_map(|p| p.unschedulable.as_ref().map(|r| (p.key(), r.clone())))
            .collect()
    }
    /// Workloads whose pods a ResourceQuota refused, with the message.
    pub fn quota_errors(&self) -> Vec<(String, String)> {
        self.cluster
            .workloads
            .values()
            .filter_map(|w| {
                w.quota_error
                    .as_ref()
                    .map(|e| (format!("{}/{}", w.spec.namespace, w.spec.name), e.clone()))
            })
            .collect()
    }
    /// Every node Ready and every workload fully ready.
    pub fn cluster_ready(&self) -> bool {
        self.cluster.api_up
            && self.cluster.nodes.iter().all(|n| n.ready)
            && self.cluster.workloads.values().all(|w| {
                w.ready_replicas >= w.desired && w.desired > 0
                    || w.desired == 0 && w.spec.replicas == 0
            })
    }
    /// Every node Ready (workloads aside).
    pub fn nodes_ready(&self) -> bool {
        self.cluster.api_up && self.cluster.nodes.iter().all(|n| n.ready)
    }
    pub(crate) fn node_powered(&self, i: usize) -> bool {
        self.cluster.nodes[i].powered
    }

    /// Health of an object, ArgoCD style.
    pub fn health(&self, kind: ObjectKind, namespace: &str, name: &str) -> Health {
        let wk = match kind {
            ObjectKind::Deployment => Some(WorkloadKind::Deployment),
            ObjectKind::StatefulSet => Some(WorkloadKind::StatefulSet),
            ObjectKind::DaemonSet => Some(WorkloadKind::DaemonSet),
            _ => None,
        };
        if let Some(wk) = wk {
            let Some(w) = self.workload(wk, namespace, name) else {
                return Health::Missing;
            };
            if let Some(e) = &w.quota_error {
                return Health::Degraded(e.clone());
            }
            if w.ready_replicas >= w.desired {
                return Health::Healthy;
            }
            let stuck = self.cluster.pods.values().find(|p| {
                p.namespace == namespace
                    && p.owner.as_ref().is_some_and(|(k, n)| *k == wk && n == name)
                    && p.unschedulable.is_some()
                    && p.node.is_none()
            });
            return match stuck {
                Some(p) => Health::Degraded(format!(
                    "pod {} unschedulable: {}",
                    p.key(),
                    p.unschedulable.clone().unwrap_or_default()
                )),
                None => Health::Progressing(format!(
                    "{}/{} replicas ready",
                    w.ready_replicas, w.desired
                )),
            };
        }
        match kind {
            ObjectKind::Namespace | ObjectKind::ResourceQuota => {
                if self.cluster.namespaces.contains_key(namespace) {
                    Health::Healthy
                } else {
                    Health::Missing
                }
            }
            ObjectKind::PriorityClass => {
                if self.cluster.priority_classes.contains_key(name) {
                    Health::Healthy
                } else {
                    Health::Missing
                }
            }
            ObjectKind::StorageClass => {
                if self.cluster.storage_classes.iter().any(|s| s.name == name) {
                    Health::Healthy
                } else {
                    Health::Missing
                }
            }
            ObjectKind::Service => match self
                .cluster
                .services
                .get(&(namespace.to_string(), name.to_string()))
            {
                None => Health::Missing,
                Some(s) if s.ready_endpoints > 0 => Health::Healthy,
                Some(_) => Health::Progressing("no ready endpoints".into()),
            },
            ObjectKind::Pvc => match self
                .cluster
                .pvcs
                .get(&(namespace.to_string(), name.to_string()))
            {
                None => Health::Missing,
                Some(p) if p.bound() => Health::Healthy,
                Some(_) => Health::Progressing("waiting for first consumer".into()),
            },
            _ => Health::Missing,
        }
    }

    // ---------- public mutation API (GitOps) ----------

    /// Create or update an object. Fails while the API is unavailable.
    pub fn apply(&mut self, obj: Object) -> Result<(), ApplyError> {
        let label = object_label(&obj);
        if !self.cluster.api_up {
            return Err(ApplyError::ApiUnavailable {
                action: "apply",
                object: label,
            });
        }
        match obj {
            Object::Namespace(ns) => {
                self.cluster.namespaces.insert(ns.name, ns.quota);
            }
            Object::ResourceQuota { namespace, quota } => {
                self.cluster.namespaces.insert(namespace, Some(quota));
            }
            Object::PriorityClass(pc) => {
                self.cluster.priority_classes.insert(pc.name, pc.value);
            }
            Object::StorageClass(sc) => {
                self.cluster.storage_classes.retain(|s| s.name != sc.name);
                self.cluster.storage_classes.push(sc);
            }
            Object::Workload(w) => {
                if let Some(pc) = &w.priority_class
                    && !self.cluster.priority_classes.contains_key(pc)
                {
                    return Err(ApplyError::Invalid {
                        object: label,
                        message: format!("no PriorityClass named {pc:?}"),
                    });
                }
                self.cluster
                    .namespaces
                    .entry(w.namespace.clone())
                    .or_insert(None);
                let key = (w.kind, w.namespace.clone(), w.name.clone());
                match self.cluster.workloads.get_mut(&key) {
                    Some(existing) => existing.spec = w,
                    None => {
                        self.cluster.workloads.insert(
                            key,
                            Workload {
                                spec: w,
                                quota_error: None,
                                ready_replicas: 0,
                                desired: 0,
                                was_ready: false,
                                replica_set: false,
                            },
                        );
                    }
                }
            }
            Object::Service {
                namespace,
                name,
                workload,
            } => {
                self.cluster.services.insert(
                    (namespace.clone(), name.clone()),
                    Service {
                        namespace,
                        name,
                        workload,
                        ready_endpoints: 0,
                    },
                );
            }
            Object::Pvc {
                namespace,
                name,
                size,
                storage_class,
            } => {
                if !self
                    .cluster
                    .pvcs
                    .contains_key(&(namespace.clone(), name.clone()))
                {
                    self.create_pvc(&namespace, &name, size, storage_class.as_deref())
                        .map_err(|message| ApplyError::Invalid {
                            object: label.clone(),
                            message,
                        })?;
                }
            }
        }
        self.emit(TraceEvent::Applied {
            object: label,
            action: "apply".into(),
        });
        // a quota or a PVC binding may have changed
        self.cluster.pods_generation += 1;
        self.changed();
        Ok(())
    }

    /// Delete an object; `Ok(false)` when it did not exist. Deleting a workload deletes its pods.
    pub fn delete(
        &mut self,
        kind: ObjectKind,
        namespace: &str,
        name: &str,
    ) -> Result<bool, ApplyError> {
        let label = format!("{kind:?} {namespace}/{name}");
        if !self.cluster.api_up {
            return Err(ApplyError::ApiUnavailable {
                action: "delete",
                object: label,
            });
        }
        let (ns, nm) = (namespace.to_string(), name.to_string());
        let existed = match kind {
            ObjectKind::Namespace => {
                let had = self.cluster.namespaces.remove(namespace).is_some();
                let keys: Vec<_> = self
                    .cluster
                    .workloads
                    .keys()
                    .filter(|k| k.1 == namespace)
                    .cloned()
                    .collect();
                for k in keys {
                    self.remove_workload(&k);
                }
                self.cluster.services.retain(|k, _| k.0 != namespace);
                self.cluster.pvcs.retain(|k, _| k.0 != namespace);
                had
            }
            ObjectKind::ResourceQuota => self
                .cluster
                .namespaces
                .get_mut(namespace)
                .map(|q| q.take().is_some())
                .unwrap_or(false),
            ObjectKind::PriorityClass => self.cluster.priority_classes.remove(name).is_some(),
            ObjectKind::StorageClass => {
                let before = self.cluster.storage_classes.len();
                self.cluster.storage_classes.retain(|s| s.name != name);
                before != self.cluster.storage_classes.len()
            }
            ObjectKind::Deployment | ObjectKind::StatefulSet | ObjectKind::DaemonSet => {
                let wk = match kind {
                    ObjectKind::Deployment => WorkloadKind::Deployment,
                    ObjectKind::StatefulSet => WorkloadKind::StatefulSet,
                    _ => WorkloadKind::DaemonSet,
                };
                self.remove_workload(&(wk, ns, nm))
            }
            ObjectKind::Service => self.cluster.services.remove(&(ns, nm)).is_some(),
            ObjectKind::Pvc => self.cluster.pvcs.remove(&(ns, nm)).is_some(),
        };
        if existed {
            self.emit(TraceEvent::Applied {
                object: label,
                action: "delete".into(),
            });
            self.changed();
        }
        Ok(existed)
    }

    fn remove_workload(&mut self, key: &(WorkloadKind, String, String)) -> bool {
        if self.cluster.workloads.remove(key).is_none() {
            return false;
        }
        let uids: Vec<u64> = self
            .cluster
            .owned
            .get(key)
            .into_iter()
            .flatten()
            .copied()
            .collect();
        for u in uids {
            self.delete_pod(u, "owner deleted");
        }
        true
    }

    // ---------- boot and node lifecycle ----------

    pub(crate) fn power_on_all(&mut self) {
        for i in 0..self.cluster.nodes.len() {
            self.power_on(i);
        }
    }

    fn boot_time(&mut self) -> Time {
        let base = match self.cluster.distribution {
            Distribution::Talos => TALOS_BOOT_US,
            Distribution::K3s => K3S_BOOT_US,
            Distribution::Kubeadm => KUBEADM_BOOT_US,
        };
        base + self.random_range(0, base * 3 / 10)
    }

    fn power_on(&mut self, i: usize) {
        let n = &mut self.cluster.nodes[i];
        if n.powered {
            return;
        }
        n.powered = true;
        n.epoch += 1;
        let epoch = n.epoch;
        let name = n.name.clone();
        self.emit(TraceEvent::NodePowerOn { node: name });
        let at = self.now + self.boot_time();
        self.schedule(at, Event::BootDone { node: i, epoch });
    }

    fn power_off(&mut self, i: usize) {
        let n = &mut self.cluster.nodes[i];
        if !n.powered {
            return;
        }
        n.powered = false;
        n.booted = false;
        n.kubelet = false;
        n.apiserver = false;
        n.epoch += 1;
        let name = n.name.clone();
        self.emit(TraceEvent::NodePowerOff { node: name });
        let mut on_node = Vec::new();
        for p in self.cluster.pods.values_mut() {
            if p.node == Some(i) {
                p.healthy = false;
                p.incarnation += 1;
                on_node.push(p.uid);
            }
        }
        for uid in on_node {
            self.sync_live(uid);
        }
        self.etcd_stop(i);
        self.api_update();
        self.changed();
    }

    fn boot_done(&mut self, i: usize, epoch: u64) {
        let n = &mut self.cluster.nodes[i];
        if n.epoch != epoch || !n.powered {
            return;
        }
        n.booted = true;
        n.kubelet = true;
        n.apiserver = n.is_control_plane();
        let name = n.name.clone();
        self.emit(TraceEvent::NodeBooted { node: name });
        self.etcd_start(i);
        self.api_update();
        let now = self.now;
        self.schedule(now, Event::LeaseRenew { node: i, epoch });
        if !self.cluster.monitor_running {
            self.cluster.monitor_running = true;
            self.schedule(now + NODE_MONITOR_PERIOD_US, Event::NodeMonitor);
        }
        // the kubelet (re)starts the pods bound to this node
        let restart: Vec<u64> = self
            .cluster
            .pods
            .values()
            .filter(|p| p.node == Some(i) && p.deleting.is_none())
            .map(|p| p.uid)
            .collect();
        for uid in restart {
            self.start_pod(uid, 0);
        }
        self.changed();
    }

    /// A restarted K3s server process is up: kube-apiserver serves, the embedded kubelet runs.
    fn server_started(&mut self, i: usize, restart: u64) {
        let n = &mut self.cluster.nodes[i];
        if n.restart != restart || !n.booted || n.apiserver {
            return;
        }
        n.apiserver = n.is_control_plane();
        let epoch = n.epoch;
        if !n.kubelet {
            n.kubelet = true;
            let now = self.now;
            self.schedule(now, Event::LeaseRenew { node: i, epoch });
        }
        self.api_update();
        self.changed();
    }

    fn kubelet_live(&self, i: usize) -> bool {
        let n = &self.cluster.nodes[i];
        n.powered && n.booted && n.kubelet
    }

    /// Whether kube-apiserver on node `c` serves requests.
    pub(crate) fn apiserver_serving(&self, c: usize) -> bool {
        let n = &self.cluster.nodes[c];
        if !(n.powered && n.booted && n.apiserver && n.is_control_plane()) {
            return false;
        }
        match self.cluster.datastore {
            Datastore::Etcd => self.etcd_member_serving(c),
            Datastore::Sqlite => !n.disk_full,
        }
    }

    fn node_reaches_api(&self, i: usize) -> bool {
        (0..self.cluster.nodes.len()).any(|c| self.apiserver_serving(c) && self.net.reachable(i, c))
    }

    pub(crate) fn api_update(&mut self) {
        let up = (0..self.cluster.nodes.len()).any(|c| self.apiserver_serving(c));
        if up != self.cluster.api_up {
            self.cluster.api_up = up;
            self.emit(TraceEvent::ApiAvailable { available: up });
            self.changed();
        }
    }

    fn lease_renew(&mut self, i: usize, epoch: u64) {
        if self.cluster.nodes[i].epoch != epoch || !self.kubelet_live(i) {
            return;
        }
        let next = self.now + KUBELET_LEASE_RENEW_US;
        self.schedule(next, Event::LeaseRenew { node: i, epoch });
        if !self.node_reaches_api(i) {
            return;
        }
        let now = self.now;
        let n = &mut self.cluster.nodes[i];
        n.last_lease = Some(now);
        let mut became_ready = false;
        if !n.exists {
            n.exists = true;
        }
        if !n.ready {
            n.ready = true;
            became_ready = true;
        }
        if became_ready {
            let name = n.name.clone();
            let had_taint = n.taints.remove(TAINT_UNREACHABLE).is_some();
            n.unreachable_since = None;
            self.emit(TraceEvent::NodeReady { node: name.clone() });
            if had_taint {
                self.emit(TraceEvent::NodeUntainted {
                    node: name,
                    key: TAINT_UNREACHABLE.into(),
                });
            }
            // kubelet syncs pod status again
            let uids: Vec<u64> = self
                .cluster
                .pods
                .values()
                .filter(|p| p.node == Some(i))
                .map(|p| p.uid)
                .collect();
            for uid in uids {
                let p = self.cluster.pods.get_mut(&uid).expect("uid from iteration");
                if p.deleting.is_some() {
                    let at = self.now + POD_EXIT_US;
                    self.schedule(at, Event::PodGone { uid });
                } else if p.healthy && !p.ready {
                    p.ready = true;
                    let key = p.key();
                    self.emit(TraceEvent::PodReady {
                        pod: key,
                        ready: true,
                    });
                    self.sync_live(uid);
                }
            }
            self.changed();
        }
    }

    fn node_monitor(&mut self) {
        let now = self.now;
        self.schedule(now + NODE_MONITOR_PERIOD_US, Event::NodeMonitor);
        if !self.cluster.api_up {
            return;
        }
        for i in 0..self.cluster.nodes.len() {
            let n = &self.cluster.nodes[i];
            if !n.exists {
                continue;
            }
            let stale = n
                .last_lease
                .is_none_or(|t| now.saturating_sub(t) > NODE_MONITOR_GRACE_US);
            if n.ready && stale {
                let n = &mut self.cluster.nodes[i];
                n.ready = false;
                n.taints
                    .insert(TAINT_UNREACHABLE.into(), TaintEffect::NoExecute);
                n.unreachable_since = Some(now);
                let name = n.name.clone();
                self.emit(TraceEvent::NodeNotReady { node: name.clone() });
                self.emit(TraceEvent::NodeTainted {
                    node: name,
                    key: TAINT_UNREACHABLE.into(),
                });
                let uids: Vec<u64> = self
                    .cluster
                    .pods
                    .values()
                    .filter(|p| p.node == Some(i) && p.ready)
                    .map(|p| p.uid)
                    .collect();
                for uid in uids {
                    let p = self.cluster.pods.get_mut(&uid).expect("uid from iteration");
                    p.ready = false;
                    let key = p.key();
                    self.emit(TraceEvent::PodReady {
                        pod: key,
                        ready: false,
                    });
                    self.sync_live(uid);
                }
                self.changed();
            }
            // taint-based eviction after the default toleration
            if let Some(since) = self.cluster.nodes[i].unreachable_since
                && now >= since + DEFAULT_TOLERATION_US
            {
                let uids: Vec<u64> = self
                    .cluster
                    .pods
                    .values()
                    .filter(|p| {
                        p.node == Some(i)
                            && p.deleting.is_none()
                            && !tolerates(p, TAINT_UNREACHABLE)
                    })
                    .map(|p| p.uid)
                    .collect();
                for uid in uids {
                    self.delete_pod(uid, "evicted: node unreachable past the default toleration");
                }
            }
        }
    }

    // ---------- pods ----------

    pub(crate) fn delete_pod(&mut self, uid: u64, reason: &str) {
        let now = self.now;
        let Some(p) = self.cluster.pods.get_mut(&uid) else {
            return;
        };
        if p.deleting.is_some() {
            return;
        }
        p.deleting = Some((now, reason.to_string()));
        self.cluster.pods_generation += 1;
        let was_ready = p.ready;
        p.ready = false;
        let key = p.key();
        let node = p.node;
        if was_ready {
            self.emit(TraceEvent::PodReady {
                pod: key.clone(),
                ready: false,
            });
        }
        self.emit(TraceEvent::PodTerminating {
            pod: key,
            reason: reason.to_string(),
        });
        self.sync_live(uid);
        match node {
            None => self.remove_pod(uid),
            Some(n) if self.kubelet_live(n) && self.node_reaches_api(n) => {
                self.schedule(now + POD_EXIT_US, Event::PodGone { uid });
            }
            // the kubelet cannot confirm: the object stays Terminating until the node returns
            // or the Node object is deleted.
            Some(_) => {}
        }
        self.changed();
    }

    fn remove_pod(&mut self, uid: u64) {
        if let Some(p) = self.cluster.pods.remove(&uid) {
            if p.live {
                let node = p
                    .node
                    .map(|n| self.cluster.nodes[n].name.clone())
                    .unwrap_or_default();
                self.emit(TraceEvent::PodLive {
                    pod: p.key(),
                    node,
                    live: false,
                });
            }
            if let Some((kind, name)) = &p.owner {
                let key = (*kind, p.namespace.clone(), name.clone());
                if let Some(set) = self.cluster.owned.get_mut(&key) {
                    set.remove(&uid);
                }
            }
            self.cluster.pods_generation += 1;
            self.emit(TraceEvent::PodDeleted { pod: p.key() });
            self.changed();
        }
    }

    /// Recomputes pod `uid`'s [`Pod::live`] and traces a change.
    fn sync_live(&mut self, uid: u64) {
        let Some(p) = self.cluster.pods.get(&uid) else {
            return;
        };
        let live = p.phase == PodPhase::Running
            && p.healthy
            && p.ready
            && p.deleting.is_none()
            && p.node.is_some_and(|n| self.cluster.nodes[n].powered);
        if live == p.live {
            return;
        }
        let node = p
            .node
            .map(|n| self.cluster.nodes[n].name.clone())
            .unwrap_or_default();
        let p = self.cluster.pods.get_mut(&uid).expect("checked above");
        p.live = live;
        let pod = p.key();
        self.emit(TraceEvent::PodLive { pod, node, live });
    }

    fn start_pod(&mut self, uid: u64, extra_delay: Time) {
        let base = POD_START_US + self.random_range(0, POD_START_US);
        let Some(p) = self.cluster.pods.get_mut(&uid) else {
            return;
        };
        p.incarnation += 1;
        let was_healthy = std::mem::replace(&mut p.healthy, false);
        let inc = p.incarnation;
        let longhorn = p.pvcs.iter().any(|c| {
            self.cluster
                .pvcs
                .get(&(p.namespace.clone(), c.clone()))
                .is_some_and(|v| v.provisioner == Provisioner::Longhorn)
        });
        let attach = if longhorn {
            LONGHORN_ATTACH_US + self.random_range(0, LONGHORN_ATTACH_US / 2)
        } else {
            0
        };
        let at = self.now + extra_delay + base + attach;
        if was_healthy {
            self.sync_live(uid);
        }
        self.schedule(
            at,
            Event::PodStarted {
                uid,
                incarnation: inc,
            },
        );
    }

    fn pod_started(&mut self, uid: u64, inc: u64) {
        let Some(p) = self.cluster.pods.get(&uid) else {
            return;
        };
        if p.incarnation != inc || p.deleting.is_some() {
            return;
        }
        let Some(node) = p.node else { return };
        if !self.kubelet_live(node) {
            return;
        }
        // Longhorn: the volume needs a live replica
        let faulted = p.pvcs.iter().any(|c| {
            self.cluster
                .pvcs
                .get(&(p.namespace.clone(), c.clone()))
                .is_some_and(|v| {
                    v.provisioner == Provisioner::Longhorn
                        && !v.replicas.iter().any(|&r| self.cluster.nodes[r].powered)
                })
        });
        if faulted {
            let at = self.now + CRASH_BACKOFF_US;
            self.schedule(
                at,
                Event::PodStarted {
                    uid,
                    incarnation: inc,
                },
            );
            return;
        }
        let delay = self.random_range(0, READINESS_PERIOD_US);
        let p = self.cluster.pods.get_mut(&uid).expect("checked above");
        let key = p.key();
        if p.phase != PodPhase::Running {
            p.phase = PodPhase::Running;
            self.emit(TraceEvent::PodRunning { pod: key });
        }
        let at = self.now + delay;
        self.schedule(
            at,
            Event::PodReady {
                uid,
                incarnation: inc,
            },
        );
        self.changed();
    }

    fn pod_ready(&mut self, uid: u64, inc: u64) {
        let Some(p) = self.cluster.pods.get(&uid) else {
            return;
        };
        if p.incarnation != inc || p.deleting.is_some() {
            return;
        }
        let Some(node) = p.node else { return };
        if !self.kubelet_live(node) {
            return;
        }
        let report = self.cluster.nodes[node].ready && self.node_reaches_api(node);
        let p = self.cluster.pods.get_mut(&uid).expect("checked above");
        p.healthy = true;
        if report && !p.ready {
            p.ready = true;
            let key = p.key();
            self.emit(TraceEvent::PodReady {
                pod: key,
                ready: true,
            });
        }
        self.sync_live(uid);
        self.changed();
    }

    // ---------- faults ----------

    pub(crate) fn apply_fault(&mut self, fault: Fault) {
        self.emit(TraceEvent::Fault {
            fault: fault.to_string(),
        });
        let node_of = |w: &World, name: &str| w.node_idx(name);
        match &fault {
            Fault::KillNode { node } => {
                if let Some(i) = node_of(self, node) {
                    self.power_off(i);
                }
            }
            Fault::RestoreNode { node } => {
                if let Some(i) = node_of(self, node) {
                    self.power_on(i);
                }
            }
            Fault::KillProcess { node, process } => {
                let Some(i) = node_of(self, node) else { return };
                self.emit(TraceEvent::ProcessKilled {
                    node: node.clone(),
                    process: process.to_string(),
                });
                match process {
                    Process::Kubelet => self.cluster.nodes[i].kubelet = false,
                    Process::Etcd => self.etcd_stop(i),
                    Process::Apiserver => {
                        self.cluster.nodes[i].apiserver = false;
                        self.cluster.nodes[i].restart += 1;
                        if self.cluster.distribution == Distribution::K3s {
                            // k3s runs the kubelet inside the same process
                            self.cluster.nodes[i].kubelet = false;
                        }
                        self.api_update();
                    }
                    Process::Pod(key) => {
                        let uid = self
                            .cluster
                            .pods
                            .values()
                            .find(|p| p.key() == *key && p.node == Some(i))
                            .map(|p| p.uid);
                        if let Some(uid) = uid {
                            let p = self.cluster.pods.get_mut(&uid).expect("found above");
                            p.restarts += 1;
                            let was_ready = p.ready;
                            p.ready = false;
                            if was_ready {
                                self.emit(TraceEvent::PodReady {
                                    pod: key.clone(),
                                    ready: false,
                                });
                            }
                            self.sync_live(uid);
                            self.start_pod(uid, CRASH_BACKOFF_US);
                        }
                    }
                }
                self.changed();
            }
            Fault::RestoreProcess { node, process } => {
                let Some(i) = node_of(self, node) else { return };
                if !self.cluster.nodes[i].booted {
                    return;
                }
                self.emit(TraceEvent::ProcessRestored {
                    node: node.clone(),
                    process: process.to_string(),
                });
                let epoch = self.cluster.nodes[i].epoch;
                match process {
                    Process::Kubelet => {
                        if !self.cluster.nodes[i].kubelet {
                            self.cluster.nodes[i].kubelet = true;
                            let now = self.now;
                            self.schedule(now, Event::LeaseRenew { node: i, epoch });
                        }
                    }
                    Process::Etcd => self.etcd_start(i),
                    Process::Apiserver if self.cluster.distribution == Distribution::K3s => {
                        // the whole K3s server restarts: it serves (and its kubelet posts
                        // status) only once it has started
                        let n = &self.cluster.nodes[i];
                        if !n.apiserver {
                            let (at, restart) = (self.now + K3S_SERVER_START_US, n.restart);
                            self.schedule(at, Event::ServerStarted { node: i, restart });
                        }
                    }
                    Process::Apiserver => {
                        self.cluster.nodes[i].apiserver = self.cluster.nodes[i].is_control_plane();
                        self.api_update();
                    }
                    Process::Pod(_) => {}
                }
                self.changed();
            }
            Fault::Partition { a, b } => {
                if let (Ok(a), Ok(b)) = (self.net.resolve(a), self.net.resolve(b)) {
                    self.net.partition(&a, &b);
                }
                self.etcd_quorum_update();
                self.api_update();
                self.changed();
            }
            Fault::DegradeLinks {
                a,
                b,
                latency_us,
                loss_percent,
                bandwidth_mbps,
            } => {
                if let (Ok(a), Ok(b)) = (self.net.resolve(a), self.net.resolve(b)) {
                    let change = crate::net::LinkChange {
                        latency_us: *latency_us,
                        loss_percent: *loss_percent,
                        bandwidth_mbps: *bandwidth_mbps,
                    };
                    self.net.degrade(&a, &b, change);
                }
            }
            Fault::Heal => {
                self.net.heal();
                self.etcd_quorum_update();
                self.api_update();
                self.changed();
            }
            Fault::EtcdMemberLoss { node } => {
                if let Some(i) = node_of(self, node) {
                    self.etcd_lose(i);
                    self.api_update();
                }
            }
            Fault::DiskFull { node } | Fault::DiskFreed { node } => {
                let full = matches!(fault, Fault::DiskFull { .. });
                let Some(i) = node_of(self, node) else { return };
                let n = &mut self.cluster.nodes[i];
                n.disk_full = full;
                let name = n.name.clone();
                if full {
                    n.taints
                        .insert(TAINT_DISK_PRESSURE.into(), TaintEffect::NoSchedule);
                    self.emit(TraceEvent::NodeTainted {
                        node: name,
                        key: TAINT_DISK_PRESSURE.into(),
                    });
                } else if n.taints.remove(TAINT_DISK_PRESSURE).is_some() {
                    self.emit(TraceEvent::NodeUntainted {
                        node: name,
                        key: TAINT_DISK_PRESSURE.into(),
                    });
                }
                self.api_update();
                self.changed();
            }
            Fault::ClockSkew { node, skew_ms } => {
                // The node lifecycle controller judges leases by its own observation time
                // (upstream since the Lease API), so skew alone never makes a node NotReady.
                if let Some(i) = node_of(self, node) {
                    self.cluster.nodes[i].clock_skew_ms = *skew_ms;
                }
            }
            Fault::DeleteNodeObject { node } => {
                let Some(i) = node_of(self, node) else { return };
                let n = &mut self.cluster.nodes[i];
                if !n.exists {
                    return;
                }
                n.exists = false;
                n.ready = false;
                n.last_lease = None;
                n.unreachable_since = None;
                n.taints.remove(TAINT_UNREACHABLE);
                let name = n.name.clone();
                self.emit(TraceEvent::NodeDeleted { node: name });
                // pod GC removes the pods bound to a node that no longer exists
                let uids: Vec<u64> = self
                    .cluster
                    .pods
                    .values()
                    .filter(|p| p.node == Some(i))
                    .map(|p| p.uid)
                    .collect();
                for uid in uids {
                    self.remove_pod(uid);
                }
                self.changed();
            }
        }
    }

    // ---------- event dispatch ----------

    pub(crate) fn handle(&mut self, event: Event) {
        match event {
            Event::BootDone { node, epoch } => self.boot_done(node, epoch),
            Event::LeaseRenew { node, epoch } => self.lease_renew(node, epoch),
            Event::ServerStarted { node, restart } => self.server_started(node, restart),
            Event::NodeMonitor => self.node_monitor(),
            Event::EtcdTick => self.etcd_tick(),
            Event::EtcdDeliver { to, msg } => self.etcd_deliver(to, *msg),
            Event::Reconcile => self.reconcile(),
            Event::PodStarted { uid, incarnation } => self.pod_started(uid, incarnation),
            Event::PodReady { uid, incarnation } => self.pod_ready(uid, incarnation),
            Event::PodGone { uid } => self.remove_pod(uid),
            Event::Fault(f) => self.apply_fault(f),
            Event::Wake { .. } | Event::Message { .. } => {}
        }
    }

    // ---------- controllers and scheduler ----------

    fn reconcile(&mut self) {
        self.reconcile_pending = false;
        if self.cluster.retry_at.is_some_and(|t| t <= self.now) {
            self.cluster.retry_at = None;
        }
        if self.passes_now.0 == self.now {
            self.passes_now.1 += 1;
            if self.passes_now.1 > MAX_PASSES_PER_INSTANT {
                self.violation_pending = Some((
                    "controller-livelock".into(),
                    format!("more than {MAX_PASSES_PER_INSTANT} controller passes at one instant"),
                ));
                return;
            }
        } else {
            self.passes_now = (self.now, 1);
        }
        if !self.cluster.api_up {
            return;
        }
        let keys: Vec<_> = self.cluster.workloads.keys().cloned().collect();
        for k in &keys {
            self.reconcile_workload(k);
        }
        self.schedule_pending();
        self.update_statuses();
    }

    fn pvc_name(&self, w: &WorkloadSpec, vol: &str, ordinal: Option<u32>) -> String {
        match ordinal {
            Some(i) => format!("{vol}-{}-{i}", w.name),
            None => vol.to_string(),
        }
    }

    fn create_pvc(
        &mut self,
        ns: &str,
        name: &str,
        size: Bytes,
        class: Option<&str>,
    ) -> Result<(), String> {
        let sc = match class {
            Some(c) => self.cluster.storage_classes.iter().find(|s| s.name == c),
            None => self.cluster.storage_classes.iter().find(|s| s.default),
        }
        .cloned()
        .ok_or_else(|| format!("no storage class {:?}", class.unwrap_or("(default)")))?;
        let mut pvc = Pvc {
            namespace: ns.into(),
            name: name.into(),
            class: sc.name.clone(),
            provisioner: sc.provisioner,
            size,
            node: None,
            replicas: Vec::new(),
        };
        if sc.provisioner == Provisioner::Longhorn {
            // Immediate binding: replicas on distinct nodes with a Longhorn disk (any node when
            // none has one), fewest replicas first.
            let want = sc.replicas.unwrap_or(LONGHORN_DEFAULT_REPLICAS) as usize;
            let mut cands: Vec<usize> = (0..self.cluster.nodes.len())
                .filter(|&i| self.cluster.nodes[i].longhorn)
                .collect();
            if cands.is_empty() {
                cands = (0..self.cluster.nodes.len()).collect();
            }
            let mut load: BTreeMap<usize, usize> = cands.iter().map(|&c| (c, 0)).collect();
            for v in self.cluster.pvcs.values() {
                for r in &v.replicas {
                    if let Some(l) = load.get_mut(r) {
                        *l += 1;
                    }
                }
            }
            cands.sort_by_key(|c| (load[c], *c));
            pvc.replicas = cands.into_iter().take(want.max(1)).collect();
            let at = pvc
                .replicas
                .iter()
                .map(|&r| self.cluster.nodes[r].name.clone())
                .collect::<Vec<_>>()
                .join(",");
            self.emit(TraceEvent::PvcBound {
                pvc: format!("{ns}/{name}"),
                at: format!("longhorn[{at}]"),
            });
        }
        self.cluster.pvcs.insert((ns.into(), name.into()), pvc);
        Ok(())
    }

    fn quota_admit(&self, ns: &str, cpu: Cpu, memory: Bytes) -> Result<(), String> {
        let Some(Some(q)) = self.cluster.namespaces.get(ns) else {
            return Ok(());
        };
        let live = self
            .cluster
            .pods
            .values()
            .filter(|p| p.namespace == ns && p.deleting.is_none());
        let (mut ucpu, mut umem, mut upods) = (0u64, 0u64, 0u32);
        for p in live {
            ucpu += p.cpu.0;
            umem += p.memory.0;
            upods += 1;
        }
        let mut over = Vec::new();
        if let Some(c) = q.cpu
            && ucpu + cpu.0 > c.0
        {
            over.push(format!(
                "requested: requests.cpu={cpu}, used: requests.cpu={}, limited: requests.cpu={c}",
                Cpu(ucpu)
            ));
        }
        if let Some(m) = q.memory
            && umem + memory.0 > m.0
        {
            over.push(format!(
                "requested: requests.memory={memory}, used: requests.memory={}, limited: requests.memory={m}",
                Bytes(umem)
            ));
        }
        if let Some(pods) = q.pods
            && upods + 1 > pods
        {
            over.push(format!(
                "requested: pods=1, used: pods={upods}, limited: pods={pods}"
            ));
        }
        if over.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "exceeded quota in namespace {ns}: {}",
                over.join("; ")
            ))
        }
    }

    fn create_pod(
        &mut self,
        w: &WorkloadSpec,
        name: String,
        ordinal: Option<u32>,
        pinned: Option<usize>,
    ) -> Result<(), String> {
        self.quota_admit(&w.namespace, w.cpu, w.memory)?;
        let mut pvcs = Vec::new();
        for v in &w.volumes {
            let pn = self.pvc_name(w, &v.name, ordinal);
            if !self
                .cluster
                .pvcs
                .contains_key(&(w.namespace.clone(), pn.clone()))
            {
                self.create_pvc(&w.namespace, &pn, v.size, v.storage_class.as_deref())?;
            }
            pvcs.push(pn);
        }
        let priority = w
            .priority_class
            .as_ref()
            .and_then(|p| self.cluster.priority_classes.get(p))
            .copied()
            .unwrap_or(0);
        let uid = self.cluster.next_uid;
        self.cluster.next_uid += 1;
        let pod = Pod {
            uid,
            namespace: w.namespace.clone(),
            name,
            owner: Some((w.kind, w.name.clone())),
            ordinal,
            cpu: w.cpu,
            memory: w.memory,
            priority,
            tolerations: w.tolerations.clone(),
            pinned,
            node_selector: w.node_selector.clone(),
            pvcs,
            node: None,
            phase: PodPhase::Pending,
            ready: false,
            healthy: false,
            deleting: None,
            unschedulable: None,
            nominated: None,
            restarts: 0,
            incarnation: 0,
            live: false,
        };
        self.emit(TraceEvent::PodCreated { pod: pod.key() });
        self.cluster
            .owned
            .entry((w.kind, w.namespace.clone(), w.name.clone()))
            .or_default()
            .insert(uid);
        self.cluster.pods_generation += 1;
        self.cluster.pods.insert(uid, pod);
        self.changed();
        Ok(())
    }

    fn random_suffix(&mut self) -> String {
        // kube's rand.String alphabet (no vowels), 5 characters
        const ALPHA: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
        (0..5)
            .map(|_| ALPHA[self.random_range(0, ALPHA.len() as u64) as usize] as char)
            .collect()
    }

    fn reconcile_workload(&mut self, key: &(WorkloadKind, String, String)) {
        let Some(w) = self.cluster.workloads.get(key) else {
            return;
        };
        let spec = w.spec.clone();
        let owned: Vec<Owned> = self
            .cluster
            .owned
            .get(key)
            .into_iter()
            .flatten()
            .filter_map(|u| self.cluster.pods.get(u))
            .map(|p| Owned {
                uid: p.uid,
                ordinal: p.ordinal,
                pinned: p.pinned,
                node: p.node,
                ready: p.ready,
                deleting: p.deleting.is_some(),
            })
            .collect();
        let mut quota_error = None;
        match spec.kind {
            WorkloadKind::Deployment if !w.replica_set => {
                // the Deployment controller creates the ReplicaSet; its pods come next pass
                if let Some(w) = self.cluster.workloads.get_mut(key) {
                    w.replica_set = true;
                }
                self.changed();
                return;
            }
            WorkloadKind::Deployment => {
                let mut active: Vec<&Owned> = owned.iter().filter(|p| !p.deleting).collect();
                let want = spec.replicas as usize;
                if active.len() < want {
                    for _ in active.len()..want {
                        let name = format!("{}-{}", spec.name, self.random_suffix());
                        if let Err(e) = self.create_pod(&spec, name, None, None) {
                            quota_error = Some(e);
                            break;
                        }
                    }
                } else if active.len() > want {
                    // scale down: unscheduled first, then not ready, then newest
                    active.sort_by_key(|p| (p.node.is_some(), p.ready, std::cmp::Reverse(p.uid)));
                    let victims: Vec<u64> = active
                        .iter()
                        .take(active.len() - want)
                        .map(|p| p.uid)
                        .collect();
                    for v in victims {
                        self.delete_pod(v, "scaled down");
                    }
                }
            }
            WorkloadKind::StatefulSet => {
                // A pod object per ordinal; one that is Terminating (on a dead node: until the
                // node comes back or its Node object is deleted) still holds its ordinal, so it
                // is not replaced before it is gone.
                let by_ordinal: BTreeMap<u32, &Owned> = owned
                    .iter()
                    .filter_map(|p| p.ordinal.map(|o| (o, p)))
                    .collect();
                let parallel = spec.pod_management_policy == PodManagementPolicy::Parallel;
                for i in 0..spec.replicas {
                    match by_ordinal.get(&i) {
                        Some(p) if p.ready && !p.deleting => continue,
                        // OrderedReady: ordinal i is created once 0..i are Running and Ready;
                        // Parallel: every missing ordinal is created in the same pass.
                        Some(_) if parallel => continue,
                        Some(_) => break,
                        None => {
                            let name = format!("{}-{i}", spec.name);
                            if let Err(e) = self.create_pod(&spec, name, Some(i), None) {
                                quota_error = Some(e);
                                break;
                            }
                            if !parallel {
                                break;
                            }
                        }
                    }
                }
                let extra: Vec<u64> = owned
                    .iter()
                    .filter(|p| !p.deleting && p.ordinal.is_some_and(|o| o >= spec.replicas))
                    .map(|p| p.uid)
                    .collect();
                for v in extra {
                    self.delete_pod(v, "scaled down");
                }
            }
            WorkloadKind::DaemonSet => {
                for i in 0..self.cluster.nodes.len() {
                    let eligible = self.daemon_eligible(&spec, i);
                    let name = format!("{}-{}", spec.name, self.cluster.nodes[i].name);
                    let existing = owned.iter().find(|p| p.pinned == Some(i) && !p.deleting);
                    match (eligible, existing) {
                        (true, None) => {
                            if let Err(e) = self.create_pod(&spec, name, None, Some(i)) {
                                quota_error = Some(e);
                                break;
                            }
                        }
                        (false, Some(p)) if !self.cluster.nodes[i].exists => {
                            let uid = p.uid;
                            self.delete_pod(uid, "node gone");
                        }
                        _ => {}
                    }
                }
            }
        }
        let w = self
            .cluster
            .workloads
            .get_mut(key)
            .expect("key from iteration");
        if w.quota_error != quota_error {
            w.quota_error = quota_error.clone();
            if let Some(message) = quota_error {
                self.emit(TraceEvent::QuotaExceeded {
                    workload: format!("{}/{}", spec.namespace, spec.name),
                    message,
                });
            }
        }
    }

    fn daemon_eligible(&self, spec: &WorkloadSpec, i: usize) -> bool {
        let n = &self.cluster.nodes[i];
        n.exists
            && spec
                .node_selector
                .iter()
                .all(|(k, v)| n.labels.get(k) == Some(v))
            && n.taints.iter().all(|(k, e)| {
                *e == TaintEffect::NoSchedule && k == TAINT_DISK_PRESSURE
                    || k == TAINT_UNREACHABLE
                    || spec.tolerations.iter().any(|t| t == "*" || t == k)
            })
    }

    fn requested_on(&self, node: usize) -> (u64, u64) {
        let (mut c, mut m) = (0, 0);
        for p in self.cluster.pods.values() {
            if p.node == Some(node) {
                c += p.cpu.0;
                m += p.memory.0;
            }
        }
        (c, m)
    }

    fn fit(&self, p: &Pod, i: usize, used: (u64, u64)) -> Fit {
        let n = &self.cluster.nodes[i];
        let mut reasons = Vec::new();
        if let Some(pin) = p.pinned
            && pin != i
        {
            return Fit::Reasons(vec![
                "node(s) didn't satisfy plugin(s) [NodeAffinity]".into(),
            ]);
        }
        if !p
            .node_selector
            .iter()
            .all(|(k, v)| n.labels.get(k) == Some(v))
        {
            return Fit::Reasons(vec![
                "node(s) didn't match Pod's node affinity/selector".into(),
            ]);
        }
        for key in n.taints.keys() {
            if !tolerates(p, key) {
                reasons.push(format!("node(s) had untolerated taint {{{key}: }}"));
            }
        }
        for c in &p.pvcs {
            if let Some(v) = self.cluster.pvcs.get(&(p.namespace.clone(), c.clone())) {
                match (v.provisioner, v.node) {
                    (Provisioner::LocalPath, Some(b)) if b != i => {
                        reasons.push("node(s) had volume node affinity conflict".into())
                    }
                    (Provisioner::LocalPath, None) if n.disk_full => {
                        reasons.push("node(s) did not have enough free storage".into())
                    }
                    _ => {}
                }
            }
        }
        if used.0 + p.cpu.0 > n.cpu.0 {
            reasons.push("Insufficient cpu".into());
        }
        if used.1 + p.memory.0 > n.memory.0 {
            reasons.push("Insufficient memory".into());
        }
        if reasons.is_empty() {
            Fit::Ok
        } else {
            Fit::Reasons(reasons)
        }
    }

    fn schedule_pending(&mut self) {
        let mut pending: Vec<(i32, u64)> = self
            .cluster
            .pods
            .values()
            .filter(|p| p.node.is_none() && p.deleting.is_none())
            .map(|p| (-p.priority, p.uid))
            .collect();
        pending.sort();
        if pending.is_empty() {
            return;
        }
        let mut any_unschedulable = false;
        // Requests bound to each node, kept up to date as this pass binds.
        let mut used = vec![(0u64, 0u64); self.cluster.nodes.len()];
        for p in self.cluster.pods.values() {
            if let Some(n) = p.node {
                used[n].0 += p.cpu.0;
                used[n].1 += p.memory.0;
            }
        }
        let candidates: Vec<usize> = (0..self.cluster.nodes.len())
            .filter(|&i| self.cluster.nodes[i].exists)
            .collect();
        for (_, uid) in pending {
            let p = self.cluster.pods[&uid].clone();
            let mut best: Option<(u64, usize)> = None;
            let mut tally: BTreeMap<String, usize> = BTreeMap::new();
            let mut resource_only: Vec<usize> = Vec::new();
            for &i in &candidates {
                let used = used[i];
                match self.fit(&p, i, used) {
                    Fit::Ok => {
                        let n = &self.cluster.nodes[i];
                        // LeastAllocated: score = free fraction after placement (per mille)
                        let fc = (n.cpu.0 - used.0 - p.cpu.0) * 1000 / n.cpu.0.max(1);
                        let fm = (n.memory.0 - used.1 - p.memory.0) * 1000 / n.memory.0.max(1);
                        let score = fc + fm;
                        let prefer_nominated = p.nominated == Some(i);
                        let score = if prefer_nominated { u64::MAX } else { score };
                        if best.is_none_or(|(s, _)| score > s) {
                            best = Some((score, i));
                        }
                    }
                    Fit::Reasons(rs) => {
                        if rs.iter().all(|r| r.starts_with("Insufficient")) {
                            resource_only.push(i);
                        }
                        for r in rs {
                            *tally.entry(r).or_default() += 1;
                        }
                    }
                }
            }
            if let Some((_, i)) = best {
                used[i].0 += p.cpu.0;
                used[i].1 += p.memory.0;
                self.bind(uid, i);
                continue;
            }
            if self.try_preempt(&p, &resource_only) {
                continue;
            }
            any_unschedulable = true;
            let mut parts: Vec<String> =
                tally.into_iter().map(|(r, c)| format!("{c} {r}")).collect();
            parts.sort();
            let mut reason = format!(
                "0/{} nodes are available: {}.",
                candidates.len(),
                parts.join(", ")
            );
            let max_cpu = candidates
                .iter()
                .map(|&i| self.cluster.nodes[i].cpu.0)
                .max()
                .unwrap_or(0);
            let max_mem = candidates
                .iter()
                .map(|&i| self.cluster.nodes[i].memory.0)
                .max()
                .unwrap_or(0);
            if p.cpu.0 > max_cpu || p.memory.0 > max_mem {
                reason.push_str(&format!(
                    " The pod requests {} CPU / {} memory, more than any node can allocate ({} CPU / {} memory): it can never fit.",
                    p.cpu,
                    p.memory,
                    Cpu(max_cpu),
                    Bytes(max_mem)
                ));
            }
            if candidates.is_empty() {
                reason = "0/0 nodes are available: no node is registered.".into();
            }
            let pod = self.cluster.pods.get_mut(&uid).expect("pending uid");
            if pod.unschedulable.as_deref() != Some(reason.as_str()) {
                pod.unschedulable = Some(reason.clone());
                let key = pod.key();
                self.emit(TraceEvent::PodUnschedulable { pod: key, reason });
            }
        }
        if any_unschedulable && self.cluster.retry_at.is_none() {
            let at = self.now + SCHEDULER_MAX_BACKOFF_US;
            self.cluster.retry_at = Some(at);
            self.schedule(at, Event::Reconcile);
        }
    }

    fn try_preempt(&mut self, p: &Pod, nodes: &[usize]) -> bool {
        let mut best: Option<(usize, i32, usize, Vec<u64>)> = None; // (victims, max prio, node, uids)
        for &i in nodes {
            let mut victims: Vec<&Pod> = self
                .cluster
                .pods
                .values()
                .filter(|v| v.node == Some(i) && v.deleting.is_none() && v.priority < p.priority)
                .collect();
            victims.sort_by_key(|v| (v.priority, std::cmp::Reverse(v.uid)));
            let n = &self.cluster.nodes[i];
            let (mut uc, mut um) = self.requested_on(i);
            // pods already terminating still hold their requests until gone
            let mut chosen = Vec::new();
            let mut maxp = i32::MIN;
            for v in victims {
                if uc + p.cpu.0 <= n.cpu.0 && um + p.memory.0 <= n.memory.0 {
                    break;
                }
                uc -= v.cpu.0;
                um -= v.memory.0;
                maxp = maxp.max(v.priority);
                chosen.push(v.uid);
            }
            if uc + p.cpu.0 <= n.cpu.0 && um + p.memory.0 <= n.memory.0 && !chosen.is_empty() {
                let cand = (chosen.len(), maxp, i, chosen);
                if best.as_ref().is_none_or(|b| (cand.1, cand.0) < (b.1, b.0)) {
                    best = Some(cand);
                }
            }
        }
        let Some((_, _, node, victims)) = best else {
            return false;
        };
        let by = p.key();
        for v in victims {
            if let Some(vp) = self.cluster.pods.get(&v) {
                let pod = vp.key();
                self.emit(TraceEvent::PodPreempted {
                    pod,
                    by: by.clone(),
                });
            }
            self.delete_pod(v, &format!("preempted by {by}"));
        }
        if let Some(pp) = self.cluster.pods.get_mut(&p.uid) {
            pp.nominated = Some(node);
        }
        true
    }

    fn bind(&mut self, uid: u64, i: usize) {
        self.cluster.pods_generation += 1;
        let p = self.cluster.pods.get_mut(&uid).expect("pending uid");
        p.node = Some(i);
        p.unschedulable = None;
        p.nominated = None;
        let key = p.key();
        let ns = p.namespace.clone();
        let pvcs = p.pvcs.clone();
        let node = self.cluster.nodes[i].name.clone();
        self.emit(TraceEvent::PodScheduled {
            pod: key,
            node: node.clone(),
        });
        for c in pvcs {
            if let Some(v) = self.cluster.pvcs.get_mut(&(ns.clone(), c.clone()))
                && v.provisioner == Provisioner::LocalPath
                && v.node.is_none()
            {
                v.node = Some(i);
                self.emit(TraceEvent::PvcBound {
                    pvc: format!("{ns}/{c}"),
                    at: node.clone(),
                });
            }
        }
        if self.kubelet_live(i) {
            self.start_pod(uid, 0);
        }
        self.changed();
    }

    /// Ready pods of a workload.
    fn ready_owned(&self, key: &(WorkloadKind, String, String)) -> u32 {
        self.cluster
            .owned
            .get(key)
            .into_iter()
            .flatten()
            .filter(|u| self.cluster.pods.get(u).is_some_and(|p| p.ready))
            .count() as u32
    }

    fn update_statuses(&mut self) {
        let keys: Vec<_> = self.cluster.workloads.keys().cloned().collect();
        for k in keys {
            let w = &self.cluster.workloads[&k];
            let ready = self.ready_owned(&k);
            let desired = match k.0 {
                WorkloadKind::DaemonSet => (0..self.cluster.nodes.len())
                    .filter(|&i| self.daemon_eligible(&w.spec, i))
                    .count() as u32,
                _ => w.spec.replicas,
            };
            let is_ready = ready >= desired;
            let w = self
                .cluster
                .workloads
                .get_mut(&k)
                .expect("key from iteration");
            w.ready_replicas = ready;
            w.desired = desired;
            if w.was_ready != is_ready {
                w.was_ready = is_ready;
                let name = format!("{:?} {}/{}", k.0, k.1, k.2);
                self.emit(TraceEvent::WorkloadReady {
                    workload: name,
                    ready: is_ready,
                });
            }
        }
        let skeys: Vec<_> = self.cluster.services.keys().cloned().collect();
        for k in skeys {
            let s = &self.cluster.services[&k];
            let ready = [
                WorkloadKind::Deployment,
                WorkloadKind::StatefulSet,
                WorkloadKind::DaemonSet,
            ]
            .into_iter()
            .map(|kind| self.ready_owned(&(kind, s.namespace.clone(), s.workload.clone())))
            .sum();
            let s = self
                .cluster
                .services
                .get_mut(&k)
                .expect("key from iteration");
            if s.ready_endpoints != ready {
                s.ready_endpoints = ready;
                let name = format!("{}/{}", k.0, k.1);
                self.emit(TraceEvent::ServiceEndpoints {
                    service: name,
                    ready,
                });
            }
        }
    }
}

fn object_label(o: &Object) -> String {
    match o {
        Object::Namespace(n) => format!("Namespace {}", n.name),
        Object::ResourceQuota { namespace, .. } => format!("ResourceQuota {namespace}"),
        Object::PriorityClass(p) => format!("PriorityClass {}", p.name),
        Object::StorageClass(s) => format!("StorageClass {}", s.name),
        Object::Workload(w) => format!("{:?} {}/{}", w.kind, w.namespace, w.name),
        Object::Service {
            namespace, name, ..
        } => format!("Service {namespace}/{name}"),
        Object::Pvc {
            namespace, name, ..
        } => format!("PersistentVolumeClaim {namespace}/{name}"),
    }
}

/// Names of nodes in a set, for messages.
pub fn names(w: &World, set: &BTreeSet<usize>) -> Vec<String> {
    set.iter()
        .map(|&i| w.cluster.nodes[i].name.clone())
        .collect()
}
