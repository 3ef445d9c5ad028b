//! Formulas against hand-derived values (COSYPOSE_SPEC.md section G's worked example and
//! cases computed on paper below), and properties of the crop and the update.

use nalgebra::{Rotation3, Vector3};
use proptest::prelude::*;

use super::crop::{
    crop_box, k_crop, normalize_rgb8, project_robust, roi_align_normalized,
    roi_align_normalized_rows, roi_align_rgb8,
};
use super::init::{init_pose_z1, init_pose_zup_autodepth};
use super::update::{apply_update, rotation_from_6d};
use super::{CROP_HEIGHT, CROP_WIDTH};
use crate::{Intrinsics, Pose};

/// YCB-Video's camera (the spec's worked example).
fn ycbv_k() -> Intrinsics {
    Intrinsics::from_row_major(&[
        1066.778, 0.0, 312.9869, 0.0, 1067.487, 241.3109, 0.0, 0.0, 1.0,
    ])
}

const IDENTITY_UPDATE: [f32; 9] = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0];

fn close(a: f64, b: f64, tolerance: f64) -> bool {
    (a - b).abs() <= tolerance
}

#[test]
fn worked_example_of_the_spec() {
    let k = ycbv_k();
    let init = init_pose_z1(&[250.0, 150.0, 350.0, 300.0], &k);
    let t = init.translation_m;
    assert!(
        close(t.x, -0.012174, 5e-7) && close(t.y, -0.015280, 5e-7) && t.z == 1.0,
        "{t:?}"
    );
    assert_eq!(init.rotation, nalgebra::Matrix3::identity());

    // The spec prints the crop box to 3 decimals: Wc = 228.170 +- 0.001 moves fx' by up to
    // 0.007, and the spec's 1496.11 is itself cut to 2 decimals.
    let crop = [185.915, 139.436, 414.085, 310.564];
    let kc = k_crop(&k, &crop).expect("k_crop");
    assert!(close(kc.k[(0, 0)], 1496.11, 0.01), "fx' {}", kc.k[(0, 0)]);
    assert!(close(kc.k[(0, 2)], 177.714, 0.0005), "cx' {}", kc.k[(0, 2)]);

    let output = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 3.0, -2.0, 0.9];
    let updated = apply_update(&init, &output, &kc).expect("update");
    let t = updated.translation_m;
    assert!(close(t.x, -0.009152, 5e-7), "{t:?}");
    assert!(close(t.y, -0.014954, 5e-7), "{t:?}");
    assert!(close(t.z, 0.9, 1e-7), "{t:?}");
    assert!((updated.rotation - init.rotation).abs().max() < 1e-12);
}

#[test]
fn rotation_6d_on_paper() {
    // Scaled, non-orthogonal columns of the identity give the identity.
    let r = rotation_from_6d([2.0, 0.0, 0.0], [1.0, 1.0, 0.0]).expect("valid");
    assert!(
        (r - nalgebra::Matrix3::identity()).abs().max() < 1e-15,
        "{r}"
    );
    // e1 = y, e3 = y x (-x) = z, e2 = z x y = -x: a quarter turn about z.
    let r = rotation_from_6d([0.0, 1.0, 0.0], [-1.0, 0.0, 0.0]).expect("valid");
    let quarter = nalgebra::Matrix3::new(0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0);
    assert!((r - quarter).abs().max() < 1e-15, "{r}");
    // Degenerate outputs are errors, not NaN poses.
    assert!(rotation_from_6d([0.0; 3], [0.0, 1.0, 0.0]).is_err());
    assert!(rotation_from_6d([1.0, 0.0, 0.0], [3.0, 0.0, 0.0]).is_err());
    assert!(rotation_from_6d([f64::NAN, 0.0, 0.0], [0.0, 1.0, 0.0]).is_err());
}

#[test]
fn update_rotation_is_left_multiplied() {
    let k = ycbv_k();
    let pose = Pose {
        rotation: *Rotation3::from_euler_angles(0.3, -0.2, 0.1).matrix(),
        translation_m: Vector3::new(0.05, -0.02, 0.8),
    };
    // dR = quarter turn about the camera z axis, no translation change (vx = vy = 0, vz = 1).
    let output = [0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0];
    let updated = apply_update(&pose, &output, &k).expect("update");
    let quarter = nalgebra::Matrix3::new(0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0);
    assert!((updated.rotation - quarter * pose.rotation).abs().max() < 1e-12);
    assert!((updated.translation_m - pose.translation_m).norm() < 1e-15);
}

