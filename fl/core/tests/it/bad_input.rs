//! Every bad-input case is a typed error naming the client and the tensor; nothing is kept.

use fl_core::strategy::{Bulyan, FedAvg, Krum, Limits, QFedAvg, build_strategy};
use fl_core::{DType, FlError, Model, ModelView, Strategy, TensorView, Update};

fn model(vals: [f32; 4]) -> Model {
    ModelView::new(vec![
        TensorView::from_f32("a", vec![2, 2], &vals).unwrap(),
        TensorView::from_f32("b", vec![1], &[1.0]).unwrap(),
    ])
    .unwrap()
}

fn open<'a>(s: &mut dyn Strategy<'a>, global: Option<ModelView<'a>>) {
    s.begin(3, global).unwrap();
}

#[test]
fn tensor_name_shape_dtype_and_order_mismatches() {
    let global = model([0.0; 4]);
    let missing = ModelView::new(vec![
        TensorView::from_f32("a", vec![2, 2], &[0.0; 4]).unwrap(),
    ])
    .unwrap();
    let renamed = ModelView::new(vec![
        TensorView::from_f32("a", vec![2, 2], &[0.0; 4]).unwrap(),
        TensorView::from_f32("c", vec![1], &[1.0]).unwrap(),
    ])
    .unwrap();
    let extra = ModelView::new(vec![
        TensorView::from_f32("a", vec![2, 2], &[0.0; 4]).unwrap(),
        TensorView::from_f32("b", vec![1], &[1.0]).unwrap(),
        TensorView::from_f32("z", vec![1], &[1.0]).unwrap(),
    ])
    .unwrap();
    let swapped = ModelView::new(vec![
        TensorView::from_f32("b", vec![1], &[1.0]).unwrap(),
        TensorView::from_f32("a", vec![2, 2], &[0.0; 4]).unwrap(),
    ])
    .unwrap();
    let reshaped = ModelView::new(vec![
        TensorView::from_f32("a", vec![4], &[0.0; 4]).unwrap(),
        TensorView::from_f32("b", vec![1], &[1.0]).unwrap(),
    ])
    .unwrap();
    let retyped = ModelView::new(vec![
        TensorView::from_f64("a", vec![2, 2], &[0.0; 4]).unwrap(),
        TensorView::from_f32("b", vec![1], &[1.0]).unwrap(),
    ])
    .unwrap();
    let mut s = FedAvg::new();
    open(&mut s, Some(global.view()));
    assert_eq!(
        s.fold(Update::new("c7", 3, missing.view(), 1)).unwrap_err(),
        FlError::MissingTensor {
            client: "c7".into(),
            tensor: "b".into()
        }
    );
    assert_eq!(
        s.fold(Update::new("c7", 3, renamed.view(), 1)).unwrap_err(),
        FlError::MissingTensor {
            client: "c7".into(),
            tensor: "b".into()
        }
    );
    assert_eq!(
        s.fold(Update::new("c7", 3, extra.view(), 1)).unwrap_err(),
        FlError::UnexpectedTensor {
            client: "c7".into(),
            tensor: "z".into()
        }
    );
    assert!(matches!(
        s.fold(Update::new("c7", 3, swapped.view(), 1)).unwrap_err(),
        FlError::TensorOrderMismatch { client, index: 0, .. } if client == "c7"
    ));
    assert_eq!(
        s.fold(Update::new("c7", 3, reshaped.view(), 1))
            .unwrap_err(),
        FlError::ShapeMismatch {
            client: "c7".into(),
            tensor: "a".into(),
            expected: vec![2, 2],
            found: vec![4]
        }
    );
    assert_eq!(
        s.fold(Update::new("c7", 3, retyped.view(), 1)).unwrap_err(),
        FlError::DTypeMismatch {
            client: "c7".into(),
            tensor: "a".into(),
            expected: DType::F32,
            found: DType::F64
        }
    );
    // Nothing was kept: finishing the round has no update.
    assert!(matches!(s.finish().unwrap_err(), FlError::NoUpdates { .. }));
}

#[test]
fn without_a_global_the_first_update_fixes_the_layout() {
    let a = model([1.0; 4]);
    let other = ModelView::new(vec![
        TensorView::from_f32("a", vec![2, 2], &[0.0; 4]).unwrap(),
    ])
    .unwrap();
    let mut s = FedAvg::new();
    open(&mut s, None);
    s.fold(Update::new("c1", 3, a.view(), 1)).unwrap();
    assert_eq!(
        s.fold(Update::new("c2", 3, other.view(), 1)).unwrap_err(),
        FlError::MissingTensor {
            client: "c2".into(),
            tensor: "b".into()
        }
    );
}

