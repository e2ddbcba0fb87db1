//! Topology files: the cluster a simulation starts from.
//!
//! A topology (`fixtures/topologies/<name>.yaml`) names the platform document it comes from and
//! gives, with that document's own numbers, the VMs (vCPU, memory, disks, IP, role), the
//! distribution and versions, the datastore (embedded etcd or K3s' sqlite), the network, storage
//! classes, priority classes, namespaces with quotas and the documented workloads. The JSON
//! Schema of the format is generated from these types ([`schema_json`], written to
//! `fixtures/topologies/topology.schema.json` by `cargo xtask sim --schema`).
//!
//! Quantities follow Kubernetes: CPU as `2`, `0.5` or `500m`; memory and disk as `8Gi`, `512Mi`
//! or, as the platform documents write them, `8GB` (read as GiB, the way libvirt and Proxmox
//! size VMs: doc 000 writes "8GB  # 8388608 KiB").
//!
//! Every error names the file, the line and the field.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::path::Path;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

/// CPU in millicores, written `2`, `0.5` or `500m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Serialize, Deserialize)]
#[serde(try_from = "QuantityRepr", into = "String")]
pub struct Cpu(pub u64);

/// Bytes, written `8Gi`, `512Mi`, `50GB` (GiB, see module docs) or a plain number of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Serialize, Deserialize)]
#[serde(try_from = "QuantityRepr", into = "String")]
pub struct Bytes(pub u64);

#[derive(Deserialize)]
#[serde(untagged)]
enum QuantityRepr {
    Int(u64),
    Float(f64),
    Str(String),
}

impl Cpu {
    /// Parse `2`, `0.5`, `500m`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if let Some(m) = s.strip_suffix('m') {
            return m
                .parse::<u64>()
                .map(Cpu)
                .map_err(|_| format!("invalid cpu quantity {s:?} (expected e.g. 2, 0.5, 500m)"));
        }
        let v: f64 = s
            .parse()
            .map_err(|_| format!("invalid cpu quantity {s:?} (expected e.g. 2, 0.5, 500m)"))?;
        if !(v.is_finite() && v >= 0.0) {
            return Err(format!(
                "invalid cpu quantity {s:?}: must be a non-negative number"
            ));
        }
        Ok(Cpu((v * 1000.0).round() as u64))
    }
    /// Cores as a float (for display).
    pub fn cores(self) -> f64 {
        self.0 as f64 / 1000.0
    }
}

impl Bytes {
    /// One GiB.
    pub const GI: u64 = 1 << 30;
    /// Parse `8Gi`, `512Mi`, `1Ti`, `8GB` (GiB), `100M` (MiB) or plain bytes.
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let err = || format!("invalid size {s:?} (expected e.g. 8Gi, 512Mi, 50GB, 1Ti)");
        let split = s
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let v: f64 = num.parse().map_err(|_| err())?;
        let mult: u64 = match unit.trim() {
            "" => 1,
            "Ki" | "K" | "KB" | "k" => 1 << 10,
            "Mi" | "M" | "MB" => 1 << 20,
            "Gi" | "G" | "GB" => 1 << 30,
            "Ti" | "T" | "TB" => 1 << 40,
            _ => return Err(err()),
        };
        if !(v.is_finite() && v >= 0.0) {
            return Err(err());
        }
        Ok(Bytes((v * mult as f64).round() as u64))
    }
    /// GiB as a float (for display).
    pub fn gib(self) -> f64 {
        self.0 as f64 / Self::GI as f64
    }
}

impl TryFrom<QuantityRepr> for Cpu {
    type Error = String;
    fn try_from(r: QuantityRepr) -> Result<Self, String> {
        match r {
            QuantityRepr::Int(i) => Ok(Cpu(i.saturating_mul(1000))),
            QuantityRepr::Float(f) => Cpu::parse(&f.to_string()),
            QuantityRepr::Str(s) => Cpu::parse(&s),
        }
    }
}
impl TryFrom<QuantityRepr> for Bytes {
    type Error = String;
    fn try_from(r: QuantityRepr) -> Result<Self, String> {
        match r {
            QuantityRepr::Int(i) => Ok(Bytes(i)),
            QuantityRepr::Float(f) => Bytes::parse(&f.to_string()),
            QuantityRepr::Str(s) => Bytes::parse(&s),
        }
    }
}
impl From<Cpu> for String {
    fn from(c: Cpu) -> String {
        if c.0.is_multiple_of(1000) {
            format!("{}", c.0 / 1000)
        } else {
            format!("{}m", c.0)
        }
    }
}
impl From<Bytes> for String {
    fn from(b: Bytes) -> String {
        if b.0.is_multiple_of(Bytes::GI) {
            format!("{}Gi", b.0 / Bytes::GI)
        } else if b.0.is_multiple_of(1 << 20) {
            format!("{}Mi", b.0 >> 20)
        } else {
            b.0.to_string()
        }
    }
}
impl std::fmt::Display for Cpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&String::from(*self))
    }
}
impl std::fmt::Display for Bytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&String::from(*self))
    }
}

