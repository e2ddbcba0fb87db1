//! `validate --gitops` over all fixtures (target <= 2 s), with the reference of the same
//! validation without the `kubectl kustomize` cross-check (pure in-process work).

use std::path::{Path, PathBuf};
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures")
}

fn bench(c: &mut Criterion) {
    let gitops = fixtures().join("gitops");
    let crds = fixtures().join("crds");
    let kubectl = simulator::gitops::loader::kubectl();
    println!(
        "gitops bench: kubectl {}",
        kubectl
            .as_ref()
            .map(|k| format!("at {}", k.display()))
            .unwrap_or_else(|| "not installed: cross-check skipped".into())
    );
    let mut g = c.benchmark_group("gitops_validate");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(8))
        .warm_up_time(Duration::from_secs(1));
    g.bench_function("reference_in_process_only", |b| {
        b.iter(|| {
            let r = simulator::gitops::validate_with(&gitops, Some(&crds), None, None)
                .expect("validate");
            assert!(r.is_ok(), "{r}");
        })
    });
    g.bench_function("all_fixtures_with_kubectl_kustomize", |b| {
        b.iter(|| {
            let r =
                simulator::gitops::validate_with(&gitops, Some(&crds), None, kubectl.as_deref())
                    .expect("validate");
            assert!(r.is_ok(), "{r}");
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
