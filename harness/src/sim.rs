//! The `sim` backend: the embedded deterministic simulator, on virtual time.
//!
//! Time here is virtual: the simulator counts microseconds, the harness milliseconds. The
//! simulator's `Sim` is not `Send`, so a session lives and dies on the worker thread that
//! started it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use fl_core::round::Phase as CoordPhase;
use simulator::cluster::PodPhase as SimPodPhase;
use simulator::fl::{ClientFault, FlConfig, FlModel, RoundStats};
use simulator::timings::{MS, SEC};
use simulator::topology::{Datastore, VolumeSpec, WorkloadKind as SimKind, WorkloadSpec};
use simulator::{ModelId, Sim, SimOptions, Stop, Topology, TraceEvent, World};

use crate::backend::{
    Advance, Backend, Capabilities, Check, Observations, Probe, Session, StopCheck,
    check_fl_accuracy, check_fl_round_latency, percentile,
};
use crate::load::Case;
use crate::outcome::{Marker, RoundReport, Timeline, Track};
use crate::scenario::{
    Action, Assertion, ByzantineAttack, ClientSet, ClusterState, Collect, Fault, FlWorkload,
    ModelCheck, NodeCondition, PodPhase, Process, RoundPhase, Step, Trigger, Wait, WorkloadKind,
};

#[path = "sim_gitops.rs"]
mod gitops;

/// Events the simulator may process per slice before the session checks the wall clock and
/// Ctrl-C (a slice takes well under 100 ms of CPU).
const EVENTS_PER_SLICE: u64 = 200_000;
/// Virtual time per slice, for the same reason when events are sparse.
const VIRTUAL_US_PER_SLICE: u64 = 10 * 60 * SEC;
/// Most slices one advance may take: 30 days of virtual time / 10 min, with headroom for
/// event-budget slices. Bounds every loop.
const MAX_SLICES: u64 = 50_000;

/// The embedded simulator.
pub struct SimBackend {
    topologies: PathBuf,
    root: PathBuf,
}

impl SimBackend {
    pub fn new(workspace_root: &Path) -> Self {
        Self {
            topologies: workspace_root.join("fixtures/topologies"),
            root: workspace_root.to_path_buf(),
        }
    }

    /// What the simulator can do today. FL rounds and the GitOps controllers are separate
    /// models of the simulator; the GitOps kinds come from `sim_gitops.rs`.
    pub fn caps() -> Capabilities {
        let set = |v: &[&'static str]| v.iter().copied().collect::<BTreeSet<_>>();
        let mut caps = Capabilities {
            faults: set(&[
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
                "fl_client_dropout",
                "fl_straggler",
                "fl_byzantine",
            ]),
            assertions: set(&[
                "etcd.quorum",
                "node.condition",
                "pod.phase",
                "workload.ready",
                "quota.exceeded",
                "invariants.hold",
                "fl.round_completed",
                "fl.global_model",
                "fl.accuracy",
                "fl.round_latency",
                "fl.clients_aggregated",
            ]),
            waits: set(&["duration", "cluster", "node", "pod", "workload", "fl.round"]),
            triggers: set(&["time", "after", "fl.round"]),
            workloads: set(&["k8s", "fl", "gitops"]),
            virtual_time: true,
            missing_reason: "",
        };
        caps.faults.extend(gitops::FAULTS);
        caps.assertions.extend(gitops::ASSERTIONS);
        caps.waits.extend(gitops::WAITS);
        caps
    }
}

impl Backend for SimBackend {
    fn name(&self) -> &'static str {
        "sim"
    }

    fn capabilities(&self) -> Capabilities {
        Self::caps()
    }

    fn start(&self, case: &Case) -> Result<Box<dyn Session>, String> {
        let path = self.topologies.join(format!("{}.yaml", case.topology));
        let mut topo = Topology::load(&path)
            .map_err(|e| format!("failed to load topology {}: {e}", path.display()))?;
        if case.scenario.workload.gitops.is_some() {
            // The GitOps tree deploys the platform's workloads, not the topology's list.
            topo.workloads.clear();
        }
        for w in &case.scenario.workload.k8s {
            let spec = to_workload_spec(w, &mut topo)?;
            topo.workloads.push(spec);
        }
        if let Some(fl) = case
            .fl
            .as_ref()
            .filter(|f| f.system == crate::scenario::FlSystem::Fl)
        {
            // The FL job adopts the topology's documented coordinator and worker workloads:
            // the scenario's requests, and the job's size, replace theirs before the cluster
            // boots, so the pods created at boot already carry them (and `fl.start` on a
            // running cluster finds every client up, as the platform deploys the job).
            let cfg = fl_config(fl)?;
            let pods = cfg.pods.clone();
            // A topology that documents no FL workloads gets the job's own, deployed with the
            // platform like the documented ones.
            let (coord, clients) = pods.new_workloads(cfg.clients);
            for spec in [coord, clients] {
                if !topo
                    .workloads
                    .iter()
                    .any(|w| w.kind == spec.kind && w.name == spec.name)
                {
                    if !topo.namespaces.iter().any(|n| n.name == spec.namespace) {
                        topo.namespaces.push(simulator::topology::NamespaceSpec {
                            name: spec.namespace.clone(),
                            quota: None,
                        });
                    }
                    topo.workloads.push(spec);
                }
            }
            for w in &mut topo.workloads {
                let (cpu, memory) = match w.kind {
                    SimKind::Deployment if w.name == pods.coordinator => {
                        (pods.coordinator_cpu, pods.coordinator_memory)
                    }
                    SimKind::StatefulSet if w.name == pods.clients => {
                        w.replicas = u32::try_from(cfg.clients).unwrap_or(u32::MAX);
                        w.pod_management_policy =
                            simulator::topology::PodManagementPolicy::Parallel;
                        (pods.client_cpu, pods.client_memory)
                    }
                    _ => continue,
                };
                w.cpu = cpu.unwrap_or(w.cpu);
                w.memory = memory.unwrap_or(w.memory);
            }
        }
        let mut sim = Sim::new(topo, case.seed, SimOptions::default());
        let gitops = match &case.scenario.workload.gitops {
            Some(g) => Some(gitops::start(&self.root, &mut sim, g)?),
            None => None,
        };
        Ok(Box::new(SimSession {
            sim,
            fl: case.fl.clone(),
            fl_id: None,
            fl_started_ms: 0,
            seed: case.seed,
            last_step_end_us: 0,
            markers: Vec::new(),
            gitops,
            elections: Vec::new(),
        }))
    }
}

/// Hostname label pinned workloads select on (set on every node of the case's topology copy).
const HOSTNAME_LABEL: &str = "kubernetes.io/hostname";

