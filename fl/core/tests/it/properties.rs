//! Property tests: the aggregate is bitwise identical whatever the arrival order and the
//! number of threads, for every strategy.

use fl_core::strategy::{Limits, Params, build_strategy};
use fl_core::{Metrics, Model, ModelView, TensorView, Update};
use proptest::prelude::*;

/// Strategies with the parameters that make them do real work.
fn configs() -> Vec<(&'static str, Vec<(&'static str, &'static str)>)> {
    vec![
        ("fedavg", vec![]),
        (
            "fedavgm",
            vec![("server_momentum", "0.9"), ("server_learning_rate", "0.7")],
        ),
        ("fedadam", vec![]),
        ("fedyogi", vec![]),
        ("fedadagrad", vec![]),
        ("qfedavg", vec![("client_learning_rate", "0.05")]),
        ("fedmedian", vec![]),
        ("fedtrimmedavg", vec![("beta", "0.2")]),
        ("krum", vec![("num_malicious_clients", "1")]),
        (
            "multikrum",
            vec![("num_malicious_nodes", "1"), ("num_nodes_to_select", "3")],
        ),
        ("bulyan", vec![("num_malicious_clients", "1")]),
        (
            "dp-fixed-clipping",
            vec![
                ("noise_multiplier", "0.5"),
                ("clipping_norm", "20"),
                ("num_sampled_clients", "8"),
            ],
        ),
        (
            "dp-adaptive-clipping",
            vec![
                ("noise_multiplier", "0.1"),
                ("num_sampled_clients", "8"),
                ("inner", "fedmedian"),
            ],
        ),
    ]
}

fn models(n: usize, d: usize, seed: u64) -> (Vec<Model>, Model) {
    // Small deterministic generator (xorshift), values spanning many magnitudes.
    let mut x = seed | 1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut mk = |scale: f32| {
        let a: Vec<f32> = (0..d)
            .map(|_| ((next() % 20001) as f32 - 10000.0) * scale)
            .collect();
        let b: Vec<f64> = (0..7).map(|_| (next() % 1000) as f64 * 1e-3).collect();
        ModelView::new(vec![
            TensorView::from_f32("w", vec![d], &a).unwrap(),
            TensorView::from_f64("b", vec![7], &b).unwrap(),
            TensorView::from_i64("steps", vec![2], &[(next() % 100) as i64, 5]).unwrap(),
        ])
        .unwrap()
    };
    let clients = (0..n).map(|_| mk(1e-4)).collect();
    (clients, mk(1e-4))
}

fn aggregate(
    name: &str,
    params: &Params,
    clients: &[Model],
    global: &Model,
    order: &[usize],
    threads: usize,
) -> (Model, Metrics) {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    pool.install(|| {
        let mut s = build_strategy(name, params, Limits::default(), 42).unwrap();
        // Two rounds so the server state (momentum, m_t, v_t, clipping norm) is exercised.
        let mut g = global.clone();
        let mut out = None;
        for round in 1..=2 {
            s.begin(round, Some(g.clone())).unwrap();
            for &i in order {
                let metrics: Metrics = [("train_loss".to_owned(), 0.25 + i as f64)].into();
                s.fold(
                    Update::new(
                        format!("c{i:03}"),
                        round,
                        clients[i].view(),
                        1 + 3 * i as u64,
                    )
                    .with_metrics(metrics),
                )
                .unwrap();
            }
            let (m, met) = s.finish().unwrap();
            g = m.clone();
            out = Some((m, met));
        }
        out.unwrap()
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    #[test]
    fn order_and_thread_count_do_not_change_a_bit(
        n in 7usize..10,
        // spans several 512- and 4096-coordinate blocks
        d in prop_oneof![Just(1usize), 1..600usize, 4000..9000usize],
        seed in any::<u64>(),
        perm in any::<u64>(),
    ) {
        let (clients, global) = models(n, d, seed);
        let canonical: Vec<usize> = (0..n).collect();
        let mut shuffled = canonical.clone();
        // Fisher-Yates driven by `perm`.
        let mut p = perm | 1;
        for i in (1..n).rev() {
            p = p.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            shuffled.swap(i, (p >> 33) as usize % (i + 1));
        }
        for (name, kv) in configs() {
            let params: Params = kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
            let (base, base_metrics) = aggregate(name, &params, &clients, &global, &canonical, 1);
            for (order, threads) in [(&shuffled, 1), (&canonical, 2), (&shuffled, 3), (&shuffled, 4)] {
                let (m, met) = aggregate(name, &params, &clients, &global, order, threads);
                prop_assert_eq!(m.digest(), base.digest(), "{} threads={}", name, threads);
                let a: Vec<u64> = met.values().map(|v| v.to_bits()).collect();
                let b: Vec<u64> = base_metrics.values().map(|v| v.to_bits()).collect();
                prop_assert_eq!(a, b, "{} metrics", name);
            }
        }
    }
}