#[test]
fn nan_and_inf_name_client_tensor_and_index() {
    for (bad, idx) in [(f32::NAN, 2), (f32::INFINITY, 0), (f32::NEG_INFINITY, 3)] {
        let mut v = [0.5f32; 4];
        v[idx] = bad;
        let m = model(v);
        let mut s = FedAvg::new();
        open(&mut s, None);
        match s.fold(Update::new("c9", 3, m.view(), 1)).unwrap_err() {
            FlError::NonFinite {
                client,
                tensor,
                index,
                ..
            } => {
                assert_eq!((client.as_str(), tensor.as_str(), index), ("c9", "a", idx));
            }
            e => panic!("unexpected {e}"),
        }
    }
    // f16 and bf16 too
    for dt in [DType::F16, DType::BF16, DType::F64] {
        let m = ModelView::new(vec![
            TensorView::from_f64_as("h", dt, vec![2], &[1.0, f64::NAN]).unwrap(),
        ])
        .unwrap();
        let mut s = FedAvg::new();
        open(&mut s, None);
        assert!(matches!(
            s.fold(Update::new("c", 3, m.view(), 1)),
            Err(FlError::NonFinite { index: 1, .. })
        ));
    }
}

#[test]
fn norm_bound() {
    let global = model([0.0; 4]);
    let far = model([3.0, 4.0, 0.0, 0.0]);
    let limits = Limits {
        max_l2_norm: Some(4.9),
        ..Limits::default()
    };
    let mut s = FedAvg::with_limits(limits);
    open(&mut s, Some(global.view()));
    let near = model([0.0, 4.0, 0.0, 0.0]);
    s.fold(Update::new("c2", 3, near.view(), 1)).unwrap();
    // ||(3, 4, 0, 0) - 0, 1 - 1|| = 5 > 4.9
    match s.fold(Update::new("c3", 3, far.view(), 1)).unwrap_err() {
        FlError::NormTooLarge {
            client,
            tensor,
            norm,
            bound,
        } => {
            assert_eq!((client.as_str(), tensor.as_str(), bound), ("c3", "a", 4.9));
            assert_eq!(norm, 5.0);
        }
        e => panic!("unexpected {e}"),
    }
}

#[test]
fn stale_future_and_duplicate() {
    let m = model([1.0; 4]);
    let mut s = FedAvg::new();
    open(&mut s, None);
    assert_eq!(
        s.fold(Update::new("c1", 2, m.view(), 1)).unwrap_err(),
        FlError::StaleRound {
            client: "c1".into(),
            update_round: 2,
            current_round: 3
        }
    );
    assert_eq!(
        s.fold(Update::new("c1", 4, m.view(), 1)).unwrap_err(),
        FlError::FutureRound {
            client: "c1".into(),
            update_round: 4,
            current_round: 3
        }
    );
    s.fold(Update::new("c1", 3, m.view(), 1)).unwrap();
    assert_eq!(
        s.fold(Update::new("c1", 3, m.view(), 5)).unwrap_err(),
        FlError::DuplicateClient {
            client: "c1".into(),
            round: 3
        }
    );
    // fold outside a round
    let mut t = FedAvg::new();
    assert!(matches!(
        t.fold(Update::new("c1", 3, m.view(), 1)),
        Err(FlError::NoRound { .. })
    ));
}

#[test]
fn zero_total_weight() {
    let m = model([1.0; 4]);
    let mut s = FedAvg::new();
    open(&mut s, None);
    s.fold(Update::new("c1", 3, m.view(), 0)).unwrap();
    s.fold(Update::new("c2", 3, m.view(), 0)).unwrap();
    assert_eq!(
        s.finish().unwrap_err(),
        FlError::ZeroTotalWeight { clients: 2 }
    );
}