fn to_workload_spec(
    w: &crate::scenario::K8sWorkload,
    topo: &mut Topology,
) -> Result<WorkloadSpec, String> {
    let kind = match w.kind {
        WorkloadKind::Deployment => SimKind::Deployment,
        WorkloadKind::StatefulSet => SimKind::StatefulSet,
    };
    let mut node_selector = BTreeMap::new();
    if let Some(node) = &w.node {
        let Some(n) = topo.nodes.iter_mut().find(|n| &n.name == node) else {
            let names: Vec<&str> = topo.nodes.iter().map(|n| n.name.as_str()).collect();
            return Err(format!(
                "workload {}/{} pins node `{node}`, which topology {} does not have (nodes: {})",
                w.namespace,
                w.name,
                topo.name,
                names.join(", ")
            ));
        };
        n.labels.insert(HOSTNAME_LABEL.to_string(), n.name.clone());
        node_selector.insert(HOSTNAME_LABEL.to_string(), node.clone());
    }
    let volumes = match &w.storage_class {
        Some(class) => vec![VolumeSpec {
            name: "data".to_string(),
            size: simulator::topology::Bytes(1 << 30),
            storage_class: Some(class.clone()),
        }],
        None => Vec::new(),
    };
    if !topo.namespaces.iter().any(|n| n.name == w.namespace) && w.namespace != "default" {
        topo.namespaces.push(simulator::topology::NamespaceSpec {
            name: w.namespace.clone(),
            quota: None,
        });
    }
    Ok(WorkloadSpec {
        kind,
        name: w.name.clone(),
        namespace: w.namespace.clone(),
        replicas: w.replicas,
        cpu: simulator::topology::Cpu(w.cpu_millis.unwrap_or(100)),
        memory: simulator::topology::Bytes(w.memory_mib.unwrap_or(128) << 20),
        priority_class: w.priority_class.clone(),
        volumes,
        tolerations: Vec::new(),
        node_selector,
        service: true,
        pod_management_policy: Default::default(),
        source: Some("scenario workload.k8s".to_string()),
    })
}

struct SimSession {
    sim: Sim,
    /// The case's FL workload, started by `fl.start`.
    fl: Option<FlWorkload>,
    fl_id: Option<ModelId>,
    /// Virtual ms when `fl.start` ran.
    fl_started_ms: u64,
    seed: u64,
    /// Virtual µs when the previous step ended (for `at: {after: ...}`).
    last_step_end_us: u64,
    markers: Vec<Marker>,
    /// The case's GitOps controller (`workload.gitops`).
    gitops: Option<gitops::Gitops>,
    /// Leader kills being timed, in order (the first one gives the election metrics).
    elections: Vec<ElectionWatch>,
}

/// How long after a leader kill an election watch keeps looking (an election takes one to two
/// randomized election timeouts).
const ELECTION_WATCH_US: u64 = 60 * SEC;

/// A leader kill, timed as on the `local` backend: `detected` is the first event after which a
/// running member's raft term is above the dead leader's (a follower started an election),
/// `elected` the first after which one new leader is known to every running member.
#[derive(Debug, Clone)]
struct ElectionWatch {
    killed: String,
    t0_us: u64,
    term0: u64,
    detected_us: Option<u64>,
    elected_us: Option<u64>,
    /// The next etcd fault came before the election.
    interrupted: bool,
}

impl ElectionWatch {
    fn pending(&self) -> bool {
        self.elected_us.is_none() && !self.interrupted
    }

    fn observe(&mut self, w: &World) {
        if !self.pending() || w.now().saturating_sub(self.t0_us) > ELECTION_WATCH_US {
            return;
        }
        let st = w.etcd_status();
        if self.detected_us.is_none() && st.term > self.term0 {
            self.detected_us = Some(w.now());
        }
        // Members are in raft-id order, ids from 1.
        let Some(l) = st
            .members
            .iter()
            .position(|m| m.running && m.role.as_deref() == Some("Leader") && m.term > self.term0)
        else {
            return;
        };
        let id = l as u64 + 1;
        if st.members[l].name != self.killed
            && st
                .members
                .iter()
                .filter(|m| m.running)
                .all(|m| m.leader_id == id)
        {
            self.elected_us = Some(w.now());
        }
    }
}

fn us_to_ms(us: u64) -> u64 {
    us / MS
}

fn ms_to_us(ms: u64) -> u64 {
    ms.saturating_mul(MS)
}

impl SimSession {
    fn world(&self) -> &World {
        self.sim.world()
    }

    fn node_names(&self) -> Vec<String> {
        self.world()
            .nodes()
            .iter()
            .map(|n| n.name.clone())
            .collect()
    }

    fn known_node(&self, name: &str) -> Result<(), String> {
        if self.world().node(name).is_some() {
            return Ok(());
        }
        let names = self.node_names();
        let hint = crate::load::did_you_mean(name, &names)
            .map(|b| format!(", did you mean `{b}`?"))
            .unwrap_or_default();
        Err(format!(
            "unknown node `{name}`{hint} (topology {} has: {})",
            self.world().topology().name,
            names.join(", ")
        ))
    }

    fn known_group_members(&self, names: &[String]) -> Result<(), String> {
        let groups: BTreeSet<&str> = self
            .world()
            .nodes()
            .iter()
            .map(|n| n.group.as_str())
            .collect();
        for n in names {
            if !groups.contains(n.as_str()) {
                self.known_node(n)?;
            }
        }
        Ok(())
    }

    fn node_state(w: &World, name: &str) -> String {
        match w.node(name) {
            None => "absent".to_string(),
            // nobody marked it NotReady (no API or not yet past the grace period)
            Some(n) if !n.powered && n.ready => {
                "Ready in the API's stored status, but its VM is powered off".to_string()
            }
            Some(n) if !n.powered => "powered off (NotReady)".to_string(),
            Some(n) if !n.exists => "deleted".to_string(),
            Some(n) if n.ready => "Ready".to_string(),
            Some(n) if !n.kubelet => "NotReady (kubelet stopped)".to_string(),
            Some(_) => "NotReady".to_string(),
        }
    }

    fn node_holds(w: &World, name: &str, c: NodeCondition) -> bool {
        match (w.node(name), c) {
            (Some(n), NodeCondition::Ready) => n.ready,
            (Some(n), NodeCondition::NotReady) => !n.ready,
            // Kubernetes shows Ready=Unknown when the kubelet stopped posting status.
            (Some(n), NodeCondition::Unknown) => !n.ready && (!n.powered || !n.kubelet),
            (None, _) => false,
        }
    }

