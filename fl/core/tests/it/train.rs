//! Local trainer and dataset tests: real learning on the digits fixture over a Dirichlet split,
//! determinism, the proximal term, stragglers' partial work, partitions, bad input.

use fl_core::Model;
use fl_core::data::{
    Dataset, SyntheticConfig, dirichlet_partition, fedprox_synthetic, parse_digits_csv,
};
use fl_core::strategy::{FedAvg, Strategy, Update};
use fl_core::train::{Architecture, TrainConfig, TrainError, Trainer};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

const DIGITS_CSV: &[u8] = include_bytes!("../../../../fixtures/datasets/digits8x8.csv");

fn digits() -> Dataset {
    parse_digits_csv(DIGITS_CSV).expect("the digits fixture parses")
}

/// Plain FedAvg (weighted by num_examples, f64 accumulation) as the test's own reference.
fn weighted_mean(models: &[(Vec<f32>, usize)]) -> Vec<f32> {
    let total: usize = models.iter().map(|(_, n)| n).sum();
    (0..models[0].0.len())
        .map(|i| {
            (models
                .iter()
                .map(|(m, n)| m[i] as f64 * *n as f64)
                .sum::<f64>()
                / total as f64) as f32
        })
        .collect()
}

#[test]
fn digits_fixture_matches_its_readme() {
    let d = digits();
    assert_eq!(d.len(), 1797);
    assert_eq!(d.num_features, 64);
    assert_eq!(
        d.class_counts(),
        vec![178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
    );
    assert!(d.features.iter().all(|v| (0.0..=1.0).contains(v)));
}

/// FedAvg over a non-IID Dirichlet(0.5) split of the digits: held-out accuracy goes from chance
/// (~10%) to well above it within a few rounds, for softmax regression and the MLP.
#[test]
fn fedavg_on_dirichlet_digits_learns() {
    let mut rng = ChaCha8Rng::seed_from_u64(2026);
    let (train, test) = digits().split(0.2, &mut rng).unwrap();
    let parts = dirichlet_partition(&train, 10, 0.5, 10, &mut rng).unwrap();
    let shards: Vec<Dataset> = parts.iter().map(|p| train.subset(p)).collect();
    for arch in [
        Architecture::Softmax {
            inputs: 64,
            classes: 10,
        },
        Architecture::Mlp {
            inputs: 64,
            hidden: 32,
            classes: 10,
        },
    ] {
        let mut trainer = Trainer::new(arch);
        let mut global = arch.init(&mut rng);
        let before = trainer.evaluate(&global, &test).unwrap();
        assert!(
            before.accuracy < 0.3,
            "{arch}: untrained accuracy {}",
            before.accuracy
        );
        let cfg = TrainConfig {
            epochs: 2,
            batch_size: 16,
            learning_rate: 0.1,
            ..TrainConfig::default()
        };
        let mut accuracies = Vec::new();
        for round in 1..=5u64 {
            let mut results = Vec::new();
            for shard in &shards {
                let mut local = global.clone();
                let report = trainer.train(&mut local, shard, &cfg, &mut rng).unwrap();
                assert_eq!(report.num_examples, shard.len());
                results.push((local, shard.len()));
            }
            // The real fl-core FedAvg over the clients' models, checked against the plain mean.
            let models: Vec<Model> = results
                .iter()
                .map(|(p, _)| arch.to_model(p).unwrap())
                .collect();
            let base = arch.to_model(&global).unwrap();
            let mut fedavg = FedAvg::new();
            fedavg.begin(round, Some(base.view())).unwrap();
            for (k, (m, (_, n))) in models.iter().zip(&results).enumerate() {
                fedavg
                    .fold(Update::new(format!("c{k}"), round, m.view(), *n as u64))
                    .unwrap();
            }
            let (aggregated, _) = fedavg.finish().unwrap();
            global = arch.params_from_model(&aggregated).unwrap();
            let reference = weighted_mean(&results);
            for (a, r) in global.iter().zip(&reference) {
                assert!(
                    (a - r).abs() <= 1e-6 * r.abs().max(1.0),
                    "fedavg {a} vs reference {r}"
                );
            }
            accuracies.push(trainer.evaluate(&global, &test).unwrap().accuracy);
        }
        let after = trainer.evaluate(&global, &test).unwrap();
        assert!(
            after.accuracy > 0.75,
            "{arch}: accuracy per round {accuracies:?}"
        );
        assert!(
            after.loss < before.loss,
            "{arch}: loss {} -> {}",
            before.loss,
            after.loss
        );
    }
}

#[test]
fn training_is_deterministic_given_the_seed() {
    let d = digits();
    let arch = Architecture::Mlp {
        inputs: 64,
        hidden: 8,
        classes: 10,
    };
    let run = |seed: u64| {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut p = arch.init(&mut rng);
        let r = Trainer::new(arch)
            .train(
                &mut p,
                &d.subset(&(0..300).collect::<Vec<_>>()),
                &TrainConfig::default(),
                &mut rng,
            )
            .unwrap();
        (p.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), r)
    };
    assert_eq!(run(1), run(1));
    assert_ne!(run(1).0, run(2).0);
}

