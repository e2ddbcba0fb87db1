//! fl-core aggregation speed and memory: FedAvg 10 and 50 clients x 1M and 10M f32, FedMedian
//! and FedTrimmedAvg (beta 0.1, as Flower was measured) 50 x 10M, Krum f=2 50 x 1M.
//!
//! Inputs are safetensors files written once to a temp dir (not timed), memory-mapped and
//! read once so they sit in the page cache, and passed to the strategies as zero-copy views.
//! A timed case is the aggregation, `finish`, over updates that `fold` already validated (names,
//! shapes, finite values) and kept, as Flower's figures time its `aggregate` calls alone; FedAvg
//! 50 x 10M also times the whole round (`begin`, `fold` of every client, `finish`). Each group
//! also times, in the same run, a plain single-threaded f32 sum over the same bytes: the
//! throughput reference. One call per sample (criterion's flat sampling), 10 samples.
//!
//! Peak extra memory: a counting global allocator records the heap high-water mark during one
//! untimed round (the mapped inputs are not heap, so they are excluded; the output model is
//! included); it is reported as a multiple of one f32 model.
//!
//! Results: criterion's own files plus `<target>/bench-results/aggregation.json`, the rows that
//! `cargo xtask bench` prints. Run: `cargo bench -p benches --bench aggregation`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use benches::{Row, Target, write_rows};
use criterion::{BatchSize, Criterion, SamplingMode};
use fl_core::strategy::{Limits, Params, build_strategy};
use fl_core::{DType, Model, ModelView, TensorView, Update};
use memmap2::Mmap;

/// Counts live heap bytes and their high-water mark.
struct Counting;

static LIVE_BYTES: AtomicUsize = AtomicUsize::new(0);
static PEAK_BYTES: AtomicUsize = AtomicUsize::new(0);

fn grew(by: usize) {
    let now = LIVE_BYTES.fetch_add(by, Ordering::Relaxed) + by;
    PEAK_BYTES.fetch_max(now, Ordering::Relaxed);
}

// SAFETY: every call forwards to the system allocator with the same layout; the counters
// only observe sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as is.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as is.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded as is.
        unsafe { System.dealloc(ptr, layout) };
        LIVE_BYTES.fetch_sub(layout.size(), Ordering::Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded as is.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            if new_size >= layout.size() {
                grew(new_size - layout.size());
            } else {
                LIVE_BYTES.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
            }
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

const M1: usize = 1_000_000;
const M10: usize = 10_000_000;
/// Columns of the weight matrix; the bias has as many entries.
const COLS: usize = 1000;

/// Writes `clients` safetensors files of a `d`-parameter f32 model (weight [d/1000 - 1, 1000],
/// bias [1000]) with deterministic values in [-0.5, 0.5).
fn write_inputs(dir: &Path, tag: &str, clients: usize, d: usize) -> Vec<std::path::PathBuf> {
    let rows = d / COLS - 1;
    (0..clients)
        .map(|c| {
            // splitmix64 stream per client: cheap, deterministic, no shared state
            let mut s = 0x9E37_79B9_7F4A_7C15u64.wrapping_mul(c as u64 + 1);
            let mut next = move || {
                s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
                let mut z = s;
                z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                z ^= z >> 31;
                ((z >> 40) as f32 / (1u64 << 24) as f32) - 0.5
            };
            let mut bytes = |n: usize| -> Vec<u8> {
                let mut out = Vec::with_capacity(n * 4);
                for _ in 0..n {
                    out.extend_from_slice(&next().to_le_bytes());
                }
                out
            };
            let w = TensorView::new(
                "fc.weight",
                DType::F32,
                vec![rows, COLS],
                bytes(rows * COLS),
            )
            .expect("weight tensor");
            let b = TensorView::new("fc.bias", DType::F32, vec![COLS], bytes(COLS))
                .expect("bias tensor");
            let model = Model::new(vec![w, b]).expect("model");
            let path = dir.join(format!("{tag}-client{c:03}.safetensors"));
            std::fs::write(&path, model.to_safetensors()).expect("write bench input");
            path
        })
        .collect()
}

fn views_of(maps: &[Mmap]) -> Vec<ModelView<'_>> {
    maps.iter()
        .map(|m| ModelView::from_safetensors(&m[..]).expect("parse bench input"))
        .collect()
}