    fn pod_state(w: &World, key: &str) -> (Option<PodPhase>, Option<String>, String) {
        let (ns, name) = split_key(key);
        match w.pod(ns, name) {
            None => (None, None, format!("pod {key} does not exist")),
            Some(p) => {
                let phase = match p.phase {
                    SimPodPhase::Pending => PodPhase::Pending,
                    SimPodPhase::Running => PodPhase::Running,
                };
                // A terminating pod keeps its last phase in the API, but kubectl shows it as
                // Terminating: it is not the Running pod a scenario waits for.
                if let Some((_, why)) = &p.deleting {
                    let node = w.pod_node(p).map(str::to_string);
                    let on = node.as_ref().map_or(String::new(), |n| format!(" on {n}"));
                    return (
                        None,
                        node,
                        format!("pod {key} is Terminating{on} ({why}; last phase {phase:?})"),
                    );
                }
                let node = w.pod_node(p).map(str::to_string);
                let mut d = format!("pod {key} is {phase:?}");
                if let Some(n) = &node {
                    d.push_str(&format!(" on {n}"));
                }
                if let Some(r) = &p.unschedulable {
                    d.push_str(&format!(" (unschedulable: {r})"));
                }
                (Some(phase), node, d)
            }
        }
    }

    fn workload_of<'w>(w: &'w World, key: &str) -> Option<&'w simulator::cluster::Workload> {
        let (ns, name) = split_key(key);
        [
            SimKind::Deployment,
            SimKind::StatefulSet,
            SimKind::DaemonSet,
        ]
        .into_iter()
        .find_map(|k| w.workload(k, ns, name))
    }

    fn wait_holds(w: &World, wait: &Wait) -> bool {
        if let Some(ClusterState::Ready) = wait.cluster {
            return w.cluster_ready();
        }
        if let Some(node) = &wait.node {
            // A wait polls the API, as `kubectl wait` does: while the API is down nothing is
            // observed, and the status it stored before going down is not a fresh answer.
            return w.api_available()
                && Self::node_holds(w, node, wait.condition.unwrap_or(NodeCondition::Ready));
        }
        if let Some(pod) = &wait.pod {
            return Self::pod_state(w, pod).0 == Some(wait.phase.unwrap_or(PodPhase::Running));
        }
        if let Some(wl) = &wait.workload {
            return Self::workload_of(w, wl)
                .is_some_and(|x| x.desired > 0 && x.ready_replicas >= x.desired);
        }
        false
    }

    fn wait_state(w: &World, wait: &Wait) -> String {
        if wait.cluster.is_some() {
            let not_ready: Vec<&str> = w
                .nodes()
                .iter()
                .filter(|n| !n.ready)
                .map(|n| n.name.as_str())
                .collect();
            let wl: Vec<String> = w
                .workloads()
                .filter(|x| x.ready_replicas < x.desired)
                .map(|x| {
                    format!(
                        "{}/{} {}/{}",
                        x.spec.namespace, x.spec.name, x.ready_replicas, x.desired
                    )
                })
                .take(5)
                .collect();
            return format!(
                "api {}, nodes not Ready: [{}], workloads not ready: [{}]",
                if w.api_available() { "up" } else { "down" },
                not_ready.join(", "),
                wl.join(", ")
            );
        }
        if let Some(node) = &wait.node {
            if !w.api_available() {
                return format!(
                    "the kubernetes api is unavailable, node {node} cannot be observed (last stored status: {})",
                    Self::node_state(w, node)
                );
            }
            return format!("node {node} is {}", Self::node_state(w, node));
        }
        if let Some(pod) = &wait.pod {
            return Self::pod_state(w, pod).2;
        }
        if let Some(wl) = &wait.workload {
            return match Self::workload_of(w, wl) {
                None => format!("workload {wl} does not exist"),
                Some(x) => format!(
                    "workload {wl} has {}/{} replicas ready",
                    x.ready_replicas, x.desired
                ),
            };
        }
        String::new()
    }

    fn check_now(&self, a: &Assertion) -> Check {
        let w = self.world();
        match a {
            Assertion::EtcdQuorum(want) => {
                let st = w.etcd_status();
                let running = st.members.iter().filter(|m| m.running && !m.lost).count();
                let d = format!(
                    "etcd quorum {} (leader {}, {running}/{} members running, term {})",
                    if st.quorum { "held" } else { "lost" },
                    st.leader.as_deref().unwrap_or("none"),
                    st.members.len(),
                    st.term
                );
                if st.quorum == *want {
                    Check::Pass(d)
                } else {
                    Check::Fail(d)
                }
            }
            Assertion::NodeCondition {
                node, condition, ..
            } => {
                if let Err(e) = self.known_node(node) {
                    return Check::Fail(e);
                }
                let d = format!("node {node} is {}", Self::node_state(w, node));
                if Self::node_holds(w, node, *condition) {
                    Check::Pass(d)
                } else {
                    Check::Fail(d)
                }
            }
            Assertion::PodPhase {
                pod, phase, node, ..
            } => {
                let (p, on, d) = Self::pod_state(w, pod);
                let ok = p == Some(*phase) && node.as_ref().is_none_or(|n| on.as_ref() == Some(n));
                if ok { Check::Pass(d) } else { Check::Fail(d) }
            }
            Assertion::WorkloadReady {
                workload,
                at_least,
                at_most,
            } => match Self::workload_of(w, workload) {
                None => Check::Fail(format!("workload {workload} does not exist")),
                Some(x) => {
                    let r = x.ready_replicas;
                    let d = format!("workload {workload} has {r}/{} replicas ready", x.desired);
                    let ok = at_least.is_none_or(|m| r >= m) && at_most.is_none_or(|m| r <= m);
                    if ok { Check::Pass(d) } else { Check::Fail(d) }
                }
            },
            Assertion::QuotaExceeded {
                namespace,
                at_least,
            } => {
                let prefix = format!("{namespace}/");
                let refused: Vec<(String, String)> = w
                    .quota_errors()
                    .into_iter()
                    .filter(|(k, _)| k.starts_with(&prefix))
                    .collect();
                let n = refused.len() as u32;
                let d = if refused.is_empty() {
                    format!("no workload of namespace {namespace} was refused by its quota")
                } else {
                    let list: Vec<String> =
                        refused.iter().map(|(k, m)| format!("{k}: {m}")).collect();
                    format!("{n} workload(s) refused by the quota: {}", list.join("; "))
                };
                if n >= *at_least {
                    Check::Pass(d)
                } else {
                    Check::Fail(d)
                }
            }
            Assertion::InvariantsHold(want) => match self.sim.violation() {
                None if *want => Check::Pass("no invariant violated".into()),
                None => Check::Fail("no invariant violated".into()),
                Some(v) if !*want => Check::Pass(v.to_string()),
                Some(v) => Check::Fail(v.to_string()),
            },
            Assertion::FlRoundCompleted { .. }
            | Assertion::FlGlobalModel(_)
            | Assertion::FlAccuracy { .. }
            | Assertion::FlRoundLatency { .. }
            | Assertion::FlClientsAggregated { .. } => self.check_fl(a),
            Assertion::AppStatus { .. }
            | Assertion::AppBlocked { .. }
            | Assertion::ArgocdSyncOrder(_)
            | Assertion::FluxStatus { .. }
            | Assertion::FluxReadyOrder(_) => self.check_gitops(a),
        }
    }

    /// Where the FL job stands, for a wait that timed out: rounds, phase and its pods (which
    /// are Pending and why).
    fn fl_state(&self) -> String {
        let Some(fl) = self.fl_model() else {
            return "the FL job was never started".into();
        };
        let phase = match fl.coordinator() {
            Some(c) => format!("round {} phase {:?}", c.round(), c.phase()),
            None => "no coordinator running".into(),
        };
        format!(
            "{} rounds completed, {phase}; {}",
            fl.rounds().len(),
            fl.pods_line(self.world())
        )
    }

    fn fl_model(&self) -> Option<&FlModel> {
        self.sim.model::<FlModel>(self.fl_id?)
    }

    fn check_fl(&self, a: &Assertion) -> Check {
        let Some(fl) = self.fl_model() else {
            return Check::Fail("the FL job was never started (`fl.start`)".into());
        };
        let rounds = fl.rounds();
        let verdict = Check::verdict;
        match a {
            Assertion::FlRoundCompleted { round, within } => {
                match rounds.iter().find(|r| r.round == u64::from(*round)) {
                    None => Check::Fail(format!(
                        "round {round} has not completed ({} of {} done)",
                        rounds.len(),
                        fl.config().round.num_rounds
                    )),
                    Some(r) => {
                        let since = us_to_ms(r.finished_us).saturating_sub(self.fl_started_ms);
                        let d = format!(
                            "round {round} completed {} after the job started, {} of {} updates accepted",
                            crate::duration::Duration::from_ms(since),
                            r.accepted,
                            r.selected
                        );
                        verdict(within.is_none_or(|w| since <= w.as_ms()), d)
                    }
                }
            }
            Assertion::FlGlobalModel(ModelCheck::MatchesOfflineRecompute) => {
                let strategy = fl.config().strategy.as_str();
                if !simulator::fl::oracle::MEAN_STRATEGIES.contains(&strategy) {
                    return Check::Skip(format!(
                        "strategy {strategy} has no offline recompute in the simulator's oracle (mean strategies only: {})",
                        simulator::fl::oracle::MEAN_STRATEGIES.join(", ")
                    ));
                }
                let aggregated = rounds.iter().filter(|r| r.aggregated).count();
                if aggregated == 0 {
                    return Check::Fail("no round aggregated a model to compare".into());
                }
                // The model checks every aggregated round against the f64 oracle as it happens
                // and records the first mismatch as an invariant violation.
                match self.sim.violation() {
                    Some(v) => Check::Fail(v.to_string()),
                    None => Check::Pass(format!(
                        "{aggregated} aggregated round(s) equal the f64 recompute of their accepted updates"
                    )),
                }
            }
            Assertion::FlAccuracy {
                round,
                at_least,
                at_most,
            } => {
                let r = match round {
                    Some(n) => rounds.iter().find(|r| r.round == u64::from(*n)),
                    None => rounds.iter().rev().find(|r| r.central_accuracy.is_some()),
                };
                check_fl_accuracy(
                    *round,
                    r.and_then(|r| r.central_accuracy.map(|a| (r.round, a))),
                    rounds.len(),
                    *at_least,
                    *at_most,
                )
            }
            Assertion::FlRoundLatency { p50, p95, p99 } => check_fl_round_latency(
                "",
                rounds.iter().map(|r| r.latency_ms).collect(),
                [("p50", 0.5, *p50), ("p95", 0.95, *p95), ("p99", 0.99, *p99)],
            ),
            Assertion::FlClientsAggregated {
                round,
                at_least,
                at_most,
            } => match rounds.iter().find(|r| r.round == u64::from(*round)) {
                None => Check::Fail(format!("round {round} has not completed")),
                Some(r) => verdict(
                    at_least.is_none_or(|m| r.accepted as u32 >= m)
                        && at_most.is_none_or(|m| r.accepted as u32 <= m),
                    format!(
                        "round {round} aggregated {} of {} selected updates ({} failures)",
                        r.accepted, r.selected, r.failures
                    ),
                ),
            },
            _ => Check::Skip(format!("`{}` is not an FL assertion", a.kind())),
        }
    }

    /// Whether the FL job reached `round` in `phase` (Done: the round completed).
    fn fl_reached(&self, round: u32, phase: Option<RoundPhase>) -> bool {
        let Some(fl) = self.fl_model() else {
            return false;
        };
        let round = u64::from(round);
        if fl.rounds().iter().any(|r| r.round >= round) {
            return true;
        }
        let Some(c) = fl.coordinator() else {
            return false;
        };
        let phase = phase.unwrap_or(RoundPhase::Fit);
        c.round() > round
            || (c.round() == round
                && match phase {
                    RoundPhase::Fit => {
                        !matches!(c.phase(), CoordPhase::Idle | CoordPhase::Waiting { .. })
                    }
                    RoundPhase::Aggregate => !matches!(
                        c.phase(),
                        CoordPhase::Idle | CoordPhase::Waiting { .. } | CoordPhase::Fit { .. }
                    ),
                    RoundPhase::Evaluate => matches!(
                        c.phase(),
                        CoordPhase::Evaluate { .. } | CoordPhase::CentralEval
                    ),
                    RoundPhase::Done => false,
                })
    }

    /// Run until the FL job reaches `round`/`phase` or `deadline_us`. The model traces each
    /// phase start and round end; the run stops on the event that traced it.
    fn run_fl(
        &mut self,
        round: u32,
        phase: Option<RoundPhase>,
        deadline_us: u64,
        stop: StopCheck<'_>,
    ) -> Result<bool, Advance> {
        if self.fl_id.is_none() {
            return Err(Advance::Halted(
                "waiting on an FL round needs a running FL job (`fl.start` first)".into(),
            ));
        }
        if self.fl_reached(round, phase) {
            return Ok(true);
        }
        let want = u64::from(round);
        let phase = phase.unwrap_or(RoundPhase::Fit);
        let mut seen = self.sim.trace().entries().len();
        let reached = self.run(deadline_us, stop, move |world| {
            let entries = world.trace().entries();
            let new = entries.get(seen..).unwrap_or_default();
            seen = entries.len();
            new.iter().any(|e| match &e.event {
                TraceEvent::Ext {
                    model,
                    kind,
                    detail,
                } if model == "fl" => fl_trace_reaches(kind, detail, want, phase),
                _ => false,
            })
        })?;
        // The stored trace is bounded: past its cap the model's state still answers.
        Ok(reached || self.fl_reached(round, Some(phase)))
    }

    fn to_sim_fault(&self, f: &Fault) -> Result<simulator::Fault, String> {
        use simulator::Fault as F;
        use simulator::Process as P;
        let node = |n: &String| -> Result<String, String> {
            self.known_node(n)?;
            Ok(n.clone())
        };
        Ok(match f {
            Fault::KillNode(n) => F::KillNode { node: node(n)? },
            Fault::RestoreNode(n) => F::RestoreNode { node: node(n)? },
            Fault::KillProcess { node: n, process }
            | Fault::RestoreProcess { node: n, process } => {
                let p = match process {
                    Process::Etcd => P::Etcd,
                    Process::Kubelet => P::Kubelet,
                    Process::KubeApiserver => P::Apiserver,
                    other => {
                        return Err(format!(
                            "the simulator models no `{}` process",
                            crate::scenario::to_flow(other)
                        ));
                    }
                };
                if matches!(f, Fault::KillProcess { .. }) {
                    F::KillProcess {
                        node: node(n)?,
                        process: p,
                    }
                } else {
                    F::RestoreProcess {
                        node: node(n)?,
                        process: p,
                    }
                }
            }
            Fault::Partition { a, b } => {
                self.known_group_members(a)?;
                self.known_group_members(b)?;
                F::Partition {
                    a: a.clone(),
                    b: b.clone(),
                }
            }
            Fault::HealPartition { a, b } => {
                if !a.is_empty() || !b.is_empty() {
                    return Err(
                        "the simulator heals all partitions at once: write `heal_partition: {}`"
                            .into(),
                    );
                }
                F::Heal
            }
            Fault::Link {
                a,
                b,
                latency,
                loss_pct,
                bandwidth_mbps,
            } => {
                self.known_group_members(a)?;
                self.known_group_members(b)?;
                F::DegradeLinks {
                    a: a.clone(),
                    b: b.clone(),
                    latency_us: latency.map(|d| ms_to_us(d.as_ms())).unwrap_or(0),
                    loss_percent: loss_pct.unwrap_or(0.0),
                    bandwidth_mbps: *bandwidth_mbps,
                }
            }
            Fault::EtcdMemberLoss(n) => F::EtcdMemberLoss { node: node(n)? },
            Fault::DiskFull { node: n } => F::DiskFull { node: node(n)? },
            Fault::ClockSkew {
                node: n,
                offset,
                behind,
            } => {
                let ms = i64::try_from(offset.as_ms())
                    .map_err(|_| "clock skew too large".to_string())?;
                F::ClockSkew {
                    node: node(n)?,
                    skew_ms: if *behind { -ms } else { ms },
                }
            }
            other => {
                return Err(format!(
                    "the `sim` backend cannot inject `{}` yet",
                    other.kind()
                ));
            }
        })
    }

    /// Before a fault: ends the pending election watches (what follows is not their election)
    /// and, when the fault kills the etcd leader, starts one. Says what the kill means.
    fn watch_election(&mut self, fault: &Fault) -> Option<String> {
        for w in &mut self.elections {
            if w.pending() {
                w.interrupted = true;
            }
        }
        let node = match fault {
            Fault::KillNode(n)
            | Fault::EtcdMemberLoss(n)
            | Fault::KillProcess {
                node: n,
                process: Process::Etcd,
            } => n,
            _ => return None,
        };
        let st = self.world().etcd_status();
        if !st.members.iter().any(|m| &m.name == node && m.running) {
            return None;
        }
        Some(match st.leader.as_deref() {
            None => format!(
                "no leader before the kill (term {}): no election to measure",
                st.term
            ),
            Some(l) if l != node => {
                format!(
                    "{node} was a follower (leader {l}, term {}): no election follows",
                    st.term
                )
            }
            Some(_) if !st.members.iter().any(|m| &m.name != node && m.running) => {
                format!("{node} was the only running member: no one is left to elect a leader")
            }
            Some(_) => {
                self.elections.push(ElectionWatch {
                    killed: node.clone(),
                    t0_us: self.sim.now(),
                    term0: st.term,
                    detected_us: None,
                    elected_us: None,
                    interrupted: false,
                });
                format!(
                    "{node} was the leader (term {}): timing the election",
                    st.term
                )
            }
        })
    }

    /// Run until `pred` or `deadline_us`, in slices, checking `stop` between slices. Pending
    /// election watches look at the world after every event.
    fn run(
        &mut self,
        deadline_us: u64,
        stop: StopCheck<'_>,
        mut pred: impl FnMut(&World) -> bool,
    ) -> Result<bool, Advance> {
        let mut watches = std::mem::take(&mut self.elections);
        let out = self.run_slices(deadline_us, stop, |w| {
            for x in watches.iter_mut() {
                x.observe(w);
            }
            pred(w)
        });
        self.elections = watches;
        out
    }

    fn run_slices(
        &mut self,
        deadline_us: u64,
        stop: StopCheck<'_>,
        mut pred: impl FnMut(&World) -> bool,
    ) -> Result<bool, Advance> {
        for _ in 0..MAX_SLICES {
            if stop() {
                return Err(Advance::Stopped);
            }
            let slice_end = deadline_us.min(self.sim.now().saturating_add(VIRTUAL_US_PER_SLICE));
            match self
                .sim
                .run_until_pred(slice_end, EVENTS_PER_SLICE, &mut pred)
            {
                Stop::Predicate => return Ok(true),
                Stop::Violation => {
                    let v = self
                        .sim
                        .violation()
                        .map(|v| v.to_string())
                        .unwrap_or_default();
                    return Err(Advance::Halted(format!("the simulator stopped: {v}")));
                }
                Stop::Deadline | Stop::Idle if slice_end >= deadline_us => return Ok(false),
                Stop::Deadline | Stop::Idle | Stop::EventBudget => {}
            }
        }
        Err(Advance::Halted(format!(
            "gave up after {MAX_SLICES} slices of simulation (virtual time {})",
            simulator::fmt_time(self.sim.now())
        )))
    }

    fn trigger_deadline_us(&self, t: &Trigger) -> Option<u64> {
        if let Some(time) = t.time {
            return Some(ms_to_us(time.as_ms()));
        }
        t.after.map(|after| {
            self.last_step_end_us
                .saturating_add(ms_to_us(after.as_ms()))
        })
    }
}

