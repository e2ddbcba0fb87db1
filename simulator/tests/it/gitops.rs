//! Offline GitOps validation: the real fixtures are clean, planted errors are found with file,
//! object and field.

use std::path::{Path, PathBuf};

use simulator::gitops::{
    Capacity, Finding, Kubectl, NodeCapacity, Report, loader, validate, validate_with,
};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures")
}

/// mlworkbench-kvm as doc 000 sizes it: 3 schedulable control-plane VMs, 2 vCPU, 8 GB each.
fn mlworkbench_kvm() -> Capacity {
    Capacity {
        name: "mlworkbench-kvm".into(),
        kubernetes_version: "v1.34.1".into(),
        nodes: (1..=3)
            .map(|i| NodeCapacity {
                name: format!("talos-k8s-{i}"),
                cpu_millis: 2000,
                memory_bytes: 8 << 30,
                schedulable: true,
            })
            .collect(),
        quotas: Vec::new(),
        source: "fixtures/topologies/mlworkbench-kvm.yaml".into(),
    }
}

/// A topology fixture as `cargo xtask validate --topology` reads it.
fn topology(name: &str) -> Capacity {
    let file = format!("fixtures/topologies/{name}.yaml");
    let topo = simulator::Topology::load(&fixtures().join(format!("topologies/{name}.yaml")))
        .expect("topology");
    Capacity::of_topology(&topo, &file)
}

/// A temp copy of one platform tree plus the CRDs, for planting errors.
fn copy_platform(platform: &str) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().expect("temp dir");
    copy_dir(
        &fixtures().join("gitops").join(platform),
        &tmp.path().join(platform),
    );
    copy_dir(&fixtures().join("crds"), &tmp.path().join("crds"));
    tmp
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read fixture dir") {
        let p = e.expect("entry").path();
        let dest = to.join(p.file_name().expect("name"));
        if p.is_dir() {
            copy_dir(&p, &dest);
        } else {
            std::fs::copy(&p, &dest).expect("copy");
        }
    }
}

fn edit(root: &Path, file: &str, from: &str, to: &str) {
    let path = root.join(file);
    let text = std::fs::read_to_string(&path).expect("read");
    assert!(text.contains(from), "{file} does not contain {from:?}");
    std::fs::write(&path, text.replacen(from, to, 1)).expect("write");
}

fn run(tmp: &tempfile::TempDir, capacity: Option<&Capacity>) -> Report {
    validate_with(tmp.path(), Some(&tmp.path().join("crds")), capacity, None).expect("validate")
}

fn find<'a>(report: &'a Report, file: &str, object: &str, field: &str) -> &'a Finding {
    report
        .findings
        .iter()
        .find(|f| f.file == file && f.object == object && f.field == field)
        .unwrap_or_else(|| panic!("no finding for {file} / {object} / {field} in:\n{report}"))
}

#[test]
fn real_fixtures_are_clean() {
    // With kubectl where `cargo xtask setup gitops` puts it too, as `cargo xtask validate` does.
    let kubectl = kubectl().map(Kubectl::new);
    let report = validate_with(
        &fixtures().join("gitops"),
        Some(&fixtures().join("crds")),
        None,
        kubectl.as_ref(),
    )
    .expect("validate fixtures");
    assert!(report.is_ok(), "{report}");
    let note = report
        .notes
        .iter()
        .find(|n| n.starts_with("kustomize:"))
        .expect("kustomize note");
    match &kubectl {
        Some(_) => assert!(
            note.contains("12 kustomizations also rendered by `kubectl kustomize`"),
            "{note}"
        ),
        None => assert!(note.contains("kubectl not installed"), "{note}"),
    }
    assert_eq!(report.repos, ["fluodata", "k3s", "mlops", "mlworkbench"]);
    // root, foundation, platform and 16 leaf apps; ApplicationSets expand to 13 apps.
    assert!(report.units >= 45, "{report}");
    assert!(report.objects_checked >= 150, "{report}");
    assert!(
        report
            .notes
            .iter()
            .any(|n| n.contains("estimated, not rendered: argocd, cert-manager")),
        "{report}"
    );
}

#[test]
fn mlworkbench_fits_the_kvm_topology() {
    let report = validate(
        &fixtures().join("gitops/mlworkbench"),
        Some(&mlworkbench_kvm()),
    )
    .expect("validate");
    assert!(report.is_ok(), "{report}");
    assert!(
        report.notes[0].contains("the topology's version (v1.34.1)"),
        "{report}"
    );
}

