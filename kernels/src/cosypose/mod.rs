//! CosyPose's single-view geometry (COSYPOSE_SPEC.md A.2-A.3): initial poses from boxes,
//! the crop around the current estimate, its intrinsics, RoIAlign, and the pose update
//! from a network output. CPU reference implementations; units are metres and pixels,
//! pixel (i, j) has its centre at (x = j, y = i), boxes are (x1, y1, x2, y2).
//!
//! - [`init`]: `T_CO` from a detection box: the paper's z = 1 m scheme and BOP20's
//!   z-up + auto-depth scheme.
//! - [`crop`]: robust projection, the crop box (lambda = 1.4, the input image's aspect
//!   ratio), `K_crop`, and RoIAlign to 240 x 320 (sampling ratio 4, `aligned = False`).
//! - [`sample`]: the deterministic choice of 2,000 model points (numpy's legacy
//!   `RandomState(0).choice`, bit for bit).
//! - [`update`]: the 6D rotation (Gram-Schmidt on columns) and the image-space update
//!   `R+ = dR R`, `z+ = vz z`, `(x, y)` moved by `(vx, vy)` crop pixels.

pub mod crop;
pub mod init;
pub mod sample;
pub mod update;

#[cfg(test)]
mod tests;

/// A box (x1, y1, x2, y2) in pixels.
pub type BoxXyxy = [f64; 4];

/// Crop output height (rows) of every released CosyPose model.
pub const CROP_HEIGHT: usize = 240;
/// Crop output width (columns).
pub const CROP_WIDTH: usize = 320;
/// The crop's margin around the object's projection.
pub const CROP_SCALE: f64 = 1.4;
/// Depth below which projected points are clamped (avoids sign flips behind the camera).
pub const PROJECTION_MIN_DEPTH_M: f64 = 0.1;
/// Samples per output pixel along each axis in RoIAlign.
pub const ROI_ALIGN_SAMPLING_RATIO: usize = 4;
