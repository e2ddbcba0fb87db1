//! FL on pods: the coordinator is a Deployment and the clients a Parallel StatefulSet, both
//! placed by the cluster's scheduler; a client takes part only while its pod is live.

use std::collections::BTreeSet;

use fl_core::job::client_id;
use fl_core::round::ClientId;
use simulator::fault::Process;
use simulator::fl::{FlConfig, FlModel};
use simulator::timings::{MIN, SEC};
use simulator::topology::{Cpu, WorkloadKind};
use simulator::{Fault, ModelId, Sim, SimOptions, Topology, TraceEvent, WorkloadOverride};

use crate::topo;

/// K3s: a server that runs no pods (control-plane taint) and three 2-CPU agents, so any agent
/// can die without taking the API with it.
const AGENTS: &str = "
name: fl-pods
description: a K3s server that schedules nothing and three agents
source: test
distribution: k3s
infrastructure: kvm
datastore: sqlite
nodes:
  - { name: server, roles: [control-plane], cpu: 2, memory: 4Gi }
  - { name: a1, roles: [worker], cpu: 2, memory: 8Gi }
  - { name: a2, roles: [worker], cpu: 2, memory: 8Gi }
  - { name: a3, roles: [worker], cpu: 2, memory: 8Gi }
network: { latency_us: 200, bandwidth_mbps: 1000 }
";

fn agents() -> Topology {
    Topology::from_yaml("fl-pods.yaml", AGENTS).expect("test topology parses")
}

fn job(clients: usize, rounds: u64, min_clients: usize) -> FlConfig {
    let mut cfg = FlConfig {
        clients,
        num_features: 10,
        ..FlConfig::default()
    };
    cfg.round.num_rounds = rounds;
    cfg.round.min_available_clients = min_clients;
    cfg.round.min_fit_clients = min_clients;
    cfg.round.min_evaluate_clients = min_clients.min(2);
    cfg.round.fit_timeout_ms = Some(60_000);
    cfg.round.evaluate_timeout_ms = Some(60_000);
    cfg
}

fn start(topo: Topology, options: SimOptions, seed: u64, cfg: FlConfig) -> (Sim, ModelId) {
    let mut sim = Sim::new(topo, seed, options);
    let id = sim.add_model(Box::new(FlModel::new(cfg, seed).expect("valid job")));
    (sim, id)
}

fn no_workloads() -> SimOptions {
    SimOptions {
        apply_topology_workloads: false,
        ..SimOptions::default()
    }
}

fn fl(sim: &Sim, id: ModelId) -> &FlModel {
    sim.model::<FlModel>(id).expect("the FL model")
}

/// Runs until `pred` holds on the FL model, failing with the repro after `limit_us`.
fn run_until(
    sim: &mut Sim,
    id: ModelId,
    limit_us: u64,
    what: &str,
    pred: impl Fn(&FlModel) -> bool,
) {
    while !pred(fl(sim, id)) {
        if let Some(v) = sim.violation() {
            panic!("{v}\n{}", sim.repro());
        }
        assert!(
            sim.now() < limit_us,
            "{what}: not reached by {}; {}; {}",
            simulator::fmt_time(sim.now()),
            fl(sim, id).pods_line(sim.world()),
            sim.repro()
        );
        sim.run_until(sim.now() + SEC);
    }
}

fn registered(sim: &Sim, id: ModelId) -> BTreeSet<ClientId> {
    fl(sim, id)
        .coordinator()
        .map(|c| c.state().clients.clone())
        .unwrap_or_default()
}

/// Node of pod `namespace/name`.
fn node_of(sim: &Sim, ns: &str, name: &str) -> Option<String> {
    let w = sim.world();
    w.pod(ns, name)
        .and_then(|p| w.pod_node(p))
        .map(str::to_string)
}

