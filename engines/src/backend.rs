//! The one interface every inference backend implements, in three stages:
//!
//! 1. [`Backend::load`]: check the network and prepare it for this backend (for TensorRT:
//!    build or fetch the engine from the cache) for batches up to a maximum;
//! 2. [`Model::new_session`]: a session that owns every buffer a run needs;
//! 3. [`Session::run`]: one batch, written into [`Outputs`] the caller allocated once with
//!    [`Session::allocate_outputs`].

use std::fmt;
use std::str::FromStr;

use crate::contract::{Contract, DimSpec, Role, TensorSpec};
use crate::tensor::{DType, OutputTensor, Outputs, Shape};
use crate::{EngineError, Network};

/// Largest batch a model may be prepared for (CosyPose batches 64 objects per pass).
pub const MAX_BATCH_LIMIT: usize = 256;

/// Which backend runs a network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// The pure-Rust CPU backend (tract): the default, runs anywhere.
    #[default]
    Cpu,
    /// TensorRT on an NVIDIA GPU (feature `tensorrt`).
    TensorRt,
}

impl BackendKind {
    /// The name used on the command line and in config files.
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Cpu => "cpu",
            BackendKind::TensorRt => "tensorrt",
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for BackendKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "cpu" => Ok(BackendKind::Cpu),
            "tensorrt" => Ok(BackendKind::TensorRt),
            other => Err(format!("expected `cpu` or `tensorrt`, found `{other}`")),
        }
    }
}

/// What a model is prepared for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ModelOptions {
    /// Largest batch a run may carry (objects for coarse / refiner, images for a batched
    /// detector; torchvision's layout takes one image per run whatever this says).
    pub max_batch: usize,
    /// Largest detector input, (height, width) in pixels; buffers and TensorRT's
    /// optimisation profile are sized for it. Unused by coarse and refiner networks.
    pub max_image_hw: (usize, usize),
}

impl Default for ModelOptions {
    fn default() -> Self {
        ModelOptions {
            max_batch: 16,
            max_image_hw: (480, 640),
        }
    }
}

impl ModelOptions {
    /// Checks the options against the limits.
    pub fn validate(&self) -> Result<(), EngineError> {
        if self.max_batch == 0 || self.max_batch > MAX_BATCH_LIMIT {
            return Err(EngineError::Config {
                what: "max_batch",
                reason: format!("expected 1 to {MAX_BATCH_LIMIT}, found {}", self.max_batch),
            });
        }
        let (h, w) = self.max_image_hw;
        if h == 0 || w == 0 || h > 8192 || w > 8192 {
            return Err(EngineError::Config {
                what: "max_image_hw",
                reason: format!("expected 1 to 8192 pixels each way, found {h} x {w}"),
            });
        }
        Ok(())
    }
}

/// An inference backend.
pub trait Backend: Send + Sync {
    /// Which backend this is.
    fn kind(&self) -> BackendKind;

    /// Prepares a checked network for runs of up to `options.max_batch`.
    fn load(&self, network: Network, options: ModelOptions) -> Result<Box<dyn Model>, EngineError>;
}

/// A network prepared by a backend. Sessions made from one model share its weights.
pub trait Model: Send + Sync {
    /// The network.
    fn network(&self) -> &Network;

    /// The options it was prepared with.
    fn options(&self) -> ModelOptions;

    /// A new session, owning every buffer a run needs.
    fn new_session(&self) -> Result<Box<dyn Session>, EngineError>;
}

/// Runs batches of one model. A session is used by one thread at a time.
pub trait Session: Send {
    /// The model's contract.
    fn contract(&self) -> Contract;

    /// The options the model was prepared with.
    fn options(&self) -> ModelOptions;

    /// Output buffers for this session's largest run, in contract order. Call once and
    /// reuse them for every run.
    fn allocate_outputs(&self) -> Outputs {
        allocate_outputs(&self.contract(), &self.options(), self.max_detections())
    }

    /// Detections per image a detector's outputs hold (1 for other roles).
    fn max_detections(&self) -> usize;

