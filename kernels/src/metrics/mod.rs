//! Pose-error metrics and their summaries, CPU reference.
//!
//! - [`pose_error`]: ADD, ADD-S, MSSD, MSPD, rotation and translation error for one
//!   (ground truth, estimate) pair, as the BOP toolkit's `pose_error.py` and CosyPose's
//!   `lib3d/distances.py` define them.
//! - [`auc`]: the YCB-Video toolbox VOCap area under the accuracy-threshold curve.
//! - [`matching`]: greedy one-to-one matching of scored estimates to ground truth.
//! - [`average_precision`]: scikit-learn's `average_precision_score`.

pub mod auc;
pub mod average_precision;
pub mod matching;
pub mod nearest;
pub mod pose_error;
pub mod vsd;

pub use pose_error::{rotation_error_deg, translation_error_m, PoseErrorModel};
