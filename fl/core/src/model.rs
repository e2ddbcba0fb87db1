//! Models: ordered, named tensors with shapes and a dtype, stored as little-endian bytes.
//!
//! A [`ModelView<'a>`] borrows its bytes (for example from a memory-mapped safetensors file;
//! mapping is the caller's job, fl-core does no IO) or owns them; [`Model`] is the owned
//! form (`ModelView<'static>`). Tensor order is part of a model's identity: it is kept on
//! read, write and aggregation, and it enters the [`Digest`].

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use sha2::{Digest as _, Sha256};

use crate::error::FlError;

/// Element type of a tensor (the safetensors names are `F32`, `F64`, `F16`, `BF16`, `I32`, `I64`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DType {
    F32,
    F64,
    F16,
    BF16,
    I32,
    I64,
}

impl DType {
    /// Bytes per element.
    pub fn size_bytes(self) -> usize {
        match self {
            DType::F16 | DType::BF16 => 2,
            DType::F32 | DType::I32 => 4,
            DType::F64 | DType::I64 => 8,
        }
    }

    /// The dtype string safetensors uses.
    pub fn safetensors_name(self) -> &'static str {
        match self {
            DType::F32 => "F32",
            DType::F64 => "F64",
            DType::F16 => "F16",
            DType::BF16 => "BF16",
            DType::I32 => "I32",
            DType::I64 => "I64",
        }
    }

    /// Parses a safetensors dtype string; `None` for dtypes fl-core does not aggregate.
    pub fn from_safetensors_name(name: &str) -> Option<Self> {
        Some(match name {
            "F32" => DType::F32,
            "F64" => DType::F64,
            "F16" => DType::F16,
            "BF16" => DType::BF16,
            "I32" => DType::I32,
            "I64" => DType::I64,
            _ => return None,
        })
    }

    /// True for the floating-point dtypes.
    pub fn is_float(self) -> bool {
        !matches!(self, DType::I32 | DType::I64)
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.safetensors_name())
    }
}

/// Number of elements of a shape (`[]` is a scalar: 1), `None` on overflow.
pub fn shape_numel(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
}

/// One named tensor; its data are little-endian bytes, borrowed or owned.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorView<'a> {
    name: String,
    dtype: DType,
    shape: Vec<usize>,
    data: Cow<'a, [u8]>,
}

/// An owned tensor.
pub type Tensor = TensorView<'static>;

impl<'a> TensorView<'a> {
    /// A tensor over `data` (little-endian); fails if the byte length does not match the shape.
    pub fn new(
        name: impl Into<String>,
        dtype: DType,
        shape: Vec<usize>,
        data: impl Into<Cow<'a, [u8]>>,
    ) -> Result<Self, FlError> {
        let name = name.into();
        let data = data.into();
        let expected = shape_numel(&shape)
            .and_then(|n| n.checked_mul(dtype.size_bytes()))
            .ok_or_else(|| FlError::InvalidTensor {
                tensor: name.clone(),
                reason: format!("shape {shape:?} overflows"),
            })?;
        if data.len() != expected {
            return Err(FlError::InvalidTensor {
                tensor: name,
                reason: format!(
                    "{} bytes of data but shape {shape:?} of {dtype} needs {expected}",
                    data.len()
                ),
            });
        }
        Ok(Self {
            name,
            dtype,
            shape,
            data,
        })
    }

