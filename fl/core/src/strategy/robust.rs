//! Robust aggregators: FedMedian, FedTrimmedAvg, Krum, MultiKrum, Bulyan.
//!
//! They read the kept views (memory-mapped files in `fl aggregate` and the benches) block by
//! block into a per-thread scratch of `N x block` values; no aggregator copies all N models.
//! Every coordinate's result depends only on the N values at that coordinate in canonical
//! order, so results are bitwise independent of arrival order and thread count.

use rayon::prelude::*;

use super::coordwise::simd_fn;
use super::coordwise::{MedianNet, NET_MAX_CLIENTS, median_block, prefetch, trimmed_block};
use super::fedopt::MeanPlan;
use super::kernel::{gather_block, load_row, par_fill_with};
use super::{Collector, Kept, Limits, Metrics, Strategy, Update, aggregate_metrics};
use crate::error::FlError;
use crate::model::{DType, Model, ModelView, TensorView, round_to_dtype};

/// Coordinates per gathered block (50 clients x 512 x 8 B = 200 KiB of scratch per thread).
const GATHER_BLOCK: usize = 512;

/// Applies `per_coord(values_of_N_clients) -> f64` to every coordinate of every tensor.
fn coordinatewise(
    clients: &[&Kept<'_>],
    global: Option<&ModelView<'_>>,
    per_coord: impl Fn(&mut [f64], DType) -> f64 + Sync,
) -> Result<Model, FlError> {
    build_model(clients, global, |t, g| {
        coordinatewise_tensor(clients, t, g, &per_coord)
    })
}

/// A model shaped as the clients', tensor `t` computed by `data(t, global tensor t)`.
fn build_model(
    clients: &[&Kept<'_>],
    global: Option<&ModelView<'_>>,
    data: impl Fn(usize, Option<&TensorView<'_>>) -> Vec<u8>,
) -> Result<Model, FlError> {
    let first = &clients[0].model;
    let mut tensors = Vec::with_capacity(first.len());
    for (t, spec) in first.tensors().iter().enumerate() {
        let g = global.map(|g| &g.tensors()[t]);
        tensors.push(TensorView::new(
            spec.name(),
            spec.dtype(),
            spec.shape().to_vec(),
            data(t, g),
        )?);
    }
    ModelView::new(tensors)
}

/// The generic path of one tensor: gathers f64 values and applies `per_coord`.
fn coordinatewise_tensor(
    clients: &[&Kept<'_>],
    t: usize,
    g: Option<&TensorView<'_>>,
    per_coord: &(impl Fn(&mut [f64], DType) -> f64 + Sync),
) -> Vec<u8> {
    let n = clients.len();
    let spec = &clients[0].model.tensors()[t];
    let dtype = spec.dtype();
    par_fill_with(
        dtype,
        spec.numel(),
        GATHER_BLOCK,
        || (Vec::new(), Vec::new()),
        |(scratch, row): &mut (Vec<f64>, Vec<f64>), start, out| {
            gather_block(clients, t, g, start, out.len(), scratch, row);
            for (j, o) in out.iter_mut().enumerate() {
                *o = per_coord(&mut scratch[j * n..(j + 1) * n], dtype);
            }
        },
    )
}

/// Coordinates per rayon task of the f32 fast paths (a multiple of `coordwise::LANES`).
const F32_TASK: usize = 4096;
/// Coordinates per gathered sub-block of the trimmed mean: N x 128 f32 stay in L1.
const TRIM_BLOCK: usize = 128;

/// FedMedian of every tensor: the sorting-network path for f32, the generic path otherwise.
fn median_model(clients: &[&Kept<'_>], global: Option<&ModelView<'_>>) -> Result<Model, FlError> {
    let n = clients.len();
    let net = (n <= NET_MAX_CLIENTS).then(|| MedianNet::new(n));
    build_model(clients, global, |t, g| {
        let spec = &clients[0].model.tensors()[t];
        let Some(net) = net.as_ref().filter(|_| spec.dtype() == DType::F32) else {
            return coordinatewise_tensor(clients, t, g, &|v: &mut [f64], _| median_of(v));
        };
        let mut out = vec![0u8; spec.numel() * 4];
        out.par_chunks_mut(F32_TASK * 4).enumerate().for_each_init(
            || (Vec::new(), Vec::new(), Vec::new(), Vec::new()),
            |(wires, redo, scratch, row), (b, chunk)| {
                let start = b * F32_TASK;
                redo.clear();
                median_block(net, clients, t, g, start, chunk, wires, redo);
                for &j in redo.iter() {
                    gather_block(clients, t, g, start + j, 1, scratch, row);
                    let v = median_of(&mut scratch[..n]) as f32;
                    chunk[j * 4..j * 4 + 4].copy_from_slice(&v.to_le_bytes());
                }
            },
        );
        out
    })
}

/// FedTrimmedAvg of every tensor: numpy's partition replayed on f32 values for f32, the
/// generic path otherwise.
fn trimmed_model(
    clients: &[&Kept<'_>],
    global: Option<&ModelView<'_>>,
    cut: usize,
) -> Result<Model, FlError> {
    let n = clients.len();
    let hi = n - cut - 1;
    let kths: &[usize] = if hi == cut { &[cut] } else { &[cut, hi] };
    build_model(clients, global, |t, g| {
        let spec = &clients[0].model.tensors()[t];
        if spec.dtype() != DType::F32 {
            return coordinatewise_tensor(clients, t, g, &|v: &mut [f64], dtype| {
                numpy_partition(v, kths);
                let kept = &v[cut..n - cut];
                let mean = trimmed_sum(kept, dtype) / kept.len() as f64;
                if matches!(dtype, DType::F32 | DType::F16 | DType::BF16) {
                    round_to_dtype(DType::F32, mean)
                } else {
                    mean
                }
            });
        }
        let mut out = vec![0u8; spec.numel() * 4];
        out.par_chunks_mut(F32_TASK * 4).enumerate().for_each_init(
            || (Vec::new(), Vec::new()),
            |(scratch, row), (b, chunk)| {
                for (s, sub) in chunk.chunks_mut(TRIM_BLOCK * 4).enumerate() {
                    let start = b * F32_TASK + s * TRIM_BLOCK;
                    trimmed_block(clients, t, g, cut, start, sub, scratch, row);
                }
            },
        );
        out
    })
}

/// numpy `median`: the middle value, or for even N the mean of the two middle values
/// (Flower computes that mean in the input dtype; halving is exact, so rounding the f64
/// mean to the dtype gives the same value, without float32 overflow of a + b).
pub fn median_of(v: &mut [f64]) -> f64 {
    let n = v.len();
    let mid = n / 2;
    let (lo, m, _) = v.select_nth_unstable_by(mid, f64::total_cmp);
    let upper = *m;
    if n % 2 == 1 {
        upper
    } else {
        let lower = lo.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        (lower + upper) / 2.0
    }
}

/// numpy's introselect pivot stack (`NPY_MAX_PIVOT_STACK` = 50), on the stack.
struct PivotStack {
    items: [usize; PivotStack::MAX],
    len: usize,
}

impl Default for PivotStack {
    fn default() -> Self {
        Self {
            items: [0; Self::MAX],
            len: 0,
        }
    }
}

impl PivotStack {
    const MAX: usize = 50;

    fn last(&self) -> Option<usize> {
        self.len.checked_sub(1).map(|i| self.items[i])
    }

    fn pop(&mut self) {
        self.len = self.len.saturating_sub(1);
    }

    /// numpy's `store_pivot`: pivots at or above kth are kept; a full stack keeps the kth.
    fn store(&mut self, pivot: usize, kth: usize) {
        if pivot == kth && self.len == Self::MAX {
            self.items[Self::MAX - 1] = pivot;
        } else if pivot >= kth && self.len < Self::MAX {
            self.items[self.len] = pivot;
            self.len += 1;
        }
    }
}

/// numpy's float `less` (`npysort` `Tag::less`): NaN sorts after every number, so the
/// partition's sentinels hold even with NaN (fold rejects NaN unless `check_finite` is off).
#[inline(always)]
#[allow(clippy::eq_op)]
fn np_less<T: PartialOrd + Copy>(a: T, b: T) -> bool {
    a < b || (b != b && a == a)
}

/// numpy's `np.partition(a, kth)` (scalar introselect, kth ascending, pivot stack), which
/// leaves the values in the order numpy's float32 sum then walks. Values are compared with
/// numpy's `less` ([`np_less`]).
///
/// `kths` must be ascending without repeats (numpy sorts them; a repeated kth is a no-op).
/// Generic so the f32 fast path replays it on f32 values: every comparison gives the same
/// answer on an f32 as on its exact f64 image.
pub fn numpy_partition<T: PartialOrd + Copy>(v: &mut [T], kths: &[usize]) {
    debug_assert!(kths.windows(2).all(|w| w[0] < w[1]), "kths {kths:?}");
    let num = v.len();
    let mut pivots = PivotStack::default();
    'kth: for &kth in kths {
        if num == 0 || kth >= num {
            continue;
        }
        let mut low = 0usize;
        let mut high = num - 1;
        while let Some(p) = pivots.last() {
            if p > kth {
                high = p - 1;
                break;
            } else if p == kth {
                continue 'kth;
            }
            low = p + 1;
            pivots.pop();
        }
        if kth - low < 3 {
            // dumb_select on v[low..=high]
            for i in low..=kth {
                let mut minidx = i;
                let mut minval = v[i];
                for (k, &x) in v.iter().enumerate().take(high + 1).skip(i + 1) {
                    if np_less(x, minval) {
                        minidx = k;
                        minval = x;
                    }
                }
                v.swap(i, minidx);
            }
            pivots.store(kth, kth);
            continue;
        } else if kth == num - 1 {
            let mut maxidx = low;
            let mut maxval = v[low];
            for (k, &x) in v.iter().enumerate().skip(low + 1) {
                if !np_less(x, maxval) {
                    maxidx = k;
                    maxval = x;
                }
            }
            v.swap(kth, maxidx);
            continue;
        }
        let mut depth_limit = 2 * (usize::BITS - 1 - num.leading_zeros()) as i64;
        while low + 1 < high {
            let mut ll = low + 1;
            let mut hh = high;
            if depth_limit > 0 || hh - ll < 5 {
                let mid = low + (high - low) / 2;
                if np_less(v[high], v[mid]) {
                    v.swap(high, mid);
                }
                if np_less(v[high], v[low]) {
                    v.swap(high, low);
                }
                if np_less(v[low], v[mid]) {
                    v.swap(low, mid);
                }
                v.swap(mid, low + 1);
            } else {
                // numpy's median-of-medians fallback; reached only for adversarial inputs
                // far larger than a client count. Median of 3 keeps the result a valid partition.
                let mid = low + (high - low) / 2;
                if np_less(v[high], v[mid]) {
                    v.swap(high, mid);
                }
                if np_less(v[high], v[low]) {
                    v.swap(high, low);
                }
                if np_less(v[low], v[mid]) {
                    v.swap(low, mid);
                }
                v.swap(mid, low + 1);
            }
            depth_limit -= 1;
            let pivot = v[low];
            loop {
                loop {
                    ll += 1;
                    if !np_less(v[ll], pivot) {
                        break;
                    }
                }
                loop {
                    hh -= 1;
                    if !np_less(pivot, v[hh]) {
                        break;
                    }
                }
                if hh < ll {
                    break;
                }
                v.swap(ll, hh);
            }
            v.swap(low, hh);
            if hh != kth {
                pivots.store(hh, kth);
            }
            if hh >= kth {
                high = hh.saturating_sub(1);
            }
            if hh <= kth {
                low = ll;
            }
        }
        if low + 1 == high && np_less(v[high], v[low]) {
            v.swap(high, low);
        }
        pivots.store(kth, kth);
    }
}

/// Values per coordinate the mask partition handles (one bit of a u64 each).
pub(crate) const MASK_MAX: usize = 64;

/// `numpy_partition` for at most 64 values without NaN, with the same swaps in the same
/// order: each Hoare pass finds its swap pairs from two bit masks (values >= pivot, values
/// <= pivot) instead of scanning with a data-dependent branch per value. The i-th swap
/// exchanges the i-th >= pivot position from the left with the i-th <= pivot position from
/// the right while the first is not right of the second, exactly the positions numpy's
/// scans stop at; the final scans that end the pass run as numpy's.
pub(crate) fn numpy_partition_masks(buf: &mut [f32; MASK_MAX], num: usize, kths: &[usize]) {
    debug_assert!(num <= MASK_MAX && buf[..num].iter().all(|x| !x.is_nan()));
    let mut pivots = PivotStack::default();
    'kth: for &kth in kths {
        if num == 0 || kth >= num {
            continue;
        }
        let mut low = 0usize;
        let mut high = num - 1;
        while let Some(p) = pivots.last() {
            if p > kth {
                high = p - 1;
                break;
            } else if p == kth {
                continue 'kth;
            }
            low = p + 1;
            pivots.pop();
        }
        if kth - low < 3 || kth == num - 1 {
            // the short cases: numpy's code as is
            short_select(&mut buf[..num], kth, low, high, &mut pivots);
            continue;
        }
        // (numpy's depth limit only switches to a pivot rule this replay does not use,
        // see DIVERGENCES.md 13: both branches take the median of 3)
        while low + 1 < high {
            let v = &mut buf[..num];
            let mid = low + (high - low) / 2;
            cswap(v, high, mid);
            cswap(v, high, low);
            cswap(v, low, mid);
            v.swap(mid, low + 1);
            let pivot = buf[low];
            let (mut ge, mut le) = pivot_masks(buf, pivot, low + 1, high);
            // ll scans (low + 1, high], hh scans [low + 1, high)
            ge &= range_mask(low + 2, high);
            le &= range_mask(low + 1, high - 1);
            let (mut ll, mut hh) = (low + 1, high);
            loop {
                let p = ge.trailing_zeros() as usize;
                let q = 63 - le.leading_zeros() as usize;
                if q < p {
                    break;
                }
                buf.swap(p, q);
                ge &= ge - 1;
                le &= !(1u64 << q);
                ll = p;
                hh = q;
            }
            // the scans that find the crossing, as numpy runs them
            loop {
                ll += 1;
                if buf[ll] >= pivot {
                    break;
                }
            }
            loop {
                hh -= 1;
                if pivot >= buf[hh] {
                    break;
                }
            }
            debug_assert!(hh < ll);
            buf.swap(low, hh);
            if hh != kth {
                pivots.store(hh, kth);
            }
            if hh >= kth {
                high = hh.saturating_sub(1);
            }
            if hh <= kth {
                low = ll;
            }
        }
        if low + 1 == high && buf[high] < buf[low] {
            buf.swap(high, low);
        }
        pivots.store(kth, kth);
    }
}

/// `if v[i] < v[j] { swap }` as selects (no branch on the data).
#[inline(always)]
fn cswap(v: &mut [f32], i: usize, j: usize) {
    let (x, y) = (v[i], v[j]);
    let s = x < y;
    v[i] = if s { y } else { x };
    v[j] = if s { x } else { y };
}

/// Bit i of the first mask: `buf[i] >= pivot`; of the second: `buf[i] <= pivot` (no NaN),
/// for the i in `lo..=hi` and possibly a few neighbours (callers mask the range). Only the
/// groups of four that meet the range are compared: the Hoare passes shrink from N values to
/// a handful, and comparing all 64 every pass was most of the trimmed mean's time.
#[inline(always)]
fn pivot_masks(buf: &[f32; MASK_MAX], pivot: f32, lo: usize, hi: usize) -> (u64, u64) {
    debug_assert!(lo <= hi && hi < MASK_MAX);
    let (mut ge, mut le) = (0u64, 0u64);
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{
            _mm_cmpge_ps, _mm_cmple_ps, _mm_loadu_ps, _mm_movemask_ps, _mm_set1_ps,
        };
        // SAFETY: SSE and SSE2 are part of x86_64 (no run-time detection needed), and
        // g <= hi / 4 <= 15, so the four lanes g*4..g*4+4 that each load reads lie inside the 64.
        unsafe {
            let p = _mm_set1_ps(pivot);
            for g in lo / 4..=hi / 4 {
                let v = _mm_loadu_ps(buf.as_ptr().add(g * 4));
                ge |= (_mm_movemask_ps(_mm_cmpge_ps(v, p)) as u32 as u64) << (4 * g);
                le |= (_mm_movemask_ps(_mm_cmple_ps(v, p)) as u32 as u64) << (4 * g);
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    for (i, x) in buf.iter().enumerate().take(hi + 1).skip(lo) {
        ge |= ((*x >= pivot) as u64) << i;
        le |= ((*x <= pivot) as u64) << i;
    }
    (ge, le)
}

/// Bits `a..=b` (b < 64).
#[inline(always)]
fn range_mask(a: usize, b: usize) -> u64 {
    debug_assert!(a <= b + 1 && b < 64);
    (u64::MAX >> (63 - b)) & (u64::MAX << a)
}

/// numpy's two short cases of one kth: `dumb_select` for a kth within 3 of `low`, the
/// maximum scan for the last element (no NaN, so `less` is `<`).
fn short_select(v: &mut [f32], kth: usize, low: usize, high: usize, pivots: &mut PivotStack) {
    if kth - low < 3 {
        for i in low..=kth {
            let mut minidx = i;
            let mut minval = v[i];
            for (k, &x) in v.iter().enumerate().take(high + 1).skip(i + 1) {
                // selects, not a branch: which value is smaller is a coin flip
                let lt = x < minval;
                minidx = if lt { k } else { minidx };
                minval = if lt { x } else { minval };
            }
            v.swap(i, minidx);
        }
        pivots.store(kth, kth);
    } else {
        let mut maxidx = low;
        let mut maxval = v[low];
        for (k, &x) in v.iter().enumerate().skip(low + 1) {
            let ge = x >= maxval;
            maxidx = if ge { k } else { maxidx };
            maxval = if ge { x } else { maxval };
        }
        v.swap(kth, maxidx);
    }
}

/// The sum of the kept (partitioned) values as numpy's float32 `mean` over axis 0 computes it:
/// sequentially, rounding after every addition to the input dtype (f32 and narrower); f64 and
/// integer inputs sum in f64. Matching Flower within 1e-6 needs this: with large mixed-sign
/// values the float32 rounding is larger than the result's tolerance.
fn trimmed_sum(kept: &[f64], dtype: DType) -> f64 {
    match dtype {
        DType::F32 | DType::F16 | DType::BF16 => {
            let mut acc = 0.0f64;
            for v in kept {
                acc = round_to_dtype(DType::F32, acc + v);
            }
            acc
        }
        _ => kept.iter().sum(),
    }
}

fn metrics_of(clients: &[&Kept<'_>]) -> Metrics {
    aggregate_metrics(clients.iter().map(|k| (k.num_examples, &k.metrics)))
}

macro_rules! simple_strategy_impl {
    ($ty:ident, $name:literal) => {
        impl<'a> Strategy<'a> for $ty<'a> {
            fn name(&self) -> &str {
                $name
            }
            fn begin(&mut self, round: u64, global: Option<ModelView<'a>>) -> Result<(), FlError> {
                self.c.begin(round, global)
            }
            fn fold(&mut self, update: Update<'a>) -> Result<(), FlError> {
                self.c.fold(update)
            }
            fn finish(&mut self) -> Result<(Model, Metrics), FlError> {
                let (_, kept, global) = self.c.close()?;
                self.aggregate(&kept, global.as_ref())
            }
            fn collector_mut(&mut self) -> &mut Collector<'a> {
                &mut self.c
            }
        }
    };
}

/// Flower `FedMedian`: coordinate-wise median, `num_examples` ignored.
#[derive(Debug, Clone)]
pub struct FedMedian<'a> {
    c: Collector<'a>,
}

impl<'a> FedMedian<'a> {
    pub fn new(limits: Limits) -> Self {
        Self {
            c: Collector::new("fedmedian", limits),
        }
    }

    fn aggregate(
        &self,
        kept: &[Kept<'_>],
        global: Option<&ModelView<'_>>,
    ) -> Result<(Model, Metrics), FlError> {
        let clients: Vec<&Kept<'_>> = kept.iter().collect();
        let model = median_model(&clients, global)?;
        Ok((model, metrics_of(&clients)))
    }
}
simple_strategy_impl!(FedMedian, "fedmedian");

/// Flower `FedTrimmedAvg` (scipy `trim_mean`): cut = int(beta N) values dropped at each end
/// per coordinate, plain mean of the rest; `num_examples` ignored. Default beta = 0.2.
#[derive(Debug, Clone)]
pub struct FedTrimmedAvg<'a> {
    c: Collector<'a>,
    pub beta: f64,
}

impl<'a> FedTrimmedAvg<'a> {
    pub fn new(beta: f64, limits: Limits) -> Result<Self, FlError> {
        if !(0.0..0.5).contains(&beta) {
            return Err(FlError::InvalidParam {
                name: "beta".into(),
                value: beta.to_string(),
                reason: "must be in [0, 0.5)".into(),
            });
        }
        Ok(Self {
            c: Collector::new("fedtrimmedavg", limits),
            beta,
        })
    }

    fn aggregate(
        &self,
        kept: &[Kept<'_>],
        global: Option<&ModelView<'_>>,
    ) -> Result<(Model, Metrics), FlError> {
        let clients: Vec<&Kept<'_>> = kept.iter().collect();
        let n = clients.len();
        let cut = (self.beta * n as f64) as usize;
        if 2 * cut >= n {
            return Err(FlError::TooFewClients {
                strategy: "fedtrimmedavg".into(),
                needed: 2 * cut + 1,
                got: n,
            });
        }
        let model = trimmed_model(&clients, global, cut)?;
        let mut metrics = metrics_of(&clients);
        metrics.insert("trimmed_cut_per_side".into(), cut as f64);
        Ok((model, metrics))
    }
}
simple_strategy_impl!(FedTrimmedAvg, "fedtrimmedavg");

/// Krum scores of the kept clients (canonical order).
#[derive(Debug, Clone, PartialEq)]
pub struct KrumScores {
    /// Score per client: sum of squared distances to its `num_closest` nearest others.
    pub scores: Vec<f64>,
    /// k = max(1, N - f - 2).
    pub num_closest: usize,
    /// Squared distances, row-major N x N (diagonal 0).
    pub distances: Vec<f64>,
}

/// Blocks of coordinates per rayon task in the distance pass (fixed, so sums are thread-independent).
const DIST_BLOCK: usize = 1024;
const DIST_TASK_BLOCKS: usize = 32;
/// Coordinates of all N rows held at once (f64): 50 x 256 x 8 B = 100 KiB, L2-resident.
/// A multiple of 8, so a lane is `coordinate % 8` within a block whatever the sub-block.
const DIST_SUB: usize = 256;

/// Squared L2 distances between all pairs, flat over all tensors, in f64 (Flower squares a
/// float32 norm, which overflows to inf for |x| around 1e18: divergence, see DIVERGENCES.md),
/// and Krum scores with k = max(1, N - f - 2).
///
/// Summation order (fixed, so thread-independent): per block of [`DIST_BLOCK`] coordinates,
/// 8 lanes (coordinate % 8) summed in coordinate order, each term d * d added by one fused
/// multiply-add (`f64::mul_add`: the same bits on every CPU, one instruction where the CPU has
/// FMA; half the floating-point operations of a separate multiply and add), and combined as
/// ((l0 + l1) + (l2 + l3)) + ((l4 + l5) + (l6 + l7)); blocks in order within a task of
/// [`DIST_TASK_BLOCKS`] blocks, tasks in order, tensors in order.
pub fn krum_scores(
    clients: &[&Kept<'_>],
    global: Option<&ModelView<'_>>,
    num_malicious: usize,
) -> KrumScores {
    let n = clients.len();
    let pairs: Vec<(usize, usize)> = (0..n)
        .flat_map(|i| (i + 1..n).map(move |j| (i, j)))
        .collect();
    let mut total = vec![0.0f64; pairs.len()];
    let first = &clients[0].model;
    for (t, spec) in first.tensors().iter().enumerate() {
        let g = global.map(|g| &g.tensors()[t]);
        let numel = spec.numel();
        let task_len = DIST_BLOCK * DIST_TASK_BLOCKS;
        let tasks = numel.div_ceil(task_len);
        let partials: Vec<Vec<f64>> = (0..tasks)
            .into_par_iter()
            .map(|task| {
                let mut acc = vec![0.0f64; pairs.len()];
                let mut lanes = vec![[0.0f64; 8]; pairs.len()];
                let mut rows = vec![0.0f64; n * DIST_SUB];
                let mut grow = Vec::new();
                let end = ((task + 1) * task_len).min(numel);
                let mut start = task * task_len;
                while start < end {
                    let block_end = (start + DIST_BLOCK).min(end);
                    lanes.fill([0.0; 8]);
                    let mut s = start;
                    while s < block_end {
                        let len = DIST_SUB.min(block_end - s);
                        let next = (s + len)..(s + len + DIST_SUB).min(end);
                        for (k, c) in clients.iter().enumerate() {
                            let row = &mut rows[k * DIST_SUB..k * DIST_SUB + len];
                            load_row(c, t, g, s, row, &mut grow);
                            // the next sub-block of this client (N streams outrun the
                            // hardware prefetcher; the pair pass below hides the fetch)
                            let tv = &c.model.tensors()[t];
                            let sz = tv.dtype().size_bytes();
                            prefetch(&tv.bytes()[next.start * sz..next.end * sz]);
                        }
                        pair_lanes(&rows, n, len, &mut lanes);
                        s += len;
                    }
                    for (a, l) in acc.iter_mut().zip(&lanes) {
                        *a += ((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7]));
                    }
                    start = block_end;
                }
                acc
            })
            .collect();
        for part in partials {
            for (t, p) in total.iter_mut().zip(part) {
                *t += p;
            }
        }
    }
    let mut distances = vec![0.0f64; n * n];
    for (p, &(a, b)) in pairs.iter().enumerate() {
        distances[a * n + b] = total[p];
        distances[b * n + a] = total[p];
    }
    let num_closest = n.saturating_sub(num_malicious + 2).max(1);
    let scores = (0..n)
        .map(|i| {
            let mut row: Vec<f64> = (0..n)
                .filter(|&j| j != i)
                .map(|j| distances[i * n + j])
                .collect();
            row.sort_unstable_by(f64::total_cmp);
            row.iter().take(num_closest).sum()
        })
        .collect();
    KrumScores {
        scores,
        num_closest,
        distances,
    }
}

simd_fn! {
    /// Adds to `lanes[p]` (pairs (a, b), a < b, in order) the squared differences of rows a and b
    /// (`rows[k * DIST_SUB..][..len]`), coordinate j into lane j % 8, in coordinate order.
    fn pair_lanes(rows: &[f64], n: usize, len: usize, lanes: &mut [[f64; 8]]) = pair_lanes_generic;
}

/// Pairs handled together: each loaded chunk of row a serves this many rows b, and the
/// 4 x 8 lanes are independent accumulators (no add latency chain).
const PAIR_TILE: usize = 4;

#[inline(always)]
fn pair_lanes_generic(rows: &[f64], n: usize, len: usize, lanes: &mut [[f64; 8]]) {
    let row = |k: usize| &rows[k * DIST_SUB..k * DIST_SUB + len];
    let mut p = 0;
    for a in 0..n {
        let ra = row(a);
        let mut b = a + 1;
        while b < n {
            let tile = match n - b {
                1 => {
                    pair_tile::<1>(ra, [row(b)], &mut lanes[p..p + 1]);
                    1
                }
                2 | 3 => {
                    pair_tile::<2>(ra, [row(b), row(b + 1)], &mut lanes[p..p + 2]);
                    2
                }
                _ => {
                    let rb = [row(b), row(b + 1), row(b + 2), row(b + 3)];
                    pair_tile::<PAIR_TILE>(ra, rb, &mut lanes[p..p + PAIR_TILE]);
                    PAIR_TILE
                }
            };
            p += tile;
            b += tile;
        }
    }
}

/// Row `ra` against the `T` rows `rb`: one 8-lane accumulator per pair (one AVX-512 register,
/// two AVX2 ones), lane l summing coordinates j = l (mod 8) in order; the remainder
/// (< 8 coordinates) one by one.
#[inline(always)]
fn pair_tile<const T: usize>(ra: &[f64], rb: [&[f64]; T], lanes: &mut [[f64; 8]]) {
    let (xa, rest) = ra.as_chunks::<8>();
    let full = xa.len() * 8;
    let yb: [&[[f64; 8]]; T] = rb.map(|r| &r.as_chunks::<8>().0[..xa.len()]);
    let mut acc = [[0.0f64; 8]; T];
    acc.copy_from_slice(&lanes[..T]);
    for (i, x) in xa.iter().enumerate() {
        for q in 0..T {
            let y = &yb[q][i];
            for l in 0..8 {
                let d = x[l] - y[l];
                acc[q][l] = d.mul_add(d, acc[q][l]);
            }
        }
    }
    for q in 0..T {
        for (j, xv) in rest.iter().enumerate() {
            let d = xv - rb[q][full + j];
            acc[q][j] = d.mul_add(d, acc[q][j]);
        }
        lanes[q] = acc[q];
    }
}

/// Indices of the `m` lowest scores, ties broken by canonical order.
fn lowest(scores: &[f64], m: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]).then(a.cmp(&b)));
    idx.truncate(m);
    idx
}

fn multikrum_aggregate(
    kept: &[Kept<'_>],
    global: Option<&ModelView<'_>>,
    f: usize,
    m: usize,
) -> Result<(Model, Metrics), FlError> {
    let clients: Vec<&Kept<'_>> = kept.iter().collect();
    let s = krum_scores(&clients, global, f);
    let sel = lowest(&s.scores, m.max(1));
    let chosen: Vec<Kept<'_>> = sel.iter().map(|&i| kept[i].clone()).collect();
    let model = if chosen.len() == 1 && chosen[0].clip_factor == 1.0 {
        // Krum returns the selected client's parameters unchanged.
        chosen[0].model.clone().into_owned()
    } else {
        let plan = MeanPlan::new(&chosen)?;
        let first = &chosen[0].model;
        let mut tensors = Vec::with_capacity(first.len());
        for (t, spec) in first.tensors().iter().enumerate() {
            let data = super::kernel::par_fill(spec.dtype(), spec.numel(), |start, out| {
                plan.block(&chosen, t, global, start, out)
            });
            tensors.push(TensorView::new(
                spec.name(),
                spec.dtype(),
                spec.shape().to_vec(),
                data,
            )?);
        }
        ModelView::new(tensors)?
    };
    let mut metrics = metrics_of(&chosen.iter().collect::<Vec<_>>());
    if let Some(&first) = sel.first() {
        metrics.insert("krum_selected_index".into(), first as f64);
    }
    metrics.insert("krum_num_closest".into(), s.num_closest as f64);
    if kept.len() < 2 * f + 3 {
        // Flower only warns (Krum's guarantee needs N >= 2f + 3).
        metrics.insert("krum_too_few_clients_warning".into(), 1.0);
    }
    Ok((model, metrics))
}

/// Flower `Krum`: the client with the lowest score, returned unchanged
/// (`num_malicious_clients` / `num_malicious_nodes`, default 0). Selected clients and the
/// selected index (canonical order) are reported in the metrics.
#[derive(Debug, Clone)]
pub struct Krum<'a> {
    c: Collector<'a>,
    pub num_malicious: usize,
}

impl<'a> Krum<'a> {
    pub fn new(num_malicious: usize, limits: Limits) -> Self {
        Self {
            c: Collector::new("krum", limits),
            num_malicious,
        }
    }

    fn aggregate(
        &self,
        kept: &[Kept<'_>],
        global: Option<&ModelView<'_>>,
    ) -> Result<(Model, Metrics), FlError> {
        multikrum_aggregate(kept, global, self.num_malicious, 1)
    }
}
simple_strategy_impl!(Krum, "krum");

/// Flower `MultiKrum` (and legacy Krum with `num_clients_to_keep` > 0): the num_examples-weighted
/// mean of the m lowest-scoring clients. New-API default m (`num_nodes_to_select`) = 1.
#[derive(Debug, Clone)]
pub struct MultiKrum<'a> {
    c: Collector<'a>,
    pub num_malicious: usize,
    pub num_to_select: usize,
}

impl<'a> MultiKrum<'a> {
    pub fn new(num_malicious: usize, num_to_select: usize, limits: Limits) -> Self {
        Self {
            c: Collector::new("multikrum", limits),
            num_malicious,
            num_to_select,
        }
    }

    fn aggregate(
        &self,
        kept: &[Kept<'_>],
        global: Option<&ModelView<'_>>,
    ) -> Result<(Model, Metrics), FlError> {
        multikrum_aggregate(kept, global, self.num_malicious, self.num_to_select)
    }
}
simple_strategy_impl!(MultiKrum, "multikrum");

/// Flower `Bulyan` (new API): requires N >= 4f + 3; selects theta = N - 2f clients by
/// MultiKrum scores computed once on the full set; per coordinate, the mean of the
/// beta = theta - 2f selected values closest to their median (median rounded to the dtype as
/// numpy's float32 median; distance ties broken by canonical order).
#[derive(Debug, Clone)]
pub struct Bulyan<'a> {
    c: Collector<'a>,
    pub num_malicious: usize,
}

impl<'a> Bulyan<'a> {
    pub fn new(num_malicious: usize, limits: Limits) -> Self {
        Self {
            c: Collector::new("bulyan", limits),
            num_malicious,
        }
    }

    fn aggregate(
        &self,
        kept: &[Kept<'_>],
        global: Option<&ModelView<'_>>,
    ) -> Result<(Model, Metrics), FlError> {
        let n = kept.len();
        let f = self.num_malicious;
        if n < 4 * f + 3 {
            return Err(FlError::TooFewClients {
                strategy: "bulyan".into(),
                needed: 4 * f + 3,
                got: n,
            });
        }
        let theta = n - 2 * f;
        let beta = theta - 2 * f;
        let all: Vec<&Kept<'_>> = kept.iter().collect();
        let s = krum_scores(&all, global, f);
        let mut sel = lowest(&s.scores, theta);
        sel.sort_unstable();
        let chosen: Vec<&Kept<'_>> = sel.iter().map(|&i| &kept[i]).collect();
        let model = coordinatewise(&chosen, global, |v, dtype| {
            let mut sorted = v.to_vec();
            let med = round_to_dtype(dtype, median_of(&mut sorted));
            let mut idx: Vec<usize> = (0..v.len()).collect();
            idx.sort_by(|&a, &b| {
                round_to_dtype(dtype, (v[a] - med).abs())
                    .total_cmp(&round_to_dtype(dtype, (v[b] - med).abs()))
                    .then(a.cmp(&b))
            });
            idx[..beta].iter().map(|&i| v[i]).sum::<f64>() / beta as f64
        })?;
        let mut metrics = metrics_of(&chosen);
        metrics.insert("bulyan_theta".into(), theta as f64);
        metrics.insert("bulyan_beta".into(), beta as f64);
        Ok((model, metrics))
    }
}
simple_strategy_impl!(Bulyan, "bulyan");

#[cfg(test)]
mod tests {
    //! The f32 fast paths against the generic f64 path, bit for bit.

    use super::*;

    struct Gen(u64);

    impl Gen {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        /// Values of one of several kinds: many ties, signed zeros, wide magnitudes with
        /// mixed signs, arbitrary bit patterns (non-finite when `finite` is false).
        fn value(&mut self, kind: u64, finite: bool) -> f32 {
            let r = self.next();
            let v = match kind % 5 {
                0 => ((r % 9) as f32 - 4.0) * 0.25,
                1 => [0.0f32, -0.0, 1.0, -1.0][(r % 4) as usize],
                2 => ((r % 20001) as f32 - 10000.0) * 1e-4,
                3 => {
                    let m = ((r >> 8) % 1000) as f32 / 1000.0 + 1.0;
                    let e = ((r >> 32) % 60) as i32 - 20;
                    let s = if r & 1 == 0 { 1.0 } else { -1.0 };
                    s * m * 10f32.powi(e)
                }
                _ => f32::from_bits(r as u32),
            };
            if finite && !v.is_finite() { 0.5 } else { v }
        }
    }

    fn clients(g: &mut Gen, n: usize, d: usize, kind: u64, finite: bool) -> Vec<Model> {
        (0..n)
            .map(|_| {
                let a: Vec<f32> = (0..d).map(|_| g.value(kind, finite)).collect();
                ModelView::new(vec![TensorView::from_f32("w", vec![d], &a).unwrap()]).unwrap()
            })
            .collect()
    }

    fn kept<'a>(models: &'a [Model], clip: &[f64]) -> Vec<Kept<'a>> {
        models
            .iter()
            .enumerate()
            .map(|(i, m)| Kept {
                client: format!("c{i:03}"),
                model: m.view(),
                num_examples: 1,
                metrics: Metrics::new(),
                clip_factor: clip.get(i).copied().unwrap_or(1.0),
            })
            .collect()
    }

    fn generic_median(clients: &[&Kept<'_>], global: Option<&ModelView<'_>>) -> Model {
        coordinatewise(clients, global, |v, _| median_of(v)).unwrap()
    }

    fn generic_trimmed(clients: &[&Kept<'_>], global: Option<&ModelView<'_>>, cut: usize) -> Model {
        let n = clients.len();
        coordinatewise(clients, global, |v, dtype| {
            let hi = n - cut - 1;
            let kths: &[usize] = if hi == cut { &[cut] } else { &[cut, hi] };
            numpy_partition(v, kths);
            let kept = &v[cut..n - cut];
            round_to_dtype(dtype, trimmed_sum(kept, dtype) / kept.len() as f64)
        })
        .unwrap()
    }

    fn bits(m: &Model) -> Vec<u8> {
        m.tensors()[0].bytes().to_vec()
    }

    #[test]
    fn fast_median_and_trimmed_mean_equal_the_generic_path() {
        let mut g = Gen(0x9e37_79b9_7f4a_7c15);
        let mut cases = 0;
        for n in [1usize, 2, 3, 4, 5, 8, 11, 12, 25, 50, 51, 64, 127, 128, 129] {
            for kind in 0..5 {
                for finite in [true, false] {
                    let d = [1usize, 15, 17, 300, 4100][(g.next() % 5) as usize];
                    let models = clients(&mut g, n, d, kind, finite);
                    let global = clients(&mut g, 1, d, kind, true).remove(0);
                    let clip: Vec<f64> = (0..n)
                        .map(|i| if i % 3 == 1 { 0.37 } else { 1.0 })
                        .collect();
                    for (clip, global) in [(&[][..], None), (&clip[..], Some(global.view()))] {
                        let k = kept(&models, clip);
                        let refs: Vec<&Kept<'_>> = k.iter().collect();
                        let fast = median_model(&refs, global.as_ref()).unwrap();
                        let slow = generic_median(&refs, global.as_ref());
                        assert_eq!(bits(&fast), bits(&slow), "median n={n} kind={kind} d={d}");
                        for beta in [0.0, 0.1, 0.2, 0.45] {
                            let cut = (beta * n as f64) as usize;
                            if 2 * cut >= n {
                                continue;
                            }
                            let fast = trimmed_model(&refs, global.as_ref(), cut).unwrap();
                            let slow = generic_trimmed(&refs, global.as_ref(), cut);
                            assert_eq!(
                                bits(&fast),
                                bits(&slow),
                                "trimmed n={n} cut={cut} kind={kind} d={d}"
                            );
                        }
                        cases += 1;
                    }
                }
            }
        }
        assert_eq!(cases, 15 * 5 * 2 * 2);
    }

    #[test]
    fn mask_partition_makes_numpys_swaps() {
        let mut g = Gen(0x5151_7777_abcd_0001);
        for round in 0..20_000u64 {
            let n = 1 + (g.next() % 64) as usize;
            let kind = round % 4;
            let v: Vec<f32> = (0..n).map(|_| g.value(kind, true)).collect();
            let a = (g.next() % n as u64) as usize;
            let b = (g.next() % n as u64) as usize;
            let kths: Vec<usize> = if a == b {
                vec![a]
            } else {
                vec![a.min(b), a.max(b)]
            };
            let mut want = v.clone();
            numpy_partition(&mut want, &kths);
            let mut buf = [0.0f32; MASK_MAX];
            buf[..n].copy_from_slice(&v);
            numpy_partition_masks(&mut buf, n, &kths);
            let bits = |x: &[f32]| x.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&buf[..n]), bits(&want), "n={n} kths={kths:?} v={v:?}");
        }
    }

    /// The distance pass as first written (gather, transpose, per pair and block 8 lanes of
    /// fused d * d + lane): the fast pass must give the same bits.
    fn reference_distances(clients: &[&Kept<'_>], global: Option<&ModelView<'_>>) -> Vec<f64> {
        let n = clients.len();
        let pairs: Vec<(usize, usize)> = (0..n)
            .flat_map(|i| (i + 1..n).map(move |j| (i, j)))
            .collect();
        let mut total = vec![0.0f64; pairs.len()];
        for (t, spec) in clients[0].model.tensors().iter().enumerate() {
            let g = global.map(|g| &g.tensors()[t]);
            let numel = spec.numel();
            let task_len = DIST_BLOCK * DIST_TASK_BLOCKS;
            for task in 0..numel.div_ceil(task_len) {
                let mut acc = vec![0.0f64; pairs.len()];
                let (mut scratch, mut row) = (Vec::new(), Vec::new());
                let end = ((task + 1) * task_len).min(numel);
                let mut start = task * task_len;
                while start < end {
                    let len = DIST_BLOCK.min(end - start);
                    gather_block(clients, t, g, start, len, &mut scratch, &mut row);
                    for (p, &(a, b)) in pairs.iter().enumerate() {
                        // 8 lanes, coordinate j into lane j % 8, each d * d + lane fused
                        let mut lanes = [0.0f64; 8];
                        for j in 0..len {
                            let d = scratch[j * n + a] - scratch[j * n + b];
                            lanes[j % 8] = d.mul_add(d, lanes[j % 8]);
                        }
                        acc[p] += ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3]))
                            + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]));
                    }
                    start += len;
                }
                for (t, p) in total.iter_mut().zip(acc) {
                    *t += p;
                }
            }
        }
        let mut distances = vec![0.0f64; n * n];
        for (p, &(a, b)) in pairs.iter().enumerate() {
            distances[a * n + b] = total[p];
            distances[b * n + a] = total[p];
        }
        distances
    }

    #[test]
    fn krum_distances_equal_the_reference_pass() {
        let mut g = Gen(0x0123_4567_89ab_cdef);
        for (n, d) in [
            (2usize, 1usize),
            (3, 9),
            (5, 1030),
            (7, 40_000),
            (12, 2049),
            (13, 300),
        ] {
            for kind in [2u64, 3] {
                let models = clients(&mut g, n, d, kind, true);
                let global = clients(&mut g, 1, d, kind, true).remove(0);
                let clip: Vec<f64> = (0..n).map(|i| if i % 2 == 0 { 0.5 } else { 1.0 }).collect();
                for (clip, global) in [(&[][..], None), (&clip[..], Some(global.view()))] {
                    let k = kept(&models, clip);
                    let refs: Vec<&Kept<'_>> = k.iter().collect();
                    let fast = krum_scores(&refs, global.as_ref(), 1);
                    let want = reference_distances(&refs, global.as_ref());
                    let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    assert_eq!(
                        bits(&fast.distances),
                        bits(&want),
                        "n={n} d={d} kind={kind}"
                    );
                }
            }
        }
    }
}