fn split_key(key: &str) -> (&str, &str) {
    key.split_once('/').unwrap_or(("default", key))
}

impl Session for SimSession {
    fn now_ms(&self) -> u64 {
        us_to_ms(self.sim.now())
    }

    fn unsupported(&self, step: &Step) -> Option<String> {
        let Some(Action::Fault(f)) = step.action() else {
            return None;
        };
        let sqlite = self.world().topology().datastore == Datastore::Sqlite;
        match f {
            Fault::FlByzantine {
                attack: ByzantineAttack::GaussianNoise,
                ..
            } => Some("the simulator's FL model sends sign-flipped or scaled updates only".into()),
            Fault::EtcdMemberLoss(_) if sqlite => Some(format!(
                "topology {} keeps its state in sqlite (K3s), it has no etcd member to lose",
                self.world().topology().name
            )),
            _ => None,
        }
    }

    fn unsupported_assertion(&self, a: &Assertion) -> Option<String> {
        let sqlite = self.world().topology().datastore == Datastore::Sqlite;
        match a {
            Assertion::EtcdQuorum(_) if sqlite => Some(format!(
                "topology {} keeps its state in sqlite (K3s): there is no etcd quorum to check",
                self.world().topology().name
            )),
            Assertion::PodPhase {
                phase: PodPhase::Succeeded | PodPhase::Failed | PodPhase::Unknown,
                ..
            } => Some("the simulator models the Pending and Running pod phases only".into()),
            _ => None,
        }
    }

