use simulator::timings::{MIN, SEC};
use simulator::{Fault, Process, Stop, TraceEvent};

use crate::{boot, sim};

#[test]
fn three_members_elect_one_leader_and_survive_one_loss() {
    let mut s = sim("mlworkbench-kvm", 11);
    boot(&mut s);
    let st = s.world().etcd_status();
    assert!(st.quorum);
    assert_eq!(
        st.members
            .iter()
            .filter(|m| m.role.as_deref() == Some("Leader"))
            .count(),
        1
    );
    let leader = st.leader.clone().unwrap();
    let t0 = s.now();
    s.inject(Fault::KillNode {
        node: leader.clone(),
    });
    assert!(
        !s.world().etcd_status().quorum
            || s.world().etcd_status().leader.as_deref() != Some(leader.as_str())
    );
    let stop = s.run_until_pred(t0 + MIN, 10_000_000, |w| w.etcd_status().quorum);
    assert_eq!(stop, Stop::Predicate, "no new leader within a minute");
    let st = s.world().etcd_status();
    assert_ne!(st.leader.as_deref(), Some(leader.as_str()));
    // re-election within a few election timeouts (1 s default, randomized up to 2 s)
    assert!(
        s.now() - t0 < 5 * SEC,
        "re-election took {}us",
        s.now() - t0
    );
    assert!(s.world().api_available());
}

#[test]
fn losing_two_of_three_members_loses_quorum_and_the_api() {
    let mut s = sim("mlworkbench-kvm", 12);
    boot(&mut s);
    s.inject(Fault::KillProcess {
        node: "talos-k8s-1".into(),
        process: Process::Etcd,
    });
    s.inject(Fault::EtcdMemberLoss {
        node: "talos-k8s-2".into(),
    });
    s.run_until(s.now() + MIN);
    let st = s.world().etcd_status();
    assert!(!st.quorum && st.leader.is_none(), "{st:?}");
    assert!(!s.world().api_available());
    // one member back: quorum again
    s.inject(Fault::RestoreProcess {
        node: "talos-k8s-1".into(),
        process: Process::Etcd,
    });
    let stop = s.run_until_pred(s.now() + MIN, 10_000_000, |w| w.etcd_status().quorum);
    assert_eq!(stop, Stop::Predicate);
}

#[test]
fn partitioned_leader_is_replaced_by_the_majority() {
    let mut s = sim("fluodata-ovh", 13);
    boot(&mut s);
    let old = s.world().etcd_status().leader.unwrap();
    let others: Vec<String> = s
        .world()
        .nodes()
        .iter()
        .map(|n| n.name.clone())
        .filter(|n| *n != old)
        .collect();
    s.inject(Fault::Partition {
        a: vec![old.clone()],
        b: others,
    });
    s.run_until(s.now() + 10 * SEC);
    let st = s.world().etcd_status();
    assert!(st.quorum);
    assert_ne!(st.leader.as_deref(), Some(old.as_str()));
    // with check-quorum the old leader stepped down
    let m = st.members.iter().find(|m| m.name == old).unwrap();
    assert_ne!(m.role.as_deref(), Some("Leader"));
    let leaders: Vec<_> = s
        .trace()
        .entries()
        .iter()
        .filter(|e| matches!(e.event, TraceEvent::EtcdLeader { .. }))
        .collect();
    assert!(leaders.len() >= 2);
    s.inject(Fault::Heal);
    s.run_until(s.now() + 10 * SEC);
    assert!(
        s.world()
            .etcd_status()
            .members
            .iter()
            .all(|m| m.term == s.world().etcd_status().term)
    );
}

#[test]
fn single_control_plane_loss_stops_the_api() {
    let mut s = sim("talos-unraid", 14);
    boot(&mut s);
    s.inject(Fault::KillNode {
        node: "talos-cp".into(),
    });
    assert!(!s.world().api_available());
    assert!(!s.world().etcd_status().quorum);
    s.run_until(s.now() + 10 * MIN);
    // nobody can mark the worker NotReady without the API: it stays Ready in the API's view
    assert!(s.world().node("talos-worker").unwrap().ready);
}
