//! Stage 3 of multi-view CosyPose (spec C.2): object-level bundle adjustment. Objects'
//! world poses and cameras' poses move together so that every candidate's box corners
//! reproject where the scene says they are, by Levenberg-Marquardt.
//!
//! Each pose is a 9-vector (the first two columns of its rotation, then its translation),
//! updated additively and read through Gram-Schmidt, exactly as CosyPose; its Jacobian
//! comes from central differences in f64 where CosyPose uses autograd.

use std::collections::BTreeMap;

use nalgebra::{DMatrix, DVector, Vector3};
use posed_kernels::cosypose::sample::{numpy_shuffle, Mt19937};
use posed_kernels::cosypose::update::rotation_from_6d;
use posed_kernels::{Intrinsics, Pose};

use super::{ObjectGeometry, ViewPair};
use crate::{Error, Result};

/// Residuals above this many squared pixels count as this much in the cost (5 px).
const TRUNCATION_PX2: f64 = 25.0;
const LAMBDA_START: f64 = 1e-3;
const LAMBDA_DOWN: f64 = 9.0;
const LAMBDA_UP: f64 = 11.0;
const LAMBDA_MIN: f64 = 1e-7;
const LAMBDA_MAX: f64 = 1e7;
/// A step that changes the cost by less than this ends the optimisation.
const COST_EPSILON: f64 = 1e-5;
/// Passes over the views to chain their initial poses from the accepted pairs.
const INIT_PASSES: usize = 20;
/// Central-difference step on the 9-vectors (unit columns, metres).
const DIFFERENCE_STEP: f64 = 1e-6;

/// One candidate in the adjustment: its object, its view, its pose.
pub(crate) struct Observation {
    pub(crate) object: usize,
    pub(crate) view: usize,
    pub(crate) camera_from_object: Pose,
}

/// What the adjustment found.
pub(crate) struct Adjusted {
    pub(crate) world_from_object: Vec<Pose>,
    pub(crate) world_from_camera: Vec<Pose>,
    pub(crate) initial_cost_px2: f64,
    pub(crate) final_cost_px2: f64,
    pub(crate) iterations: usize,
}

/// The problem of one view group.
pub(crate) struct BundleProblem<'a> {
    /// Per view: its id and intrinsics, in the group's order.
    pub(crate) views: Vec<(u32, Intrinsics)>,
    /// Per object: its geometry.
    pub(crate) objects: Vec<&'a ObjectGeometry>,
    pub(crate) observations: Vec<Observation>,
    pub(crate) optimize_cameras: bool,
}