impl JsonSchema for Cpu {
    fn schema_name() -> Cow<'static, str> {
        "Cpu".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "CPU: cores (2, 0.5) or millicores (500m)",
            "oneOf": [{"type": "number", "minimum": 0}, {"type": "string", "pattern": "^[0-9]+(\\.[0-9]+)?m?$"}]
        })
    }
}
impl JsonSchema for Bytes {
    fn schema_name() -> Cow<'static, str> {
        "Bytes".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "size: 8Gi, 512Mi, 50GB (read as GiB) or bytes",
            "oneOf": [{"type": "integer", "minimum": 0}, {"type": "string", "pattern": "^[0-9]+(\\.[0-9]+)?(Ki|Mi|Gi|Ti|K|M|G|T|KB|MB|GB|TB|k)?$"}]
        })
    }
}

/// The Kubernetes distribution and how a node boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Distribution {
    /// Talos Linux: immutable OS, embedded etcd on control-plane nodes.
    Talos,
    /// K3s: one binary; single server nodes use sqlite (kine), not etcd.
    K3s,
    /// Upstream Kubernetes (kubeadm-like) on a general-purpose OS, when a document names none.
    Kubeadm,
}

/// Where the cluster state lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Datastore {
    /// etcd members on every control-plane node, simulated with a real Raft.
    Etcd,
    /// K3s' embedded sqlite on the single server: available while that node and process are up.
    Sqlite,
}

/// A node's role.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Runs kube-apiserver, the controllers and (with `etcd` datastore) an etcd member.
    ControlPlane,
    /// Runs workloads.
    Worker,
}

/// A disk of a VM.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Disk {
    /// Disk name (`os`, `data`, `longhorn`).
    pub name: String,
    /// Size.
    pub size: Bytes,
    /// What the disk holds: `os`, `local-path` (node-bound volumes) or `longhorn` replicas.
    #[serde(default)]
    pub purpose: DiskPurpose,
}

/// What a disk is used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum DiskPurpose {
    /// The OS disk.
    #[default]
    Os,
    /// local-path-provisioner volumes.
    LocalPath,
    /// Longhorn replicas.
    Longhorn,
}

/// A taint on a node.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Taint {
    /// Key, e.g. `node-role.kubernetes.io/control-plane`.
    pub key: String,
    /// Effect.
    pub effect: TaintEffect,
}

/// A taint's effect.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
pub enum TaintEffect {
    /// New pods are not scheduled unless they tolerate it.
    NoSchedule,
    /// Running pods are evicted unless they tolerate it.
    NoExecute,
}

/// One VM / machine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeSpec {
    /// Node name (`talos-k8s-1`).
    pub name: String,
    /// IP address (informational, shown in summaries).
    #[serde(default)]
    pub ip: Option<String>,
    /// Roles; a control-plane node without `worker` gets the control-plane NoSchedule taint
    /// unless the cluster sets `allow_scheduling_on_control_plane`.
    pub roles: Vec<Role>,
    /// vCPUs.
    pub cpu: Cpu,
    /// Memory.
    pub memory: Bytes,
    /// Disks.
    #[serde(default)]
    pub disks: Vec<Disk>,
    /// Network group this node belongs to (for partitions and link properties); default `lan`.
    #[serde(default = "default_group")]
    pub group: String,
    /// Extra taints.
    #[serde(default)]
    pub taints: Vec<Taint>,
    /// Labels used by `node_selector`.
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
}

fn default_group() -> String {
    "lan".into()
}

