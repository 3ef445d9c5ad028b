use std::fmt::Write as _;
use std::path::PathBuf;

use thiserror::Error;

/// Errors of the engines crate. Every variant that comes from a user's file names the file;
/// contract errors also name the tensor and give the expected and the found shape.
#[derive(Debug, Error)]
pub enum EngineError {
    /// A file could not be read or written.
    // The OS error is in the message and deliberately not `source()`: anyhow's `{:#}`
    // prints the message, then every source, and the reason came out twice.
    #[error("{path}: {action}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What was being done ("reading", "renaming into place", ...).
        action: &'static str,
        /// The operating system's error.
        error: std::io::Error,
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
    /// A network whose tensors, or whose planned buffers in all, would take more memory
    /// than posed allows ([`crate::cpu::MAX_BUFFER_BYTES`]), or whose sizes overflow.
    #[error("{path}: node `{node}`: {reason}")]
    TooLarge {
        /// The ONNX file.
        path: PathBuf,
        /// The node whose value is too large ("(graph)" for the buffers in all).
        node: String,
        /// The size, and the limit.
        reason: String,
    },
    /// A run's output that does not match the contract or the sidecar, with the network
    /// that produced it.
    #[error("{path}: output `{tensor}`: {reason}")]
    NetworkOutput {
        /// The ONNX file.
        path: PathBuf,
        /// The output tensor.
        tensor: String,
        /// What went wrong.
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
            error: source,
        }
    }

    /// This error with the network that produced it named: an [`EngineError::Output`] of
    /// a run becomes an [`EngineError::NetworkOutput`]; any other error is returned as is.
    pub(crate) fn in_network(self, path: &std::path::Path) -> EngineError {
        match self {
            EngineError::Output { tensor, reason } => EngineError::NetworkOutput {
                path: path.to_owned(),
                tensor,
                reason,
            },
            other => other,
        }
    }
}

/// Longest reason taken from another library's message (tract's, a panic's): some quote
/// the bytes they failed on, which may be a whole corrupt file.
const MAX_REASON_CHARS: usize = 600;

/// `text` made safe to print: control characters escaped (a message may quote raw bytes
/// of a corrupt file) and cut to [`MAX_REASON_CHARS`] characters.
pub(crate) fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(MAX_REASON_CHARS + 40));
    for (count, c) in text.chars().enumerate() {
        if count == MAX_REASON_CHARS {
            let rest = text.chars().count() - count;
            let _ = write!(out, "... ({rest} more characters)");
            break;
        }
        match c {
            '\n' | '\t' => out.push(' '),
            c if c.is_control() || c == char::REPLACEMENT_CHARACTER => {
                out.extend(c.escape_default());
            }
            c => out.push(c),
        }
    }
    out
}

/// A size in words ("24.0 TiB"); `None` (a size that overflowed) is "more than 16 EiB".
pub(crate) fn describe_bytes(bytes: Option<usize>) -> String {
    let Some(bytes) = bytes else {
        return "more than 16 EiB".to_owned();
    };
    let units = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut size = bytes as f64;
    let mut unit = None;
    for name in units {
        if size < 1024.0 {
            break;
        }
        size /= 1024.0;
        unit = Some(name);
    }
    match unit {
        None => format!("{bytes} bytes"),
        Some(unit) => format!("{size:.1} {unit}"),
    }
}

/// The message a panic carried (`panic!`'s text), for an error built from a caught panic.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_owned()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "(no message)".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_io_error_says_its_reason_once_through_anyhow_style_chains() {
        let err = EngineError::io(
            "/nonexistent/x.onnx",
            "reading",
            std::io::Error::from(std::io::ErrorKind::NotFound),
        );
        let message = err.to_string();
        assert!(
            message.starts_with("/nonexistent/x.onnx: reading: "),
            "{message}"
        );
        // What `{:#}` of an anyhow error adds after the message: nothing.
        assert!(std::error::Error::source(&err).is_none(), "{message}");
    }

    #[test]
    fn sizes_are_described_in_binary_units() {
        assert_eq!(describe_bytes(Some(512)), "512 bytes");
        assert_eq!(describe_bytes(Some(4 << 30)), "4.0 GiB");
        assert_eq!(describe_bytes(Some(26_402_373_771_264)), "24.0 TiB");
        assert_eq!(describe_bytes(None), "more than 16 EiB");
    }

    #[test]
    fn printable_escapes_control_bytes_and_truncates() {
        let raw = "bad entry \u{1}\u{7f}\u{fffd}x\nend";
        assert_eq!(printable(raw), "bad entry \\u{1}\\u{7f}\\u{fffd}x end");
        let long = "a".repeat(MAX_REASON_CHARS + 10);
        let expected = format!("{}... (10 more characters)", "a".repeat(MAX_REASON_CHARS));
        assert_eq!(printable(&long), expected);
    }
}
