//! Memory bound of the FedAvg family: at most 2.5x one f32 model of extra heap, whatever the
//! client count. Measured with the counting allocator of this test binary (`main.rs`), only
//! on the threads of a dedicated pool plus the calling thread, so other tests do not count.

use fl_core::strategy::{Limits, Params, build_strategy};
use fl_core::{Model, Strategy, Update};

use crate::alloc_count;

fn peak_extra_bytes(n: usize, d: usize, name: &str, params: &[(&str, &str)]) -> usize {
    let params: Params = params
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let clients: Vec<Model> = (0..n)
        .map(|i| Model::from_f32_flat(vec![vec![i as f32 * 0.5; d]]).unwrap())
        .collect();
    let global = Model::from_f32_flat(vec![vec![0.25; d]]).unwrap();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .start_handler(|_| alloc_count::track_this_thread(true))
        .build()
        .unwrap();
    alloc_count::track_this_thread(true);
    alloc_count::reset_peak();
    let out = pool.install(|| {
        let mut s: Box<dyn Strategy<'_>> =
            build_strategy(name, &params, Limits::default(), 0).unwrap();
        s.begin(1, Some(global.view())).unwrap();
        for (i, c) in clients.iter().enumerate() {
            s.fold(Update::new(format!("c{i:03}"), 1, c.view(), 1 + i as u64))
                .unwrap();
        }
        s.finish().unwrap().0
    });
    let peak = alloc_count::peak_extra();
    alloc_count::track_this_thread(false);
    assert_eq!(out.numel(), d);
    peak
}

#[test]
fn fedavg_family_heap_growth_is_bounded_independent_of_n() {
    let d = 1 << 20; // 4 MiB of f32
    let model_bytes = d * 4;
    for (name, params) in [
        ("fedavg", vec![]),
        ("fedprox", vec![("proximal_mu", "0.1")]),
    ] {
        for n in [4, 40] {
            let peak = peak_extra_bytes(n, d, name, &params);
            assert!(
                (peak as f64) <= 2.5 * model_bytes as f64,
                "{name} N={n}: peak extra heap {peak} bytes > 2.5 x {model_bytes}"
            );
        }
    }
    // FedAvgM keeps a momentum buffer (server state, f64 = 2x an f32 model) across rounds,
    // plus the output; still independent of N.
    let p = [("server_momentum", "0.9")];
    let a = peak_extra_bytes(4, d, "fedavgm", &p);
    let b = peak_extra_bytes(40, d, "fedavgm", &p);
    assert!((b as f64) <= 3.5 * model_bytes as f64, "fedavgm N=40: {b}");
    assert!(b <= a + model_bytes / 4, "fedavgm grows with N: {a} -> {b}");
}