#[test]
fn auto_depth_on_paper() {
    // A 10 cm cube; R0 maps (x, y, z) to (y, -z, -x), so both camera extents are 0.1 m.
    // fx = fy = 500 and a box 100 px wide and high (x2 - x1 + 1 = 100):
    // z = (500 * 0.1 / 100 + 500 * 0.1 / 100) / 2 = 0.5 m.
    let k = Intrinsics::from_row_major(&[500.0, 0.0, 320.0, 0.0, 500.0, 240.0, 0.0, 0.0, 1.0]);
    let cube: Vec<[f32; 3]> = (0..8)
        .map(|i| {
            let s = |bit: i32| if i >> bit & 1 == 1 { 0.05 } else { -0.05 };
            [s(0), s(1), s(2)]
        })
        .collect();
    let bbox = [370.0, 190.0, 469.0, 289.0];
    let pose = init_pose_zup_autodepth(&bbox, &k, &cube).expect("auto-depth");
    let t = pose.translation_m;
    assert!(close(t.z, 0.5, 1e-7), "{t:?}");
    // The origin projects onto the box centre (419.5, 239.5).
    let [u, v] = k.project(&t);
    assert!(close(u, 419.5, 1e-9) && close(v, 239.5, 1e-9), "{u} {v}");
    assert_eq!(pose.rotation_row_major(), super::init::ZUP_ROTATION);
    assert!(init_pose_zup_autodepth(&bbox, &k, &[]).is_err());
}

#[test]
fn crop_box_on_paper() {
    // Identity rotation at 1 m, a 20 cm cube, fx = fy = 100, cx = cy = 0, a 640 x 480 image.
    // The nearest corners (z = 0.9) project farthest: 100 * 0.1 / 0.9 = 11.111 px, so the
    // box is +-11.111 around the origin's projection (0, 0); r = 4/3;
    // Wc = 2 * 1.4 * max(11.111, 4/3 * 11.111) = 41.481, Hc = 2 * 1.4 * max(11.111 * 3/4, 11.111) = 31.111.
    let k = Intrinsics::from_row_major(&[100.0, 0.0, 0.0, 0.0, 100.0, 0.0, 0.0, 0.0, 1.0]);
    let pose = Pose {
        rotation: nalgebra::Matrix3::identity(),
        translation_m: Vector3::new(0.0, 0.0, 1.0),
    };
    let cube: Vec<[f32; 3]> = (0..8)
        .map(|i| {
            let s = |bit: i32| if i >> bit & 1 == 1 { 0.1 } else { -0.1 };
            [s(0), s(1), s(2)]
        })
        .collect();
    let crop = crop_box(&k, &pose, &cube, 640, 480).expect("crop");
    let half_extent = 100.0 * f64::from(0.1f32) / (1.0 - f64::from(0.1f32));
    let crop_w = 2.0 * 1.4 * (4.0 / 3.0) * half_extent;
    let crop_h = 2.0 * 1.4 * half_extent;
    for (got, want) in crop
        .iter()
        .zip([-crop_w / 2.0, -crop_h / 2.0, crop_w / 2.0, crop_h / 2.0])
    {
        assert!(close(*got, want, 1e-9), "{crop:?} vs {crop_w} x {crop_h}");
    }
    assert!(close(crop_w, 41.481, 0.001) && close(crop_h, 31.111, 0.001));
    // A portrait image gives the same landscape crop (r is max / min).
    assert_eq!(crop_box(&k, &pose, &cube, 480, 640).expect("crop"), crop);
}

#[test]
fn robust_projection_clamps_depth() {
    let k = Intrinsics::from_row_major(&[100.0, 0.0, 0.0, 0.0, 100.0, 0.0, 0.0, 0.0, 1.0]);
    let behind = Pose {
        rotation: nalgebra::Matrix3::identity(),
        translation_m: Vector3::new(0.1, 0.0, -1.0),
    };
    // s = -1 -> clamped to 0.1: u = 100 * 0.1 / 0.1 = 100, not -10.
    assert_eq!(project_robust(&k, &behind, &Vector3::zeros()), [100.0, 0.0]);
}

/// A constant RGB image of `value` in every channel.
fn constant_image(width: usize, height: usize, value: u8) -> Vec<u8> {
    vec![value; width * height * 3]
}

