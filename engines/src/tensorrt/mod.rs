//! The TensorRT backend (feature `tensorrt`).
//!
//! A thin C++ shim (`engines/shim/`, see its README) sits between this module and
//! TensorRT. `build.rs` compiles it only when TensorRT's headers are found and then sets
//! `cfg(posed_trt_shim)`; the shim dlopen()s libnvinfer at run time, so a posed built with
//! it still starts on a machine without TensorRT and [`TensorRtBackend::new`] says what is
//! missing. Everything that does not need TensorRT (engine cache keys, optimisation
//! profiles, buffer sizes, data-type mapping, the check of a built engine against the
//! contract) is in [`plan`] and this file, built and tested everywhere.
//!
//! - Loading a network: the engine comes from the [`EngineCache`], keyed by
//!   [`engine_key`] (ONNX sha256, TensorRT version, GPU name and compute capability,
//!   precision, DLA core, batch profile, image size, shim version); a miss builds it
//!   (minutes on a Jetson: progress goes to the [`ProgressHook`] and the log). The
//!   engine's tensors are then checked against the contract.
//! - A session owns a TensorRT execution context, a CUDA stream, device buffers for the
//!   largest run ([`plan::binding_plan`]) and pinned host staging buffers, all allocated
//!   when the session is made. A run copies the input in, sets its shape, enqueues, waits
//!   and copies the outputs into the caller's [`crate::Outputs`].

pub mod plan;

#[cfg(posed_trt_shim)]
mod device;
#[cfg(posed_trt_shim)]
mod ffi;
#[cfg(posed_trt_shim)]
mod shim;

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::backend::{Backend, BackendKind, Model, ModelOptions};
use crate::cache::{CacheOutcome, EngineCache, EngineKey, Precision};
use crate::contract::{Contract, Role};
use crate::{EngineError, Network};

pub use plan::{
    batch_profile, binding_plan, check_engine_io, optimisation_profile, BindingSize, EngineIo,
    EngineTensor, ProfileShapes, Transfer, TrtDataType,
};

/// Version of the shim's ABI and engine-building code (`POSED_TRT_SHIM_VERSION` in
/// `shim/posed_trt_shim.h`): the engine cache key's `builder_version`.
pub const SHIM_VERSION: u32 = 1;

/// The backend's name in engine cache keys and errors.
pub const BACKEND_NAME: &str = "tensorrt";

/// Why the backend is unavailable in a build without the shim.
pub const NOT_COMPILED_REASON: &str = "posed was built without TensorRT headers, so its TensorRT shim was not \
     compiled; rebuild with TENSORRT_ROOT=<TensorRT dir with include/NvInfer.h> and --features tensorrt \
     (on JetPack the headers are in /usr/include/aarch64-linux-gnu and are found without TENSORRT_ROOT)";

/// Settings of the TensorRT backend.
#[derive(Debug, Clone)]
pub struct TensorRtOptions {
    /// Where built engines are kept.
    pub cache: EngineCache,
    /// Precision engines are built for.
    pub precision: Precision,
    /// Run on this DLA core (Jetson Orin AGX / NX), with GPU fallback; needs fp16 or int8.
    pub dla_core: Option<u32>,
    /// Builder workspace limit in MiB (0: TensorRT's default, all device memory).
    pub workspace_mib: usize,
    /// The CUDA device.
    pub device_ordinal: usize,
}

/// Largest workspace limit accepted, in MiB (1 TiB).
const MAX_WORKSPACE_MIB: usize = 1 << 20;

impl TensorRtOptions {
    /// fp16 on GPU 0 with a 1 GiB builder workspace: the usual choice on a Jetson.
    pub fn new(cache: EngineCache) -> TensorRtOptions {
        TensorRtOptions {
            cache,
            precision: Precision::Fp16,
            dla_core: None,
            workspace_mib: 1024,
            device_ordinal: 0,
        }
    }

    /// Checks the options that can be checked without a GPU.
    pub fn validate(&self) -> Result<(), EngineError> {
        if self.dla_core.is_some() && self.precision == Precision::Fp32 {
            return Err(EngineError::Config {
                what: "dla_core",
                reason: "the DLA runs fp16 and int8 networks only; set precision to fp16 (or int8) or drop dla_core"
                    .to_owned(),
            });
        }
        if self.workspace_mib > MAX_WORKSPACE_MIB {
            return Err(EngineError::Config {
                what: "workspace_mib",
                reason: format!(
                    "expected at most {MAX_WORKSPACE_MIB} MiB, found {}",
                    self.workspace_mib
                ),
            });
        }
        Ok(())
    }

