//! The configuration file (TOML), shared by `posed engines build`, `posed predict` and the
//! daemon. Paths inside are relative to the file's folder. Unknown keys are errors, and
//! every error names the key.
//!
//! ```toml
//! [networks]
//! detector = "networks/detector.onnx"   # each optional; a sidecar .toml next to each
//! coarse = "networks/coarse.onnx"
//! refiner = "networks/refiner.onnx"
//!
//! [engines]
//! backend = "cpu"          # "cpu" (default) or "tensorrt"
//! precision = "fp16"       # "fp32" (default), "fp16" or "int8" (TensorRT only)
//! dla_core = 0             # TensorRT: run on this DLA core (GPU fallback); omit for the GPU
//! workspace_mib = 1024     # TensorRT builder workspace limit
//! max_batch = 16           # objects per coarse / refiner pass, images per detector pass
//! max_image = [480, 640]   # largest detector input, height and width in pixels
//! cpu_threads = 4          # cpu backend: threads a network runs on, a batch's items side
//!                          # by side, one item's large steps split (default: the cores,
//!                          # at most 4; each holds a copy of a batched session's buffers)
//! cache_dir = "/var/cache/posed/engines"  # default: $POSED_CACHE_DIR, $XDG_CACHE_HOME/posed/engines
//!
//! [predict]                # `posed predict`; every key is also a flag, and flags win
//! dataset = "data/ycbv-mini"
//! split = "test"
//! detections = "detections.json"   # or init_poses = "init.csv", or [networks] detector
//! coarse_iterations = 1
//! refiner_iterations = 4
//! init = "zup-autodepth"   # or "z1"
//! batch_size = 16
//! detection_threshold = 0.0
//! one_instance_per_class = false
//! labels = [1, 5]          # object ids to keep (default: all)
//! out = "results.csv"
//! save_iterations = "iterations"
//! ```
//!
//! The daemon's sections (`[source]`, `[pipeline]`, `[stream]`, `[service]`) are in
//! [`daemon`]; [`Config::validate_daemon`] checks them together with the networks.

use std::path::{Path, PathBuf};

use posed_engines::{BackendKind, ModelOptions, Precision, Role};
use serde::Deserialize;

use crate::pipeline::{ComputeDevice, InitScheme};
use crate::{Error, Result};

pub mod daemon;

pub use daemon::{
    CameraFormat, CameraIo, ObjectsFrom, PipelineConfig, ServiceConfig, SourceConfig, SourceKind,
    StreamConfig,
};

/// The whole configuration file.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The networks.
    #[serde(default)]
    pub networks: NetworksConfig,
    /// How networks run.
    #[serde(default)]
    pub engines: EnginesConfig,
    /// `posed predict` settings.
    #[serde(default)]
    pub predict: PredictConfig,
    /// The daemon's frame source.
    #[serde(default)]
    pub source: SourceConfig,
    /// The daemon's per-frame work.
    #[serde(default)]
    pub pipeline: PipelineConfig,
    /// The pose stream.
    #[serde(default)]
    pub stream: StreamConfig,
    /// systemd integration.
    #[serde(default)]
    pub service: ServiceConfig,
    /// The file it was read from (for error messages); empty for a default config.
    #[serde(skip)]
    pub path: PathBuf,
}

/// `[predict]`: the settings of `posed predict` (see its flags for their meaning).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PredictConfig {
    /// BOP dataset folder.
    pub dataset: Option<PathBuf>,
    /// Split folder (default `test`).
    pub split: Option<String>,
    /// BOP 2D-detection JSON file.
    pub detections: Option<PathBuf>,
    /// BOP19 results CSV of initial poses.
    pub init_poses: Option<PathBuf>,
    /// Coarse iterations.
    pub coarse_iterations: Option<usize>,
    /// Refiner iterations.
    pub refiner_iterations: Option<usize>,
    /// Initial poses from boxes.
    pub init: Option<InitScheme>,
    /// Where the loop's geometry runs (`cpu` or `cuda`).
    pub device: Option<ComputeDevice>,
    /// Objects per network pass.
    pub batch_size: Option<usize>,
    /// Keep detections scoring above this.
    pub detection_threshold: Option<f64>,
    /// Keep the best detection of each object per image.
    pub one_instance_per_class: Option<bool>,
    /// Object ids to keep.
    pub labels: Option<Vec<u32>>,
    /// Results CSV.
    pub out: Option<PathBuf>,
    /// Folder for one results CSV per iteration.
    pub save_iterations: Option<PathBuf>,
}

