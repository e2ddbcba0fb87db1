//! ArgoCD reconciling the mlworkbench app-of-apps on the simulated mlworkbench-kvm cluster:
//! convergence wave by wave, a planted unhealthy resource blocking its wave, self-heal of a hand
//! edit, a broken commit, determinism.

use std::path::{Path, PathBuf};

use simulator::gitops::argo::{AppHealth, ArgoCd, Phase, SyncStatus};
use simulator::gitops::loader::read_repo;
use simulator::gitops::repo::Repo;
use simulator::timings::MIN;
use simulator::topology::WorkloadKind;
use simulator::{ModelId, Sim, SimOptions, Stop, Topology};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures")
}

fn mlworkbench() -> Repo {
    read_repo(&root().join("gitops/mlworkbench")).expect("read mlworkbench tree")
}

/// An empty mlworkbench-kvm cluster (no documented workloads), nodes Ready.
fn empty_cluster(seed: u64) -> Sim {
    let topo = Topology::load(&root().join("topologies/mlworkbench-kvm.yaml")).expect("topology");
    let options = SimOptions {
        apply_topology_workloads: false,
        ..SimOptions::default()
    };
    let mut sim = Sim::new(topo, seed, options);
    let stop = sim.run_until_pred(30 * MIN, 50_000_000, |w| w.nodes_ready());
    assert_eq!(
        stop,
        Stop::Predicate,
        "cluster did not boot: {}",
        sim.repro()
    );
    sim
}

fn argo(sim: &Sim, id: ModelId) -> &ArgoCd {
    sim.model::<ArgoCd>(id).expect("argocd model")
}

/// Runs until every Application of the tree is Synced and Healthy (at most `limit`).
fn converge(sim: &mut Sim, id: ModelId, limit: u64) -> Stop {
    let deadline = sim.now() + limit;
    let mut stop = Stop::Deadline;
    while sim.now() < deadline {
        stop = sim.run_until(sim.now() + 10_000_000);
        if argo(sim, id).converged() {
            return Stop::Predicate;
        }
        if stop != Stop::Deadline {
            return stop;
        }
    }
    stop
}

fn with_file(repo: &Repo, file: &str, from: &str, to: &str) -> Repo {
    let mut files = repo.files.clone();
    let text = files
        .get(file)
        .unwrap_or_else(|| panic!("no {file}"))
        .clone();
    assert!(text.contains(from), "{file} does not contain {from:?}");
    files.insert(file.to_string(), text.replacen(from, to, 1));
    Repo::new(repo.revision + 1, files)
}

fn dump(sim: &Sim) -> String {
    sim.model_summaries().join("\n")
}

#[test]
fn mlworkbench_converges_from_empty_wave_by_wave() {
    let mut sim = empty_cluster(7);
    let t0 = sim.now();
    let id = ArgoCd::start(&mut sim, mlworkbench());
    let stop = converge(&mut sim, id, 60 * MIN);
    assert_eq!(stop, Stop::Predicate, "did not converge:\n{}", dump(&sim));
    let a = argo(&sim, id);
    let apps = a.apps();
    assert!(apps.len() >= 19, "{apps:?}");
    for name in [
        "root-app",
        "foundation-app",
        "platform-app",
        "airflow",
        "cert-manager",
    ] {
        let s = a.status(name).unwrap_or_else(|| panic!("no app {name}"));
        assert_eq!(
            (s.sync, s.health),
            (SyncStatus::Synced, AppHealth::Healthy),
            "{s:?}"
        );
        assert!(s.synced_healthy_at.is_some_and(|t| t > t0), "{s:?}");
    }
    // root-app's waves: foundation-app (wave 0) healthy before platform-app's wave (1) starts.
    let root: Vec<_> = a
        .wave_events()
        .iter()
        .filter(|w| w.app == "root-app")
        .collect();
    let w0 = root.iter().find(|w| w.wave == 0).expect("root wave 0");
    let w1 = root.iter().find(|w| w.wave == 1).expect("root wave 1");
    assert!(w0.healthy_at <= w1.started, "{root:?}");
    // The foundation is healthy before any platform app syncs.
    let platform_first = a
        .wave_events()
        .iter()
        .filter(|w| w.app == "airflow")
        .map(|w| w.started)
        .min()
        .expect("airflow waves");
    assert!(w0.healthy_at <= platform_first);
    // Every app's waves complete in ascending (phase, wave) order.
    for app in &apps {
        let ws: Vec<_> = a.wave_events().iter().filter(|w| &w.app == app).collect();
        for pair in ws.windows(2) {
            if pair[0].healthy_at <= pair[1].started {
                assert!(
                    (pair[0].phase, pair[0].wave) < (pair[1].phase, pair[1].wave)
                        || pair[1].phase == Phase::PreSync,
                    "{app}: {pair:?}"
                );
            }
        }
    }
    // The fl-coordinator's PreSync migration hook ran and was deleted.
    assert!(
        a.wave_events()
            .iter()
            .any(|w| w.app == "fl-coordinator" && w.phase == Phase::PreSync && w.wave == 0),
        "{:?}",
        a.wave_events()
    );
    assert!(
        sim.world()
            .workload(WorkloadKind::Deployment, "mlworkbench", "fl-db-migrate")
            .is_none()
    );
}

