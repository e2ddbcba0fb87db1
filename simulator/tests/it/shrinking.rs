use simulator::shrink::{random_faults, recovery_failure, shrink};
use simulator::timings::MIN;
use simulator::{Fault, ScheduledFault, SimOptions};

use crate::topo;

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
    let opts = |f: &[ScheduledFault]| SimOptions {
        faults: f.to_vec(),
        ..SimOptions::default()
    };
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
