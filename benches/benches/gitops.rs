//! GitOps benches:
//! - `validate --gitops` over all fixtures (target <= 2 s), beside the same validation without
//!   the `kubectl kustomize` cross-check (pure in-process work);
//! - the mlworkbench app-of-apps converging from empty in the simulator (target <= 0.5 s wall
//!   per simulated convergence), beside the same cluster simulated for the same virtual time
//!   without ArgoCD (what the cluster model alone costs);
//! - a simulated day of ArgoCD reconciling the mlworkbench tree with a node failure every hour
//!   (one pass; target <= 5 s wall).
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use benches::{Row, Target, write_rows};
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use simulator::gitops::argo::ArgoCd;
use simulator::gitops::loader::read_repo;
use simulator::gitops::repo::Repo;
use simulator::timings::{HOUR, MIN, SEC};
use simulator::{Fault, Sim, SimOptions, Stop, Topology};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures")
}

/// Seed of every simulated run here (one seed: the same work each iteration).
const SEED: u64 = 11;
/// Virtual-time bound on one convergence (it takes a few simulated minutes).
const CONVERGE_LIMIT: u64 = 60 * MIN;

/// The mlworkbench-kvm cluster booted to every node Ready, nothing deployed.
fn booted() -> Sim {
    let topo = Topology::load(&fixtures().join("topologies/mlworkbench-kvm.yaml"))
        .expect("mlworkbench-kvm topology");
    let options = SimOptions {
        apply_topology_workloads: false,
        ..SimOptions::default()
    };
    let mut sim = Sim::new(topo, SEED, options);
    let stop = sim.run_until_pred(30 * MIN, 50_000_000, |w| w.nodes_ready());
    assert_eq!(
        stop,
        Stop::Predicate,
        "cluster did not boot: {}",
        sim.repro()
    );
    sim
}

/// Applies root-app and runs until every Application is Synced and Healthy; returns the virtual
/// time it took and the Application count.
fn converge(mut sim: Sim, repo: Repo) -> (u64, usize) {
    let t0 = sim.now();
    let id = ArgoCd::start(&mut sim, repo);
    let deadline = t0 + CONVERGE_LIMIT;
    while sim.now() < deadline {
        sim.run_until(sim.now() + 10 * SEC);
        let argo = sim.model::<ArgoCd>(id).expect("argocd model");
        if argo.converged() {
            return (sim.now() - t0, argo.apps().len());
        }
    }
    panic!(
        "mlworkbench did not converge within {}:\n{}",
        simulator::fmt_time(CONVERGE_LIMIT),
        sim.model_summaries().join("\n")
    );
}

/// The reference: the same booted cluster run for `virtual_us` without ArgoCD.
fn idle(mut sim: Sim, virtual_us: u64) -> u64 {
    sim.run_until(sim.now() + virtual_us);
    sim.world().events_processed()
}

/// A simulated day of ArgoCD reconciling the converged tree, one node killed every hour and
/// restored 20 minutes later. Returns (Applications, events, trace hash).
fn day(repo: Repo) -> (usize, u64, String) {
    let mut sim = booted();
    let id = ArgoCd::start(&mut sim, repo);
    let names: Vec<String> = sim.world().nodes().iter().map(|n| n.name.clone()).collect();
    let t0 = sim.now();
    for h in 1..24u64 {
        let node = names[(h as usize) % names.len()].clone();
        sim.schedule_fault(t0 + h * HOUR, Fault::KillNode { node: node.clone() });
        sim.schedule_fault(t0 + h * HOUR + 20 * MIN, Fault::RestoreNode { node });
    }
    sim.run_until(t0 + 24 * HOUR);
    assert!(sim.violation().is_none(), "{:?}", sim.violation());
    let apps = sim.model::<ArgoCd>(id).expect("argocd model").apps().len();
    (apps, sim.world().events_processed(), sim.trace_hash())
}

