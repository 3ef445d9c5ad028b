//! CosyPose's single-view inference (COSYPOSE_SPEC.md section A): initial poses from
//! boxes or given poses, then coarse and refiner iterations, each one a crop of the camera
//! image around the current estimate, a rendering at that estimate, one network pass over
//! the batch and the image-space pose update.
//!
//! - [`points`]: the 2,000 model points per object that place every crop.
//! - [`single_view`]: [`SingleViewPipeline`], the loop, batched over a frame's objects,
//!   every buffer allocated when it is built (a warm frame allocates nothing outside the
//!   network backend); its geometry on the CPU, or on a CUDA device (`gpu.rs`,
//!   [`SingleViewPipeline::with_cuda`]).
//! - [`detections`]: the detector network's outputs as boxes, and the filters of spec A.1
//!   (threshold, one instance per class, label list).
//! - [`ConstantPoseNetwork`]: a pose network that always gives the same answer (the
//!   identity: "no change"), to measure or check everything but the network.

pub mod detections;
#[cfg(feature = "cuda")]
mod gpu;
pub mod points;
pub mod single_view;

#[cfg(test)]
mod tests;

pub use detections::{DetectionFilter, Detector};
pub use points::CropPoints;
pub use single_view::{
    open_compute_device, ComputeDevice, ConstantPoseNetwork, ImageView, InitScheme, Iteration,
    ObjectEstimate, PipelineOptions, PoseNetworks, RecordingPoseNetwork, SingleViewPipeline, Stage,
    StageTimings, MAX_BATCH_SIZE,
};

/// The label CosyPose gives BOP object `obj_id` (`obj_000001`).
pub fn object_label(obj_id: u32) -> String {
    format!("obj_{obj_id:06}")
}

/// The BOP object id of a label: `obj_000001`, or with a dataset prefix as happypose
/// writes them (`ycbv-obj_000001`).
pub fn obj_id_of_label(label: &str) -> Option<u32> {
    let digits = &label[label.rfind("obj_")? + 4..];
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}
