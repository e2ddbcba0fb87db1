//! The round buffer every strategy folds into: validation and canonical (client-id) order.

use std::collections::BTreeMap;

use rayon::prelude::*;

use super::{Metrics, Update};
use crate::error::FlError;
use crate::model::{DType, ModelView, TensorView};

/// Limits applied in `fold`.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Largest update accepted, in data bytes over all tensors (`None`: no limit).
    pub max_update_bytes: Option<u64>,
    /// Largest accepted L2 norm of the update (update - global when the round has a global
    /// model, else the update itself), flat over all tensors (`None`: no bound).
    pub max_l2_norm: Option<f64>,
    /// Reject NaN and infinities (Flower checks neither; default true).
    pub check_finite: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_update_bytes: None,
            max_l2_norm: None,
            check_finite: true,
        }
    }
}

/// One kept update.
#[derive(Debug, Clone)]
pub struct Kept<'a> {
    pub client: String,
    pub model: ModelView<'a>,
    pub num_examples: u64,
    pub metrics: Metrics,
    /// Server-side clipping factor f: the strategy sees g + f (x - g) (1.0 = unchanged).
    pub clip_factor: f64,
}

#[derive(Debug, Clone, PartialEq)]
struct Spec {
    name: String,
    dtype: DType,
    shape: Vec<usize>,
}

/// Validates and keeps a round's updates.
#[derive(Debug, Clone)]
pub struct Collector<'a> {
    strategy: String,
    limits: Limits,
    round: Option<u64>,
    global: Option<ModelView<'a>>,
    schema: Option<Vec<Spec>>,
    kept: BTreeMap<String, Kept<'a>>,
}

/// Elements per parallel chunk for validation passes.
const CHECK_CHUNK: usize = 1 << 16;

/// Validation passes over fewer chunks than this run on the calling thread. Handing a pass to
/// the rayon pool from a thread outside it costs a wake-up of the pool, and its workers spin
/// (`sched_yield`) for a while after the work is gone: for a 1 MB update, whose check takes
/// about 0.1 ms, that was most of the CPU the check cost (the coordinator validates each
/// upload on its own blocking thread, many at once, so they are parallel anyway). The results
/// are the same either way: the first bad chunk, and per-chunk partial sums added in order.
const PAR_MIN_CHUNKS: usize = 16;

impl<'a> Collector<'a> {
    /// An empty buffer for `strategy` (its name appears in errors).
    pub fn new(strategy: &str, limits: Limits) -> Self {
        Self {
            strategy: strategy.to_owned(),
            limits,
            round: None,
            global: None,
            schema: None,
            kept: BTreeMap::new(),
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Replaces the limits.
    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
    }

    /// Opens a round, dropping kept updates.
    pub fn begin(&mut self, round: u64, global: Option<ModelView<'a>>) -> Result<(), FlError> {
        self.kept.clear();
        self.schema = global.as_ref().map(|g| {
            g.tensors()
                .iter()
                .map(|t| Spec {
                    name: t.name().to_owned(),
                    dtype: t.dtype(),
                    shape: t.shape().to_vec(),
                })
                .collect()
        });
        self.global = global;
        self.round = Some(round);
        Ok(())
    }

    /// The open round.
    pub fn round(&self) -> Option<u64> {
        self.round
    }

    /// The open round or a `NoRound` error naming `call`.
    pub fn open_round(&self, call: &'static str) -> Result<u64, FlError> {
        self.round.ok_or_else(|| FlError::NoRound {
            strategy: self.strategy.clone(),
            call,
        })
    }

    /// The round's global model.
    pub fn global(&self) -> Option<&ModelView<'a>> {
        self.global.as_ref()
    }

