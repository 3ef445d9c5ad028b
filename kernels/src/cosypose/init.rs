//! Initial poses from detection boxes (spec A.2).

use nalgebra::{Matrix3, Vector3};

use super::BoxXyxy;
use crate::{Intrinsics, KernelError, Pose};

/// The BOP20 canonical rotation: object +x toward the camera, +y to image right, +z up.
pub const ZUP_ROTATION: [f64; 9] = [0.0, 1.0, 0.0, 0.0, 0.0, -1.0, -1.0, 0.0, 0.0];

/// x and y at depth `z` such that the object origin projects onto the box centre
/// (CosyPose uses fx, fy, cx, cy only; skew is ignored).
fn centre_translation(bbox: &BoxXyxy, k: &Intrinsics, z: f64) -> Vector3<f64> {
    let (fx, fy, cx, cy) = (k.k[(0, 0)], k.k[(1, 1)], k.k[(0, 2)], k.k[(1, 2)]);
    let uc = (bbox[0] + bbox[2]) / 2.0;
    let vc = (bbox[1] + bbox[3]) / 2.0;
    Vector3::new((uc - cx) * z / fx, (vc - cy) * z / fy, z)
}

/// The paper setting (`TCO_init_from_boxes`, z range (1, 1)): `R = I`, `z = 1 m`, the
/// origin projected onto the box centre.
pub fn init_pose_z1(bbox: &BoxXyxy, k: &Intrinsics) -> Pose {
    Pose {
        rotation: Matrix3::identity(),
        translation_m: centre_translation(bbox, k, 1.0),
    }
}

/// The BOP20 setting (`TCO_init_from_boxes_zup_autodepth`): [`ZUP_ROTATION`], the origin
/// on the box centre, and the depth at which the model points' camera-frame extent
/// matches the box: `z = (fx dx3d / (x2 - x1 + 1) + fy dy3d / (y2 - y1 + 1)) / 2` with the
/// extents measured at z = 1 m.
pub fn init_pose_zup_autodepth(
    bbox: &BoxXyxy,
    k: &Intrinsics,
    points_m: &[[f32; 3]],
) -> Result<Pose, KernelError> {
    if points_m.is_empty() {
        return Err(KernelError::Empty {
            what: "model points for auto-depth",
        });
    }
    let rotation = Matrix3::from_row_slice(&ZUP_ROTATION);
    let at_one = centre_translation(bbox, k, 1.0);
    let (mut min, mut max) = ([f64::INFINITY; 2], [f64::NEG_INFINITY; 2]);
    for p in points_m {
        let q = rotation * Vector3::new(f64::from(p[0]), f64::from(p[1]), f64::from(p[2])) + at_one;
        for axis in 0..2 {
            min[axis] = min[axis].min(q[axis]);
            max[axis] = max[axis].max(q[axis]);
        }
    }
    let (dx, dy) = (max[0] - min[0], max[1] - min[1]);
    let box_w = bbox[2] - bbox[0] + 1.0;
    let box_h = bbox[3] - bbox[1] + 1.0;
    let z = 0.5 * (k.k[(0, 0)] * dx / box_w + k.k[(1, 1)] * dy / box_h);
    if !z.is_finite() || z <= 0.0 {
        return Err(KernelError::InvalidValue {
            what: "auto-depth",
            reason: "the box or the model points give no positive finite depth",
        });
    }
    Ok(Pose {
        rotation,
        translation_m: centre_translation(bbox, k, z),
    })
}
