//! `fl aggregate` end to end: real files, the real binary, compared with the library.

use std::path::Path;
use std::process::Command;

use fl_core::strategy::{FedAdam, FedAvg, FedMedian, FedOptParams, Limits};
use fl_core::{DType, Metrics, Model, ModelView, Strategy, TensorView, Update};

fn client_model(i: usize) -> Model {
    let w: Vec<f32> = (0..12)
        .map(|j| ((i * 31 + j * 7) % 17) as f32 * 0.25 - 2.0)
        .collect();
    let b: Vec<f64> = (0..3).map(|j| (i + j) as f64 * 0.5).collect();
    ModelView::new(vec![
        TensorView::from_f32("dense.weight", vec![3, 4], &w).unwrap(),
        TensorView::from_f64("dense.bias", vec![3], &b).unwrap(),
        TensorView::from_i64("bn.num_batches_tracked", vec![], &[10 * i as i64]).unwrap(),
    ])
    .unwrap()
}

fn write_updates(dir: &Path, n: usize) -> Vec<(Model, u64)> {
    (0..n)
        .map(|i| {
            let mut m = client_model(i);
            let ne = 10 + 5 * i as u64;
            m.set_metadata("num_examples", ne.to_string());
            m.set_metadata("train_loss", format!("{}", 0.5 + i as f64));
            std::fs::write(
                dir.join(format!("client-{i}.safetensors")),
                m.to_safetensors(),
            )
            .unwrap();
            (m, ne)
        })
        .collect()
}

fn fl(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_fl"))
        .arg("aggregate")
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn library<'a>(
    s: &mut dyn Strategy<'a>,
    round: u64,
    global: Option<Model>,
    clients: &'a [(Model, u64)],
) -> Model {
    s.begin(round, global).unwrap();
    for (i, (m, n)) in clients.iter().enumerate() {
        let metrics: Metrics = [("train_loss".to_owned(), 0.5 + i as f64)].into();
        s.fold(Update::new(format!("client-{i}"), round, m.view(), *n).with_metrics(metrics))
            .unwrap();
    }
    s.finish().unwrap().0
}

