//! Backends as the configuration asks for them: building engines ahead of time (so the
//! service starts fast), listing the cache, and running one batch for debugging.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use posed_engines::cache::EntryInfo;
use posed_engines::cpu::CpuModel;
use posed_engines::npy::{NpyArray, NpyData};
use posed_engines::{
    Backend, BackendKind, CacheOutcome, CpuBackend, EngineCache, Model, ModelOptions, Network,
    OutputTensor,
};

use crate::config::EnginesConfig;
use crate::{Error, Result};

/// The backend `config` names, with its engine cache.
pub fn make_backend(config: &EnginesConfig) -> Result<Box<dyn Backend>> {
    let cache = EngineCache::open(config.cache_dir())?;
    match config.backend {
        BackendKind::Cpu => {
            tracing::info!(
                kernels = posed_engines::cpu::kernel_instructions(),
                threads = config.cpu_threads(),
                "CPU backend"
            );
            Ok(Box::new(
                CpuBackend::with_cache(cache).with_threads(config.cpu_threads()),
            ))
        }
        BackendKind::TensorRt => Ok(Box::new(tensorrt::backend(config, cache, None)?)),
    }
}

/// What [`profile_network`] found.
#[derive(Debug, Clone)]
pub struct NetworkProfile {
    /// The input of the item timed (the largest the configuration allows).
    pub item_shape: posed_engines::Shape,
    /// Threads the run had, the caller's included.
    pub threads: usize,
    /// Each step of the planned executor and its mean time; `None` on tract's plan...
    pub steps: Option<Vec<posed_engines::cpu::StepProfile>>,
    /// ... and why the planned executor refused the graph.
    pub refusal: Option<String>,
}

/// Times each step of `network` on the CPU backend, with `config`'s threads and cache,
/// over `runs` runs of one item of a fixed input (values in [0, 1)).
pub fn profile_network(
    config: &EnginesConfig,
    network: Network,
    runs: usize,
) -> Result<NetworkProfile> {
    let cache = EngineCache::open(config.cache_dir())?;
    let backend = CpuBackend::with_cache(cache).with_threads(config.cpu_threads());
    let (model, _) = backend.load_with_outcome(network, config.model_options())?;
    let item_shape = model.load_item_shape();
    let item: Vec<f32> = (0..item_shape.volume())
        .map(|i| (i * 7919 % 1000) as f32 / 1000.0)
        .collect();
    Ok(NetworkProfile {
        steps: model.profile(&item, runs)?,
        refusal: model.planned_refusal(),
        threads: model.threads(),
        item_shape,
    })
}

/// Receives one line per build progress event.
pub type ProgressLine = Box<dyn Fn(String) + Send + Sync>;

#[cfg(feature = "tensorrt")]
mod tensorrt {
    use posed_engines::tensorrt::{BuildProgress, TensorRtBackend, TensorRtOptions};
    use posed_engines::EngineCache;

    use super::ProgressLine;
    use crate::config::EnginesConfig;
    use crate::Result;

    pub(super) type Backend = TensorRtBackend;

    pub(super) fn backend(
        config: &EnginesConfig,
        cache: EngineCache,
        progress: Option<ProgressLine>,
    ) -> Result<TensorRtBackend> {
        let options = TensorRtOptions {
            cache,
            precision: config.precision,
            dla_core: config.dla_core,
            workspace_mib: config.workspace_mib,
            device_ordinal: 0,
        };
        let backend = TensorRtBackend::new(options)?;
        Ok(match progress {
            Some(line) => backend.with_progress(Box::new(move |event| line(describe(&event)))),
            None => backend,
        })
    }

