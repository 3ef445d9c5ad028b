//! Symmetry transforms of an object, as BOP annotates them and as the two consumers
//! sample them: the BOP toolkit (continuous symmetries every `max_sym_disc_step` rad,
//! 315 samples for 0.01) and CosyPose (64 samples, positive unit axes through the origin).
//!
//! A symmetry `S` acts on the object side: `camera_from_object * S` looks the same as
//! `camera_from_object`.

use nalgebra::{Rotation3, Unit, Vector3};

use crate::{KernelError, Pose};

/// A continuous rotational symmetry: any rotation about `axis` through `offset_m`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ContinuousSymmetry {
    /// Axis direction in the object frame (any length above zero).
    pub axis: [f64; 3],
    /// A point on the axis, metres, object frame.
    pub offset_m: [f64; 3],
}

/// An object's annotated symmetries (BOP `models_info.json`), in metres.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ObjectSymmetries {
    /// Discrete symmetries, excluding the identity.
    pub discrete: Vec<Pose>,
    /// Continuous symmetries.
    pub continuous: Vec<ContinuousSymmetry>,
}

impl ObjectSymmetries {
    /// True when the object has any symmetry (CosyPose's `is_symmetric`).
    pub fn is_symmetric(&self) -> bool {
        !self.discrete.is_empty() || !self.continuous.is_empty()
    }
}

/// The BOP toolkit's `max_sym_disc_step` used by the BOP19 metrics.
pub const BOP_MAX_SYM_DISC_STEP: f64 = 0.01;

/// Samples per continuous symmetry in CosyPose (`n_symmetries_continuous`).
pub const COSYPOSE_CONTINUOUS_SAMPLES: usize = 64;

/// The BOP toolkit's symmetry set (`misc.get_symmetry_transformations`): the identity and
/// the discrete symmetries, each composed with every sample of the continuous symmetries,
/// `R = Rc Rd`, `t = Rc td + tc`, with `ceil(pi / max_sym_disc_step)` samples at angles
/// `2 pi k / n`, `k = 0..n` about the axis through `offset` (`tc = offset - Rc offset`).
pub fn bop_symmetry_transforms(
    symmetries: &ObjectSymmetries,
    max_sym_disc_step_rad: f64,
) -> Result<Vec<Pose>, KernelError> {
    if !(max_sym_disc_step_rad.is_finite() && max_sym_disc_step_rad > 0.0) {
        return Err(KernelError::NotFinite {
            what: "max_sym_disc_step",
        });
    }
    let samples_per_axis = (std::f64::consts::PI / max_sym_disc_step_rad).ceil() as usize;
    let mut continuous = Vec::new();
    for symmetry in &symmetries.continuous {
        let axis = unit_axis(&symmetry.axis)?;
        let offset = Vector3::from(symmetry.offset_m);
        for k in 0..samples_per_axis {
            let angle = 2.0 * std::f64::consts::PI * k as f64 / samples_per_axis as f64;
            let rotation = *Rotation3::from_axis_angle(&axis, angle).matrix();
            continuous.push(Pose {
                rotation,
                translation_m: offset - rotation * offset,
            });
        }
    }
    Ok(combine(symmetries, &continuous))
}

/// CosyPose's symmetry set (`lib3d/symmetries.py::make_bop_symmetries`): continuous
/// symmetries must pass through the origin with a positive unit axis (`axis.sum() == 1`)
/// and are sampled at `2 pi n / n_samples`, `n = 0..n_samples`.
pub fn cosypose_symmetry_transforms(
    symmetries: &ObjectSymmetries,
    n_samples: usize,
) -> Result<Vec<Pose>, KernelError> {
    let mut continuous = Vec::new();
    for symmetry in &symmetries.continuous {
        if symmetry.offset_m.iter().any(|v| v.abs() > 1e-8) {
            return Err(KernelError::UnsupportedContinuousSymmetry {
                reason: "offset must be zero",
            });
        }
        if symmetry.axis.iter().sum::<f64>() != 1.0 {
            return Err(KernelError::UnsupportedContinuousSymmetry {
                reason: "axis must be a positive unit coordinate axis (components sum to 1)",
            });
        }
        let axis = unit_axis(&symmetry.axis)?;
        for n in 0..n_samples {
            let angle = 2.0 * std::f64::consts::PI * n as f64 / n_samples as f64;
            continuous.push(Pose {
                rotation: *Rotation3::from_axis_angle(&axis, angle).matrix(),
                translation_m: Vector3::zeros(),
            });
        }
    }
    Ok(combine(symmetries, &continuous))
}

