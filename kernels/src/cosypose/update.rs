//! The network output to a pose update (spec A.3): `o = (a1, a2, vx, vy, vz)`.

use nalgebra::{Matrix3, Vector3};

use crate::{Intrinsics, KernelError, Pose};

/// Below this norm a 6D column (or their cross product) has no direction.
const MIN_NORM: f64 = 1e-12;

/// The rotation of a 6D representation (Zhou et al.): `e1 = a1/|a1|`,
/// `e3 = (e1 x a2)/|e1 x a2|`, `e2 = e3 x e1`, and the columns of the result are
/// `e1, e2, e3`. An `a1` of zero length, or `a2` parallel to it, has no rotation.
pub fn rotation_from_6d(a1: [f64; 3], a2: [f64; 3]) -> Result<Matrix3<f64>, KernelError> {
    let a1 = Vector3::from(a1);
    let a2 = Vector3::from(a2);
    if !(a1.iter().chain(a2.iter()).all(|v| v.is_finite())) {
        return Err(KernelError::NotFinite {
            what: "6D rotation output",
        });
    }
    let n1 = a1.norm();
    if n1 < MIN_NORM {
        return Err(KernelError::InvalidValue {
            what: "6D rotation output",
            reason: "the first column a1 has zero length",
        });
    }
    let e1 = a1 / n1;
    let cross = e1.cross(&a2);
    let n3 = cross.norm();
    if n3 < MIN_NORM {
        return Err(KernelError::InvalidValue {
            what: "6D rotation output",
            reason: "the second column a2 is parallel to a1",
        });
    }
    let e3 = cross / n3;
    let e2 = e3.cross(&e1);
    Ok(Matrix3::from_columns(&[e1, e2, e3]))
}

/// Applies one network output to `camera_from_object` (CosyPose's
/// `apply_imagespace_predictions` with `K = k_crop`):
/// `R+ = dR R`, `z+ = vz z`, `x+ = (vx / fx' + x / z) z+`, `y+ = (vy / fy' + y / z) z+`.
pub fn apply_update(
    camera_from_object: &Pose,
    output: &[f32; 9],
    k_crop: &Intrinsics,
) -> Result<Pose, KernelError> {
    let o = output.map(f64::from);
    let delta = rotation_from_6d([o[0], o[1], o[2]], [o[3], o[4], o[5]])?;
    let (vx, vy, vz) = (o[6], o[7], o[8]);
    if !(vx.is_finite() && vy.is_finite() && vz.is_finite()) {
        return Err(KernelError::NotFinite {
            what: "translation update",
        });
    }
    let t = camera_from_object.translation_m;
    let (x, y, z) = (t.x, t.y, t.z);
    let z_new = vz * z;
    let x_new = (vx / k_crop.k[(0, 0)] + x / z) * z_new;
    let y_new = (vy / k_crop.k[(1, 1)] + y / z) * z_new;
    Ok(Pose {
        rotation: delta * camera_from_object.rotation,
        translation_m: Vector3::new(x_new, y_new, z_new),
    })
}