#[test]
fn roi_align_of_a_constant_image_is_constant_inside_and_black_outside() {
    let (w, h) = (160, 120);
    let image = constant_image(w, h, 200);
    let mut out = vec![-1.0f32; 3 * CROP_HEIGHT * CROP_WIDTH];
    let plane = CROP_HEIGHT * CROP_WIDTH;
    // Inside the image: every sample is interpolated from equal texels.
    roi_align_rgb8(&image, w, h, &[10.0, 20.0, 90.0, 80.0], &mut out).expect("roi");
    let expected = 200.0f32 / 255.0;
    assert!(out.iter().all(|v| (v - expected).abs() < 1e-6), "inside");
    // Entirely outside ([-1, W] x [-1, H] is where samples count): black.
    roi_align_rgb8(&image, w, h, &[170.0, 130.0, 250.0, 190.0], &mut out).expect("roi");
    assert!(out.iter().all(|&v| v == 0.0), "outside");
    // Straddling the left edge: columns whose 4 x-samples are all < -1 are black, columns
    // fully inside are the constant, and nothing exceeds it.
    let crop = [-80.0, 0.0, 80.0, 120.0];
    roi_align_rgb8(&image, w, h, &crop, &mut out).expect("roi");
    let bin = 160.0 / 320.0;
    for j in 0..CROP_WIDTH {
        let first_sample = crop[0] + (j as f64 + 0.125) * bin;
        let last_sample = crop[0] + (j as f64 + 0.875) * bin;
        let v = out[plane + 60 * CROP_WIDTH + j];
        if last_sample < -1.0 {
            assert_eq!(v, 0.0, "column {j}");
        } else if first_sample >= -1.0 {
            assert!((v - expected).abs() < 1e-6, "column {j}: {v}");
        } else {
            assert!(v > 0.0 && v < expected, "column {j}: {v}");
        }
    }
}

#[test]
fn roi_align_and_k_crop_are_pixel_aligned() {
    // A horizontal ramp (value = x) and a vertical one (value = y) in two channels: bilinear
    // sampling reproduces a ramp exactly, so the crop's column j holds the mean x of its
    // samples, x1 + (j + 1/2) Wc / 320, which K_crop must map back to column j.
    let (w, h) = (250, 200);
    let mut image = vec![0u8; w * h * 3];
    for y in 0..h {
        for x in 0..w {
            image[(y * w + x) * 3] = x as u8;
            image[(y * w + x) * 3 + 1] = y as u8;
        }
    }
    let crop = [30.25, 40.5, 190.75, 160.875];
    let mut out = vec![0.0f32; 3 * CROP_HEIGHT * CROP_WIDTH];
    roi_align_rgb8(&image, w, h, &crop, &mut out).expect("roi");
    let k = Intrinsics::from_row_major(&[600.0, 0.0, 125.0, 0.0, 600.0, 100.0, 0.0, 0.0, 1.0]);
    let kc = k_crop(&k, &crop).expect("k_crop");
    let plane = CROP_HEIGHT * CROP_WIDTH;
    for (i, j) in [(0, 0), (17, 250), (119, 160), (239, 319)] {
        let x = f64::from(out[i * CROP_WIDTH + j]) * 255.0;
        let y = f64::from(out[plane + i * CROP_WIDTH + j]) * 255.0;
        let x_expected = crop[0] + (j as f64 + 0.5) * (crop[2] - crop[0]) / 320.0;
        let y_expected = crop[1] + (i as f64 + 0.5) * (crop[3] - crop[1]) / 240.0;
        assert!(
            close(x, x_expected, 1e-3) && close(y, y_expected, 1e-3),
            "({i}, {j}): {x} {y}"
        );
        // The 3D point seen at image (x, y) at 1 m lands on crop pixel (j, i) under K_crop.
        let point = Vector3::new((x - 125.0) / 600.0, (y - 100.0) / 600.0, 1.0);
        let [u, v] = kc.project(&point);
        assert!(
            close(u, j as f64, 1e-3) && close(v, i as f64, 1e-3),
            "({i}, {j}): {u} {v}"
        );
    }
}

