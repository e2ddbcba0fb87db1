//! The simulator's one integration-test binary.

mod cluster;
mod determinism;
mod etcd;
mod extension;
mod fl_accuracy;
mod fl_pods;
mod gitops;
mod gitops_models;
mod restore;
mod shrinking;
mod topologies;

use std::path::{Path, PathBuf};

use simulator::{Sim, SimOptions, Topology};

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/topologies")
}

pub fn topo(name: &str) -> Topology {
    Topology::load(&fixtures().join(format!("{name}.yaml"))).unwrap_or_else(|e| panic!("{e}"))
}

pub fn sim(name: &str, seed: u64) -> Sim {
    Sim::new(topo(name), seed, SimOptions::default())
}

/// Run until every node is Ready; panics with the repro if it takes more than 30 virtual minutes.
pub fn boot(sim: &mut Sim) {
    let stop = sim.run_until_pred(30 * simulator::timings::MIN, 50_000_000, |w| {
        w.nodes_ready()
    });
    assert_eq!(
        stop,
        simulator::Stop::Predicate,
        "cluster did not come up; {}",
        sim.repro()
    );
}
