//! BOP dataset readers and writers (docs/bop_datasets_format.md of the BOP toolkit), and
//! 2D-detection files in the BOP challenge's format ([`detections`]).
//!
//! Files hold millimetres; everything returned here is in metres. Every parse error names
//! the file, the entry (scene / image / object id, CSV line, PLY element) and what was
//! expected.

pub(crate) mod atomic;
pub mod dataset;
pub mod detections;
pub mod images;
mod json;
pub mod models;
pub mod ply;
pub mod results;
pub mod scene;
pub mod targets;

#[cfg(test)]
mod reader_tests;
