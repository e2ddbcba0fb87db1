//! Model types, safetensors round trips and the digest.

use fl_core::{DType, FlError, Model, ModelView, TensorView};

fn mixed_model() -> Model {
    let tensors = vec![
        TensorView::from_f32("w", vec![2, 3], &[1.0, -2.5, 3.25, 0.0, 1e-30, -7.0]).unwrap(),
        TensorView::from_i64("count", vec![], &[42]).unwrap(),
        TensorView::from_f64("b", vec![2], &[0.1, -0.2]).unwrap(),
        TensorView::from_i32("idx", vec![3], &[1, -2, 3]).unwrap(),
        TensorView::from_f64_as("h", DType::F16, vec![2], &[0.5, -1.25]).unwrap(),
        TensorView::from_f64_as("bh", DType::BF16, vec![2], &[2.0, -3.0]).unwrap(),
    ];
    let mut m = ModelView::new(tensors).unwrap();
    m.set_metadata("num_examples", "17");
    m
}

#[test]
fn safetensors_round_trip_keeps_names_order_dtypes_and_metadata() {
    let m = mixed_model();
    let bytes = m.to_safetensors();
    let back = ModelView::from_safetensors(&bytes).unwrap();
    assert_eq!(back, m.view());
    let names: Vec<&str> = back.tensors().iter().map(|t| t.name()).collect();
    assert_eq!(names, ["w", "count", "b", "idx", "h", "bh"]);
    assert_eq!(
        back.metadata().get("num_examples").map(String::as_str),
        Some("17")
    );
    assert_eq!(back.digest(), m.digest());
    assert_eq!(back.tensor("h").unwrap().to_f64_vec(), vec![0.5, -1.25]);
    assert_eq!(back.tensor("bh").unwrap().dtype(), DType::BF16);
}

#[test]
fn streamed_write_gives_the_same_bytes_as_to_safetensors() {
    let m = mixed_model();
    let mut out = Vec::new();
    let n = m.write_safetensors(&mut out).unwrap();
    assert_eq!(out, m.to_safetensors());
    assert_eq!(n, out.len() as u64);
    // A model without metadata too (the header has no `__metadata__` entry then).
    let plain = ModelView::new(m.tensors().to_vec()).unwrap();
    let mut out = Vec::new();
    plain.write_safetensors(&mut out).unwrap();
    assert_eq!(out, plain.to_safetensors());
    assert_eq!(ModelView::from_safetensors(&out).unwrap(), plain);
}

#[test]
fn reading_is_zero_copy() {
    let m = mixed_model();
    let bytes = m.to_safetensors();
    let back = ModelView::from_safetensors(&bytes).unwrap();
    let range = bytes.as_ptr_range();
    for t in back.tensors() {
        let p = t.bytes().as_ptr();
        assert!(
            range.contains(&p) || t.bytes().is_empty(),
            "{} was copied",
            t.name()
        );
    }
}

#[test]
fn digest_depends_on_order_name_dtype_shape_and_value_but_not_metadata() {
    let a = Model::from_f32_layers(
        ["x", "y"],
        [vec![2], vec![1]],
        vec![vec![1.0, 2.0], vec![3.0]],
    )
    .unwrap();
    let b = Model::from_f32_layers(
        ["y", "x"],
        [vec![1], vec![2]],
        vec![vec![3.0], vec![1.0, 2.0]],
    )
    .unwrap();
    let c = Model::from_f32_layers(
        ["x", "z"],
        [vec![2], vec![1]],
        vec![vec![1.0, 2.0], vec![3.0]],
    )
    .unwrap();
    let d = Model::from_f32_layers(
        ["x", "y"],
        [vec![1, 2], vec![1]],
        vec![vec![1.0, 2.0], vec![3.0]],
    )
    .unwrap();
    let e = Model::from_f32_layers(
        ["x", "y"],
        [vec![2], vec![1]],
        vec![vec![1.0, 2.0], vec![3.5]],
    )
    .unwrap();
    let digests = [a.digest(), b.digest(), c.digest(), d.digest(), e.digest()];
    for i in 0..digests.len() {
        for j in i + 1..digests.len() {
            assert_ne!(digests[i], digests[j], "{i} vs {j}");
        }
    }
    let mut a2 = a.clone();
    a2.set_metadata("k", "v");
    assert_eq!(a2.digest(), a.digest());
    assert_eq!(a.digest().to_hex().len(), 64);
}

#[test]
fn f32_accessors() {
    let m = Model::from_f32_flat(vec![vec![1.0, 2.0], vec![3.0]]).unwrap();
    assert_eq!(m.to_f32_layers(), vec![vec![1.0, 2.0], vec![3.0]]);
    assert_eq!(m.tensors()[0].as_f32(), Some(&[1.0f32, 2.0][..]));
    assert_eq!(m.numel(), 3);
    assert!(matches!(
        TensorView::new("t", DType::F32, vec![3], vec![0u8; 8]),
        Err(FlError::InvalidTensor { .. })
    ));
    assert!(matches!(
        Model::from_f32_layers(["a", "a"], [vec![1], vec![1]], vec![vec![1.0], vec![2.0]]),
        Err(FlError::DuplicateTensor { .. })
    ));
}