    /// The global model or a `MissingGlobal` error.
    pub fn require_global(&self) -> Result<&ModelView<'a>, FlError> {
        self.global.as_ref().ok_or_else(|| FlError::MissingGlobal {
            strategy: self.strategy.clone(),
        })
    }

    /// Kept updates in canonical order (ascending client id).
    pub fn kept(&self) -> Vec<&Kept<'a>> {
        self.kept.values().collect()
    }

    /// Number of kept updates.
    pub fn len(&self) -> usize {
        self.kept.len()
    }

    /// True if nothing was kept.
    pub fn is_empty(&self) -> bool {
        self.kept.is_empty()
    }

    /// Sets the server-side clipping factor of a kept client.
    pub fn set_clip_factor(&mut self, client: &str, factor: f64) {
        if let Some(k) = self.kept.get_mut(client) {
            k.clip_factor = factor;
        }
    }

    /// Closes the round: returns the kept updates (canonical order) and the global model.
    pub fn close(&mut self) -> Result<(u64, Vec<Kept<'a>>, Option<ModelView<'a>>), FlError> {
        let round = self.open_round("finish")?;
        if self.kept.is_empty() {
            return Err(FlError::NoUpdates {
                strategy: self.strategy.clone(),
                round,
            });
        }
        self.round = None;
        self.schema = None;
        let kept = std::mem::take(&mut self.kept).into_values().collect();
        Ok((round, kept, self.global.take()))
    }

    /// Validates `update` and keeps it.
    pub fn fold(&mut self, update: Update<'a>) -> Result<(), FlError> {
        let round = self.open_round("fold")?;
        let client = update.client.clone();
        if update.round < round {
            return Err(FlError::StaleRound {
                client,
                update_round: update.round,
                current_round: round,
            });
        }
        if update.round > round {
            return Err(FlError::FutureRound {
                client,
                update_round: update.round,
                current_round: round,
            });
        }
        if self.kept.contains_key(&client) {
            return Err(FlError::DuplicateClient { client, round });
        }
        if let Some(limit) = self.limits.max_update_bytes {
            let mut total = 0u64;
            for t in update.model.tensors() {
                total += t.bytes().len() as u64;
                if total > limit {
                    let size = update.model.size_bytes() as u64;
                    return Err(FlError::UpdateTooLarge {
                        client,
                        tensor: t.name().to_owned(),
                        size_bytes: size,
                        limit_bytes: limit,
                    });
                }
            }
        }
        if let Some(schema) = &self.schema {
            check_layout(&client, schema, &update.model)?;
        }
        if self.limits.check_finite {
            for t in update.model.tensors() {
                check_finite(&client, t)?;
            }
        }
        if let Some(bound) = self.limits.max_l2_norm {
            let (norm, tensor) = update_norm(&update.model, self.global.as_ref());
            if norm.is_nan() || norm > bound {
                return Err(FlError::NormTooLarge {
                    client,
                    tensor,
                    norm,
                    bound,
                });
            }
        }
        if self.schema.is_none() {
            self.schema = Some(
                update
                    .model
                    .tensors()
                    .iter()
                    .map(|t| Spec {
                        name: t.name().to_owned(),
                        dtype: t.dtype(),
                        shape: t.shape().to_vec(),
                    })
                    .collect(),
            );
        }
        self.kept.insert(
            client.clone(),
            Kept {
                client,
                model: update.model,
                num_examples: update.num_examples,
                metrics: update.metrics,
                clip_factor: 1.0,
            },
        );
        Ok(())
    }
}

fn check_layout(client: &str, schema: &[Spec], model: &ModelView<'_>) -> Result<(), FlError> {
    let tensors = model.tensors();
    for (i, spec) in schema.iter().enumerate() {
        let Some(t) = tensors.get(i) else {
            return Err(FlError::MissingTensor {
                client: client.to_owned(),
                tensor: spec.name.clone(),
            });
        };
        if t.name() != spec.name {
            if model.tensor(&spec.name).is_none() {
                return Err(FlError::MissingTensor {
                    client: client.to_owned(),
                    tensor: spec.name.clone(),
                });
            }
            if !schema.iter().any(|s| s.name == t.name()) {
                return Err(FlError::UnexpectedTensor {
                    client: client.to_owned(),
                    tensor: t.name().to_owned(),
                });
            }
            return Err(FlError::TensorOrderMismatch {
                client: client.to_owned(),
                index: i,
                expected: spec.name.clone(),
                found: t.name().to_owned(),
            });
        }
        if t.dtype() != spec.dtype {
            return Err(FlError::DTypeMismatch {
                client: client.to_owned(),
                tensor: spec.name.clone(),
                expected: spec.dtype,
                found: t.dtype(),
            });
        }
        if t.shape() != spec.shape.as_slice() {
            return Err(FlError::ShapeMismatch {
                client: client.to_owned(),
                tensor: spec.name.clone(),
                expected: spec.shape.clone(),
                found: t.shape().to_vec(),
            });
        }
    }
    if let Some(extra) = tensors.get(schema.len()) {
        return Err(FlError::UnexpectedTensor {
            client: client.to_owned(),
            tensor: extra.name().to_owned(),
        });
    }
    Ok(())
}

