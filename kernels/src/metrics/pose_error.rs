//! Per-pair pose errors. Inputs are model points in metres (object frame) and poses
//! `camera_from_object`; outputs are metres, pixels or degrees as named.

use nalgebra::{Matrix3, Vector3};

use super::nearest::KdTree;
use crate::{Intrinsics, KernelError, Pose};

/// An object prepared once for pose-error computations: its points, an exact
/// nearest-neighbour index over them (for ADD-S) and its BOP symmetry set (for MSSD and
/// MSPD).
pub struct PoseErrorModel {
    points_m: Vec<[f64; 3]>,
    tree: KdTree,
    diameter_m: f64,
    symmetries: Vec<Pose>,
}

impl std::fmt::Debug for PoseErrorModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoseErrorModel")
            .field("n_points", &self.points_m.len())
            .field("diameter_m", &self.diameter_m)
            .field("n_symmetries", &self.symmetries.len())
            .finish()
    }
}

impl PoseErrorModel {
    /// Prepares a model. `points_m` are all evaluation points (BOP and CosyPose use every
    /// mesh vertex), `symmetries` the set used for MSSD / MSPD (the identity included,
    /// see [`crate::symmetry::bop_symmetry_transforms`]).
    pub fn new(
        points_m: Vec<[f64; 3]>,
        diameter_m: f64,
        symmetries: Vec<Pose>,
    ) -> Result<Self, KernelError> {
        if points_m.is_empty() {
            return Err(KernelError::Empty {
                what: "model point set",
            });
        }
        if symmetries.is_empty() {
            return Err(KernelError::Empty {
                what: "symmetry set",
            });
        }
        if points_m.iter().flatten().any(|v| !v.is_finite()) {
            return Err(KernelError::NotFinite {
                what: "model point",
            });
        }
        if !diameter_m.is_finite() {
            return Err(KernelError::NotFinite { what: "diameter" });
        }
        let tree = KdTree::new(&points_m);
        Ok(Self {
            points_m,
            tree,
            diameter_m,
            symmetries,
        })
    }

    /// The evaluation points, metres, object frame.
    pub fn points_m(&self) -> &[[f64; 3]] {
        &self.points_m
    }

    /// The object diameter in metres (largest distance between two vertices, from
    /// `models_info.json`).
    pub fn diameter_m(&self) -> f64 {
        self.diameter_m
    }

    /// The symmetry set used by MSSD and MSPD.
    pub fn symmetries(&self) -> &[Pose] {
        &self.symmetries
    }

    /// ADD: mean distance between corresponding points, metres.
    pub fn add(&self, gt: &Pose, est: &Pose) -> f64 {
        // est^-1 * gt maps a GT-posed point back into the estimate's object frame;
        // rotations preserve distances, so |gt p - est p| = |delta p - p|.
        let delta = est.inverse().compose(gt);
        let sum: f64 = self
            .points_m
            .iter()
            .map(|p| {
                let v = Vector3::from(*p);
                (delta.rotation * v + delta.translation_m - v).norm()
            })
            .sum();
        sum / self.points_m.len() as f64
    }

    /// ADD-S: for each GT-posed point, the distance to the nearest estimate-posed point,
    /// averaged over the GT points; metres. The nearest neighbour is exact.
    ///
    /// The k-d tree is built once over the model points; each GT-posed point is mapped
    /// into the estimate's object frame instead of re-posing and re-indexing the model
    /// for every pair (distances are invariant under the rigid map). Points are visited
    /// in tree order, and each search starts from the nearer of two real points: the
    /// point's own ADD partner, and the previous point's neighbour (see
    /// [`KdTree::nearest_from`]).
    pub fn adds(&self, gt: &Pose, est: &Pose) -> f64 {
        let delta = est.inverse().compose(gt);
        let points = self.tree.points();
        let mut previous_nearest: Option<usize> = None;
        let mut sum = 0.0;
        for (i, p) in points.iter().enumerate() {
            let v = Vector3::from(*p);
            let q = delta.rotation * v + delta.translation_m;
            let mut anchor = (i, (q - v).norm_squared());
            if let Some(index) = previous_nearest {
                let previous_sq = (q - Vector3::from(points[index])).norm_squared();
                if previous_sq < anchor.1 {
                    anchor = (index, previous_sq);
                }
            }
            let query = [q.x, q.y, q.z];
            let (distance_sq, index) = self.tree.nearest_from(&query, anchor.0, anchor.1);
            previous_nearest = Some(index);
            sum += distance_sq.sqrt();
        }
        sum / points.len() as f64
    }

    /// MSSD (BOP19): `min over S of max over p of |est p - gt S p|`, metres.
    pub fn mssd(&self, gt: &Pose, est: &Pose) -> f64 {
        self.min_over_symmetries(gt, est, |gt_point, est_point| (gt_point - est_point).norm())
    }

    /// MSPD (BOP19): like MSSD with distances between the pixel projections under `k`,
    /// pixels (not yet rescaled by 640 / image width).
    pub fn mspd(&self, k: &Intrinsics, gt: &Pose, est: &Pose) -> f64 {
        self.min_over_symmetries(gt, est, |gt_point, est_point| {
            let [ug, vg] = k.project(gt_point);
            let [ue, ve] = k.project(est_point);
            (ug - ue).hypot(vg - ve)
        })
    }

