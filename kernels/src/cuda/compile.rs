//! NVRTC compilation of the `.cu` sources in `kernels/cuda/`, with an on-disk cache.
//!
//! A source is compiled for the device's own architecture (`sm_XY`): NVRTC then emits a
//! CUBIN (native code, loaded as is) and the PTX it came from. The CUBIN is what we load;
//! PTX is the fallback for a GPU newer than the NVRTC at hand (compiled for the newest
//! `compute_XY` NVRTC knows that the device can run, and JIT-compiled by the driver), and
//! what CI inspects. Options are [`compile_options`]: `--fmad=false` keeps every `a * b + c`
//! two IEEE-rounded operations, so a kernel that does the same arithmetic as its CPU twin
//! gives the same bits.
//!
//! The cache ([`KernelCache`]) is keyed by a sha256 of the source, its name, the options,
//! the target and the NVRTC version; entries are written atomically (temporary file and
//! rename) and carry a digest of their content, so a torn or corrupt entry is detected and
//! recompiled, never loaded. NVRTC's log (warnings) is kept with the entry, so a warning
//! is reported on every load, not only on the first compile.

use std::ffi::{c_char, c_int, CString};
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use cudarc::nvrtc::{result as nvrtc_result, sys as nvrtc_sys};
use sha2::{Digest, Sha256};

use super::guarded;
use crate::KernelError;

/// A CUDA C++ source embedded in the binary, compiled at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelSource {
    /// The file name in `kernels/cuda/` (`metrics.cu`); NVRTC names it in its messages.
    pub name: &'static str,
    /// The source text.
    pub code: &'static str,
}

/// What NVRTC should produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ImageKind {
    /// Native code for one architecture (`sm_XY`), from `nvrtcGetCUBIN`.
    Cubin,
    /// PTX for a virtual architecture (`compute_XY`), JIT-compiled by the driver on load.
    Ptx,
}

impl ImageKind {
    /// The file extension of the image.
    pub fn extension(self) -> &'static str {
        match self {
            ImageKind::Cubin => "cubin",
            ImageKind::Ptx => "ptx",
        }
    }

    fn tag(self) -> u8 {
        match self {
            ImageKind::Cubin => 1,
            ImageKind::Ptx => 2,
        }
    }

    fn from_tag(tag: u8) -> Option<Self> {
        match tag {
            1 => Some(ImageKind::Cubin),
            2 => Some(ImageKind::Ptx),
            _ => None,
        }
    }
}

/// A compilation target: an image kind for a compute capability.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Target {
    /// CUBIN (`sm_XY`) or PTX (`compute_XY`).
    pub kind: ImageKind,
    /// Compute capability, major (8 for Orin's `sm_87`).
    pub major: u32,
    /// Compute capability, minor (7 for Orin's `sm_87`).
    pub minor: u32,
}

impl Target {
    /// A CUBIN for `sm_{major}{minor}`.
    pub fn cubin(major: u32, minor: u32) -> Self {
        Self {
            kind: ImageKind::Cubin,
            major,
            minor,
        }
    }

    /// PTX for `compute_{major}{minor}`.
    pub fn ptx(major: u32, minor: u32) -> Self {
        Self {
            kind: ImageKind::Ptx,
            major,
            minor,
        }
    }

    /// Parses `sm_87` (a CUBIN target) or `compute_87` (a PTX target).
    pub fn parse(arch: &str) -> Option<Self> {
        let (kind, digits) = if let Some(digits) = arch.strip_prefix("sm_") {
            (ImageKind::Cubin, digits)
        } else if let Some(digits) = arch.strip_prefix("compute_") {
            (ImageKind::Ptx, digits)
        } else {
            return None;
        };
        // `sm_90a`-style suffixes select architecture-specific features we do not use.
        if digits.len() < 2 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let (major, minor) = digits.split_at(digits.len() - 1);
        Some(Self {
            kind,
            major: major.parse().ok()?,
            minor: minor.parse().ok()?,
        })
    }