/// Fails with `NonFinite` (first offending index) if a float tensor holds NaN or an infinity.
pub fn check_finite(client: &str, t: &TensorView<'_>) -> Result<(), FlError> {
    let dtype = t.dtype();
    if !dtype.is_float() {
        return Ok(());
    }
    let size = dtype.size_bytes();
    let bytes = t.bytes();
    let chunk_bytes = CHECK_CHUNK * size;
    let bad_chunk = if bytes.len().div_ceil(chunk_bytes) < PAR_MIN_CHUNKS {
        bytes
            .chunks(chunk_bytes)
            .position(|c| chunk_has_nonfinite(dtype, c))
    } else {
        bytes
            .par_chunks(chunk_bytes)
            .enumerate()
            .find_first(|(_, c)| chunk_has_nonfinite(dtype, c))
            .map(|(i, _)| i)
    };
    let Some(chunk) = bad_chunk else {
        return Ok(());
    };
    let start = chunk * CHECK_CHUNK;
    let end = (start + CHECK_CHUNK).min(t.numel());
    for i in start..end {
        let v = t.get_f64(i);
        if !v.is_finite() {
            return Err(FlError::NonFinite {
                client: client.to_owned(),
                tensor: t.name().to_owned(),
                index: i,
                value: v,
            });
        }
    }
    Ok(())
}

fn chunk_has_nonfinite(dtype: DType, c: &[u8]) -> bool {
    match dtype {
        DType::F32 => c.chunks_exact(4).fold(false, |b, x| {
            b | (u32::from_le_bytes([x[0], x[1], x[2], x[3]]) & 0x7f80_0000 == 0x7f80_0000)
        }),
        DType::F64 => c.chunks_exact(8).fold(false, |b, x| {
            b | (u64::from_le_bytes([x[0], x[1], x[2], x[3], x[4], x[5], x[6], x[7]])
                & 0x7ff0_0000_0000_0000
                == 0x7ff0_0000_0000_0000)
        }),
        DType::F16 => c.chunks_exact(2).fold(false, |b, x| {
            b | (u16::from_le_bytes([x[0], x[1]]) & 0x7c00 == 0x7c00)
        }),
        DType::BF16 => c.chunks_exact(2).fold(false, |b, x| {
            b | (u16::from_le_bytes([x[0], x[1]]) & 0x7f80 == 0x7f80)
        }),
        DType::I32 | DType::I64 => false,
    }
}

/// L2 norm of `model - global` (or of `model` without a global), flat over all tensors, and
/// the tensor with the largest share. Summed in f64 in fixed chunks, so thread-independent.
pub fn update_norm(model: &ModelView<'_>, global: Option<&ModelView<'_>>) -> (f64, String) {
    let mut total = 0.0f64;
    let mut best = (f64::NEG_INFINITY, String::new());
    for (i, t) in model.tensors().iter().enumerate() {
        let g = global.and_then(|g| g.tensors().get(i));
        let sq = tensor_sq_dist(t, g);
        if sq > best.0 {
            best = (sq, t.name().to_owned());
        }
        total += sq;
    }
    (total.sqrt(), best.1)
}

/// Sum of squares of `t - g` (or of `t`), f64, chunked in a fixed order.
pub fn tensor_sq_dist(t: &TensorView<'_>, g: Option<&TensorView<'_>>) -> f64 {
    let n = t.numel();
    let chunks = n.div_ceil(CHECK_CHUNK);
    let partial = |c: usize| {
        let start = c * CHECK_CHUNK;
        let len = CHECK_CHUNK.min(n - start);
        let mut a = vec![0.0f64; len];
        t.load_f64(start, &mut a);
        if let Some(g) = g {
            let mut b = vec![0.0f64; len];
            g.load_f64(start, &mut b);
            for (x, y) in a.iter_mut().zip(&b) {
                *x -= y;
            }
        }
        super::kernel::sum_sq(&a)
    };
    let partials: Vec<f64> = if chunks < PAR_MIN_CHUNKS {
        (0..chunks).map(partial).collect()
    } else {
        (0..chunks).into_par_iter().map(partial).collect()
    };
    partials.iter().sum()
}