fn unit_axis(axis: &[f64; 3]) -> Result<Unit<Vector3<f64>>, KernelError> {
    let axis = Vector3::from(*axis);
    if !axis.iter().all(|v| v.is_finite()) {
        return Err(KernelError::NotFinite {
            what: "symmetry axis",
        });
    }
    Unit::try_new(axis, 1e-12).ok_or(KernelError::ZeroAxis)
}

/// `{Sc * Sd}` for Sd in identity + discrete, Sc in the continuous samples (or the
/// discrete set alone when there are none).
fn combine(symmetries: &ObjectSymmetries, continuous: &[Pose]) -> Vec<Pose> {
    let discrete = std::iter::once(Pose::identity()).chain(symmetries.discrete.iter().copied());
    if continuous.is_empty() {
        return discrete.collect();
    }
    discrete
        .flat_map(|sd| continuous.iter().map(move |sc| sc.compose(&sd)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn can() -> ObjectSymmetries {
        ObjectSymmetries {
            discrete: vec![],
            continuous: vec![ContinuousSymmetry {
                axis: [0.0, 0.0, 1.0],
                offset_m: [0.0; 3],
            }],
        }
    }

    fn clamp() -> ObjectSymmetries {
        ObjectSymmetries {
            discrete: vec![Pose::from_row_major(
                &[1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, -1.0],
                [0.0; 3],
            )],
            continuous: vec![],
        }
    }

    #[test]
    fn bop_set_sizes() {
        assert_eq!(bop_symmetry_transforms(&can(), 0.01).unwrap().len(), 315);
        assert_eq!(bop_symmetry_transforms(&clamp(), 0.01).unwrap().len(), 2);
        let none = ObjectSymmetries::default();
        assert_eq!(bop_symmetry_transforms(&none, 0.01).unwrap().len(), 1);
        let both = ObjectSymmetries {
            discrete: clamp().discrete,
            continuous: can().continuous,
        };
        assert_eq!(bop_symmetry_transforms(&both, 0.01).unwrap().len(), 630);
        assert_eq!(cosypose_symmetry_transforms(&both, 64).unwrap().len(), 128);
    }

    #[test]
    fn continuous_samples_rotate_about_the_offset_axis() {
        let symmetries = ObjectSymmetries {
            discrete: vec![],
            continuous: vec![ContinuousSymmetry {
                axis: [0.0, 0.0, 2.0],
                offset_m: [0.1, 0.0, 0.0],
            }],
        };
        let transforms = bop_symmetry_transforms(&symmetries, 0.5).unwrap();
        assert_eq!(transforms.len(), 7);
        for s in &transforms {
            // Points on the axis are fixed.
            let p = s.transform_point(&[0.1, 0.0, 0.3]);
            assert!((p - Vector3::new(0.1, 0.0, 0.3)).norm() < 1e-15);
        }
    }

    #[test]
    fn cosypose_rejects_what_it_cannot_sample() {
        let mut symmetries = can();
        symmetries.continuous[0].offset_m = [0.0, 0.01, 0.0];
        assert!(cosypose_symmetry_transforms(&symmetries, 64).is_err());
        let mut symmetries = can();
        symmetries.continuous[0].axis = [0.0, 0.0, -1.0];
        assert!(cosypose_symmetry_transforms(&symmetries, 64).is_err());
        let mut symmetries = can();
        symmetries.continuous[0].axis = [0.0, 0.0, 0.0];
        assert_eq!(
            bop_symmetry_transforms(&symmetries, 0.01),
            Err(KernelError::ZeroAxis)
        );
    }
}