#[test]
fn proximal_term_pulls_towards_the_global_model() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let clients = fedprox_synthetic(
        &SyntheticConfig {
            num_clients: 2,
            ..SyntheticConfig::paper(1.0, 1.0)
        },
        &mut rng,
    )
    .unwrap();
    let arch = Architecture::Softmax {
        inputs: 60,
        classes: 10,
    };
    let global = arch.init(&mut rng);
    let dist = |mu: f32| {
        let mut p = global.clone();
        let cfg = TrainConfig {
            epochs: 20,
            batch_size: 10,
            learning_rate: 0.05,
            proximal_mu: mu,
            work_fraction: 1.0,
        };
        Trainer::new(arch)
            .train(&mut p, &clients[0], &cfg, &mut ChaCha8Rng::seed_from_u64(9))
            .unwrap();
        p.iter()
            .zip(&global)
            .map(|(a, b)| ((a - b) as f64).powi(2))
            .sum::<f64>()
            .sqrt()
    };
    let (free, prox) = (dist(0.0), dist(1.0));
    assert!(prox < 0.5 * free, "||w - w_g||: mu=0 {free}, mu=1 {prox}");
}

#[test]
fn stragglers_do_a_fraction_of_the_steps() {
    let d = digits().subset(&(0..100).collect::<Vec<_>>());
    let arch = Architecture::Softmax {
        inputs: 64,
        classes: 10,
    };
    let global = arch.init(&mut ChaCha8Rng::seed_from_u64(1));
    let mut t = Trainer::new(arch);
    let cfg = TrainConfig {
        epochs: 3,
        batch_size: 10,
        ..TrainConfig::default()
    };
    let mut p = global.clone();
    let full = t
        .train(&mut p, &d, &cfg, &mut ChaCha8Rng::seed_from_u64(2))
        .unwrap();
    assert_eq!(
        (full.steps, full.planned_steps, full.examples_seen),
        (30, 30, 300)
    );
    let mut p = global.clone();
    let part = t
        .train(
            &mut p,
            &d,
            &TrainConfig {
                work_fraction: 0.35,
                ..cfg
            },
            &mut ChaCha8Rng::seed_from_u64(2),
        )
        .unwrap();
    assert_eq!((part.steps, part.planned_steps), (11, 30));
    let mut p = global.clone();
    let none = t
        .train(
            &mut p,
            &d,
            &TrainConfig {
                work_fraction: 0.0,
                ..cfg
            },
            &mut ChaCha8Rng::seed_from_u64(2),
        )
        .unwrap();
    assert_eq!(none.steps, 0);
    assert_eq!(p, global, "no work leaves the model unchanged");
}

#[test]
fn synthetic_clients_are_heterogeneous_and_learnable() {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let cfg = SyntheticConfig {
        num_clients: 4,
        ..SyntheticConfig::paper(1.0, 1.0)
    };
    let clients = fedprox_synthetic(&cfg, &mut rng).unwrap();
    // Non-IID: the clients' majority classes differ.
    let majority: Vec<usize> = clients
        .iter()
        .map(|c| {
            c.class_counts()
                .iter()
                .enumerate()
                .max_by_key(|(_, n)| **n)
                .unwrap()
                .0
        })
        .collect();
    assert!(majority.windows(2).any(|w| w[0] != w[1]), "{majority:?}");
    let arch = Architecture::Softmax {
        inputs: 60,
        classes: 10,
    };
    let mut t = Trainer::new(arch);
    let mut p = arch.init(&mut rng);
    let (train, test) = clients[0].split(0.2, &mut rng).unwrap();
    let before = t.evaluate(&p, &test).unwrap();
    let cfg = TrainConfig {
        epochs: 20,
        batch_size: 10,
        learning_rate: 0.05,
        ..TrainConfig::default()
    };
    t.train(&mut p, &train, &cfg, &mut rng).unwrap();
    let after = t.evaluate(&p, &test).unwrap();
    assert!(
        after.loss < before.loss && after.accuracy > before.accuracy,
        "{before:?} -> {after:?}"
    );
}

