//! posed: CosyPose 6D object pose estimation at the edge.
//!
//! The library behind the `posed` binary: BOP datasets and object models ([`bop`]),
//! evaluation with the metrics CosyPose and the BOP toolkit report ([`eval`]), synthetic
//! predictions for demos and benches ([`synth`]), and the command line ([`cli`]).
//! Units inside are metres; BOP files are millimetres and are converted on reading.

pub mod bench;
pub mod bop;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod engines;
mod error;
pub mod eval;
pub mod multiview;
pub mod overlay;
pub mod pipeline;
pub mod predict;
pub mod render;
pub mod source;
pub mod synth;

pub use error::{Error, Result};