    /// Tensor name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Element type.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Shape (row-major); `[]` for a scalar.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.data.len() / self.dtype.size_bytes()
    }

    /// The raw little-endian bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.data
    }

    /// A borrowed view of this tensor (no copy of the data).
    pub fn borrowed(&self) -> TensorView<'_> {
        TensorView {
            name: self.name.clone(),
            dtype: self.dtype,
            shape: self.shape.clone(),
            data: Cow::Borrowed(&self.data),
        }
    }

    /// An owned copy (copies the data only if it was borrowed).
    pub fn into_owned(self) -> Tensor {
        TensorView {
            name: self.name,
            dtype: self.dtype,
            shape: self.shape,
            data: Cow::Owned(self.data.into_owned()),
        }
    }

    /// Element `index` converted to f64 (exact for every dtype but i64 beyond 2^53).
    pub fn get_f64(&self, index: usize) -> f64 {
        let s = self.dtype.size_bytes();
        decode_one(self.dtype, &self.data[index * s..(index + 1) * s])
    }

    /// Elements `[start, start + out.len())` converted to f64 into `out`.
    pub fn load_f64(&self, start: usize, out: &mut [f64]) {
        let s = self.dtype.size_bytes();
        let bytes = &self.data[start * s..(start + out.len()) * s];
        decode_into(self.dtype, bytes, out);
    }

    /// All elements as f64.
    pub fn to_f64_vec(&self) -> Vec<f64> {
        let mut out = vec![0.0; self.numel()];
        decode_into(self.dtype, &self.data, &mut out);
        out
    }

    /// All elements as f32 (rounded to nearest for f64 and the integer dtypes).
    pub fn to_f32_vec(&self) -> Vec<f32> {
        match self.dtype {
            DType::F32 => self
                .data
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            _ => self.to_f64_vec().into_iter().map(|v| v as f32).collect(),
        }
    }

    /// The data as `&[f32]` without a copy when the dtype is f32 and the bytes are 4-aligned
    /// (always the case for an owned tensor built from f32 values and for a page-aligned mapped
    /// safetensors file); `None` otherwise (use [`Self::to_f32_vec`]).
    pub fn as_f32(&self) -> Option<&[f32]> {
        if self.dtype != DType::F32 || cfg!(target_endian = "big") {
            return None;
        }
        bytemuck::try_cast_slice(&self.data).ok()
    }

    /// An owned f32 tensor.
    pub fn from_f32(
        name: impl Into<String>,
        shape: Vec<usize>,
        values: &[f32],
    ) -> Result<Tensor, FlError> {
        let data: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        TensorView::new(name, DType::F32, shape, data)
    }

    /// An owned f64 tensor.
    pub fn from_f64(
        name: impl Into<String>,
        shape: Vec<usize>,
        values: &[f64],
    ) -> Result<Tensor, FlError> {
        let data: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        TensorView::new(name, DType::F64, shape, data)
    }

    /// An owned i64 tensor.
    pub fn from_i64(
        name: impl Into<String>,
        shape: Vec<usize>,
        values: &[i64],
    ) -> Result<Tensor, FlError> {
        let data: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        TensorView::new(name, DType::I64, shape, data)
    }

    /// An owned i32 tensor.
    pub fn from_i32(
        name: impl Into<String>,
        shape: Vec<usize>,
        values: &[i32],
    ) -> Result<Tensor, FlError> {
        let data: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        TensorView::new(name, DType::I32, shape, data)
    }

    /// An owned tensor of `dtype` from f64 values, rounded to the dtype (see [`encode_into`]).
    pub fn from_f64_as(
        name: impl Into<String>,
        dtype: DType,
        shape: Vec<usize>,
        values: &[f64],
    ) -> Result<Tensor, FlError> {
        let mut data = vec![0u8; values.len() * dtype.size_bytes()];
        encode_into(dtype, values, &mut data);
        TensorView::new(name, dtype, shape, data)
    }
}

/// Decodes one little-endian element to f64.
pub(crate) fn decode_one(dtype: DType, b: &[u8]) -> f64 {
    match dtype {
        DType::F32 => f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64,
        DType::F64 => f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]),
        DType::F16 => half::f16::from_le_bytes([b[0], b[1]]).to_f64(),
        DType::BF16 => half::bf16::from_le_bytes([b[0], b[1]]).to_f64(),
        DType::I32 => i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64,
        DType::I64 => i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f64,
    }
}

/// Decodes little-endian `bytes` of `dtype` into `out` (lengths must agree).
pub(crate) fn decode_into(dtype: DType, bytes: &[u8], out: &mut [f64]) {
    match dtype {
        DType::F32 => {
            for (o, c) in out.iter_mut().zip(bytes.as_chunks::<4>().0) {
                *o = f32::from_le_bytes(*c) as f64;
            }
        }
        DType::F64 => {
            for (o, c) in out.iter_mut().zip(bytes.as_chunks::<8>().0) {
                *o = f64::from_le_bytes(*c);
            }
        }
        _ => {
            let s = dtype.size_bytes();
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(s)) {
                *o = decode_one(dtype, c);
            }
        }
    }
}