#[test]
fn clients_are_a_parallel_statefulset_scheduled_within_capacity() {
    let (mut sim, id) = start(agents(), no_workloads(), 3, job(12, 3, 12));
    run_until(&mut sim, id, 60 * MIN, "job finished", FlModel::is_finished);
    let w = sim.world();
    // Every ordinal exists once, bound to an agent, live; ordinal k is client k.
    for k in 0..12u32 {
        let p = w
            .pod("fl", &format!("fl-worker-{k}"))
            .unwrap_or_else(|| panic!("pod fl-worker-{k}"));
        assert_eq!(p.ordinal, Some(k));
        assert!(p.live(), "fl-worker-{k} is not live");
        assert_ne!(w.pod_node(p), Some("server"), "the server is tainted");
    }
    let want: BTreeSet<ClientId> = (0..12).map(client_id).collect();
    assert_eq!(registered(&sim, id), want);
    // Parallel: all twelve pods were created in one controller pass.
    let created: BTreeSet<u64> = sim
        .trace()
        .entries()
        .iter()
        .filter_map(|e| match &e.event {
            TraceEvent::PodCreated { pod } if pod.starts_with("fl/fl-worker-") => Some(e.at),
            _ => None,
        })
        .collect();
    assert_eq!(created.len(), 1, "created at {created:?}");
    // The scheduler spread them by their requests: no agent over its allocatable CPU, and
    // the coordinator is one Deployment pod.
    for n in ["a1", "a2", "a3"] {
        let node = w.node(n).unwrap();
        let used: u64 = w
            .pods()
            .filter(|p| w.pod_node(p) == Some(n))
            .map(|p| p.cpu.0)
            .sum();
        assert!(used <= node.cpu.0, "{n}: {used}m of {}", node.cpu);
    }
    let coordinators: Vec<_> = w
        .pods()
        .filter(|p| {
            p.owner
                .as_ref()
                .is_some_and(|(k, n)| *k == WorkloadKind::Deployment && n == "fl-coordinator")
        })
        .collect();
    assert_eq!(coordinators.len(), 1);
    let rounds = fl(&sim, id).rounds();
    assert!(
        rounds.iter().all(|r| r.accepted == 12 && r.aggregated),
        "{rounds:?}"
    );
}

/// 70 clients of 100m on three 2-CPU agents (k3s: 2000m allocatable each; the coordinator,
/// placed first as the platform's sync waves order it, takes 500m of one): 20 + 20 + 15 = 55
/// fit. Those train, the other 15 stay Pending with the scheduler's reason, no node goes over
/// capacity (the core invariant runs after every binding), and the summary says so.
#[test]
fn clients_beyond_capacity_stay_pending_with_the_reason_and_the_rest_train() {
    let mut cfg = job(70, 2, 55);
    cfg.pods.client_cpu = Some(Cpu(100));
    let (mut sim, id) = start(agents(), no_workloads(), 5, cfg);
    run_until(&mut sim, id, 60 * MIN, "job finished", FlModel::is_finished);
    let st = fl(&sim, id).pod_status(sim.world());
    assert_eq!(st.clients_live, 55, "{st:?}");
    assert_eq!(st.clients_pending, 15, "{st:?}");
    assert_eq!(st.unschedulable.len(), 15, "{st:?}");
    let (pod, reason) = &st.unschedulable[0];
    assert!(pod.starts_with("fl/fl-worker-"), "{pod}");
    assert!(reason.contains("Insufficient cpu"), "{reason}");
    assert!(reason.contains("node(s) had untolerated taint"), "{reason}");
    let line = fl(&sim, id).pods_line(sim.world());
    assert!(
        line.contains("55 live of 70") && line.contains("15 pod(s)"),
        "{line}"
    );
    assert!(
        sim.model_summaries()
            .iter()
            .any(|l| l.contains("Insufficient cpu"))
    );
    // Rounds sampled the 55 registered clients only.
    assert!(fl(&sim, id).rounds().iter().all(|r| r.selected == 55));
}

