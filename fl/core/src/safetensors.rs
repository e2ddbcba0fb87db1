//! safetensors read (zero-copy over a byte slice the caller owns or memory-maps) and write.
//!
//! Format: u64 little-endian header length `n`, `n` bytes of JSON header
//! (`{"name": {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {..}}`),
//! then the data. Tensor order is the order of the data offsets; writing lays data out in
//! model order, so a written model reads back with the same order.

use std::borrow::Cow;
use std::collections::BTreeMap;

use crate::error::FlError;
use crate::model::{DType, Model, ModelView, TensorView, shape_numel};

/// Largest JSON header accepted (the reference implementation's limit, 100 MB:
/// `safetensors` crate `MAX_HEADER_SIZE`).
pub const MAX_HEADER_BYTES: usize = 100_000_000;

const METADATA_KEY: &str = "__metadata__";

fn corrupt(reason: impl Into<String>) -> FlError {
    FlError::CorruptSafetensors {
        source_label: String::new(),
        reason: reason.into(),
    }
}

fn truncated(reason: impl Into<String>) -> FlError {
    FlError::TruncatedSafetensors {
        source_label: String::new(),
        reason: reason.into(),
    }
}

impl<'a> ModelView<'a> {
    /// Parses safetensors bytes without copying tensor data. Errors carry an empty source
    /// label; use [`ModelView::from_safetensors_labeled`] to name the client or file.
    pub fn from_safetensors(bytes: &'a [u8]) -> Result<ModelView<'a>, FlError> {
        parse(bytes)
    }

    /// As [`ModelView::from_safetensors`], naming `label` (a client id or file) in errors.
    pub fn from_safetensors_labeled(
        bytes: &'a [u8],
        label: &str,
    ) -> Result<ModelView<'a>, FlError> {
        parse(bytes).map_err(|e| e.with_source_label(label))
    }

    /// Serializes to safetensors bytes, data in model order, metadata as `__metadata__`.
    pub fn to_safetensors(&self) -> Vec<u8> {
        let header = self.safetensors_header();
        let mut out = Vec::with_capacity(header.len() + self.size_bytes());
        out.extend_from_slice(&header);
        for t in self.tensors() {
            out.extend_from_slice(t.bytes());
        }
        out
    }

    /// Writes the same bytes as [`ModelView::to_safetensors`] to `w`, tensor by tensor, so a
    /// large model goes to a file without a second whole-model buffer. Returns the length.
    pub fn write_safetensors<W: std::io::Write>(&self, w: &mut W) -> std::io::Result<u64> {
        let header = self.safetensors_header();
        w.write_all(&header)?;
        let mut n = header.len() as u64;
        for t in self.tensors() {
            w.write_all(t.bytes())?;
            n += t.bytes().len() as u64;
        }
        Ok(n)
    }

    /// The 8-byte length and the JSON header, padded so the data starts 8-byte aligned.
    fn safetensors_header(&self) -> Vec<u8> {
        let mut header = String::from("{");
        let mut offset = 0usize;
        let mut first = true;
        if !self.metadata().is_empty() {
            header.push_str(&json_string(METADATA_KEY));
            header.push_str(":{");
            for (i, (k, v)) in self.metadata().iter().enumerate() {
                if i > 0 {
                    header.push(',');
                }
                header.push_str(&json_string(k));
                header.push(':');
                header.push_str(&json_string(v));
            }
            header.push('}');
            first = false;
        }
        for t in self.tensors() {
            if !first {
                header.push(',');
            }
            first = false;
            let end = offset + t.bytes().len();
            let shape: Vec<String> = t.shape().iter().map(|d| d.to_string()).collect();
            header.push_str(&format!(
                "{}:{{\"dtype\":\"{}\",\"shape\":[{}],\"data_offsets\":[{},{}]}}",
                json_string(t.name()),
                t.dtype().safetensors_name(),
                shape.join(","),
                offset,
                end
            ));
            offset = end;
        }
        header.push('}');
        // Pad with spaces so the data starts 8-byte aligned (as the reference writer does).
        while (8 + header.len()) % 8 != 0 {
            header.push(' ');
        }
        let mut out = Vec::with_capacity(8 + header.len());
        out.extend_from_slice(&(header.len() as u64).to_le_bytes());
        out.extend_from_slice(header.as_bytes());
        out
    }
}

impl Model {
    /// Parses safetensors bytes into an owned model (copies the data).
    pub fn from_safetensors_owned(bytes: &[u8]) -> Result<Model, FlError> {
        Ok(parse(bytes)?.into_owned())
    }
}

