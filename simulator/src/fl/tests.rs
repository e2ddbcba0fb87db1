//! FL-in-the-simulator tests: learning with the oracle checked every round, determinism,
//! the coordinator's node dying mid-round, dropouts and stragglers.

use super::*;
use crate::fault::Fault;
use crate::timings::{MIN, SEC};
use crate::{Sim, SimOptions, Topology};

/// K3s with its sqlite datastore (one server, two agents): the FL model needs nodes, not etcd.
const TOPOLOGY: &str = "
name: fl-test
description: a K3s server and two agents for FL tests
source: test
distribution: k3s
infrastructure: kvm
datastore: sqlite
allow_scheduling_on_control_plane: true
nodes:
  - { name: n1, roles: [control-plane, worker], cpu: 4, memory: 8Gi }
  - { name: n2, roles: [worker], cpu: 4, memory: 8Gi }
  - { name: n3, roles: [worker], cpu: 4, memory: 8Gi }
network: { latency_us: 200, bandwidth_mbps: 1000 }
";

fn world(seed: u64, cfg: FlConfig) -> (Sim, ModelId) {
    let topo = Topology::from_yaml("fl-test.yaml", TOPOLOGY).expect("test topology parses");
    let mut sim = Sim::new(
        topo,
        seed,
        SimOptions {
            apply_topology_workloads: false,
            ..SimOptions::default()
        },
    );
    let fl = FlModel::new(cfg, seed).expect("fl config is valid");
    let id = sim.add_model(Box::new(fl));
    (sim, id)
}

/// Runs until the FL workload finishes (bounded by `limit_us` of virtual time).
fn run(sim: &mut Sim, id: ModelId, limit_us: Time) {
    while sim.now() < limit_us {
        if sim.model::<FlModel>(id).unwrap().is_finished() || sim.violation().is_some() {
            break;
        }
        sim.run_until(sim.now() + 10 * SEC);
    }
    if let Some(v) = sim.violation() {
        panic!("{v}\n{}", sim.repro());
    }
}

fn small(rounds: u64) -> FlConfig {
    let mut cfg = FlConfig {
        clients: 12,
        ..FlConfig::default()
    };
    cfg.round.num_rounds = rounds;
    // Wait for the agents' clients too (Flower's wait_for), not only the server's.
    cfg.round.min_available_clients = 12;
    cfg
}

#[test]
fn rounds_learn_and_every_global_model_matches_the_recompute() {
    let (mut sim, id) = world(7, small(8));
    run(&mut sim, id, 60 * MIN);
    let fl = sim.model::<FlModel>(id).unwrap();
    assert!(fl.is_finished());
    let rounds = fl.rounds();
    assert_eq!(rounds.len(), 8);
    assert!(
        rounds
            .iter()
            .all(|r| r.aggregated && r.accepted == 12 && r.failures == 0),
        "{rounds:?}"
    );
    // Clients' own held-out loss falls sharply (FedProx Synthetic gives every client its own
    // labelling model, so the shared model's central accuracy stays modest but above chance).
    let (first, last) = (&rounds[0], &rounds[7]);
    assert!(
        last.federated_loss.unwrap() < 0.6 * first.federated_loss.unwrap(),
        "{first:?} -> {last:?}"
    );
    assert!(last.central_accuracy.unwrap() > 0.2, "{last:?}");
    assert!(
        rounds
            .iter()
            .all(|r| r.federated_loss.is_some() && r.latency_ms > 0)
    );
    let completed = sim
        .trace()
        .entries()
        .iter()
        .filter(|e| matches!(&e.event, TraceEvent::Ext { kind, .. } if kind == "round-completed"))
        .count();
    assert_eq!(completed, 8);
}

#[test]
fn same_seed_same_trace_hash() {
    let hash = |seed| {
        let (mut sim, id) = world(seed, small(3));
        run(&mut sim, id, 30 * MIN);
        (
            sim.trace_hash(),
            sim.model::<FlModel>(id).unwrap().rounds().to_vec(),
        )
    };
    let a = hash(11);
    assert_eq!(a, hash(11));
    assert_ne!(a.0, hash(12).0);
}

