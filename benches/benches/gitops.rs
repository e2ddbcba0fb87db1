//! GitOps benches:
//! - `validate --gitops` over all fixtures (target <= 2 s) with every `kubectl kustomize` render
//!   run (uncached, the renders concurrent), and with the render cache warm (what a second
//!   `cargo xtask validate` costs), beside the same validation without the `kubectl kustomize`
//!   cross-check (pure in-process work);
//! - the mlworkbench app-of-apps converging from empty in the simulator (target <= 0.5 s wall
//!   per simulated convergence), beside the same cluster simulated for the same virtual time
//!   without ArgoCD (what the cluster model alone costs);
//! - a simulated day of ArgoCD reconciling 30 Applications (the mlworkbench tree and 11
//!   generated tenant apps) with a node failure every hour, every Application Synced and Healthy
//!   at the end (one pass; target <= 5 s wall), beside the same day without ArgoCD.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use benches::{Row, Target, write_rows};
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use simulator::gitops::Kubectl;
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

/// Applications in the day case.
const DAY_APPS: usize = 30;

/// The mlworkbench tree plus generated tenant Applications under platform-app, `DAY_APPS` in
/// all: each tenant a small Deployment and its Service in its own namespace (no volume, so a
/// node failure moves it).
fn with_tenants(repo: &Repo) -> Repo {
    let base = simulator::gitops::tree::Tree::build(repo).units.len();
    let mut files = repo.files.clone();
    for i in 1..=DAY_APPS.saturating_sub(base) {
        let name = format!("tenant-{i:02}");
        files.insert(
            format!("argocd-apps/platform/{name}.yaml"),
            format!(
                "apiVersion: argoproj.io/v1alpha1
kind: Application
metadata:
  name: {name}
  namespace: argocd
  finalizers:
    - resources-finalizer.argocd.argoproj.io
spec:
  project: default
  source:
    repoURL: https://github.com/mlworkbench/mlworkbench.git
    targetRevision: main
    path: namespaces/tenants/{name}
  destination:
    server: https://kubernetes.default.svc
    namespace: {name}
  syncPolicy:
    automated:
      prune: true
      selfHeal: true
    syncOptions:
      - CreateNamespace=true
"
            ),
        );
        files.insert(
            format!("namespaces/tenants/{name}/app.yaml"),
            format!(
                "apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
  namespace: {name}
spec:
  replicas: 1
  selector:
    matchLabels:
      app: {name}
  template:
    metadata:
      labels:
        app: {name}
    spec:
      containers:
        - name: app
          image: nginx:1.27
          resources:
            requests:
              cpu: 20m
              memory: 32Mi
---
apiVersion: v1
kind: Service
metadata:
  name: {name}
  namespace: {name}
spec:
  selector:
    app: {name}
  ports:
    - port: 80
"
            ),
        );
    }
    Repo::new(repo.revision, files)
}

/// One node killed every hour of a simulated day, restored 20 minutes later.
fn hourly_node_failures(sim: &mut Sim) -> u64 {
    let names: Vec<String> = sim.world().nodes().iter().map(|n| n.name.clone()).collect();
    let t0 = sim.now();
    for h in 1..24u64 {
        let node = names[(h as usize) % names.len()].clone();
        sim.schedule_fault(t0 + h * HOUR, Fault::KillNode { node: node.clone() });
        sim.schedule_fault(t0 + h * HOUR + 20 * MIN, Fault::RestoreNode { node });
    }
    t0
}

/// A simulated day of ArgoCD reconciling `repo`, one node killed every hour and restored 20
/// minutes later; every Application must be Synced and Healthy at the end. Returns
/// (Applications, events, trace hash).
fn day(repo: Repo) -> (usize, u64, String) {
    let mut sim = booted();
    let id = ArgoCd::start(&mut sim, repo);
    let t0 = hourly_node_failures(&mut sim);
    sim.run_until(t0 + 24 * HOUR);
    assert!(sim.violation().is_none(), "{:?}", sim.violation());
    let argo = sim.model::<ArgoCd>(id).expect("argocd model");
    assert!(
        argo.converged(),
        "not every Application is Synced and Healthy after the day:\n{}",
        sim.model_summaries().join("\n")
    );
    let apps = argo.apps().len();
    (apps, sim.world().events_processed(), sim.trace_hash())
}

/// The reference: the same day and faults, the cluster alone. Returns its events.
fn day_without_argocd() -> u64 {
    let mut sim = booted();
    let t0 = hourly_node_failures(&mut sim);
    sim.run_until(t0 + 24 * HOUR);
    sim.world().events_processed()
}

fn bench(c: &mut Criterion) {
    let gitops = fixtures().join("gitops");
    let crds = fixtures().join("crds");
    // On PATH, else where `cargo xtask setup gitops` installs it.
    let kubectl =
        simulator::gitops::loader::find_kubectl(&[fixtures().join("../target/tools/kubectl/bin")]);
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
    let uncached = kubectl.clone().map(Kubectl::new);
    g.bench_function("all_fixtures_with_kubectl_kustomize", |b| {
        b.iter(|| {
            let r = simulator::gitops::validate_with(&gitops, Some(&crds), None, uncached.as_ref())
                .expect("validate");
            assert!(r.is_ok(), "{r}");
        })
    });
    let cache = tempfile::tempdir().expect("cache dir");
    let warm = kubectl
        .clone()
        .map(|k| Kubectl::new(k).cached(cache.path()));
    // Fill the cache once; every timed run then finds each render there.
    let r = simulator::gitops::validate_with(&gitops, Some(&crds), None, warm.as_ref())
        .expect("validate");
    assert!(r.is_ok(), "{r}");
    g.bench_function("all_fixtures_render_cache_warm", |b| {
        b.iter(|| {
            let r = simulator::gitops::validate_with(&gitops, Some(&crds), None, warm.as_ref())
                .expect("validate");
            assert!(r.is_ok(), "{r}");
            if warm.is_some() {
                assert!(
                    r.notes
                        .iter()
                        .any(|n| n.contains("from the render cache") && !n.contains(" 0 of them")),
                    "{r}"
                );
            }
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
    let (day_apps, events, hash) = day(with_tenants(&repo));
    let day_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let ref_events = day_without_argocd();
    let ref_s = t.elapsed().as_secs_f64();
    assert_eq!(
        day_apps, DAY_APPS,
        "the day case reconciles {DAY_APPS} Applications"
    );
    println!(
        "gitops day: ArgoCD reconciling {day_apps} applications for a simulated day, a node failure every hour, all Synced and Healthy at the end: {day_s:.2}s wall, {events} events, trace-hash {hash} (target <= 5 s); reference, the same day without ArgoCD: {ref_s:.2}s wall, {ref_events} events"
    );

    let rows = [
        Row {
            case: format!(
                "validate --gitops, all fixtures, every kubectl kustomize render run ({})",
                if kubectl.is_some() {
                    "kubectl installed"
                } else {
                    "kubectl NOT installed: in-process only"
                }
            ),
            criterion: Some("gitops_validate/all_fixtures_with_kubectl_kustomize".into()),
            reference: Some("gitops_validate/reference_in_process_only".into()),
            targets: vec![Target::MaxTimeMs(2_000.0)],
            ..Row::default()
        },
        Row {
            case: "validate --gitops, all fixtures, kubectl kustomize renders from a warm cache"
                .into(),
            criterion: Some("gitops_validate/all_fixtures_render_cache_warm".into()),
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
                "simulated day of ArgoCD ({day_apps} apps, all Synced and Healthy at the end), a node failure every hour ({events} events; the cluster alone: {ref_s:.2}s, {ref_events} events)"
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
