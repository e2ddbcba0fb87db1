//! Fast f32 paths of the coordinate-wise robust aggregators (FedMedian, FedTrimmedAvg).
//!
//! Each gives exactly the bits of the generic f64 path in `robust.rs` (the unit tests below
//! compare the two on random, tied, signed-zero, extreme and non-finite inputs):
//! - the median selects with a sorting network run on [`LANES`] coordinates at once (a lane
//!   is a coordinate, a wire a client) over i32 keys whose signed order is `f32::total_cmp`'s,
//!   the order the generic path selects by, so the selected value is the same element;
//! - the trimmed mean replays numpy's introselect on the f32 values (every comparison gives
//!   the same answer on an f32 as on its exact f64 image) and sums in f32, which equals the
//!   generic path's f64 sum rounded to f32 after every addition: rounding an f64 sum or
//!   quotient of two f32 to f32 is the correctly rounded f32 result (53 >= 2 * 24 + 2).
//!
//! Kernels are written for the autovectoriser (fixed-size lane arrays); on x86_64 CPUs with
//! AVX2 or AVX-512 the same code runs compiled for them (detected at run time). No fused multiply-add
//! and no reassociation is involved, so the instruction set never changes a bit.

use super::Kept;
use super::robust::{MASK_MAX, numpy_partition, numpy_partition_masks};
use crate::model::TensorView;

/// Coordinates per network pass: 16 i32 lanes are one AVX-512 or two AVX2 registers per wire.
pub(crate) const LANES: usize = 16;

/// Most clients the sorting-network median handles; above it the generic path selects.
/// Batcher's network for 128 wires has 1471 compare-exchanges (16 per coordinate and
/// wire at most), still cheaper than a scalar select per coordinate.
pub(crate) const NET_MAX_CLIENTS: usize = 128;

type Lane = [i32; LANES];

/// An f32's total-order key: signed i32 comparison of keys is `f32::total_cmp`.
/// The map is its own inverse (the sign bit is kept).
#[inline(always)]
fn key(bits: u32) -> i32 {
    (bits ^ ((((bits as i32) >> 31) as u32) >> 1)) as i32
}

#[inline(always)]
fn unkey(k: i32) -> f32 {
    f32::from_bits(key(k as u32) as u32)
}

/// Compare-exchange pairs `(i, j)`, `i < j`, min to `i`, of Batcher's odd-even merge sort of
/// `n` wires (Knuth TAOCP 3, 5.3.4, algorithm M), keeping only those that can affect the
/// `outputs` wires. Pairs reaching past `n` are dropped: that is the network for the next
/// power of two with +inf on the extra wires, on which those pairs do nothing.
pub(crate) fn selection_network(n: usize, outputs: &[usize]) -> Vec<(u16, u16)> {
    assert!(n <= u16::MAX as usize, "network of {n} wires");
    let mut all = Vec::new();
    let mut p = 1;
    while p < n {
        let mut k = p;
        while k >= 1 {
            let mut j = k % p;
            while j + k < n {
                for i in 0..k.min(n - j - k) {
                    if (i + j) / (2 * p) == (i + j + k) / (2 * p) {
                        all.push(((i + j) as u16, (i + j + k) as u16));
                    }
                }
                j += 2 * k;
            }
            k /= 2;
        }
        p *= 2;
    }
    let mut needed = vec![false; n];
    for &o in outputs {
        needed[o] = true;
    }
    let mut kept = Vec::with_capacity(all.len());
    for &(i, j) in all.iter().rev() {
        if needed[i as usize] || needed[j as usize] {
            needed[i as usize] = true;
            needed[j as usize] = true;
            kept.push((i, j));
        }
    }
    kept.reverse();
    kept
}