/// The coordinator's node dies mid-round and comes back within the eviction toleration: the same
/// pod starts again there, restores its persisted state, resumes the round and training
/// finishes; acknowledged updates are counted once.
#[test]
fn coordinator_node_killed_mid_round_resumes() {
    let mut cfg = small(6);
    cfg.round.fit_timeout_ms = Some(120_000);
    // A slow link (a model takes seconds to move) so that the kill lands inside a round.
    cfg.bandwidth_bytes_per_s = 1_000.0;
    let (mut sim, id) = world(3, cfg);
    // Wait for round 2 to be under way.
    let mut guard = 0;
    while sim.model::<FlModel>(id).unwrap().rounds().is_empty() {
        sim.run_until(sim.now() + SEC);
        guard += 1;
        assert!(guard < 3600, "round 2 never started");
    }
    let node = sim
        .model::<FlModel>(id)
        .unwrap()
        .pod_status(sim.world())
        .coordinator_node
        .expect("the coordinator is live");
    sim.inject(Fault::KillNode { node: node.clone() });
    let killed_at = sim.now();
    sim.schedule_fault(killed_at + 2 * MIN, Fault::RestoreNode { node });
    run(&mut sim, id, killed_at + 60 * MIN);
    let fl = sim.model::<FlModel>(id).unwrap();
    let fl_events: Vec<String> = sim
        .trace()
        .entries()
        .iter()
        .filter_map(|e| match &e.event {
            TraceEvent::Ext { kind, detail, .. } => Some(format!("{} {kind} {detail}", e.at)),
            TraceEvent::NodeReady { node } | TraceEvent::NodePowerOff { node } => {
                Some(format!("{} {:?} {node}", e.at, e.event))
            }
            _ => None,
        })
        .collect();
    assert!(
        fl.is_finished(),
        "rounds {:?}\n{}\nphase {:?}",
        fl.rounds().len(),
        fl_events.join("\n"),
        fl.coordinator.as_ref().map(|c| c.phase().clone())
    );
    let restarted = sim.trace().entries().iter().any(
        |e| matches!(&e.event, TraceEvent::Ext { kind, .. } if kind == "coordinator-restarted"),
    );
    assert!(restarted);
    let history = fl.history().unwrap();
    assert_eq!(history.len(), 6);
    // Clients on that node were lost in the round the node died in.
    assert!(
        history.iter().any(|r| !r.failures.is_empty()),
        "some round saw the lost clients"
    );
}

#[test]
fn dropouts_and_stragglers_time_out_and_rounds_still_aggregate() {
    let mut cfg = small(5);
    cfg.round.fit_timeout_ms = Some(30_000);
    cfg.round.evaluate_timeout_ms = Some(30_000);
    cfg.faults.dropout_probability = 0.25;
    cfg.faults.straggler_fraction = 0.3;
    cfg.faults.slow_link_fraction = 0.2;
    let (mut sim, id) = world(5, cfg);
    run(&mut sim, id, 60 * MIN);
    let fl = sim.model::<FlModel>(id).unwrap();
    assert!(fl.is_finished());
    let failures: usize = fl.rounds().iter().map(|r| r.failures).sum();
    assert!(failures > 0, "{:?}", fl.rounds());
    assert!(fl.rounds().iter().all(|r| r.aggregated));
    // A round that waited for silent clients lasts at least the timeout.
    assert!(
        fl.rounds()
            .iter()
            .any(|r| r.failures > 0 && r.latency_ms >= 30_000)
    );
}

/// r_straggler_fault_slows_fit_in_flight: a straggler fault that lands while the client trains
/// slows the rest of that training (not only the next round's), so the round's timeout closes
/// the round without it.
#[test]
fn r_straggler_fault_slows_fit_in_flight() {
    let mut cfg = small(1);
    // a fit takes about 3 ms here (1.2 ms each way on the link, 0.8 ms of training)
    cfg.round.fit_timeout_ms = Some(100);
    cfg.round.min_fit_clients = 11;
    let (mut sim, id) = world(9, cfg);
    let fit_started = |w: &World| {
        w.trace().entries().last().is_some_and(|e| {
            matches!(&e.event, TraceEvent::Ext { kind, detail, .. }
                if kind == "phase" && detail.starts_with("round 1 fit"))
        })
    };
    let stop = sim.run_until_pred(30 * MIN, 10_000_000, fit_started);
    assert_eq!(stop, crate::Stop::Predicate);
    let at = sim.now();
    sim.model_mut::<FlModel>(id)
        .unwrap()
        .set_client_fault(0, ClientFault::Straggler { slowdown: 1_000.0 }, at)
        .unwrap();
    run(&mut sim, id, at + 10 * MIN);
    let fl = sim.model::<FlModel>(id).unwrap();
    let r = &fl.rounds()[0];
    assert_eq!((r.accepted, r.failures), (11, 1), "{r:?}");
    assert!(r.latency_ms >= 100, "{r:?}");
    // a bad factor is refused with the client named
    let e = sim
        .model_mut::<FlModel>(id)
        .unwrap()
        .set_client_fault(3, ClientFault::Straggler { slowdown: 0.5 }, at)
        .unwrap_err();
    assert!(e.contains("client 3"), "{e}");
}