/// Network between groups of nodes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NetworkSpec {
    /// CIDR of the node network (informational).
    #[serde(default)]
    pub cidr: Option<String>,
    /// One-way latency between two nodes, in microseconds.
    pub latency_us: u64,
    /// Link bandwidth in megabits per second.
    pub bandwidth_mbps: u64,
    /// Control-plane virtual IP (Talos VIP), if any.
    #[serde(default)]
    pub vip: Option<String>,
    /// Ports open in front of the nodes (firewall), informational.
    #[serde(default)]
    pub firewall_open_ports: Vec<String>,
}

/// A storage class.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StorageClassSpec {
    /// Name (`local-path`, `longhorn`).
    pub name: String,
    /// Provisioner kind.
    pub provisioner: Provisioner,
    /// Default class for PVCs that name none.
    #[serde(default)]
    pub default: bool,
    /// Longhorn replica count (default 3).
    #[serde(default)]
    pub replicas: Option<u32>,
}

/// How volumes are provisioned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Provisioner {
    /// rancher local-path-provisioner: a directory on one node; the volume is bound to that node
    /// (WaitForFirstConsumer).
    LocalPath,
    /// Longhorn: replicated block volumes, attachable on any node while a replica lives.
    Longhorn,
}

/// A PriorityClass.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PriorityClassSpec {
    /// Name.
    pub name: String,
    /// Value; higher preempts lower.
    pub value: i32,
}

/// A namespace and its ResourceQuota.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NamespaceSpec {
    /// Name.
    pub name: String,
    /// Quota on the sum of requests of the namespace's pods.
    #[serde(default)]
    pub quota: Option<QuotaSpec>,
}

/// A ResourceQuota's hard limits (`requests.cpu`, `requests.memory`, `pods`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct QuotaSpec {
    /// `requests.cpu`.
    #[serde(default)]
    pub cpu: Option<Cpu>,
    /// `requests.memory`.
    #[serde(default)]
    pub memory: Option<Bytes>,
    /// `pods`.
    #[serde(default)]
    pub pods: Option<u32>,
}

/// Workload kinds.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
pub enum WorkloadKind {
    /// Stateless replicas; lost pods are replaced elsewhere.
    Deployment,
    /// Stable identities; a pod on a dead node is not replaced until the node object is gone.
    StatefulSet,
    /// One pod per eligible node.
    DaemonSet,
}

/// A StatefulSet's `podManagementPolicy` (Kubernetes StatefulSet docs, "Pod Management
/// Policies"; upstream default `OrderedReady`).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
pub enum PodManagementPolicy {
    /// Ordinal i is created once 0..i are Running and Ready (the upstream default).
    #[default]
    OrderedReady,
    /// Every missing ordinal is created at once, without waiting for the others.
    Parallel,
}

impl PodManagementPolicy {
    /// The upstream default.
    pub fn is_default(&self) -> bool {
        *self == PodManagementPolicy::OrderedReady
    }
}

/// A volume claim of a workload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VolumeSpec {
    /// Claim name (for a StatefulSet: the volumeClaimTemplate name; one PVC per ordinal).
    pub name: String,
    /// Size.
    pub size: Bytes,
    /// Storage class; the default class when absent.
    #[serde(default)]
    pub storage_class: Option<String>,
}

/// A workload (Deployment, StatefulSet, DaemonSet) with its pod template's scheduling inputs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkloadSpec {
    /// Kind.
    pub kind: WorkloadKind,
    /// Name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// Replicas (ignored for DaemonSets).
    #[serde(default = "one")]
    pub replicas: u32,
    /// CPU request per pod.
    #[serde(default)]
    pub cpu: Cpu,
    /// Memory request per pod.
    #[serde(default)]
    pub memory: Bytes,
    /// PriorityClass name.
    #[serde(default)]
    pub priority_class: Option<String>,
    /// Volumes.
    #[serde(default)]
    pub volumes: Vec<VolumeSpec>,
    /// Taint keys tolerated (any effect); `*` tolerates everything.
    #[serde(default)]
    pub tolerations: Vec<String>,
    /// Node labels required.
    #[serde(default)]
    pub node_selector: std::collections::BTreeMap<String, String>,
    /// Whether a Service selects this workload's pods.
    #[serde(default)]
    pub service: bool,
    /// StatefulSet: how missing ordinals are created (ignored for other kinds).
    #[serde(default, skip_serializing_if = "PodManagementPolicy::is_default")]
    pub pod_management_policy: PodManagementPolicy,
    /// Where the numbers come from (document and section).
    #[serde(default)]
    pub source: Option<String>,
}

fn one() -> u32 {
    1
}