    /// Runs one batch. `input` holds the contract input in row-major order with the given
    /// `shape` (e.g. `[B, 6, 240, 320]`); the outputs' shapes and values are overwritten.
    fn run(
        &mut self,
        input: &[f32],
        shape: &[usize],
        outputs: &mut Outputs,
    ) -> Result<(), EngineError>;
}

/// Output buffers sized for the largest run `options` allow.
pub fn allocate_outputs(
    contract: &Contract,
    options: &ModelOptions,
    max_detections: usize,
) -> Outputs {
    let tensors = contract
        .outputs
        .iter()
        .map(|spec| {
            let capacity = max_elements(contract, spec, options, max_detections);
            OutputTensor::with_capacity(spec.name, spec.dtype, capacity)
        })
        .collect();
    Outputs::new(tensors)
}

/// Elements of the contract output `spec` in the largest run `options` allow (saturating).
pub fn max_elements(
    contract: &Contract,
    spec: &TensorSpec,
    options: &ModelOptions,
    max_detections: usize,
) -> usize {
    let batch = if contract.is_batched() {
        options.max_batch
    } else {
        1
    };
    spec.dims
        .iter()
        .map(|dim| match dim {
            DimSpec::Batch => batch,
            DimSpec::Fixed(n) => *n,
            DimSpec::Any(_) => max_detections,
        })
        .fold(1usize, |acc, n| acc.saturating_mul(n))
}

/// Checks a run's input against the contract and the model options; returns the batch
/// size (1 for an unbatched contract).
pub fn check_input(
    contract: &Contract,
    options: &ModelOptions,
    input: &[f32],
    shape: &[usize],
) -> Result<usize, EngineError> {
    let spec = &contract.input;
    let bad_shape = || EngineError::Input {
        what: "input shape",
        expected: spec.to_string(),
        found: bad_shape_display(shape),
    };
    if shape.len() != spec.dims.len() {
        return Err(bad_shape());
    }
    let mut batch = 1;
    for (dim, &n) in spec.dims.iter().zip(shape) {
        match dim {
            DimSpec::Batch => batch = n,
            DimSpec::Fixed(fixed) if *fixed != n => return Err(bad_shape()),
            _ => {}
        }
        if n == 0 {
            return Err(bad_shape());
        }
    }
    if batch > options.max_batch {
        return Err(EngineError::Input {
            what: "batch size",
            expected: format!("at most {} (the model's max_batch)", options.max_batch),
            found: batch.to_string(),
        });
    }
    if contract.role == Role::Detector {
        let (h, w) = (shape[shape.len() - 2], shape[shape.len() - 1]);
        let (max_h, max_w) = options.max_image_hw;
        if h > max_h || w > max_w {
            return Err(EngineError::Input {
                what: "image size",
                expected: format!("at most {max_h} x {max_w} (the model's max_image_hw)"),
                found: format!("{h} x {w}"),
            });
        }
    }
    let volume: usize = shape.iter().product();
    if input.len() != volume {
        return Err(EngineError::Input {
            what: "input length",
            expected: format!("{volume} values for shape {}", bad_shape_display(shape)),
            found: input.len().to_string(),
        });
    }
    if spec.dtype != DType::F32 {
        return Err(bad_shape());
    }
    Ok(batch)
}

