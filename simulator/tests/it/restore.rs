//! Regression tests for a node that dies and is restored: etcd restarts from the member's
//! persisted Raft state, and a StatefulSet on local-path storage stays pinned to its node.

use simulator::timings::{MIN, TALOS_BOOT_US};
use simulator::topology::{Bytes, Cpu, VolumeSpec, WorkloadKind, WorkloadSpec};
use simulator::{Fault, Sim, SimOptions, Stop};

use crate::{boot, sim, topo};

/// The scenario mlworkbench-statefulset-local-path-pinned: PostgreSQL as a one-replica
/// StatefulSet on local-path, pinned to talos-k8s-3 by its hostname label.
fn mlworkbench_with_pinned_pg() -> Sim {
    let mut t = topo("mlworkbench-kvm");
    let host = "kubernetes.io/hostname";
    for n in &mut t.nodes {
        n.labels.insert(host.into(), n.name.clone());
    }
    t.workloads.push(WorkloadSpec {
        kind: WorkloadKind::StatefulSet,
        name: "pg-fl-metadata".into(),
        namespace: "databases".into(),
        replicas: 1,
        cpu: Cpu(500),
        memory: Bytes(1 << 30),
        priority_class: None,
        volumes: vec![VolumeSpec {
            name: "data".into(),
            size: Bytes(1 << 30),
            storage_class: Some("local-path".into()),
        }],
        tolerations: Vec::new(),
        node_selector: [(host.to_string(), "talos-k8s-3".to_string())].into(),
        service: true,
        pod_management_policy: Default::default(),
        source: Some("test".into()),
    });
    Sim::new(t, 42, SimOptions::default())
}

/// r_local_path_pinned_statefulset: Talos reserves 50m CPU and 512Mi on a control-plane node, so
/// the documented 2-CPU fl-coordinator cannot take all of talos-k8s-3 and the pinned PostgreSQL
/// pod runs there; when the node dies the pod stays bound to it (its volume is there) and runs
/// again only after the node is back.
#[test]
fn r_local_path_pinned_statefulset() {
    let mut s = mlworkbench_with_pinned_pg();
    let pg_ready = |w: &simulator::World| {
        w.workload(WorkloadKind::StatefulSet, "databases", "pg-fl-metadata")
            .map_or(0, |x| x.ready_replicas)
    };
    let stop = s.run_until_pred(30 * MIN, 50_000_000, |w| pg_ready(w) >= 1);
    let why = s.world().unschedulable();
    assert_eq!(stop, Stop::Predicate, "pg never ready: {why:?}");
    let pod_node = |s: &Sim| {
        s.world()
            .pod("databases", "pg-fl-metadata-0")
            .and_then(|p| s.world().pod_node(p).map(str::to_string))
    };
    assert_eq!(pod_node(&s).as_deref(), Some("talos-k8s-3"));
    // allocatable, not capacity: a 2-CPU request never fits a 2-vCPU Talos node
    let n = s.world().node("talos-k8s-3").unwrap();
    assert_eq!(n.cpu.0, 1_950);
    assert!(
        why.iter().any(
            |(p, r)| p.starts_with("mlworkbench/fl-coordinator") && r.contains("can never fit")
        ),
        "{why:?}"
    );

    s.inject(Fault::KillNode {
        node: "talos-k8s-3".into(),
    });
    let killed = s.now();
    s.run_until(killed + 10 * MIN);
    assert!(s.world().etcd_status().quorum);
    assert!(!s.world().node("talos-k8s-3").unwrap().ready);
    assert_eq!(pg_ready(s.world()), 0);
    // not rescheduled anywhere else: still bound to the dead node (terminating after eviction)
    assert_eq!(pod_node(&s).as_deref(), Some("talos-k8s-3"));

    s.inject(Fault::RestoreNode {
        node: "talos-k8s-3".into(),
    });
    let restored = s.now();
    let stop = s.run_until_pred(restored + 10 * MIN, 50_000_000, |w| pg_ready(w) >= 1);
    assert_eq!(
        stop,
        Stop::Predicate,
        "pg did not come back: {:?}",
        s.world().unschedulable()
    );
    assert_eq!(pod_node(&s).as_deref(), Some("talos-k8s-3"));
    // it waited for the VM to boot
    assert!(s.now() - restored >= TALOS_BOOT_US);
}

