//! The CPU backend: tract-onnx, pure Rust, the default and what CI runs.
//!
//! tract optimises a graph much better when every dimension is known: on the refiner-shaped
//! test network a plan for a fixed batch of 1 runs 3x faster than one for a symbolic batch
//! (depthwise convolutions get their direct kernel instead of im2col), and running a batch
//! as B single-item runs is faster per crop than one batched run (the working set stays in
//! cache). So a model holds one optimised plan per *item* shape: `[1, 6, 240, 320]` for the
//! coarse and refiner networks, `[1, 3, H, W]` (or torchvision's `[3, H, W]`) for a
//! detector, made at load for the largest image and on first sight for any other size.
//! Sessions run a batch item by item and write each item's outputs into its rows of the
//! caller's [`Outputs`]. Eval-mode networks compute each batch item independently, so this
//! changes nothing but speed.
//!
//! tract evaluates each operator into a freshly allocated tensor, so a run allocates
//! inside tract (counted by `benches/benches/engines.rs`); nothing on posed's side of the
//! call allocates once an input shape has been seen.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

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

/// Version of the CPU engine layout (the NNEF archive of the decluttered single-item graph).
pub const CPU_ENGINE_VERSION: u32 = 2;

/// Item shapes a model keeps plans for, and a session keeps states for (detector image
/// sizes; the coarse and refiner networks have one).
const MAX_ITEM_SHAPES: usize = 4;

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

    /// The cache key of a network's CPU engine: the single-item graph at the largest
    /// detector image (one batch profile for every `max_batch`).
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
            batch_profile: (1, 1, 1),
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
        let item = load_item_shape(&network.contract(), &options);
        let Some(cache) = &self.cache else {
            let decluttered = decluttered_from_onnx(&network, item)?;
            let model = CpuModel::new(network, options, item, decluttered)?;
            return Ok((model, CacheOutcome::Built));
        };
        let key = CpuBackend::engine_key(&network, &options);
        let (archive, outcome) = cache.get_or_build(&key, || {
            let decluttered = decluttered_from_onnx(&network, item)?;
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
                decluttered_from_onnx(&network, item)?
            }
        };
        let model = CpuModel::new(network, options, item, decluttered)?;
        Ok((model, outcome))
    }
}

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

/// The item shape a model is planned for at load: batch 1, and for a detector the largest
/// image.
fn load_item_shape(contract: &Contract, options: &ModelOptions) -> Shape {
    let (h, w) = options.max_image_hw;
    let dims: Vec<usize> = contract
        .input
        .dims
        .iter()
        .enumerate()
        .map(|(i, dim)| match dim {
            DimSpec::Batch => 1,
            DimSpec::Fixed(n) => *n,
            DimSpec::Any(_) if i + 1 == contract.input.dims.len() => w,
            DimSpec::Any(_) => h,
        })
        .collect();
    // Contract inputs have rank 3 or 4.
    Shape::new(&dims).unwrap_or_default()
}

/// The item shape of one run input: its batch dimension set to 1.
fn item_shape(contract: &Contract, shape: &[usize]) -> Shape {
    let mut item = Shape::new(shape).unwrap_or_default();
    if contract.is_batched() {
        let mut dims = [0usize; crate::tensor::MAX_RANK];
        dims[..shape.len()].copy_from_slice(shape);
        dims[0] = 1;
        item = Shape::new(&dims[..shape.len()]).unwrap_or_default();
    }
    item
}

