//! Faults: what a scenario can break, now or at a virtual time.

use serde::{Deserialize, Serialize};

use crate::Time;

/// A process on a node that a fault can kill and restore.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Process {
    /// The kubelet: the node stops renewing its lease.
    Kubelet,
    /// The etcd member on a control-plane node (its data survives).
    Etcd,
    /// kube-apiserver (on K3s: the whole `k3s server` process).
    Apiserver,
    /// One pod's containers (`namespace/name`); the kubelet restarts them after the crash
    /// back-off, so restoring is not needed.
    Pod(String),
}

impl std::fmt::Display for Process {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Process::Kubelet => f.write_str("kubelet"),
            Process::Etcd => f.write_str("etcd"),
            Process::Apiserver => f.write_str("kube-apiserver"),
            Process::Pod(p) => write!(f, "pod/{p}"),
        }
    }
}

/// A fault. Node and group arguments are node names or network group names of the topology.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fault {
    /// Power the VM off (hard).
    KillNode { node: String },
    /// Power the VM on again; it boots, and its processes start.
    RestoreNode { node: String },
    /// Kill one process on a node.
    KillProcess { node: String, process: Process },
    /// Restart a killed process.
    RestoreProcess { node: String, process: Process },
    /// Cut every link between the nodes of `a` and those of `b`.
    Partition { a: Vec<String>, b: Vec<String> },
    /// Change the links between `a` and `b`: extra one-way latency, loss and bandwidth cap.
    DegradeLinks {
        a: Vec<String>,
        b: Vec<String>,
        latency_us: u64,
        loss_percent: f64,
        bandwidth_mbps: Option<u64>,
    },
    /// Remove every partition and link change.
    Heal,
    /// The etcd member on a node loses its data directory: it stops and cannot rejoin.
    EtcdMemberLoss { node: String },
    /// The node's data disk fills up (DiskPressure; local-path volumes cannot be provisioned there;
    /// on a K3s server the sqlite datastore cannot write).
    DiskFull { node: String },
    /// Free the disk again.
    DiskFreed { node: String },
    /// Skew the node's wall clock by `skew_ms` (may be negative).
    ClockSkew { node: String, skew_ms: i64 },
    /// `kubectl delete node`: the Node object is removed and its pods garbage-collected.
    DeleteNodeObject { node: String },
}

impl Fault {
    /// Nodes named by the fault (for validation and shrinking).
    pub fn nodes(&self) -> Vec<&str> {
        match self {
            Fault::KillNode { node }
            | Fault::RestoreNode { node }
            | Fault::KillProcess { node, .. }
            | Fault::RestoreProcess { node, .. }
            | Fault::EtcdMemberLoss { node }
            | Fault::DiskFull { node }
            | Fault::DiskFreed { node }
            | Fault::ClockSkew { node, .. }
            | Fault::DeleteNodeObject { node } => vec![node.as_str()],
            Fault::Partition { a, b } | Fault::DegradeLinks { a, b, .. } => {
                a.iter().chain(b.iter()).map(String::as_str).collect()
            }
            Fault::Heal => vec![],
        }
    }
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fault::KillNode { node } => write!(f, "kill_node {node}"),
            Fault::RestoreNode { node } => write!(f, "restore_node {node}"),
            Fault::KillProcess { node, process } => write!(f, "kill_process {process} on {node}"),
            Fault::RestoreProcess { node, process } => {
                write!(f, "restore_process {process} on {node}")
            }
            Fault::Partition { a, b } => {
                write!(f, "partition [{}] | [{}]", a.join(","), b.join(","))
            }
            Fault::DegradeLinks {
                a,
                b,
                latency_us,
                loss_percent,
                bandwidth_mbps,
            } => write!(
                f,
                "degrade_links [{}] <-> [{}] +{latency_us}us loss {loss_percent}% bw {bandwidth_mbps:?}Mbps",
                a.join(","),
                b.join(",")
            ),
            Fault::Heal => write!(f, "heal"),
            Fault::EtcdMemberLoss { node } => write!(f, "etcd_member_loss {node}"),
            Fault::DiskFull { node } => write!(f, "disk_full {node}"),
            Fault::DiskFreed { node } => write!(f, "disk_freed {node}"),
            Fault::ClockSkew { node, skew_ms } => write!(f, "clock_skew {node} {skew_ms}ms"),
            Fault::DeleteNodeObject { node } => write!(f, "delete_node_object {node}"),
        }
    }
}

/// A fault at a virtual time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScheduledFault {
    /// When, in virtual microseconds since the start.
    pub at: Time,
    /// What.
    pub fault: Fault,
}

impl std::fmt::Display for ScheduledFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", crate::fmt_time(self.at), self.fault)
    }
}

/// Parse a JSON list of scheduled faults (the `--faults-json` form of a repro line).
pub fn parse_faults_json(text: &str) -> Result<Vec<ScheduledFault>, String> {
    serde_json::from_str(text)
        .map_err(|e| format!("invalid fault schedule json at column {}: {e}", e.column()))
}

/// Render a fault schedule as JSON (for repro lines).
pub fn faults_json(faults: &[ScheduledFault]) -> String {
    serde_json::to_string(faults).unwrap_or_default()
}