    fn advance_until(
        &mut self,
        probe: Probe<'_>,
        deadline_ms: u64,
        stop: StopCheck<'_>,
    ) -> Advance {
        let deadline_us = ms_to_us(deadline_ms);
        if let Some(out) = self.advance_gitops(probe, deadline_us, stop) {
            return out;
        }
        let out = match probe {
            Probe::Wait(w) if w.duration.is_some() => {
                let until = self
                    .sim
                    .now()
                    .saturating_add(ms_to_us(w.duration.unwrap_or_default().as_ms()));
                self.run(until, stop, |_| false).map(|_| true)
            }
            Probe::Wait(w) if w.fl_round.is_some() => self.run_fl(
                w.fl_round.unwrap_or(0),
                Some(RoundPhase::Done),
                deadline_us,
                stop,
            ),
            Probe::Wait(w) => {
                let w2 = w.clone();
                self.run(deadline_us, stop, move |world| Self::wait_holds(world, &w2))
            }
            Probe::Trigger(t) => match self.trigger_deadline_us(t) {
                Some(at) if at <= self.sim.now() => Ok(true),
                Some(at) => self
                    .run(at.min(deadline_us), stop, |_| false)
                    .map(|_| self.sim.now() >= at),
                None => match t.fl_round {
                    Some(r) => self.run_fl(r, t.phase, deadline_us, stop),
                    None => Err(Advance::Halted("a trigger without a condition".into())),
                },
            },
            Probe::Assertion(a) => {
                let a2 = a.clone();
                // Evaluate the assertion against the world after every event.
                let mut holds = false;
                let r = self.run(deadline_us, stop, |world| {
                    holds = assertion_holds(world, &a2);
                    holds
                });
                r.map(|reached| reached || holds)
            }
        };
        self.last_step_end_us = self.sim.now();
        match out {
            Ok(true) => Advance::Reached,
            Ok(false) => Advance::DeadlinePassed(match probe {
                Probe::Wait(w) if w.fl_round.is_some() => self.fl_state(),
                Probe::Wait(w) => Self::wait_state(self.world(), w),
                Probe::Trigger(t) if t.fl_round.is_some() => self.fl_state(),
                Probe::Trigger(_) => {
                    format!("virtual time is {}", simulator::fmt_time(self.sim.now()))
                }
                Probe::Assertion(a) => match self.check_now(a) {
                    Check::Pass(d) | Check::Fail(d) | Check::Skip(d) => d,
                },
            }),
            Err(e) => e,
        }
    }

