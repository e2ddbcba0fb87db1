//! Simulator benches: engine throughput beside a reference loop measured in the same run, and a
//! simulated day of a 6-node cluster (100 pods, etcd heartbeats, a node failure every hour).
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::any::Any;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::path::Path;
use std::time::Instant;

use benches::{Row, Target, write_rows};
use criterion::{Criterion, criterion_group, criterion_main};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use simulator::timings::{HOUR, MIN};
use simulator::{
    Fault, Model, ModelId, ScheduledFault, Sim, SimOptions, Topology, WorkloadOverride, World,
};

const EVENTS: u64 = 1_000_000;
const PENDING: u64 = 1_024;

/// Keeps `PENDING` timers in flight; each wake schedules the next one a random delay later.
struct Chain {
    left: u64,
}
impl Model for Chain {
    fn name(&self) -> &'static str {
        "chain"
    }
    fn start(&mut self, w: &mut World, me: ModelId) {
        for i in 0..PENDING {
            w.wake(1 + i, me, i);
        }
    }
    fn on_wake(&mut self, w: &mut World, me: ModelId, tag: u64) {
        if self.left > 0 {
            self.left -= 1;
            let d = w.random_range(1, 1_000);
            let at = w.now() + d;
            w.wake(at, me, tag);
        }
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

fn topology(name: &str) -> Topology {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures/topologies")
        .join(format!("{name}.yaml"));
    Topology::load(&p).expect("topology")
}

fn engine_run(topo: &Topology) -> u64 {
    let opts = SimOptions {
        apply_topology_workloads: false,
        ..SimOptions::default()
    };
    let mut sim = Sim::new(topo.clone(), 1, opts);
    sim.add_model(Box::new(Chain { left: EVENTS }));
    sim.run_until_pred(u64::MAX / 2, EVENTS + PENDING * 2, |_| false);
    sim.world().events_processed()
}

/// The reference: the same timer chain on a bare BinaryHeap with the same RNG.
fn reference_run() -> u64 {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let mut heap: BinaryHeap<Reverse<(u64, u64, u64)>> = BinaryHeap::new();
    let mut seq = 0;
    for i in 0..PENDING {
        seq += 1;
        heap.push(Reverse((1 + i, seq, i)));
    }
    let (mut left, mut n) = (EVENTS, 0u64);
    while let Some(Reverse((now, _, tag))) = heap.pop() {
        n += 1;
        if left > 0 {
            left -= 1;
            seq += 1;
            heap.push(Reverse((now + rng.random_range(1..1_000u64), seq, tag)));
        }
    }
    n
}

fn day_run() -> (u64, String) {
    let mut opts = SimOptions::default();
    // mlops-flux has 22 documented pods; 81 more executors make 100 (+3 DaemonSet-free nodes)
    opts.overrides.insert(
        "spark-executor".into(),
        WorkloadOverride::parse("replicas:81").expect("override"),
    );
    let topo = topology("mlops-flux");
    let names: Vec<String> = topo.nodes.iter().map(|n| n.name.clone()).collect();
    for h in 1..24u64 {
        let node = names[(h as usize) % names.len()].clone();
        opts.faults.push(ScheduledFault {
            at: h * HOUR,
            fault: Fault::KillNode { node: node.clone() },
        });
        opts.faults.push(ScheduledFault {
            at: h * HOUR + 20 * MIN,
            fault: Fault::RestoreNode { node },
        });
    }
    let mut sim = Sim::new(topo, 1, opts);
    sim.run_until(24 * HOUR);
    assert!(sim.violation().is_none(), "{:?}", sim.violation());
    (sim.world().events_processed(), sim.trace_hash())
}

fn benches(c: &mut Criterion) {
    let topo = topology("k3s-single");
    // one measured pass each, printed side by side
    let t = Instant::now();
    let n_ref = reference_run();
    let ref_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let n_eng = engine_run(&topo);
    let eng_s = t.elapsed().as_secs_f64();
    println!(
        "sim engine: {:.2}M events/s ({n_eng} events in {eng_s:.3}s); reference heap loop: {:.2}M events/s; ratio {:.2}",
        n_eng as f64 / eng_s / 1e6,
        n_ref as f64 / ref_s / 1e6,
        (n_eng as f64 / eng_s) / (n_ref as f64 / ref_s)
    );
    let t = Instant::now();
    let (events, hash) = day_run();
    let day_s = t.elapsed().as_secs_f64();
    println!(
        "sim day: 6 nodes, 100 pods, a node failure every hour: {day_s:.2}s wall, {events} events, trace-hash {hash} (target <= 15 s)"
    );
    let mut g = c.benchmark_group("sim");
    g.sample_size(10);
    g.bench_function("engine_1M_events", |b| b.iter(|| engine_run(&topo)));
    g.bench_function("reference_heap_1M_events", |b| b.iter(reference_run));
    g.finish();
    let rows = [
        Row {
            case: "simulator engine, 1M timer events (rate: one pass)".into(),
            criterion: Some("sim/engine_1M_events".into()),
            reference: Some("sim/reference_heap_1M_events".into()),
            value: Some(n_eng as f64 / eng_s / 1e6),
            unit: Some("M events/s".into()),
            targets: vec![Target::MinValue(5.0)],
            ..Row::default()
        },
        Row {
            case: format!("simulated day: 6 nodes, 100 pods, 23 node failures ({events} events)"),
            value: Some(day_s),
            unit: Some("s wall".into()),
            targets: vec![Target::MaxValue(15.0)],
            ..Row::default()
        },
    ];
    match write_rows("sim", &rows) {
        Ok(path) => eprintln!("rows written to {}", path.display()),
        Err(e) => eprintln!("could not write the bench rows: {e}"),
    }
}

criterion_group!(sim_benches, benches);
criterion_main!(sim_benches);