    /// The NVRTC architecture name: `sm_87` or `compute_87`.
    pub fn arch(&self) -> String {
        let prefix = match self.kind {
            ImageKind::Cubin => "sm",
            ImageKind::Ptx => "compute",
        };
        format!("{prefix}_{}{}", self.major, self.minor)
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.arch())
    }
}

/// The NVRTC options posed compiles every kernel with, for `target`.
pub fn compile_options(target: &Target) -> Vec<String> {
    vec![
        format!("--gpu-architecture={}", target.arch()),
        // No contraction of a * b + c into one FMA: the kernels give the same bits as
        // their CPU twins wherever they do the same arithmetic.
        "--fmad=false".to_owned(),
        "-default-device".to_owned(),
        "--std=c++17".to_owned(),
    ]
}

/// Whether NVRTC's library (`libnvrtc.so`) can be loaded on this machine.
pub fn nvrtc_present() -> bool {
    // SAFETY: this only dlopen()s the candidate library names (running the library's
    // initialisers, as any first use of NVRTC does) and closes them again.
    std::panic::catch_unwind(|| unsafe { nvrtc_sys::is_culib_present() }).unwrap_or(false)
}

fn nvrtc_missing() -> KernelError {
    KernelError::CudaUnavailable {
        reason: "NVRTC not found (libnvrtc.so could not be loaded); install the CUDA NVRTC \
                 library (JetPack: cuda-nvrtc; elsewhere the nvidia-cuda-nvrtc-cu12 wheel) \
                 and put its lib/ folder on the library path"
            .to_owned(),
    }
}

/// The version of the NVRTC library loaded, `(major, minor)`.
pub fn nvrtc_version() -> Result<(i32, i32), KernelError> {
    if !nvrtc_present() {
        return Err(nvrtc_missing());
    }
    guarded("nvrtcVersion", || {
        let mut major: c_int = 0;
        let mut minor: c_int = 0;
        // SAFETY: both pointers are valid for writes of one c_int for the whole call.
        unsafe { nvrtc_sys::nvrtcVersion(&mut major, &mut minor) }
            .result()
            .map_err(|e| KernelError::CudaUnavailable {
                reason: format!("nvrtcVersion failed: {e:?}"),
            })?;
        Ok((major, minor))
    })
}

/// The architectures this NVRTC can compile for, as compute capabilities (87 for `sm_87`),
/// ascending.
pub fn nvrtc_supported_archs() -> Result<Vec<u32>, KernelError> {
    if !nvrtc_present() {
        return Err(nvrtc_missing());
    }
    guarded("nvrtcGetSupportedArchs", || {
        let failed = |e: nvrtc_result::NvrtcError| KernelError::CudaUnavailable {
            reason: format!("nvrtcGetSupportedArchs failed: {e:?}"),
        };
        let mut count: c_int = 0;
        // SAFETY: `count` is valid for a write of one c_int.
        unsafe { nvrtc_sys::nvrtcGetNumSupportedArchs(&mut count) }
            .result()
            .map_err(failed)?;
        let mut archs: Vec<c_int> = vec![0; usize::try_from(count).unwrap_or(0)];
        if !archs.is_empty() {
            // SAFETY: `archs` holds the `count` c_ints NVRTC said it would write.
            unsafe { nvrtc_sys::nvrtcGetSupportedArchs(archs.as_mut_ptr()) }
                .result()
                .map_err(failed)?;
        }
        let mut archs: Vec<u32> = archs
            .into_iter()
            .filter_map(|a| u32::try_from(a).ok())
            .collect();
        archs.sort_unstable();
        Ok(archs)
    })
}

/// Where compiled images are kept between runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelCache {
    dir: Option<PathBuf>,
}

impl KernelCache {
    /// `$XDG_CACHE_HOME/posed/cuda`, else `$HOME/.cache/posed/cuda`; no cache when neither
    /// variable is set (to an absolute path). The daemon passes its own directory with
    /// [`KernelCache::at`] (systemd's `CacheDirectory=`).
    pub fn default_location() -> Self {
        let absolute = |var: &str| {
            std::env::var_os(var)
                .map(PathBuf::from)
                .filter(|p| p.is_absolute())
        };
        let dir = absolute("XDG_CACHE_HOME")
            .or_else(|| absolute("HOME").map(|home| home.join(".cache")))
            .map(|base| base.join("posed").join("cuda"));
        Self { dir }
    }

