//! CPU pose-error metrics on the ycbv-mini models (about 3,800 vertices each).
//!
//! `cpu_adds` is the figure to compare with the BOP toolkit's `adi` (scipy KD-tree, about
//! 370 pairs/s single process on this class of machine): criterion reports pairs/s as
//! element throughput. Pairs run in parallel on every core (rayon), as `posed eval` does.

// criterion_group! generates undocumented items.
#![allow(missing_docs)]

use std::collections::BTreeMap;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use posed::bop::models::ModelSet;
use posed_kernels::metrics::PoseErrorModel;
use posed_kernels::symmetry::{bop_symmetry_transforms, BOP_MAX_SYM_DISC_STEP};
use posed_kernels::Intrinsics;
use rayon::prelude::*;

const PAIRS: usize = 512;

fn models() -> BTreeMap<u32, PoseErrorModel> {
    let set = ModelSet::load(&posed_benches::ycbv_mini().join("models")).expect("ycbv-mini models");
    set.objects
        .values()
        .map(|m| {
            let symmetries = bop_symmetry_transforms(&m.info.symmetries, BOP_MAX_SYM_DISC_STEP)
                .expect("symmetries");
            let model =
                PoseErrorModel::new(m.mesh.positions.clone(), m.info.diameter_m, symmetries)
                    .expect("model");
            (m.obj_id, model)
        })
        .collect()
}

/// ADD-S over exactly the 400 pairs of data/metrics-cases.json (objects 1 and 2, five
/// perturbation levels up to 30 degrees / 50 mm): the like-for-like comparison with the
/// BOP toolkit's `adi`.
fn bench_metrics_cases(c: &mut Criterion) {
    let models = models();
    let pairs = posed_benches::metrics_case_pairs().expect("metrics-cases.json");
    let mut group = c.benchmark_group("metrics_cases");
    group.throughput(Throughput::Elements(pairs.len() as u64));
    group.sample_size(10);
    group.bench_function("cpu_adds", |b| {
        b.iter(|| {
            pairs
                .par_iter()
                .map(|(obj_id, gt, est)| models[obj_id].adds(gt, est))
                .sum::<f64>()
        })
    });
    group.bench_function("cpu_adds_one_thread", |b| {
        b.iter(|| {
            pairs
                .iter()
                .map(|(obj_id, gt, est)| models[obj_id].adds(gt, est))
                .sum::<f64>()
        })
    });
    group.finish();
}

fn bench(c: &mut Criterion) {
    let models: Vec<PoseErrorModel> = models().into_values().collect();
    // Perturbations spanning the metrics-cases levels (up to 30 degrees, 50 mm).
    let pairs = posed_benches::random_pose_pairs(PAIRS, 30.0, 0.05, 7);
    let k = Intrinsics::from_row_major(&[
        1066.778, 0.0, 312.9869, 0.0, 1067.487, 241.3109, 0.0, 0.0, 1.0,
    ]);
    let jobs: Vec<(usize, usize)> = (0..PAIRS).map(|i| (i % models.len(), i)).collect();

    let mut group = c.benchmark_group("metrics");
    group.throughput(Throughput::Elements(PAIRS as u64));
    group.sample_size(10);
    group.bench_function("cpu_adds", |b| {
        b.iter(|| {
            jobs.par_iter()
                .map(|&(m, p)| models[m].adds(&pairs[p].0, &pairs[p].1))
                .sum::<f64>()
        })
    });
    group.bench_function("cpu_adds_one_thread", |b| {
        b.iter(|| {
            jobs.iter()
                .map(|&(m, p)| models[m].adds(&pairs[p].0, &pairs[p].1))
                .sum::<f64>()
        })
    });
    group.bench_function("cpu_add", |b| {
        b.iter(|| {
            jobs.par_iter()
                .map(|&(m, p)| models[m].add(&pairs[p].0, &pairs[p].1))
                .sum::<f64>()
        })
    });
    group.bench_function("cpu_mssd", |b| {
        b.iter(|| {
            jobs.par_iter()
                .map(|&(m, p)| models[m].mssd(&pairs[p].0, &pairs[p].1))
                .sum::<f64>()
        })
    });
    group.bench_function("cpu_mspd", |b| {
        b.iter(|| {
            jobs.par_iter()
                .map(|&(m, p)| models[m].mspd(&k, &pairs[p].0, &pairs[p].1))
                .sum::<f64>()
        })
    });
    group.finish();
}

criterion_group!(benches, bench_metrics_cases, bench);
criterion_main!(benches);