/// A client's container is killed mid-job: its pod stops being live, the client leaves the
/// coordinator's registry (and the round that had selected it counts it as a failure), and it
/// registers again once the kubelet has restarted the container and the pod is live again.
#[test]
fn a_client_takes_part_only_while_its_pod_is_live() {
    let mut cfg = job(6, 200, 3);
    // A slow link: a round lasts seconds, so the kill lands inside one.
    cfg.bandwidth_bytes_per_s = 2_000.0;
    let (mut sim, id) = start(agents(), no_workloads(), 7, cfg);
    run_until(&mut sim, id, 60 * MIN, "round 2", |f| f.rounds().len() >= 2);
    let victim = client_id(4);
    assert!(registered(&sim, id).contains(&victim));
    let node = node_of(&sim, "fl", "fl-worker-4").expect("bound");
    let pod = "fl/fl-worker-4".to_string();
    sim.inject(Fault::KillProcess {
        node,
        process: Process::Pod(pod.clone()),
    });
    let killed_round = fl(&sim, id).coordinator().unwrap().round();
    assert!(!sim.world().pod("fl", "fl-worker-4").unwrap().live());
    assert!(!registered(&sim, id).contains(&victim), "lost at once");
    let limit = sim.now() + 10 * MIN;
    run_until(&mut sim, id, limit, "client 4 back", |f| {
        f.coordinator()
            .is_some_and(|c| c.state().clients.contains(&victim))
    });
    assert!(sim.world().pod("fl", "fl-worker-4").unwrap().live());
    // The round in flight when it died counts it as a failure (it had been selected: every
    // round samples all six).
    let rec = fl(&sim, id)
        .coordinator()
        .unwrap()
        .record(killed_round)
        .cloned()
        .expect("the round it died in");
    assert!(rec.failures.contains_key(&victim), "{rec:?}");
    assert!(!rec.accepted.contains_key(&victim), "{rec:?}");
}

/// An agent dies for good. Its clients drop out of the round at once (the round closes with the
/// others, min_fit_clients 3), and their StatefulSet pods are not replaced: past the eviction
/// toleration they are Terminating on the dead node, holding their ordinals, while the job goes
/// on without them. Deleting the Node object lets pod GC remove them; the StatefulSet then
/// recreates them on the live agents and they register again.
#[test]
fn node_loss_drops_its_clients_and_their_pods_wait_for_the_node_object() {
    let mut cfg = job(9, 400, 3);
    // About 9 s a round: the job outlasts the eviction window below.
    cfg.bandwidth_bytes_per_s = 200.0;
    let (mut sim, id) = start(agents(), no_workloads(), 11, cfg);
    run_until(&mut sim, id, 60 * MIN, "round 2", |f| f.rounds().len() >= 2);
    let coord_node = fl(&sim, id)
        .pod_status(sim.world())
        .coordinator_node
        .unwrap();
    let dead = ["a1", "a2", "a3"]
        .into_iter()
        .find(|n| *n != coord_node)
        .unwrap()
        .to_string();
    let on_dead: Vec<u32> = (0..9)
        .filter(|k| node_of(&sim, "fl", &format!("fl-worker-{k}")).as_deref() == Some(&dead))
        .collect();
    assert!(
        !on_dead.is_empty(),
        "the scheduler spreads 9 clients over 3 agents"
    );
    let round = fl(&sim, id).coordinator().unwrap().round();
    sim.inject(Fault::KillNode { node: dead.clone() });
    let lost: BTreeSet<ClientId> = on_dead.iter().map(|&k| client_id(k as usize)).collect();
    assert!(registered(&sim, id).is_disjoint(&lost));
    // The round in progress closes with the survivors and records the lost ones.
    let limit = sim.now() + 10 * MIN;
    run_until(&mut sim, id, limit, "round closes", |f| {
        f.rounds().iter().any(|r| r.round == round)
    });
    let rec = fl(&sim, id).history().unwrap()[round as usize - 1].clone();
    let selected_lost: Vec<&ClientId> = lost.iter().filter(|c| rec.selected.contains(*c)).collect();
    assert!(
        !selected_lost.is_empty(),
        "the round had selected a client of {dead}: {rec:?}"
    );
    for c in selected_lost {
        assert!(rec.failures.contains_key(c), "{c} in {rec:?}");
    }
    assert!(
        lost.iter().all(|c| !rec.accepted.contains_key(c)),
        "{rec:?}"
    );
    // Well past NotReady (50 s) and the 300 s toleration: evicted, Terminating, not replaced.
    sim.run_until(sim.now() + 8 * MIN);
    for &k in &on_dead {
        let p = sim.world().pod("fl", &format!("fl-worker-{k}")).unwrap();
        assert!(p.deleting.is_some(), "fl-worker-{k} was evicted");
        assert_eq!(sim.world().pod_node(p), Some(dead.as_str()));
        let copies = sim
            .world()
            .pods()
            .filter(|q| q.name == format!("fl-worker-{k}"))
            .count();
        assert_eq!(
            copies, 1,
            "fl-worker-{k} was replaced before its node was gone"
        );
    }
    assert!(
        !fl(&sim, id).is_finished(),
        "the job outlasts the test window"
    );
    assert!(registered(&sim, id).is_disjoint(&lost));
    let st = fl(&sim, id).pod_status(sim.world());
    assert_eq!(st.clients_terminating, on_dead.len(), "{st:?}");
    // The Node object goes: the pods go with it and come back elsewhere.
    sim.inject(Fault::DeleteNodeObject { node: dead.clone() });
    let limit = sim.now() + 10 * MIN;
    run_until(&mut sim, id, limit, "lost clients back", |f| {
        f.coordinator()
            .is_some_and(|c| lost.is_subset(&c.state().clients))
    });
    for &k in &on_dead {
        let n = node_of(&sim, "fl", &format!("fl-worker-{k}")).unwrap();
        assert_ne!(n, dead, "fl-worker-{k} recreated on a live agent");
    }
}

