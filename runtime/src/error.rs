use std::path::PathBuf;

use thiserror::Error;

/// Errors of the `posed` library. Every input error names the file and, inside it, the
/// entry (scene / image / object id, CSV line, PLY element) and what was expected.
#[derive(Debug, Error)]
pub enum Error {
    /// A file could not be opened or read.
    #[error("{path}: cannot read: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A file could not be written.
    #[error("{path}: cannot write: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A JSON file that does not have the expected structure or values.
    #[error("{path}: {detail}")]
    Json {
        /// The file.
        path: PathBuf,
        /// Where in the file (JSON path, entry ids) and what was expected.
        detail: String,
    },
    /// A malformed PLY file.
    #[error("{path}: {detail}")]
    Ply {
        /// The file.
        path: PathBuf,
        /// Where in the file (header line, element and index, property) and what was expected.
        detail: String,
    },
    /// A malformed row of a BOP results CSV.
    #[error("{path}:{line}: {detail}")]
    Csv {
        /// The file.
        path: PathBuf,
        /// 1-based line number (the header is line 1).
        line: u64,
        /// What was wrong.
        detail: String,
    },
    /// A dataset that is not laid out as BOP prescribes, or whose parts disagree.
    #[error("{path}: {detail}")]
    Dataset {
        /// The file or folder.
        path: PathBuf,
        /// What was expected.
        detail: String,
    },
    /// An image file that cannot be decoded or is not of the expected kind (format, bit
    /// depth, colour type), or an image that cannot be encoded.
    #[error("{path}: {reason}")]
    Image {
        /// The file.
        path: PathBuf,
        /// What was expected and what was found (e.g. "expected a 16-bit grayscale PNG,
        /// found 8-bit RGB").
        reason: String,
    },
    /// Bad geometry that the kernels refused (empty model, bad symmetry).
    #[error("{context}: {source}")]
    Kernel {
        /// What was being prepared (e.g. the model file).
        context: String,
        /// The kernel's error.
        source: posed_kernels::KernelError,
    },
    /// A configuration file that does not parse or holds a bad value.
    #[error("{path}: {key}: {reason}")]
    Config {
        /// The configuration file.
        path: PathBuf,
        /// The key, dotted (e.g. `engines.max_batch`), or `(file)`.
        key: String,
        /// What was expected and what was found.
        reason: String,
    },
    /// A request that cannot be carried out as given (options that contradict each other,
    /// an input that does not fit the loaded models).
    #[error("{what}: {reason}")]
    Invalid {
        /// What was asked (e.g. "refiner iterations").
        what: String,
        /// Why it cannot be done.
        reason: String,
    },
    /// A camera that cannot be opened, set up or read (unplugged, busy, driver error, a
    /// format it does not offer). The daemon reopens it with backoff.
    #[error("{device}: {detail}")]
    Camera {
        /// The device node.
        device: PathBuf,
        /// What failed and what was expected.
        detail: String,
    },
    /// A pose stream peer (subscriber or server) that broke the protocol or went away.
    #[error("pose stream {peer}: {detail}")]
    Stream {
        /// The socket path, or the subscriber (`subscriber 3 (pid 1234)`).
        peer: String,
        /// What happened.
        detail: String,
    },
    /// A sensor attribute (sysfs) that holds something other than what its driver's ABI
    /// promises.
    #[error("{path}: {detail}")]
    Sensor {
        /// The attribute file.
        path: PathBuf,
        /// What was expected and what was found.
        detail: String,
    },
    /// A network, backend or engine cache error (it names its file).
    #[error(transparent)]
    Engine(#[from] posed_engines::EngineError),
}

/// Result with the library's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;
