//! Reading sysfs attributes: numbers kept open and re-read without allocating, small
//! text attributes, folders listed in order.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// One sysfs attribute holding a decimal integer, kept open: sysfs regenerates the value
/// on every read from offset 0.
#[derive(Debug)]
pub(super) struct SysfsNumber {
    pub(super) path: PathBuf,
    file: File,
}

impl SysfsNumber {
    pub(super) fn open(path: PathBuf) -> Result<Self> {
        let file = File::open(&path).map_err(|source| Error::Io {
            path: path.clone(),
            source,
        })?;
        Ok(Self { path, file })
    }

    /// Reads the value; no allocation.
    pub(super) fn read(&self) -> Result<i64> {
        let mut buffer = [0u8; 32];
        let n = self
            .file
            .read_at(&mut buffer, 0)
            .map_err(|source| Error::Io {
                path: self.path.clone(),
                source,
            })?;
        parse_integer(&buffer[..n]).ok_or_else(|| Error::Sensor {
            path: self.path.clone(),
            detail: format!(
                "expected a decimal integer, found {:?}",
                String::from_utf8_lossy(&buffer[..n])
            ),
        })
    }
}

/// Parses an ASCII decimal integer with optional sign and surrounding whitespace.
pub(super) fn parse_integer(bytes: &[u8]) -> Option<i64> {
    std::str::from_utf8(bytes).ok()?.trim().parse().ok()
}

/// Lists a folder's entries sorted by name; a folder that does not exist has none.
pub(super) fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(Error::Io {
                path: dir.to_owned(),
                source,
            })
        }
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .collect();
    paths.sort();
    Ok(paths)
}

/// A small text attribute, trimmed; None when absent or unreadable.
pub(super) fn read_text(path: &Path) -> Option<String> {
    let text = std::fs::read(path).ok()?;
    if text.len() > 256 {
        return None;
    }
    Some(String::from_utf8_lossy(&text).trim().to_owned())
}