    fn inject(&mut self, fault: &Fault) -> Result<String, String> {
        if let Some((set, cf)) = fl_fault(fault) {
            let id = self.fl_id.ok_or_else(|| {
                format!(
                    "`{}` needs a running FL job (`fl.start` first)",
                    fault.kind()
                )
            })?;
            let now = self.sim.now();
            let fl = self
                .sim
                .model_mut::<FlModel>(id)
                .ok_or("the FL model is not registered")?;
            let ids = set.resolve(fl.num_clients() as u32);
            if ids.is_empty() {
                return Err(format!("`{}` selects no client", fault.kind()));
            }
            for k in &ids {
                fl.set_client_fault(*k as usize, cf, now)?;
            }
            let text = format!(
                "{} on client(s) {}",
                fault.kind(),
                ids.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
            );
            self.markers.push(Marker {
                at_ms: self.now_ms(),
                label: text.clone(),
            });
            self.last_step_end_us = self.sim.now();
            return Ok(format!("{text} at {}", simulator::fmt_time(self.sim.now())));
        }
        if let Some(r) = self.inject_gitops(fault) {
            return r;
        }
        let f = self.to_sim_fault(fault)?;
        let mut text = f.to_string();
        if let Some(what) = self.watch_election(fault) {
            text.push_str(&format!(" ({what})"));
        }
        self.sim.inject(f);
        self.markers.push(Marker {
            at_ms: self.now_ms(),
            label: text.clone(),
        });
        self.last_step_end_us = self.sim.now();
        Ok(format!("{text} at {}", simulator::fmt_time(self.sim.now())))
    }

    fn start_fl(&mut self) -> Result<String, String> {
        if self.fl_id.is_some() {
            return Err("the FL job is already running (a second `fl.start`)".into());
        }
        let w = self
            .fl
            .clone()
            .ok_or("`fl.start` needs a `workload.fl` in the scenario")?;
        let cfg = fl_config(&w)?;
        let model = FlModel::new(cfg, self.seed)?;
        self.fl_id = Some(self.sim.add_model(Box::new(model)));
        self.fl_started_ms = self.now_ms();
        self.last_step_end_us = self.sim.now();
        Ok(format!(
            "FL job started: {} clients, {} rounds, strategy {}, model {}, at {}",
            w.clients,
            w.rounds,
            w.strategy.as_str(),
            w.model,
            simulator::fmt_time(self.sim.now())
        ))
    }

    fn check(&mut self, a: &Assertion) -> Check {
        let c = self.check_now(a);
        self.last_step_end_us = self.sim.now();
        c
    }