/// Converged mlworkbench on seed `seed`: (sim, model id).
fn converged(seed: u64) -> (Sim, ModelId) {
    let mut sim = empty_cluster(seed);
    let id = ArgoCd::start(&mut sim, mlworkbench());
    let stop = converge(&mut sim, id, 60 * MIN);
    assert_eq!(stop, Stop::Predicate, "did not converge:\n{}", dump(&sim));
    (sim, id)
}

#[test]
fn unschedulable_request_blocks_its_wave_and_is_named() {
    let repo = with_file(
        &mlworkbench(),
        "namespaces/minio/minio.yaml",
        "cpu: \"250m\"",
        "cpu: \"16\"",
    );
    let mut sim = empty_cluster(3);
    let id = ArgoCd::start(&mut sim, repo);
    let stop = converge(&mut sim, id, 30 * MIN);
    assert_eq!(stop, Stop::Deadline, "{}", dump(&sim));
    let a = argo(&sim, id);
    let minio = a.status("minio").expect("minio app");
    assert_eq!(minio.health, AppHealth::Degraded, "{minio:?}");
    assert!(
        minio.health_message.contains("Deployment minio/minio"),
        "{minio:?}"
    );
    assert!(minio.health_message.contains("unschedulable"), "{minio:?}");
    // platform-app waits at wave 0 on the minio Application; wave 1 apps are never created.
    let platform = a.status("platform-app").expect("platform app");
    let b = platform.blocked.expect("platform-app blocked");
    assert_eq!((b.phase, b.wave), (Phase::Sync, 0), "{b:?}");
    assert_eq!(b.object, "Application argocd/minio");
    assert!(b.reason.contains("unschedulable"), "{b:?}");
    assert!(a.status("airflow").is_none(), "{:?}", a.apps());
    // The minio app's own sync is blocked by the Deployment itself.
    assert!(
        a.blocked()
            .iter()
            .any(|(app, b)| app == "minio" && b.object == "Deployment minio/minio"),
        "{:?}",
        a.blocked()
    );
    // Other wave-0 apps converged regardless.
    assert_eq!(a.status("redis").expect("redis").health, AppHealth::Healthy);
}