    /// A cache in `dir` (created on first write).
    pub fn at(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: Some(dir.into()),
        }
    }

    /// No cache: every load compiles.
    pub fn disabled() -> Self {
        Self { dir: None }
    }

    /// The cache directory, if any.
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }
}

/// What the cache did for one load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheStatus {
    /// The image came from the cache.
    Hit,
    /// Compiled, and stored for the next run.
    Stored,
    /// Compiled: no cache directory is configured.
    Disabled,
    /// The cache entry was unreadable or corrupt; compiled again and replaced.
    Replaced {
        /// What was wrong with the old entry.
        reason: String,
    },
    /// Compiled, but the cache could not be written (the image is still used).
    NotStored {
        /// Why the write failed.
        reason: String,
    },
}

/// A compiled kernel image, ready for `cuModuleLoadData`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompiledImage {
    /// The source's name (`metrics.cu`).
    pub source_name: &'static str,
    /// What was compiled for.
    pub target: Target,
    /// The options NVRTC was given.
    pub options: Vec<String>,
    /// The image: CUBIN bytes, or PTX text without a trailing NUL.
    pub bytes: Vec<u8>,
    /// NVRTC's log, trimmed; empty when the compile was clean. Anything here is a warning
    /// (errors fail the compile) and should be shown to the user.
    pub log: String,
    /// NVRTC's version, `(major, minor)`.
    pub nvrtc_version: (i32, i32),
    /// Whether the image came from the cache.
    pub cache: CacheStatus,
}

impl CompiledImage {
    /// For PTX: the `.version` directive, the PTX ISA version (`8.5` for CUDA 12.6's NVRTC).
    pub fn ptx_isa_version(&self) -> Option<&str> {
        if self.target.kind != ImageKind::Ptx {
            return None;
        }
        let text = std::str::from_utf8(&self.bytes).ok()?;
        text.lines()
            .map(str::trim)
            .find_map(|line| line.strip_prefix(".version "))
            .map(str::trim)
    }
}