impl BundleProblem<'_> {
    /// Initial poses (CosyPose's `sample_initial_TWO_TWC(seed=0)`), then at most
    /// `iterations` Levenberg-Marquardt steps.
    pub(crate) fn solve(&self, pairs: &[ViewPair], iterations: usize) -> Result<Adjusted> {
        let (world_from_object, world_from_camera) = self.initial_poses(pairs)?;
        let n_objects = self.objects.len();
        let mut params = Vec::with_capacity(9 * (n_objects + self.views.len()));
        for pose in &world_from_object {
            params.extend(pose9(pose));
        }
        for pose in &world_from_camera {
            params.extend(pose9(&pose.inverse()));
        }
        let mut params = DVector::from_vec(params);
        let n_free = if self.optimize_cameras {
            params.len()
        } else {
            9 * n_objects
        };

        let mut lambda = LAMBDA_START;
        let (mut errors, mut cost) = self
            .errors(&params)
            .ok_or_else(|| invalid("the initial poses are degenerate"))?;
        let initial_cost_px2 = cost;
        let mut jacobian = self.jacobian(&params, n_free);
        let mut run = 0;
        while run < iterations {
            run += 1;
            let normal = jacobian.transpose() * &jacobian
                + DMatrix::<f64>::identity(n_free, n_free) * lambda;
            let gradient = jacobian.transpose() * &errors;
            let Ok(inverse) = normal.pseudo_inverse(1e-15) else {
                break;
            };
            let step = inverse * gradient;
            let mut next = params.clone();
            next.rows_mut(0, n_free)
                .iter_mut()
                .zip(step.iter())
                .for_each(|(p, h)| *p += h);
            let (next_errors, next_cost) = self
                .errors(&next)
                .unwrap_or_else(|| (DVector::zeros(errors.len()), f64::INFINITY));
            let decrease = cost - next_cost;
            if decrease.abs() < COST_EPSILON {
                break;
            } else if decrease > COST_EPSILON {
                params = next;
                errors = next_errors;
                cost = next_cost;
                jacobian = self.jacobian(&params, n_free);
                lambda = (lambda / LAMBDA_DOWN).max(LAMBDA_MIN);
            } else {
                lambda = (lambda * LAMBDA_UP).min(LAMBDA_MAX);
            }
        }
        let poses = |offset: usize, count: usize| -> Result<Vec<Pose>> {
            (0..count)
                .map(|i| {
                    pose_from9(params.rows(offset + 9 * i, 9).as_slice())
                        .ok_or_else(|| invalid("a pose became degenerate"))
                })
                .collect()
        };
        let world_from_object = poses(0, n_objects)?;
        let world_from_camera = poses(9 * n_objects, self.views.len())?
            .iter()
            .map(Pose::inverse)
            .collect();
        Ok(Adjusted {
            world_from_object,
            world_from_camera,
            initial_cost_px2,
            final_cost_px2: cost,
            iterations: run,
        })
    }

    /// `T_WO` per object and `T_WC` per view: views and objects in an order drawn from
    /// numpy's `RandomState(0)`; the first view is the world; each other view chains from
    /// an initialised one through an accepted pair; each object comes from the first view
    /// (in that order) that sees it.
    fn initial_poses(&self, pairs: &[ViewPair]) -> Result<(Vec<Pose>, Vec<Pose>)> {
        let n_views = self.views.len();
        let mut rng = Mt19937::new(0);
        let views_ordered = numpy_permutation(&mut rng, n_views);
        let objects_ordered = numpy_permutation(&mut rng, self.objects.len());
        let view_index: BTreeMap<u32, usize> = self
            .views
            .iter()
            .enumerate()
            .map(|(i, (id, _))| (*id, i))
            .collect();
        // (v1, v2) -> T_C1C2 for the pairs between this group's views.
        let relative: BTreeMap<(usize, usize), Pose> = pairs
            .iter()
            .filter_map(|p| {
                Some((
                    (*view_index.get(&p.view1)?, *view_index.get(&p.view2)?),
                    p.camera1_from_camera2,
                ))
            })
            .collect();
        let mut world_from_camera: Vec<Option<Pose>> = vec![None; n_views];
        if let Some(&first) = views_ordered.first() {
            world_from_camera[first] = Some(Pose::identity());
        }
        for _ in 0..INIT_PASSES {
            for &v1 in &views_ordered {
                if world_from_camera[v1].is_some() {
                    continue;
                }
                // T_WC1 = T_WC2 T_C2C1, from a pair (v1, v2).
                let found = views_ordered.iter().find_map(|&v2| {
                    let world_from_camera2 = world_from_camera[v2]?;
                    let camera1_from_camera2 = relative.get(&(v1, v2))?;
                    Some(world_from_camera2.compose(&camera1_from_camera2.inverse()))
                });
                world_from_camera[v1] = found;
            }
        }
        let world_from_camera = world_from_camera
            .iter()
            .zip(&self.views)
            .map(|(pose, (view_id, _))| {
                pose.ok_or_else(|| {
                    invalid(&format!(
                        "view {view_id} cannot be placed from the accepted view pairs"
                    ))
                })
            })
            .collect::<Result<Vec<Pose>>>()?;
        let mut world_from_object = vec![None; self.objects.len()];
        for &object in &objects_ordered {
            for &view in &views_ordered {
                let seen = self
                    .observations
                    .iter()
                    .rev()
                    .find(|o| o.object == object && o.view == view);
                if let Some(observation) = seen {
                    world_from_object[object] =
                        Some(world_from_camera[view].compose(&observation.camera_from_object));
                    break;
                }
            }
        }
        let world_from_object = world_from_object
            .into_iter()
            .map(|pose| pose.ok_or_else(|| invalid("an object no view of the group sees")))
            .collect::<Result<Vec<Pose>>>()?;
        Ok((world_from_object, world_from_camera))
    }

    fn object_pose(&self, params: &DVector<f64>, object: usize) -> Option<Pose> {
        pose_from9(params.rows(9 * object, 9).as_slice())
    }

    fn camera_from_world(&self, params: &DVector<f64>, view: usize) -> Option<Pose> {
        pose_from9(params.rows(9 * (self.objects.len() + view), 9).as_slice())
    }

    /// The projections `ŷ` of an observation's corners at the current poses.
    fn predicted(&self, params: &DVector<f64>, observation: &Observation) -> Option<[[f64; 2]; 8]> {
        let camera_from_object = self
            .camera_from_world(params, observation.view)?
            .compose(&self.object_pose(params, observation.object)?);
        let k = &self.views[observation.view].1;
        Some(
            self.objects[observation.object]
                .corners_m
                .map(|x| k.project(&camera_from_object.transform_point(&x))),
        )
    }

    /// `r = y - ŷ` for every observation, corner and coordinate, where `y` projects the
    /// candidate's corners under its symmetry that reprojects nearest (chosen anew at
    /// every evaluation), and the truncated cost `mean(min(r², 25))`. `None` when a pose
    /// is degenerate.
    fn errors(&self, params: &DVector<f64>) -> Option<(DVector<f64>, f64)> {
        let mut errors = DVector::zeros(16 * self.observations.len());
        for (i, observation) in self.observations.iter().enumerate() {
            let predicted = self.predicted(params, observation)?;
            let geometry = self.objects[observation.object];
            let k = &self.views[observation.view].1;
            let mut best: Option<(f64, [[f64; 2]; 8])> = None;
            for symmetry in &geometry.symmetries {
                let pose = observation.camera_from_object.compose(symmetry);
                let observed = geometry
                    .corners_m
                    .map(|x| k.project(&pose.transform_point(&x)));
                let mean = observed
                    .iter()
                    .zip(&predicted)
                    .map(|(a, b)| (a[0] - b[0]).hypot(a[1] - b[1]))
                    .sum::<f64>()
                    / 8.0;
                if best.is_none_or(|(value, _)| mean < value) {
                    best = Some((mean, observed));
                }
            }
            let (_, observed) = best?;
            for (corner, (y, y_hat)) in observed.iter().zip(&predicted).enumerate() {
                errors[16 * i + 2 * corner] = y[0] - y_hat[0];
                errors[16 * i + 2 * corner + 1] = y[1] - y_hat[1];
            }
        }
        if !errors.iter().all(|e| e.is_finite()) {
            return None;
        }
        let cost = errors
            .iter()
            .map(|e| (e * e).min(TRUNCATION_PX2))
            .sum::<f64>()
            / errors.len().max(1) as f64;
        Some((errors, cost))
    }

    /// `∂ŷ/∂θ` over the first `n_free` parameters, by central differences. Each
    /// observation depends on its object's 9 values and its camera's 9.
    fn jacobian(&self, params: &DVector<f64>, n_free: usize) -> DMatrix<f64> {
        let mut jacobian = DMatrix::zeros(16 * self.observations.len(), n_free);
        let mut probe = params.clone();
        for (i, observation) in self.observations.iter().enumerate() {
            let object_start = 9 * observation.object;
            let camera_start = 9 * (self.objects.len() + observation.view);
            for column in (object_start..object_start + 9).chain(camera_start..camera_start + 9) {
                if column >= n_free {
                    continue;
                }
                let value = params[column];
                probe[column] = value + DIFFERENCE_STEP;
                let plus = self.predicted(&probe, observation);
                probe[column] = value - DIFFERENCE_STEP;
                let minus = self.predicted(&probe, observation);
                probe[column] = value;
                if let (Some(plus), Some(minus)) = (plus, minus) {
                    for corner in 0..8 {
                        for xy in 0..2 {
                            jacobian[(16 * i + 2 * corner + xy, column)] =
                                (plus[corner][xy] - minus[corner][xy]) / (2.0 * DIFFERENCE_STEP);
                        }
                    }
                }
            }
        }
        jacobian
    }
}

