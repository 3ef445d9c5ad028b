#!/usr/bin/env python3
"""Reference VSD values for kernels/src/metrics/vsd.rs (test `matches_the_numpy_reference`).

A direct numpy transcription of the BOP toolkit's VSD (bop_toolkit_lib/pose_error.py::vsd
with cost_type="step", visibility.py::_estimate_visib_mask in "bop19" mode,
misc.py::depth_im_to_dist_im_fast), minus the rendering: it takes depth images that are
already rendered. It generates a few random cases (seeded), and prints them as Rust
source: the three float32 depth images in metres, the intrinsics and the errors for the
BOP19 taus, to paste into the test.

The toolkit works in millimetres with float32 depth images. The Rust kernel takes float32
metres and converts each value to float64 millimetres (`f64::from(d) * 1000.0`); this
script feeds the toolkit formulas exactly those millimetre values, so both sides compute
the same numbers operation by operation and the errors must agree exactly.

Usage: python3 tools/vsd_reference.py  (needs numpy; tested with numpy 2.4.6)
"""

import numpy as np

WIDTH, HEIGHT = 12, 10
# A crop of the ycbv-mini camera (data/README.md), principal point moved into the crop.
FX, FY, CX, CY = 1066.778, 1067.487, 5.2987, 4.3109
DELTA_MM = 15.0
TAUS = np.arange(0.05, 0.51, 0.05)


def depth_im_to_dist_im_fast(depth_im, K):
    # misc.Precomputer.precompute_lazy + misc.depth_im_to_dist_im_fast.
    xs, ys = np.meshgrid(np.arange(depth_im.shape[1]), np.arange(depth_im.shape[0]))
    pre_Xs = (xs - K[0, 2]) / np.float64(K[0, 0])
    pre_Ys = (ys - K[1, 2]) / np.float64(K[1, 1])
    return np.sqrt(
        np.multiply(pre_Xs, depth_im) ** 2
        + np.multiply(pre_Ys, depth_im) ** 2
        + depth_im.astype(np.float64) ** 2
    )


def estimate_visib_mask(d_test, d_model, delta):
    # visibility._estimate_visib_mask, visib_mode="bop19".
    d_diff = d_model.astype(np.float32) - d_test.astype(np.float32)
    return np.logical_and(np.logical_or(d_diff <= delta, d_test == 0), d_model > 0)


def vsd(depth_test, depth_gt, depth_est, K, delta, taus, diameter):
    # pose_error.vsd after rendering, normalized_by_diameter=True, cost_type="step".
    dist_test = depth_im_to_dist_im_fast(depth_test, K)
    dist_gt = depth_im_to_dist_im_fast(depth_gt, K)
    dist_est = depth_im_to_dist_im_fast(depth_est, K)
    visib_gt = estimate_visib_mask(dist_test, dist_gt, delta)
    visib_est = estimate_visib_mask(dist_test, dist_est, delta)
    visib_est = np.logical_or(visib_est, np.logical_and(visib_gt, dist_est > 0))
    visib_inter = np.logical_and(visib_gt, visib_est)
    visib_union = np.logical_or(visib_gt, visib_est)
    visib_union_count = visib_union.sum()
    visib_comp_count = visib_union_count - visib_inter.sum()
    dists = np.abs(dist_gt[visib_inter] - dist_est[visib_inter])
    dists /= diameter
    if visib_union_count == 0:
        return [1.0] * len(taus)
    return [
        (np.sum(dists >= tau) + visib_comp_count) / float(visib_union_count) for tau in taus
    ]


def blob(rng, depth_m, noise_m):
    """An object: a random rectangle at about depth_m with a tilt and noise, 0 elsewhere."""
    x0, y0 = rng.integers(0, WIDTH // 2), rng.integers(0, HEIGHT // 2)
    x1, y1 = rng.integers(x0 + 3, WIDTH + 1), rng.integers(y0 + 3, HEIGHT + 1)
    ys, xs = np.mgrid[0:HEIGHT, 0:WIDTH]
    tilt = rng.uniform(-0.004, 0.004, size=2)
    depth = depth_m + tilt[0] * xs + tilt[1] * ys + rng.uniform(-noise_m, noise_m, xs.shape)
    inside = (xs >= x0) & (xs < x1) & (ys >= y0) & (ys < y1)
    return np.where(inside, depth, 0.0).astype(np.float32)


def make_case(rng):
    gt = blob(rng, rng.uniform(0.8, 1.2), 0.003)
    est = blob(rng, float(gt[gt > 0].mean()) + rng.uniform(-0.03, 0.03), 0.003)
    # The scene: the GT object (plus sensor noise) over a table at 1.5 m, an occluder in
    # front in a few columns, and a few pixels with no depth.
    test = np.where(gt > 0, gt + rng.uniform(-0.02, 0.02, gt.shape), 1.5)
    occluded = np.zeros(gt.shape, bool)
    c = rng.integers(0, WIDTH - 2)
    occluded[:, c : c + 2] = True
    test = np.where(occluded, 0.6, test)
    test = np.where(rng.uniform(size=gt.shape) < 0.1, 0.0, test).astype(np.float32)
    diameter_m = rng.uniform(0.05, 0.3)
    return test, gt, est, diameter_m


def rust_array(name, a):
    # str() of a numpy float32 is its shortest round-trip text, which Rust parses back
    # to the same f32.
    values = ", ".join(str(v) for v in a.ravel())
    return f"        {name}: &[{values}],"


def float32_boundary_cases():
    """Depth pairs (test, model) on the optical axis, in float32 metres, whose visibility
    (model - test <= 15 mm) the toolkit's float32 subtraction decides differently from a
    float64 one: one visible only in float32, one hidden only in float32."""
    rng = np.random.default_rng(1)
    found = {}
    while len(found) < 2:
        test = np.float32(rng.uniform(0.9, 1.1))
        model = np.float32(float(test) + 0.015)
        for _ in range(2):
            test_mm, model_mm = float(test) * 1000.0, float(model) * 1000.0
            in_f32 = bool(np.float32(model_mm) - np.float32(test_mm) <= np.float32(DELTA_MM))
            in_f64 = model_mm - test_mm <= DELTA_MM
            if in_f32 != in_f64:
                found.setdefault(in_f32, (test, model))
            model = np.nextafter(model, np.float32(2.0))
    for visible, (test, model) in sorted(found.items()):
        print(f"// test {str(test)} m, model {str(model)} m: visible in float32: {visible}")


def main():
    rng = np.random.default_rng(20261124)
    K = np.array([[FX, 0.0, CX], [0.0, FY, CY], [0.0, 0.0, 1.0]])
    print(f"// Generated by tools/vsd_reference.py (numpy {np.__version__}).")
    for _ in range(4):
        test, gt, est, diameter_m = make_case(rng)
        # What the Rust kernel does with its float32 metres: float64 millimetres.
        mm = [d.astype(np.float64) * 1000.0 for d in (test, gt, est)]
        errors = vsd(*mm, K, DELTA_MM, TAUS, diameter_m * 1000.0)
        print("    ReferenceCase {")
        print(rust_array("depth_test_m", test))
        print(rust_array("depth_gt_m", gt))
        print(rust_array("depth_est_m", est))
        print(f"        diameter_m: {diameter_m!r},")
        print(f"        errors: [{', '.join(repr(float(e)) for e in errors)}],")
        print("    },")
    float32_boundary_cases()


if __name__ == "__main__":
    main()