/// `[networks]`: ONNX files by role.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworksConfig {
    /// Detector ONNX file.
    pub detector: Option<PathBuf>,
    /// Coarse ONNX file.
    pub coarse: Option<PathBuf>,
    /// Refiner ONNX file.
    pub refiner: Option<PathBuf>,
}

impl NetworksConfig {
    /// The configured networks with their roles, detector first.
    pub fn by_role(&self) -> Vec<(Role, &Path)> {
        [
            (Role::Detector, &self.detector),
            (Role::Coarse, &self.coarse),
            (Role::Refiner, &self.refiner),
        ]
        .into_iter()
        .filter_map(|(role, path)| path.as_deref().map(|p| (role, p)))
        .collect()
    }
}

/// `[engines]`: backend and engine settings.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnginesConfig {
    /// The backend.
    #[serde(default)]
    pub backend: BackendKind,
    /// Numeric precision (TensorRT; the CPU backend computes in fp32).
    #[serde(default)]
    pub precision: Precision,
    /// DLA core for TensorRT.
    pub dla_core: Option<u32>,
    /// TensorRT builder workspace limit, MiB.
    #[serde(default = "default_workspace_mib")]
    pub workspace_mib: usize,
    /// Largest batch.
    #[serde(default = "default_max_batch")]
    pub max_batch: usize,
    /// Largest detector input, [height, width].
    #[serde(default = "default_max_image", deserialize_with = "exact_array")]
    pub max_image: [usize; 2],
    /// Threads the CPU backend runs a network on (a batch's items side by side, one
    /// item's large steps split); `None`: [`default_cpu_threads`].
    pub cpu_threads: Option<usize>,
    /// Engine cache directory.
    pub cache_dir: Option<PathBuf>,
}

/// Most threads the CPU backend uses unless told: each holds a copy of a session's
/// buffers (23 MiB for an EfficientNet-B3 refiner), and batches are a few objects.
const DEFAULT_MAX_CPU_THREADS: usize = 4;

/// Most threads `engines.cpu_threads` (and the daemon's `pipeline.render_threads`) may
/// ask for.
const MAX_CPU_THREADS: usize = 64;

/// An array of exactly `N` values. serde's own arrays take the first `N` elements of a
/// longer TOML array and drop the rest without a word (`max_image = [480, 640, 3]`).
fn exact_array<'de, D, T, const N: usize>(deserializer: D) -> std::result::Result<[T; N], D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct Length<const N: usize>;
    impl<const N: usize> serde::de::Expected for Length<N> {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "an array of {N} elements")
        }
    }
    let values = Vec::<T>::deserialize(deserializer)?;
    let found = values.len();
    values
        .try_into()
        .map_err(|_| serde::de::Error::invalid_length(found, &Length::<N>))
}

/// [`exact_array`] for an optional key (`#[serde(default)]` covers it missing).
fn exact_array_option<'de, D, T, const N: usize>(
    deserializer: D,
) -> std::result::Result<Option<[T; N]>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    exact_array(deserializer).map(Some)
}

/// The CPU backend's threads when the configuration does not say: the cores this process
/// may use, at most [`DEFAULT_MAX_CPU_THREADS`].
pub fn default_cpu_threads() -> usize {
    std::thread::available_parallelism()
        .map_or(1, usize::from)
        .min(DEFAULT_MAX_CPU_THREADS)
}

fn default_workspace_mib() -> usize {
    1024
}

fn default_max_batch() -> usize {
    ModelOptions::default().max_batch
}

fn default_max_image() -> [usize; 2] {
    let (h, w) = ModelOptions::default().max_image_hw;
    [h, w]
}

impl Default for EnginesConfig {
    fn default() -> Self {
        EnginesConfig {
            backend: BackendKind::default(),
            precision: Precision::default(),
            dla_core: None,
            workspace_mib: default_workspace_mib(),
            max_batch: default_max_batch(),
            max_image: default_max_image(),
            cpu_threads: None,
            cache_dir: None,
        }
    }
}