#[test]
fn hand_edit_is_self_healed_and_new_image_tag_rolls_out() {
    let (mut sim, id) = converged(5);
    let mut spec = sim
        .world()
        .workload(WorkloadKind::Deployment, "minio", "minio")
        .expect("minio deployment")
        .spec
        .clone();
    let desired = spec.clone();
    spec.replicas = 0;
    sim.world_mut()
        .apply(simulator::Object::Workload(spec))
        .expect("hand edit");
    let edited_at = sim.now();
    // The controller watches what it manages: the change is seen at once and selfHeal syncs it
    // back SELF_HEAL_TIMEOUT after the previous sync at the latest, not at the next periodic
    // reconcile (120 s + jitter).
    sim.run_until(edited_at + 10 * simulator::timings::SEC);
    let trace = sim.trace().entries();
    let seen_out_of_sync = trace.iter().any(|e| {
        e.at >= edited_at
            && matches!(&e.event, simulator::TraceEvent::Ext { kind, detail, .. }
                if kind == "status" && detail.starts_with("minio: OutOfSync"))
    });
    assert!(seen_out_of_sync, "{}", dump(&sim));
    let healed_at = trace
        .iter()
        .find(|e| {
            e.at >= edited_at
                && matches!(&e.event, simulator::TraceEvent::Ext { kind, detail, .. }
                    if kind == "self-heal" && detail == "minio")
        })
        .map(|e| e.at)
        .expect("self-heal sync of minio");
    assert!(
        healed_at - edited_at
            <= simulator::gitops::argo::SELF_HEAL_TIMEOUT + simulator::timings::SEC,
        "self-heal {} after the edit",
        simulator::fmt_time(healed_at - edited_at)
    );
    let live = &sim
        .world()
        .workload(WorkloadKind::Deployment, "minio", "minio")
        .expect("minio deployment")
        .spec;
    assert_eq!(*live, desired);
    sim.run_until(sim.now() + 2 * MIN);
    let s = argo(&sim, id).status("minio").expect("minio");
    assert_eq!(
        (s.sync, s.health),
        (SyncStatus::Synced, AppHealth::Healthy),
        "{s:?}"
    );

    // A new image tag: OutOfSync in Git only, synced at the next reconcile.
    let repo = with_file(
        &mlworkbench(),
        "namespaces/minio/minio.yaml",
        "minio:RELEASE.2024-11-07T00-52-20Z",
        "minio:RELEASE.2025-01-20T14-49-07Z",
    );
    let at = sim.now() + simulator::timings::SEC;
    sim.model_mut::<ArgoCd>(id).expect("model").commit(at, repo);
    sim.run_until(sim.now() + 4 * MIN);
    let s = argo(&sim, id).status("minio").expect("minio");
    assert_eq!(s.synced_revision, Some(1), "{s:?}");
    assert_eq!(s.sync, SyncStatus::Synced, "{s:?}");
}

#[test]
fn broken_commits_leave_the_app_out_of_sync_with_the_reason() {
    let (mut sim, id) = converged(9);
    let base = mlworkbench();
    // A manifest the API refuses: the sync fails, retries with backoff, then stays failed.
    let refused = with_file(
        &base,
        "namespaces/databases/redis/redis.yaml",
        "      containers:",
        "      priorityClassName: does-not-exist\n      containers:",
    );
    let at = sim.now() + simulator::timings::SEC;
    sim.model_mut::<ArgoCd>(id)
        .expect("model")
        .commit(at, refused);
    sim.run_until(sim.now() + 20 * MIN);
    let s = argo(&sim, id).status("redis").expect("redis");
    assert_eq!(s.sync, SyncStatus::OutOfSync, "{s:?}");
    let cond = s.condition.clone().expect("condition");
    assert!(
        cond.contains("SyncFailed") && cond.contains("does-not-exist"),
        "{cond}"
    );
    // First attempt plus the Application's `retry.limit: 5`, then no more for that revision.
    assert_eq!(s.sync_attempts, 1 + 6, "{s:?}");
    assert_eq!(s.synced_revision, Some(0), "{s:?}");

    // A manifest that does not parse: ComparisonError naming the file.
    let garbled = with_file(
        &base,
        "namespaces/databases/redis/redis.yaml",
        "kind: Deployment",
        "kind: [Deployment",
    );
    let garbled = Repo::new(2, garbled.files);
    let at = sim.now() + simulator::timings::SEC;
    sim.model_mut::<ArgoCd>(id)
        .expect("model")
        .commit(at, garbled);
    sim.run_until(sim.now() + 4 * MIN);
    let s = argo(&sim, id).status("redis").expect("redis");
    assert_eq!(s.sync, SyncStatus::Unknown, "{s:?}");
    let cond = s.condition.clone().expect("condition");
    assert!(
        cond.contains("ComparisonError") && cond.contains("redis.yaml"),
        "{cond}"
    );
    // The live objects were not pruned by the unrenderable revision.
    assert!(
        sim.world()
            .workload(WorkloadKind::Deployment, "databases", "redis")
            .is_some()
    );
}

