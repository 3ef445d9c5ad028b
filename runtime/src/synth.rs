//! Synthetic pose estimates from a dataset's ground truth: each instance perturbed by a
//! random rotation and translation, some instances missed, some false positives added.
//! Deterministic for a seed (ChaCha8), so a shipped file can be regenerated bit for bit.
//!
//! This is demo and bench input, not a pose estimator: it lets `posed eval` run on the
//! bundled data before the networks exist, and gives the eval benches YCB-Video-sized input.

use nalgebra::{Rotation3, Unit, Vector3};
use posed_kernels::Pose;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::bop::dataset::BopDataset;
use crate::bop::results::Estimate;

/// How estimates are made from ground truth.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SynthOptions {
    /// Random seed.
    pub seed: u64,
    /// Largest rotation perturbation, degrees (the angle is drawn as `max * u^2`, so most
    /// estimates are good and a few are poor, as with a real method).
    pub max_rotation_deg: f64,
    /// Largest translation perturbation, millimetres (drawn as `max * u^2`).
    pub max_translation_mm: f64,
    /// Probability that an instance gets no estimate.
    pub miss_rate: f64,
    /// Expected number of false positives per image.
    pub false_positives_per_image: f64,
}

impl Default for SynthOptions {
    fn default() -> Self {
        Self {
            seed: 2020,
            max_rotation_deg: 20.0,
            max_translation_mm: 40.0,
            miss_rate: 0.05,
            false_positives_per_image: 0.3,
        }
    }
}

/// Makes estimates for every image of the dataset, in (scene, image, instance) order.
pub fn synth_estimates(dataset: &BopDataset, options: &SynthOptions) -> Vec<Estimate> {
    let mut rng = ChaCha8Rng::seed_from_u64(options.seed);
    let obj_ids: Vec<u32> = dataset.models.objects.keys().copied().collect();
    let mut estimates = Vec::new();
    for (scene_id, scene) in &dataset.scenes {
        for (im_id, image) in &scene.images {
            for instance in &image.gt {
                if rng.random::<f64>() < options.miss_rate {
                    continue;
                }
                let severity_rotation = rng.random::<f64>().powi(2);
                let severity_translation = rng.random::<f64>().powi(2);
                let delta = random_pose(
                    &mut rng,
                    options.max_rotation_deg.to_radians() * severity_rotation,
                    options.max_translation_mm * 1e-3 * severity_translation,
                );
                let gt = &instance.camera_from_object;
                // Rotation about the object origin in the camera frame, then a shift.
                let camera_from_object = Pose {
                    rotation: delta.rotation * gt.rotation,
                    translation_m: gt.translation_m + delta.translation_m,
                };
                let noise = 0.1 * rng.random::<f64>();
                let score = (1.0 - 0.5 * (severity_rotation + severity_translation) + noise)
                    .clamp(0.0, 1.0);
                estimates.push(Estimate {
                    scene_id: *scene_id,
                    im_id: *im_id,
                    obj_id: instance.obj_id,
                    score,
                    camera_from_object,
                    time_s: -1.0,
                });
            }
            // False positives: a random object near a random annotated instance, 20 to
            // 40 cm away, with a low score.
            let mut expected = options.false_positives_per_image;
            while !image.gt.is_empty() && !obj_ids.is_empty() && rng.random::<f64>() < expected {
                expected -= 1.0;
                let anchor = &image.gt[rng.random_range(0..image.gt.len())].camera_from_object;
                let obj_id = obj_ids[rng.random_range(0..obj_ids.len())];
                let offset = random_unit(&mut rng) * rng.random_range(0.2..0.4);
                let angle_rad = std::f64::consts::PI * rng.random::<f64>();
                let rotation = random_pose(&mut rng, angle_rad, 0.0).rotation;
                estimates.push(Estimate {
                    scene_id: *scene_id,
                    im_id: *im_id,
                    obj_id,
                    score: 0.5 * rng.random::<f64>(),
                    camera_from_object: Pose {
                        rotation: rotation * anchor.rotation,
                        translation_m: anchor.translation_m + offset,
                    },
                    time_s: -1.0,
                });
            }
        }
    }
    estimates
}

/// A rotation of `angle_rad` about a uniform random axis and a translation of `length_m`
/// in a uniform random direction.
fn random_pose(rng: &mut ChaCha8Rng, angle_rad: f64, length_m: f64) -> Pose {
    let axis = Unit::new_normalize(random_unit(rng));
    Pose {
        rotation: *Rotation3::from_axis_angle(&axis, angle_rad).matrix(),
        translation_m: random_unit(rng) * length_m,
    }
}

/// A uniform random unit vector (rejection sampling in the unit ball).
fn random_unit(rng: &mut ChaCha8Rng) -> Vector3<f64> {
    loop {
        let v = Vector3::new(
            rng.random_range(-1.0..1.0),
            rng.random_range(-1.0..1.0),
            rng.random_range(-1.0..1.0),
        );
        let norm = v.norm();
        if (1e-3..=1.0).contains(&norm) {
            return v / norm;
        }
    }
}