#[test]
fn planted_misspelled_field_names_file_object_and_field() {
    let tmp = copy_platform("mlworkbench");
    let root = tmp.path().join("mlworkbench");
    edit(
        &root,
        "namespaces/minio/minio.yaml",
        "  storageClassName: local-path",
        "  storageClasName: local-path",
    );
    let report = run(&tmp, None);
    let f = find(
        &report,
        "mlworkbench/namespaces/minio/minio.yaml",
        "PersistentVolumeClaim minio/minio-data",
        "spec.storageClasName",
    );
    assert!(
        f.message.contains("did you mean \"storageClassName\""),
        "{f}"
    );
    assert_eq!(report.findings.len(), 1, "{report}");
}

#[test]
fn planted_wrong_field_in_a_crd_object() {
    let tmp = copy_platform("mlworkbench");
    edit(
        &tmp.path().join("mlworkbench"),
        "argocd-apps/platform/redis.yaml",
        "      selfHeal: true",
        "      selfheal: true",
    );
    let report = run(&tmp, None);
    find(
        &report,
        "mlworkbench/argocd-apps/platform/redis.yaml",
        "Application argocd/redis",
        "spec.syncPolicy.automated.selfheal",
    );
}

#[test]
fn planted_missing_path() {
    let tmp = copy_platform("mlworkbench");
    edit(
        &tmp.path().join("mlworkbench"),
        "argocd-apps/platform/mlflow.yaml",
        "path: namespaces/mlflow",
        "path: namespaces/mlflw",
    );
    let report = run(&tmp, None);
    let f = find(
        &report,
        "mlworkbench/argocd-apps/platform/mlflow.yaml",
        "Application argocd/mlflow",
        "spec.source.path",
    );
    assert!(
        f.message.contains("\"namespaces/mlflw\" does not exist"),
        "{f}"
    );
}

#[test]
fn planted_cycle() {
    let tmp = copy_platform("mlworkbench");
    let root = tmp.path().join("mlworkbench");
    // platform-app's directory gets an Application that renders argocd-apps again.
    let text = std::fs::read_to_string(root.join("bootstrap/root-app.yaml")).expect("read");
    std::fs::write(
        root.join("argocd-apps/platform/again.yaml"),
        text.replace("name: root-app", "name: platform-app"),
    )
    .expect("write");
    let report = run(&tmp, None);
    let f = find(
        &report,
        "mlworkbench/argocd-apps/platform/again.yaml",
        "Application argocd/platform-app",
        "spec.source.path",
    );
    assert!(
        f.message.contains("cycle: platform-app -> platform-app"),
        "{f}"
    );
}

#[test]
fn planted_duplicate_application_names_both_owners() {
    let tmp = copy_platform("mlworkbench");
    let root = tmp.path().join("mlworkbench");
    // A second Application "mlflow", in the foundation apps' directory.
    let text =
        std::fs::read_to_string(root.join("argocd-apps/platform/mlflow.yaml")).expect("read");
    std::fs::write(root.join("argocd-apps/foundation/mlflow-again.yaml"), text).expect("write");
    let report = run(&tmp, None);
    let f = find(
        &report,
        "mlworkbench/argocd-apps/platform/mlflow.yaml",
        "Application argocd/mlflow",
        "metadata.name",
    );
    assert!(
        f.message.contains("defined twice")
            && f.message
                .contains("argocd-apps/foundation/mlflow-again.yaml")
            && f.message.contains("\"foundation-app\"")
            && f.message.contains("\"platform-app\""),
        "{f}"
    );
}

#[test]
fn planted_namespace_used_before_it_exists() {
    let tmp = copy_platform("k3s");
    // The platform app (namespaces, quotas) moves to the same wave as the ApplicationSets.
    edit(
        &tmp.path().join("k3s"),
        "bootstrap/children/platform.yaml",
        "sync-wave: \"-1\"",
        "sync-wave: \"0\"",
    );
    let report = run(&tmp, None);
    let f = find(
        &report,
        "k3s/apps/ml-platform/mlflow/mlflow.yaml",
        "Deployment mlflow/mlflow",
        "metadata.namespace",
    );
    assert!(f.message.contains("not created before"), "{f}");
}