    /// `min_S max_p distance(gt S p, est p)`. A symmetry is abandoned as soon as its
    /// running maximum reaches the best minimum so far: the result is unchanged, and most
    /// of the 315 samples of a continuous symmetry stop after a few points.
    fn min_over_symmetries(
        &self,
        gt: &Pose,
        est: &Pose,
        distance: impl Fn(&Vector3<f64>, &Vector3<f64>) -> f64,
    ) -> f64 {
        let mut best = f64::INFINITY;
        for symmetry in &self.symmetries {
            let gt_sym = gt.compose(symmetry);
            let mut worst: f64 = 0.0;
            for p in &self.points_m {
                let d = distance(&gt_sym.transform_point(p), &est.transform_point(p));
                // NaN (a point on the camera plane for MSPD) propagates as in numpy.
                if d.is_nan() {
                    return f64::NAN;
                }
                worst = worst.max(d);
                if worst >= best {
                    break;
                }
            }
            best = best.min(worst);
        }
        best
    }
}

/// Rotation error in degrees: `acos(clip((trace(R_est R_gt^T) - 1) / 2, -1, 1))`.
pub fn rotation_error_deg(gt: &Pose, est: &Pose) -> f64 {
    let relative: Matrix3<f64> = est.rotation * gt.rotation.transpose();
    let cos = ((relative.trace() - 1.0) / 2.0).clamp(-1.0, 1.0);
    cos.acos().to_degrees()
}

/// Translation error `|t_est - t_gt|`, metres.
pub fn translation_error_m(gt: &Pose, est: &Pose) -> f64 {
    (est.translation_m - gt.translation_m).norm()
}

#[cfg(test)]
mod tests {
    use super::*;
    use nalgebra::Rotation3;
    use proptest::prelude::*;

    fn cube_points() -> Vec<[f64; 3]> {
        let mut points = Vec::new();
        for x in [-0.05, 0.05] {
            for y in [-0.05, 0.05] {
                for z in [-0.05, 0.05] {
                    points.push([x, y, z]);
                }
            }
        }
        points
    }

    fn pose(axis_angle: [f64; 3], t: [f64; 3]) -> Pose {
        Pose {
            rotation: *Rotation3::new(Vector3::from(axis_angle)).matrix(),
            translation_m: Vector3::from(t),
        }
    }

    fn brute_force_adds(points: &[[f64; 3]], gt: &Pose, est: &Pose) -> f64 {
        let est_points: Vec<_> = points.iter().map(|p| est.transform_point(p)).collect();
        points
            .iter()
            .map(|p| {
                let g = gt.transform_point(p);
                est_points
                    .iter()
                    .map(|e| (g - e).norm())
                    .fold(f64::INFINITY, f64::min)
            })
            .sum::<f64>()
            / points.len() as f64
    }

    #[test]
    fn pure_translation_gives_its_length() {
        let model = PoseErrorModel::new(cube_points(), 0.17, vec![Pose::identity()]).unwrap();
        let gt = pose([0.3, 0.2, 0.1], [0.0, 0.0, 1.0]);
        let est = pose([0.3, 0.2, 0.1], [0.01, 0.0, 1.0]);
        assert!((model.add(&gt, &est) - 0.01).abs() < 1e-15);
        assert!((model.mssd(&gt, &est) - 0.01).abs() < 1e-15);
        assert!((translation_error_m(&gt, &est) - 0.01).abs() < 1e-15);
        assert!(rotation_error_deg(&gt, &est) < 1e-5);
    }

    #[test]
    fn cube_quarter_turn_is_invisible_to_adds_and_to_mssd_with_its_symmetry() {
        let quarter = pose([0.0, 0.0, std::f64::consts::FRAC_PI_2], [0.0; 3]);
        let model =
            PoseErrorModel::new(cube_points(), 0.17, vec![Pose::identity(), quarter]).unwrap();
        let gt = pose([0.3, 0.2, 0.1], [0.0, 0.0, 1.0]);
        let est = gt.compose(&quarter);
        assert!(model.add(&gt, &est) > 0.05);
        assert!(model.adds(&gt, &est) < 1e-12);
        assert!(model.mssd(&gt, &est) < 1e-12);
        assert!((rotation_error_deg(&gt, &est) - 90.0).abs() < 1e-9);
    }

    #[test]
    fn rejects_empty_and_non_finite_models() {
        assert!(PoseErrorModel::new(vec![], 1.0, vec![Pose::identity()]).is_err());
        assert!(
            PoseErrorModel::new(vec![[0.0, f64::NAN, 0.0]], 1.0, vec![Pose::identity()]).is_err()
        );
        assert!(PoseErrorModel::new(cube_points(), 1.0, vec![]).is_err());
    }

    proptest! {
        #[test]
        fn adds_matches_brute_force(
            seed_points in proptest::collection::vec(prop::array::uniform3(-0.1f64..0.1), 1..60),
            r_gt in prop::array::uniform3(-3.0f64..3.0),
            r_est in prop::array::uniform3(-3.0f64..3.0),
            t_est in prop::array::uniform3(-0.05f64..0.05),
        ) {
            let model = PoseErrorModel::new(seed_points.clone(), 0.3, vec![Pose::identity()]).unwrap();
            let gt = pose(r_gt, [0.0, 0.0, 1.0]);
            let est = pose(r_est, [t_est[0], t_est[1], 1.0 + t_est[2]]);
            let expected = brute_force_adds(&seed_points, &gt, &est);
            prop_assert!((model.adds(&gt, &est) - expected).abs() <= 1e-12 * (1.0 + expected));
            // ADD-S never exceeds ADD, and MSSD with the identity only is max-ADD.
            prop_assert!(model.adds(&gt, &est) <= model.add(&gt, &est) + 1e-12);
            prop_assert!(model.mssd(&gt, &est) >= model.add(&gt, &est) - 1e-12);
        }
    }
}
