//! The CUDA pose metrics against their CPU twins (`PoseErrorModel::add` / `adds`), on the
//! vertices of a real model (ycbv-mini obj_000001, YCB 002_master_chef_can) and fresh
//! seeded poses: identical, near-identical, small, large and far errors. Where no GPU or
//! driver is present the comparison prints `SKIPPED: no CUDA device (<reason>)` and
//! passes; opening the device must then fail with an error, never a panic.

#![cfg(feature = "cuda")]

mod common;

use common::{model_path, open_or_skip, read_ply};
use nalgebra::{Rotation3, Vector3};
use posed_kernels::cuda::{driver_present, CudaDevice, GpuPoseMetrics};
use posed_kernels::metrics::PoseErrorModel;
use posed_kernels::{KernelError, Pose};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Allowed difference, relative to the CPU value. The kernels do the CPU twin's f64
/// arithmetic in its order without FMA contraction, so the results are expected to be
/// bit-identical (the test reports how many are); 1e-12 leaves room for a different
/// summation order, and any real error is many orders of magnitude larger.
const TOLERANCE_RELATIVE: f64 = 1e-12;
/// Allowed absolute difference in metres, for results at or near zero (identical poses).
const TOLERANCE_ABSOLUTE_M: f64 = 1e-15;

const SEED: u64 = 0x5eed_0ad5;

/// Object 1's vertex positions in metres.
fn model_points_m() -> Vec<[f64; 3]> {
    read_ply(&model_path(0))
        .positions_m
        .iter()
        .map(|p| p.map(f64::from))
        .collect()
}

fn random_axis(rng: &mut ChaCha8Rng) -> Vector3<f64> {
    loop {
        let v = Vector3::new(
            rng.random_range(-1.0..1.0),
            rng.random_range(-1.0..1.0),
            rng.random_range(-1.0..1.0),
        );
        let norm = v.norm();
        if norm > 0.1 && norm <= 1.0 {
            return v / norm;
        }
    }
}

fn random_pose(rng: &mut ChaCha8Rng) -> Pose {
    let angle = rng.random_range(0.0..std::f64::consts::PI);
    Pose {
        rotation: *Rotation3::new(random_axis(rng) * angle).matrix(),
        translation_m: Vector3::new(
            rng.random_range(-0.3..0.3),
            rng.random_range(-0.3..0.3),
            rng.random_range(0.4..1.5),
        ),
    }
}

/// `gt` moved by a rotation of `angle` about a random axis and a translation of `shift_m`
/// in a random direction.
fn perturbed(rng: &mut ChaCha8Rng, gt: &Pose, angle: f64, shift_m: f64) -> Pose {
    let delta = Pose {
        rotation: *Rotation3::new(random_axis(rng) * angle).matrix(),
        translation_m: random_axis(rng) * shift_m,
    };
    delta.compose(gt)
}

/// Pose pairs from identical to far apart, in a fixed order from a fixed seed.
fn pose_pairs(n: usize) -> Vec<(Pose, Pose)> {
    let mut rng = ChaCha8Rng::seed_from_u64(SEED);
    (0..n)
        .map(|i| {
            let gt = random_pose(&mut rng);
            // Drawn before the match, so that every pair uses the same number of draws.
            let small = (rng.random_range(0.0..0.05), rng.random_range(0.0..0.005));
            let large = (rng.random_range(0.0..0.6), rng.random_range(0.0..0.05));
            let far_angle = rng.random_range(0.0..3.1);
            let est = match i % 6 {
                0 => gt,
                1 => perturbed(&mut rng, &gt, 1e-9, 1e-9),
                2 => perturbed(&mut rng, &gt, small.0, small.1),
                3 => perturbed(&mut rng, &gt, large.0, large.1),
                4 => random_pose(&mut rng),
                _ => perturbed(&mut rng, &gt, far_angle, 10.0),
            };
            (gt, est)
        })
        .collect()
}

fn compare(metric: &str, pairs: &[(Pose, Pose)], cpu: &[f64], gpu: &[f64]) -> usize {
    let mut identical = 0;
    let mut worst = 0.0_f64;
    for (i, (c, g)) in cpu.iter().zip(gpu).enumerate() {
        assert!(
            !g.is_nan(),
            "{metric} pair {i}: GPU wrote no value (NaN poison left)"
        );
        let difference = (c - g).abs();
        assert!(
            difference <= TOLERANCE_RELATIVE * c.abs() + TOLERANCE_ABSOLUTE_M,
            "{metric} pair {i}: CPU {c:e} m, GPU {g:e} m (poses {:?})",
            pairs[i]
        );
        if c.to_bits() == g.to_bits() {
            identical += 1;
        }
        if *c > 0.0 {
            worst = worst.max(difference / c);
        }
    }
    eprintln!(
        "{metric}: {} pairs, {identical} bit-identical, largest relative difference {worst:e}",
        cpu.len()
    );
    identical
}

