//! CosyPose's geometry on the GPU (`GpuCosyPose`, `kernels/cuda/cosypose.cu`) against its
//! CPU twins (`crop_box` + `k_crop`, `roi_align_rgb8`, `apply_update`), on the 2,000
//! points CosyPose samples from each of the five ycbv-mini models (numpy's
//! `RandomState(0).choice`, as `cosypose::sample` reproduces it) and seeded poses: in
//! view, across the image border, far outside it, close to and partly behind the camera,
//! plus the CPU's error cases (an empty point set, a NaN pose, degenerate network
//! outputs, crop boxes beyond f32). The image is a seeded synthetic 640 x 480 RGB image
//! (gradients, noise and sharp edges): the kernels crate has no PNG decoder among its
//! dependencies.
//!
//! Where no GPU or driver is present the GPU comparisons print
//! `SKIPPED: no CUDA device (<reason>)` and pass; the scenario itself is still built and
//! checked against the CPU twins.

#![cfg(feature = "cuda")]

mod common;

use common::{model_path, open_or_skip, read_ply};
use nalgebra::{Rotation3, Vector3};
use posed_kernels::cosypose::crop::{crop_box, k_crop, roi_align_rgb8};
use posed_kernels::cosypose::sample::{choice_without_replacement, CROP_POINTS};
use posed_kernels::cosypose::update::apply_update;
use posed_kernels::cosypose::{BoxXyxy, CROP_HEIGHT, CROP_WIDTH};
use posed_kernels::cuda::cosypose::{Crop, INPUT_ITEM_LEN};
use posed_kernels::cuda::{GpuCosyPose, MappedHostBuffer};
use posed_kernels::{Intrinsics, KernelError, Pose};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Allowed distance between a GPU and a CPU value, in units in the last place (f64 for
/// the crop box, `K_crop` and the pose, f32 for RoIAlign). Zero: bit-identical (up to the
/// sign of a zero; a NaN matches a NaN). The kernels do the CPU twins' arithmetic in their
/// order with IEEE-rounded operations and no FMA contraction (`--fmad=false`, explicit
/// `__fdiv_rn`), and min / max reductions do not depend on the order; the test reports how
/// many values are bit-identical.
const MAX_ULPS: u64 = 0;

const SEED: u64 = 0xc05e_9053;
const MODELS: usize = 5;
/// Object index of the empty point set (after the five models).
const EMPTY_OBJECT: usize = MODELS;
const WIDTH: usize = 640;
const HEIGHT: usize = 480;
const MAX_BATCH: usize = 64;

/// YCB-Video's camera (ycbv-mini's camera.json).
fn ycbv_k() -> Intrinsics {
    Intrinsics::from_row_major(&[
        1066.778, 0.0, 312.9869, 0.0, 1067.487, 241.3109, 0.0, 0.0, 1.0,
    ])
}

/// The 2,000 points CosyPose takes from each model (all of them for a smaller model),
/// then an empty set.
fn object_points_m() -> Vec<Vec<[f32; 3]>> {
    let mut objects: Vec<Vec<[f32; 3]>> = (0..MODELS)
        .map(|index| {
            let vertices = read_ply(&model_path(index)).positions_m;
            let k = CROP_POINTS.min(vertices.len());
            let mut scratch = vec![0u32; vertices.len()];
            let mut chosen = vec![0u32; k];
            choice_without_replacement(0, vertices.len(), &mut scratch, &mut chosen)
                .expect("point choice");
            chosen.iter().map(|&i| vertices[i as usize]).collect()
        })
        .collect();
    objects.push(Vec::new());
    objects
}

fn random_rotation(rng: &mut ChaCha8Rng) -> Rotation3<f64> {
    let axis = loop {
        let v = Vector3::new(
            rng.random_range(-1.0..1.0),
            rng.random_range(-1.0..1.0),
            rng.random_range(-1.0..1.0),
        );
        let norm: f64 = v.norm();
        if norm > 0.1 && norm <= 1.0 {
            break v / norm;
        }
    };
    Rotation3::new(axis * rng.random_range(0.0..std::f64::consts::PI))
}

/// The object origin at depth `z`, projecting to pixel (u, v) (for z > 0).
fn pose_at(rng: &mut ChaCha8Rng, u: f64, v: f64, z: f64) -> Pose {
    let k = ycbv_k().k;
    Pose {
        rotation: *random_rotation(rng).matrix(),
        translation_m: Vector3::new(
            (u - k[(0, 2)]) / k[(0, 0)] * z,
            (v - k[(1, 2)]) / k[(1, 1)] * z,
            z,
        ),
    }
}

/// The crop batch: (pose, object) per item, every placement and error case.
fn crop_items() -> (Vec<Pose>, Vec<usize>) {
    let mut rng = ChaCha8Rng::seed_from_u64(SEED);
    let (w, h) = (WIDTH as f64, HEIGHT as f64);
    let mut poses = Vec::new();
    let mut objects = Vec::new();
    for n in 0..45 {
        // Drawn before the match, so that every item uses the same number of draws.
        let (fu, fv) = (rng.random_range(0.0..1.0), rng.random_range(0.0..1.0));
        let z = rng.random_range(0.5..1.5);
        let pose = match n % 5 {
            // In view.
            0 => pose_at(&mut rng, fu * w, fv * h, z),
            // Across the image border.
            1 => pose_at(&mut rng, (fu * 1.4 - 0.2) * w, (fv * 1.4 - 0.2) * h, z),
            // Far outside the image.
            2 => pose_at(&mut rng, (fu * 5.0 - 2.0) * w, (fv * 5.0 - 2.0) * h, z),
            // Close: the crop is larger than the image.
            3 => pose_at(&mut rng, fu * w, fv * h, 0.1 + 0.1 * fu),
            // Partly behind the camera (the 0.1 m clamp of the robust projection).
            _ => pose_at(&mut rng, fu * w, fv * h, 0.02 + 0.06 * fv),
        };
        poses.push(pose);
        objects.push(n % MODELS);
    }
    // The CPU's errors: no points, and a NaN pose (a box that is not finite).
    poses.push(pose_at(&mut rng, 320.0, 240.0, 1.0));
    objects.push(EMPTY_OBJECT);
    let mut nan = pose_at(&mut rng, 320.0, 240.0, 1.0);
    nan.translation_m.x = f64::NAN;
    poses.push(nan);
    objects.push(0);
    (poses, objects)
}

/// A seeded 640 x 480 RGB image: smooth gradients, noise, and sharp-edged squares.
fn synthetic_image() -> Vec<u8> {
    let mut rng = ChaCha8Rng::seed_from_u64(SEED ^ 0x1a6e);
    let mut rgb = Vec::with_capacity(WIDTH * HEIGHT * 3);
    for y in 0..HEIGHT {
        for x in 0..WIDTH {
            let square = (x / 40 + y / 40) % 2 == 0;
            let noise: u8 = rng.random_range(0..32);
            rgb.push(((x * 223 / WIDTH) as u8).wrapping_add(noise));
            rgb.push(((y * 223 / HEIGHT) as u8).wrapping_add(noise / 2));
            rgb.push(if square { 230 } else { 20 } + noise / 4);
        }
    }
    rgb
}

/// The CPU twins' crop of an image `width` x 480 pixels.
fn cpu_crop(pose: &Pose, points: &[[f32; 3]], width: usize) -> Result<Crop, KernelError> {
    let k = ycbv_k();
    let box_xyxy = crop_box(&k, pose, points, width, HEIGHT)?;
    Ok(Crop {
        box_xyxy,
        k_crop: k_crop(&k, &box_xyxy)?,
    })
}

/// Network outputs: around the identity, far from it, and the CPU's error cases.
fn network_outputs(n: usize) -> Vec<[f32; 9]> {
    let mut rng = ChaCha8Rng::seed_from_u64(SEED ^ 0x0d6);
    let mut outputs: Vec<[f32; 9]> = (0..n)
        .map(|i| {
            let spread = if i % 3 == 0 { 2.0 } else { 0.05 };
            let mut o = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0];
            for v in &mut o[..6] {
                *v += rng.random_range(-spread..spread);
            }
            o[6] = rng.random_range(-40.0..40.0);
            o[7] = rng.random_range(-40.0..40.0);
            o[8] = rng.random_range(0.6..1.4);
            o
        })
        .collect();
    let degenerate = [
        [0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
        [1.0, 2.0, 3.0, -2.0, -4.0, -6.0, 0.0, 0.0, 1.0],
        [f32::NAN, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
        [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, f32::INFINITY, 0.0, 1.0],
    ];
    for (slot, bad) in outputs.iter_mut().step_by(7).zip(degenerate) {
        *slot = bad;
    }
    outputs
}

/// Whether a distance in ULPs is within [`MAX_ULPS`].
// With MAX_ULPS = 0 this is `ulps == 0`; written as a bound so that the constant alone
// sets the tolerance.
#[allow(clippy::absurd_extreme_comparisons)]
fn within_tolerance(ulps: u64) -> bool {
    ulps <= MAX_ULPS
}

/// ULPs between two f64 (0 for +0 / -0 and for two NaN).
fn ulps_f64(a: f64, b: f64) -> u64 {
    if a.is_nan() || b.is_nan() {
        return if a.is_nan() && b.is_nan() {
            0
        } else {
            u64::MAX
        };
    }
    let key = |v: f64| {
        let bits = v.to_bits() as i64;
        if bits < 0 {
            i64::MIN - bits
        } else {
            bits
        }
    };
    key(a).abs_diff(key(b))
}

/// ULPs between two f32 (0 for +0 / -0 and for two NaN).
fn ulps_f32(a: f32, b: f32) -> u64 {
    if a.is_nan() || b.is_nan() {
        return if a.is_nan() && b.is_nan() {
            0
        } else {
            u64::MAX
        };
    }
    let key = |v: f32| {
        let bits = v.to_bits() as i32;
        i64::from(if bits < 0 { i32::MIN - bits } else { bits })
    };
    key(a).abs_diff(key(b))
}

/// Counts of values compared and bit-identical, and the largest distance in ULPs.
#[derive(Default)]
struct Tally {
    values: usize,
    identical: usize,
    worst_ulps: u64,
}

impl Tally {
    fn f64s(&mut self, label: &str, gpu: &[f64], cpu: &[f64]) {
        assert_eq!(gpu.len(), cpu.len());
        for (g, c) in gpu.iter().zip(cpu) {
            let ulps = ulps_f64(*g, *c);
            assert!(
                within_tolerance(ulps),
                "{label}: GPU {g:e}, CPU {c:e} ({ulps} ULPs)"
            );
            self.count(g.to_bits() == c.to_bits(), ulps);
        }
    }

    fn count(&mut self, identical: bool, ulps: u64) {
        self.values += 1;
        self.identical += usize::from(identical);
        self.worst_ulps = self.worst_ulps.max(ulps);
    }

    fn report(&self, label: &str) {
        eprintln!(
            "{label}: {} values, {} bit-identical, largest difference {} ULPs (allowed \
             {MAX_ULPS})",
            self.values, self.identical, self.worst_ulps
        );
    }
}

/// The RoIAlign batch: every successful crop box, then boxes of every edge case.
fn roi_boxes(crops: &[Result<Crop, KernelError>]) -> Vec<BoxXyxy> {
    let mut boxes: Vec<BoxXyxy> = crops
        .iter()
        .filter_map(|c| c.as_ref().ok().map(|c| c.box_xyxy))
        .collect();
    boxes.extend([
        // Smaller than a pixel (the bin length clamps to 1), at the last texel.
        [639.2, 479.1, 639.7, 479.4],
        // Inverted.
        [400.0, 300.0, 100.0, 50.0],
        // Huge, and beyond f32 (the CPU's NotFinite).
        [-1e7, -1e7, 1e7, 1e7],
        [0.0, 0.0, 1e39, 480.0],
    ]);
    boxes
}

#[test]
fn the_scenario_covers_what_it_should() {
    // Runs everywhere: the points, the items and the CPU results the GPU is held to.
    let objects = object_points_m();
    for points in &objects[..MODELS] {
        assert_eq!(points.len(), CROP_POINTS);
    }
    let (poses, object_indices) = crop_items();
    let crops: Vec<_> = poses
        .iter()
        .zip(&object_indices)
        .map(|(pose, &o)| cpu_crop(pose, &objects[o], WIDTH))
        .collect();
    let ok: Vec<&Crop> = crops.iter().filter_map(|c| c.as_ref().ok()).collect();
    assert_eq!(ok.len(), poses.len() - 2, "{crops:?}");
    let (w, h) = (WIDTH as f64, HEIGHT as f64);
    let leaves = |b: &BoxXyxy| b[0] < 0.0 || b[1] < 0.0 || b[2] > w || b[3] > h;
    let outside = |b: &BoxXyxy| b[2] < 0.0 || b[3] < 0.0 || b[0] > w || b[1] > h;
    let larger = |b: &BoxXyxy| b[2] - b[0] > w;
    for (what, count) in [
        (
            "leave the image",
            ok.iter().filter(|c| leaves(&c.box_xyxy)).count(),
        ),
        (
            "lie outside it",
            ok.iter().filter(|c| outside(&c.box_xyxy)).count(),
        ),
        (
            "are wider than it",
            ok.iter().filter(|c| larger(&c.box_xyxy)).count(),
        ),
    ] {
        eprintln!("{count} crop boxes {what}");
        assert!(count >= 3, "only {count} crop boxes {what}");
    }
    assert_eq!(
        crops[crops.len() - 2],
        Err(KernelError::Empty {
            what: "model points for the crop"
        })
    );
    assert_eq!(
        crops[crops.len() - 1],
        Err(KernelError::NotFinite { what: "crop box" })
    );
    let outputs = network_outputs(poses.len());
    let failed = poses
        .iter()
        .zip(&outputs)
        .filter(|(pose, output)| apply_update(pose, output, &ycbv_k()).is_err())
        .count();
    assert_eq!(failed, 4);
}

#[test]
fn gpu_crop_roi_align_and_update_match_the_cpu_twins() {
    let Some(device) = open_or_skip() else {
        return;
    };
    let objects = object_points_m();
    let mut gpu = GpuCosyPose::new(&device, MAX_BATCH, WIDTH, HEIGHT, &objects).expect("GPU");
    let image = gpu.compiled_image();
    eprintln!(
        "cosypose.cu: {} ({:?}), NVRTC {}.{}",
        image.target, image.cache, image.nvrtc_version.0, image.nvrtc_version.1
    );
    assert_eq!(image.log, "", "NVRTC warnings");
    let k = ycbv_k();

    // Crop box and K_crop.
    let (poses, object_indices) = crop_items();
    let cpu_crops: Vec<_> = poses
        .iter()
        .zip(&object_indices)
        .map(|(pose, &o)| cpu_crop(pose, &objects[o], WIDTH))
        .collect();
    let mut gpu_crops = vec![Err(KernelError::Empty { what: "unwritten" }); poses.len()];
    gpu.crop_batch(&k, WIDTH, HEIGHT, &poses, &object_indices, &mut gpu_crops)
        .expect("GPU crop");
    let mut tally = Tally::default();
    for (i, (g, c)) in gpu_crops.iter().zip(&cpu_crops).enumerate() {
        match (g, c) {
            (Ok(g), Ok(c)) => {
                tally.f64s(&format!("crop box {i}"), &g.box_xyxy, &c.box_xyxy);
                tally.f64s(
                    &format!("K_crop {i}"),
                    g.k_crop.k.as_slice(),
                    c.k_crop.k.as_slice(),
                );
            }
            _ => assert_eq!(g, c, "crop {i}"),
        }
    }
    tally.report("crop box and K_crop");

    // RoIAlign into the network input.
    let rgb = synthetic_image();
    let boxes = roi_boxes(&cpu_crops);
    let plane = CROP_HEIGHT * CROP_WIDTH;
    let mut gpu_results = vec![Err(KernelError::Empty { what: "unwritten" }); boxes.len()];
    gpu.roi_align_batch(&rgb, WIDTH, HEIGHT, &boxes, &mut gpu_results)
        .expect("GPU RoIAlign");
    let mut input = vec![f32::NAN; boxes.len() * INPUT_ITEM_LEN];
    gpu.read_network_input(&mut input).expect("read back");
    let mut tally = Tally::default();
    let mut cpu_planes = vec![0.0f32; 3 * plane];
    for (i, (bbox, gpu_result)) in boxes.iter().zip(&gpu_results).enumerate() {
        cpu_planes.fill(0.0);
        let cpu_result = roi_align_rgb8(&rgb, WIDTH, HEIGHT, bbox, &mut cpu_planes);
        assert_eq!(gpu_result, &cpu_result, "RoIAlign item {i} {bbox:?}");
        let item = &input[i * INPUT_ITEM_LEN..(i + 1) * INPUT_ITEM_LEN];
        // An item with an error is left as it was: zero, as allocated.
        for (p, (g, c)) in item[..3 * plane].iter().zip(&cpu_planes).enumerate() {
            let ulps = ulps_f32(*g, *c);
            assert!(
                within_tolerance(ulps),
                "RoIAlign item {i} {bbox:?}, channel {} pixel ({}, {}): GPU {g:e}, CPU {c:e} \
                 ({ulps} ULPs)",
                p / plane,
                p % plane % CROP_WIDTH,
                p % plane / CROP_WIDTH
            );
            tally.count(g.to_bits() == c.to_bits(), ulps);
        }
        assert!(
            item[3 * plane..].iter().all(|&v| v == 0.0),
            "item {i}: channels 3..6 belong to the render"
        );
    }
    tally.report("RoIAlign");

    // The same RoIAlign reading the image in place from mapped host memory (the daemon's
    // camera frames on a Jetson): the same network input, bit for bit.
    let mut mapped = MappedHostBuffer::new(&device, rgb.len() + 128).expect("mapped image");
    mapped.as_mut_slice()[128..128 + rgb.len()].copy_from_slice(&rgb);
    let in_place = &mapped.as_slice()[128..128 + rgb.len()];
    let mut mapped_results = vec![Err(KernelError::Empty { what: "unwritten" }); boxes.len()];
    gpu.roi_align_batch_mapped(
        in_place,
        &mapped,
        WIDTH,
        HEIGHT,
        &boxes,
        &mut mapped_results,
    )
    .expect("GPU RoIAlign in place");
    assert_eq!(mapped_results, gpu_results);
    let mut input_in_place = vec![f32::NAN; boxes.len() * INPUT_ITEM_LEN];
    gpu.read_network_input(&mut input_in_place)
        .expect("read back");
    let same = input
        .iter()
        .zip(&input_in_place)
        .all(|(a, b)| a.to_bits() == b.to_bits());
    assert!(
        same,
        "RoIAlign in place differs from RoIAlign of the uploaded image"
    );
    assert!(matches!(
        gpu.roi_align_batch_mapped(&rgb, &mapped, WIDTH, HEIGHT, &boxes, &mut mapped_results),
        Err(KernelError::InvalidValue { .. })
    ));
    eprintln!("RoIAlign in place from mapped host memory: bit-identical");

    // The update, with each crop's K_crop (the camera's K where the crop failed).
    let outputs = network_outputs(poses.len());
    let k_crops: Vec<Intrinsics> = cpu_crops
        .iter()
        .map(|c| c.as_ref().map_or(k, |c| c.k_crop))
        .collect();
    let cpu_updates: Vec<_> = poses
        .iter()
        .zip(&outputs)
        .zip(&k_crops)
        .map(|((pose, output), kc)| apply_update(pose, output, kc))
        .collect();
    let mut gpu_updates = vec![Err(KernelError::Empty { what: "unwritten" }); poses.len()];
    gpu.apply_update_batch(&poses, &outputs, &k_crops, &mut gpu_updates)
        .expect("GPU update");
    let mut tally = Tally::default();
    for (i, (g, c)) in gpu_updates.iter().zip(&cpu_updates).enumerate() {
        match (g, c) {
            (Ok(g), Ok(c)) => {
                tally.f64s(
                    &format!("rotation {i}"),
                    g.rotation.as_slice(),
                    c.rotation.as_slice(),
                );
                tally.f64s(
                    &format!("translation {i}"),
                    g.translation_m.as_slice(),
                    c.translation_m.as_slice(),
                );
            }
            _ => assert_eq!(g, c, "update {i}"),
        }
    }
    tally.report("update");
}

#[test]
fn gpu_batches_refuse_what_does_not_fit() {
    let Some(device) = open_or_skip() else {
        return;
    };
    let objects = object_points_m();
    assert!(matches!(
        GpuCosyPose::new(&device, 4, WIDTH, HEIGHT, &[] as &[Vec<[f32; 3]>]),
        Err(KernelError::Empty { .. })
    ));
    assert!(matches!(
        GpuCosyPose::new(&device, 0, WIDTH, HEIGHT, &objects),
        Err(KernelError::InvalidValue { .. })
    ));
    let mut gpu = GpuCosyPose::new(&device, 4, WIDTH, HEIGHT, &objects).expect("GPU");
    let k = ycbv_k();
    let poses = [Pose::identity(); 5];
    let mut crops = vec![Err(KernelError::Empty { what: "unwritten" }); 5];
    assert!(matches!(
        gpu.crop_batch(&k, WIDTH, HEIGHT, &poses, &[0; 5], &mut crops),
        Err(KernelError::LimitExceeded {
            limit: 4,
            found: 5,
            ..
        })
    ));
    assert!(matches!(
        gpu.crop_batch(&k, WIDTH, HEIGHT, &poses[..2], &[0; 3], &mut crops[..2]),
        Err(KernelError::SizeMismatch { .. })
    ));
    assert!(matches!(
        gpu.crop_batch(
            &k,
            WIDTH,
            HEIGHT,
            &poses[..1],
            &[MODELS + 1],
            &mut crops[..1]
        ),
        Err(KernelError::LimitExceeded { .. })
    ));
    // A zero image size: the CPU's error per item, no launch.
    gpu.crop_batch(
        &k,
        0,
        HEIGHT,
        &poses[..2],
        &[0, EMPTY_OBJECT],
        &mut crops[..2],
    )
    .expect("per-item errors");
    assert_eq!(crops[0], cpu_crop(&poses[0], &objects[0], 0));
    assert_eq!(crops[1], cpu_crop(&poses[1], &objects[EMPTY_OBJECT], 0));

    let rgb = vec![0u8; (WIDTH + 1) * HEIGHT * 3];
    let mut results = vec![Ok(()); 1];
    assert!(matches!(
        gpu.roi_align_batch(&rgb, WIDTH + 1, HEIGHT, &[[0.0; 4]], &mut results),
        Err(KernelError::LimitExceeded { .. })
    ));
    assert!(matches!(
        gpu.roi_align_batch(&rgb, WIDTH, HEIGHT, &[[0.0; 4]], &mut results),
        Err(KernelError::SizeMismatch { .. })
    ));
    let mut too_long = vec![0.0f32; 4 * INPUT_ITEM_LEN + 1];
    assert!(matches!(
        gpu.read_network_input(&mut too_long),
        Err(KernelError::LimitExceeded { .. })
    ));
}