#[test]
fn roi_align_refuses_bad_buffers() {
    let image = constant_image(10, 10, 1);
    let mut out = vec![0.0f32; 3 * CROP_HEIGHT * CROP_WIDTH];
    assert!(roi_align_rgb8(&image[1..], 10, 10, &[0.0, 0.0, 5.0, 5.0], &mut out).is_err());
    assert!(roi_align_rgb8(&image, 10, 10, &[0.0, 0.0, 5.0, 5.0], &mut out[1..]).is_err());
    assert!(roi_align_rgb8(&image, 10, 10, &[f64::NAN, 0.0, 5.0, 5.0], &mut out).is_err());
}

fn pose_strategy() -> impl Strategy<Value = Pose> {
    (
        -3.0..3.0f64,
        -1.5..1.5f64,
        -3.0..3.0f64,
        -0.3..0.3f64,
        -0.3..0.3f64,
        0.3..2.0f64,
    )
        .prop_map(|(roll, pitch, yaw, x, y, z)| Pose {
            rotation: *Rotation3::from_euler_angles(roll, pitch, yaw).matrix(),
            translation_m: Vector3::new(x, y, z),
        })
}

proptest! {
    #[test]
    fn identity_output_leaves_the_pose_unchanged(pose in pose_strategy(), fx in 300.0..3000.0f64) {
        let k = Intrinsics::from_row_major(&[fx, 0.0, 160.0, 0.0, fx * 1.01, 120.0, 0.0, 0.0, 1.0]);
        let updated = apply_update(&pose, &IDENTITY_UPDATE, &k).expect("update");
        prop_assert!((updated.rotation - pose.rotation).abs().max() < 1e-12);
        prop_assert!((updated.translation_m - pose.translation_m).norm() < 1e-12);
    }

    #[test]
    fn object_origin_projects_to_the_crop_centre(pose in pose_strategy()) {
        let k = ycbv_k();
        let points: Vec<[f32; 3]> = [[0.05, 0.02, -0.03], [-0.04, 0.06, 0.01], [0.0, -0.05, 0.04]]
            .into_iter()
            .collect();
        let crop = crop_box(&k, &pose, &points, 640, 480).expect("crop");
        let kc = k_crop(&k, &crop).expect("k_crop");
        let [u, v] = kc.project(&pose.translation_m);
        prop_assert!(close(u, (CROP_WIDTH as f64 - 1.0) / 2.0, 1e-6), "u {}", u);
        prop_assert!(close(v, (CROP_HEIGHT as f64 - 1.0) / 2.0, 1e-6), "v {}", v);
        // The crop keeps the image's aspect ratio, 4:3.
        prop_assert!(close((crop[2] - crop[0]) / (crop[3] - crop[1]), 4.0 / 3.0, 1e-9));
    }

    #[test]
    fn updates_compose_like_the_formula(pose in pose_strategy(), vx in -20.0..20.0f32, vy in -20.0..20.0f32, vz in 0.5..1.5f32) {
        // The origin's projection under K_crop moves by exactly (vx, vy) crop pixels.
        let k = ycbv_k();
        let crop = [100.0, 80.0, 420.0, 320.0];
        let kc = k_crop(&k, &crop).expect("k_crop");
        let output = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, vx, vy, vz];
        let updated = apply_update(&pose, &output, &kc).expect("update");
        let before = kc.project(&pose.translation_m);
        let after = kc.project(&updated.translation_m);
        prop_assert!(close(after[0] - before[0], f64::from(vx), 1e-6));
        prop_assert!(close(after[1] - before[1], f64::from(vy), 1e-6));
        prop_assert!(close(updated.translation_m.z, f64::from(vz) * pose.translation_m.z, 1e-12));
    }
}

/// The pre-normalised path reads the same texel values, so it gives the same crop, bit
/// for bit, over crops inside, across and outside an image of varied bytes.
#[test]
fn roi_align_of_a_normalised_image_is_the_same() {
    let (w, h) = (97, 61);
    let image: Vec<u8> = (0..w * h * 3)
        .map(|i| ((i * 37 + i / 7) % 256) as u8)
        .collect();
    let mut normalised = vec![0.0f32; image.len()];
    normalize_rgb8(&image, &mut normalised).expect("normalise");
    let mut a = vec![0.0f32; 3 * CROP_HEIGHT * CROP_WIDTH];
    let mut b = a.clone();
    for crop in [
        [3.2, 4.7, 60.1, 50.9],
        [-30.0, -10.5, 40.25, 70.0],
        [90.0, 55.0, 300.0, 200.0],
        [200.0, 100.0, 260.0, 140.0],
    ] {
        roi_align_rgb8(&image, w, h, &crop, &mut a).expect("rgb8");
        roi_align_normalized(&normalised, w, h, &crop, &mut b).expect("normalised");
        assert!(
            a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()),
            "{crop:?}"
        );
    }
    assert!(roi_align_normalized(&normalised[1..], w, h, &[0.0; 4], &mut b).is_err());
    assert!(normalize_rgb8(&image, &mut normalised[1..]).is_err());
}

