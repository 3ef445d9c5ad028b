//! `test_targets_bop19.json`: which (image, object) pairs are evaluated, and how many
//! instances of the object are to be found.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::json::read_json;
use crate::Result;

/// One BOP19 target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub struct Target {
    /// Scene id.
    pub scene_id: u32,
    /// Image id.
    pub im_id: u32,
    /// Object id.
    pub obj_id: u32,
    /// Instances of the object to be found in the image.
    pub inst_count: u32,
}

/// Reads a BOP19 targets file (a JSON list).
pub fn read_targets(path: &Path) -> Result<Vec<Target>> {
    read_json(path)
}