#[test]
fn planted_quota_overflow() {
    let tmp = copy_platform("k3s");
    edit(
        &tmp.path().join("k3s"),
        "apps/ml-platform/mlflow/mlflow.yaml",
        "memory: 1Gi",
        "memory: 2Gi",
    );
    let report = run(&tmp, None);
    let f = find(
        &report,
        "k3s/platform/namespaces-and-quotas.yaml",
        "ResourceQuota mlflow/mlflow-quota",
        "spec.hard.requests.memory",
    );
    assert!(
        f.message
            .contains("2Gi in namespace \"mlflow\", over its quota of 1Gi"),
        "{f}"
    );
}

#[test]
fn planted_request_larger_than_any_node() {
    let tmp = copy_platform("mlworkbench");
    // The OVH overlay keeps the document's 4 CPU / 16Gi per FL worker.
    edit(
        &tmp.path().join("mlworkbench"),
        "argocd-apps/platform/fl-workers.yaml",
        "fl-worker/overlays/local",
        "fl-worker/overlays/ovh",
    );
    let report = run(&tmp, Some(&mlworkbench_kvm()));
    let f = find(
        &report,
        "mlworkbench/namespaces/mlworkbench/fl-worker/base/worker.yaml",
        "StatefulSet mlworkbench/fl-worker",
        "spec.template.spec.containers[*].resources.requests",
    );
    assert!(f.message.contains("4 CPU / 16Gi"), "{f}");
}

#[test]
fn planted_flux_depends_on_missing_target() {
    let tmp = copy_platform("mlops");
    edit(
        &tmp.path().join("mlops"),
        "clusters/production/ml-lifecycle.yaml",
        "- name: orchestration",
        "- name: orchestrashun",
    );
    let report = run(&tmp, None);
    let f = find(
        &report,
        "mlops/clusters/production/ml-lifecycle.yaml",
        "Kustomization flux-system/ml-lifecycle",
        "spec.dependsOn[0].name",
    );
    assert!(
        f.message.contains("\"orchestrashun\" does not exist"),
        "{f}"
    );
}

#[test]
fn planted_flux_namespace_without_depends_on() {
    let tmp = copy_platform("mlops");
    // observability no longer waits for base, which creates its namespace.
    edit(
        &tmp.path().join("mlops"),
        "clusters/production/observability.yaml",
        "  dependsOn:\n    - name: base\n",
        "",
    );
    let report = run(&tmp, None);
    find(
        &report,
        "mlops/apps/observability/prometheus.yaml",
        "Deployment observability/prometheus",
        "metadata.namespace",
    );
}

#[test]
fn version_outside_the_window_is_said() {
    let mut cap = mlworkbench_kvm();
    cap.kubernetes_version = "v1.31.2".into();
    let tmp = copy_platform("mlworkbench");
    let report = run(&tmp, Some(&cap));
    assert!(
        report.notes[0].contains("OUTSIDE k8s-openapi's window 1.33-1.37"),
        "{report}"
    );
}

#[test]
fn a_minimum_version_is_read_and_said_outside_the_window() {
    // mlops-flux's document says "v1.24+".
    let report = validate(
        &fixtures().join("gitops/mlops"),
        Some(&topology("mlops-flux")),
    )
    .expect("validate");
    assert!(
        report.notes[0]
            .contains("the topology runs v1.24+, OUTSIDE k8s-openapi's window 1.33-1.37"),
        "{report}"
    );
}

#[test]
fn k3s_application_sets_expand_to_one_app_per_element_and_directory() {
    let repo =
        simulator::gitops::loader::read_repo(&fixtures().join("gitops/k3s")).expect("read k3s");
    let tree = simulator::gitops::tree::Tree::build(&repo);
    assert!(tree.findings.is_empty(), "{:?}", tree.findings);
    let mut names: Vec<&str> = tree.units.iter().map(|u| u.name.as_str()).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "applicationsets",
            "jupyterhub",
            "localstack",
            "longhorn",
            "metallb",
            "minio",
            "mlflow",
            "monitoring-grafana",
            "monitoring-loki",
            "monitoring-prometheus",
            "platform",
            "postgresql",
            "redis",
            "registry",
            "root-app",
            "traefik"
        ]
    );
    let jupyter = &tree.units[tree.find("jupyterhub").expect("jupyterhub")];
    assert_eq!(jupyter.namespace, "jupyter");
    assert_eq!(jupyter.path.as_deref(), Some("apps/ml-platform/jupyterhub"));
    // platform (wave -1) precedes the ApplicationSets' apps (wave 0 of root-app).
    let platform = &tree.units[tree.find("platform").expect("platform")];
    assert!(platform.order_key(&tree.units) < jupyter.order_key(&tree.units));
}