    fn collect(&mut self, what: &[Collect], dir: &Path) -> Result<Vec<String>, String> {
        let mut files = Vec::new();
        for c in what {
            let (name, text) = match c {
                Collect::Trace | Collect::Events | Collect::Logs => {
                    let mut s = String::new();
                    for e in self.sim.trace().entries() {
                        s.push_str(&format!("{} {:?}\n", simulator::fmt_time(e.at), e.event));
                    }
                    let name = match c {
                        Collect::Trace => "trace.txt",
                        Collect::Events => "events.txt",
                        _ => "logs.txt",
                    };
                    (name, s)
                }
                Collect::Metrics => {
                    let m = self.observations().metrics;
                    (
                        "metrics.json",
                        serde_json::to_string_pretty(&m).unwrap_or_default(),
                    )
                }
            };
            std::fs::write(dir.join(name), text)
                .map_err(|e| format!("failed to write {}: {e}", dir.join(name).display()))?;
            files.push(name.to_string());
        }
        Ok(files)
    }

    fn observations(&self) -> Observations {
        let mut nodes: BTreeMap<String, Track> = BTreeMap::new();
        for n in self.world().nodes() {
            nodes.insert(
                n.name.clone(),
                Track {
                    name: n.name.clone(),
                    states: vec![(0, "off".to_string())],
                },
            );
        }
        let mut apps: BTreeMap<String, Track> = BTreeMap::new();
        let mut faults = Vec::new();
        let mut quorum_lost_ms = 0u64;
        let mut quorum_lost_since: Option<u64> = None;
        for e in self.sim.trace().entries() {
            let t = us_to_ms(e.at);
            match &e.event {
                TraceEvent::NodePowerOn { node } => track(&mut nodes, node, t, "booting"),
                TraceEvent::NodePowerOff { node } => track(&mut nodes, node, t, "off"),
                TraceEvent::NodeBooted { node } => track(&mut nodes, node, t, "NotReady"),
                TraceEvent::NodeReady { node } => track(&mut nodes, node, t, "Ready"),
                TraceEvent::NodeNotReady { node } => track(&mut nodes, node, t, "NotReady"),
                TraceEvent::NodeDeleted { node } => track(&mut nodes, node, t, "deleted"),
                TraceEvent::WorkloadReady { workload, ready } => track(
                    &mut apps,
                    workload,
                    t,
                    if *ready { "Ready" } else { "NotReady" },
                ),
                TraceEvent::Fault { fault } => faults.push(Marker {
                    at_ms: t,
                    label: fault.clone(),
                }),
                TraceEvent::EtcdQuorum { available } => {
                    if !available && quorum_lost_since.is_none() {
                        quorum_lost_since = Some(t);
                    } else if *available && let Some(s) = quorum_lost_since.take() {
                        quorum_lost_ms += t - s;
                    }
                }
                _ => {}
            }
        }
        if let Some(s) = quorum_lost_since {
            quorum_lost_ms += self.now_ms().saturating_sub(s);
        }
        let now = self.now_ms();
        // First time every node was Ready: the latest first-Ready across nodes.
        let first_all_ready = nodes
            .values()
            .map(|t| {
                t.states
                    .iter()
                    .find(|(_, s)| s == "Ready")
                    .map(|(at, _)| *at)
            })
            .collect::<Option<Vec<u64>>>()
            .and_then(|v| v.into_iter().max());
        let mut metrics = BTreeMap::new();
        if let Some(t) = first_all_ready {
            metrics.insert("nodes_ready_ms".to_string(), t as f64);
        }
        let not_ready_ms: u64 = nodes
            .values()
            .map(|tr| time_in_state(tr, now, |s| s != "Ready"))
            .sum();
        metrics.insert("node_not_ready_total_ms".to_string(), not_ready_ms as f64);
        metrics.insert("etcd_quorum_lost_ms".to_string(), quorum_lost_ms as f64);
        // The same names as the local backend's (`local/etcd.rs`), for the sim-vs-real table.
        if let Some(e) = self.elections.first() {
            let ms = |t: u64| t.saturating_sub(e.t0_us) as f64 / MS as f64;
            if let Some(t) = e.detected_us {
                metrics.insert("etcd_dead_member_detected_ms".to_string(), ms(t));
            }
            if let Some(t) = e.elected_us {
                metrics.insert("etcd_leader_election_ms".to_string(), ms(t));
            }
        }
        metrics.insert("virtual_ms".to_string(), now as f64);
        if let Some(fl) = self.fl_model() {
            let mut lat: Vec<u64> = fl.rounds().iter().map(|r| r.latency_ms).collect();
            lat.sort_unstable();
            if !lat.is_empty() {
                metrics.insert("fl_round_p50_ms".to_string(), percentile(&lat, 0.5) as f64);
                metrics.insert("fl_round_p95_ms".to_string(), percentile(&lat, 0.95) as f64);
            }
            if let Some(a) = fl.rounds().iter().rev().find_map(|r| r.central_accuracy) {
                metrics.insert("fl_final_accuracy".to_string(), a);
            }
        }
        metrics.insert(
            "sim_events".to_string(),
            self.world().events_processed() as f64,
        );
        self.observe_gitops(&mut apps, &mut metrics);
        let mut all_faults = self.markers.clone();
        if all_faults.is_empty() {
            all_faults = faults;
        }
        Observations {
            timeline: Timeline {
                nodes: nodes.into_values().collect(),
                apps: apps.into_values().collect(),
                faults: all_faults,
            },
            rounds: self
                .fl_model()
                .map(|fl| fl.rounds().iter().map(round_report).collect())
                .unwrap_or_default(),
            metrics,
            trace_hash: Some(self.sim.trace_hash()),
            violations: self
                .sim
                .violation()
                .map(|v| v.to_string())
                .into_iter()
                .collect(),
            backend_repro: Some(self.sim.repro()),
        }
    }
}

fn track(map: &mut BTreeMap<String, Track>, name: &str, t: u64, state: &str) {
    map.entry(name.to_string())
        .or_insert_with(|| Track {
            name: name.to_string(),
            states: Vec::new(),
        })
        .push(t, state);
}

fn time_in_state(tr: &Track, now: u64, pred: impl Fn(&str) -> bool) -> u64 {
    let mut total = 0;
    for (i, (t, s)) in tr.states.iter().enumerate() {
        let end = tr.states.get(i + 1).map(|(t2, _)| *t2).unwrap_or(now);
        if pred(s) {
            total += end.saturating_sub(*t);
        }
    }
    total
}

