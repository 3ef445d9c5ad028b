//! The CPU backend: tract-onnx, pure Rust, the default and what CI runs.
//!
//! Loading parses the ONNX file, pins the contract's input shape (batch and detector image
//! size stay symbolic), keeps only the contract's outputs, and optimises the graph once;
//! sessions share the optimised plan. A session keeps its input tensors (one per input
//! shape it has seen) and copies the outputs into the caller's [`Outputs`].
//!
//! tract evaluates each operator into a freshly allocated tensor, so a run allocates
//! inside tract (the count is measured by `benches/engines.rs`); nothing on posed's side
//! of the call allocates once a shape has been seen.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tract_onnx::prelude::*;
use tract_onnx::WithOnnx;

use crate::backend::{
    check_input, check_output_shape, Backend, BackendKind, Model, ModelOptions, Session,
};
use crate::cache::{CacheOutcome, EngineCache, EngineKey, Precision};
use crate::contract::{Contract, DimSpec, Role};
use crate::tensor::{DType, OutputData, Outputs, Shape};
use crate::{EngineError, Network};

/// tract's version, as engine keys and `posed engines list` report it.
pub const TRACT_VERSION: &str = "0.23.9";

/// Input tensors a session keeps (one per distinct input shape).
const MAX_CACHED_INPUTS: usize = 16;

/// The tract backend. With an [`EngineCache`], loading keeps the decluttered graph as an
/// NNEF archive (tract's own format) keyed like a TensorRT engine, so a later load skips
/// ONNX parsing and analysis; the cache verifies, rebuilds and locks as for TensorRT.
#[derive(Debug, Clone, Default)]
pub struct CpuBackend {
    cache: Option<EngineCache>,
}

impl CpuBackend {
    /// A backend that parses the ONNX file on every load.
    pub fn new() -> CpuBackend {
        CpuBackend { cache: None }
    }

    /// A backend that keeps decluttered graphs in `cache`.
    pub fn with_cache(cache: EngineCache) -> CpuBackend {
        CpuBackend { cache: Some(cache) }
    }

    /// The cache key of a network's CPU engine.
    pub fn engine_key(network: &Network, options: &ModelOptions) -> EngineKey {
        let contract = network.contract();
        EngineKey {
            onnx_sha256: network.sha256_hex(),
            role: contract.role.name().to_owned(),
            backend: BackendKind::Cpu.name().to_owned(),
            backend_version: format!("tract {TRACT_VERSION}"),
            device_name: format!("cpu-{}", std::env::consts::ARCH),
            compute_capability: "-".to_owned(),
            precision: Precision::Fp32,
            dla_core: None,
            batch_profile: (1, options.max_batch, options.max_batch),
            max_image_hw: if contract.role == Role::Detector {
                options.max_image_hw
            } else {
                (0, 0)
            },
            builder_version: CPU_ENGINE_VERSION,
        }
    }

    /// Loads `network` through the cache (building the entry if needed), reporting where
    /// the engine came from; without a cache the outcome is always `Built`.
    pub fn load_with_outcome(
        &self,
        network: Network,
        options: ModelOptions,
    ) -> Result<(CpuModel, CacheOutcome), EngineError> {
        options.validate()?;
        let Some(cache) = &self.cache else {
            let decluttered = decluttered_from_onnx(&network)?;
            return Ok((
                CpuModel::from_decluttered(network, options, decluttered)?,
                CacheOutcome::Built,
            ));
        };
        let key = CpuBackend::engine_key(&network, &options);
        let (archive, outcome) = cache.get_or_build(&key, || {
            let decluttered = decluttered_from_onnx(&network)?;
            let mut archive = Vec::new();
            tract_nnef::nnef()
                .with_onnx()
                .write_to_tar_with_config(&decluttered, &mut archive, false, true)
                .map_err(tract_error(network.path(), "writing the NNEF archive"))?;
            Ok(archive)
        })?;
        let decluttered = match tract_nnef::nnef()
            .with_onnx()
            .model_for_read(&mut &archive[..])
        {
            Ok(model) => model,
            Err(e) => {
                // The entry verified (its bytes are what was written) but tract cannot read
                // it back: a tract bug or version skew. Do not trust it; parse the ONNX.
                tracing::warn!(path = %network.path().display(), error = %format!("{e:#}"), "cached CPU engine unreadable; loading the ONNX file");
                decluttered_from_onnx(&network)?
            }
        };
        Ok((
            CpuModel::from_decluttered(network, options, decluttered)?,
            outcome,
        ))
    }
}