/// Compiles `source` for `target`, through `cache`.
pub fn compile(
    source: &KernelSource,
    target: Target,
    cache: &KernelCache,
) -> Result<CompiledImage, KernelError> {
    let nvrtc_version = nvrtc_version()?;
    let options = compile_options(&target);
    let key = cache_key(source, &target, &options, nvrtc_version);
    let entry_path = cache.dir().map(|dir| {
        let stem = source.name.strip_suffix(".cu").unwrap_or(source.name);
        dir.join(format!(
            "{stem}-{}-{key}.{}",
            target.arch(),
            target.kind.extension()
        ))
    });

    let mut replaced = None;
    if let Some(path) = &entry_path {
        match std::fs::read(path) {
            Ok(bytes) => match decode_entry(&bytes, target.kind) {
                Ok((log, image)) => {
                    return Ok(CompiledImage {
                        source_name: source.name,
                        target,
                        options,
                        bytes: image,
                        log,
                        nvrtc_version,
                        cache: CacheStatus::Hit,
                    })
                }
                Err(reason) => replaced = Some(format!("{}: {reason}", path.display())),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => replaced = Some(format!("{}: {e}", path.display())),
        }
    }

    let (bytes, log) = nvrtc_compile(source, &target, &options)?;
    let cache_status = match &entry_path {
        None => CacheStatus::Disabled,
        Some(path) => match write_atomically(path, &encode_entry(target.kind, &log, &bytes)) {
            Ok(()) => match replaced {
                Some(reason) => CacheStatus::Replaced { reason },
                None => CacheStatus::Stored,
            },
            Err(e) => CacheStatus::NotStored {
                reason: format!("{}: {e}", path.display()),
            },
        },
    };
    Ok(CompiledImage {
        source_name: source.name,
        target,
        options,
        bytes,
        log,
        nvrtc_version,
        cache: cache_status,
    })
}

/// Compiles `source` for a device of compute capability `major.minor`: a CUBIN for
/// `sm_XY` when this NVRTC knows the architecture, else PTX for the newest `compute_XY`
/// it knows that the device can run (the driver JIT-compiles it on load).
pub fn compile_for_device(
    source: &KernelSource,
    major: u32,
    minor: u32,
    cache: &KernelCache,
) -> Result<CompiledImage, KernelError> {
    let device_arch = major * 10 + minor;
    let supported = nvrtc_supported_archs()?;
    if supported.contains(&device_arch) {
        return compile(source, Target::cubin(major, minor), cache);
    }
    // A device newer than this NVRTC: PTX for the newest architecture of the same major
    // version (binary compatibility of PTX only holds forwards).
    match supported
        .iter()
        .copied()
        .filter(|&a| a <= device_arch && a / 10 == major)
        .max()
        .or_else(|| {
            supported
                .iter()
                .copied()
                .filter(|&a| a <= device_arch)
                .max()
        }) {
        Some(arch) => compile(source, Target::ptx(arch / 10, arch % 10), cache),
        None => Err(KernelError::CudaUnavailable {
            reason: format!(
                "this NVRTC cannot compile for sm_{device_arch} or any older architecture \
                 (it supports {supported:?})"
            ),
        }),
    }
}

/// The cache key: a sha256 over everything that changes the image.
fn cache_key(
    source: &KernelSource,
    target: &Target,
    options: &[String],
    nvrtc_version: (i32, i32),
) -> String {
    let mut hasher = Sha256::new();
    let mut field = |bytes: &[u8]| {
        // Length-prefixed, so that no two different field lists hash the same bytes.
        hasher.update((bytes.len() as u64).to_le_bytes());
        hasher.update(bytes);
    };
    field(b"posed-cuda-cache-v1");
    field(source.name.as_bytes());
    field(source.code.as_bytes());
    for option in options {
        field(option.as_bytes());
    }
    field(target.arch().as_bytes());
    field(target.kind.extension().as_bytes());
    field(format!("nvrtc {}.{}", nvrtc_version.0, nvrtc_version.1).as_bytes());
    hex(&hasher.finalize())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Cache entry: magic, kind tag, log length (u32 LE), image length (u64 LE),
/// sha256(kind tag, log, image), log, image.
const ENTRY_MAGIC: &[u8; 8] = b"POSEDCU1";
const ENTRY_HEADER_LEN: usize = 8 + 1 + 4 + 8 + 32;

fn entry_digest(tag: u8, log: &[u8], image: &[u8]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update([tag]);
    hasher.update((log.len() as u64).to_le_bytes());
    hasher.update(log);
    hasher.update(image);
    hasher.finalize().into()
}

fn encode_entry(kind: ImageKind, log: &str, image: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(ENTRY_HEADER_LEN + log.len() + image.len());
    out.extend_from_slice(ENTRY_MAGIC);
    out.push(kind.tag());
    out.extend_from_slice(&(log.len() as u32).to_le_bytes());
    out.extend_from_slice(&(image.len() as u64).to_le_bytes());
    out.extend_from_slice(&entry_digest(kind.tag(), log.as_bytes(), image));
    out.extend_from_slice(log.as_bytes());
    out.extend_from_slice(image);
    out
}

/// Decodes and verifies a cache entry; the error says what is wrong with it.
fn decode_entry(bytes: &[u8], expected: ImageKind) -> Result<(String, Vec<u8>), &'static str> {
    if bytes.len() < ENTRY_HEADER_LEN {
        return Err("truncated header");
    }
    let (header, body) = bytes.split_at(ENTRY_HEADER_LEN);
    if &header[..8] != ENTRY_MAGIC {
        return Err("not a posed kernel cache entry");
    }
    let tag = header[8];
    if ImageKind::from_tag(tag) != Some(expected) {
        return Err("wrong image kind");
    }
    let mut log_len = [0u8; 4];
    log_len.copy_from_slice(&header[9..13]);
    let mut image_len = [0u8; 8];
    image_len.copy_from_slice(&header[13..21]);
    let log_len = u32::from_le_bytes(log_len) as usize;
    let image_len = usize::try_from(u64::from_le_bytes(image_len)).map_err(|_| "bad length")?;
    if log_len.checked_add(image_len) != Some(body.len()) {
        return Err("length does not match the file size");
    }
    let (log, image) = body.split_at(log_len);
    if image.is_empty() {
        return Err("empty image");
    }
    if entry_digest(tag, log, image)[..] != header[21..53] {
        return Err("digest mismatch");
    }
    let log = String::from_utf8(log.to_vec()).map_err(|_| "log is not UTF-8")?;
    Ok((log, image.to_vec()))
}

/// Writes `bytes` to `path` through a temporary file in the same directory and a rename,
/// so that a reader sees the old entry, the new one, or none, never half of one.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let dir = path.parent().ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "no parent directory")
    })?;
    std::fs::create_dir_all(dir)?;
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp = dir.join(format!(
        ".{file_name}.tmp-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut file = std::fs::File::create(&temp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&temp, path)
    })();
    if result.is_err() {
        // Best effort: a leftover temporary file is harmless, only untidy.
        let _ = std::fs::remove_file(&temp);
    }
    result
}