/// Parses the ONNX file with the input pinned to `item`, keeps only the contract's
/// outputs and declutters the graph.
fn decluttered_from_onnx(network: &Network, item: Shape) -> Result<TypedModel, EngineError> {
    let contract = network.contract();
    let path = network.path();
    let mut model = tract_onnx::onnx()
        .model_for_read(&mut network.onnx_bytes())
        .map_err(tract_error(path, "loading"))?;
    model
        .set_input_fact(0, f32::fact(item.dims()).into())
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

fn optimised_plan(
    network: &Network,
    decluttered: TypedModel,
) -> Result<Arc<TypedSimplePlan>, EngineError> {
    decluttered
        .into_optimized()
        .map_err(tract_error(network.path(), "optimising"))?
        .into_runnable()
        .map_err(tract_error(network.path(), "planning"))
}

/// A network optimised by tract.
#[derive(Debug, Clone)]
pub struct CpuModel {
    shared: Arc<ModelShared>,
}

#[derive(Debug)]
struct ModelShared {
    network: Network,
    options: ModelOptions,
    plans: Mutex<Vec<(Shape, Arc<TypedSimplePlan>)>>,
}

impl ModelShared {
    /// The plan for one item shape, made (from the ONNX file) on first sight.
    fn plan(&self, item: Shape) -> Result<Arc<TypedSimplePlan>, EngineError> {
        let mut plans = self.plans.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, plan)) = plans.iter().find(|(s, _)| *s == item) {
            return Ok(Arc::clone(plan));
        }
        tracing::info!(path = %self.network.path().display(), shape = %item, "planning the CPU network for a new input size");
        let plan = optimised_plan(&self.network, decluttered_from_onnx(&self.network, item)?)?;
        if plans.len() == MAX_ITEM_SHAPES {
            plans.remove(0);
        }
        plans.push((item, Arc::clone(&plan)));
        Ok(plan)
    }
}

impl CpuModel {
    fn new(
        network: Network,
        options: ModelOptions,
        item: Shape,
        decluttered: TypedModel,
    ) -> Result<CpuModel, EngineError> {
        let plan = optimised_plan(&network, decluttered)?;
        Ok(CpuModel {
            shared: Arc::new(ModelShared {
                network,
                options,
                plans: Mutex::new(vec![(item, plan)]),
            }),
        })
    }
}

impl Model for CpuModel {
    fn network(&self) -> &Network {
        &self.shared.network
    }

    fn options(&self) -> ModelOptions {
        self.shared.options
    }

    fn new_session(&self) -> Result<Box<dyn Session>, EngineError> {
        let network = &self.shared.network;
        let contract = network.contract();
        let max_detections = network
            .sidecar()
            .detector
            .as_ref()
            .map_or(1, |d| d.max_detections);
        let mut session = CpuSession {
            model: Arc::clone(&self.shared),
            path: network.path().to_owned(),
            contract,
            options: self.shared.options,
            max_detections,
            items: Vec::with_capacity(MAX_ITEM_SHAPES),
        };
        // Ready for the load-time shape, so the first run of it allocates no state.
        session.item_index(load_item_shape(&contract, &self.shared.options))?;
        Ok(Box::new(session))
    }
}

/// What a session keeps per item shape: tract's state and the input tensor it reads.
struct ItemState {
    shape: Shape,
    state: TypedSimpleState,
    input: Arc<Tensor>,
}

struct CpuSession {
    model: Arc<ModelShared>,
    path: PathBuf,
    contract: Contract,
    options: ModelOptions,
    max_detections: usize,
    items: Vec<ItemState>,
}

impl CpuSession {
    fn tract_error(&self, stage: &'static str) -> impl Fn(TractError) -> EngineError {
        tract_error(&self.path, stage)
    }

    /// The index of the state for `shape`, made on first sight.
    fn item_index(&mut self, shape: Shape) -> Result<usize, EngineError> {
        if let Some(index) = self.items.iter().position(|item| item.shape == shape) {
            return Ok(index);
        }
        let plan = self.model.plan(shape)?;
        let state = plan
            .spawn()
            .map_err(self.tract_error("creating a session"))?;
        let input =
            Tensor::zero::<f32>(shape.dims()).map_err(self.tract_error("allocating the input"))?;
        if self.items.len() == MAX_ITEM_SHAPES {
            self.items.remove(0);
        }
        self.items.push(ItemState {
            shape,
            state,
            input: Arc::new(input),
        });
        Ok(self.items.len() - 1)
    }

