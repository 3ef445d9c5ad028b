//! VSD, the Visible Surface Discrepancy of the BOP benchmark, in its BOP19 form, computed
//! from depth images that are already rendered.
//!
//! This is the BOP toolkit's `pose_error.vsd` with `cost_type = "step"`, its
//! `visibility.estimate_visib_mask_gt` / `estimate_visib_mask_est` in `"bop19"` mode and
//! `misc.depth_im_to_dist_im_fast` (COSYPOSE_SPEC.md, section B.2):
//!
//! 1. Depth images (z in the camera frame, 0 = no depth) become distance images (distance
//!    from the camera centre along each pixel's ray, the centre of pixel (u, v) at the
//!    integer coordinates (u, v)):
//!    `dist = sqrt((x * d)^2 + (y * d)^2 + d^2)` with `x = (u - cx) / fx`, `y = (v - cy) / fy`.
//! 2. `visib_gt = d_gt > 0 and (d_gt - d_test <= delta or d_test = 0)`;
//!    `visib_est = (d_est > 0 and (d_est - d_test <= delta or d_test = 0))
//!    or (visib_gt and d_est > 0)`.
//! 3. For each tau: `e = (#{p in inter: |d_gt - d_est| / diameter >= tau} + |union \ inter|)
//!    / |union|`, and `e = 1` for every tau when the union is empty.
//!
//! # Precision: where float32 and float64 matter
//!
//! The toolkit works in millimetres. Its depth images are float32 (`inout.load_depth`
//! scaled by `depth_scale`, and the renderer's output); its distance images are float64
//! (the per-pixel factors are float64, so numpy promotes); the visibility test rounds both
//! distance images to float32 before subtracting (`d_model.astype(np.float32) -
//! d_test.astype(np.float32)`, compared with `delta` in float32); the tau test is float64.
//!
//! [`vsd_errors`] takes float32 depths in metres (the renderer's output), converts each to
//! float64 millimetres (`f64::from(depth_m) * 1000`) and from there follows the toolkit
//! operation by operation, in the same order and precision: float64 distance images,
//! the float32 subtraction and comparison in millimetres for visibility, the float64 tau
//! test. Doing the visibility test in millimetres (not metres) matters because rounding to
//! float32 is not scale-invariant: only in millimetres does it round where the toolkit
//! rounds. `tools/vsd_reference.py` (a numpy transcription of the toolkit fed the same
//! millimetre values) gives bit-identical errors.
//!
//! The one remaining difference from the toolkit is the input: its depths are float32
//! millimetres, ours float32 metres, so a depth may differ by one float32 rounding
//! (relative 6e-8, about 0.06 um at 1 m). That can change the outcome only at a pixel
//! whose depth difference lies within that much of `delta`, or whose normalised distance
//! lies within about 1e-7 of a tau. An error is a ratio of pixel counts, so such a pixel
//! moves it by at most 1 / |union|.
//!
//! The skew of `k` is ignored, as the toolkit ignores it.
//!
//! [`vsd_errors`] allocates nothing: one pass over the pixels, with per-tau counts in a
//! fixed-size array on the stack (hence [`VSD_MAX_TAUS`]).

use crate::{Intrinsics, KernelError};

/// The most taus one [`vsd_errors`] call accepts.
pub const VSD_MAX_TAUS: usize = 32;

/// BOP19 visibility tolerance delta, metres (15 mm; 5 mm for ITODD, which the toolkit
/// sets separately).
pub const BOP19_VSD_DELTA_M: f64 = 0.015;

/// BOP19 misalignment tolerances tau, as fractions of the object diameter:
/// `np.arange(0.05, 0.51, 0.05)` exactly as numpy computes it (`0.05 + i * 0.05` in
/// float64, so the third value is 0.15000000000000002 and the seventh
/// 0.35000000000000003).
pub const BOP19_VSD_TAUS: [f64; 10] = numpy_arange(0.05, 0.05);

/// BOP19 thresholds of correctness for VSD: the same values as [`BOP19_VSD_TAUS`]. An
/// estimate is correct at threshold `th` when its error is strictly below `th`
/// (`pose_matching.match_poses`).
pub const BOP19_VSD_CORRECT_THRESHOLDS: [f64; 10] = numpy_arange(0.05, 0.05);

/// The first `N` values of `np.arange(start, stop, step)` for float64: numpy fills
/// `start + i * delta` with `delta = (start + step) - start`. For the BOP19 grids
/// (`start = step = 0.05`) `delta` is exactly `step`: doubling is exact, and so is the
/// subtraction that gives back 0.05.
const fn numpy_arange<const N: usize>(start: f64, step: f64) -> [f64; N] {
    let delta = (start + step) - start;
    let mut out = [0.0; N];
    let mut i = 0;
    while i < N {
        out[i] = start + i as f64 * delta;
        i += 1;
    }
    out
}

