use thiserror::Error;

/// Errors of the kernels crate. They only carry `Copy` data and static strings, so
/// building one on a hot path allocates nothing.
#[derive(Debug, Clone, Copy, PartialEq, Error)]
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
}