#[test]
fn mlworkbench_tree_has_root_foundation_and_platform_apps() {
    let repo =
        simulator::gitops::loader::read_repo(&fixtures().join("gitops/mlworkbench")).expect("read");
    let tree = simulator::gitops::tree::Tree::build(&repo);
    assert!(tree.findings.is_empty(), "{:?}", tree.findings);
    assert_eq!(tree.units.len(), 19);
    let objects: usize = tree.units.iter().map(|u| u.objects.len()).sum();
    assert!(objects >= 70, "{objects} objects");
    let parent_of = |n: &str| {
        tree.units[tree.find(n).expect(n)]
            .parent
            .map(|p| tree.units[p].name.as_str())
    };
    assert_eq!(parent_of("foundation-app"), Some("root-app"));
    assert_eq!(parent_of("cert-manager"), Some("foundation-app"));
    assert_eq!(parent_of("fl-workers"), Some("platform-app"));
    assert_eq!(
        tree.units[tree.find("fl-workers").expect("fl-workers")].wave,
        3
    );
}

#[test]
fn planted_yaml_syntax_error_names_file_and_line() {
    let tmp = copy_platform("mlworkbench");
    let root = tmp.path().join("mlworkbench");
    let file = "namespaces/databases/redis/redis.yaml";
    let text = std::fs::read_to_string(root.join(file)).expect("read");
    let line = text
        .lines()
        .position(|l| l == "kind: Deployment")
        .expect("a Deployment document")
        + 1;
    edit(&root, file, "kind: Deployment", "kind: [Deployment");
    let report = run(&tmp, None);
    let f = report
        .findings
        .iter()
        .find(|f| f.file == format!("mlworkbench/{file}") && f.message.contains("invalid YAML"))
        .unwrap_or_else(|| panic!("no YAML finding for {file} in:\n{report}"));
    // The parser stops on the line after the unclosed `[`.
    assert!(
        f.message.contains(&format!("line {}", line + 1)),
        "{f} (the broken line is {line})"
    );
}

#[test]
fn each_platform_tree_fits_its_topology() {
    for (tree, topo) in [
        ("mlworkbench", "mlworkbench-kvm"),
        ("mlworkbench", "mlworkbench-ovh"),
        ("fluodata", "fluodata-proxmox"),
        ("k3s", "k3s-single"),
        ("mlops", "mlops-flux"),
    ] {
        let cap = topology(topo);
        let report = validate(&fixtures().join("gitops").join(tree), Some(&cap)).expect("validate");
        assert!(report.is_ok(), "{tree} on {topo}:\n{report}");
        assert!(
            report
                .notes
                .iter()
                .any(|n| n.starts_with(&format!("capacity: topology \"{topo}\""))),
            "{report}"
        );
    }
}

#[test]
fn topology_capacity_counts_schedulable_nodes_and_quotas() {
    // mlworkbench-kvm: 3 control-plane VMs that run workloads.
    let kvm = topology("mlworkbench-kvm");
    assert_eq!(kvm.nodes.len(), 3);
    assert!(kvm.nodes.iter().all(|n| n.schedulable), "{kvm:?}");
    // Talos reserves CPU and memory on each: less than the VM's 2 vCPU / 8 GB is allocatable.
    assert!(
        kvm.nodes
            .iter()
            .all(|n| n.cpu_millis < 2000 && n.cpu_millis > 1500),
        "{kvm:?}"
    );
    assert_eq!(kvm.kubernetes_version, "v1.34.1");
    // mlworkbench-ovh: the control plane keeps workloads off.
    let ovh = topology("mlworkbench-ovh");
    let schedulable: Vec<&str> = ovh
        .nodes
        .iter()
        .filter(|n| n.schedulable)
        .map(|n| n.name.as_str())
        .collect();
    assert_eq!(schedulable, ["worker-1", "worker-2", "worker-3"]);
    // k3s-single: the document's namespace quotas.
    let k3s = topology("k3s-single");
    let mlflow = k3s
        .quotas
        .iter()
        .find(|q| q.namespace == "mlflow")
        .expect("mlflow quota");
    assert_eq!(mlflow.cpu_millis, Some(1000));
    assert!(mlflow.field.starts_with("namespaces[") && mlflow.field.ends_with("].quota"));
}