/// An NVRTC program, destroyed on drop. Holds the C strings NVRTC may point into.
struct Program {
    handle: nvrtc_sys::nvrtcProgram,
    _code: CString,
    _name: CString,
}

impl Drop for Program {
    fn drop(&mut self) {
        // SAFETY: `handle` came from nvrtcCreateProgram and is destroyed only here. An
        // error here would only leak the program, so it is ignored.
        let _ = unsafe { nvrtc_result::destroy_program(self.handle) };
    }
}

impl Program {
    /// NVRTC's log, without the trailing NUL and surrounding blank space.
    fn log(&self) -> Result<String, nvrtc_result::NvrtcError> {
        // SAFETY: `handle` is a live program (destroyed only on drop).
        let raw: Vec<c_char> = unsafe { nvrtc_result::get_program_log(self.handle) }?;
        Ok(c_chars_to_string(&raw).trim().to_owned())
    }
}

fn c_chars_to_bytes(raw: &[c_char]) -> Vec<u8> {
    // `c_char` is i8 on x86_64 and u8 on aarch64; `to_ne_bytes` reinterprets either.
    let mut bytes: Vec<u8> = raw.iter().map(|&c| c.to_ne_bytes()[0]).collect();
    while bytes.last() == Some(&0) {
        bytes.pop();
    }
    bytes
}

fn c_chars_to_string(raw: &[c_char]) -> String {
    String::from_utf8_lossy(&c_chars_to_bytes(raw)).into_owned()
}

/// Runs NVRTC: returns the image and the (trimmed) log.
fn nvrtc_compile(
    source: &KernelSource,
    target: &Target,
    options: &[String],
) -> Result<(Vec<u8>, String), KernelError> {
    let failure = |log: String| KernelError::CudaCompile {
        source_name: source.name.to_owned(),
        arch: target.arch(),
        options: options.join(" "),
        log,
    };
    let code = CString::new(source.code)
        .map_err(|_| failure("the source contains a NUL byte".to_owned()))?;
    let name = CString::new(source.name)
        .map_err(|_| failure("the name contains a NUL byte".to_owned()))?;

    guarded("NVRTC", || {
        let handle = nvrtc_result::create_program(&code, Some(&name))
            .map_err(|e| failure(format!("nvrtcCreateProgram failed: {e:?}")))?;
        let program = Program {
            handle,
            _code: code,
            _name: name,
        };
        // SAFETY: `program.handle` is a live program; the options contain no NUL byte.
        let compiled = unsafe { nvrtc_result::compile_program(program.handle, options) };
        let log = program
            .log()
            .map_err(|e| failure(format!("nvrtcGetProgramLog failed: {e:?}")))?;
        if let Err(e) = compiled {
            let log = if log.is_empty() {
                format!("{e:?} (empty log)")
            } else {
                log
            };
            return Err(failure(log));
        }
        let image = match target.kind {
            ImageKind::Cubin => get_cubin(program.handle)
                .map_err(|e| failure(format!("nvrtcGetCUBIN failed: {e:?}")))?,
            ImageKind::Ptx => {
                // SAFETY: `program.handle` is a live, compiled program.
                let raw = unsafe { nvrtc_result::get_ptx(program.handle) }
                    .map_err(|e| failure(format!("nvrtcGetPTX failed: {e:?}")))?;
                c_chars_to_bytes(&raw)
            }
        };
        if image.is_empty() {
            return Err(failure(format!(
                "NVRTC returned an empty {}",
                target.kind.extension()
            )));
        }
        Ok((image, log))
    })
}

