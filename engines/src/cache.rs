//! The engine cache: built engines on disk, keyed by everything that makes an engine valid.
//!
//! One entry is one file, `<key digest>.engine`:
//!
//! ```text
//! b"POSEDENG"             8 bytes, magic
//! format version          u32 little-endian (ENTRY_FORMAT)
//! manifest length         u32 little-endian
//! manifest                JSON: the full key, payload length and sha256, creation time
//! payload                 the backend's serialized engine
//! ```
//!
//! Loading verifies the magic, the format, that the manifest's key equals the requested
//! key, the payload length (truncation) and its sha256 (corruption), and, through
//! [`EngineCache::get_or_build_checked`], that the backend can read the payload (a sha256
//! only proves the bytes are the ones written with it). An entry that fails is logged,
//! moved aside and rebuilt; it is never handed to a backend. Writes go to a
//! temporary file in the same directory, are synced and renamed into place, so a reader
//! sees either no entry or a whole one. Building takes `<digest>.lock` (an exclusive
//! advisory lock), so two processes asking for the same engine build it once: the second
//! waits, then finds the entry.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::network::hex;
use crate::EngineError;

/// Whether an error opening the build lock says the cache cannot be written (a read-only
/// file system; a folder or lock file of another user), rather than that something is
/// wrong (no space, too many open files, a folder in the lock's place).
fn cannot_write(error: &std::io::Error) -> bool {
    matches!(
        error.kind(),
        std::io::ErrorKind::ReadOnlyFilesystem | std::io::ErrorKind::PermissionDenied
    )
}

/// Magic bytes at the start of every entry.
pub const ENTRY_MAGIC: &[u8; 8] = b"POSEDENG";
/// Version of the entry layout above.
pub const ENTRY_FORMAT: u32 = 1;
/// Largest manifest accepted (a manifest is a few hundred bytes).
const MAX_MANIFEST_BYTES: u32 = 64 * 1024;

/// Numeric precision an engine computes in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// 32-bit float everywhere.
    #[default]
    Fp32,
    /// Half precision where the backend allows it.
    Fp16,
    /// 8-bit integer where the backend allows it (needs calibration or a QDQ model).
    Int8,
}

impl Precision {
    /// The config / command-line spelling.
    pub fn name(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Fp16 => "fp16",
            Precision::Int8 => "int8",
        }
    }
}

impl std::str::FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "fp32" => Ok(Precision::Fp32),
            "fp16" => Ok(Precision::Fp16),
            "int8" => Ok(Precision::Int8),
            other => Err(format!("expected fp32, fp16 or int8, found `{other}`")),
        }
    }
}

/// Everything an engine depends on. Two requests with equal keys may share an engine.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineKey {
    /// sha256 of the ONNX file, hex.
    pub onnx_sha256: String,
    /// The network's role ("detector", "coarse", "refiner").
    pub role: String,
    /// The backend that built it ("tensorrt", "cpu").
    pub backend: String,
    /// The backend library's version (TensorRT "10.3.0", tract "0.23.9").
    pub backend_version: String,
    /// The device's name ("Orin", "NVIDIA H200", "cpu").
    pub device_name: String,
    /// The device's compute capability ("8.7"; "-" for the CPU).
    pub compute_capability: String,
    /// The precision.
    pub precision: Precision,
    /// The DLA core, if the engine runs on one.
    pub dla_core: Option<u32>,
    /// Batch profile: (min, optimum, max).
    pub batch_profile: (usize, usize, usize),
    /// Largest input image (height, width) for a detector; (0, 0) otherwise.
    pub max_image_hw: (usize, usize),
    /// Version of the code that builds the engine (the TensorRT shim's own version).
    pub builder_version: u32,
}

impl EngineKey {
    /// sha256 over the key's canonical JSON, hex: the entry's file stem.
    pub fn digest(&self) -> String {
        // A key serializes from plain fields; this cannot fail.
        let json = serde_json::to_vec(self).unwrap_or_default();
        hex(&Sha256::digest(json))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    key: EngineKey,
    payload_len: u64,
    payload_sha256: String,
    created_unix_s: u64,
}

/// Where an engine came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    /// Loaded from a verified entry.
    Hit,
    /// Built now (no entry, or another process's entry appeared while waiting: see
    /// [`CacheOutcome::BuiltByOther`]).
    Built,
    /// An unusable entry was found, set aside, and the engine rebuilt.
    Rebuilt,
    /// Another process built it while this one waited for the lock.
    BuiltByOther,
}

