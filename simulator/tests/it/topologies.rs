use simulator::Topology;
use simulator::topology::{Bytes, Cpu, TopologyError};

use crate::{fixtures, topo};

const ALL: &[&str] = &[
    "mlworkbench-kvm",
    "mlworkbench-ovh",
    "fluodata-proxmox",
    "fluodata-ovh",
    "k3s-single",
    "talos-unraid",
    "mlops-flux",
];

#[test]
fn every_platform_topology_parses() {
    for name in ALL {
        let t = topo(name);
        assert_eq!(&t.name, name);
    }
}

#[test]
fn documented_numbers_are_kept() {
    let t = topo("mlworkbench-kvm");
    assert_eq!(t.nodes.len(), 3);
    for n in &t.nodes {
        assert_eq!(n.cpu, Cpu(2000));
        assert_eq!(n.memory, Bytes(8 << 30));
    }
    let w = t
        .workloads
        .iter()
        .find(|w| w.name == "fl-worker")
        .expect("fl-worker");
    assert_eq!((w.cpu, w.memory), (Cpu(4000), Bytes(16 << 30)));
    let k = topo("k3s-single");
    assert_eq!(k.nodes[0].memory, Bytes(40 << 30));
    assert_eq!(
        k.priority_classes
            .iter()
            .map(|p| p.value)
            .collect::<Vec<_>>(),
        vec![1000, 900, 850, 800, 700, 100]
    );
}

#[test]
fn checked_in_schema_matches_the_types() {
    let on_disk =
        std::fs::read_to_string(fixtures().join("topology.schema.json")).expect("schema file");
    assert_eq!(
        on_disk,
        simulator::topology::schema_json(),
        "run `cargo xtask sim --schema` to regenerate"
    );
}

#[test]
fn parse_errors_name_file_line_and_field() {
    let text = "name: x\ndescription: d\nsource: s\ndistribution: talos\ninfrastructure: kvm\ndatastore: etcd\nnodes:\n  - name: a\n    roles: [control-plane]\n    cpu: 2\n    memroy: 8Gi\nnetwork: { latency_us: 1, bandwidth_mbps: 1 }\n";
    let err = Topology::from_yaml("bad.yaml", text).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("bad.yaml"), "{msg}");
    assert!(msg.contains("memroy"), "{msg}");
    match err {
        TopologyError::Parse { line, .. } => assert!(line >= 8, "line {line}: {msg}"),
        other => panic!("expected a parse error, got {other}"),
    }
}

#[test]
fn semantic_errors_name_line_and_field() {
    let text = "name: x\ndescription: d\nsource: s\ndistribution: talos\ninfrastructure: kvm\ndatastore: etcd\nnodes:\n  - { name: a, roles: [control-plane], cpu: 2, memory: 8Gi }\nnetwork: { latency_us: 1, bandwidth_mbps: 1 }\nworkloads:\n  - { kind: Deployment, name: w, namespace: n, priority_class: gold }\n";
    let err = Topology::from_yaml("bad.yaml", text).unwrap_err();
    match &err {
        TopologyError::Invalid { line, field, .. } => {
            assert_eq!(*line, 11);
            assert_eq!(field, "workloads[0].priority_class");
        }
        other => panic!("expected a semantic error, got {other}"),
    }
    let bad_qty = text.replace("cpu: 2,", "cpu: two,");
    let msg = Topology::from_yaml("q.yaml", &bad_qty)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("q.yaml") && msg.contains("cpu"), "{msg}");
}