#[test]
fn planted_request_over_the_topology_quota_names_the_topology_field() {
    let tmp = copy_platform("k3s");
    let root = tmp.path().join("k3s");
    // Over the tree's own ResourceQuota too: raise that one so only the topology's is exceeded.
    edit(
        &root,
        "platform/namespaces-and-quotas.yaml",
        "namespace: mlflow\nspec:\n  hard:\n    requests.cpu: \"1\"\n    requests.memory: 1Gi",
        "namespace: mlflow\nspec:\n  hard:\n    requests.cpu: \"1\"\n    requests.memory: 4Gi",
    );
    edit(
        &root,
        "apps/ml-platform/mlflow/mlflow.yaml",
        "memory: 1Gi",
        "memory: 2Gi",
    );
    let cap = topology("k3s-single");
    let report = run(&tmp, Some(&cap));
    let q = cap
        .quotas
        .iter()
        .find(|q| q.namespace == "mlflow")
        .expect("quota");
    let f = find(
        &report,
        "fixtures/topologies/k3s-single.yaml",
        "Namespace mlflow",
        &format!("{}.memory", q.field),
    );
    assert!(
        f.message.contains("over topology \"k3s-single\"'s quota"),
        "{f}"
    );
    assert_eq!(report.findings.len(), 1, "{report}");
}

#[test]
fn planted_tree_larger_than_the_topology() {
    let tmp = copy_platform("mlworkbench");
    // 40 FL workers of 100m / 1Gi (the local overlay) do not fit 3 nodes of 2 vCPU / 8 GB.
    edit(
        &tmp.path().join("mlworkbench"),
        "namespaces/mlworkbench/fl-worker/base/worker.yaml",
        "replicas: 5",
        "replicas: 40",
    );
    let report = run(&tmp, Some(&topology("mlworkbench-kvm")));
    assert!(
        report
            .findings
            .iter()
            .any(|f| f.field == "(tree requests.memory)"
                && f.message
                    .contains("more than topology \"mlworkbench-kvm\" allocates")),
        "{report}"
    );
}

/// kubectl on PATH, else where `cargo xtask setup gitops` puts it.
fn kubectl() -> Option<std::path::PathBuf> {
    loader::find_kubectl(&[fixtures().join("../target/tools/kubectl/bin")])
}

#[test]
fn kubectl_renders_are_cached_and_a_changed_input_renders_again() {
    let Some(k) = kubectl() else {
        eprintln!(
            "kubectl not installed (cargo xtask setup gitops): the render cache is not exercised"
        );
        return;
    };
    let tmp = copy_platform("mlworkbench");
    let cache = tempfile::tempdir().expect("cache");
    let kubectl = Kubectl::new(k).cached(cache.path());
    let go = || {
        validate_with(
            tmp.path(),
            Some(&tmp.path().join("crds")),
            None,
            Some(&kubectl),
        )
        .expect("validate")
    };
    let note = |r: &Report| {
        r.notes
            .iter()
            .find(|n| n.starts_with("kustomize:"))
            .cloned()
            .unwrap_or_default()
    };
    let cold = go();
    assert!(cold.is_ok(), "{cold}");
    let n = cold
        .notes
        .iter()
        .find(|n| n.starts_with("kustomize:"))
        .expect("note");
    assert!(n.contains(", 0 of them from the render cache"), "{n}");
    let total: usize = n
        .trim_start_matches("kustomize: ")
        .split(' ')
        .next()
        .and_then(|x| x.parse().ok())
        .expect("count");
    assert!(total >= 5, "{n}");
    let warm = go();
    assert!(warm.is_ok(), "{warm}");
    assert!(
        note(&warm).contains(&format!(", {total} of them from the render cache")),
        "{}",
        note(&warm)
    );
    // A base file changes: both overlays of the FL worker render again, the rest come cached.
    edit(
        &tmp.path().join("mlworkbench"),
        "namespaces/mlworkbench/fl-worker/base/worker.yaml",
        "name: fl-worker",
        "name: fl-worker\n  labels: {planted: \"yes\"}",
    );
    let changed = go();
    assert!(
        note(&changed).contains(&format!(", {} of them from the render cache", total - 3)),
        "{}",
        note(&changed)
    );
    assert!(changed.is_ok(), "{changed}");
}
