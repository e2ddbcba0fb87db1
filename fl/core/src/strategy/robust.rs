//! Robust aggregators: FedMedian, FedTrimmedAvg, Krum, MultiKrum, Bulyan.
//!
//! They read the kept views (memory-mapped files in `fl aggregate` and the benches) block by
//! block into a per-thread scratch of `N x block` values; no aggregator copies all N models.
//! Every coordinate's result depends only on the N values at that coordinate in canonical
//! order, so results are bitwise independent of arrival order and thread count.

use rayon::prelude::*;

use super::fedopt::MeanPlan;
use super::kernel::{gather_block, par_fill_with, sum_sq};
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
    let first = &clients[0].model;
    let n = clients.len();
    let mut tensors = Vec::with_capacity(first.len());
    for (t, spec) in first.tensors().iter().enumerate() {
        let g = global.map(|g| &g.tensors()[t]);
        let dtype = spec.dtype();
        let data = par_fill_with(
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
        );
        tensors.push(TensorView::new(
            spec.name(),
            dtype,
            spec.shape().to_vec(),
            data,
        )?);
    }
    ModelView::new(tensors)
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

/// numpy's `np.partition(a, kth)` (scalar introselect, kth ascending, pivot stack), which
/// leaves the values in the order numpy's float32 sum then walks. Values are compared as
/// numpy's `less` (NaN never occurs: fold rejects it).
pub fn numpy_partition(v: &mut [f64], kths: &[usize]) {
    const MAX_PIVOT_STACK: usize = 50;
    let num = v.len();
    let mut pivots: Vec<usize> = Vec::with_capacity(MAX_PIVOT_STACK);
    let store_pivot = |pivots: &mut Vec<usize>, pivot: usize, kth: usize| {
        if pivot == kth && pivots.len() == MAX_PIVOT_STACK {
            if let Some(last) = pivots.last_mut() {
                *last = pivot;
            }
        } else if pivot >= kth && pivots.len() < MAX_PIVOT_STACK {
            pivots.push(pivot);
        }
    };
    let mut kths = kths.to_vec();
    kths.sort_unstable();
    kths.dedup();
    'kth: for &kth in &kths {
        if num == 0 || kth >= num {
            continue;
        }
        let mut low = 0usize;
        let mut high = num - 1;
        while let Some(&p) = pivots.last() {
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
                    if x < minval {
                        minidx = k;
                        minval = x;
                    }
                }
                v.swap(i, minidx);
            }
            store_pivot(&mut pivots, kth, kth);
            continue;
        } else if kth == num - 1 {
            let mut maxidx = low;
            let mut maxval = v[low];
            for (k, &x) in v.iter().enumerate().skip(low + 1) {
                if x >= maxval {
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
                if v[high] < v[mid] {
                    v.swap(high, mid);
                }
                if v[high] < v[low] {
                    v.swap(high, low);
                }
                if v[low] < v[mid] {
                    v.swap(low, mid);
                }
                v.swap(mid, low + 1);
            } else {
                // numpy's median-of-medians fallback; reached only for adversarial inputs
                // far larger than a client count. Median of 3 keeps the result a valid partition.
                let mid = low + (high - low) / 2;
                if v[high] < v[mid] {
                    v.swap(high, mid);
                }
                if v[high] < v[low] {
                    v.swap(high, low);
                }
                if v[low] < v[mid] {
                    v.swap(low, mid);
                }
                v.swap(mid, low + 1);
            }
            depth_limit -= 1;
            let pivot = v[low];
            loop {
                loop {
                    ll += 1;
                    if v[ll] >= pivot {
                        break;
                    }
                }
                loop {
                    hh -= 1;
                    if pivot >= v[hh] {
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
                store_pivot(&mut pivots, hh, kth);
            }
            if hh >= kth {
                high = hh.saturating_sub(1);
            }
            if hh <= kth {
                low = ll;
            }
        }
        if low + 1 == high && v[high] < v[low] {
            v.swap(high, low);
        }
        store_pivot(&mut pivots, kth, kth);
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
        let model = coordinatewise(&clients, global, |v, _| median_of(v))?;
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
        let model = coordinatewise(&clients, global, |v, dtype| {
            numpy_partition(v, &[cut, n - cut - 1]);
            let kept = &v[cut..n - cut];
            let mean = trimmed_sum(kept, dtype) / kept.len() as f64;
            if matches!(dtype, DType::F32 | DType::F16 | DType::BF16) {
                round_to_dtype(DType::F32, mean)
            } else {
                mean
            }
        })?;
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

/// Squared L2 distances between all pairs, flat over all tensors, in f64 (Flower squares a
/// float32 norm, which overflows to inf for |x| around 1e18: divergence, see DIVERGENCES.md),
/// and Krum scores with k = max(1, N - f - 2).
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
                let mut rows = vec![0.0f64; n * DIST_BLOCK];
                let (mut scratch, mut row) = (Vec::new(), Vec::new());
                let mut diff = vec![0.0f64; DIST_BLOCK];
                let end = ((task + 1) * task_len).min(numel);
                let mut start = task * task_len;
                while start < end {
                    let len = DIST_BLOCK.min(end - start);
                    gather_block(clients, t, g, start, len, &mut scratch, &mut row);
                    // transpose to client-major rows for contiguous pair loops
                    for k in 0..n {
                        for j in 0..len {
                            rows[k * DIST_BLOCK + j] = scratch[j * n + k];
                        }
                    }
                    for (p, &(a, b)) in pairs.iter().enumerate() {
                        let ra = &rows[a * DIST_BLOCK..a * DIST_BLOCK + len];
                        let rb = &rows[b * DIST_BLOCK..b * DIST_BLOCK + len];
                        for ((d, x), y) in diff[..len].iter_mut().zip(ra).zip(rb) {
                            *d = x - y;
                        }
                        acc[p] += sum_sq(&diff[..len]);
                    }
                    start += len;
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
