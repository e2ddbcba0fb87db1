use simulator::shrink::{random_faults, recovery_failure, shrink, shrink_recovery};
use simulator::timings::MIN;
use simulator::{Fault, Process, ScheduledFault, SimOptions};

use crate::topo;

fn opts(f: &[ScheduledFault]) -> SimOptions {
    SimOptions {
        faults: f.to_vec(),
        ..SimOptions::default()
    }
}

/// Random partitions always cut a link between two different nodes, on every topology (a node
/// partitioned from itself was drawn before), and a one-node topology gets none.
#[test]
fn random_partitions_are_between_two_different_nodes() {
    for name in ["mlworkbench-kvm", "fluodata-proxmox", "k3s-single"] {
        let t = topo(name);
        let mut partitions = 0;
        for seed in 0..40 {
            for f in random_faults(&t, seed, 20, 60 * MIN) {
                if let Fault::Partition { a, b } = &f.fault {
                    partitions += 1;
                    assert!(
                        a.iter().all(|n| !b.contains(n)),
                        "{name} seed {seed}: {a:?} | {b:?}"
                    );
                }
            }
        }
        assert_eq!(
            partitions == 0,
            t.nodes.len() == 1,
            "{name}: {partitions} partitions"
        );
    }
}

#[test]
fn shrinking_keeps_only_the_faults_that_break_recovery() {
    let t = topo("mlworkbench-kvm");
    let mut faults = random_faults(&t, 3, 6, 60 * MIN);
    // two member losses: quorum can never come back
    faults.push(ScheduledFault {
        at: 20 * MIN,
        fault: Fault::EtcdMemberLoss {
            node: "talos-k8s-1".into(),
        },
    });
    faults.push(ScheduledFault {
        at: 25 * MIN,
        fault: Fault::EtcdMemberLoss {
            node: "talos-k8s-3".into(),
        },
    });
    faults.retain(
        |f| !matches!(f.fault, Fault::EtcdMemberLoss { ref node } if node == "talos-k8s-2"),
    );
    faults.sort_by_key(|f| f.at);
    let settle = 15 * MIN;
    assert!(recovery_failure(&t, 3, &opts(&faults), settle).is_some());
    let (min, runs) = shrink(&faults, |c| {
        recovery_failure(&t, 3, &opts(c), settle).is_some()
    });
    assert!(runs > 0);
    assert!(min.len() <= 2, "shrunk to {min:?}");
    assert!(recovery_failure(&t, 3, &opts(&min), settle).is_some());
    // and no single fault of it is enough on its own when two are needed
    if min.len() == 2 {
        for f in &min {
            assert!(recovery_failure(&t, 3, &opts(std::slice::from_ref(f)), settle).is_none());
        }
    }
}

/// r_shrink_same_failure: a schedule that breaks recovery in one way (two etcd members lost: no
/// API) contains a fault that breaks it in another way on its own (a kubelet killed for good:
/// a node never Ready). Shrinking must keep the original failure, not slide to the other one.
#[test]
fn r_shrink_same_failure() {
    let t = topo("mlworkbench-kvm");
    let faults = vec![
        ScheduledFault {
            at: 10 * MIN,
            fault: Fault::KillProcess {
                node: "talos-k8s-1".into(),
                process: Process::Kubelet,
            },
        },
        ScheduledFault {
            at: 20 * MIN,
            fault: Fault::EtcdMemberLoss {
                node: "talos-k8s-2".into(),
            },
        },
        ScheduledFault {
            at: 25 * MIN,
            fault: Fault::EtcdMemberLoss {
                node: "talos-k8s-3".into(),
            },
        },
    ];
    let settle = 15 * MIN;
    let full = recovery_failure(&t, 5, &opts(&faults), settle).expect("the schedule fails");
    assert_eq!(full.kind, "api-unavailable", "{full}");
    // the kubelet kill alone fails too, but differently
    let alone = recovery_failure(&t, 5, &opts(&faults[..1]), settle).expect("kubelet kill fails");
    assert_eq!(alone.kind, "nodes-not-ready", "{alone}");

    let sh = shrink_recovery(&t, 5, &opts(&faults), settle).expect("something to shrink");
    assert_eq!(sh.original, full);
    assert_eq!(sh.failure.kind, full.kind, "shrunk to {:?}", sh.faults);
    let losses = sh
        .faults
        .iter()
        .filter(|f| matches!(f.fault, Fault::EtcdMemberLoss { .. }))
        .count();
    assert_eq!(sh.faults.len(), 2, "shrunk to {:?}", sh.faults);
    assert_eq!(losses, 2, "shrunk to {:?}", sh.faults);
}