    fn describe(event: &BuildProgress) -> String {
        match event {
            BuildProgress::Started {
                tensorrt_version,
                detailed,
                ..
            } => format!(
                "TensorRT {tensorrt_version}: building{}",
                if *detailed {
                    ""
                } else {
                    " (TensorRT 8 reports no progress; this takes minutes)"
                }
            ),
            BuildProgress::PhaseStarted { phase, steps, .. } => format!("{phase} (0/{steps})"),
            BuildProgress::Step { phase, step } => format!("{phase} ({})", step + 1),
            BuildProgress::PhaseFinished { phase } => format!("{phase} done"),
            BuildProgress::Finished {
                elapsed,
                engine_bytes,
            } => format!(
                "built in {:.0} s, {} bytes",
                elapsed.as_secs_f64(),
                engine_bytes
            ),
        }
    }

    pub(super) fn build(
        backend: &TensorRtBackend,
        network: &posed_engines::Network,
        options: posed_engines::ModelOptions,
    ) -> Result<posed_engines::CacheOutcome> {
        Ok(backend.build_engine(network, options)?.1)
    }
}

#[cfg(not(feature = "tensorrt"))]
mod tensorrt {
    use posed_engines::{EngineCache, EngineError};

    use super::ProgressLine;
    use crate::config::EnginesConfig;
    use crate::Result;

    /// No TensorRT backend can exist in this build.
    pub(super) enum Backend {}

    impl posed_engines::Backend for Backend {
        fn kind(&self) -> posed_engines::BackendKind {
            match *self {}
        }

        fn load(
            &self,
            _network: posed_engines::Network,
            _options: posed_engines::ModelOptions,
        ) -> std::result::Result<Box<dyn posed_engines::Model>, EngineError> {
            match *self {}
        }
    }

    pub(super) fn backend(
        _config: &EnginesConfig,
        _cache: EngineCache,
        _progress: Option<ProgressLine>,
    ) -> Result<Backend> {
        Err(EngineError::BackendUnavailable {
            backend: "tensorrt",
            reason: "this posed was built without the `tensorrt` feature (cargo build --features tensorrt, with TensorRT's headers installed)".to_owned(),
        }
        .into())
    }

    pub(super) fn build(
        backend: &Backend,
        _network: &posed_engines::Network,
        _options: posed_engines::ModelOptions,
    ) -> Result<posed_engines::CacheOutcome> {
        match *backend {}
    }
}

/// What building one network's engine did.
#[derive(Debug, Clone)]
pub struct BuildReport {
    /// Where the engine came from.
    pub outcome: CacheOutcome,
    /// How long it took.
    pub elapsed: Duration,
    /// Which executor runs the CPU backend's graph, and why tract's plan when the planned
    /// one was refused; `None` for TensorRT.
    pub cpu_executor: Option<String>,
}

/// Builds (or finds in the cache and verifies) the engine of `network` for `options` with
/// the backend and cache `config` names, ahead of time. `progress` gets a line per build
/// progress event (TensorRT 10 reports phases and steps).
pub fn build_engine(
    config: &EnginesConfig,
    network: Network,
    options: ModelOptions,
    progress: Option<ProgressLine>,
) -> Result<BuildReport> {
    let started = Instant::now();
    let cache = EngineCache::open(config.cache_dir())?;
    let (outcome, cpu_executor) = match config.backend {
        BackendKind::Cpu => {
            let backend = CpuBackend::with_cache(cache).with_threads(config.cpu_threads());
            let (model, outcome): (CpuModel, CacheOutcome) =
                backend.load_with_outcome(network, options)?;
            let executor = match model.planned_refusal() {
                None => format!(
                    "planned executor ({} kernels), {} threads, {} per session and {} more \
                     per thread after the first",
                    posed_engines::cpu::kernel_instructions(),
                    model.threads(),
                    mib(model.session_buffer_bytes()),
                    mib(model.worker_buffer_bytes()),
                ),
                Some(why) => format!("tract's plan (allocates per run): {why}"),
            };
            (outcome, Some(executor))
        }
        BackendKind::TensorRt => {
            let backend: tensorrt::Backend = tensorrt::backend(config, cache, progress)?;
            (tensorrt::build(&backend, &network, options)?, None)
        }
    };
    Ok(BuildReport {
        outcome,
        elapsed: started.elapsed(),
        cpu_executor,
    })
}

