use simulator::timings::MIN;

use crate::sim;

#[test]
fn same_seed_same_trace_hash() {
    let mut a = sim("mlworkbench-kvm", 7);
    let mut b = sim("mlworkbench-kvm", 7);
    a.run_until(20 * MIN);
    b.run_until(20 * MIN);
    assert_eq!(a.trace_hash(), b.trace_hash());
    assert_eq!(a.trace().entries(), b.trace().entries());
    assert!(
        a.trace().total() > 20,
        "a 20-minute boot should leave a trace"
    );
}

#[test]
fn different_seed_different_trace() {
    let mut a = sim("mlworkbench-kvm", 1);
    let mut b = sim("mlworkbench-kvm", 2);
    a.run_until(20 * MIN);
    b.run_until(20 * MIN);
    assert_ne!(a.trace_hash(), b.trace_hash());
}

#[test]
fn faults_are_part_of_the_run_and_the_repro() {
    let mut a = sim("mlworkbench-kvm", 3);
    a.schedule_fault(
        10 * MIN,
        simulator::Fault::KillNode {
            node: "talos-k8s-1".into(),
        },
    );
    a.run_until(20 * MIN);
    let mut b = sim("mlworkbench-kvm", 3);
    b.run_until(20 * MIN);
    assert_ne!(a.trace_hash(), b.trace_hash());
    assert!(
        a.repro().contains("--topology mlworkbench-kvm --seed 3"),
        "{}",
        a.repro()
    );
}
