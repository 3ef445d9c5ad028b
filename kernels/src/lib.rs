//! posed-kernels: geometry and per-point / per-pixel compute.
//!
//! Everything here is a CPU reference implementation in plain safe Rust: the executable
//! specification that the CUDA kernels (added with the renderer) must match. Units are
//! metres and radians inside; poses map object-frame points into the camera frame
//! (OpenCV camera: x right, y down, z forward), written `camera_from_object`.
//!
//! Nothing in this crate reads files: callers hand in points, poses and symmetries.

pub mod alloc_count;
pub mod color;
pub mod cosypose;
#[cfg(feature = "cuda")]
pub mod cuda;
mod error;
pub mod metrics;
mod pose;
pub mod render;
pub mod symmetry;

pub use error::KernelError;
pub use pose::{Intrinsics, Pose};