/// A whole topology file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Topology {
    /// Topology name (= file stem).
    pub name: String,
    /// One line: what this is.
    pub description: String,
    /// Platform document it comes from.
    pub source: String,
    /// Distribution.
    pub distribution: Distribution,
    /// Distribution version (Talos v1.11.3, K3s ...).
    #[serde(default)]
    pub distribution_version: Option<String>,
    /// Kubernetes version.
    #[serde(default)]
    pub kubernetes_version: Option<String>,
    /// Hypervisor or provider (kvm, proxmox, unraid, ovh-vps, ovh-public-cloud, bare-metal).
    pub infrastructure: String,
    /// Datastore.
    pub datastore: Datastore,
    /// Whether pods may be scheduled on control-plane nodes (Talos
    /// `allowSchedulingOnControlPlanes`).
    #[serde(default)]
    pub allow_scheduling_on_control_plane: bool,
    /// GitOps tool named by the document (argocd, flux), informational for the GitOps models.
    #[serde(default)]
    pub gitops: Option<String>,
    /// Nodes.
    pub nodes: Vec<NodeSpec>,
    /// Network.
    pub network: NetworkSpec,
    /// Storage classes.
    #[serde(default)]
    pub storage_classes: Vec<StorageClassSpec>,
    /// Priority classes.
    #[serde(default)]
    pub priority_classes: Vec<PriorityClassSpec>,
    /// Namespaces (with quotas).
    #[serde(default)]
    pub namespaces: Vec<NamespaceSpec>,
    /// Documented workloads, created when the cluster is up.
    #[serde(default)]
    pub workloads: Vec<WorkloadSpec>,
}

/// A topology that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    /// The file could not be read.
    #[error("failed to read topology {file}: {source}")]
    Io {
        /// File.
        file: String,
        /// Cause.
        source: std::io::Error,
    },
    /// YAML or shape error.
    #[error("failed to parse topology {file} at {line}:{column}: {message}")]
    Parse {
        /// File.
        file: String,
        /// 1-based line (0 when unknown).
        line: u64,
        /// 1-based column (0 when unknown).
        column: u64,
        /// What was wrong, naming the field.
        message: String,
    },
    /// A semantic error (dangling reference, duplicate name, no node).
    #[error("invalid topology {file} at line {line}, field {field}: {message}")]
    Invalid {
        /// File.
        file: String,
        /// 1-based line where the offending value appears (0 when unknown).
        line: u64,
        /// Field path, e.g. `workloads[3].priority_class`.
        field: String,
        /// What was wrong.
        message: String,
    },
}

impl Topology {
    /// Parse a topology from YAML text; `file` is only used in errors.
    pub fn from_yaml(file: &str, text: &str) -> Result<Self, TopologyError> {
        let topo: Topology = serde_saphyr::from_str(text).map_err(|e| {
            let (line, column) = e
                .location()
                .map(|l| (l.line(), l.column()))
                .unwrap_or((0, 0));
            let full = e.to_string();
            // keep the first line: serde-saphyr appends a source snippet after it.
            let message = full.lines().next().unwrap_or("").to_string();
            TopologyError::Parse {
                file: file.to_string(),
                line,
                column,
                message,
            }
        })?;
        topo.validate(file, text)?;
        Ok(topo)
    }

