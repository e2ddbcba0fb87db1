//! GitOps: the platforms' ArgoCD and Flux trees, checked offline and reconciled in simulation.
//!
//! # Offline validation
//! [`validate`]`(dir, topology)` is the entry point of `cargo xtask validate --gitops DIR`:
//! it finds the repositories under `dir` (a directory with a `bootstrap/` subdirectory is a
//! repository root: `fixtures/gitops/<platform>/`), loads the CRD schemas of the nearest
//! `crds/` directory (`fixtures/crds/`) plus the CRDs inside the trees, and returns a
//! [`Report`] whose [`Finding`]s each name the file, the object and the field:
//! - every object, rendered or not, strictly against the Kubernetes 1.34 OpenAPI schema from
//!   `k8s-openapi` (feature `v1_34`) or its CRD schema: an unknown or misspelled field is an
//!   error ([`schema`]); the report says when the topology runs another version;
//! - the tree ([`tree`]): every Application path / Kustomization path exists, no cycle, no
//!   duplicate, ApplicationSet generators match;
//! - ordering ([`validate`](mod@validate)): namespaces, CRDs and priority classes exist before
//!   use given sync waves (ArgoCD) or dependsOn (Flux); dependsOn and source references resolve;
//! - capacity: requests per namespace within its ResourceQuota; with a [`Capacity`], every pod
//!   fits the largest node and the tree fits the cluster. Helm charts are not kept: those
//!   releases count from their `gitops.fl-sim.dev/resource-estimate` annotation and the report
//!   lists them;
//! - `kubectl kustomize` renders each kustomization identically to the built-in renderer,
//!   where kubectl is installed (the report says when it is not).
//!
//! File reading and the kubectl call live in [`loader`]; everything else is sans-IO and takes a
//! [`repo::Repo`] snapshot.
//!
//! # Reconcile models
//! [`argo::ArgoCd`] (Applications, app-of-apps, waves, hooks, self-heal, prune, retry) and
//! [`flux::Flux`] (Kustomizations with dependsOn/wait/timeout, HelmReleases from estimates) are
//! simulator models started on a [`crate::Sim`] with `ArgoCd::start(sim, repo)` /
//! `Flux::start(sim, repo)`; `commit(at, repo)` feeds Git, and their status queries answer
//! what converged when, in which order, and which resource blocks a wave.

pub mod argo;
pub mod flux;
pub mod loader;
pub mod object;
pub mod repo;
pub mod schema;
pub mod tree;
pub mod validate;

pub use loader::{Kubectl, LoadError, validate, validate_with};

/// One problem found: the file, the object and the field it is about.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, thiserror::Error)]
#[error("{file}: {object}: {field}: {message}")]
pub struct Finding {
    /// File relative to the validated directory (`mlworkbench/namespaces/minio/minio.yaml`).
    pub file: String,
    /// `Kind namespace/name`.
    pub object: String,
    /// Dotted path of the field (`spec.template.spec.containers[0].resources.requests`).
    pub field: String,
    pub message: String,
}

impl Finding {
    pub fn new(
        file: &str,
        object: impl Into<String>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            file: file.to_string(),
            object: object.into(),
            field: field.into(),
            message: message.into(),
        }
    }
}

/// What the cluster offers, for capacity checks (built by the caller from its topology).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capacity {
    /// Topology name, for messages.
    pub name: String,
    /// Kubernetes version the topology runs (`v1.34.1`).
    pub kubernetes_version: String,
    pub nodes: Vec<NodeCapacity>,
    /// The topology's namespace quotas, checked like a ResourceQuota in the tree.
    pub quotas: Vec<NamespaceQuota>,
    /// The topology's file as shown in findings about it (`fixtures/topologies/x.yaml`).
    pub source: String,
}

/// A namespace quota of the topology.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespaceQuota {
    pub namespace: String,
    /// Where it is in the topology file (`namespaces[2].quota`).
    pub field: String,
    /// `requests.cpu` in millicores (None: not limited).
    pub cpu_millis: Option<u64>,
    /// `requests.memory` in bytes (None: not limited).
    pub memory_bytes: Option<u64>,
}

/// One node's allocatable resources.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeCapacity {
    pub name: String,
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    /// False for control-plane nodes that do not run workloads.
    pub schedulable: bool,
}

impl Capacity {
    /// What `topo` offers: each node's allocatable resources (the distribution's kubelet
    /// reservations taken off, as the simulated scheduler does), schedulable unless it is a
    /// control-plane node without the worker role on a cluster that keeps workloads off them,
    /// or carries a NoSchedule/NoExecute taint; and the namespace quotas.
    /// `source` is the topology's file as findings name it.
    pub fn of_topology(topo: &crate::Topology, source: &str) -> Self {
        use crate::topology::{Role, TaintEffect};
        let nodes =
            topo.nodes
                .iter()
                .map(|n| {
                    let cp = n.roles.contains(&Role::ControlPlane);
                    let (cpu, memory) =
                        crate::cluster::allocatable(topo.distribution, cp, n.cpu, n.memory);
                    let tainted = n.taints.iter().any(|t| {
                        matches!(t.effect, TaintEffect::NoSchedule | TaintEffect::NoExecute)
                    });
                    NodeCapacity {
                        name: n.name.clone(),
                        cpu_millis: cpu.0,
                        memory_bytes: memory.0,
                        schedulable: !tainted
                            && (!cp
                                || n.roles.contains(&Role::Worker)
                                || topo.allow_scheduling_on_control_plane),
                    }
                })
                .collect();
        let quotas = topo
            .namespaces
            .iter()
            .enumerate()
            .filter_map(|(i, ns)| {
                let q = ns.quota.as_ref()?;
                (q.cpu.is_some() || q.memory.is_some()).then(|| NamespaceQuota {
                    namespace: ns.name.clone(),
                    field: format!("namespaces[{i}].quota"),
                    cpu_millis: q.cpu.map(|c| c.0),
                    memory_bytes: q.memory.map(|m| m.0),
                })
            })
            .collect();
        Self {
            name: topo.name.clone(),
            kubernetes_version: topo.kubernetes_version.clone().unwrap_or_default(),
            nodes,
            quotas,
            source: source.to_string(),
        }
    }

    /// Total allocatable CPU (millicores) and memory (bytes) of schedulable nodes.
    pub fn allocatable(&self) -> (u64, u64) {
        self.nodes
            .iter()
            .filter(|n| n.schedulable)
            .fold((0, 0), |(c, m), n| (c + n.cpu_millis, m + n.memory_bytes))
    }
}

/// The result of a validation run.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Errors; empty when the manifests are valid.
    pub findings: Vec<Finding>,
    /// What was checked against what (schema version, kubectl use, estimated releases).
    pub notes: Vec<String>,
    /// Repository roots validated (relative to the directory).
    pub repos: Vec<String>,
    pub objects_checked: usize,
    pub units: usize,
}

impl Report {
    pub fn is_ok(&self) -> bool {
        self.findings.is_empty()
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for n in &self.notes {
            writeln!(f, "note: {n}")?;
        }
        for e in &self.findings {
            writeln!(f, "error: {e}")?;
        }
        write!(
            f,
            "gitops: {} repositories, {} applications/kustomizations, {} objects checked, {} errors",
            self.repos.len(),
            self.units,
            self.objects_checked,
            self.findings.len()
        )
    }
}