#[test]
fn dirichlet_partition_is_a_deterministic_partition_skewed_by_alpha() {
    let d = digits();
    let parts = dirichlet_partition(&d, 8, 0.3, 20, &mut ChaCha8Rng::seed_from_u64(3)).unwrap();
    assert_eq!(
        parts,
        dirichlet_partition(&d, 8, 0.3, 20, &mut ChaCha8Rng::seed_from_u64(3)).unwrap()
    );
    let mut all: Vec<usize> = parts.iter().flatten().copied().collect();
    all.sort_unstable();
    assert_eq!(
        all,
        (0..d.len()).collect::<Vec<_>>(),
        "every row in exactly one client"
    );
    assert!(parts.iter().all(|p| p.len() >= 20));
    // Skew: the mean share of a client's largest class is higher for small alpha.
    let skew = |alpha: f64| {
        let parts =
            dirichlet_partition(&d, 8, alpha, 1, &mut ChaCha8Rng::seed_from_u64(4)).unwrap();
        parts
            .iter()
            .map(|p| {
                let c = d.subset(p).class_counts();
                *c.iter().max().unwrap() as f64 / p.len() as f64
            })
            .sum::<f64>()
            / 8.0
    };
    assert!(
        skew(0.1) > skew(100.0) + 0.2,
        "skew 0.1: {}, 100: {}",
        skew(0.1),
        skew(100.0)
    );
    let err = dirichlet_partition(&d, 8, 0.3, 1000, &mut ChaCha8Rng::seed_from_u64(3)).unwrap_err();
    assert!(err.to_string().contains("min_examples_per_client"), "{err}");
}

#[test]
fn bad_input_is_a_typed_error() {
    let d = digits().subset(&[0, 1, 2]);
    let arch = Architecture::Softmax {
        inputs: 64,
        classes: 10,
    };
    let mut t = Trainer::new(arch);
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let mut short = vec![0.0; 10];
    assert_eq!(
        t.train(&mut short, &d, &TrainConfig::default(), &mut rng)
            .unwrap_err(),
        TrainError::ParamLength {
            arch: "softmax-64-10".into(),
            expected: 650,
            got: 10
        }
    );
    let mut p = arch.init(&mut rng);
    let wrong = Architecture::Softmax {
        inputs: 60,
        classes: 10,
    };
    let e = Trainer::new(wrong)
        .evaluate(&wrong.init(&mut rng), &d)
        .unwrap_err();
    assert!(e.to_string().contains("64 features"), "{e}");
    for (cfg, name) in [
        (
            TrainConfig {
                batch_size: 0,
                ..TrainConfig::default()
            },
            "batch_size",
        ),
        (
            TrainConfig {
                learning_rate: f32::NAN,
                ..TrainConfig::default()
            },
            "learning_rate",
        ),
        (
            TrainConfig {
                work_fraction: 1.5,
                ..TrainConfig::default()
            },
            "work_fraction",
        ),
        (
            TrainConfig {
                proximal_mu: -1.0,
                ..TrainConfig::default()
            },
            "proximal_mu",
        ),
    ] {
        assert!(
            matches!(t.train(&mut p, &d, &cfg, &mut rng), Err(TrainError::Config { name: n, .. }) if n == name)
        );
    }
    // Weights near f32::MAX overflow the logits to infinity: reported, not trained on.
    let mut huge = vec![3e38f32; 650];
    assert_eq!(
        t.train(&mut huge, &d, &TrainConfig::default(), &mut rng),
        Err(TrainError::Diverged { step: 0 })
    );
}

#[test]
fn parameters_round_trip_through_a_named_model() {
    let arch = Architecture::Mlp {
        inputs: 64,
        hidden: 16,
        classes: 10,
    };
    let p = arch.init(&mut ChaCha8Rng::seed_from_u64(8));
    let m = arch.to_model(&p).unwrap();
    let names: Vec<&str> = m.tensors().iter().map(|t| t.name()).collect();
    assert_eq!(names, ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]);
    assert_eq!(m.tensors()[0].shape(), &[16, 64]);
    assert_eq!(arch.params_from_model(&m.view()).unwrap(), p);
    let other = Architecture::Softmax {
        inputs: 64,
        classes: 10,
    };
    let e = other.params_from_model(&m.view()).unwrap_err();
    assert!(
        e.to_string().contains("4 tensors, softmax-64-10 has 2"),
        "{e}"
    );
    let wrong_shape = Architecture::Mlp {
        inputs: 64,
        hidden: 8,
        classes: 10,
    };
    let e = wrong_shape.params_from_model(&m.view()).unwrap_err();
    assert!(
        e.to_string().contains("fc1.weight") && e.to_string().contains("[16, 64]"),
        "{e}"
    );
}