/// Encodes f64 values into little-endian `out` of `dtype`: floats round to nearest even;
/// integers round half to even and saturate at the dtype's range (NaN becomes 0).
pub fn encode_into(dtype: DType, values: &[f64], out: &mut [u8]) {
    let s = dtype.size_bytes();
    match dtype {
        DType::F32 => {
            for (v, c) in values.iter().zip(out.chunks_exact_mut(4)) {
                c.copy_from_slice(&(*v as f32).to_le_bytes());
            }
        }
        DType::F64 => {
            for (v, c) in values.iter().zip(out.chunks_exact_mut(8)) {
                c.copy_from_slice(&v.to_le_bytes());
            }
        }
        DType::F16 => {
            for (v, c) in values.iter().zip(out.chunks_exact_mut(s)) {
                c.copy_from_slice(&half::f16::from_f64(*v).to_le_bytes());
            }
        }
        DType::BF16 => {
            for (v, c) in values.iter().zip(out.chunks_exact_mut(s)) {
                c.copy_from_slice(&half::bf16::from_f64(*v).to_le_bytes());
            }
        }
        DType::I32 => {
            for (v, c) in values.iter().zip(out.chunks_exact_mut(s)) {
                c.copy_from_slice(&(v.round_ties_even() as i32).to_le_bytes());
            }
        }
        DType::I64 => {
            for (v, c) in values.iter().zip(out.chunks_exact_mut(s)) {
                c.copy_from_slice(&(v.round_ties_even() as i64).to_le_bytes());
            }
        }
    }
}

/// Rounds an f64 to the precision of `dtype` and back (what storing it would keep).
pub fn round_to_dtype(dtype: DType, v: f64) -> f64 {
    match dtype {
        DType::F32 => v as f32 as f64,
        DType::F64 => v,
        DType::F16 => half::f16::from_f64(v).to_f64(),
        DType::BF16 => half::bf16::from_f64(v).to_f64(),
        DType::I32 => v.round_ties_even() as i32 as f64,
        DType::I64 => v.round_ties_even() as i64 as f64,
    }
}

/// An ordered list of named tensors plus free-form string metadata (the safetensors
/// `__metadata__`, e.g. `num_examples`). Metadata does not enter the digest.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ModelView<'a> {
    tensors: Vec<TensorView<'a>>,
    metadata: BTreeMap<String, String>,
}

/// An owned model.
pub type Model = ModelView<'static>;

impl<'a> ModelView<'a> {
    /// A model from tensors in order; tensor names must be unique.
    pub fn new(tensors: Vec<TensorView<'a>>) -> Result<Self, FlError> {
        let mut seen = std::collections::BTreeSet::new();
        for t in &tensors {
            if !seen.insert(t.name()) {
                return Err(FlError::DuplicateTensor {
                    tensor: t.name().to_owned(),
                });
            }
        }
        Ok(Self {
            tensors,
            metadata: BTreeMap::new(),
        })
    }

    /// An owned f32 model from per-layer names, shapes and values.
    pub fn from_f32_layers<S: Into<String>>(
        names: impl IntoIterator<Item = S>,
        shapes: impl IntoIterator<Item = Vec<usize>>,
        values: Vec<Vec<f32>>,
    ) -> Result<Model, FlError> {
        let names: Vec<String> = names.into_iter().map(Into::into).collect();
        let shapes: Vec<Vec<usize>> = shapes.into_iter().collect();
        if names.len() != shapes.len() || names.len() != values.len() {
            return Err(FlError::InvalidTensor {
                tensor: names.first().cloned().unwrap_or_default(),
                reason: format!(
                    "{} names, {} shapes and {} value lists do not line up",
                    names.len(),
                    shapes.len(),
                    values.len()
                ),
            });
        }
        let tensors = names
            .into_iter()
            .zip(shapes)
            .zip(values)
            .map(|((n, s), v)| TensorView::from_f32(n, s, &v))
            .collect::<Result<Vec<_>, _>>()?;
        ModelView::new(tensors)
    }

