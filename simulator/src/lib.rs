//! Deterministic discrete-event simulation of the platforms' clusters.
//!
//! One seed -> one ChaCha stream -> one event queue on a virtual clock (microseconds). The same
//! topology, seed and options always give the same trace and the same trace hash. No wall clock,
//! no ambient randomness, no hash-order iteration (enforced by `clippy.toml`).
//!
//! # Guide to the API
//!
//! **Build a world.** Parse a topology ([`Topology::load`] for
//! `fixtures/topologies/<name>.yaml`, or [`Topology::from_yaml`]) and give it a seed and
//! [`SimOptions`] (request/replica overrides per workload name, faults to schedule, whether the
//! topology's documented workloads are created):
//!
//! ```no_run
//! use simulator::{Sim, SimOptions, Topology, timings::MIN, fault::Fault};
//! let topo = Topology::load(std::path::Path::new("fixtures/topologies/mlworkbench-kvm.yaml")).unwrap();
//! let mut sim = Sim::new(topo, 42, SimOptions::default());
//! // run until every node is Ready (bounded by 30 virtual minutes and 10M events)
//! let stop = sim.run_until_pred(30 * MIN, 10_000_000, |w| w.nodes_ready());
//! sim.inject(Fault::KillNode { node: "talos-k8s-2".into() });         // now
//! sim.schedule_fault(sim.now() + 10 * MIN, Fault::RestoreNode { node: "talos-k8s-2".into() });
//! sim.run_until(sim.now() + 20 * MIN);
//! assert!(sim.world().etcd_status().quorum);
//! println!("{}\ntrace-hash: {}", sim.repro(), sim.trace_hash());
//! ```
//!
//! **Run.** [`Sim::run_until`] (a virtual time) or [`Sim::run_until_pred`] (a predicate on the
//! [`World`], with a virtual deadline and an event budget); both return a [`Stop`].
//!
//! **Faults** ([`fault::Fault`]), now with [`Sim::inject`] or later with [`Sim::schedule_fault`]:
//! kill/restore node, kill/restore process ([`fault::Process`]: kubelet, etcd, kube-apiserver or a
//! pod), partition and degrade links (latency, loss, bandwidth) between named groups (node names
//! or topology network groups), heal, etcd member loss, disk full/freed, clock skew, deleting the
//! Node object.
//!
//! **Query** the [`World`] ([`Sim::world`]): [`World::nodes`] / [`World::node`] (`ready`, `taints`,
//! `powered`, `exists`), [`World::pods`] / [`World::pod`] (phase, node, `ready`, `live()`,
//! `deleting`, `unschedulable` reason), [`World::pvcs`] (bound node or Longhorn replicas),
//! [`World::etcd_status`] (members, roles, leader, term, quorum), [`World::workload`] and
//! [`World::health`] (Deployment/StatefulSet/DaemonSet readiness), [`World::services`],
//! [`World::unschedulable`], [`World::quota_errors`], [`World::api_available`].
//!
//! **Trace.** [`Sim::trace`] gives typed [`trace::TraceEvent`]s with virtual timestamps;
//! [`Sim::trace_hash`] is a hex SHA-256 over all of them. [`Sim::repro`] is a one-line command
//! that rebuilds the run.
//!
//! **Invariants** run after every event ([`invariants`] and each model's [`Model::check`]); a
//! violation stops the run, is traced, and [`Sim::violation`] names the invariant, the time and
//! the event.
//!
//! **Extending** (FL rounds in `fl/`, GitOps controllers in `gitops/`): implement [`Model`] and
//! register it with [`Sim::add_model`]. A model schedules its own events with [`World::wake`]
//! (a `u64` tag, no allocation) or [`World::send_to_model`] (any payload), sees every core trace
//! event in [`Model::observe`], writes its own with [`World::trace_ext`], draws randomness only
//! from [`World::rng`], and adds invariants in [`Model::check`]. GitOps models change the cluster
//! through [`World::apply`] / [`World::delete`] ([`cluster::Object`]: Namespace, ResourceQuota,
//! PriorityClass, StorageClass, Deployment/StatefulSet/DaemonSet, Service, PVC) and read
//! [`World::health`] back; both fail with [`cluster::ApplyError::ApiUnavailable`] while the API
//! is down, as a real apply would.
//!
//! **Models** and their defaults: [`timings`] (every upstream default cites its source),
//! [`cluster`] (boot, leases, node lifecycle, scheduler over node *allocatable* — capacity less
//! the distribution's kubelet reservations, [`cluster::allocatable`] — workloads, storage,
//! services), [`etcd`] (real Raft from TiKV's `raft` crate; a member's hard state and log
//! survive a power-off and it restarts from them when its VM has booted again), [`net`] (links
//! and partitions), [`shrink`] (random fault schedules, shrunk to a minimal one that fails with
//! the same failure kind).
//!
//! **Limits** (not modelled): container limits and OOM, rolling-update surge, PodDisruptionBudgets,
//! node-controller zone disruption modes, etcd membership changes (a lost member stays lost),
//! Longhorn replica rebuilds, CNI, control-plane static pods' own requests, the time a restarted
//! kube-apiserver static pod or kubelet takes to serve again (instant here; a restarted K3s
//! server takes [`timings::K3S_SERVER_START_US`]), StatefulSet rolling updates (a changed
//! template applies to pods created afterwards; `podManagementPolicy` may change, which
//! upstream refuses).
//!
//! **FL** ([`fl`]): the coordinator and the clients are pods (a Deployment and a Parallel
//! StatefulSet) placed by the scheduler; a process runs while its pod is live
//! ([`cluster::Pod::live`], traced as [`trace::TraceEvent::PodLive`]).

pub mod cluster;
pub mod engine;
pub mod etcd;
pub mod fault;
pub mod fl;
pub mod gitops;
pub mod invariants;
pub mod net;
pub mod shrink;
pub mod timings;
pub mod topology;
pub mod trace;

use std::collections::BTreeMap;

pub use cluster::{ApplyError, Health, Object, ObjectKind, WorkloadOverride};
pub use engine::{Model, ModelId, Sim, Stop, Violation, World};
pub use fault::{Fault, Process, ScheduledFault};
pub use topology::{Topology, TopologyError};
pub use trace::{TraceEntry, TraceEvent};

/// Virtual time in microseconds since the start of the run.
pub type Time = u64;

/// Options of a run.
#[derive(Debug, Clone)]
pub struct SimOptions {
    /// Per-workload-name overrides of replicas and requests (scenarios use them to make the
    /// documented workloads fit).
    pub overrides: BTreeMap<String, WorkloadOverride>,
    /// Faults queued at their times when the world is built.
    pub faults: Vec<ScheduledFault>,
    /// Create the topology's documented workloads (default true; GitOps runs may set false and
    /// apply their own manifests).
    pub apply_topology_workloads: bool,
}

impl Default for SimOptions {
    fn default() -> Self {
        Self {
            overrides: BTreeMap::new(),
            faults: Vec::new(),
            apply_topology_workloads: true,
        }
    }
}

/// `1h02m03.004s` style rendering of a virtual time.
pub fn fmt_time(t: Time) -> String {
    let ms = t / 1_000;
    let (h, m, s, frac) = (
        ms / 3_600_000,
        (ms / 60_000) % 60,
        (ms / 1_000) % 60,
        ms % 1_000,
    );
    if h > 0 {
        format!("{h}h{m:02}m{s:02}.{frac:03}s")
    } else {
        format!("{m}m{s:02}.{frac:03}s")
    }
}
