//! BOP dataset readers and writers (docs/bop_datasets_format.md of the BOP toolkit).
//!
//! Files hold millimetres; everything returned here is in metres. Every parse error names
//! the file, the entry (scene / image / object id, CSV line, PLY element) and what was
//! expected.

pub mod dataset;
pub mod images;
mod json;
pub mod models;
pub mod ply;
pub mod results;
pub mod scene;
pub mod targets;

#[cfg(test)]
mod reader_tests;
