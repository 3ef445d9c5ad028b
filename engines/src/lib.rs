//! posed-engines: the networks' contracts and the backends that run them.
//!
//! - [`contract`]: the three roles (detector, coarse, refiner), their tensors, and the
//!   check of an ONNX file's declared inputs and outputs against them.
//! - [`network`]: an ONNX file with its sidecar (role, labels), loaded and checked.
//! - [`backend`]: the interface every backend implements: load, session, run.
//! - [`cpu`]: the pure-Rust CPU backend (tract), the default.
//! - [`tensorrt`]: the TensorRT backend (feature `tensorrt`).
//! - [`cache`]: built engines on disk, verified on load, written atomically, built once
//!   under a lock.
//! - [`tensor`]: shapes and the output buffers sessions fill.
//!
//! Depends on posed-kernels only (for the CUDA device, with feature `tensorrt`); runtime
//! depends on this crate, never the other way round.

pub mod backend;
pub mod cache;
pub mod contract;
pub mod cpu;
mod error;
pub mod network;
pub mod npy;
pub mod tensor;
#[cfg(feature = "tensorrt")]
pub mod tensorrt;

pub use backend::{Backend, BackendKind, Model, ModelOptions, Session};
pub use cache::{CacheOutcome, EngineCache, EngineKey, Precision};
pub use contract::{Contract, DetectorLayout, Role};
pub use cpu::CpuBackend;
pub use error::{panic_message, EngineError};
pub use network::{Network, Sidecar};
pub use tensor::{DType, OutputTensor, Outputs, Shape};