fn bench(c: &mut Criterion) {
    let gitops = fixtures().join("gitops");
    let crds = fixtures().join("crds");
    let kubectl = simulator::gitops::loader::kubectl();
    println!(
        "gitops bench: kubectl {}",
        kubectl
            .as_ref()
            .map(|k| format!("at {}", k.display()))
            .unwrap_or_else(|| "not installed: cross-check skipped".into())
    );
    let mut g = c.benchmark_group("gitops_validate");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(8))
        .warm_up_time(Duration::from_secs(1));
    g.bench_function("reference_in_process_only", |b| {
        b.iter(|| {
            let r = simulator::gitops::validate_with(&gitops, Some(&crds), None, None)
                .expect("validate");
            assert!(r.is_ok(), "{r}");
        })
    });
    g.bench_function("all_fixtures_with_kubectl_kustomize", |b| {
        b.iter(|| {
            let r =
                simulator::gitops::validate_with(&gitops, Some(&crds), None, kubectl.as_deref())
                    .expect("validate");
            assert!(r.is_ok(), "{r}");
        })
    });
    g.finish();

    let repo = read_repo(&fixtures().join("gitops/mlworkbench")).expect("mlworkbench tree");
    // One pass of each, printed side by side; criterion then times them.
    let (virtual_us, apps) = converge(booted(), repo.clone());
    let t = Instant::now();
    let _ = converge(booted(), repo.clone());
    let converge_s = t.elapsed().as_secs_f64();
    println!(
        "gitops converge: mlworkbench app-of-apps, {apps} applications Synced and Healthy after {} simulated, {converge_s:.3}s wall (boot included)",
        simulator::fmt_time(virtual_us)
    );
    let mut g = c.benchmark_group("gitops_sim");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(5))
        .warm_up_time(Duration::from_secs(1));
    g.bench_function("mlworkbench_converge_from_empty", |b| {
        b.iter_batched(
            booted,
            |sim| converge(sim, repo.clone()),
            BatchSize::PerIteration,
        )
    });
    g.bench_function("reference_same_virtual_time_without_argocd", |b| {
        b.iter_batched(booted, |sim| idle(sim, virtual_us), BatchSize::PerIteration)
    });
    g.finish();

    let t = Instant::now();
    let (day_apps, events, hash) = day(repo);
    let day_s = t.elapsed().as_secs_f64();
    println!(
        "gitops day: ArgoCD reconciling {day_apps} applications for a simulated day, a node failure every hour: {day_s:.2}s wall, {events} events, trace-hash {hash} (target <= 5 s)"
    );

    let rows = [
        Row {
            case: "validate --gitops, all fixtures (with kubectl kustomize where installed)".into(),
            criterion: Some("gitops_validate/all_fixtures_with_kubectl_kustomize".into()),
            reference: Some("gitops_validate/reference_in_process_only".into()),
            targets: vec![Target::MaxTimeMs(2_000.0)],
            ..Row::default()
        },
        Row {
            case: format!(
                "mlworkbench app-of-apps converging from empty in the sim ({apps} apps, {} simulated)",
                simulator::fmt_time(virtual_us)
            ),
            criterion: Some("gitops_sim/mlworkbench_converge_from_empty".into()),
            reference: Some("gitops_sim/reference_same_virtual_time_without_argocd".into()),
            targets: vec![Target::MaxTimeMs(500.0)],
            ..Row::default()
        },
        Row {
            case: format!(
                "simulated day of ArgoCD ({day_apps} apps), a node failure every hour ({events} events)"
            ),
            value: Some(day_s),
            unit: Some("s wall".into()),
            targets: vec![Target::MaxValue(5.0)],
            ..Row::default()
        },
    ];
    match write_rows("gitops", &rows) {
        Ok(path) => eprintln!("rows written to {}", path.display()),
        Err(e) => eprintln!("could not write the bench rows: {e}"),
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