/// One entry as `posed engines list` shows it.
#[derive(Debug, Clone)]
pub struct EntryInfo {
    /// The entry's file.
    pub path: PathBuf,
    /// Its key (`None` when the entry does not verify).
    pub key: Option<EngineKey>,
    /// Payload size in bytes.
    pub payload_len: u64,
    /// When it was written (seconds since the epoch).
    pub created_unix_s: u64,
    /// Why it does not verify, if it does not.
    pub problem: Option<String>,
}

/// A directory of engines.
#[derive(Debug, Clone)]
pub struct EngineCache {
    dir: PathBuf,
}

impl EngineCache {
    /// The default directory: `$POSED_CACHE_DIR`, else `$XDG_CACHE_HOME/posed/engines`, else
    /// `~/.cache/posed/engines`. The systemd unit sets `POSED_CACHE_DIR` to its
    /// CacheDirectory.
    pub fn default_dir() -> PathBuf {
        if let Some(dir) = std::env::var_os("POSED_CACHE_DIR").filter(|d| !d.is_empty()) {
            return PathBuf::from(dir);
        }
        if let Some(dir) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
            return PathBuf::from(dir).join("posed").join("engines");
        }
        let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
        home.join(".cache").join("posed").join("engines")
    }

    /// A cache in `dir`, created if missing.
    pub fn open(dir: impl Into<PathBuf>) -> Result<EngineCache, EngineError> {
        let dir = dir.into();
        fs::create_dir_all(&dir)
            .map_err(|e| EngineError::io(&dir, "creating the engine cache directory", e))?;
        Ok(EngineCache { dir })
    }

    /// The cache directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The entry file for a key.
    pub fn entry_path(&self, key: &EngineKey) -> PathBuf {
        self.dir.join(format!("{}.engine", key.digest()))
    }

    fn lock_path(&self, key: &EngineKey) -> PathBuf {
        self.dir.join(format!("{}.lock", key.digest()))
    }

    /// The engine for `key`: a verified entry if there is one, else `build()`'s bytes,
    /// stored before they are returned. Holds the key's lock while it checks and builds.
    pub fn get_or_build(
        &self,
        key: &EngineKey,
        build: impl FnOnce() -> Result<Vec<u8>, EngineError>,
    ) -> Result<(Vec<u8>, CacheOutcome), EngineError> {
        let (bytes, (), outcome) =
            self.get_or_build_checked(key, || Ok((build()?, ())), |_| Ok(()))?;
        Ok((bytes, outcome))
    }

    /// [`EngineCache::get_or_build`] for a backend that reads its payload back: `check`
    /// deserializes a verified entry's payload into the engine; an entry it refuses (the
    /// reason is logged) is set aside and rebuilt like a corrupt one, so a payload whose
    /// checksum matches but that the backend cannot read is never kept. `build` returns
    /// the payload to store and the engine made from it. Returns the payload, the engine
    /// and where it came from.
    pub fn get_or_build_checked<T>(
        &self,
        key: &EngineKey,
        build: impl FnOnce() -> Result<(Vec<u8>, T), EngineError>,
        check: impl FnOnce(&[u8]) -> Result<T, String>,
    ) -> Result<(Vec<u8>, T, CacheOutcome), EngineError> {
        let lock_path = self.lock_path(key);
        let lock = match OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
        {
            Ok(lock) => lock,
            // A cache that cannot be written (a read-only root file system on a robot,
            // engines built ahead of time) is still usable for what it holds: the lock
            // only keeps two builds apart, and entries are replaced by atomic renames.
            Err(e) if cannot_write(&e) => return self.use_without_lock(key, &lock_path, e, check),
            Err(e) => return Err(EngineError::io(&lock_path, "opening the build lock", e)),
        };
        let waited = match lock.try_lock() {
            Ok(()) => false,
            Err(std::fs::TryLockError::WouldBlock) => {
                tracing::info!(lock = %lock_path.display(), "another process is building this engine; waiting for it");
                lock.lock()
                    .map_err(|e| EngineError::io(&lock_path, "waiting for the build lock", e))?;
                true
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(EngineError::io(&lock_path, "taking the build lock", e));
            }
        };
        // The lock is released when `lock` is dropped, on every path out of here.
        let mut rebuilt = false;
        match self.load(key) {
            Ok(Some(bytes)) => match check(&bytes) {
                Ok(engine) => {
                    let outcome = if waited {
                        CacheOutcome::BuiltByOther
                    } else {
                        CacheOutcome::Hit
                    };
                    return Ok((bytes, engine, outcome));
                }
                Err(reason) => {
                    let entry = self.entry_path(key);
                    tracing::warn!(entry = %entry.display(), reason = %crate::error::printable(&reason), "engine cache entry verifies but its payload does not load; rebuilding");
                    self.set_aside(&entry);
                    rebuilt = true;
                }
            },
            Ok(None) => {}
            Err(problem) => {
                tracing::warn!(error = %problem, "engine cache entry rejected; rebuilding");
                self.set_aside(&self.entry_path(key));
                rebuilt = true;
            }
        }
        let (bytes, engine) = build()?;
        self.store(key, &bytes)?;
        drop(lock);
        let outcome = if rebuilt {
            CacheOutcome::Rebuilt
        } else {
            CacheOutcome::Built
        };
        Ok((bytes, engine, outcome))
    }

    /// The entry for `key` from a cache whose build lock cannot be created (`error`): a
    /// verified entry that `check` accepts, else an error that says why none can be
    /// built here.
    fn use_without_lock<T>(
        &self,
        key: &EngineKey,
        lock_path: &Path,
        error: std::io::Error,
        check: impl FnOnce(&[u8]) -> Result<T, String>,
    ) -> Result<(Vec<u8>, T, CacheOutcome), EngineError> {
        let cannot_build = |why: String| EngineError::CacheEntry {
            path: self.entry_path(key),
            reason: format!(
                "{why}, and the cache cannot be written (the build lock {}: {error}): build \
                 the engines where the cache is writable (`posed engines build`), or point \
                 engines.cache_dir at a writable folder",
                lock_path.display()
            ),
        };
        match self.load(key) {
            Ok(Some(bytes)) => match check(&bytes) {
                Ok(engine) => {
                    tracing::info!(lock = %lock_path.display(), %error, "engine cache not writable; using its verified entry");
                    Ok((bytes, engine, CacheOutcome::Hit))
                }
                Err(reason) => Err(cannot_build(format!(
                    "the entry verifies but its payload does not load ({})",
                    crate::error::printable(&reason)
                ))),
            },
            Ok(None) => Err(cannot_build("no entry for this engine".into())),
            Err(problem) => Err(cannot_build(format!("the entry is unusable ({problem})"))),
        }
    }

    /// The verified payload for `key`: `Ok(None)` when there is no entry, `Err` when the
    /// entry exists but must not be used.
    pub fn load(&self, key: &EngineKey) -> Result<Option<Vec<u8>>, EngineError> {
        let path = self.entry_path(key);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(EngineError::io(&path, "reading", e)),
        };
        let (manifest, payload) = parse_entry(&path, &bytes)?;
        if manifest.key != *key {
            return Err(EngineError::CacheEntry {
                path,
                reason: format!(
                    "stale: built for {}, wanted {}",
                    describe_key(&manifest.key),
                    describe_key(key)
                ),
            });
        }
        Ok(Some(payload.to_vec()))
    }

    /// Stores `payload` for `key` atomically (temporary file, fsync, rename, fsync of the
    /// directory).
    pub fn store(&self, key: &EngineKey, payload: &[u8]) -> Result<PathBuf, EngineError> {
        let path = self.entry_path(key);
        let manifest = Manifest {
            key: key.clone(),
            payload_len: payload.len() as u64,
            payload_sha256: hex(&Sha256::digest(payload)),
            created_unix_s: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        };
        let manifest_json = serde_json::to_vec(&manifest).map_err(|e| EngineError::CacheEntry {
            path: path.clone(),
            reason: format!("cannot encode the manifest: {e}"),
        })?;
        let manifest_len = u32::try_from(manifest_json.len()).unwrap_or(u32::MAX);
        let tmp = self
            .dir
            .join(format!(".{}.{}.tmp", key.digest(), std::process::id()));
        let write = || -> std::io::Result<()> {
            let mut file = File::create(&tmp)?;
            file.write_all(ENTRY_MAGIC)?;
            file.write_all(&ENTRY_FORMAT.to_le_bytes())?;
            file.write_all(&manifest_len.to_le_bytes())?;
            file.write_all(&manifest_json)?;
            file.write_all(payload)?;
            file.sync_all()?;
            fs::rename(&tmp, &path)?;
            // Make the rename itself durable.
            File::open(&self.dir)?.sync_all()
        };
        write().map_err(|e| {
            let _ = fs::remove_file(&tmp);
            EngineError::io(&path, "writing the engine cache entry", e)
        })?;
        Ok(path)
    }

    /// Every entry in the cache, verified or not, oldest first.
    pub fn list(&self) -> Result<Vec<EntryInfo>, EngineError> {
        let read_dir =
            fs::read_dir(&self.dir).map_err(|e| EngineError::io(&self.dir, "listing", e))?;
        let mut entries = Vec::new();
        for item in read_dir {
            let item = item.map_err(|e| EngineError::io(&self.dir, "listing", e))?;
            let path = item.path();
            if path.extension().and_then(|e| e.to_str()) != Some("engine") {
                continue;
            }
            let parsed = fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|bytes| {
                    let (manifest, payload) =
                        parse_entry(&path, &bytes).map_err(|e| e.to_string())?;
                    let problem = check_payload_layout(&manifest.key, payload).err();
                    Ok((manifest, problem))
                });
            let info = match parsed {
                Ok((manifest, payload_problem)) => {
                    let stem_ok = path.file_stem().and_then(|s| s.to_str())
                        == Some(manifest.key.digest().as_str());
                    let problem = if stem_ok {
                        payload_problem
                    } else {
                        Some("file name does not match its key".to_owned())
                    };
                    EntryInfo {
                        problem,
                        path,
                        key: Some(manifest.key),
                        payload_len: manifest.payload_len,
                        created_unix_s: manifest.created_unix_s,
                    }
                }
                Err(problem) => EntryInfo {
                    path,
                    key: None,
                    payload_len: 0,
                    created_unix_s: 0,
                    problem: Some(problem),
                },
            };
            entries.push(info);
        }
        entries.sort_by(|a, b| {
            a.created_unix_s
                .cmp(&b.created_unix_s)
                .then(a.path.cmp(&b.path))
        });
        Ok(entries)
    }

    /// Renames an unusable entry to `<name>.rejected` (kept for inspection, replaced by the
    /// next rejection) so the next build can take its place.
    fn set_aside(&self, path: &Path) {
        let aside = path.with_extension("engine.rejected");
        if let Err(e) = fs::rename(path, &aside) {
            tracing::warn!(path = %path.display(), error = %e, "could not set the rejected engine aside");
        }
    }
}