    /// Read and parse a topology file.
    pub fn load(path: &Path) -> Result<Self, TopologyError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| TopologyError::Io {
            file: file.clone(),
            source,
        })?;
        Self::from_yaml(&file, &text)
    }

    fn validate(&self, file: &str, text: &str) -> Result<(), TopologyError> {
        let bad = |field: String, needle: &str, message: String| TopologyError::Invalid {
            file: file.to_string(),
            line: line_of(text, needle),
            field,
            message,
        };
        if self.nodes.is_empty() {
            return Err(bad(
                "nodes".into(),
                "nodes:",
                "a topology needs at least one node".into(),
            ));
        }
        let mut names = BTreeSet::new();
        for (i, n) in self.nodes.iter().enumerate() {
            if !names.insert(n.name.as_str()) {
                return Err(bad(
                    format!("nodes[{i}].name"),
                    &n.name,
                    format!("duplicate node name {:?}", n.name),
                ));
            }
            if n.roles.is_empty() {
                return Err(bad(
                    format!("nodes[{i}].roles"),
                    &n.name,
                    format!("node {:?} has no role", n.name),
                ));
            }
            if n.cpu.0 == 0 || n.memory.0 == 0 {
                return Err(bad(
                    format!("nodes[{i}].cpu"),
                    &n.name,
                    format!("node {:?} has no cpu or memory", n.name),
                ));
            }
        }
        if !self
            .nodes
            .iter()
            .any(|n| n.roles.contains(&Role::ControlPlane))
        {
            return Err(bad(
                "nodes".into(),
                "nodes:",
                "no node has the control-plane role".into(),
            ));
        }
        if self.datastore == Datastore::Sqlite
            && self
                .nodes
                .iter()
                .filter(|n| n.roles.contains(&Role::ControlPlane))
                .count()
                != 1
        {
            return Err(bad(
                "datastore".into(),
                "datastore:",
                "the sqlite datastore needs exactly one control-plane (server) node".into(),
            ));
        }
        let pcs: BTreeSet<&str> = self
            .priority_classes
            .iter()
            .map(|p| p.name.as_str())
            .collect();
        let scs: BTreeSet<&str> = self
            .storage_classes
            .iter()
            .map(|s| s.name.as_str())
            .collect();
        let nss: BTreeSet<&str> = self.namespaces.iter().map(|s| s.name.as_str()).collect();
        let mut wl = BTreeSet::new();
        for (i, w) in self.workloads.iter().enumerate() {
            if !wl.insert((w.namespace.as_str(), w.name.as_str())) {
                return Err(bad(
                    format!("workloads[{i}].name"),
                    &w.name,
                    format!("duplicate workload {}/{}", w.namespace, w.name),
                ));
            }
            if let Some(p) = &w.priority_class
                && !pcs.contains(p.as_str())
            {
                return Err(bad(
                    format!("workloads[{i}].priority_class"),
                    p,
                    format!("unknown priority class {p:?} (known: {})", join(&pcs)),
                ));
            }
            if !nss.is_empty() && !nss.contains(w.namespace.as_str()) {
                return Err(bad(
                    format!("workloads[{i}].namespace"),
                    &w.namespace,
                    format!(
                        "namespace {:?} is not declared under namespaces (declared: {})",
                        w.namespace,
                        join(&nss)
                    ),
                ));
            }
            for (j, v) in w.volumes.iter().enumerate() {
                let class = v.storage_class.as_deref();
                match class {
                    Some(c) if !scs.contains(c) => {
                        return Err(bad(
                            format!("workloads[{i}].volumes[{j}].storage_class"),
                            c,
                            format!("unknown storage class {c:?} (known: {})", join(&scs)),
                        ));
                    }
                    None if !self.storage_classes.iter().any(|s| s.default) => {
                        return Err(bad(
                            format!("workloads[{i}].volumes[{j}].storage_class"),
                            &v.name,
                            "no storage class given and none is marked default".into(),
                        ));
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }

    /// Names of the control-plane nodes, in file order.
    pub fn control_plane(&self) -> Vec<&str> {
        self.nodes
            .iter()
            .filter(|n| n.roles.contains(&Role::ControlPlane))
            .map(|n| n.name.as_str())
            .collect()
    }
}

fn join(s: &BTreeSet<&str>) -> String {
    if s.is_empty() {
        "none".into()
    } else {
        s.iter().copied().collect::<Vec<_>>().join(", ")
    }
}

/// 1-based line of the first occurrence of `needle` in `text` (0 if absent).
fn line_of(text: &str, needle: &str) -> u64 {
    text.lines()
        .position(|l| l.contains(needle))
        .map(|i| i as u64 + 1)
        .unwrap_or(0)
}

/// The JSON Schema of the topology format, pretty-printed.
pub fn schema_json() -> String {
    let schema = schemars::schema_for!(Topology);
    serde_json::to_string_pretty(&schema).unwrap_or_default() + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_parse_like_kubernetes() {
        assert_eq!(Cpu::parse("500m").unwrap(), Cpu(500));
        assert_eq!(Cpu::parse("2").unwrap(), Cpu(2000));
        assert_eq!(Cpu::parse("0.5").unwrap(), Cpu(500));
        assert_eq!(Bytes::parse("8Gi").unwrap(), Bytes(8 << 30));
        assert_eq!(Bytes::parse("8GB").unwrap(), Bytes(8 << 30));
        assert_eq!(Bytes::parse("512Mi").unwrap(), Bytes(512 << 20));
        assert!(Bytes::parse("8 parsecs").is_err());
        assert!(Cpu::parse("two").is_err());
    }
}
