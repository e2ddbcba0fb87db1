//! The trace: typed events with virtual timestamps, and its hash.

use sha2::{Digest, Sha256};

use crate::Time;

/// Most trace entries kept in memory; past it entries are still hashed but no longer stored
/// (a simulated week of a busy cluster stays far below it).
pub const MAX_TRACE_ENTRIES: usize = 2_000_000;

/// One thing that happened, as seen from outside the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TraceEvent {
    /// A VM was powered on.
    NodePowerOn { node: String },
    /// A VM was powered off (killed).
    NodePowerOff { node: String },
    /// A VM finished booting its OS and started its services.
    NodeBooted { node: String },
    /// The node controller marked the node Ready.
    NodeReady { node: String },
    /// The node controller marked the node NotReady (lease not renewed within the grace period).
    NodeNotReady { node: String },
    /// A taint was added.
    NodeTainted { node: String, key: String },
    /// A taint was removed.
    NodeUntainted { node: String, key: String },
    /// The Node object was deleted.
    NodeDeleted { node: String },
    /// A system process or pod container was killed.
    ProcessKilled { node: String, process: String },
    /// A system process was restarted.
    ProcessRestored { node: String, process: String },
    /// An etcd member became leader.
    EtcdLeader { member: String, term: u64 },
    /// The cluster gained or lost etcd quorum (a leader reachable by a majority).
    EtcdQuorum { available: bool },
    /// The Kubernetes API became available or unavailable.
    ApiAvailable { available: bool },
    /// A pod object was created.
    PodCreated { pod: String },
    /// A pod was bound to a node.
    PodScheduled { pod: String, node: String },
    /// A pod could not be scheduled (reason as kube-scheduler words it).
    PodUnschedulable { pod: String, reason: String },
    /// Lower-priority pods were preempted to make room.
    PodPreempted { pod: String, by: String },
    /// Containers started.
    PodRunning { pod: String },
    /// Readiness changed.
    PodReady { pod: String, ready: bool },
    /// The pod became live (Running, its containers up and passing readiness, Ready in the API,
    /// not terminating, on a powered node) or stopped being so: what an application in the pod
    /// (an FL client or coordinator) sees of its own life. `node` is where it is bound.
    PodLive {
        pod: String,
        node: String,
        live: bool,
    },
    /// Deletion requested (eviction, scale-down, preemption); `reason` says why.
    PodTerminating { pod: String, reason: String },
    /// The pod object is gone.
    PodDeleted { pod: String },
    /// A workload could not create a pod because of a ResourceQuota.
    QuotaExceeded { workload: String, message: String },
    /// A PVC was bound (`where` names the node or the Longhorn replicas).
    PvcBound { pvc: String, at: String },
    /// A workload became fully ready or stopped being so.
    WorkloadReady { workload: String, ready: bool },
    /// A Service's ready endpoint count changed.
    ServiceEndpoints { service: String, ready: u32 },
    /// A fault was applied.
    Fault { fault: String },
    /// An object was applied or deleted through the public API (GitOps models).
    Applied { object: String, action: String },
    /// An event from an extension model (FL rounds, GitOps).
    Ext {
        model: String,
        kind: String,
        detail: String,
    },
    /// An invariant was violated; the run stops.
    Violation { invariant: String, message: String },
}

/// A trace entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceEntry {
    /// Virtual time in microseconds.
    pub at: Time,
    /// What happened.
    pub event: TraceEvent,
}

impl std::fmt::Display for TraceEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {:?}", crate::fmt_time(self.at), self.event)
    }
}

/// The trace of a run: entries plus a running SHA-256 over their canonical text.
#[derive(Clone)]
pub struct Trace {
    entries: Vec<TraceEntry>,
    total: u64,
    hasher: Sha256,
    buf: String,
}

impl Default for Trace {
    fn default() -> Self {
        Self {
            entries: Vec::new(),
            total: 0,
            hasher: Sha256::new(),
            buf: String::new(),
        }
    }
}

impl Trace {
    /// Append an entry.
    pub fn push(&mut self, at: Time, event: TraceEvent) {
        use std::fmt::Write;
        self.buf.clear();
        let _ = writeln!(self.buf, "{at} {event:?}");
        self.hasher.update(self.buf.as_bytes());
        self.total += 1;
        if self.entries.len() < MAX_TRACE_ENTRIES {
            self.entries.push(TraceEntry { at, event });
        }
    }
    /// Stored entries (the first [`MAX_TRACE_ENTRIES`]).
    pub fn entries(&self) -> &[TraceEntry] {
        &self.entries
    }
    /// Number of entries ever pushed (hashed), stored or not.
    pub fn total(&self) -> u64 {
        self.total
    }
    /// Hex SHA-256 of every entry so far.
    pub fn hash_hex(&self) -> String {
        hex::encode(self.hasher.clone().finalize())
    }
}