/// Loads f32 values `[start, start + out.len())` of tensor `t` of client `c` as the
/// generic path sees them: with a clip factor f (and a global g), g + f (x - g) in f64,
/// rounded to f32 (`kernel::gather_block`).
#[inline(always)]
fn load_f32(
    c: &Kept<'_>,
    t: usize,
    global: Option<&TensorView<'_>>,
    start: usize,
    out: &mut [f32],
) {
    let bytes = &c.model.tensors()[t].bytes()[start * 4..(start + out.len()) * 4];
    for (o, x) in out.iter_mut().zip(bytes.chunks_exact(4)) {
        *o = f32::from_le_bytes([x[0], x[1], x[2], x[3]]);
    }
    if c.clip_factor != 1.0
        && let Some(g) = global
    {
        let gb = &g.bytes()[start * 4..(start + out.len()) * 4];
        for (o, x) in out.iter_mut().zip(gb.chunks_exact(4)) {
            let gv = f32::from_le_bytes([x[0], x[1], x[2], x[3]]) as f64;
            *o = (gv + c.clip_factor * (*o as f64 - gv)) as f32;
        }
    }
}

/// `simd_fn! { fn name(args) -> R = generic; }` defines `name`, which runs `generic` (an
/// `#[inline(always)]` function) compiled for AVX-512, for AVX2, or as built, whichever the CPU
/// has (detected at run time, cached by std). The kernels use no fused multiply-add unless
/// they say so and it cannot change a bit, so the instruction set never changes a result.
macro_rules! simd_fn {
    ($(#[$m:meta])* $vis:vis fn $name:ident($($arg:ident : $ty:ty),* $(,)?) $(-> $ret:ty)? = $generic:ident;) => {
        $(#[$m])*
        #[allow(clippy::too_many_arguments)]
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq")]
                #[allow(clippy::too_many_arguments)]
                fn avx512($($arg: $ty),*) $(-> $ret)? {
                    $generic($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                fn avx2($($arg: $ty),*) $(-> $ret)? {
                    $generic($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512vl")
                    && std::arch::is_x86_feature_detected!("avx512bw")
                    && std::arch::is_x86_feature_detected!("avx512dq")
                {
                    // SAFETY: the CPU has every feature `avx512` is compiled for.
                    return unsafe { avx512($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: the CPU has every feature `avx2` is compiled for.
                    return unsafe { avx2($($arg),*) };
                }
            }
            $generic($($arg),*)
        }
    };
}
pub(crate) use simd_fn;

/// The median plan of one round: the network and the wires it reads.
pub(crate) struct MedianNet {
    net: Vec<(u16, u16)>,
    n: usize,
}

impl MedianNet {
    pub fn new(n: usize) -> Self {
        assert!(
            (1..=NET_MAX_CLIENTS).contains(&n),
            "median network for {n} clients"
        );
        let mid = n / 2;
        let outputs: &[usize] = if n % 2 == 1 { &[mid] } else { &[mid - 1, mid] };
        Self {
            net: selection_network(n, outputs),
            n,
        }
    }
}

/// Asks the CPU to fetch `bytes` into cache (one hint per 64-byte line; no effect on results).
#[inline(always)]
pub(crate) fn prefetch(bytes: &[u8]) {
    #[cfg(target_arch = "x86_64")]
    for off in (0..bytes.len()).step_by(64) {
        // SAFETY: a prefetch hint never faults and never changes memory; the address is in
        // `bytes`.
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                bytes.as_ptr().add(off).cast(),
            )
        };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = bytes;
}

/// Coordinates staged per client at once: each client's 1 KiB run is read in one go (a long
/// sequential read per input file, which the hardware prefetcher follows), and `n` x 256 keys
/// (50 KiB for 50 clients) stay in L2 while the network runs over them.
const STAGE: usize = 256;

simd_fn! {
    /// Medians of tensor `t` (f32) over `[start, start + out.len())` into `out` (f32 LE bytes).
    /// Pushes to `redo` the offsets of coordinates the generic path must compute: an even count
    /// whose lower middle value is NaN (the generic path's `f64::max` skips NaN).
    /// `wires` is scratch: `stage[b * n + c]` holds client c's keys of batch b.
    pub(crate) fn median_block(
        plan: &MedianNet,
        clients: &[&Kept<'_>],
        t: usize,
        global: Option<&TensorView<'_>>,
        start: usize,
        out: &mut [u8],
        wires: &mut Vec<Lane>,
        redo: &mut Vec<usize>,
    ) = median_block_generic;
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn median_block_generic(
    plan: &MedianNet,
    clients: &[&Kept<'_>],
    t: usize,
    global: Option<&TensorView<'_>>,
    start: usize,
    out: &mut [u8],
    stage: &mut Vec<Lane>,
    redo: &mut Vec<usize>,
) {
    let n = plan.n;
    debug_assert_eq!(clients.len(), n);
    let numel = out.len() / 4;
    let mid = n / 2;
    for (sub, sub_out) in out.chunks_mut(STAGE * 4).enumerate() {
        let s0 = start + sub * STAGE;
        let len = sub_out.len() / 4;
        let batches = len.div_ceil(LANES);
        stage.resize(batches * n, [0; LANES]);
        for (k, c) in clients.iter().enumerate() {
            let bytes = c.model.tensors()[t].bytes();
            if s0 + len < start + numel {
                // the next sub-block's run of this client: 50 input streams are more than the
                // hardware prefetcher follows, so the loads of the next pass would wait on memory
                let next =
                    &bytes[(s0 + len) * 4..(s0 + len + STAGE.min(start + numel - s0 - len)) * 4];
                prefetch(next);
            }
            if len % LANES == 0 && (c.clip_factor == 1.0 || global.is_none()) {
                // whole batches of an unclipped client: straight from the bytes
                let src = &bytes[s0 * 4..(s0 + len) * 4];
                let (words, _) = src.as_chunks::<{ LANES * 4 }>();
                for (b, batch) in words.iter().enumerate() {
                    let (four, _) = batch.as_chunks::<4>();
                    let mut raw = [0u32; LANES];
                    for (r, f) in raw.iter_mut().zip(four) {
                        *r = u32::from_le_bytes(*f);
                    }
                    let w = &mut stage[b * n + k];
                    for (x, r) in w.iter_mut().zip(raw) {
                        *x = key(r);
                    }
                }
            } else {
                for b in 0..batches {
                    let bl = LANES.min(len - b * LANES);
                    let mut vals = [0.0f32; LANES];
                    load_f32(c, t, global, s0 + b * LANES, &mut vals[..bl]);
                    let w = &mut stage[b * n + k];
                    for (x, v) in w.iter_mut().zip(vals) {
                        *x = key(v.to_bits());
                    }
                }
            }
        }
        for (b, chunk) in sub_out.chunks_mut(LANES * 4).enumerate() {
            let wires = &mut stage[b * n..(b + 1) * n];
            for &(i, j) in &plan.net {
                let (a, c) = (wires[i as usize], wires[j as usize]);
                let mut lo = [0i32; LANES];
                let mut hi = [0i32; LANES];
                for l in 0..LANES {
                    lo[l] = a[l].min(c[l]);
                    hi[l] = a[l].max(c[l]);
                }
                wires[i as usize] = lo;
                wires[j as usize] = hi;
            }
            let mut vals = [0.0f32; LANES];
            if n % 2 == 1 {
                for l in 0..LANES {
                    vals[l] = unkey(wires[mid][l]);
                }
            } else {
                let (lower, upper) = (wires[mid - 1], wires[mid]);
                for l in 0..LANES {
                    vals[l] = ((unkey(lower[l]) as f64 + unkey(upper[l]) as f64) / 2.0) as f32;
                }
                let off = sub * STAGE + b * LANES;
                for (l, k) in lower.iter().enumerate().take(chunk.len() / 4) {
                    if unkey(*k).is_nan() {
                        redo.push(off + l);
                    }
                }
            }
            for (o, v) in chunk.chunks_exact_mut(4).zip(vals) {
                o.copy_from_slice(&v.to_le_bytes());
            }
        }
    }
    debug_assert!(redo.iter().all(|&j| j < numel));
}

simd_fn! {
    /// Trimmed means of tensor `t` (f32) over `[start, start + out.len())` into `out` (f32 LE
    /// bytes): numpy's partition at `cut` and `n - cut - 1`, the kept values summed in f32 in
    /// the order the partition leaves them, divided in f32.
    pub(crate) fn trimmed_block(
        clients: &[&Kept<'_>],
        t: usize,
        global: Option<&TensorView<'_>>,
        cut: usize,
        start: usize,
        out: &mut [u8],
        scratch: &mut Vec<f32>,
        row: &mut Vec<f32>,
    ) = trimmed_block_generic;
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn trimmed_block_generic(
    clients: &[&Kept<'_>],
    t: usize,
    global: Option<&TensorView<'_>>,
    cut: usize,
    start: usize,
    out: &mut [u8],
    scratch: &mut Vec<f32>,
    row: &mut Vec<f32>,
) {
    let n = clients.len();
    let len = out.len() / 4;
    scratch.resize(n * len, 0.0);
    row.resize(len, 0.0);
    for (k, c) in clients.iter().enumerate() {
        load_f32(c, t, global, start, row);
        for (j, v) in row.iter().enumerate() {
            scratch[j * n + k] = *v;
        }
    }
    let hi = n - cut - 1;
    let kths: &[usize] = if hi == cut { &[cut] } else { &[cut, hi] };
    let count = (n - 2 * cut) as f32;
    let mut buf = [0.0f32; MASK_MAX];
    for (v, o) in scratch.chunks_exact_mut(n).zip(out.chunks_exact_mut(4)) {
        let kept = if n <= MASK_MAX && !v.iter().any(|x| x.is_nan()) {
            buf[..n].copy_from_slice(v);
            numpy_partition_masks(&mut buf, n, kths);
            &buf[cut..n - cut]
        } else {
            numpy_partition(v, kths);
            &v[cut..n - cut]
        };
        let mut acc = 0.0f32;
        for x in kept {
            acc += *x;
        }
        o.copy_from_slice(&(acc / count).to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every 0/1 input of up to 12 wires comes out sorted (the 0-1 principle: then every
    /// input does).
    #[test]
    fn batcher_network_sorts_every_zero_one_input() {
        for n in 1..=12usize {
            let all: Vec<usize> = (0..n).collect();
            let net = selection_network(n, &all);
            for bits in 0u32..(1 << n) {
                let mut w: Vec<u32> = (0..n).map(|i| (bits >> i) & 1).collect();
                for &(i, j) in &net {
                    let (a, b) = (w[i as usize], w[j as usize]);
                    w[i as usize] = a.min(b);
                    w[j as usize] = a.max(b);
                }
                assert!(w.windows(2).all(|p| p[0] <= p[1]), "n={n} input={bits:b}");
            }
        }
    }

    #[test]
    fn pruned_network_selects_the_middle_of_random_inputs() {
        let mut s = 0x1234_5678_9abc_def0u64;
        let mut next = || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        for n in [1usize, 2, 3, 7, 8, 13, 31, 32, 33, 50, 64, 100, 128] {
            let mid = n / 2;
            let outs: Vec<usize> = if n % 2 == 1 {
                vec![mid]
            } else {
                vec![mid - 1, mid]
            };
            let net = selection_network(n, &outs);
            for _ in 0..50 {
                let mut w: Vec<u64> = (0..n).map(|_| next() % 17).collect();
                let mut sorted = w.clone();
                sorted.sort_unstable();
                for &(i, j) in &net {
                    let (a, b) = (w[i as usize], w[j as usize]);
                    w[i as usize] = a.min(b);
                    w[j as usize] = a.max(b);
                }
                for &o in &outs {
                    assert_eq!(w[o], sorted[o], "n={n} wire {o}");
                }
            }
        }
    }

    #[test]
    fn keys_order_as_total_cmp() {
        let vals = [
            f32::NEG_INFINITY,
            -3.3e38,
            -1.0,
            -f32::MIN_POSITIVE,
            -1e-45,
            -0.0,
            0.0,
            1e-45,
            1.0,
            3.4e38,
            f32::INFINITY,
            f32::NAN,
            -f32::NAN,
        ];
        for a in vals {
            assert_eq!(unkey(key(a.to_bits())).to_bits(), a.to_bits());
            for b in vals {
                assert_eq!(
                    key(a.to_bits()).cmp(&key(b.to_bits())),
                    a.total_cmp(&b),
                    "{a} {b}"
                );
            }
        }
    }
}
