//! Flower 1.41 golden vectors (`fixtures/flower/golden/*.json`), every output each file has.
//! Tolerances from the fixtures' README.

use std::path::PathBuf;

use fl_core::strategy::FedAvg;
use fl_core::{Model, ModelView, Strategy, Update};
use serde_json::Value;

pub struct Case {
    pub name: String,
    pub json: Value,
    pub clients: Vec<Model>,
    pub num_examples: Vec<u64>,
}

pub fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/flower/golden")
}

fn layers_f32(v: &Value, shapes: &[Vec<usize>]) -> Model {
    let layers: Vec<Vec<f32>> = v
        .as_array()
        .expect("layers")
        .iter()
        .map(|l| {
            l.as_array()
                .expect("layer")
                .iter()
                .map(|x| x.as_f64().expect("float") as f32)
                .collect()
        })
        .collect();
    let names: Vec<String> = (0..layers.len()).map(|i| format!("layer_{i}")).collect();
    Model::from_f32_layers(names, shapes.to_vec(), layers).expect("model")
}

pub fn f64_layers(v: &Value) -> Vec<Vec<f64>> {
    v.as_array()
        .expect("layers")
        .iter()
        .map(|l| {
            l.as_array()
                .expect("layer")
                .iter()
                .map(|x| x.as_f64().expect("float"))
                .collect()
        })
        .collect()
}

pub fn load_cases() -> Vec<Case> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(golden_dir())
        .expect("golden dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    paths.sort();
    assert!(!paths.is_empty(), "no golden files");
    paths
        .into_iter()
        .map(|p| {
            let json: Value =
                serde_json::from_slice(&std::fs::read(&p).expect("read")).expect("json");
            let shapes: Vec<Vec<usize>> = json["layer_shapes"]
                .as_array()
                .expect("shapes")
                .iter()
                .map(|s| {
                    s.as_array()
                        .expect("shape")
                        .iter()
                        .map(|d| d.as_u64().expect("dim") as usize)
                        .collect()
                })
                .collect();
            let clients = json["clients"]
                .as_array()
                .expect("clients")
                .iter()
                .map(|c| layers_f32(c, &shapes))
                .collect();
            let num_examples = json["num_examples"]
                .as_array()
                .expect("n")
                .iter()
                .map(|n| n.as_u64().expect("n"))
                .collect();
            Case {
                name: p.file_stem().expect("stem").to_string_lossy().into_owned(),
                json,
                clients,
                num_examples,
            }
        })
        .collect()
}

/// Client ids whose canonical (sorted) order is Flower's list order.
pub fn client_id(i: usize) -> String {
    format!("client-{i:04}")
}

pub fn run<'a>(
    s: &mut dyn Strategy<'a>,
    round: u64,
    global: Option<ModelView<'a>>,
    case: &'a Case,
) -> Model {
    s.begin(round, global).expect("begin");
    for (i, c) in case.clients.iter().enumerate() {
        s.fold(Update::new(
            client_id(i),
            round,
            c.view(),
            case.num_examples[i],
        ))
        .expect("fold");
    }
    s.finish().expect("finish").0
}

fn layer_max(l: &[f64]) -> f64 {
    l.iter().fold(0.0f64, |m, v| m.max(v.abs()))
}

/// |got - want| <= rel * |want| + abs_layer * max|layer| + abs.
pub fn assert_close(
    case: &str,
    what: &str,
    got: &Model,
    want: &[Vec<f64>],
    rel: f64,
    abs_layer: f64,
    abs: f64,
) {
    let got = got.to_f64_layers();
    assert_eq!(got.len(), want.len(), "{case} {what}: layer count");
    for (li, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(g.len(), w.len(), "{case} {what}: layer {li} length");
        let m = layer_max(w);
        for (i, (a, b)) in g.iter().zip(w).enumerate() {
            let tol = rel * b.abs() + abs_layer * m + abs;
            assert!(
                (a - b).abs() <= tol,
                "{case} {what}: layer {li}[{i}] got {a}, want {b} (tol {tol})"
            );
        }
    }
}

#[test]
fn fedavg_matches_the_f64_reference() {
    for case in load_cases() {
        let want = f64_layers(&case.json["outputs"]["fedavg_f64_reference"]);
        let got = run(&mut FedAvg::new(), 1, None, &case);
        assert_close(&case.name, "fedavg", &got, &want, 1e-6, 1e-6, 0.0);
        // Flower's own f32 paths are within 1e-5 relative of ours as well.
        for key in ["fedavg_aggregate", "fedavg_aggregate_inplace"] {
            if let Some(v) = case.json["outputs"].get(key) {
                assert_close(&case.name, key, &got, &f64_layers(v), 1e-5, 1e-5, 0.0);
                let dtypes = &case.json["outputs"][format!("{key}_dtypes")];
                for (t, d) in got.tensors().iter().zip(dtypes.as_array().expect("dtypes")) {
                    assert_eq!(d.as_str(), Some("float32"), "{}: {key} dtype", case.name);
                    assert_eq!(t.dtype(), fl_core::DType::F32);
                }
            }
        }
    }
}