impl EnginesConfig {
    /// The model options these settings give.
    pub fn model_options(&self) -> ModelOptions {
        ModelOptions {
            max_batch: self.max_batch,
            max_image_hw: (self.max_image[0], self.max_image[1]),
        }
    }

    /// Threads the CPU backend runs a batch's items on.
    pub fn cpu_threads(&self) -> usize {
        self.cpu_threads.unwrap_or_else(default_cpu_threads)
    }

    /// The cache directory: the configured one or the default.
    pub fn cache_dir(&self) -> PathBuf {
        self.cache_dir
            .clone()
            .unwrap_or_else(posed_engines::EngineCache::default_dir)
    }
}

impl Config {
    /// Reads, parses and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.to_owned(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Config::parse(path, &text, base)
    }

    /// Parses configuration text read from `path`; relative paths are resolved against
    /// `base`.
    pub fn parse(path: &Path, text: &str, base: &Path) -> Result<Config> {
        let error = |key: &str, reason: String| Error::Config {
            path: path.to_owned(),
            key: key.to_owned(),
            reason,
        };
        let deserializer =
            toml::Deserializer::parse(text).map_err(|e| error("(file)", e.to_string()))?;
        let mut config: Config = serde_path_to_error::deserialize(deserializer).map_err(|e| {
            let key = match e.path().to_string() {
                root if root == "." => "(top level)".to_owned(),
                path => path,
            };
            error(&key, e.into_inner().message().trim().to_owned())
        })?;
        for path in [
            &mut config.networks.detector,
            &mut config.networks.coarse,
            &mut config.networks.refiner,
            &mut config.engines.cache_dir,
            &mut config.predict.dataset,
            &mut config.predict.detections,
            &mut config.predict.init_poses,
            &mut config.predict.out,
            &mut config.predict.save_iterations,
            &mut config.source.path,
            &mut config.pipeline.models,
        ]
        .into_iter()
        .flatten()
        {
            if path.is_relative() {
                *path = base.join(&*path);
            }
        }
        if let Some(glob) = &mut config.source.glob {
            if Path::new(glob.as_str()).is_relative() {
                *glob = base.join(glob.as_str()).to_string_lossy().into_owned();
            }
        }
        config
            .engines
            .model_options()
            .validate()
            .map_err(|e| match e {
                posed_engines::EngineError::Config { what, reason } => {
                    let key = match what {
                        "max_image_hw" => "engines.max_image",
                        _ => "engines.max_batch",
                    };
                    error(key, reason)
                }
                other => error("engines", other.to_string()),
            })?;
        if let Some(threshold) = config.predict.detection_threshold {
            if !threshold.is_finite() {
                return Err(error(
                    "predict.detection_threshold",
                    format!("expected a finite number, found {threshold}"),
                ));
            }
        }
        if config.predict.batch_size == Some(0) {
            return Err(error(
                "predict.batch_size",
                "expected at least 1, found 0".to_owned(),
            ));
        }
        if let Some(threads) = config.engines.cpu_threads {
            if !(1..=MAX_CPU_THREADS).contains(&threads) {
                return Err(error(
                    "engines.cpu_threads",
                    format!("expected 1 to {MAX_CPU_THREADS}, found {threads}"),
                ));
            }
        }
        if config.engines.workspace_mib == 0 {
            return Err(error(
                "engines.workspace_mib",
                "expected at least 1 MiB, found 0".to_owned(),
            ));
        }
        if config.engines.backend == BackendKind::Cpu {
            if config.engines.precision != Precision::Fp32 {
                return Err(error(
                    "engines.precision",
                    format!(
                        "the cpu backend computes in fp32, found \"{}\" (use backend = \"tensorrt\")",
                        config.engines.precision.name()
                    ),
                ));
            }
            if config.engines.dla_core.is_some() {
                return Err(error(
                    "engines.dla_core",
                    "a DLA core needs backend = \"tensorrt\"".to_owned(),
                ));
            }
        }
        config.path = path.to_owned();
        Ok(config)
    }

    /// Checks what `posed run` needs beyond what every command needs: a complete source,
    /// the networks the pipeline asks for, models, a usable socket mode. Errors name the key.
    pub fn validate_daemon(&self) -> Result<()> {
        daemon::validate(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config> {
        Config::parse(Path::new("posed.toml"), text, Path::new("/etc/posed"))
    }

    #[test]
    fn full_file_parses_and_resolves_paths() {
        let config = parse(
            r#"
            [networks]
            refiner = "networks/refiner.onnx"
            detector = "/opt/det.onnx"
            [engines]
            backend = "tensorrt"
            precision = "fp16"
            dla_core = 1
            max_batch = 8
            max_image = [540, 720]
            cache_dir = "cache"
            [predict]
            dataset = "data/ycbv"
            init = "zup-autodepth"
            refiner_iterations = 2
            labels = [1, 5]
            "#,
        )
        .expect("valid");
        assert_eq!(
            config.networks.refiner.as_deref(),
            Some(Path::new("/etc/posed/networks/refiner.onnx"))
        );
        assert_eq!(
            config.networks.detector.as_deref(),
            Some(Path::new("/opt/det.onnx"))
        );
        assert_eq!(config.engines.backend, BackendKind::TensorRt);
        assert_eq!(config.engines.precision, Precision::Fp16);
        assert_eq!(
            config.predict.dataset.as_deref(),
            Some(Path::new("/etc/posed/data/ycbv"))
        );
        assert_eq!(config.predict.init, Some(InitScheme::ZupAutodepth));
        assert_eq!(config.predict.refiner_iterations, Some(2));
        assert_eq!(config.predict.labels.as_deref(), Some(&[1, 5][..]));
        assert_eq!(config.engines.model_options().max_image_hw, (540, 720));
        assert_eq!(
            config.engines.cache_dir(),
            PathBuf::from("/etc/posed/cache")
        );
        let roles: Vec<Role> = config.networks.by_role().iter().map(|(r, _)| *r).collect();
        assert_eq!(roles, [Role::Detector, Role::Refiner]);
    }

    #[test]
    fn empty_file_gives_defaults() {
        let config = parse("").expect("empty is valid");
        assert_eq!(config.engines, EnginesConfig::default());
        assert_eq!(config.engines.backend, BackendKind::Cpu);
        let threads = config.engines.cpu_threads();
        assert!(
            (1..=DEFAULT_MAX_CPU_THREADS).contains(&threads),
            "{threads}"
        );
        let config = parse("[engines]\ncpu_threads = 3").expect("valid");
        assert_eq!(config.engines.cpu_threads(), 3);
    }

    #[test]
    fn errors_name_the_key() {
        let check = |text: &str, key: &str, part: &str| {
            let message = parse(text).expect_err(text).to_string();
            assert!(message.starts_with("posed.toml: "), "{message}");
            assert!(message.contains(key), "expected key {key} in: {message}");
            assert!(message.contains(part), "expected {part:?} in: {message}");
        };
        check(
            "[engines]\nmax_batch = \"many\"",
            "engines.max_batch",
            "string",
        );
        check("[engines]\nmax_batch = 0", "engines.max_batch", "found 0");
        check(
            "[engines]\ncpu_threads = 0",
            "engines.cpu_threads",
            "found 0",
        );
        check(
            "[engines]\ncpu_threads = 65",
            "engines.cpu_threads",
            "1 to 64",
        );
        check("[engines]\ncpu_threads = -2", "engines.cpu_threads", "");
        check(
            "[engines]\nbackend = \"onnxruntime\"",
            "engines.backend",
            "onnxruntime",
        );
        check(
            "[engines]\nprecision = \"fp16\"",
            "engines.precision",
            "cpu backend",
        );
        check("[engines]\nmax_image = [480]", "engines.max_image", "");
        check(
            "[engines]\nmax_image = [480, 640, 3]",
            "engines.max_image",
            "invalid length 3, expected an array of 2 elements",
        );
        check("[networks]\nrefinr = \"x.onnx\"", "networks", "refinr");
        check("[engines\nbackend = 1", "(file)", "");
        check("[predict]\ninit = \"z2\"", "predict.init", "z2");
        check("[predict]\nbatch_size = 0", "predict.batch_size", "found 0");
        check("[predict]\nlabels = [\"a\"]", "predict.labels", "string");
        check("[predict]\nrefiner = \"r.onnx\"", "predict", "refiner");
    }
}
