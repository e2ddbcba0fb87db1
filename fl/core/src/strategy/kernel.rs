//! Cache-blocked, thread-count-independent numeric kernels.
//!
//! Every output coordinate is computed by the same sequence of f64 operations, in canonical
//! client order, whatever block or thread computes it: blocks only decide *where* work runs.
//! Reductions over coordinates (norms, Krum distances) sum fixed-size blocks in a fixed lane
//! order and combine the block partials in block order. No fused multiply-add is used, so the
//! results do not depend on the CPU features the compiler or runtime picks.

use rayon::prelude::*;

use super::Kept;
use crate::model::{DType, TensorView, encode_into};

/// Coordinates per block: 4096 f64 accumulators = 32 KiB, an L1/L2-resident working set.
pub const BLOCK: usize = 4096;

/// Sum of squares with 8 independent lanes combined in a fixed order.
pub fn sum_sq(a: &[f64]) -> f64 {
    let mut lanes = [0.0f64; 8];
    let mut chunks = a.chunks_exact(8);
    for c in &mut chunks {
        for l in 0..8 {
            lanes[l] += c[l] * c[l];
        }
    }
    for (l, v) in chunks.remainder().iter().enumerate() {
        lanes[l] += v * v;
    }
    ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3]))
        + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]))
}

/// acc[j] += c * x[start + j] for one tensor (f32 and f64 have tight loops).
#[inline]
pub fn axpy_block(t: &TensorView<'_>, c: f64, start: usize, acc: &mut [f64]) {
    let s = t.dtype().size_bytes();
    let bytes = &t.bytes()[start * s..(start + acc.len()) * s];
    match t.dtype() {
        DType::F32 => {
            for (a, x) in acc.iter_mut().zip(bytes.chunks_exact(4)) {
                *a += c * f32::from_le_bytes([x[0], x[1], x[2], x[3]]) as f64;
            }
        }
        DType::F64 => {
            for (a, x) in acc.iter_mut().zip(bytes.chunks_exact(8)) {
                *a += c * f64::from_le_bytes([x[0], x[1], x[2], x[3], x[4], x[5], x[6], x[7]]);
            }
        }
        dt => {
            for (a, x) in acc.iter_mut().zip(bytes.chunks_exact(s)) {
                *a += c * crate::model::decode_one(dt, x);
            }
        }
    }
}

/// Linear combination of tensor `t` of the kept clients (and optionally the global):
/// acc[j] = g_coeff * g[j] + sum_k coeffs[k] * x_k[j], clients in the given (canonical) order.
pub fn linear_block(
    kept: &[Kept<'_>],
    t: usize,
    coeffs: &[f64],
    global: Option<(&TensorView<'_>, f64)>,
    start: usize,
    acc: &mut [f64],
) {
    acc.fill(0.0);
    if let Some((g, c)) = global
        && c != 0.0
    {
        axpy_block(g, c, start, acc);
    }
    for (k, c) in kept.iter().zip(coeffs) {
        if *c != 0.0 {
            axpy_block(&k.model.tensors()[t], *c, start, acc);
        }
    }
}

/// Fills a new tensor buffer of `dtype` with `numel` values computed block by block, in
/// parallel: `f(start, out)` writes the f64 values for `[start, start + out.len())`.
pub fn par_fill(dtype: DType, numel: usize, f: impl Fn(usize, &mut [f64]) + Sync) -> Vec<u8> {
    let size = dtype.size_bytes();
    let mut out = vec![0u8; numel * size];
    out.par_chunks_mut(BLOCK * size).enumerate().for_each_init(
        || vec![0.0f64; BLOCK],
        |buf, (b, chunk)| {
            let len = chunk.len() / size;
            let vals = &mut buf[..len];
            f(b * BLOCK, vals);
            encode_into(dtype, vals, chunk);
        },
    );
    out
}

/// As [`par_fill`] with blocks of `block` coordinates and per-thread scratch `S`.
pub fn par_fill_with<S: Send>(
    dtype: DType,
    numel: usize,
    block: usize,
    init: impl Fn() -> S + Sync + Send,
    f: impl Fn(&mut S, usize, &mut [f64]) + Sync,
) -> Vec<u8> {
    let size = dtype.size_bytes();
    let mut out = vec![0u8; numel * size];
    out.par_chunks_mut(block * size).enumerate().for_each_init(
        || (init(), vec![0.0f64; block]),
        |(s, buf), (b, chunk)| {
            let len = chunk.len() / size;
            let vals = &mut buf[..len];
            f(s, b * block, vals);
            encode_into(dtype, vals, chunk);
        },
    );
    out
}

/// Gathers tensor `t` of the given clients for `[start, start + len)` into `scratch`,
/// coordinate-major (`scratch[j * n + k]`), applying each client's clip factor
/// (g + f (x - g), rounded to the tensor's dtype as Flower's float32 arithmetic would).
pub fn gather_block(
    clients: &[&Kept<'_>],
    t: usize,
    global: Option<&TensorView<'_>>,
    start: usize,
    len: usize,
    scratch: &mut Vec<f64>,
    row: &mut Vec<f64>,
) {
    let n = clients.len();
    scratch.resize(n * len, 0.0);
    row.resize(len, 0.0);
    let mut grow = Vec::new();
    for (k, c) in clients.iter().enumerate() {
        let tv = &c.model.tensors()[t];
        tv.load_f64(start, &mut row[..len]);
        if c.clip_factor != 1.0
            && let Some(g) = global
        {
            grow.resize(len, 0.0);
            g.load_f64(start, &mut grow);
            for (x, gv) in row.iter_mut().zip(&grow) {
                *x = crate::model::round_to_dtype(tv.dtype(), gv + c.clip_factor * (*x - gv));
            }
        }
        for (j, v) in row[..len].iter().enumerate() {
            scratch[j * n + k] = *v;
        }
    }
}