/// Bytes in MiB, one decimal.
fn mib(bytes: usize) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// One line of `posed engines list`.
pub fn describe_entry(entry: &EntryInfo, now: SystemTime) -> String {
    let name = entry
        .path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("?");
    let short = name.get(..12).unwrap_or(name);
    let Some(key) = &entry.key else {
        return format!(
            "{short}  unusable: {}",
            entry.problem.as_deref().unwrap_or("?")
        );
    };
    let age_s = now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        .saturating_sub(entry.created_unix_s);
    let (min_batch, _, max_batch) = key.batch_profile;
    let dla = key
        .dla_core
        .map_or_else(String::new, |core| format!(" dla{core}"));
    let status = entry.problem.as_deref().unwrap_or("ok");
    format!(
        "{short}  {:<8} {:<18} {:<22} {:<5} batch {min_batch}..{max_batch:<4} {:>10}  {:>9} old  onnx {}  {status}",
        key.role,
        format!("{} {}", key.backend, key.backend_version),
        format!("{} (cc {}){dla}", key.device_name, key.compute_capability),
        key.precision.name(),
        human_bytes(entry.payload_len),
        human_age(age_s),
        key.onnx_sha256.get(..12).unwrap_or(&key.onnx_sha256),
    )
}

fn human_bytes(bytes: u64) -> String {
    let b = bytes as f64;
    if b >= 1024.0 * 1024.0 {
        format!("{:.1} MiB", b / (1024.0 * 1024.0))
    } else if b >= 1024.0 {
        format!("{:.1} KiB", b / 1024.0)
    } else {
        format!("{bytes} B")
    }
}

fn human_age(seconds: u64) -> String {
    match seconds {
        s if s < 120 => format!("{s} s"),
        s if s < 2 * 3600 => format!("{} min", s / 60),
        s if s < 2 * 86_400 => format!("{} h", s / 3600),
        s => format!("{} days", s / 86_400),
    }
}

/// Runs one batch of `input` through `model` (a fresh session) and returns its first
/// output as an array, for `posed engines run`.
pub fn run_once(model: &dyn Model, input: &[f32], shape: &[usize]) -> Result<NpyArray> {
    let mut session = model.new_session()?;
    let mut outputs = session.allocate_outputs();
    session.run(input, shape, &mut outputs)?;
    let first: &OutputTensor = outputs.tensors().first().ok_or_else(|| {
        Error::from(posed_engines::EngineError::Output {
            tensor: "(first)".to_owned(),
            reason: "the model has no outputs".to_owned(),
        })
    })?;
    let data = match (first.f32s(), first.i64s()) {
        (Some(values), _) => NpyData::F32(values.to_vec()),
        (None, Some(values)) => NpyData::I64(values.to_vec()),
        (None, None) => NpyData::F32(Vec::new()),
    };
    Ok(NpyArray {
        shape: first.shape().dims().to_vec(),
        data,
    })
}

/// The model options for running one input of `shape` through `network`'s contract:
/// the batch and (for a detector) the image size of that input.
pub fn options_for_input(network: &Network, shape: &[usize]) -> ModelOptions {
    let contract = network.contract();
    let max_batch = if contract.is_batched() {
        shape.first().copied().unwrap_or(1).max(1)
    } else {
        1
    };
    let max_image_hw = match shape {
        [.., h, w] if contract.role == posed_engines::Role::Detector => ((*h).max(1), (*w).max(1)),
        _ => ModelOptions::default().max_image_hw,
    };
    ModelOptions {
        max_batch,
        max_image_hw,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_units() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(15_360), "15.0 KiB");
        assert_eq!(human_bytes(3 * 1024 * 1024), "3.0 MiB");
        assert_eq!(human_age(59), "59 s");
        assert_eq!(human_age(600), "10 min");
        assert_eq!(human_age(3 * 86_400), "3 days");
    }
}
