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
///
/// Every coordinate is the same chain of f64 operations, starting from 0.0 and adding one
/// term at a time in order; f32 sources are taken four at a time so the accumulator is read
/// and written once per four terms (the chain, and so every bit, is unchanged).
pub fn linear_block(
    kept: &[Kept<'_>],
    t: usize,
    coeffs: &[f64],
    global: Option<(&TensorView<'_>, f64)>,
    start: usize,
    acc: &mut [f64],
) {
    acc.fill(0.0);
    let mut terms: Vec<(&TensorView<'_>, f64)> = Vec::with_capacity(kept.len() + 1);
    if let Some((g, c)) = global
        && c != 0.0
    {
        terms.push((g, c));
    }
    for (k, c) in kept.iter().zip(coeffs) {
        if *c != 0.0 {
            terms.push((&k.model.tensors()[t], *c));
        }
    }
    let mut rest = &terms[..];
    while !rest.is_empty() {
        if let Some(four) = rest.first_chunk::<4>()
            && four.iter().all(|(x, _)| x.dtype() == DType::F32)
        {
            let bytes = |i: usize| &four[i].0.bytes()[start * 4..(start + acc.len()) * 4];
            let xs = [bytes(0), bytes(1), bytes(2), bytes(3)];
            let cs = [four[0].1, four[1].1, four[2].1, four[3].1];
            axpy4_f32(acc, xs, cs);
            rest = &rest[4..];
        } else {
            axpy_block(rest[0].0, rest[0].1, start, acc);
            rest = &rest[1..];
        }
    }
}

super::coordwise::simd_fn! {
    /// acc[j] = (((acc[j] + c0 x0[j]) + c1 x1[j]) + c2 x2[j]) + c3 x3[j] for f32 sources.
    fn axpy4_f32(acc: &mut [f64], xs: [&[u8]; 4], cs: [f64; 4]) = axpy4_f32_generic;
}

#[inline(always)]
fn axpy4_f32_generic(acc: &mut [f64], xs: [&[u8]; 4], cs: [f64; 4]) {
    let f = |x: &[u8]| f32::from_le_bytes([x[0], x[1], x[2], x[3]]) as f64;
    let [x0, x1, x2, x3] = xs;
    let [c0, c1, c2, c3] = cs;
    for ((((a, v0), v1), v2), v3) in acc
        .iter_mut()
        .zip(x0.chunks_exact(4))
        .zip(x1.chunks_exact(4))
        .zip(x2.chunks_exact(4))
        .zip(x3.chunks_exact(4))
    {
        *a = (((*a + c0 * f(v0)) + c1 * f(v1)) + c2 * f(v2)) + c3 * f(v3);
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

/// Loads tensor `t` of client `c` for `[start, start + row.len())` as f64, applying the
/// client's clip factor (g + f (x - g), rounded to the tensor's dtype as Flower's float32
/// arithmetic would). `grow` is scratch for the global's values.
pub fn load_row(
    c: &Kept<'_>,
    t: usize,
    global: Option<&TensorView<'_>>,
    start: usize,
    row: &mut [f64],
    grow: &mut Vec<f64>,
) {
    let tv = &c.model.tensors()[t];
    tv.load_f64(start, row);
    if c.clip_factor != 1.0
        && let Some(g) = global
    {
        grow.resize(row.len(), 0.0);
        g.load_f64(start, grow);
        for (x, gv) in row.iter_mut().zip(grow.iter()) {
            *x = crate::model::round_to_dtype(tv.dtype(), gv + c.clip_factor * (*x - gv));
        }
    }
}

/// Gathers tensor `t` of the given clients for `[start, start + len)` into `scratch`,
/// coordinate-major (`scratch[j * n + k]`), rows loaded by [`load_row`].
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
        load_row(c, t, global, start, &mut row[..len], &mut grow);
        for (j, v) in row[..len].iter().enumerate() {
            scratch[j * n + k] = *v;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ModelView;
    use crate::strategy::Metrics;

    /// The four-at-a-time f32 chain gives the bits of one term at a time.
    #[test]
    fn linear_block_equals_one_term_at_a_time() {
        let mut s = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        let d = 1000;
        for n in [1usize, 3, 4, 5, 9, 13] {
            let models: Vec<ModelView<'static>> = (0..n)
                .map(|i| {
                    let a: Vec<f32> = (0..d)
                        .map(|_| f32::from_bits(next() as u32 & 0xbfff_ffff))
                        .collect();
                    let t = if i == 2 {
                        let b: Vec<f64> = a.iter().map(|x| *x as f64 * 1.1).collect();
                        TensorView::from_f64("w", vec![d], &b).unwrap()
                    } else {
                        TensorView::from_f32("w", vec![d], &a).unwrap()
                    };
                    ModelView::new(vec![t]).unwrap()
                })
                .collect();
            let kept: Vec<Kept<'_>> = models
                .iter()
                .enumerate()
                .map(|(i, m)| Kept {
                    client: format!("c{i}"),
                    model: m.view(),
                    num_examples: 1,
                    metrics: Metrics::new(),
                    clip_factor: 1.0,
                })
                .collect();
            let coeffs: Vec<f64> = (0..n)
                .map(|i| {
                    if i == 1 {
                        0.0
                    } else {
                        (next() % 1000) as f64 / 7.0
                    }
                })
                .collect();
            let g = &models[0].tensors()[0];
            for global in [None, Some((g, 0.25))] {
                let mut fast = vec![0.0; 300];
                linear_block(&kept, 0, &coeffs, global, 17, &mut fast);
                let mut slow = vec![0.0; 300];
                if let Some((g, c)) = global {
                    axpy_block(g, c, 17, &mut slow);
                }
                for (k, c) in kept.iter().zip(&coeffs) {
                    if *c != 0.0 {
                        axpy_block(&k.model.tensors()[0], *c, 17, &mut slow);
                    }
                }
                let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&fast), bits(&slow), "n={n}");
            }
        }
    }
}