/// The coordinator's agent dies for good. The Deployment's pod is evicted after the default
/// toleration and a new one is scheduled on another agent; it restores the rounds its shell
/// persisted, learns which clients are gone, and the run finishes. Every round's global model
/// still equals the oracle's recompute (the model checks it at each aggregation) and no
/// acknowledged update is lost or counted twice.
#[test]
fn a_rescheduled_coordinator_restores_its_persisted_rounds_and_finishes() {
    let rounds = 150;
    let mut cfg = job(9, rounds, 3);
    cfg.bandwidth_bytes_per_s = 2_000.0;
    let (mut sim, id) = start(agents(), no_workloads(), 13, cfg);
    run_until(&mut sim, id, 60 * MIN, "round 3", |f| f.rounds().len() >= 3);
    let first = fl(&sim, id)
        .pod_status(sim.world())
        .coordinator_node
        .unwrap();
    // (the coordinator, placed first, takes 500m of its agent, so the scheduler's
    // LeastAllocated spreading puts few or no clients beside it)
    let beside = (0..9)
        .filter(|k| node_of(&sim, "fl", &format!("fl-worker-{k}")).as_deref() == Some(&first))
        .count();
    let before = fl(&sim, id).history().unwrap().to_vec();
    let old_pod: String = sim
        .world()
        .pods()
        .find(|p| p.live() && p.name.starts_with("fl-coordinator-"))
        .map(|p| p.name.clone())
        .unwrap();
    sim.inject(Fault::KillNode {
        node: first.clone(),
    });
    let killed = sim.now();
    assert!(
        fl(&sim, id).coordinator().is_none(),
        "the coordinator died with its node"
    );
    run_until(&mut sim, id, killed + 30 * MIN, "coordinator back", |f| {
        f.coordinator().is_some()
    });
    // Not before NotReady (50 s) plus the 300 s toleration: a new pod, on another agent.
    assert!(
        sim.now() - killed >= 350 * SEC,
        "back after {} s",
        (sim.now() - killed) / SEC
    );
    let second = fl(&sim, id)
        .pod_status(sim.world())
        .coordinator_node
        .unwrap();
    assert_ne!(second, first);
    let new_pod = sim
        .world()
        .pods()
        .find(|p| p.live() && p.name.starts_with("fl-coordinator-"))
        .map(|p| p.name.clone())
        .unwrap();
    assert_ne!(new_pod, old_pod);
    assert_eq!(fl(&sim, id).coordinator_restarts(), 1);
    // The restored history is the one persisted: the same rounds and global models.
    let restored = fl(&sim, id).history().unwrap().to_vec();
    assert!(restored.len() >= before.len());
    assert_eq!(&restored[..before.len()], &before[..]);
    let detail = sim
        .trace()
        .entries()
        .iter()
        .find_map(|e| match &e.event {
            TraceEvent::Ext { kind, detail, .. } if kind == "coordinator-restarted" => {
                Some(detail.clone())
            }
            _ => None,
        })
        .unwrap();
    assert!(detail.contains(&format!("node {second}")), "{detail}");
    let limit = sim.now() + 6 * 60 * MIN;
    run_until(&mut sim, id, limit, "job finished", FlModel::is_finished);
    let f = fl(&sim, id);
    assert_eq!(f.history().unwrap().len() as u64, rounds);
    assert_eq!(f.rounds().len() as u64, rounds, "every round reported once");
    // The clients of the dead agent are gone for good (their pods wait for the node).
    let live = f.pod_status(sim.world()).clients_live;
    assert_eq!(live, 9 - beside);
    assert_eq!(f.rounds().last().unwrap().accepted, live);
}

