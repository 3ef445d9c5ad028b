use nalgebra::{Matrix3, Vector3};

/// A rigid transform `x_to = rotation * x_from + translation_m`.
///
/// Name values by the frames they map between: `camera_from_object`, `world_from_camera`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pose {
    /// Rotation matrix (orthonormal, det +1).
    pub rotation: Matrix3<f64>,
    /// Translation in metres.
    pub translation_m: Vector3<f64>,
}

impl Pose {
    /// The identity transform.
    pub fn identity() -> Self {
        Self {
            rotation: Matrix3::identity(),
            translation_m: Vector3::zeros(),
        }
    }

    /// Builds a pose from a row-major rotation (as in BOP files) and a translation in metres.
    pub fn from_row_major(rotation: &[f64; 9], translation_m: [f64; 3]) -> Self {
        Self {
            rotation: Matrix3::from_row_slice(rotation),
            translation_m: Vector3::from(translation_m),
        }
    }

    /// The rotation as 9 row-major values (BOP's layout).
    pub fn rotation_row_major(&self) -> [f64; 9] {
        let r = &self.rotation;
        [
            r[(0, 0)],
            r[(0, 1)],
            r[(0, 2)],
            r[(1, 0)],
            r[(1, 1)],
            r[(1, 2)],
            r[(2, 0)],
            r[(2, 1)],
            r[(2, 2)],
        ]
    }

    /// Applies the transform to a point.
    #[inline]
    pub fn transform_point(&self, point: &[f64; 3]) -> Vector3<f64> {
        self.rotation * Vector3::from(*point) + self.translation_m
    }

    /// `self * other`: first `other`, then `self`.
    pub fn compose(&self, other: &Pose) -> Pose {
        Pose {
            rotation: self.rotation * other.rotation,
            translation_m: self.rotation * other.translation_m + self.translation_m,
        }
    }

    /// The inverse transform (uses the transpose of the rotation).
    pub fn inverse(&self) -> Pose {
        let rotation = self.rotation.transpose();
        Pose {
            rotation,
            translation_m: -(rotation * self.translation_m),
        }
    }

    /// Largest deviation of `R^T R` from the identity, and the determinant: how far the
    /// rotation is from a proper rotation.
    pub fn rotation_defect(&self) -> (f64, f64) {
        let deviation = (self.rotation.transpose() * self.rotation - Matrix3::identity()).amax();
        (deviation, self.rotation.determinant())
    }
}

/// Pinhole camera intrinsics `K = [[fx, s, cx], [0, fy, cy], [0, 0, 1]]` in pixels, with
/// the centre of pixel (u, v) at integer coordinates (u, v).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Intrinsics {
    /// The 3x3 matrix K.
    pub k: Matrix3<f64>,
}

impl Intrinsics {
    /// Builds intrinsics from 9 row-major values (BOP's `cam_K`).
    pub fn from_row_major(k: &[f64; 9]) -> Self {
        Self {
            k: Matrix3::from_row_slice(k),
        }
    }

    /// Projects a camera-frame point: `[su, sv, s] = K X`, `(u, v) = (su / s, sv / s)`.
    /// No clamping of `s`, exactly as the BOP toolkit's `project_pts`.
    #[inline]
    pub fn project(&self, point_camera_m: &Vector3<f64>) -> [f64; 2] {
        let p = self.k * point_camera_m;
        [p.x / p.z, p.y / p.z]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inverse_composes_to_identity() {
        let angle = 0.7_f64;
        let pose = Pose {
            rotation: *nalgebra::Rotation3::from_axis_angle(&Vector3::y_axis(), angle).matrix(),
            translation_m: Vector3::new(0.1, -0.2, 0.9),
        };
        let identity = pose.compose(&pose.inverse());
        assert!((identity.rotation - Matrix3::identity()).amax() < 1e-15);
        assert!(identity.translation_m.amax() < 1e-15);
    }

    #[test]
    fn row_major_round_trip() {
        let r = [0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0];
        let pose = Pose::from_row_major(&r, [1.0, 2.0, 3.0]);
        assert_eq!(pose.rotation_row_major(), r);
        // Row-major: the first row maps x_object to x_camera.
        let p = pose.transform_point(&[1.0, 0.0, 0.0]);
        assert_eq!([p.x, p.y, p.z], [1.0, 3.0, 3.0]);
    }

    #[test]
    fn projection_puts_the_principal_point_on_the_optical_axis() {
        let k =
            Intrinsics::from_row_major(&[1000.0, 0.0, 320.0, 0.0, 1000.0, 240.0, 0.0, 0.0, 1.0]);
        assert_eq!(k.project(&Vector3::new(0.0, 0.0, 2.0)), [320.0, 240.0]);
        assert_eq!(k.project(&Vector3::new(0.1, -0.2, 1.0)), [420.0, 40.0]);
    }
}
