use std::path::PathBuf;

use thiserror::Error;

/// Errors of the engines crate. Every variant that comes from a user's file names the file;
/// contract errors also name the tensor and give the expected and the found shape.
#[derive(Debug, Error)]
pub enum EngineError {
    /// A file could not be read or written.
    #[error("{path}: {action}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What was being done ("reading", "renaming into place", ...).
        action: &'static str,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// A file that is not a readable ONNX model.
    #[error("{path}: not a readable ONNX model: {reason}")]
    NotOnnx {
        /// The file.
        path: PathBuf,
        /// What the decoder said.
        reason: String,
    },
    /// A network's sidecar file is missing or wrong.
    #[error("{path}: {field}: {reason}")]
    Sidecar {
        /// The sidecar file.
        path: PathBuf,
        /// The key that is wrong ("role", "detector.layout", ...), or "(file)".
        field: String,
        /// What was expected and what was found.
        reason: String,
    },
    /// A network's inputs or outputs do not match its role's contract.
    #[error("{path}: tensor `{tensor}`: expected {expected}, found {found}")]
    Contract {
        /// The ONNX file.
        path: PathBuf,
        /// The tensor's name (or the name the contract expects).
        tensor: String,
        /// What the contract asks for, e.g. `float32 [batch, 6, 240, 320]`.
        expected: String,
        /// What the file declares.
        found: String,
    },
    /// tract could not load, optimise or run a network.
    #[error("{path}: CPU backend (tract): {stage}: {reason}")]
    Tract {
        /// The ONNX file.
        path: PathBuf,
        /// "loading", "optimising", "running", ...
        stage: &'static str,
        /// tract's error chain.
        reason: String,
    },
    /// A run's input does not match what the session was created for.
    #[error("{what}: expected {expected}, found {found}")]
    Input {
        /// Which value.
        what: &'static str,
        /// What the session accepts.
        expected: String,
        /// What it got.
        found: String,
    },
    /// A run's output does not fit the caller's buffer, or has a shape the contract
    /// does not allow.
    #[error("output `{tensor}`: {reason}")]
    Output {
        /// The output tensor.
        tensor: String,
        /// What went wrong.
        reason: String,
    },
    /// An invalid option (batch size, cache directory, precision for a backend, ...).
    #[error("{what}: {reason}")]
    Config {
        /// Which option.
        what: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// An engine cache entry that cannot be used (corrupt, truncated, stale). The cache
    /// logs these and rebuilds; callers see them only from explicit verification.
    #[error("engine cache entry {path}: {reason}")]
    CacheEntry {
        /// The entry's file.
        path: PathBuf,
        /// Why it was rejected.
        reason: String,
    },
    /// A backend that is not available on this machine or in this build.
    #[error("backend {backend} unavailable: {reason}")]
    BackendUnavailable {
        /// "tensorrt", ...
        backend: &'static str,
        /// Why, and what to do about it.
        reason: String,
    },
    /// TensorRT (through the shim) reported an error.
    #[error("TensorRT: {call}: {message}")]
    TensorRt {
        /// The shim call that failed.
        call: &'static str,
        /// TensorRT's own message.
        message: String,
    },
}

impl EngineError {
    pub(crate) fn io(
        path: impl Into<PathBuf>,
        action: &'static str,
        source: std::io::Error,
    ) -> Self {
        EngineError::Io {
            path: path.into(),
            action,
            source,
        }
    }
}