    /// The workspace limit in bytes (0: TensorRT's default).
    pub fn workspace_bytes(&self) -> u64 {
        (self.workspace_mib as u64).saturating_mul(1 << 20)
    }
}

/// What an engine build reports while it runs.
#[derive(Debug, Clone, PartialEq)]
pub enum BuildProgress {
    /// A build starts.
    Started {
        /// The ONNX file.
        network: PathBuf,
        /// Its role.
        role: Role,
        /// The precision.
        precision: Precision,
        /// The TensorRT library's version.
        tensorrt_version: String,
        /// Whether phase and step events follow (TensorRT 10). TensorRT 8.6 reports no
        /// progress: expect minutes with nothing but this event and [`Self::Finished`].
        detailed: bool,
    },
    /// A build phase starts (TensorRT 10).
    PhaseStarted {
        /// TensorRT's name for the phase.
        phase: String,
        /// The enclosing phase, for a nested one.
        parent: Option<String>,
        /// Steps the phase has.
        steps: u32,
    },
    /// A step of a phase is done (TensorRT 10).
    Step {
        /// The phase.
        phase: String,
        /// The step just completed (0-based).
        step: u32,
    },
    /// A phase is done (TensorRT 10).
    PhaseFinished {
        /// The phase.
        phase: String,
    },
    /// The build is done and the engine stored.
    Finished {
        /// How long it took.
        elapsed: Duration,
        /// Size of the serialised engine.
        engine_bytes: usize,
    },
}

/// Receives [`BuildProgress`] events (the CLI turns them into a progress bar). Called on
/// the building thread and on TensorRT's own threads.
pub type ProgressHook = Box<dyn Fn(BuildProgress) + Send + Sync>;

/// The inputs of a TensorRT engine cache key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineKeyInputs<'a> {
    /// sha256 of the ONNX file, hex.
    pub onnx_sha256: &'a str,
    /// The network's contract.
    pub contract: Contract,
    /// Largest batch and image.
    pub options: ModelOptions,
    /// Precision.
    pub precision: Precision,
    /// DLA core.
    pub dla_core: Option<u32>,
    /// TensorRT library version ("10.3.0").
    pub tensorrt_version: &'a str,
    /// GPU name ("Orin").
    pub device_name: &'a str,
    /// Compute capability (major, minor).
    pub compute_capability: (u32, u32),
}

impl EngineKeyInputs<'_> {
    /// The cache key.
    pub fn key(&self) -> EngineKey {
        let max_image_hw = if self.contract.role == Role::Detector {
            self.options.max_image_hw
        } else {
            (0, 0)
        };
        EngineKey {
            onnx_sha256: self.onnx_sha256.to_owned(),
            role: self.contract.role.name().to_owned(),
            backend: BACKEND_NAME.to_owned(),
            backend_version: self.tensorrt_version.to_owned(),
            device_name: self.device_name.to_owned(),
            compute_capability: format!(
                "{}.{}",
                self.compute_capability.0, self.compute_capability.1
            ),
            precision: self.precision,
            dla_core: self.dla_core,
            batch_profile: batch_profile(&self.contract, &self.options),
            max_image_hw,
            builder_version: SHIM_VERSION,
        }
    }
}

/// The engine cache key for `network` built with these settings on this TensorRT and GPU.
pub fn engine_key(
    network: &Network,
    options: &ModelOptions,
    precision: Precision,
    dla_core: Option<u32>,
    tensorrt_version: &str,
    device_name: &str,
    compute_capability: (u32, u32),
) -> EngineKey {
    EngineKeyInputs {
        onnx_sha256: &network.sha256_hex(),
        contract: network.contract(),
        options: *options,
        precision,
        dla_core,
        tensorrt_version,
        device_name,
        compute_capability,
    }
    .key()
}

/// Runs networks with TensorRT on an NVIDIA GPU (or a Jetson's DLA).
pub struct TensorRtBackend {
    options: TensorRtOptions,
    progress: Option<ProgressHook>,
    inner: Inner,
}