/// Version of the CPU engine layout (the NNEF archive of the decluttered graph).
pub const CPU_ENGINE_VERSION: u32 = 1;

impl Backend for CpuBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Cpu
    }

    fn load(&self, network: Network, options: ModelOptions) -> Result<Box<dyn Model>, EngineError> {
        Ok(Box::new(self.load_with_outcome(network, options)?.0))
    }
}

fn tract_error(path: &Path, stage: &'static str) -> impl Fn(TractError) -> EngineError {
    let path = path.to_owned();
    move |e: TractError| EngineError::Tract {
        path: path.clone(),
        stage,
        reason: format!("{e:#}"),
    }
}

/// Parses the ONNX file, pins the contract's input shape (batch and detector image size
/// symbolic), keeps only the contract's outputs and declutters the graph.
fn decluttered_from_onnx(network: &Network) -> Result<TypedModel, EngineError> {
    let contract = network.contract();
    let path = network.path();
    let mut model = tract_onnx::onnx()
        .model_for_read(&mut network.onnx_bytes())
        .map_err(tract_error(path, "loading"))?;
    let dims: TVec<TDim> = contract
        .input
        .dims
        .iter()
        .map(|dim| match dim {
            DimSpec::Batch => model.sym("batch").into(),
            DimSpec::Fixed(n) => TDim::from(*n),
            DimSpec::Any(name) => model.sym(name).into(),
        })
        .collect();
    model
        .set_input_fact(0, f32::fact(dims).into())
        .map_err(tract_error(path, "setting the input shape"))?;
    model
        .select_outputs_by_name(contract.outputs.iter().map(|o| o.name))
        .map_err(tract_error(path, "selecting the contract's outputs"))?;
    let typed = model
        .into_typed()
        .map_err(tract_error(path, "typing the graph"))?;
    typed
        .into_decluttered()
        .map_err(tract_error(path, "decluttering"))
}

/// A network optimised by tract.
#[derive(Debug)]
pub struct CpuModel {
    network: Network,
    options: ModelOptions,
    plan: Arc<TypedSimplePlan>,
}

impl CpuModel {
    fn from_decluttered(
        network: Network,
        options: ModelOptions,
        decluttered: TypedModel,
    ) -> Result<CpuModel, EngineError> {
        let optimised = decluttered
            .into_optimized()
            .map_err(tract_error(network.path(), "optimising"))?;
        let plan = optimised
            .into_runnable()
            .map_err(tract_error(network.path(), "planning"))?;
        Ok(CpuModel {
            network,
            options,
            plan,
        })
    }
}

impl Model for CpuModel {
    fn network(&self) -> &Network {
        &self.network
    }

    fn options(&self) -> ModelOptions {
        self.options
    }

    fn new_session(&self) -> Result<Box<dyn Session>, EngineError> {
        let state = self.plan.spawn().map_err(|e| EngineError::Tract {
            path: self.network.path().to_owned(),
            stage: "creating a session",
            reason: format!("{e:#}"),
        })?;
        let max_detections = self
            .network
            .sidecar()
            .detector
            .as_ref()
            .map_or(1, |d| d.max_detections);
        Ok(Box::new(CpuSession {
            path: self.network.path().to_owned(),
            contract: self.network.contract(),
            options: self.options,
            max_detections,
            state,
            inputs: Vec::with_capacity(MAX_CACHED_INPUTS),
        }))
    }
}

struct CpuSession {
    path: PathBuf,
    contract: Contract,
    options: ModelOptions,
    max_detections: usize,
    state: TypedSimpleState,
    inputs: Vec<(Shape, Arc<Tensor>)>,
}