/// Checks one output's shape from a run: the batch dimension equals the run's batch, fixed
/// dimensions match, and the detection count (`N`) is the same in every output and fits
/// `max_detections`. `detections` carries N between the outputs of one run.
pub fn check_output_shape(
    spec: &TensorSpec,
    shape: &[usize],
    batch: usize,
    max_detections: usize,
    detections: &mut Option<usize>,
) -> Result<(), EngineError> {
    let bad = |why: String| EngineError::Output {
        tensor: spec.name.to_owned(),
        reason: format!("expected {spec}, found {}: {why}", bad_shape_display(shape)),
    };
    if shape.len() != spec.dims.len() {
        return Err(bad(format!("rank {}", shape.len())));
    }
    for (dim, &n) in spec.dims.iter().zip(shape) {
        match dim {
            DimSpec::Batch if n != batch => return Err(bad(format!("the batch is {batch}"))),
            DimSpec::Fixed(fixed) if *fixed != n => return Err(bad(format!("{n} is not {fixed}"))),
            DimSpec::Any(_) => {
                if n > max_detections {
                    return Err(bad(format!(
                        "{n} detections, the sidecar's max_detections is {max_detections}"
                    )));
                }
                match detections {
                    Some(seen) if *seen != n => {
                        return Err(bad(format!(
                            "{n} detections here, {seen} in an earlier output"
                        )));
                    }
                    _ => *detections = Some(n),
                }
            }
            _ => {}
        }
    }
    Ok(())
}

fn bad_shape_display(shape: &[usize]) -> String {
    Shape::new(shape).map_or_else(|| format!("{shape:?}"), |s| s.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::DetectorLayout;

    #[test]
    fn outputs_are_sized_for_the_largest_run() {
        let options = ModelOptions {
            max_batch: 5,
            ..ModelOptions::default()
        };
        let refiner = Contract::for_role(Role::Refiner, DetectorLayout::Batched);
        let outputs = allocate_outputs(&refiner, &options, 1);
        assert_eq!(outputs.tensors().len(), 1);
        assert_eq!(outputs.tensors()[0].capacity(), 45);

        let detector = Contract::for_role(Role::Detector, DetectorLayout::Batched);
        let outputs = allocate_outputs(&detector, &options, 8);
        let capacities: Vec<usize> = outputs
            .tensors()
            .iter()
            .map(OutputTensor::capacity)
            .collect();
        assert_eq!(capacities, [5 * 8 * 4, 5 * 8, 5 * 8]);

        let torchvision = Contract::for_role(Role::Detector, DetectorLayout::Torchvision);
        let outputs = allocate_outputs(&torchvision, &options, 100);
        let capacities: Vec<usize> = outputs
            .tensors()
            .iter()
            .map(OutputTensor::capacity)
            .collect();
        assert_eq!(capacities, [400, 100, 100]);
    }

    #[test]
    fn input_checks_name_what_is_wrong() {
        let options = ModelOptions {
            max_batch: 2,
            ..ModelOptions::default()
        };
        let refiner = Contract::for_role(Role::Refiner, DetectorLayout::Batched);
        let one = vec![0.0; 6 * 240 * 320];
        assert_eq!(
            check_input(&refiner, &options, &one, &[1, 6, 240, 320]).ok(),
            Some(1)
        );
        let err = check_input(&refiner, &options, &one, &[1, 3, 240, 320]).expect_err("channels");
        assert!(
            err.to_string().contains("float32 [batch, 6, 240, 320]"),
            "{err}"
        );
        let three = vec![0.0; 3 * 6 * 240 * 320];
        let err = check_input(&refiner, &options, &three, &[3, 6, 240, 320]).expect_err("batch");
        assert!(err.to_string().contains("max_batch"), "{err}");
        let err = check_input(&refiner, &options, &one[1..], &[1, 6, 240, 320]).expect_err("len");
        assert!(err.to_string().contains("input length"), "{err}");

        let detector = Contract::for_role(Role::Detector, DetectorLayout::Batched);
        let image = vec![0.0; 3 * 600 * 800];
        let err = check_input(&detector, &options, &image, &[1, 3, 600, 800]).expect_err("size");
        assert!(err.to_string().contains("max_image_hw"), "{err}");
    }

    #[test]
    fn options_are_validated() {
        let bad = ModelOptions {
            max_batch: 0,
            ..ModelOptions::default()
        };
        assert!(bad.validate().is_err());
        assert!(ModelOptions::default().validate().is_ok());
        assert_eq!("tensorrt".parse::<BackendKind>(), Ok(BackendKind::TensorRt));
        assert!("onnxruntime".parse::<BackendKind>().is_err());
    }
}