/// r_central_test_set_covers_every_client: when the clients' held-out data exceeds the central
/// test set's cap, the cap samples across all clients instead of keeping the first clients only.
#[test]
fn r_central_test_set_covers_every_client() {
    let cfg = FlConfig {
        clients: 200,
        central_test_examples: 500,
        ..FlConfig::default()
    };
    let fl = FlModel::new(cfg, 4).unwrap();
    assert_eq!(fl.test.len(), 500);
    let row =
        |d: &Dataset, i: usize| d.features[i * d.num_features..(i + 1) * d.num_features].to_vec();
    let test_rows: Vec<Vec<f32>> = (0..fl.test.len()).map(|i| row(&fl.test, i)).collect();
    let last = &fl.clients[199].val;
    let covered = (0..last.len()).any(|i| test_rows.contains(&row(last, i)));
    let covered_clients = fl
        .clients
        .iter()
        .filter(|c| (0..c.val.len()).any(|i| test_rows.contains(&row(&c.val, i))))
        .count();
    assert!(
        covered,
        "the last client's held-out data is missing from the test set"
    );
    assert!(
        covered_clients > 150,
        "{covered_clients} of 200 clients represented"
    );
}

/// The simulator's job starts from exactly what `fl worker --dataset synthetic:... --client-index
/// k` and `fl coordinator --seed --eval-data` derive (both call fl_core::job): client k's
/// training and held-out data, the coordinator's test set, the initial model and the client ids.
#[test]
fn the_job_is_the_one_fl_core_derives_for_the_real_processes() {
    let cfg = FlConfig {
        clients: 7,
        num_features: 20,
        ..FlConfig::default()
    };
    let seed = 42;
    let fl = FlModel::new(cfg.clone(), seed).unwrap();
    // The plan `fl worker` builds from its flags (the local backend passes this very spec).
    let spec = cfg.synthetic().to_string();
    assert_eq!(spec, "synthetic:0.5,0.5,20,100");
    let plan = DataPlan {
        source: Source::Synthetic(Synthetic::parse(&spec).unwrap().unwrap()),
        num_clients: 7,
        test_fraction: cfg.test_fraction,
        seed,
    };
    for (k, c) in fl.clients.iter().enumerate() {
        let want = plan.client(k).unwrap();
        assert_eq!(c.id, job::client_id(k));
        assert_eq!(c.train, want.train, "client {k}'s training data");
        assert_eq!(c.val, want.test, "client {k}'s held-out data");
    }
    assert_eq!(
        fl.test,
        plan.central_test(Some(cfg.central_test_examples)).unwrap()
    );
    let init = job::initial_params(cfg.architecture(), seed);
    assert_eq!(fl.global_params(), init.as_slice());
    assert_eq!(
        fl.global_digest,
        cfg.architecture()
            .to_model(&init)
            .unwrap()
            .digest()
            .to_hex()
    );
}

/// Why `benches/fl_sim` waits for all its clients: a job starts when the coordinator's node is
/// Ready, and with Flower's default `min_available_clients` (2) it samples only the clients
/// registered by then (nodes boot at different times); rounds last milliseconds of virtual
/// time, so a whole short job can run on a fraction of its clients. Waiting for all of them
/// (as the scenarios do: `min_fit_clients` defaults to all) trains every client every round.
#[test]
fn a_job_that_waits_for_two_clients_starts_on_the_first_ready_nodes_only() {
    let run_with = |seed: u64, min_available: usize| {
        let mut cfg = FlConfig {
            clients: 30,
            num_features: 10,
            ..FlConfig::default()
        };
        cfg.round.num_rounds = 3;
        cfg.round.min_available_clients = min_available;
        cfg.round.min_fit_clients = min_available;
        let (mut sim, id) = world(seed, cfg);
        sim.run_until(10 * MIN);
        let fl = sim.model::<FlModel>(id).unwrap();
        assert!(fl.is_finished(), "seed {seed}: {:?}", fl.rounds());
        fl.rounds().iter().map(|r| r.selected).collect::<Vec<_>>()
    };
    let mut short = 0;
    for seed in 1..=6 {
        let all = run_with(seed, 30);
        assert_eq!(all, vec![30, 30, 30], "seed {seed}");
        let early = run_with(seed, 2);
        if early[0] < 30 {
            short += 1;
        }
    }
    assert!(
        short > 0,
        "every seed had all 30 clients registered at round 1"
    );
}
