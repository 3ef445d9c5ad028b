//! Typed JSON reading whose errors carry the JSON path of the bad field.

use std::path::Path;

use serde::de::DeserializeOwned;

use crate::{Error, Result};

/// Reads and deserialises a JSON file; a structural error names the path inside the
/// document (e.g. ``at `3[2].cam_t_m2c`: invalid length 2, expected an array of length 3``).
pub(crate) fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse_json(&bytes, path)
}

/// Deserialises JSON bytes; `path` only names the source in errors.
pub(crate) fn parse_json<T: DeserializeOwned>(bytes: &[u8], path: &Path) -> Result<T> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(&mut deserializer).map_err(|err| {
        let at = err.path().to_string();
        let inner = err.into_inner();
        let detail = if at == "." || at.is_empty() {
            inner.to_string()
        } else {
            format!("at `{at}`: {inner}")
        };
        Error::Json {
            path: path.to_path_buf(),
            detail,
        }
    })
}

/// A JSON error about a value that parsed but makes no sense (a non-rotation, a
/// negative diameter).
pub(crate) fn invalid(path: &Path, detail: String) -> Error {
    Error::Json {
        path: path.to_path_buf(),
        detail,
    }
}

/// Largest accepted deviation of `R^T R` from the identity for a rotation read from a
/// file (BOP files store about 8 to 17 significant digits).
pub(crate) const ROTATION_TOLERANCE: f64 = 1e-4;

/// Checks that a row-major 3x3 matrix is a proper rotation; returns a description of
/// the defect otherwise.
pub(crate) fn check_rotation(pose: &posed_kernels::Pose) -> std::result::Result<(), String> {
    let (deviation, determinant) = pose.rotation_defect();
    if deviation > ROTATION_TOLERANCE || (determinant - 1.0).abs() > 10.0 * ROTATION_TOLERANCE {
        return Err(format!(
            "expected a rotation matrix (R^T R = I, det R = 1); found |R^T R - I| = {deviation:.3e}, det R = {determinant:.6}"
        ));
    }
    Ok(())
}

/// Checks that every value is finite (serde_json already rejects NaN literals, but a
/// value like 1e999 overflows to infinity).
pub(crate) fn all_finite(values: &[f64]) -> bool {
    values.iter().all(|v| v.is_finite())
}