/// Whether an assertion holds in this world (used to wait for `within`).
fn assertion_holds(w: &World, a: &Assertion) -> bool {
    match a {
        Assertion::EtcdQuorum(want) => w.etcd_status().quorum == *want,
        Assertion::NodeCondition {
            node, condition, ..
        } => SimSession::node_holds(w, node, *condition),
        Assertion::PodPhase {
            pod, phase, node, ..
        } => {
            let (p, on, _) = SimSession::pod_state(w, pod);
            p == Some(*phase) && node.as_ref().is_none_or(|n| on.as_ref() == Some(n))
        }
        Assertion::WorkloadReady {
            workload,
            at_least,
            at_most,
        } => SimSession::workload_of(w, workload).is_some_and(|x| {
            at_least.is_none_or(|m| x.ready_replicas >= m)
                && at_most.is_none_or(|m| x.ready_replicas <= m)
        }),
        Assertion::QuotaExceeded {
            namespace,
            at_least,
        } => {
            let prefix = format!("{namespace}/");
            w.quota_errors()
                .iter()
                .filter(|(k, _)| k.starts_with(&prefix))
                .count() as u32
                >= *at_least
        }
        _ => false,
    }
}

/// The simulator's FL configuration for a scenario's `workload.fl`.
pub(crate) fn fl_config(w: &FlWorkload) -> Result<FlConfig, String> {
    use crate::model::ModelSpec;
    let mut cfg = FlConfig::default();
    let (inputs, hidden, classes) = match ModelSpec::parse(&w.model)? {
        ModelSpec::Softmax { inputs, classes } => (inputs, None, classes),
        ModelSpec::Mlp {
            inputs,
            hidden,
            classes,
        } => (inputs, Some(hidden as usize), classes),
    };
    let synth_classes = cfg.architecture().classes();
    if classes as usize != synth_classes {
        return Err(format!(
            "model `{}`: the simulator's synthetic data (FedProx Synthetic) has {synth_classes} classes, not {classes}",
            w.model
        ));
    }
    cfg.clients = w.clients as usize;
    cfg.num_features = inputs as usize;
    cfg.hidden = hidden;
    cfg.round.num_rounds = u64::from(w.rounds);
    let min_fit = w.min_fit_clients.unwrap_or(w.clients).max(1) as usize;
    cfg.round.min_fit_clients = min_fit;
    cfg.round.min_available_clients = min_fit;
    cfg.round.min_evaluate_clients = min_fit.min(2);
    // Flower semantics: fraction_fit 1.0 samples every available client, min_fit_clients is the
    // smallest sample and the number of clients the round waits to be available.
    let timeout_ms = w
        .round_timeout
        .map(|d| d.as_ms())
        .unwrap_or(DEFAULT_ROUND_TIMEOUT_MS);
    cfg.round.fit_timeout_ms = Some(timeout_ms);
    cfg.round.evaluate_timeout_ms = Some(timeout_ms);
    cfg.train.epochs = w.local_epochs;
    if let Some(a) = w.dirichlet_alpha {
        cfg.alpha = a;
        cfg.beta = a;
    }
    cfg.strategy = w.strategy.as_str().to_string();
    let cpu = |r: &Option<crate::scenario::PodRequests>| {
        r.and_then(|r| r.cpu_millis).map(simulator::topology::Cpu)
    };
    let mem = |r: &Option<crate::scenario::PodRequests>| {
        r.and_then(|r| r.memory_mib)
            .map(|m| simulator::topology::Bytes(m.saturating_mul(1 << 20)))
    };
    cfg.pods.client_cpu = cpu(&w.client_requests);
    cfg.pods.client_memory = mem(&w.client_requests);
    cfg.pods.coordinator_cpu = cpu(&w.coordinator_requests);
    cfg.pods.coordinator_memory = mem(&w.coordinator_requests);
    if let Some(f) = w.byzantine_tolerance {
        cfg.strategy_params
            .insert("num_malicious_clients".to_string(), f.to_string());
    }
    if let Some(mu) = w.proximal_mu {
        if w.strategy.as_str() != "fedprox" {
            return Err(format!(
                "workload.fl.proximal_mu {mu}: only the fedprox strategy has a proximal term (strategy is {})",
                w.strategy.as_str()
            ));
        }
        // FedProx's parameter; the clients train with it (fl_core::job::client_proximal_mu).
        cfg.strategy_params
            .insert("proximal_mu".to_string(), mu.to_string());
    }
    Ok(cfg)
}

/// The scenario's `round_timeout` default (the scenario format documents 10m).
const DEFAULT_ROUND_TIMEOUT_MS: u64 = 10 * 60 * 1_000;

/// An FL fault's client set and the per-client fault it sets.
fn fl_fault(f: &Fault) -> Option<(&ClientSet, ClientFault)> {
    match f {
        Fault::FlClientDropout(set) => Some((set, ClientFault::Dropout)),
        Fault::FlStraggler { clients, factor } => {
            Some((clients, ClientFault::Straggler { slowdown: *factor }))
        }
        Fault::FlByzantine {
            clients,
            attack,
            scale,
        } => {
            let s = *scale as f32;
            match attack {
                ByzantineAttack::SignFlip => Some((clients, ClientFault::Byzantine { scale: s })),
                ByzantineAttack::Scale => Some((clients, ClientFault::Byzantine { scale: -s })),
                ByzantineAttack::GaussianNoise => None,
            }
        }
        _ => None,
    }
}

fn round_report(r: &RoundStats) -> RoundReport {
    let finished_ms = us_to_ms(r.finished_us);
    RoundReport {
        round: r.round as u32,
        started_ms: finished_ms.saturating_sub(r.latency_ms),
        finished_ms,
        latency_ms: r.latency_ms,
        clients_aggregated: r.accepted as u32,
        failures: r.failures as u32,
        loss: r.central_loss,
        accuracy: r.central_accuracy,
        global_digest: r.aggregated.then(|| r.global_digest.clone()),
    }
}

/// Whether an FL trace entry (`phase` "round N fit|aggregate|evaluate ..." or `round-completed`
/// "round N ...") shows round `want` reaching `phase`.
fn fl_trace_reaches(kind: &str, detail: &str, want: u64, phase: RoundPhase) -> bool {
    let mut words = detail.split_whitespace();
    if words.next() != Some("round") {
        return false;
    }
    let Some(n) = words.next().and_then(|w| w.parse::<u64>().ok()) else {
        return false;
    };
    let rank = |p: RoundPhase| match p {
        RoundPhase::Fit => 0,
        RoundPhase::Aggregate => 1,
        RoundPhase::Evaluate => 2,
        RoundPhase::Done => 3,
    };
    let reached = match (kind, words.next()) {
        ("round-completed", _) => RoundPhase::Done,
        ("phase", Some("fit")) => RoundPhase::Fit,
        ("phase", Some("aggregate")) => RoundPhase::Aggregate,
        ("phase", Some("evaluate")) => RoundPhase::Evaluate,
        _ => return false,
    };
    n > want || (n == want && rank(reached) >= rank(phase))
}