fn invalid(reason: &str) -> Error {
    Error::Invalid {
        what: "multi-view bundle adjustment".into(),
        reason: reason.into(),
    }
}

/// A pose as CosyPose's 9-vector: rotation column 0, column 1, translation.
fn pose9(pose: &Pose) -> [f64; 9] {
    let r = &pose.rotation;
    let t = &pose.translation_m;
    [
        r[(0, 0)],
        r[(1, 0)],
        r[(2, 0)],
        r[(0, 1)],
        r[(1, 1)],
        r[(2, 1)],
        t.x,
        t.y,
        t.z,
    ]
}

/// The pose of a 9-vector, its rotation by Gram-Schmidt; `None` when degenerate.
fn pose_from9(values: &[f64]) -> Option<Pose> {
    let rotation = rotation_from_6d(
        [values[0], values[1], values[2]],
        [values[3], values[4], values[5]],
    )
    .ok()?;
    Some(Pose {
        rotation,
        translation_m: Vector3::new(values[6], values[7], values[8]),
    })
}

/// `RandomState.permutation(n)` continuing on `rng`.
pub(crate) fn numpy_permutation(rng: &mut Mt19937, n: usize) -> Vec<usize> {
    let mut values: Vec<usize> = (0..n).collect();
    numpy_shuffle(rng, &mut values);
    values
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nine_vectors_round_trip() {
        let pose = Pose {
            rotation: *nalgebra::Rotation3::from_euler_angles(0.3, -1.1, 2.0).matrix(),
            translation_m: Vector3::new(0.1, -0.2, 0.7),
        };
        let back = pose_from9(&pose9(&pose)).expect("a rotation");
        assert!((back.rotation - pose.rotation).amax() < 1e-12);
        assert_eq!(back.translation_m, pose.translation_m);
        assert!(pose_from9(&[0.0; 9]).is_none());
    }

    #[test]
    fn numpy_permutation_of_random_state_0() {
        // np.random.RandomState(0).permutation(10) == [2, 8, 4, 9, 1, 6, 7, 3, 0, 5]
        let mut rng = Mt19937::new(0);
        assert_eq!(
            numpy_permutation(&mut rng, 10),
            [2, 8, 4, 9, 1, 6, 7, 3, 0, 5]
        );
    }
}