/// mlworkbench-kvm as documented: the FL job adopts the topology's fl-coordinator (2 CPU / 4Gi)
/// and fl-worker (4 CPU / 16Gi, a 20Gi local-path dataset per ordinal); neither fits a 2 vCPU
/// node with 1950m allocatable. Nothing trains, and the summary says why. With the scenarios'
/// overrides the same job runs on the same workloads, each client on its own dataset volume.
#[test]
fn the_documented_mlworkbench_pool_is_unschedulable_and_overrides_make_it_train() {
    let (mut sim, id) = start(
        topo("mlworkbench-kvm"),
        SimOptions::default(),
        1,
        job(5, 2, 5),
    );
    sim.run_until(30 * MIN);
    assert!(sim.violation().is_none(), "{:?}", sim.violation());
    let f = fl(&sim, id);
    assert!(f.rounds().is_empty());
    assert!(
        f.coordinator().is_none(),
        "the coordinator cannot be scheduled either"
    );
    let st = f.pod_status(sim.world());
    // The topology's StatefulSet (OrderedReady, as documented) made ordinal 0 at boot; the
    // job's Parallel one waits for a live coordinator, which never comes.
    assert_eq!((st.clients_live, st.clients_pending), (0, 1), "{st:?}");
    assert_eq!(st.unschedulable.len(), 2, "{st:?}");
    let worker = st
        .unschedulable
        .iter()
        .find(|(p, _)| p == "mlworkbench/fl-worker-0")
        .map(|(_, r)| r.clone())
        .unwrap();
    assert!(
        worker.contains("3 Insufficient cpu") && worker.contains("3 Insufficient memory"),
        "{worker}"
    );
    assert!(worker.contains("can never fit"), "{worker}");
    let coordinator = st
        .unschedulable
        .iter()
        .find(|(p, _)| p.starts_with("mlworkbench/fl-coordinator-"))
        .map(|(_, r)| r.clone())
        .unwrap();
    assert!(coordinator.contains("Insufficient cpu"), "{coordinator}");
    let summary = sim.model_summaries().join("\n");
    assert!(
        summary.contains("0 live of 5")
            && summary.contains("can never fit")
            && summary.contains("once the coordinator is live"),
        "{summary}"
    );

    let mut o = SimOptions::default();
    o.overrides.insert(
        "fl-worker".into(),
        WorkloadOverride::parse("cpu:50m,memory:128Mi").unwrap(),
    );
    o.overrides.insert(
        "fl-coordinator".into(),
        WorkloadOverride::parse("cpu:500m,memory:1Gi").unwrap(),
    );
    let (mut sim, id) = start(topo("mlworkbench-kvm"), o, 1, job(5, 2, 5));
    run_until(&mut sim, id, 60 * MIN, "job finished", FlModel::is_finished);
    let w = sim.world();
    for k in 0..5 {
        let p = w.pod("mlworkbench", &format!("fl-worker-{k}")).unwrap();
        assert!(p.live());
        let pvc = format!("dataset-fl-worker-{k}");
        assert_eq!(p.pvcs, vec![pvc.clone()]);
        let v = w.pvcs().find(|v| v.name == pvc).unwrap();
        assert_eq!(v.node, p.node, "local-path binds where the pod first ran");
    }
    assert!(fl(&sim, id).rounds().iter().all(|r| r.accepted == 5));
}

/// The coordinator cannot run while the job's workloads are not yet applied (the API is down at
/// time 0): the job applies them once the API serves, and a run from the same seed gives the
/// same trace.
#[test]
fn the_job_waits_for_the_api_and_is_deterministic() {
    let hash = |seed| {
        let (mut sim, id) = start(agents(), no_workloads(), seed, job(6, 3, 6));
        run_until(&mut sim, id, 60 * MIN, "job finished", FlModel::is_finished);
        let failed = sim
            .trace()
            .entries()
            .iter()
            .filter(|e| matches!(&e.event, TraceEvent::Ext { kind, .. } if kind == "apply-failed"))
            .count();
        assert!(failed > 0, "the job started before the API was up");
        (sim.trace_hash(), fl(&sim, id).rounds().to_vec())
    };
    let a = hash(21);
    assert_eq!(a, hash(21));
    assert_ne!(a.0, hash(22).0);
}