/// r_etcd_restarts_from_persisted_state: a single-member etcd loses its node; after the VM is
/// restored and boots, the member restarts from the hard state and log on its disk (term and
/// commit index not lower than before), elects itself again and the API comes back.
#[test]
fn r_etcd_restarts_from_persisted_state() {
    let mut s = sim("talos-unraid", 21);
    boot(&mut s);
    let before = s.world().etcd_status();
    let m0 = before.members[0].clone();
    assert!(
        before.quorum && m0.term >= 1 && m0.commit >= 1,
        "{before:?}"
    );
    s.inject(Fault::KillNode {
        node: "talos-cp".into(),
    });
    s.run_until(s.now() + 5 * MIN);
    let down = s.world().etcd_status();
    assert!(!down.quorum);
    // stopped, but its persisted state is kept
    assert_eq!(down.members[0].term, m0.term);
    assert_eq!(down.members[0].commit, m0.commit);
    s.inject(Fault::RestoreNode {
        node: "talos-cp".into(),
    });
    let restored = s.now();
    let stop = s.run_until_pred(restored + 10 * MIN, 50_000_000, |w| w.etcd_status().quorum);
    assert_eq!(stop, Stop::Predicate, "{:?}", s.world().etcd_status());
    let after = s.world().etcd_status();
    assert_eq!(after.leader.as_deref(), Some("talos-cp"));
    assert!(after.members[0].term > m0.term, "{after:?} vs {m0:?}");
    assert!(after.members[0].commit >= m0.commit, "{after:?} vs {m0:?}");
    // the member started only after the VM booted
    assert!(s.now() - restored >= TALOS_BOOT_US);
    let ready = s.run_until_pred(s.now() + MIN, 50_000_000, |w| {
        w.api_available() && w.node("talos-cp").is_some_and(|n| n.ready)
    });
    assert_eq!(ready, Stop::Predicate);
}

/// r_k3s_server_restart_takes_its_start_time: restoring the killed K3s server process does not
/// bring the API back at once: the server (apiserver, datastore, embedded kubelet) serves after
/// its start time, and only then does the node post status again.
#[test]
fn r_k3s_server_restart_takes_its_start_time() {
    use simulator::Process;
    use simulator::timings::K3S_SERVER_START_US;
    let mut s = sim("k3s-single", 8);
    boot(&mut s);
    let node = s.world().nodes()[0].name.clone();
    s.inject(Fault::KillProcess {
        node: node.clone(),
        process: Process::Apiserver,
    });
    assert!(!s.world().api_available());
    s.run_until(s.now() + 3 * MIN);
    s.inject(Fault::RestoreProcess {
        node: node.clone(),
        process: Process::Apiserver,
    });
    let restored = s.now();
    assert!(
        !s.world().api_available(),
        "the server serves before it started"
    );
    let stop = s.run_until_pred(restored + 5 * MIN, 10_000_000, |w| w.api_available());
    assert_eq!(stop, Stop::Predicate);
    assert_eq!(s.now() - restored, K3S_SERVER_START_US);
    // a second kill while it starts voids that start
    s.inject(Fault::KillProcess {
        node: node.clone(),
        process: Process::Apiserver,
    });
    s.inject(Fault::RestoreProcess {
        node: node.clone(),
        process: Process::Apiserver,
    });
    s.inject(Fault::KillProcess {
        node: node.clone(),
        process: Process::Apiserver,
    });
    s.run_until(s.now() + 2 * K3S_SERVER_START_US);
    assert!(!s.world().api_available());
}