#[test]
fn bulyan_needs_4f_plus_3_and_krum_only_warns() {
    let ms: Vec<Model> = (0..6).map(|i| model([i as f32; 4])).collect();
    let mut b = Bulyan::new(1, Limits::default());
    open(&mut b, None);
    for (i, m) in ms.iter().enumerate() {
        b.fold(Update::new(format!("c{i}"), 3, m.view(), 1))
            .unwrap();
    }
    assert_eq!(
        b.finish().unwrap_err(),
        FlError::TooFewClients {
            strategy: "bulyan".into(),
            needed: 7,
            got: 6
        }
    );
    // Krum with f = 2 needs 2f + 3 = 7 for its guarantee; Flower only warns, so do we.
    let mut k = Krum::new(2, Limits::default());
    open(&mut k, None);
    for (i, m) in ms.iter().enumerate() {
        k.fold(Update::new(format!("c{i}"), 3, m.view(), 1))
            .unwrap();
    }
    let (_, metrics) = k.finish().unwrap();
    assert_eq!(metrics["krum_too_few_clients_warning"], 1.0);
    assert_eq!(metrics["krum_num_closest"], 2.0); // max(1, 6 - 2 - 2)
}

#[test]
fn corrupt_and_truncated_safetensors() {
    let mut m = model([1.0; 4]);
    m.set_metadata("num_examples", "4");
    let bytes = m.to_safetensors();
    let label = "client-5.safetensors";
    let trunc = |b: &[u8]| ModelView::from_safetensors_labeled(b, label).unwrap_err();
    for cut in [0, 4, 8, 20, bytes.len() - 1] {
        match trunc(&bytes[..cut]) {
            FlError::TruncatedSafetensors { source_label, .. } => assert_eq!(source_label, label),
            e => panic!("cut {cut}: {e}"),
        }
    }
    // garbage header
    let mut bad = bytes.clone();
    bad[10] = b'!';
    assert!(
        matches!(trunc(&bad), FlError::CorruptSafetensors { source_label, .. } if source_label == label)
    );
    // huge header length
    let mut huge = bytes.clone();
    huge[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(matches!(trunc(&huge), FlError::CorruptSafetensors { .. }));
    // trailing bytes
    let mut long = bytes.clone();
    long.extend_from_slice(&[0; 4]);
    assert!(matches!(trunc(&long), FlError::CorruptSafetensors { .. }));
    // offsets that do not match the shape, unknown dtype, overlapping tensors
    for header in [
        r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}"#,
        r#"{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}}"#,
        r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#,
        r#"{"a":{"dtype":"F32","shape":[1]}}"#,
        r#"[1,2]"#,
    ] {
        let mut b = (header.len() as u64).to_le_bytes().to_vec();
        b.extend_from_slice(header.as_bytes());
        b.extend_from_slice(&[0; 4]);
        assert!(
            matches!(trunc(&b), FlError::CorruptSafetensors { .. }),
            "{header}"
        );
    }
}

#[test]
fn update_over_the_size_limit() {
    let m = model([1.0; 4]); // 16 + 4 bytes
    let mut s = FedAvg::with_limits(Limits {
        max_update_bytes: Some(18),
        ..Limits::default()
    });
    open(&mut s, None);
    assert_eq!(
        s.fold(Update::new("c1", 3, m.view(), 1)).unwrap_err(),
        FlError::UpdateTooLarge {
            client: "c1".into(),
            tensor: "b".into(),
            size_bytes: 20,
            limit_bytes: 18
        }
    );
}

#[test]
fn strategies_needing_a_global_or_metric_say_so() {
    let m = model([1.0; 4]);
    for name in ["fedadam", "fedyogi", "fedadagrad"] {
        let mut s = build_strategy(name, &Default::default(), Limits::default(), 0).unwrap();
        s.begin(3, None).unwrap();
        s.fold(Update::new("c1", 3, m.view(), 1)).unwrap();
        assert!(
            matches!(s.finish().unwrap_err(), FlError::MissingGlobal { .. }),
            "{name}"
        );
    }
    let mut q = QFedAvg::new(0.1, 0.1, "train_loss", Limits::default()).unwrap();
    q.begin(3, Some(m.view())).unwrap();
    assert_eq!(
        q.fold(Update::new("c1", 3, m.view(), 1)).unwrap_err(),
        FlError::MissingMetric {
            client: "c1".into(),
            metric: "train_loss".into(),
            strategy: "qfedavg".into()
        }
    );
    assert!(matches!(
        build_strategy(
            "fedtrimmedavg",
            &[("beta".to_owned(), "0.5".to_owned())].into(),
            Limits::default(),
            0
        ),
        Err(FlError::InvalidParam { .. })
    ));
}