    /// Runs one item (already a slice of the item's shape) and returns tract's outputs.
    fn run_item(&mut self, index: usize, values: &[f32]) -> Result<TVec<TValue>, EngineError> {
        let path = self.path.clone();
        let item = &mut self.items[index];
        if Arc::get_mut(&mut item.input).is_none() {
            // tract still holds the last run's input (it should not): start a fresh one.
            let fresh = Tensor::zero::<f32>(item.shape.dims())
                .map_err(tract_error(&path, "allocating the input"))?;
            item.input = Arc::new(fresh);
        }
        let tensor = Arc::get_mut(&mut item.input).ok_or_else(|| EngineError::Tract {
            path: path.clone(),
            stage: "filling the input",
            reason: "input tensor is shared".to_owned(),
        })?;
        tensor
            .try_as_plain_ram_mut()
            .and_then(|mut view| {
                view.as_slice_mut::<f32>()?.copy_from_slice(values);
                Ok(())
            })
            .map_err(tract_error(&path, "filling the input"))?;
        item.state
            .run(tvec![TValue::from_const(Arc::clone(&item.input))])
            .map_err(tract_error(&path, "running"))
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
        if outputs.tensors().len() != self.contract.outputs.len() {
            return Err(EngineError::Output {
                tensor: "(all)".to_owned(),
                reason: format!(
                    "{} output buffers, the contract has {} outputs",
                    outputs.tensors().len(),
                    self.contract.outputs.len()
                ),
            });
        }
        let item = item_shape(&self.contract, shape);
        let index = self.item_index(item)?;
        let item_len = item.volume();
        // The detection count must agree between outputs and between batch items.
        let mut detections = None;
        for b in 0..batch {
            let results = self.run_item(index, &input[b * item_len..(b + 1) * item_len])?;
            if results.len() != self.contract.outputs.len() {
                return Err(EngineError::Output {
                    tensor: "(all)".to_owned(),
                    reason: format!(
                        "{} outputs from the model, the contract has {}",
                        results.len(),
                        self.contract.outputs.len()
                    ),
                });
            }
            let item_batch = usize::from(self.contract.is_batched());
            for ((spec, value), out) in self
                .contract
                .outputs
                .iter()
                .zip(&results)
                .zip(outputs.tensors_mut())
            {
                let item_dims = value.shape();
                check_output_shape(
                    spec,
                    item_dims,
                    item_batch,
                    self.max_detections,
                    &mut detections,
                )?;
                // The whole batch's shape: the item's with the batch dimension set.
                let mut full = [0usize; crate::tensor::MAX_RANK];
                full[..item_dims.len()].copy_from_slice(item_dims);
                if self.contract.is_batched() {
                    full[0] = batch;
                }
                let row_len: usize = item_dims.iter().product();
                let rows = b * row_len..(b + 1) * row_len;
                let view = value
                    .try_as_plain_ram()
                    .map_err(tract_error(&self.path, "reading outputs"))?;
                let read_error = |e: TractError| EngineError::Output {
                    tensor: spec.name.to_owned(),
                    reason: format!("expected {}: {e:#}", spec.dtype.onnx_name()),
                };
                match (spec.dtype, out.prepare(&full[..item_dims.len()])?) {
                    (DType::F32, OutputData::F32(dst)) => {
                        dst[rows].copy_from_slice(view.as_slice::<f32>().map_err(read_error)?);
                    }
                    (DType::I64, OutputData::I64(dst)) => {
                        dst[rows].copy_from_slice(view.as_slice::<i64>().map_err(read_error)?);
                    }
                    _ => {
                        return Err(EngineError::Output {
                            tensor: spec.name.to_owned(),
                            reason: "the caller's buffer has the wrong element type".to_owned(),
                        });
                    }
                }
            }
        }
        Ok(())
    }
}