#[test]
fn fedavg_output_keeps_layout_and_equals_the_library() {
    let dir = tempfile::tempdir().unwrap();
    let updates = dir.path().join("updates");
    std::fs::create_dir(&updates).unwrap();
    let clients = write_updates(&updates, 4);
    let out = dir.path().join("global.safetensors");
    let (ok, stdout, stderr) = fl(&[
        "--strategy",
        "fedavg",
        "--updates",
        updates.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    let bytes = std::fs::read(&out).unwrap();
    let got = ModelView::from_safetensors(&bytes).unwrap();
    let want = library(&mut FedAvg::new(), 1, None, &clients);
    assert_eq!(stdout, want.digest().to_hex());
    assert_eq!(got.digest(), want.digest());
    let layout: Vec<(&str, DType)> = got
        .tensors()
        .iter()
        .map(|t| (t.name(), t.dtype()))
        .collect();
    assert_eq!(
        layout,
        [
            ("dense.weight", DType::F32),
            ("dense.bias", DType::F64),
            ("bn.num_batches_tracked", DType::I64)
        ]
    );
}

#[test]
fn fedmedian_equals_the_library() {
    let dir = tempfile::tempdir().unwrap();
    let clients = write_updates(dir.path(), 5);
    let out = dir.path().join("out.bin");
    let (ok, stdout, stderr) = fl(&[
        "--strategy",
        "fedmedian",
        "--updates",
        dir.path().to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    assert_eq!(
        stdout,
        library(&mut FedMedian::new(Limits::default()), 1, None, &clients)
            .digest()
            .to_hex()
    );
}

#[test]
fn fedadam_state_chains_rounds_like_the_library() {
    let dir = tempfile::tempdir().unwrap();
    let updates = dir.path().join("u");
    std::fs::create_dir(&updates).unwrap();
    let clients = write_updates(&updates, 3);
    let global0 = client_model(7);
    let g0 = dir.path().join("g0.safetensors");
    std::fs::write(&g0, global0.to_safetensors()).unwrap();
    let state = dir.path().join("state.safetensors");
    let g1 = dir.path().join("g1.safetensors");
    let g2 = dir.path().join("g2.safetensors");
    let p = |s: &str| s.to_owned();
    let args = |g: &Path, out: &Path, round: &str| -> Vec<String> {
        vec![
            p("--strategy"),
            p("fedadam"),
            p("--param"),
            p("tau=1e-9"),
            p("--param"),
            p("eta=0.1"),
            p("--updates"),
            p(updates.to_str().unwrap()),
            p("--global"),
            p(g.to_str().unwrap()),
            p("--state"),
            p(state.to_str().unwrap()),
            p("--round"),
            p(round),
            p("--out"),
            p(out.to_str().unwrap()),
        ]
    };
    let a1 = args(&g0, &g1, "1");
    let (ok, d1, e1) = fl(&a1.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(ok, "{e1}");
    let a2 = args(&g1, &g2, "2");
    let (ok, d2, e2) = fl(&a2.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(ok, "{e2}");
    let params = FedOptParams {
        tau: 1e-9,
        ..FedOptParams::ADAM
    };
    let mut s = FedAdam::new(params, Limits::default()).unwrap();
    let r1 = library(&mut s, 1, Some(global0.clone()), &clients);
    let r2 = library(&mut s, 2, Some(r1.clone()), &clients);
    assert_eq!(d1, r1.digest().to_hex());
    assert_eq!(d2, r2.digest().to_hex());
    assert_ne!(d1, d2);
}

#[test]
fn bad_inputs_are_errors_naming_the_file_or_client() {
    let dir = tempfile::tempdir().unwrap();
    write_updates(dir.path(), 3);
    let out = dir.path().join("out.safetensors");
    let d = dir.path().to_str().unwrap();
    let o = out.to_str().unwrap();
    // missing num_examples
    let bare = client_model(9);
    std::fs::write(
        dir.path().join("client-z.safetensors"),
        bare.to_safetensors(),
    )
    .unwrap();
    let (ok, _, err) = fl(&["--strategy", "fedavg", "--updates", d, "--out", o]);
    assert!(!ok);
    assert!(
        err.contains("client-z") && err.contains("num_examples"),
        "{err}"
    );
    // truncated file
    let mut m = client_model(9);
    m.set_metadata("num_examples", "3");
    let bytes = m.to_safetensors();
    std::fs::write(
        dir.path().join("client-z.safetensors"),
        &bytes[..bytes.len() - 5],
    )
    .unwrap();
    let (ok, _, err) = fl(&["--strategy", "fedavg", "--updates", d, "--out", o]);
    assert!(!ok);
    assert!(
        err.contains("client-z.safetensors") && err.contains("truncated"),
        "{err}"
    );
    std::fs::remove_file(dir.path().join("client-z.safetensors")).unwrap();
    // unknown strategy and parameter, DP without a global model
    let (ok, _, err) = fl(&["--strategy", "fedsgd", "--updates", d, "--out", o]);
    assert!(!ok && err.contains("unknown strategy `fedsgd`"), "{err}");
    let (ok, _, err) = fl(&[
        "--strategy",
        "fedprox",
        "--param",
        "mu=1",
        "--updates",
        d,
        "--out",
        o,
    ]);
    assert!(!ok && err.contains("unknown parameter `mu`"), "{err}");
    let (ok, _, err) = fl(&[
        "--strategy",
        "dp-fixed-clipping",
        "--param",
        "noise_multiplier=1",
        "--param",
        "clipping_norm=1",
        "--param",
        "num_sampled_clients=3",
        "--updates",
        d,
        "--out",
        o,
    ]);
    assert!(!ok && err.contains("global model"), "{err}");
    // over the size limit
    let (ok, _, err) = fl(&[
        "--strategy",
        "fedavg",
        "--max-update-bytes",
        "10",
        "--updates",
        d,
        "--out",
        o,
    ]);
    assert!(
        !ok && err.contains("client-0") && err.contains("over the limit"),
        "{err}"
    );
    assert!(!out.exists());
}

#[test]
fn dp_noise_is_reproducible_from_the_seed() {
    let dir = tempfile::tempdir().unwrap();
    let updates = dir.path().join("u");
    std::fs::create_dir(&updates).unwrap();
    write_updates(&updates, 3);
    let g = dir.path().join("g.safetensors");
    std::fs::write(&g, client_model(5).to_safetensors()).unwrap();
    let out = dir.path().join("o.safetensors");
    let run = |seed: &str| {
        let (ok, d, e) = fl(&[
            "--strategy",
            "dp-adaptive-clipping",
            "--param",
            "inner=fedavg",
            "--param",
            "noise_multiplier=0.1",
            "--param",
            "num_sampled_clients=3",
            "--seed",
            seed,
            "--updates",
            updates.to_str().unwrap(),
            "--global",
            g.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(ok, "{e}");
        d
    };
    assert_eq!(run("7"), run("7"));
    assert_ne!(run("7"), run("8"));
}