#[test]
fn same_seed_same_trace() {
    let (a, _) = converged(21);
    let (b, _) = converged(21);
    assert_eq!(a.trace_hash(), b.trace_hash());
    assert_eq!(a.now(), b.now());
}

#[test]
fn mlops_flux_tree_converges_in_depends_on_order() {
    use simulator::gitops::flux::Flux;
    let topo = Topology::load(&root().join("topologies/mlops-flux.yaml")).expect("topology");
    let options = SimOptions {
        apply_topology_workloads: false,
        ..SimOptions::default()
    };
    let mut sim = Sim::new(topo, 4, options);
    let stop = sim.run_until_pred(30 * MIN, 50_000_000, |w| w.nodes_ready());
    assert_eq!(
        stop,
        Stop::Predicate,
        "cluster did not boot: {}",
        sim.repro()
    );
    let repo = read_repo(&root().join("gitops/mlops")).expect("read mlops tree");
    let tree = simulator::gitops::tree::Tree::build(&repo);
    let id = Flux::start(&mut sim, repo);
    let deadline = sim.now() + 60 * MIN;
    while sim.now() < deadline && !sim.model::<Flux>(id).expect("flux").converged() {
        sim.run_until(sim.now() + 10_000_000);
    }
    let flux = sim.model::<Flux>(id).expect("flux");
    assert!(flux.converged(), "{}", dump(&sim));
    let mut checked = 0;
    for u in &tree.units {
        let applied = flux.first_applied(&u.name).expect("applied");
        for d in &u.depends_on {
            let ready = flux
                .ready_order()
                .iter()
                .find(|(n, _)| n == d)
                .map(|(_, t)| *t)
                .expect("dependency ready");
            assert!(ready <= applied, "{} applied before {d} was ready", u.name);
            checked += 1;
        }
    }
    assert!(checked >= 5, "{checked}");
}

#[test]
fn k3s_application_sets_create_their_applications_and_converge() {
    let topo = Topology::load(&root().join("topologies/k3s-single.yaml")).expect("topology");
    let options = SimOptions {
        apply_topology_workloads: false,
        ..SimOptions::default()
    };
    let mut sim = Sim::new(topo, 6, options);
    let stop = sim.run_until_pred(30 * MIN, 50_000_000, |w| w.nodes_ready());
    assert_eq!(
        stop,
        Stop::Predicate,
        "cluster did not boot: {}",
        sim.repro()
    );
    let repo = read_repo(&root().join("gitops/k3s")).expect("read k3s tree");
    let id = ArgoCd::start(&mut sim, repo);
    let stop = converge(&mut sim, id, 60 * MIN);
    assert_eq!(stop, Stop::Predicate, "did not converge:\n{}", dump(&sim));
    let a = argo(&sim, id);
    // root-app, platform, applicationsets and the 13 generated applications.
    assert!(a.apps().len() >= 16, "{:?}", a.apps());
    for app in ["metallb", "redis", "mlflow", "monitoring-grafana"] {
        let s = a
            .status(app)
            .unwrap_or_else(|| panic!("no app {app}: {:?}", a.apps()));
        assert_eq!(
            (s.sync, s.health),
            (SyncStatus::Synced, AppHealth::Healthy),
            "{s:?}"
        );
    }
    assert!(
        sim.world()
            .workload(WorkloadKind::Deployment, "data", "redis")
            .is_some()
    );
}