#[cfg(posed_trt_shim)]
type Inner = device::Runtime;

/// Without the shim no backend can exist: [`TensorRtBackend::new`] always fails.
#[cfg(not(posed_trt_shim))]
enum Inner {}

impl fmt::Debug for TensorRtBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TensorRtBackend")
            .field("options", &self.options)
            .field("progress", &self.progress.as_ref().map(|_| "hook"))
            .field("tensorrt_version", &self.tensorrt_version())
            .field("device", &self.device_name())
            .finish()
    }
}

impl TensorRtBackend {
    /// Opens TensorRT and the GPU. [`EngineError::BackendUnavailable`] when this posed was
    /// built without the shim, when libnvinfer is not installed (or is a version the shim
    /// was not compiled for), or when there is no CUDA driver or device.
    pub fn new(options: TensorRtOptions) -> Result<TensorRtBackend, EngineError> {
        #[cfg(not(posed_trt_shim))]
        {
            let _ = options;
            Err(EngineError::BackendUnavailable {
                backend: BACKEND_NAME,
                reason: NOT_COMPILED_REASON.to_owned(),
            })
        }
        #[cfg(posed_trt_shim)]
        {
            options.validate()?;
            let inner = device::Runtime::open(&options)?;
            Ok(TensorRtBackend {
                options,
                progress: None,
                inner,
            })
        }
    }

    /// Sends build progress to `hook` (by default it only goes to the log).
    pub fn with_progress(mut self, hook: ProgressHook) -> TensorRtBackend {
        self.progress = Some(hook);
        self
    }

    /// The options.
    pub fn options(&self) -> &TensorRtOptions {
        &self.options
    }

    /// The TensorRT library's version, "major.minor.patch".
    pub fn tensorrt_version(&self) -> &str {
        #[cfg(posed_trt_shim)]
        {
            self.inner.tensorrt_version()
        }
        #[cfg(not(posed_trt_shim))]
        match self.inner {}
    }

    /// The GPU's name.
    pub fn device_name(&self) -> &str {
        #[cfg(posed_trt_shim)]
        {
            self.inner.device().name()
        }
        #[cfg(not(posed_trt_shim))]
        match self.inner {}
    }

    /// The GPU's compute capability.
    pub fn compute_capability(&self) -> (u32, u32) {
        #[cfg(posed_trt_shim)]
        {
            self.inner.device().compute_capability()
        }
        #[cfg(not(posed_trt_shim))]
        match self.inner {}
    }

    /// The cache key `network` gets on this machine with these options.
    pub fn engine_key_for(&self, network: &Network, options: &ModelOptions) -> EngineKey {
        engine_key(
            network,
            options,
            self.options.precision,
            self.options.dla_core,
            self.tensorrt_version(),
            self.device_name(),
            self.compute_capability(),
        )
    }

    /// Builds the engine for `network` ahead of time (`posed engines build`), or finds it
    /// in the cache, and checks it against the contract. Returns the cache entry's path.
    pub fn build_engine(
        &self,
        network: &Network,
        options: ModelOptions,
    ) -> Result<(PathBuf, CacheOutcome), EngineError> {
        #[cfg(posed_trt_shim)]
        {
            let key = self.engine_key_for(network, &options);
            let outcome = self
                .inner
                .prepare(
                    network,
                    &options,
                    &self.options,
                    &key,
                    self.progress.as_deref(),
                )?
                .outcome;
            Ok((self.options.cache.entry_path(&key), outcome))
        }
        #[cfg(not(posed_trt_shim))]
        {
            let _ = (network, options);
            match self.inner {}
        }
    }
}

impl Backend for TensorRtBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::TensorRt
    }

    fn load(&self, network: Network, options: ModelOptions) -> Result<Box<dyn Model>, EngineError> {
        #[cfg(posed_trt_shim)]
        {
            let key = self.engine_key_for(&network, &options);
            let model = self.inner.load(
                network,
                options,
                &self.options,
                &key,
                self.progress.as_deref(),
            )?;
            Ok(Box::new(model))
        }
        #[cfg(not(posed_trt_shim))]
        {
            let _ = (network, options);
            match self.inner {}
        }
    }
}

#[cfg(test)]
mod tests;