#[test]
fn opening_without_a_driver_is_an_error_not_a_panic() {
    if driver_present() {
        // A machine with a driver library (possibly a stub or a broken one): an ordinal
        // past the last device must still be an error, not a panic.
        match CudaDevice::open(1 << 20) {
            Err(e @ (KernelError::CudaUnavailable { .. } | KernelError::CudaDriver { .. })) => {
                eprintln!("CudaDevice::open(1 << 20): {e}")
            }
            other => panic!("expected an error, got {other:?}"),
        }
        return;
    }
    match CudaDevice::open(0) {
        Err(e @ KernelError::CudaUnavailable { .. }) => {
            let message = e.to_string();
            assert!(message.contains("no CUDA driver found"), "{message}");
            assert!(message.contains("use the CPU device"), "{message}");
        }
        other => panic!("expected CudaUnavailable, got {other:?}"),
    }
}

#[test]
fn gpu_add_and_adds_match_the_cpu_twin() {
    let Some(device) = open_or_skip() else {
        return;
    };
    let points = model_points_m();
    assert_eq!(points.len(), 3785);
    let cpu_model =
        PoseErrorModel::new(points.clone(), 0.17, vec![Pose::identity()]).expect("CPU model");
    let mut gpu = GpuPoseMetrics::new(&device, &points).expect("GPU metrics");
    let image = gpu.compiled_image();
    eprintln!(
        "metrics.cu: {} ({:?}), NVRTC {}.{}",
        image.target, image.cache, image.nvrtc_version.0, image.nvrtc_version.1
    );
    assert_eq!(image.log, "", "NVRTC warnings");

    // More pairs than one launch takes, so that the batching is exercised too.
    let n = gpu.pairs_per_launch() + 37;
    let pairs = pose_pairs(n);

    let cpu_add: Vec<f64> = pairs.iter().map(|(g, e)| cpu_model.add(g, e)).collect();
    let mut gpu_add = vec![f64::NAN; n];
    gpu.add_batch(&pairs, &mut gpu_add).expect("GPU ADD");
    compare("ADD", &pairs, &cpu_add, &gpu_add);

    let cpu_adds: Vec<f64> = pairs.iter().map(|(g, e)| cpu_model.adds(g, e)).collect();
    let mut gpu_adds = vec![f64::NAN; n];
    gpu.adds_batch(&pairs, &mut gpu_adds).expect("GPU ADD-S");
    compare("ADD-S", &pairs, &cpu_adds, &gpu_adds);

    // Identical poses: zero up to the rounding of est^-1 * gt, which both twins compute
    // (the first H200 run, 2026-11-24, saw ADD = 1.3e-19 m on the GPU and the CPU alike).
    assert!(
        gpu_add[0].abs() < 1e-15,
        "ADD of identical poses: {}",
        gpu_add[0]
    );
    assert!(
        gpu_adds[0].abs() < 1e-15,
        "ADD-S of identical poses: {}",
        gpu_adds[0]
    );
}

#[test]
fn gpu_metrics_refuse_what_the_cpu_twin_refuses() {
    let Some(device) = open_or_skip() else {
        return;
    };
    assert!(matches!(
        GpuPoseMetrics::new(&device, &[]),
        Err(KernelError::Empty { .. })
    ));
    assert!(matches!(
        GpuPoseMetrics::new(&device, &[[0.0, f64::NAN, 0.0]]),
        Err(KernelError::NotFinite { .. })
    ));
    let points = model_points_m();
    let mut gpu = GpuPoseMetrics::new(&device, &points).expect("GPU metrics");
    let pairs = pose_pairs(3);
    let mut short = [f64::NAN; 2];
    assert!(matches!(
        gpu.add_batch(&pairs, &mut short),
        Err(KernelError::SizeMismatch {
            expected: 3,
            found: 2,
            ..
        })
    ));
    // An empty batch is fine, and a NaN pose gives NaN as on the CPU.
    gpu.adds_batch(&[], &mut []).expect("empty batch");
    let cpu_model = PoseErrorModel::new(points, 0.17, vec![Pose::identity()]).expect("CPU");
    let mut nan_pose = pairs[0].1;
    nan_pose.translation_m.x = f64::NAN;
    let nan_pairs = [(pairs[0].0, nan_pose)];
    let mut out = [0.0];
    gpu.add_batch(&nan_pairs, &mut out).expect("GPU ADD");
    assert!(out[0].is_nan() && cpu_model.add(&nan_pairs[0].0, &nan_pairs[0].1).is_nan());
    out[0] = 0.0;
    gpu.adds_batch(&nan_pairs, &mut out).expect("GPU ADD-S");
    assert!(out[0].is_nan() && cpu_model.adds(&nan_pairs[0].0, &nan_pairs[0].1).is_nan());
}

#[test]
fn the_model_reader_finds_the_bundled_model() {
    // Runs everywhere, so that a moved data file fails here and not only on a GPU machine.
    let points = model_points_m();
    assert_eq!(points.len(), 3785);
    let radius_m = points
        .iter()
        .map(|p| Vector3::from(*p).norm())
        .fold(0.0, f64::max);
    assert!(radius_m > 0.05 && radius_m < 0.2, "{radius_m} m");
}