impl CpuSession {
    /// The session's input tensor for `shape`, filled with `input`.
    fn input_tensor(&mut self, input: &[f32], shape: Shape) -> Result<Arc<Tensor>, EngineError> {
        let position = self.inputs.iter().position(|(s, _)| *s == shape);
        let index = match position {
            Some(index) => index,
            None => {
                let tensor = Tensor::zero::<f32>(shape.dims())
                    .map_err(|e| self.tract_error("allocating the input", e))?;
                if self.inputs.len() == MAX_CACHED_INPUTS {
                    self.inputs.remove(0);
                }
                self.inputs.push((shape, Arc::new(tensor)));
                self.inputs.len() - 1
            }
        };
        let slot = &mut self.inputs[index].1;
        if Arc::get_mut(slot).is_none() {
            // tract still holds the last run's input: give it up and start a fresh one.
            let tensor = Tensor::zero::<f32>(shape.dims()).map_err(|e| EngineError::Tract {
                path: self.path.clone(),
                stage: "allocating the input",
                reason: format!("{e:#}"),
            })?;
            *slot = Arc::new(tensor);
        }
        let tensor = Arc::get_mut(slot).ok_or_else(|| EngineError::Tract {
            path: self.path.clone(),
            stage: "filling the input",
            reason: "input tensor is shared".to_owned(),
        })?;
        let mut view = tensor
            .try_as_plain_ram_mut()
            .map_err(|e| EngineError::Tract {
                path: self.path.clone(),
                stage: "filling the input",
                reason: format!("{e:#}"),
            })?;
        let values = view.as_slice_mut::<f32>().map_err(|e| EngineError::Tract {
            path: self.path.clone(),
            stage: "filling the input",
            reason: format!("{e:#}"),
        })?;
        values.copy_from_slice(input);
        Ok(Arc::clone(slot))
    }

    fn tract_error(&self, stage: &'static str, e: TractError) -> EngineError {
        EngineError::Tract {
            path: self.path.clone(),
            stage,
            reason: format!("{e:#}"),
        }
    }
}

impl Session for CpuSession {
    fn contract(&self) -> Contract {
        self.contract
    }

    fn options(&self) -> ModelOptions {
        self.options
    }

    fn max_detections(&self) -> usize {
        self.max_detections
    }

    fn run(
        &mut self,
        input: &[f32],
        shape: &[usize],
        outputs: &mut Outputs,
    ) -> Result<(), EngineError> {
        let batch = check_input(&self.contract, &self.options, input, shape)?;
        let shape = Shape::new(shape).ok_or_else(|| EngineError::Input {
            what: "input shape",
            expected: self.contract.input.to_string(),
            found: format!("{shape:?}"),
        })?;
        let tensor = self.input_tensor(input, shape)?;
        let results = self
            .state
            .run(tvec![TValue::from_const(tensor)])
            .map_err(|e| self.tract_error("running", e))?;
        if results.len() != self.contract.outputs.len() || outputs.tensors().len() != results.len()
        {
            return Err(EngineError::Output {
                tensor: "(all)".to_owned(),
                reason: format!(
                    "{} outputs from the model, {} buffers, the contract has {}",
                    results.len(),
                    outputs.tensors().len(),
                    self.contract.outputs.len()
                ),
            });
        }
        let mut detections = None;
        for ((spec, value), out) in self
            .contract
            .outputs
            .iter()
            .zip(&results)
            .zip(outputs.tensors_mut())
        {
            check_output_shape(
                spec,
                value.shape(),
                batch,
                self.max_detections,
                &mut detections,
            )?;
            let view = value
                .try_as_plain_ram()
                .map_err(|e| self.tract_error("reading outputs", e))?;
            let read_error = |e: TractError| EngineError::Output {
                tensor: spec.name.to_owned(),
                reason: format!("expected {}: {e:#}", spec.dtype.onnx_name()),
            };
            match (spec.dtype, out.prepare(value.shape())?) {
                (DType::F32, OutputData::F32(dst)) => {
                    let src = view.as_slice::<f32>().map_err(read_error)?;
                    dst[..src.len()].copy_from_slice(src);
                }
                (DType::I64, OutputData::I64(dst)) => {
                    let src = view.as_slice::<i64>().map_err(read_error)?;
                    dst[..src.len()].copy_from_slice(src);
                }
                _ => {
                    return Err(EngineError::Output {
                        tensor: spec.name.to_owned(),
                        reason: "the caller's buffer has the wrong element type".to_owned(),
                    });
                }
            }
        }
        Ok(())
    }
}
