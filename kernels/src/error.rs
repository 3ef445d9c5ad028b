use thiserror::Error;

/// Errors of the kernels crate. The variants a hot path can return carry only `Copy` data
/// and static strings, so building one allocates nothing; the CUDA set-up errors (opening
/// a device, compiling a kernel) carry the driver's message or the compiler's log.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum KernelError {
    /// A continuous symmetry that CosyPose cannot represent (it needs a positive unit
    /// axis through the origin).
    #[error("continuous symmetry not supported by CosyPose's sampler: {reason}")]
    UnsupportedContinuousSymmetry {
        /// What is wrong with the symmetry.
        reason: &'static str,
    },
    /// A symmetry axis of (near) zero length.
    #[error("symmetry axis has zero length")]
    ZeroAxis,
    /// A point set that must not be empty was empty.
    #[error("{what} is empty")]
    Empty {
        /// Which input was empty.
        what: &'static str,
    },
    /// A value that must be finite was not.
    #[error("{what} is not finite")]
    NotFinite {
        /// Which input held the non-finite value.
        what: &'static str,
    },
    /// A value outside the range the call accepts.
    #[error("{what}: {reason}")]
    InvalidValue {
        /// Which input.
        what: &'static str,
        /// What it must be.
        reason: &'static str,
    },
    /// A mesh the renderer cannot draw.
    #[error("invalid mesh: {reason}")]
    InvalidMesh {
        /// What is wrong with it.
        reason: &'static str,
    },
    /// An input whose size does not match what the call needs.
    #[error("{what}: expected {expected}, found {found}")]
    SizeMismatch {
        /// Which input.
        what: &'static str,
        /// The size the call needs.
        expected: usize,
        /// The size it got.
        found: usize,
    },
    /// An input smaller than the call needs: a row stride shorter than a row, a camera
    /// buffer shorter than its frame.
    #[error("{what}: expected at least {minimum}, found {found}")]
    TooSmall {
        /// Which input.
        what: &'static str,
        /// The smallest value the call accepts.
        minimum: usize,
        /// The value it got.
        found: usize,
    },
    /// An input beyond a limit of the implementation.
    #[error("{what}: {found} exceeds the limit of {limit}")]
    LimitExceeded {
        /// Which input.
        what: &'static str,
        /// The largest value supported.
        limit: usize,
        /// The value found.
        found: usize,
    },
    /// CUDA cannot be used here: no driver, no device, no NVRTC, or a library that lacks
    /// what posed needs. Use the CPU device.
    #[error("CUDA unavailable: {reason}")]
    CudaUnavailable {
        /// What is missing, and where it was looked for.
        reason: String,
    },
    /// A CUDA driver call failed on a device that is present.
    #[error("CUDA driver call {call} failed: {message}")]
    CudaDriver {
        /// The operation (`cuModuleLoadData`, `kernel launch add_point_distances_f64`, ...).
        call: &'static str,
        /// The driver's error name and description.
        message: String,
    },
    /// NVRTC refused a kernel source; the log says why.
    #[error("NVRTC could not compile {source_name} for {arch} (options: {options}): {log}")]
    CudaCompile {
        /// The `.cu` file (`metrics.cu`).
        source_name: String,
        /// The target (`sm_87`, `compute_87`).
        arch: String,
        /// The NVRTC options, space-separated.
        options: String,
        /// NVRTC's log (errors and warnings), or the failing NVRTC call.
        log: String,
    },
}