/// BOP19 VSD errors of one estimate, one per tau, from three rendered depth images.
///
/// - `depth_test_m`: the test (sensor) depth image; `depth_gt_m`, `depth_est_m`: the
///   object rendered alone in its ground-truth and estimated pose. Each holds
///   `width * height` values, row-major, in metres: z in the camera frame, 0 where there is
///   no depth or no object.
/// - `k`: the intrinsics the images were rendered with (`fx`, `fy`, `cx`, `cy`; skew
///   ignored as in the toolkit).
/// - `delta_m`: visibility tolerance ([`BOP19_VSD_DELTA_M`]).
/// - `taus`: misalignment tolerances, as fractions of `diameter_m`
///   ([`BOP19_VSD_TAUS`]); at most [`VSD_MAX_TAUS`], in any order.
/// - `diameter_m`: the object diameter the distances are normalised by.
/// - `out`: receives one error in [0, 1] per tau, in the order of `taus`.
///
/// See the module documentation for the definition and for where float32 rounding happens.
/// Negative depths are treated as the toolkit treats them (through their distance, which
/// is positive); a depth that is NaN or infinite is an error.
///
/// # Errors
///
/// [`KernelError::SizeMismatch`] when an image does not hold `width * height` values or
/// `out` does not hold one value per tau; [`KernelError::LimitExceeded`] for more than
/// [`VSD_MAX_TAUS`] taus; [`KernelError::NotFinite`] for a depth, `delta_m`, a tau, `fx`,
/// `fy`, `cx` or `cy` that is not finite (or `fx`, `fy` zero), or a `diameter_m` that is
/// not a finite positive number. `out` is left unchanged on error.
#[allow(clippy::too_many_arguments)] // Mirrors the toolkit's argument list; a struct would only rename it.
pub fn vsd_errors(
    depth_test_m: &[f32],
    depth_gt_m: &[f32],
    depth_est_m: &[f32],
    width: usize,
    height: usize,
    k: &Intrinsics,
    delta_m: f64,
    taus: &[f64],
    diameter_m: f64,
    out: &mut [f64],
) -> Result<(), KernelError> {
    // Saturating: an overflowing size can match no slice, and the check below says so.
    let n_pixels = width.saturating_mul(height);
    for (what, image) in [
        ("depth_test_m (width * height values)", depth_test_m),
        ("depth_gt_m (width * height values)", depth_gt_m),
        ("depth_est_m (width * height values)", depth_est_m),
    ] {
        if image.len() != n_pixels {
            return Err(KernelError::SizeMismatch {
                what,
                expected: n_pixels,
                found: image.len(),
            });
        }
    }
    if taus.len() > VSD_MAX_TAUS {
        return Err(KernelError::LimitExceeded {
            what: "number of VSD taus",
            limit: VSD_MAX_TAUS,
            found: taus.len(),
        });
    }
    if out.len() != taus.len() {
        return Err(KernelError::SizeMismatch {
            what: "out (one value per tau)",
            expected: taus.len(),
            found: out.len(),
        });
    }
    if !delta_m.is_finite() {
        return Err(KernelError::NotFinite { what: "delta_m" });
    }
    if !taus.iter().all(|tau| tau.is_finite()) {
        return Err(KernelError::NotFinite { what: "a VSD tau" });
    }
    if !(diameter_m.is_finite() && diameter_m > 0.0) {
        return Err(KernelError::NotFinite {
            what: "diameter_m (must be a finite positive number)",
        });
    }
    let m = &k.k;
    let (fx, fy, cx, cy) = (m[(0, 0)], m[(1, 1)], m[(0, 2)], m[(1, 2)]);
    if !([fx, fy, cx, cy].iter().all(|v| v.is_finite()) && fx != 0.0 && fy != 0.0) {
        return Err(KernelError::NotFinite {
            what: "intrinsics fx, fy, cx, cy (fx, fy nonzero)",
        });
    }

    // Millimetres from here on, as in the toolkit (see the module documentation).
    let delta_mm_f32 = (delta_m * 1000.0) as f32;
    let diameter_mm = diameter_m * 1000.0;
    let taus_len = taus.len();
    let mut over_tau = [0usize; VSD_MAX_TAUS];
    let over_tau = &mut over_tau[..taus_len];
    let mut n_union = 0usize;
    let mut n_inter = 0usize;

    for v in 0..height {
        // misc.Precomputer: (ys - cy) / fy and (xs - cx) / fx in float64.
        let y = (v as f64 - cy) / fy;
        let row = v * width;
        for u in 0..width {
            let i = row + u;
            let (test, gt, est) = (depth_test_m[i], depth_gt_m[i], depth_est_m[i]);
            if !test.is_finite() {
                return Err(KernelError::NotFinite {
                    what: "depth_test_m",
                });
            }
            if !gt.is_finite() {
                return Err(KernelError::NotFinite { what: "depth_gt_m" });
            }
            if !est.is_finite() {
                return Err(KernelError::NotFinite {
                    what: "depth_est_m",
                });
            }
            if gt == 0.0 && est == 0.0 {
                // Neither model is here: in neither mask, whatever the test depth.
                continue;
            }
            let x = (u as f64 - cx) / fx;
            // misc.depth_im_to_dist_im_fast, in numpy's order: (a^2 + b^2) + d^2.
            let distance_mm = |depth_m: f32| {
                let d = f64::from(depth_m) * 1000.0;
                let a = x * d;
                let b = y * d;
                (a * a + b * b + d * d).sqrt()
            };
            let dist_test = distance_mm(test);
            let dist_gt = distance_mm(gt);
            let dist_est = distance_mm(est);
            // visibility._estimate_visib_mask, 'bop19': the difference in float32.
            let visible = |dist_model: f64| {
                dist_model > 0.0
                    && ((dist_model as f32) - (dist_test as f32) <= delta_mm_f32
                        || dist_test == 0.0)
            };
            let visib_gt = visible(dist_gt);
            let visib_est = visible(dist_est) || (visib_gt && dist_est > 0.0);
            if visib_gt || visib_est {
                n_union += 1;
            }
            if visib_gt && visib_est {
                n_inter += 1;
                let distance = (dist_gt - dist_est).abs() / diameter_mm;
                for (count, &tau) in over_tau.iter_mut().zip(taus) {
                    *count += usize::from(distance >= tau);
                }
            }
        }
    }

    if n_union == 0 {
        out.fill(1.0);
    } else {
        let n_outside_inter = n_union - n_inter;
        for (e, &count) in out.iter_mut().zip(over_tau.iter()) {
            *e = (count + n_outside_inter) as f64 / n_union as f64;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// 4x4 images, principal point at the centre, long focal length: every ray is within
    /// 0.0022 rad of the axis, so a distance is its depth times at most 1.0000023.
    const W: usize = 4;
    const H: usize = 4;

    fn narrow_camera() -> Intrinsics {
        Intrinsics::from_row_major(&[1000.0, 0.0, 1.5, 0.0, 1000.0, 1.5, 0.0, 0.0, 1.0])
    }

    fn errors(
        test: &[f32],
        gt: &[f32],
        est: &[f32],
        width: usize,
        k: &Intrinsics,
        taus: &[f64],
        diameter_m: f64,
    ) -> Vec<f64> {
        let mut out = vec![f64::NAN; taus.len()];
        let height = test.len() / width;
        vsd_errors(
            test,
            gt,
            est,
            width,
            height,
            k,
            BOP19_VSD_DELTA_M,
            taus,
            diameter_m,
            &mut out,
        )
        .unwrap();
        out
    }

    fn bop19(test: &[f32], gt: &[f32], est: &[f32], diameter_m: f64) -> Vec<f64> {
        errors(
            test,
            gt,
            est,
            W,
            &narrow_camera(),
            &BOP19_VSD_TAUS,
            diameter_m,
        )
    }

    /// A 4x4 image with `inside` at the pixels where `mask` (row-major, 16 chars) is '#'.
    fn image(mask: &str, inside: f32, outside: f32) -> Vec<f32> {
        let mask: Vec<char> = mask.chars().filter(|c| !c.is_whitespace()).collect();
        assert_eq!(mask.len(), W * H);
        mask.iter()
            .map(|&c| if c == '#' { inside } else { outside })
            .collect()
    }

    #[test]
    fn bop19_constants_are_numpys() {
        // Printed by numpy 2.4.6: [repr(float(x)) for x in np.arange(0.05, 0.51, 0.05)].
        let numpy = [
            0.05,
            0.1,
            0.15000000000000002,
            0.2,
            0.25,
            0.3,
            0.35000000000000003,
            0.4,
            0.45,
            0.5,
        ];
        assert_eq!(BOP19_VSD_TAUS, numpy);
        assert_eq!(BOP19_VSD_CORRECT_THRESHOLDS, numpy);
        // 0.015 m is exactly the toolkit's 15 mm once scaled, in f64 and in f32.
        assert_eq!(BOP19_VSD_DELTA_M * 1000.0, 15.0);
        assert_eq!((BOP19_VSD_DELTA_M * 1000.0) as f32, 15.0f32);
    }

    #[test]
    fn identical_depths_give_zero() {
        // The object on a table 1 m behind it; the estimate is the ground truth.
        let object = ". . . .  . # # .  . # # .  . . . .";
        let test = image(object, 1.0, 2.0);
        let gt = image(object, 1.0, 0.0);
        assert_eq!(bop19(&test, &gt, &gt, 0.1), [0.0; 10]);
    }

    #[test]
    fn disjoint_silhouettes_give_one() {
        let test = vec![1.0; W * H];
        let gt = image("# # . .  # # . .  # # . .  # # . .", 1.0, 0.0);
        let est = image(". . # #  . . # #  . . # #  . . # #", 1.0, 0.0);
        // Both masks fully visible (8 pixels each), no intersection: 16 / 16.
        assert_eq!(bop19(&test, &gt, &est, 0.1), [1.0; 10]);
    }

    #[test]
    fn empty_union_gives_one() {
        let test = vec![1.0; W * H];
        let nothing = vec![0.0; W * H];
        assert_eq!(bop19(&test, &nothing, &nothing, 0.1), [1.0; 10]);
        // Both poses entirely behind an occluder 0.5 m in front: nothing visible either.
        let occluder = vec![0.5; W * H];
        let object = vec![1.0; W * H];
        assert_eq!(bop19(&occluder, &object, &object, 0.1), [1.0; 10]);
        // No tau, no error.
        let none = errors(&occluder, &object, &object, W, &narrow_camera(), &[], 0.1);
        assert!(none.is_empty());
    }

    #[test]
    fn half_occluded_object_with_half_an_estimate() {
        // The object fills the image; the top two rows are hidden behind an occluder 0.5 m
        // in front, so visib_gt is the bottom 8 pixels. The estimate covers the left two
        // columns only: visible in the bottom rows (4 pixels), occluded in the top rows.
        // Union 8, intersection 4 with equal depths: e = (0 + 4) / 8 for every tau.
        let test = image("# # # #  # # # #  . . . .  . . . .", 0.5, 1.0);
        let gt = vec![1.0; W * H];
        let est = image("# # . .  # # . .  # # . .  # # . .", 1.0, 0.0);
        assert_eq!(bop19(&test, &gt, &est, 0.1), [0.5; 10]);
        // The estimate covering the whole object matches the visible half exactly.
        assert_eq!(bop19(&test, &gt, &gt, 0.1), [0.0; 10]);
    }

    #[test]
    fn estimate_one_centimetre_behind() {
        // Normalised distance: 0.01 m / 0.1 m = 0.1, up to the f32 rounding of 1.01 m and
        // the ray factor (both well under 1e-6).
        let gt = vec![1.0; W * H];
        let est = vec![1.01; W * H];
        let taus = [0.0999, 0.1001];
        assert_eq!(
            errors(&gt, &gt, &est, W, &narrow_camera(), &taus, 0.1),
            [1.0, 0.0]
        );
        // With the BOP19 taus and a 0.08 m diameter the distance is 0.125 d: wrong at
        // tau 0.05 and 0.1, right from 0.15 on.
        assert_eq!(
            bop19(&gt, &gt, &est, 0.08),
            [1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
        );
    }

    #[test]
    fn estimate_behind_the_visible_surface_still_counts_where_gt_is_visible() {
        // 10 cm behind: more than delta behind the test surface, so the estimate is not
        // visible on its own, but it is where the ground truth is visible (visib_gt and
        // d_est > 0). Every pixel is then in the intersection, at 0.1 / 0.3 = 0.333 d.
        let gt = vec![1.0; W * H];
        let est = vec![1.1; W * H];
        assert_eq!(
            bop19(&gt, &gt, &est, 0.3),
            [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]
        );
    }

    #[test]
    fn missing_test_depth_makes_the_model_visible() {
        // One row of 4 pixels (bop19 mode, d_test = 0 means visible):
        // p0: test 0,   gt 1, est 1    -> both visible, same depth (intersection, cost 0)
        // p1: test 0,   gt 1, est none -> gt visible only
        // p2: test 0.5, gt 1, est 1    -> both hidden behind the occluder
        // p3: test 0,   gt none, est 1 -> est visible only
        // Union {p0, p1, p3}, intersection {p0}: e = (0 + 2) / 3.
        let k = Intrinsics::from_row_major(&[1000.0, 0.0, 1.5, 0.0, 1000.0, 0.0, 0.0, 0.0, 1.0]);
        let test = [0.0, 0.0, 0.5, 0.0];
        let gt = [1.0, 1.0, 1.0, 0.0];
        let est = [1.0, 0.0, 1.0, 1.0];
        let e = errors(&test, &gt, &est, 4, &k, &BOP19_VSD_TAUS, 0.1);
        assert_eq!(e, [2.0 / 3.0; 10]);
        // With a valid test depth of 2 m instead of 0 at p1 and p3 nothing changes (the
        // models are in front); with 0.5 m there, p1 and p3 are hidden: union {p0}, e = 0.
        let test_far = [0.0, 2.0, 0.5, 2.0];
        assert_eq!(errors(&test_far, &gt, &est, 4, &k, &BOP19_VSD_TAUS, 0.1), e);
        let test_near = [0.0, 0.5, 0.5, 0.5];
        assert_eq!(
            errors(&test_near, &gt, &est, 4, &k, &BOP19_VSD_TAUS, 0.1),
            [0.0; 10]
        );
    }

    #[test]
    fn distances_are_along_the_ray() {
        // fx = fy = 1, principal point at pixel (0, 0): pixel (1, 0) looks 45 degrees off
        // axis, so a 0.1 m depth offset is 0.1 * sqrt(2) = 0.141 m of distance there and
        // 0.1 m on the axis. With tau = 0.12 d (d = 1 m) only the off-axis pixel is wrong.
        let k = Intrinsics::from_row_major(&[1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]);
        let gt = [1.0, 1.0];
        let est = [1.1, 1.1];
        assert_eq!(errors(&gt, &gt, &est, 2, &k, &[0.12], 1.0), [0.5]);
        // Whereas the visibility tolerance also applies to distances: a pixel 45 degrees
        // off axis whose model is 12 mm behind the test depth is 17 mm behind in distance.
        let test = [1.0, 1.0];
        let gt = [1.012, 1.012];
        let est = [0.0, 0.0];
        // p0 visible (12 mm <= 15 mm), p1 not (16.97 mm): union {p0}, nothing in est.
        assert_eq!(errors(&test, &gt, &est, 2, &k, &[0.1], 1.0), [1.0]);
        let e = errors(&test, &gt, &gt, 2, &k, &[0.1], 1.0);
        assert_eq!(e, [0.0]);
    }

    #[test]
    fn visibility_difference_is_rounded_to_float32_in_millimetres() {
        // One pixel on the optical axis (distance = depth), the estimate equal to the
        // ground truth: e = 0 if the model is visible, 1 if not (empty union). The pairs
        // are printed by tools/vsd_reference.py: 15 mm apart to within float rounding,
        // where the toolkit's float32 difference decides otherwise than a float64 one.
        let k = Intrinsics::from_row_major(&[1000.0, 0.0, 0.0, 0.0, 1000.0, 0.0, 0.0, 0.0, 1.0]);
        let e = |test: f32, model: f32| errors(&[test], &[model], &[model], 1, &k, &[0.1], 0.1);
        // 15.0001 mm behind in float64, exactly 15 mm in float32: visible.
        assert_eq!(e(1.0576857, 1.0726858), [0.0]);
        // 14.99999 mm behind in float64, 15.00006 mm in float32: hidden.
        assert_eq!(e(1.0179005, 1.0329005), [1.0]);
    }

    #[test]
    fn bad_input_is_an_error_and_leaves_out_alone() {
        let k = narrow_camera();
        let ok = vec![1.0f32; W * H];
        let short = vec![1.0f32; W * H - 1];
        let mut out = [7.0; 3];
        let taus = [0.1, 0.2, 0.3];
        let call = |test: &[f32], gt: &[f32], taus: &[f64], diameter: f64, out: &mut [f64]| {
            vsd_errors(test, gt, &ok, W, H, &k, 0.015, taus, diameter, out)
        };
        assert_eq!(
            call(&short, &ok, &taus, 0.1, &mut out),
            Err(KernelError::SizeMismatch {
                what: "depth_test_m (width * height values)",
                expected: 16,
                found: 15
            })
        );
        assert!(matches!(
            call(&ok, &short, &taus, 0.1, &mut out),
            Err(KernelError::SizeMismatch { .. })
        ));
        assert!(matches!(
            call(&ok, &ok, &taus, 0.1, &mut out[..2]),
            Err(KernelError::SizeMismatch {
                expected: 3,
                found: 2,
                ..
            })
        ));
        let many = [0.1; VSD_MAX_TAUS + 1];
        let mut big = [0.0; VSD_MAX_TAUS + 1];
        assert_eq!(
            call(&ok, &ok, &many, 0.1, &mut big),
            Err(KernelError::LimitExceeded {
                what: "number of VSD taus",
                limit: 32,
                found: 33
            })
        );
        for diameter in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert!(matches!(
                call(&ok, &ok, &taus, diameter, &mut out),
                Err(KernelError::NotFinite { .. })
            ));
        }
        assert!(matches!(
            call(&ok, &ok, &[0.1, f64::NAN, 0.3], 0.1, &mut out),
            Err(KernelError::NotFinite { what: "a VSD tau" })
        ));
        let mut nan_gt = ok.clone();
        nan_gt[5] = f32::NAN;
        assert_eq!(
            call(&ok, &nan_gt, &taus, 0.1, &mut out),
            Err(KernelError::NotFinite { what: "depth_gt_m" })
        );
        let flat = Intrinsics::from_row_major(&[0.0, 0.0, 1.5, 0.0, 1000.0, 1.5, 0.0, 0.0, 1.0]);
        assert!(matches!(
            vsd_errors(&ok, &ok, &ok, W, H, &flat, 0.015, &taus, 0.1, &mut out),
            Err(KernelError::NotFinite { .. })
        ));
        assert!(matches!(
            vsd_errors(&ok, &ok, &ok, W, H, &k, f64::NAN, &taus, 0.1, &mut out),
            Err(KernelError::NotFinite { what: "delta_m" })
        ));
        assert!(matches!(
            vsd_errors(
                &ok,
                &ok,
                &ok,
                usize::MAX,
                2,
                &k,
                0.015,
                &taus,
                0.1,
                &mut out
            ),
            Err(KernelError::SizeMismatch { .. })
        ));
        assert_eq!(out, [7.0; 3]);
        // Taus in any order; a full set of 32 is fine.
        let mut out32 = [0.0; VSD_MAX_TAUS];
        let taus32: Vec<f64> = (0..VSD_MAX_TAUS).rev().map(|i| i as f64 * 0.01).collect();
        call(&ok, &ok, &taus32, 0.1, &mut out32).unwrap();
        // Identical depths: distance 0, which is >= only tau 0 (the last one).
        assert_eq!(out32[VSD_MAX_TAUS - 1], 1.0);
        assert!(out32[..VSD_MAX_TAUS - 1].iter().all(|&e| e == 0.0));
    }

    struct ReferenceCase {
        depth_test_m: &'static [f32],
        depth_gt_m: &'static [f32],
        depth_est_m: &'static [f32],
        diameter_m: f64,
        errors: [f64; 10],
    }

    /// Cases and errors printed by `tools/vsd_reference.py`: a numpy transcription of the
    /// toolkit's vsd / visibility / depth_im_to_dist_im_fast, fed the float64 millimetres
    /// this kernel computes from the same float32 metres, so the errors agree exactly.
    /// 12x10 images, fx 1066.778, fy 1067.487, cx 5.2987, cy 4.3109, BOP19 delta and taus.
    const REFERENCE: &[ReferenceCase] = &[
        ReferenceCase {
            depth_test_m: &[
                0.6, 0.6, 1.5, 1.5, 1.5, 1.5, 1.5, 0.0, 1.5, 1.5, 1.5, 1.5, 0.6, 0.6, 1.5, 1.5,
                1.5, 1.5, 1.5, 1.5, 1.5, 0.0, 1.5, 1.5, 0.6, 0.6, 1.5, 1.5, 1.5, 1.5, 1.5, 1.5,
                1.5, 1.5, 1.5, 1.5, 0.6, 0.6, 1.5, 1.5, 1.5, 0.0, 1.5, 1.5, 1.5, 1.5, 1.5, 1.5,
                0.0, 0.6, 1.1734354, 1.1962177, 1.1706898, 1.1683228, 1.1979028, 1.1954535, 0.0,
                1.5, 1.5, 1.5, 0.6, 0.6, 1.1824718, 1.1774533, 1.2022707, 1.1771898, 1.1811931,
                1.1648529, 1.5, 1.5, 0.0, 1.5, 0.6, 0.6, 1.2049565, 1.1982597, 1.1658837, 0.0,
                1.1929979, 1.1960186, 1.5, 1.5, 1.5, 1.5, 0.6, 0.6, 1.5, 1.5, 1.5, 1.5, 1.5, 1.5,
                1.5, 1.5, 1.5, 1.5, 0.6, 0.6, 1.5, 1.5, 1.5, 0.0, 1.5, 1.5, 0.0, 1.5, 1.5, 1.5,
                0.6, 0.6, 1.5, 1.5, 1.5, 1.5, 0.0, 1.5, 1.5, 1.5, 1.5, 1.5,
            ],
            depth_gt_m: &[
                0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
                0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
                0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
                1.1891068, 1.1855813, 1.1834987, 1.184106, 1.178855, 1.1831666, 1.1785492,
                1.1755893, 0.0, 0.0, 0.0, 0.0, 1.1892012, 1.1889709, 1.186694, 1.1813815,
                1.1836549, 1.1827844, 1.1791513, 1.1814662, 0.0, 0.0, 0.0, 0.0, 1.1868547,
                1.188245, 1.1860784, 1.1816059, 1.1804932, 1.1828521, 1.1810769, 1.1797162, 0.0,
                0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
                0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
                0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
            ],
            depth_est_m: &[
                0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
                0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
                0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
                0.0, 0.0, 1.2005998, 1.2060314, 1.2046639, 1.2070403, 1.2098147, 1.2081143,
                1.2120328, 1.2135243, 1.2173293, 1.2140398, 0.0, 0.0, 1.2034496, 1.2021476,
                1.2080462, 1.2061763, 1.2060677, 1.2113677, 1.2127563, 1.2114639, 1.2141372,
                1.2135624, 0.0, 0.0, 1.2007862, 1.205117, 1.2062768, 1.2048184, 1.2109883,
                1.2117351, 1.209874, 1.2105519, 1.2138046, 1.2185183, 0.0, 0.0, 1.2017444,
                1.204223, 1.2049571, 1.2089803, 1.2115268, 1.212907, 1.2097743, 1.2146124,
                1.2136836, 1.2145056, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
                0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
            ],
            diameter_m: 0.09437516570970321,
            errors: [1.0, 1.0, 1.0, 0.925, 0.8, 0.675, 0.575, 0.575, 0.575, 0.575],
        },
        ReferenceCase {
            depth_test_m: &[
                1.5, 0.0, 0.6, 1.5, 0.0, 1.5, 1.5, 1.5, 0.0, 1.5, 1.5, 1.5, 1.5, 0.6, 0.6,
                1.1360515, 1.1258699, 1.1358392, 1.1540972, 1.5, 1.5, 0.0, 1.5, 1.5, 1.5, 0.6, 0.6,
                1.1254433, 1.1251956, 1.1279303, 1.1471245, 1.5, 1.5, 1.5, 1.5, 1.5, 1.5, 0.6, 0.6,
                1.1507994, 1.1490606, 1.1295404, 1.1331091, 1.5, 1.5, 1.5, 0.0, 1.5, 1.5, 0.6, 0.6,
                1.1304696, 0.0, 1.1334752, 1.1537544, 1.5, 1.5, 1.5, 1.5, 1.5, 1.5, 0.6, 0.6,
                1.1349232, 1.1373898, 0.0, 1.1442581, 1.5, 1.5, 1.5, 1.5, 1.5, 1.5, 0.6, 0.6,
                1.1431822, 1.1444638, 0.0, 0.0, 1.5, 1.5, 1.5, 0.0, 1.5, 1.5, 0.6, 0.6, 1.1402521,
                1.1500698, 1.1707582, 1.1405734, 1.5, 1.5, 1.5, 1.5, 0.0, 1.5, 0.6, 0.6, 1.1578552,
                1.1701667, 1.1651074, 1.1553925, 1.5, 0.0, 1.5, 1.5, 1.5, 1.5, 0.6, 0.6, 0.0, 1.5,
                1.5, 0.0, 1.5, 1.5, 1.5, 1.5, 1.5,
            ],
            depth_gt_m: &[
                0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
                1.1402954, 1.1418718, 1.1417593, 1.1407659, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
                1.1449269, 1.1409969, 1.1416329, 1.1412674, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
                1.1463754, 1.1459733, 1.1426404, 1.1437601, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
                1.1492562, 1.1465572, 1.1499572, 1.1437637, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
                1.1524652, 1.147673, 1.1472099, 1.150187, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
                1.1541231, 1.153381, 1.1519934, 1.1511785, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
                1.1537693, 1.157883, 1.1565609, 1.1542443, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
                1.1569209, 1.1576632, 1.1573695, 1.1555163, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
                0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
            ],
            depth_est_m: &[
                0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
                0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.1492497,
                1.1452268, 1.1426543, 1.1398332, 1.1415522, 1.1352619, 0.0, 0.0, 0.0, 0.0, 0.0,
                0.0, 1.1464645, 1.1426206, 1.1385406, 1.1383712, 1.1367062, 1.1339669, 0.0, 0.0,
                0.0, 0.0, 0.0, 0.0, 1.1420201, 1.1381537, 1.1332229, 1.135833, 1.1312866,
                1.1296275, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.136669, 1.1323342, 1.1345376, 1.1280862,
                1.1279794, 1.1221535, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.1341076, 1.1285889,
                1.1270664, 1.124481, 1.122016, 1.1180607, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.1272829,
                1.1275544, 1.126792, 1.1200768, 1.1190262, 1.1147751, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
                0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
                0.0, 0.0, 0.0,
            ],
            diameter_m: 0.23670581764925952,
            errors: [
                0.8823529411764706,
                0.8235294117647058,
                0.7843137254901961,
                0.7843137254901961,
                0.7843137254901961,
                0.7843137254901961,
                0.7843137254901961,
                0.7843137254901961,
                0.7843137254901961,
                0.7843137254901961,
            ],
        },
        ReferenceCase {
            depth_test_m: &[
                1.5, 1.5, 1.5, 1.5, 0.0, 1.5, 1.5, 0.6, 0.6, 1.5, 1.5, 1.5, 1.5, 0.0, 1.5, 0.0,
                1.5, 1.5, 1.5, 0.6, 0.6, 0.0, 0.0, 1.5, 0.0, 1.5, 1.5, 0.90290993, 0.92275554, 0.0,
                0.9395008, 0.6, 0.6, 1.5, 1.5, 1.5, 1.5, 1.5, 1.5, 0.0, 0.9218022, 0.0, 0.9410309,
                0.6, 0.6, 1.5, 1.5, 1.5, 1.5, 1.5, 1.5, 0.9148216, 0.9246596, 0.91118217,
                0.9214946, 0.6, 0.6, 1.5, 1.5, 1.5, 1.5, 1.5, 1.5, 0.911628, 0.9245841, 0.92450386,
                0.91878, 0.6, 0.6, 1.5, 1.5, 1.5, 1.5, 1.5, 1.5, 0.9271981, 0.9249331, 0.9228859,
                0.0, 0.0, 0.6, 1.5, 0.0, 1.5, 1.5, 1.5, 1.5, 1.5, 1.5, 1.5, 1.5, 0.6, 0.6, 1.5,
                1.5, 0.0, 1.5, 1.5, 1.5, 1.5, 1.5, 1.5, 1.5, 0.6, 0.0, 1.5, 0.0, 1.5, 1.5, 1.5,
                1.5, 1.5, 1.5, 1.5, 1.5, 0.0, 0.6, 1.5, 1.5, 1.5,
            ],
            depth_gt_m: &[
                0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
                0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.9101968, 0.91530937,
                0.91962415, 0.9199007, 0.9262839, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.9099344,
                0.91470504, 0.919135, 0.9225458, 0.92292506, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
                0.90981126, 0.91482973, 0.9178618, 0.9179295, 0.9262555, 0.0, 0.0, 0.0, 0.0, 0.0,
                0.0, 0.0, 0.9088963, 0.9142949, 0.9139474, 0.9189309, 0.9247387, 0.0, 0.0, 0.0,
                0.0, 0.0, 0.0, 0.0, 0.91101724, 0.9126923, 0.91808254, 0.9226845, 0.92139614, 0.0,
                0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
                0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
                0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
            ],
            depth_est_m: &[
                0.9235569, 0.91885084, 0.9167489, 0.91727495, 0.91476613, 0.9084704, 0.9049412,
                0.9052793, 0.898863, 0.8975618, 0.8926895, 0.0, 0.92815244, 0.9222837, 0.9194535,
                0.9194286, 0.9127407, 0.91345507, 0.90683126, 0.90828085, 0.9014176, 0.899166,
                0.89538497, 0.0, 0.9309103, 0.92711574, 0.92304325, 0.92202985, 0.9185719,
                0.9168585, 0.9118421, 0.9103441, 0.905529, 0.9047123, 0.89955556, 0.0, 0.9310105,
                0.93200684, 0.92757314, 0.92203045, 0.9209664, 0.91931397, 0.91286767, 0.9094394,
                0.90878314, 0.90266424, 0.9003699, 0.0, 0.9355888, 0.9310284, 0.9292929, 0.926963,
                0.924914, 0.9213543, 0.91479486, 0.91137904, 0.91281515, 0.90772253, 0.9016897,
                0.0, 0.93580425, 0.9353508, 0.9289922, 0.93034285, 0.92723596, 0.9219163,
                0.91622925, 0.9149245, 0.914783, 0.9070831, 0.9090232, 0.0, 0.0, 0.0, 0.0, 0.0,
                0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
                0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
                0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
            ],
            diameter_m: 0.22411396824997143,
            errors: [
                0.8135593220338984,
                0.7288135593220338,
                0.7288135593220338,
                0.7288135593220338,
                0.7288135593220338,
                0.7288135593220338,
                0.7288135593220338,
                0.7288135593220338,
                0.7288135593220338,
                0.7288135593220338,
            ],
        },
        ReferenceCase {
            depth_test_m: &[
                1.5, 1.5, 1.5, 0.0, 1.5, 1.5, 0.6, 0.6, 1.5, 1.5, 1.5, 1.5, 1.078756, 1.0863729,
                1.0739775, 1.0589836, 1.0655057, 0.0, 0.6, 0.6, 1.055199, 1.5, 0.0, 1.5, 1.0880415,
                1.0766412, 1.0829569, 1.0739908, 1.0641911, 1.057577, 0.6, 0.6, 1.0723002, 1.5,
                1.5, 1.5, 1.0745655, 0.0, 1.066709, 1.0762968, 1.0677316, 1.0550854, 0.6, 0.6, 0.0,
                1.5, 1.5, 1.5, 1.0852247, 1.0693796, 1.0713146, 1.05796, 1.0885812, 1.0816939, 0.6,
                0.6, 1.0905687, 1.5, 1.5, 1.5, 0.0, 1.0606549, 1.0889642, 1.0853262, 1.0738535,
                1.0762436, 0.6, 0.6, 0.0, 1.5, 0.0, 1.5, 1.0892588, 1.0617698, 1.0496926, 1.087516,
                1.0925432, 1.0721984, 0.6, 0.6, 1.0869154, 1.5, 0.0, 1.5, 1.0907644, 1.0526174,
                1.055427, 1.0526644, 1.0567194, 1.070047, 0.6, 0.6, 1.0738306, 1.5, 0.0, 1.5,
                1.0790977, 1.0618566, 1.0731564, 1.0709517, 1.0518723, 1.0683285, 0.6, 0.6,
                1.0691314, 1.5, 1.5, 1.5, 1.5, 1.5, 1.5, 1.5, 1.5, 1.5, 0.6, 0.6, 0.0, 1.5, 1.5,
                1.5,
            ],
            depth_gt_m: &[
                0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0708996, 1.0745151,
                1.0753722, 1.074653, 1.073223, 1.0702492, 1.0720222, 1.0742408, 1.0746789, 0.0,
                0.0, 0.0, 1.070607, 1.0749016, 1.0734981, 1.0713252, 1.0703385, 1.0756774,
                1.0760269, 1.0702225, 1.0735952, 0.0, 0.0, 0.0, 1.0729612, 1.0745282, 1.0722996,
                1.0724697, 1.071261, 1.0713155, 1.0722327, 1.0723252, 1.0756131, 0.0, 0.0, 0.0,
                1.0739933, 1.0731121, 1.070123, 1.0716497, 1.0744525, 1.0714018, 1.0724362,
                1.0737023, 1.0712677, 0.0, 0.0, 0.0, 1.0727673, 1.0725049, 1.0707805, 1.0740426,
                1.071285, 1.0706571, 1.0750551, 1.0730666, 1.0729277, 0.0, 0.0, 0.0, 1.0703288,
                1.0702963, 1.0695307, 1.0712816, 1.0735302, 1.0741502, 1.0746257, 1.074263,
                1.0710663, 0.0, 0.0, 0.0, 1.0736254, 1.0693598, 1.0687418, 1.0721219, 1.0735384,
                1.070235, 1.073394, 1.0692272, 1.0704343, 0.0, 0.0, 0.0, 1.0689981, 1.0712751,
                1.0721202, 1.071815, 1.0684007, 1.0742196, 1.0736401, 1.0704454, 1.0726011, 0.0,
                0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
            ],
            depth_est_m: &[
                0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
                1.0468038, 1.0418117, 1.043731, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
                1.045256, 1.040834, 1.0371068, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
                1.0374197, 1.0377553, 1.0351036, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
                0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
                0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
                0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
                0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
                0.0, 0.0, 0.0,
            ],
            diameter_m: 0.2776781552135229,
            errors: [
                1.0,
                0.9591836734693877,
                0.9183673469387755,
                0.9183673469387755,
                0.9183673469387755,
                0.9183673469387755,
                0.9183673469387755,
                0.9183673469387755,
                0.9183673469387755,
                0.9183673469387755,
            ],
        },
    ];

    #[test]
    fn matches_the_numpy_reference() {
        let k = Intrinsics::from_row_major(&[
            1066.778, 0.0, 5.2987, 0.0, 1067.487, 4.3109, 0.0, 0.0, 1.0,
        ]);
        for (i, case) in REFERENCE.iter().enumerate() {
            let e = errors(
                case.depth_test_m,
                case.depth_gt_m,
                case.depth_est_m,
                12,
                &k,
                &BOP19_VSD_TAUS,
                case.diameter_m,
            );
            assert_eq!(e, case.errors, "case {i}");
        }
    }

    fn depth_image(n: usize) -> impl Strategy<Value = Vec<f32>> {
        // Mostly around 1 m, within a few delta of each other, with some zeros.
        proptest::collection::vec(prop_oneof![1 => Just(0.0f32), 4 => 0.95f32..1.05], n)
    }

    proptest! {
        /// Errors lie in [0, 1] and do not increase with tau.
        #[test]
        fn errors_are_in_unit_interval_and_non_increasing_in_tau(
            (test, gt, est) in (depth_image(30), depth_image(30), depth_image(30)),
            mut taus in proptest::collection::vec(0.0f64..1.0, 1..VSD_MAX_TAUS),
            diameter in 0.01f64..0.5,
            cx in -2.0f64..8.0,
        ) {
            taus.sort_by(f64::total_cmp);
            let k = Intrinsics::from_row_major(&[500.0, 0.0, cx, 0.0, 500.0, 2.5, 0.0, 0.0, 1.0]);
            let e = errors(&test, &gt, &est, 6, &k, &taus, diameter);
            prop_assert!(e.iter().all(|&e| (0.0..=1.0).contains(&e)), "{e:?}");
            prop_assert!(e.windows(2).all(|w| w[1] <= w[0]), "{e:?}");
            // The ground truth as estimate: visib_est = visib_gt, every distance 0, so e = 0
            // for every positive tau, unless nothing is visible (then e = 1 throughout).
            let same = errors(&test, &gt, &gt, 6, &k, &taus, diameter);
            let nothing_visible = same.iter().all(|&e| e == 1.0);
            let exact = same
                .iter()
                .zip(&taus)
                .all(|(&e, &tau)| e == if tau > 0.0 { 0.0 } else { 1.0 });
            prop_assert!(nothing_visible || exact, "{same:?}");
        }
    }
}