/// The optimised RoIAlign equals the loop as first written (torchvision's, texel by
/// texel) bit for bit, from bytes and from normalised texels, over seeded random crops:
/// inside, across the border, beyond it, smaller than a texel, far larger than the image.
#[test]
fn roi_align_equals_the_texel_by_texel_reference_bit_for_bit() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let (w, h) = (131, 77);
    let image: Vec<u8> = (0..w * h * 3).map(|_| rng.random()).collect();
    let mut normalised = vec![0.0f32; image.len()];
    normalize_rgb8(&image, &mut normalised).expect("normalise");
    let mut fast = vec![0.0f32; 3 * CROP_HEIGHT * CROP_WIDTH];
    let mut reference = fast.clone();
    for case in 0..40 {
        let x1: f64 = rng.random_range(-80.0..200.0);
        let y1: f64 = rng.random_range(-50.0..120.0);
        let size = if case % 5 == 0 { 0.3 } else { 400.0 };
        let crop = [
            x1,
            y1,
            x1 + rng.random_range(0.0..size),
            y1 + rng.random_range(0.0..size),
        ];
        super::crop::roi_align_reference(
            |i| f32::from(image[i]) / 255.0,
            w,
            h,
            &crop,
            &mut reference,
        );
        roi_align_rgb8(&image, w, h, &crop, &mut fast).expect("rgb8");
        let same = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
        assert!(same(&fast, &reference), "rgb8, crop {crop:?}");
        roi_align_normalized(&normalised, w, h, &crop, &mut fast).expect("normalised");
        assert!(same(&fast, &reference), "normalised, crop {crop:?}");
    }
}

/// A crop computed in bands of rows (as the pipeline splits it over threads) is the whole
/// crop, bit for bit; bad bands are refused.
#[test]
fn roi_align_in_bands_of_rows_is_the_whole_crop() {
    let (w, h) = (97, 61);
    let image: Vec<u8> = (0..w * h * 3)
        .map(|i| ((i * 53 + i / 5) % 256) as u8)
        .collect();
    let mut normalised = vec![0.0f32; image.len()];
    normalize_rgb8(&image, &mut normalised).expect("normalise");
    let plane = CROP_HEIGHT * CROP_WIDTH;
    let crop = [-12.5, 3.25, 70.0, 58.5];
    let mut whole = vec![0.0f32; 3 * plane];
    roi_align_normalized(&normalised, w, h, &crop, &mut whole).expect("whole");
    for band_rows in [1, 7, 60, 240] {
        let mut banded = vec![0.0f32; 3 * plane];
        let (red, rest) = banded.split_at_mut(plane);
        let (green, blue) = rest.split_at_mut(plane);
        let band_len = band_rows * CROP_WIDTH;
        let bands = red
            .chunks_mut(band_len)
            .zip(green.chunks_mut(band_len))
            .zip(blue.chunks_mut(band_len));
        for (band, ((r, g), b)) in bands.enumerate() {
            let first = band * band_rows;
            let rows = first..first + r.len() / CROP_WIDTH;
            roi_align_normalized_rows(&normalised, w, h, &crop, rows, [r, g, b]).expect("band");
        }
        assert!(
            whole
                .iter()
                .zip(&banded)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "bands of {band_rows} rows"
        );
    }
    let mut small = vec![0.0f32; 10 * CROP_WIDTH];
    let (r, rest) = small.split_at_mut(4 * CROP_WIDTH);
    let (g, b) = rest.split_at_mut(3 * CROP_WIDTH);
    // Planes of unequal length, and rows past the crop's 240.
    assert!(roi_align_normalized_rows(&normalised, w, h, &crop, 0..4, [r, g, b]).is_err());
    let mut row = vec![0.0f32; CROP_WIDTH];
    let mut row2 = row.clone();
    let mut row3 = row.clone();
    assert!(roi_align_normalized_rows(
        &normalised,
        w,
        h,
        &crop,
        240..241,
        [&mut row, &mut row2, &mut row3]
    )
    .is_err());
}