    /// An owned f32 model with one flat layer per value list, named `layer_0`, `layer_1`, ...
    pub fn from_f32_flat(values: Vec<Vec<f32>>) -> Result<Model, FlError> {
        let names: Vec<String> = (0..values.len()).map(|i| format!("layer_{i}")).collect();
        let shapes: Vec<Vec<usize>> = values.iter().map(|v| vec![v.len()]).collect();
        ModelView::from_f32_layers(names, shapes, values)
    }

    /// Tensors in order.
    pub fn tensors(&self) -> &[TensorView<'a>] {
        &self.tensors
    }

    /// The tensor named `name`.
    pub fn tensor(&self, name: &str) -> Option<&TensorView<'a>> {
        self.tensors.iter().find(|t| t.name() == name)
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    /// True if there is no tensor.
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// Total elements over all tensors.
    pub fn numel(&self) -> usize {
        self.tensors.iter().map(TensorView::numel).sum()
    }

    /// Total data bytes over all tensors.
    pub fn size_bytes(&self) -> usize {
        self.tensors.iter().map(|t| t.bytes().len()).sum()
    }

    /// Free-form metadata (safetensors `__metadata__`).
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    /// Replaces the metadata.
    pub fn with_metadata(mut self, metadata: BTreeMap<String, String>) -> Self {
        self.metadata = metadata;
        self
    }

    /// Sets one metadata entry.
    pub fn set_metadata(&mut self, key: impl Into<String>, value: impl Into<String>) {
        self.metadata.insert(key.into(), value.into());
    }

    /// Every tensor as f32 values, in order.
    pub fn to_f32_layers(&self) -> Vec<Vec<f32>> {
        self.tensors.iter().map(TensorView::to_f32_vec).collect()
    }

    /// Every tensor as f64 values, in order.
    pub fn to_f64_layers(&self) -> Vec<Vec<f64>> {
        self.tensors.iter().map(TensorView::to_f64_vec).collect()
    }

    /// A borrowed view (no copy of tensor data).
    pub fn view(&self) -> ModelView<'_> {
        ModelView {
            tensors: self.tensors.iter().map(TensorView::borrowed).collect(),
            metadata: self.metadata.clone(),
        }
    }

    /// An owned model (copies data only where it was borrowed).
    pub fn into_owned(self) -> Model {
        ModelView {
            tensors: self
                .tensors
                .into_iter()
                .map(TensorView::into_owned)
                .collect(),
            metadata: self.metadata,
        }
    }

    /// Appends a tensor (its name must be new).
    pub fn push(&mut self, tensor: TensorView<'a>) -> Result<(), FlError> {
        if self.tensor(tensor.name()).is_some() {
            return Err(FlError::DuplicateTensor {
                tensor: tensor.name().to_owned(),
            });
        }
        self.tensors.push(tensor);
        Ok(())
    }

    /// SHA-256 over the canonical encoding: for each tensor in order its name, dtype, shape
    /// and little-endian data, each length-prefixed (u64 little-endian). Metadata is excluded.
    pub fn digest(&self) -> Digest {
        let mut h = Sha256::new();
        h.update(b"fl-model-v1\0");
        h.update((self.tensors.len() as u64).to_le_bytes());
        for t in &self.tensors {
            h.update((t.name.len() as u64).to_le_bytes());
            h.update(t.name.as_bytes());
            let dt = t.dtype.safetensors_name();
            h.update((dt.len() as u64).to_le_bytes());
            h.update(dt.as_bytes());
            h.update((t.shape.len() as u64).to_le_bytes());
            for d in &t.shape {
                h.update((*d as u64).to_le_bytes());
            }
            h.update((t.data.len() as u64).to_le_bytes());
            h.update(&t.data);
        }
        Digest(h.finalize().into())
    }
}

/// A model digest (SHA-256); `Display` prints lowercase hex.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    /// Lowercase hex.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}