fn map_all(paths: &[std::path::PathBuf]) -> Vec<Mmap> {
    paths
        .iter()
        .map(|p| {
            let f = std::fs::File::open(p).expect("open bench input");
            // SAFETY: the files are private to this process's temp dir and not modified while mapped.
            unsafe { Mmap::map(&f) }.expect("map bench input")
        })
        .collect()
}

/// The plain single-threaded reference: every f32 of every client summed, 16 lanes.
fn plain_sum(views: &[ModelView<'_>]) -> f32 {
    let mut lanes = [0.0f32; 16];
    for v in views {
        for t in v.tensors() {
            let xs = t.as_f32().expect("aligned f32 tensor");
            let mut chunks = xs.chunks_exact(16);
            for c in &mut chunks {
                for l in 0..16 {
                    lanes[l] += c[l];
                }
            }
            for (l, x) in chunks.remainder().iter().enumerate() {
                lanes[l] += x;
            }
        }
    }
    lanes.iter().sum()
}

/// A strategy with the round opened and every client folded (validated and kept).
fn folded<'a>(
    strategy: &str,
    params: &Params,
    views: &[ModelView<'a>],
) -> Box<dyn fl_core::Strategy<'a> + 'a> {
    let mut s = build_strategy(strategy, params, Limits::default(), 0).expect("strategy");
    s.begin(1, None).expect("begin");
    for (i, v) in views.iter().enumerate() {
        s.fold(Update::new(
            format!("client{i:03}"),
            1,
            v.clone(),
            100 + i as u64,
        ))
        .expect("fold");
    }
    s
}

/// One whole round: begin, fold every client, finish.
fn round(strategy: &str, params: &Params, views: &[ModelView<'_>]) -> Model {
    folded(strategy, params, views).finish().expect("finish").0
}

/// Heap high-water mark above the starting level during one round, in bytes.
fn peak_extra_bytes(strategy: &str, params: &Params, views: &[ModelView<'_>]) -> usize {
    let before = LIVE_BYTES.load(Ordering::Relaxed);
    PEAK_BYTES.store(before, Ordering::Relaxed);
    let out = round(strategy, params, views);
    let peak = PEAK_BYTES.load(Ordering::Relaxed);
    drop(out);
    peak.saturating_sub(before)
}

struct Case {
    group: &'static str,
    case: &'static str,
    strategy: &'static str,
    params: &'static [(&'static str, &'static str)],
    clients: usize,
    d: usize,
    flower: &'static str,
    targets: &'static [Target],
    /// Also time the whole round (fold validation of every client + finish).
    whole_round: bool,
}

/// Flower figures: `../shared/flower/README.md` (flwr 1.41.0 on a machine like ours, median of 5
/// calls; FedAvg is its default `aggregate_inplace` path, "sum" its numpy plain sum).
const CASES: &[Case] = &[
    Case {
        group: "fedavg_10x1M",
        case: "FedAvg 10 x 1M f32",
        strategy: "fedavg",
        params: &[],
        clients: 10,
        d: M1,
        flower: "24 ms (0.11x sum), ~2 models",
        targets: &[Target::MaxMemoryModels(2.5)],
        whole_round: false,
    },
    Case {
        group: "fedavg_50x1M",
        case: "FedAvg 50 x 1M f32",
        strategy: "fedavg",
        params: &[],
        clients: 50,
        d: M1,
        flower: "68 ms (0.14x sum), ~2 models",
        targets: &[Target::MaxMemoryModels(2.5)],
        whole_round: false,
    },
    Case {
        group: "fedavg_10x10M",
        case: "FedAvg 10 x 10M f32",
        strategy: "fedavg",
        params: &[],
        clients: 10,
        d: M10,
        flower: "168 ms (0.14x sum), ~2 models",
        targets: &[Target::MaxMemoryModels(2.5)],
        whole_round: false,
    },
    Case {
        group: "fedavg_50x10M",
        case: "FedAvg 50 x 10M f32",
        strategy: "fedavg",
        params: &[],
        clients: 50,
        d: M10,
        flower: "1,316 ms (0.08x sum), ~2 models",
        targets: &[Target::MinRatio(0.7), Target::MaxMemoryModels(2.5)],
        whole_round: true,
    },
    Case {
        group: "fedmedian_50x10M",
        case: "FedMedian 50 x 10M f32",
        strategy: "fedmedian",
        params: &[],
        clients: 50,
        d: M10,
        flower: "11,905 ms, +1x all inputs",
        targets: &[Target::MaxTimeMs(600.0)],
        whole_round: false,
    },
    Case {
        group: "fedtrimmedavg_50x10M",
        case: "FedTrimmedAvg 0.1 50 x 10M f32",
        strategy: "fedtrimmedavg",
        params: &[("beta", "0.1")],
        clients: 50,
        d: M10,
        flower: "13,483 ms, +1x all inputs",
        targets: &[Target::MaxTimeMs(600.0)],
        whole_round: false,
    },
    Case {
        group: "krum_f2_50x1M",
        case: "Krum f=2 50 x 1M f32",
        strategy: "krum",
        params: &[("num_malicious_clients", "2")],
        clients: 50,
        d: M1,
        flower: "964 ms, +2x all inputs",
        targets: &[Target::MaxTimeMs(100.0)],
        whole_round: false,
    },
];

fn main() {
    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();

    // `cargo bench --bench aggregation -- FILTER`: only the cases whose group matches are
    // prepared, timed and reported (criterion filters the timed functions the same way).
    let filter = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .unwrap_or_default();
    let cases: Vec<&Case> = CASES.iter().filter(|c| c.group.contains(&filter)).collect();
    let dir = tempfile::Builder::new()
        .prefix("fl-agg-bench")
        .tempdir()
        .expect("temp dir");
    eprintln!("writing bench inputs to {} ...", dir.path().display());
    let inputs = |d: usize, tag: &str| -> Vec<Mmap> {
        let clients = cases
            .iter()
            .filter(|c| c.d == d)
            .map(|c| c.clients)
            .max()
            .unwrap_or(0);
        map_all(&write_inputs(dir.path(), tag, clients, d))
    };
    let small = inputs(M1, "1M");
    let large = inputs(M10, "10M");
    let small_views = views_of(&small);
    let large_views = views_of(&large);
    // read every byte once so the inputs are in the page cache before anything is timed
    black_box(plain_sum(&small_views));
    black_box(plain_sum(&large_views));

    let mut rows = Vec::new();
    for case in cases {
        let all = if case.d == M1 {
            &small_views
        } else {
            &large_views
        };
        let views = &all[..case.clients];
        let params: Params = case
            .params
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let model_bytes = case.d * 4;
        let input_bytes = (case.clients * model_bytes) as u64;

        let mut g = c.benchmark_group(case.group);
        // one call per sample: the slow cases take seconds, and criterion's linear sampling
        // would run 55 calls of each
        g.sampling_mode(SamplingMode::Flat);
        g.throughput(criterion::Throughput::Bytes(input_bytes));
        g.bench_function("plain_sum", |b| b.iter(|| black_box(plain_sum(views))));
        // the aggregation, as Flower's figures time it: `finish` over updates already
        // validated and kept by `fold` (which runs when each update arrives)
        g.bench_function(case.strategy, |b| {
            b.iter_batched(
                || folded(case.strategy, &params, views),
                |mut s| black_box(s.finish().expect("finish")),
                BatchSize::PerIteration,
            )
        });
        if case.whole_round {
            g.bench_function(format!("{}_round", case.strategy), |b| {
                b.iter(|| black_box(round(case.strategy, &params, views)))
            });
        }
        g.finish();

        let extra = peak_extra_bytes(case.strategy, &params, views);
        rows.push(Row {
            case: case.case.to_owned(),
            criterion: Some(format!("{}/{}", case.group, case.strategy)),
            bytes: Some(input_bytes),
            reference: Some(format!("{}/plain_sum", case.group)),
            memory_models: Some(extra as f64 / model_bytes as f64),
            flower: Some(case.flower.to_owned()),
            targets: case.targets.to_vec(),
            ..Row::default()
        });
        if case.whole_round {
            rows.push(Row {
                case: format!("{}, whole round (fold validation + finish)", case.case),
                criterion: Some(format!("{}/{}_round", case.group, case.strategy)),
                bytes: Some(input_bytes),
                reference: Some(format!("{}/plain_sum", case.group)),
                ..Row::default()
            });
        }
    }
    drop((small_views, large_views));
    drop((small, large));
    dir.close().expect("remove bench inputs");

    c.final_summary();
    match write_rows("aggregation", &rows) {
        Ok(path) => eprintln!("rows written to {}", path.display()),
        Err(e) => eprintln!("could not write the bench rows: {e}"),
    }
}
