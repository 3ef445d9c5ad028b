//! Atomic file writes: the content goes to a temporary file beside the target, is synced,
//! then renamed onto it, so a crash or a failed write never leaves half a file and never
//! loses the previous one.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::{Error, Result};

/// Writes `path` through `fill`, atomically. On any error the temporary file is removed
/// and `path` is left as it was.
pub(crate) fn write_atomically(
    path: &Path,
    fill: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> Result<()> {
    let temporary = temporary_path(path);
    let result = (|| {
        let mut out = BufWriter::new(std::fs::File::create(&temporary)?);
        fill(&mut out)?;
        out.into_inner()
            .map_err(|err| err.into_error())?
            .sync_all()?;
        std::fs::rename(&temporary, path)
    })();
    result.map_err(|source| {
        let _ = std::fs::remove_file(&temporary);
        Error::Write {
            path: path.to_path_buf(),
            source,
        }
    })
}

/// `NAME.tmp-PID-N` beside `path`: unique per process and call, so concurrent writers of
/// the same file never share a temporary.
fn temporary_path(path: &Path) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(format!(
        ".tmp-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    path.with_file_name(name)
}

/// Checks, before hours of work, that [`write_atomically`] will be able to write `path`:
/// it is not a folder, and a file can be created beside it (the probe is removed). The
/// file itself is left as it is.
pub(crate) fn check_writable(path: &Path) -> Result<()> {
    let error = |source| Error::Write {
        path: path.to_path_buf(),
        source,
    };
    if path.is_dir() {
        return Err(error(std::io::Error::new(
            std::io::ErrorKind::IsADirectory,
            "it is a folder, not a file",
        )));
    }
    let probe = temporary_path(path);
    std::fs::File::create(&probe).map_err(error)?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writability_is_checked_without_touching_the_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("results.csv");
        check_writable(&file).expect("a new file in a folder");
        assert!(!file.exists());
        std::fs::write(&file, "old").expect("write");
        check_writable(&file).expect("an existing file");
        assert_eq!(std::fs::read_to_string(&file).expect("read"), "old");
        assert_eq!(std::fs::read_dir(dir.path()).expect("list").count(), 1);

        let missing = dir.path().join("no/such/folder/results.csv");
        let message = check_writable(&missing).expect_err("no folder").to_string();
        assert!(message.contains("no/such/folder/results.csv"), "{message}");
        let message = check_writable(dir.path())
            .expect_err("a folder")
            .to_string();
        assert!(message.contains("a folder, not a file"), "{message}");
    }
}