/// The CUBIN of a program compiled for a real architecture (cudarc's safe layer only
/// returns PTX).
fn get_cubin(handle: nvrtc_sys::nvrtcProgram) -> Result<Vec<u8>, nvrtc_result::NvrtcError> {
    let mut size: usize = 0;
    // SAFETY: `handle` is a live, compiled program; `size` is valid for a write.
    unsafe { nvrtc_sys::nvrtcGetCUBINSize(handle, &mut size) }.result()?;
    let mut cubin: Vec<u8> = vec![0; size];
    if size > 0 {
        // SAFETY: `cubin` has room for the `size` bytes NVRTC reported.
        unsafe { nvrtc_sys::nvrtcGetCUBIN(handle, cubin.as_mut_ptr().cast::<c_char>()) }
            .result()?;
    }
    Ok(cubin)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TINY: KernelSource = KernelSource {
        name: "tiny.cu",
        code: "extern \"C\" __global__ void tiny_f64(double* out) { out[0] = 1.0; }\n",
    };

    #[test]
    fn targets_parse_and_print() {
        assert_eq!(Target::parse("sm_87"), Some(Target::cubin(8, 7)));
        assert_eq!(Target::parse("compute_90"), Some(Target::ptx(9, 0)));
        assert_eq!(Target::parse("compute_100"), Some(Target::ptx(10, 0)));
        assert_eq!(Target::cubin(8, 7).arch(), "sm_87");
        assert_eq!(Target::ptx(10, 0).to_string(), "compute_100");
        for bad in ["sm87", "sm_", "sm_8", "sm_90a", "gfx_90", "compute_x0"] {
            assert_eq!(Target::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn options_pin_the_arithmetic() {
        let options = compile_options(&Target::cubin(8, 7));
        assert_eq!(options[0], "--gpu-architecture=sm_87");
        assert!(options.iter().any(|o| o == "--fmad=false"));
        assert!(options.iter().any(|o| o == "-default-device"));
        assert!(options.iter().any(|o| o == "--std=c++17"));
    }

    #[test]
    fn cache_key_changes_with_every_input() {
        let target = Target::cubin(8, 7);
        let options = compile_options(&target);
        let base = cache_key(&TINY, &target, &options, (12, 6));
        assert_eq!(base.len(), 64);
        assert_eq!(base, cache_key(&TINY, &target, &options, (12, 6)));
        let other_code = KernelSource {
            code: "extern \"C\" __global__ void tiny_f64(double* out) { out[0] = 2.0; }\n",
            ..TINY
        };
        assert_ne!(base, cache_key(&other_code, &target, &options, (12, 6)));
        assert_ne!(
            base,
            cache_key(&TINY, &Target::cubin(9, 0), &options, (12, 6))
        );
        assert_ne!(
            base,
            cache_key(&TINY, &Target::ptx(8, 7), &options, (12, 6))
        );
        assert_ne!(base, cache_key(&TINY, &target, &options[1..], (12, 6)));
        assert_ne!(base, cache_key(&TINY, &target, &options, (12, 8)));
    }

    #[test]
    fn cache_entries_round_trip_and_reject_damage() {
        let entry = encode_entry(ImageKind::Cubin, "warning: x", b"\x7fELF image");
        assert_eq!(
            decode_entry(&entry, ImageKind::Cubin),
            Ok(("warning: x".to_owned(), b"\x7fELF image".to_vec()))
        );
        assert_eq!(
            decode_entry(&entry, ImageKind::Ptx),
            Err("wrong image kind")
        );
        // Every truncation and every single flipped byte is detected.
        for len in 0..entry.len() {
            assert!(
                decode_entry(&entry[..len], ImageKind::Cubin).is_err(),
                "{len}"
            );
        }
        for i in 0..entry.len() {
            let mut damaged = entry.clone();
            damaged[i] ^= 0x20;
            assert!(decode_entry(&damaged, ImageKind::Cubin).is_err(), "{i}");
        }
        let mut longer = entry.clone();
        longer.push(0);
        assert!(decode_entry(&longer, ImageKind::Cubin).is_err());
    }

    #[test]
    fn atomic_write_replaces_and_leaves_no_temporary_file() {
        let dir = std::env::temp_dir().join(format!("posed-cache-test-{}", std::process::id()));
        let path = dir.join("nested").join("entry.cubin");
        write_atomically(&path, b"one").unwrap();
        write_atomically(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("entry.cubin")]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn default_cache_location_is_under_posed_cuda() {
        if let Some(dir) = KernelCache::default_location().dir() {
            assert!(dir.ends_with("posed/cuda"), "{}", dir.display());
        }
        assert_eq!(KernelCache::disabled().dir(), None);
    }

    /// Compiles through the cache, then damages the entry: it is recompiled and
    /// replaced, never loaded. Needs libnvrtc (scripts/check-cuda-kernels.sh provides
    /// it); skipped without.
    #[test]
    fn compiles_caches_and_recovers_from_a_corrupt_entry() {
        if !nvrtc_present() {
            eprintln!("SKIPPED: no NVRTC ({})", nvrtc_missing());
            return;
        }
        let dir = std::env::temp_dir().join(format!("posed-nvrtc-test-{}", std::process::id()));
        let cache = KernelCache::at(&dir);
        let target = Target::cubin(8, 7);
        let first = compile(&TINY, target, &cache).unwrap();
        assert_eq!(first.cache, CacheStatus::Stored);
        assert_eq!(&first.bytes[..4], b"\x7fELF");
        assert_eq!(first.log, "");
        let second = compile(&TINY, target, &cache).unwrap();
        assert_eq!(second.cache, CacheStatus::Hit);
        assert_eq!(second.bytes, first.bytes);

        let entry = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|e| e == "cubin"))
            .unwrap();
        let mut damaged = std::fs::read(&entry).unwrap();
        let last = damaged.len() - 1;
        damaged[last] ^= 1;
        std::fs::write(&entry, damaged).unwrap();
        let third = compile(&TINY, target, &cache).unwrap();
        assert!(
            matches!(third.cache, CacheStatus::Replaced { .. }),
            "{:?}",
            third.cache
        );
        assert_eq!(third.bytes, first.bytes);
        assert_eq!(
            compile(&TINY, target, &cache).unwrap().cache,
            CacheStatus::Hit
        );

        let ptx = compile(&TINY, Target::ptx(8, 7), &KernelCache::disabled()).unwrap();
        assert_eq!(ptx.cache, CacheStatus::Disabled);
        assert!(ptx.ptx_isa_version().is_some());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn compile_errors_and_warnings_carry_the_log() {
        if !nvrtc_present() {
            eprintln!("SKIPPED: no NVRTC ({})", nvrtc_missing());
            return;
        }
        let broken = KernelSource {
            name: "broken.cu",
            code: "extern \"C\" __global__ void broken_f64(double* out) { out[0] = y; }\n",
        };
        match compile(&broken, Target::cubin(8, 7), &KernelCache::disabled()) {
            Err(KernelError::CudaCompile {
                source_name,
                arch,
                log,
                ..
            }) => {
                assert_eq!(source_name, "broken.cu");
                assert_eq!(arch, "sm_87");
                assert!(log.contains("identifier \"y\" is undefined"), "{log}");
            }
            other => panic!("expected a compile error, got {other:?}"),
        }
        let warning = KernelSource {
            name: "warning.cu",
            code: "extern \"C\" __global__ void warning_f64(double* out) { int unused = 0; out[0] = 1.0; }\n",
        };
        let image = compile(&warning, Target::cubin(8, 7), &KernelCache::disabled()).unwrap();
        assert!(image.log.contains("warning"), "{}", image.log);
    }
}