/// What can be checked of a payload without its backend: the CPU backend's layout (an
/// NNEF tar archive). A TensorRT engine is opaque until TensorRT deserializes it.
fn check_payload_layout(key: &EngineKey, payload: &[u8]) -> Result<(), String> {
    if key.backend == crate::BackendKind::Cpu.name() {
        crate::cpu::check_archive_layout(payload)
    } else {
        Ok(())
    }
}

fn describe_key(key: &EngineKey) -> String {
    format!(
        "{} {} on {} (sm {}), {}, batch {:?}, builder v{}",
        key.backend,
        key.backend_version,
        key.device_name,
        key.compute_capability,
        key.precision.name(),
        key.batch_profile,
        key.builder_version
    )
}

fn parse_entry<'a>(path: &Path, bytes: &'a [u8]) -> Result<(Manifest, &'a [u8]), EngineError> {
    let bad = |reason: String| EngineError::CacheEntry {
        path: path.to_owned(),
        reason,
    };
    let header_len = ENTRY_MAGIC.len() + 8;
    if bytes.len() < header_len {
        return Err(bad(format!(
            "truncated: {} bytes, the header alone is {header_len}",
            bytes.len()
        )));
    }
    let mut reader = bytes;
    let mut magic = [0u8; 8];
    let mut word = [0u8; 4];
    // Reading from a slice long enough cannot fail.
    let _ = reader.read_exact(&mut magic);
    if &magic != ENTRY_MAGIC {
        return Err(bad("not a posed engine cache entry (bad magic)".to_owned()));
    }
    let _ = reader.read_exact(&mut word);
    let format = u32::from_le_bytes(word);
    if format != ENTRY_FORMAT {
        return Err(bad(format!(
            "entry format {format}, this posed reads {ENTRY_FORMAT}"
        )));
    }
    let _ = reader.read_exact(&mut word);
    let manifest_len = u32::from_le_bytes(word);
    if manifest_len > MAX_MANIFEST_BYTES || manifest_len as usize > reader.len() {
        return Err(bad(format!(
            "truncated or corrupt: manifest length {manifest_len}"
        )));
    }
    let (manifest_json, payload) = reader.split_at(manifest_len as usize);
    let manifest: Manifest =
        serde_json::from_slice(manifest_json).map_err(|e| bad(format!("corrupt manifest: {e}")))?;
    if payload.len() as u64 != manifest.payload_len {
        return Err(bad(format!(
            "truncated or padded: payload is {} bytes, the manifest says {}",
            payload.len(),
            manifest.payload_len
        )));
    }
    let digest = hex(&Sha256::digest(payload));
    if digest != manifest.payload_sha256 {
        return Err(bad(
            "corrupt: payload sha256 does not match the manifest".to_owned()
        ));
    }
    Ok((manifest, payload))
}

#[cfg(test)]
mod tests;