fn json_string(s: &str) -> String {
    serde_json::Value::String(s.to_owned()).to_string()
}

fn parse(bytes: &[u8]) -> Result<ModelView<'_>, FlError> {
    if bytes.len() < 8 {
        return Err(truncated(format!(
            "{} bytes, the 8-byte header length is incomplete",
            bytes.len()
        )));
    }
    let n = u64::from_le_bytes([
        bytes[0], bytes[1], bytes[2], bytes[3], bytes[4], bytes[5], bytes[6], bytes[7],
    ]);
    if n > MAX_HEADER_BYTES as u64 {
        return Err(corrupt(format!(
            "header length {n} exceeds {MAX_HEADER_BYTES} bytes"
        )));
    }
    let n = n as usize;
    if bytes.len() - 8 < n {
        return Err(truncated(format!(
            "header needs {n} bytes, {} remain",
            bytes.len() - 8
        )));
    }
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n])
        .map_err(|e| corrupt(format!("header is not valid JSON: {e}")))?;
    let serde_json::Value::Object(map) = header else {
        return Err(corrupt("header is not a JSON object"));
    };
    let data = &bytes[8 + n..];
    let mut metadata = BTreeMap::new();
    let mut entries: Vec<(usize, usize, String, DType, Vec<usize>)> = Vec::with_capacity(map.len());
    for (name, info) in &map {
        if name == METADATA_KEY {
            let serde_json::Value::Object(m) = info else {
                return Err(corrupt("`__metadata__` is not an object of strings"));
            };
            for (k, v) in m {
                let serde_json::Value::String(s) = v else {
                    return Err(corrupt(format!("metadata `{k}` is not a string")));
                };
                metadata.insert(k.clone(), s.clone());
            }
            continue;
        }
        let field = |f: &str| {
            info.get(f)
                .ok_or_else(|| corrupt(format!("tensor `{name}` has no `{f}`")))
        };
        let dtype_s = field("dtype")?
            .as_str()
            .ok_or_else(|| corrupt(format!("tensor `{name}`: dtype is not a string")))?;
        let dtype = DType::from_safetensors_name(dtype_s)
            .ok_or_else(|| corrupt(format!("tensor `{name}`: unsupported dtype `{dtype_s}`")))?;
        let shape = field("shape")?
            .as_array()
            .ok_or_else(|| corrupt(format!("tensor `{name}`: shape is not a list")))?
            .iter()
            .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
            .collect::<Option<Vec<usize>>>()
            .ok_or_else(|| {
                corrupt(format!(
                    "tensor `{name}`: shape has a non-integer dimension"
                ))
            })?;
        let offs = field("data_offsets")?
            .as_array()
            .filter(|a| a.len() == 2)
            .and_then(|a| Some((a[0].as_u64()? as usize, a[1].as_u64()? as usize)))
            .ok_or_else(|| corrupt(format!("tensor `{name}`: data_offsets is not [begin, end]")))?;
        let (begin, end) = offs;
        if end < begin {
            return Err(corrupt(format!(
                "tensor `{name}`: data_offsets [{begin}, {end}] run backwards"
            )));
        }
        let need = shape_numel(&shape)
            .and_then(|x| x.checked_mul(dtype.size_bytes()))
            .ok_or_else(|| corrupt(format!("tensor `{name}`: shape {shape:?} overflows")))?;
        if end - begin != need {
            return Err(corrupt(format!(
                "tensor `{name}`: data_offsets [{begin}, {end}] hold {} bytes but shape {shape:?} of {dtype} needs {need}",
                end - begin
            )));
        }
        entries.push((begin, end, name.clone(), dtype, shape));
    }
    entries.sort_by_key(|a| (a.0, a.1));
    let mut expect = 0usize;
    for (begin, end, name, _, _) in &entries {
        if *begin != expect {
            return Err(corrupt(format!(
                "tensor `{name}` starts at byte {begin} but the previous tensor ends at {expect} (gap or overlap)"
            )));
        }
        expect = *end;
    }
    if expect > data.len() {
        let name = entries.last().map(|e| e.2.as_str()).unwrap_or_default();
        return Err(truncated(format!(
            "tensor `{name}` ends at data byte {expect} but only {} data bytes follow the header",
            data.len()
        )));
    }
    if expect < data.len() {
        return Err(corrupt(format!(
            "{} trailing bytes after the last tensor",
            data.len() - expect
        )));
    }
    let tensors = entries
        .into_iter()
        .map(|(begin, end, name, dtype, shape)| {
            TensorView::new(name, dtype, shape, Cow::Borrowed(&data[begin..end]))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ModelView::new(tensors)?.with_metadata(metadata))
}
