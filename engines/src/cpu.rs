//! The CPU backend: pure Rust, the default and what CI runs.
//!
//! tract parses, types and declutters the ONNX graph (constant folding, simplification);
//! then one of two executors runs it:
//!
//! - [`CpuExecutor::Planned`] (the default): posed's own executor (`planned.rs`), which
//!   compiles the decluttered graph into steps over buffers that a session allocates once,
//!   so a run allocates nothing. It covers the op set CosyPose-style networks declutter
//!   into; a graph with another op falls back to tract's plan, with a warning naming the
//!   node.
//! - [`CpuExecutor::Tract`]: tract's optimised plan, which evaluates each operator into a
//!   freshly allocated tensor (about 160 allocations per refiner crop).
//!
//! Both are planned per *item* shape (`[1, 6, 240, 320]` for the coarse and refiner
//! networks, `[1, 3, H, W]` (or torchvision's `[3, H, W]`) for a detector), made at load for
//! the largest image and on first sight for any other size: tract optimises a graph much
//! better when every dimension is known (3x on the refiner-shaped test network), and a
//! batch run as B single-item runs keeps the working set in cache. Eval-mode networks
//! compute each batch item independently, so this changes nothing but speed. On the
//! planned executor those item runs can go side by side on worker threads, and a single
//! item's large steps split across them ([`CpuBackend::with_threads`], `workers.rs`),
//! with the same bits.

mod depthwise;
mod kernels;
mod planned;
mod tile;
mod workers;

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tract_onnx::prelude::*;
use tract_onnx::WithOnnx;

use crate::backend::{
    check_input, check_output_shape, Backend, BackendKind, Model, ModelOptions, Session,
};
use crate::cache::{CacheOutcome, EngineCache, EngineKey, Precision};
use crate::contract::{Contract, DimSpec, Role};
use crate::error::{describe_bytes, panic_message, printable};
use crate::network::check_detections;
use crate::tensor::{DType, OutputData, OutputTensor, Outputs, Shape};
use crate::{EngineError, Network};
use planned::{zeroed, OutputView, PlannedGraph};
use workers::{ItemJob, Team, Worker};

/// tract's version, as engine keys and `posed engines list` report it.
pub const TRACT_VERSION: &str = "0.23.9";

/// Version of the CPU engine layout (the NNEF archive of the decluttered single-item graph).
pub const CPU_ENGINE_VERSION: u32 = 2;

/// Most bytes one value of a network may take, and the planned executor's buffers of one
/// session in all (4 GiB; each worker thread of a batched session holds a copy of them).
/// A network whose graph asks for more (a Pad by 2^20, say) is refused when it is loaded,
/// with an [`EngineError::TooLarge`] naming the node, instead of failing to allocate.
pub const MAX_BUFFER_BYTES: u64 = 4 << 30;

/// Item shapes a model keeps plans for, and a session keeps states for (detector image
/// sizes; the coarse and refiner networks have one). At least 2: the load-time shape is
/// never evicted.
const MAX_ITEM_SHAPES: usize = 4;

/// Which executor runs a decluttered graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CpuExecutor {
    /// posed's planned executor: every buffer allocated with the session, runs allocate
    /// nothing; tract's plan for a graph with an op it does not have.
    #[default]
    Planned,
    /// tract's optimised plan (allocates inside each run).
    Tract,
}

impl CpuExecutor {
    /// The name logs and benches use.
    pub fn name(self) -> &'static str {
        match self {
            CpuExecutor::Planned => "planned",
            CpuExecutor::Tract => "tract",
        }
    }
}

/// The vector instructions the planned executor's kernels run on, on this CPU: "avx2+fma"
/// or "neon" (register tiles, the depthwise kernel, fused multiply-adds), else
/// "portable" (the compiler's vectorisation of plain loops).
pub fn kernel_instructions() -> &'static str {
    if !tile::available() {
        "portable"
    } else if cfg!(target_arch = "aarch64") {
        "neon"
    } else {
        "avx2+fma"
    }
}

/// The CPU backend. With an [`EngineCache`], loading keeps the decluttered graph as an
/// NNEF archive (tract's own format) keyed like a TensorRT engine, so a later load skips
/// ONNX parsing and analysis; the cache verifies, rebuilds and locks as for TensorRT.
#[derive(Debug, Clone, Default)]
pub struct CpuBackend {
    cache: Option<EngineCache>,
    executor: CpuExecutor,
    /// Threads a session runs a batch's items on (0 reads as 1).
    threads: usize,
}

impl CpuBackend {
    /// A backend that parses the ONNX file on every load.
    pub fn new() -> CpuBackend {
        CpuBackend::default()
    }

    /// A backend that keeps decluttered graphs in `cache`.
    pub fn with_cache(cache: EngineCache) -> CpuBackend {
        CpuBackend {
            cache: Some(cache),
            ..CpuBackend::default()
        }
    }

    /// The same backend running graphs on `executor`.
    pub fn with_executor(mut self, executor: CpuExecutor) -> CpuBackend {
        self.executor = executor;
        self
    }

    /// The same backend running on `threads` threads (1, the default, runs everything on
    /// the caller's): a batch's items side by side, and a single item's large steps
    /// split into parts. Each session starts `threads - 1` worker threads, each with a
    /// scratch buffer and, for networks with batches of more than one item, a copy of
    /// the session's buffers; results are the same bit for bit. Only the planned
    /// executor uses them.
    pub fn with_threads(mut self, threads: usize) -> CpuBackend {
        self.threads = threads.max(1);
        self
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
            let model = CpuModel::new(network, options, item, decluttered, self.settings())?;
            return Ok((model, CacheOutcome::Built));
        };
        let key = CpuBackend::engine_key(&network, &options);
        let path = network.path();
        let build = || {
            let decluttered = decluttered_from_onnx(&network, item)?;
            let archive = tract_stage(path, "writing the NNEF archive", || {
                let mut archive = Vec::new();
                tract_nnef::nnef().with_onnx().write_to_tar_with_config(
                    &decluttered,
                    &mut archive,
                    false,
                    true,
                )?;
                Ok(archive)
            })?;
            // Run what a later load will read from the cache: NNEF spells some ops
            // differently, and `read_archive`'s second declutter brings them back.
            let model = match read_archive(path, &archive) {
                Ok(model) => model,
                Err(e) => {
                    // A tract bug or version skew: the entry is stored all the same, and
                    // the next load sets it aside and builds it again.
                    tracing::warn!(path = %path.display(), error = %e, "tract cannot read back the NNEF archive it wrote; running the graph parsed from the ONNX file");
                    decluttered
                }
            };
            Ok((archive, model))
        };
        // An entry whose bytes verify but that tract cannot read (a tract bug, or a
        // payload written with a matching checksum) is set aside and rebuilt like any
        // other rejected entry, never trusted and never kept.
        let check = |archive: &[u8]| read_archive(path, archive).map_err(|e| e.to_string());
        let (_, decluttered, outcome) = cache.get_or_build_checked(&key, build, check)?;
        let model = CpuModel::new(network, options, item, decluttered, self.settings())?;
        Ok((model, outcome))
    }

    fn settings(&self) -> ModelSettings {
        ModelSettings {
            executor: self.executor,
            threads: self.threads.max(1),
        }
    }
}

/// How a [`CpuModel`] runs: which executor, on how many threads.
#[derive(Debug, Clone, Copy)]
struct ModelSettings {
    executor: CpuExecutor,
    threads: usize,
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
        // tract quotes what it failed on, which may be bytes of a corrupt file.
        reason: printable(&format!("{e:#}")),
    }
}

/// Runs one of tract's stages on a network, an error naming the file and the stage; a
/// panic inside tract (a bug some malformed graphs trigger: a division by zero in a
/// reduction of a huge constant, a failed allocation) becomes such an error too, and the
/// network is dropped. The panic's default message is still printed. In a build with
/// `panic = "abort"` (the release profile) a panic still ends the process: `network.rs`
/// refuses the graphs known to cause one before tract sees them.
fn tract_stage<T>(
    path: &Path,
    stage: &'static str,
    f: impl FnOnce() -> TractResult<T>,
) -> Result<T, EngineError> {
    match std::panic::catch_unwind(AssertUnwindSafe(f)) {
        Ok(result) => result.map_err(tract_error(path, stage)),
        Err(panic) => Err(tract_panicked(path, stage, &*panic)),
    }
}

fn tract_panicked(
    path: &Path,
    stage: &'static str,
    panic: &(dyn std::any::Any + Send),
) -> EngineError {
    EngineError::Tract {
        path: path.to_owned(),
        stage,
        reason: format!(
            "panicked (a bug this graph triggers): {}",
            printable(&panic_message(panic))
        ),
    }
}

/// Reads an NNEF archive this backend wrote (a cache entry) and declutters it.
fn read_archive(path: &Path, archive: &[u8]) -> Result<TypedModel, EngineError> {
    tract_stage(path, "reading the cached NNEF archive", || {
        tract_nnef::nnef()
            .with_onnx()
            .model_for_read(&mut &archive[..])?
            .into_decluttered()
    })
}

/// Checks that `payload` is laid out as [`CpuBackend`]'s cache entries are: a tar archive
/// (every header's checksum right, every entry inside the payload) holding `graph.nnef`.
/// A cheap check for `posed engines list`; loading reads the archive whole.
pub(crate) fn check_archive_layout(payload: &[u8]) -> Result<(), String> {
    const BLOCK: usize = 512;
    let octal = |field: &[u8]| -> Option<u64> {
        let text = std::str::from_utf8(field).ok()?;
        let digits = text.trim_matches(|c: char| c == '\0' || c == ' ');
        u64::from_str_radix(digits, 8).ok()
    };
    let mut offset = 0usize;
    let mut has_graph = false;
    loop {
        let Some(header) = payload.get(offset..offset + BLOCK) else {
            return Err(format!(
                "not a tract NNEF archive: it ends inside the tar header at byte {offset}"
            ));
        };
        if header.iter().all(|&b| b == 0) {
            break;
        }
        let stored = octal(&header[148..156]);
        let sum: u64 = header
            .iter()
            .enumerate()
            .map(|(i, &b)| {
                if (148..156).contains(&i) {
                    32
                } else {
                    u64::from(b)
                }
            })
            .sum();
        if stored != Some(sum) {
            return Err(format!(
                "not a tract NNEF archive: bad tar header checksum at byte {offset}"
            ));
        }
        let size = if header[124] & 0x80 != 0 {
            // GNU base-256 sizes, for entries of 8 GiB or more.
            header[125..136]
                .iter()
                .try_fold(0u64, |n, &b| n.checked_mul(256)?.checked_add(u64::from(b)))
        } else {
            octal(&header[124..136])
        };
        let name_end = header[..100].iter().position(|&b| b == 0).unwrap_or(100);
        let name = &header[..name_end];
        has_graph |= name == b"graph.nnef" || name == b"./graph.nnef";
        let next = size
            .and_then(|size| usize::try_from(size.div_ceil(BLOCK as u64)).ok())
            .and_then(|blocks| blocks.checked_mul(BLOCK))
            .and_then(|data| data.checked_add(offset + BLOCK))
            .filter(|&next| next <= payload.len());
        let Some(next) = next else {
            return Err(format!(
                "not a tract NNEF archive: the entry at byte {offset} runs past the end"
            ));
        };
        offset = next;
    }
    if has_graph {
        Ok(())
    } else {
        Err("not a tract NNEF archive: no graph.nnef in it".to_owned())
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
    let mut model = tract_stage(path, "loading", || {
        tract_onnx::onnx().model_for_read(&mut network.onnx_bytes())
    })?;
    tract_stage(path, "setting the input shape", || {
        model.set_input_fact(0, f32::fact(item.dims()).into())
    })?;
    tract_stage(path, "selecting the contract's outputs", || {
        model.select_outputs_by_name(contract.outputs.iter().map(|o| o.name))
    })?;
    let typed = tract_stage(path, "typing the graph", || model.into_typed())?;
    tract_stage(path, "decluttering", || typed.into_decluttered())
}

/// Checks a decluttered item graph before either executor plans it: no value whose shape
/// tract knows takes more than [`MAX_BUFFER_BYTES`] (tract's plan would fail to allocate
/// it in the first run), and a detector's outputs hold no more detections than the
/// sidecar's `max_detections` where the graph fixes their number (every run would fail).
fn check_item_graph(network: &Network, model: &TypedModel) -> Result<(), EngineError> {
    let path = network.path();
    for node in model.nodes() {
        for output in &node.outputs {
            let Some(dims) = output.fact.shape.as_concrete() else {
                continue;
            };
            let element = output.fact.datum_type.size_of();
            let bytes = dims
                .iter()
                .try_fold(element, |n, &d| n.checked_mul(d.max(1)));
            if bytes.is_none_or(|b| b as u64 > MAX_BUFFER_BYTES) {
                return Err(EngineError::TooLarge {
                    path: path.to_owned(),
                    node: node.name.clone(),
                    reason: format!(
                        "its {:?} value of shape {dims:?} takes {}, more than the {} a value \
                         may take",
                        output.fact.datum_type,
                        describe_bytes(bytes),
                        describe_bytes(Some(MAX_BUFFER_BYTES as usize)),
                    ),
                });
            }
        }
    }
    let Some(detector) = &network.sidecar().detector else {
        return Ok(());
    };
    let outlets = model
        .output_outlets()
        .map_err(tract_error(path, "reading outputs"))?;
    for (spec, outlet) in network.contract().outputs.iter().zip(outlets) {
        let fact = model
            .outlet_fact(*outlet)
            .map_err(tract_error(path, "reading outputs"))?;
        let dims: Vec<Option<usize>> = fact
            .shape
            .iter()
            .map(|d| d.as_i64().and_then(|n| usize::try_from(n).ok()))
            .collect();
        let shown: Vec<String> = fact.shape.iter().map(|d| d.to_string()).collect();
        let found = format!(
            "{} [{}] once typed",
            spec.dtype.onnx_name(),
            shown.join(", ")
        );
        check_detections(path, spec, &dims, detector.max_detections, &found)?;
    }
    Ok(())
}

/// A graph ready to run for one item shape, on one executor.
#[derive(Debug, Clone)]
enum ItemPlan {
    Planned(Arc<PlannedGraph>),
    /// tract's plan, with why the planned executor did not take the graph (when it was
    /// asked to).
    Tract(Arc<TypedSimplePlan>, Option<String>),
}

/// Plans `decluttered` on `executor`; a graph the planned executor cannot take runs on
/// tract's plan, with a warning naming the node.
fn item_plan(
    network: &Network,
    decluttered: TypedModel,
    executor: CpuExecutor,
) -> Result<ItemPlan, EngineError> {
    check_item_graph(network, &decluttered)?;
    let path = network.path();
    let mut refusal = None;
    if executor == CpuExecutor::Planned {
        let stage = "planning for posed's executor";
        let planned =
            std::panic::catch_unwind(AssertUnwindSafe(|| PlannedGraph::plan(&decluttered)))
                .map_err(|panic| tract_panicked(path, stage, &*panic))?;
        match planned {
            Ok(plan) => return Ok(ItemPlan::Planned(Arc::new(plan))),
            // tract's plan would need the same memory: no reason to fall back to it.
            Err(e) if e.too_large => {
                return Err(EngineError::TooLarge {
                    path: path.to_owned(),
                    node: e.node,
                    reason: format!("({}) {}", e.op, e.reason),
                });
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), reason = %e, "the planned CPU executor cannot run this network; using tract's plan, which allocates in every run");
                refusal = Some(e.to_string());
            }
        }
    }
    let optimised = tract_stage(path, "optimising", || decluttered.into_optimized())?;
    let plan = tract_stage(path, "planning", || optimised.into_runnable())?;
    Ok(ItemPlan::Tract(plan, refusal))
}

/// A network prepared for the CPU.
#[derive(Debug, Clone)]
pub struct CpuModel {
    shared: Arc<ModelShared>,
}

#[derive(Debug)]
struct ModelShared {
    network: Network,
    options: ModelOptions,
    settings: ModelSettings,
    plans: Mutex<Vec<(Shape, ItemPlan)>>,
}

impl ModelShared {
    /// The plan for one item shape, made (from the ONNX file) on first sight. The lock is
    /// not held while planning (tens of milliseconds): other sessions keep finding their
    /// shapes meanwhile; two sessions planning the same new shape at once keep the first.
    fn plan(&self, item: Shape) -> Result<ItemPlan, EngineError> {
        let known = |plans: &[(Shape, ItemPlan)]| {
            plans
                .iter()
                .find(|(s, _)| *s == item)
                .map(|(_, plan)| plan.clone())
        };
        if let Some(plan) = known(&self.plans.lock().unwrap_or_else(|e| e.into_inner())) {
            return Ok(plan);
        }
        tracing::info!(path = %self.network.path().display(), shape = %item, "planning the CPU network for a new input size");
        let decluttered = decluttered_from_onnx(&self.network, item)?;
        let plan = item_plan(&self.network, decluttered, self.settings.executor)?;
        let mut plans = self.plans.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(plan) = known(&plans) {
            return Ok(plan);
        }
        if plans.len() == MAX_ITEM_SHAPES {
            // The load-time plan (index 0) stays: the model reports on it.
            plans.remove(1);
        }
        plans.push((item, plan.clone()));
        Ok(plan)
    }
}

impl CpuModel {
    fn new(
        network: Network,
        options: ModelOptions,
        item: Shape,
        decluttered: TypedModel,
        settings: ModelSettings,
    ) -> Result<CpuModel, EngineError> {
        let plan = item_plan(&network, decluttered, settings.executor)?;
        Ok(CpuModel {
            shared: Arc::new(ModelShared {
                network,
                options,
                settings,
                plans: Mutex::new(vec![(item, plan)]),
            }),
        })
    }

    /// The executor that runs the load-time input shape: [`CpuExecutor::Tract`] when the
    /// planned executor was asked for but cannot take the graph.
    pub fn executor(&self) -> CpuExecutor {
        match self.load_time_plan() {
            Some(ItemPlan::Planned(_)) => CpuExecutor::Planned,
            _ => CpuExecutor::Tract,
        }
    }

    /// The plan of the load-time input shape (never evicted).
    fn load_time_plan(&self) -> Option<ItemPlan> {
        let plans = self.shared.plans.lock().unwrap_or_else(|e| e.into_inner());
        plans.first().map(|(_, plan)| plan.clone())
    }

    /// Why the planned executor did not take the load-time graph (the node and its op),
    /// when it was asked to and tract's plan runs instead.
    pub fn planned_refusal(&self) -> Option<String> {
        match self.load_time_plan() {
            Some(ItemPlan::Tract(_, refusal)) => refusal,
            _ => None,
        }
    }

    /// Times each step of the planned executor on one item of the load-time input shape
    /// (`item`: its values), averaged over `runs` runs after one to warm up. `None` when
    /// the graph runs on tract's plan. For finding where a network's time goes
    /// (`posed engines profile`, `cpu_network --profile` in the benches; see
    /// [`profile_summary`]); allocates its own buffers and runs on the model's threads.
    ///
    /// # Errors
    /// `item` does not hold one item's values.
    pub fn profile(
        &self,
        item: &[f32],
        runs: usize,
    ) -> Result<Option<Vec<StepProfile>>, EngineError> {
        let Some(ItemPlan::Planned(plan)) = self.load_time_plan() else {
            return Ok(None);
        };
        if item.len() != plan.input_len() {
            return Err(EngineError::Tract {
                path: self.shared.network.path().to_owned(),
                stage: "profiling",
                reason: format!(
                    "one item of the load-time shape has {} values, {} were given",
                    plan.input_len(),
                    item.len()
                ),
            });
        }
        let path = self.shared.network.path();
        let mut buffers = plan
            .new_buffers()
            .ok_or_else(|| out_of_memory(path, "the session's buffers", plan.buffer_bytes()))?;
        let labels = plan.step_labels();
        let mut step_ns = vec![0u64; labels.len()];
        let workers = spawn_workers(path, self.shared.settings.threads)?;
        let mut scratches = scratches(path, &plan, workers.len())?;
        let mut team = Team {
            workers: &workers,
            scratches: &mut scratches,
        };
        plan.run(&mut buffers, item, &mut team);
        for _ in 0..runs.max(1) {
            plan.run_timed(&mut buffers, item, &mut team, &mut step_ns);
        }
        Ok(Some(
            labels
                .into_iter()
                .zip(step_ns)
                .map(|(label, ns)| StepProfile {
                    label,
                    ns_per_run: ns / runs.max(1) as u64,
                })
                .collect(),
        ))
    }

    /// Bytes of buffers a session of the planned executor holds for the load-time input
    /// shape (0 on tract's plan, which allocates as it runs).
    pub fn session_buffer_bytes(&self) -> usize {
        match self.load_time_plan() {
            Some(ItemPlan::Planned(plan)) => plan.buffer_bytes(),
            _ => 0,
        }
    }

    /// Bytes a session of the planned executor holds for the load-time input shape per
    /// worker thread: a scratch buffer for the parts of split steps, and, where a batch
    /// has more than one item, a copy of the session's buffers and an item's input (0 on
    /// tract's plan).
    pub fn worker_buffer_bytes(&self) -> usize {
        let Some(ItemPlan::Planned(plan)) = self.load_time_plan() else {
            return 0;
        };
        let float = std::mem::size_of::<f32>();
        let scratch = plan.scratch_len() * float;
        let contract = self.shared.network.contract();
        if contract.is_batched() && self.shared.options.max_batch > 1 {
            scratch + plan.buffer_bytes() + plan.input_len() * float
        } else {
            scratch
        }
    }

    /// Threads a session runs on, the caller's included ([`CpuBackend::with_threads`]).
    pub fn threads(&self) -> usize {
        self.shared.settings.threads.clamp(1, planned::MAX_LANES)
    }

    /// The input shape of one item of the largest input the model was loaded for (what
    /// [`CpuModel::profile`] times): `[1, 6, 240, 320]` for a pose network, `[1, 3, H, W]`
    /// for a detector.
    pub fn load_item_shape(&self) -> Shape {
        load_item_shape(&self.shared.network.contract(), &self.shared.options)
    }
}

/// A readable summary of [`CpuModel::profile`]'s steps: the total, the time per kind of
/// step (a convolution by its kernel, depthwise and grouped ones apart; matmul, Mul...)
/// largest first, then the `slowest` slowest steps.
pub fn profile_summary(steps: &[StepProfile], slowest: usize) -> String {
    use std::collections::BTreeMap;
    use std::fmt::Write;
    let total: u64 = steps.iter().map(|s| s.ns_per_run).sum();
    let mut by_kind: BTreeMap<String, (u64, usize)> = BTreeMap::new();
    for step in steps {
        // "conv 3x3/1 x144 144->144 60x80+Silu" -> "conv 3x3/1 grouped", "conv 3x3/2".
        let mut words = step.label.split(' ');
        let kind = match (words.next(), words.next(), words.next()) {
            (Some("conv"), Some(kernel), Some(groups)) if groups != "x1" => {
                format!("conv {kernel} grouped")
            }
            (Some("conv"), Some(kernel), _) => format!("conv {kernel}"),
            (Some(first), _, _) => first.split('+').next().unwrap_or(first).to_owned(),
            _ => String::new(),
        };
        let entry = by_kind.entry(kind).or_default();
        entry.0 += step.ns_per_run;
        entry.1 += 1;
    }
    let ms = |ns: u64| ns as f64 / 1e6;
    let mut text = String::new();
    let _ = writeln!(text, "{} steps, {:.2} ms per item", steps.len(), ms(total));
    let mut kinds: Vec<_> = by_kind.into_iter().collect();
    kinds.sort_by_key(|(_, (ns, _))| std::cmp::Reverse(*ns));
    for (kind, (ns, count)) in kinds {
        let share = 100.0 * ns as f64 / total.max(1) as f64;
        let _ = writeln!(
            text,
            "  {:>8.2} ms {share:>5.1}%  {count:>3} x {kind}",
            ms(ns)
        );
    }
    let mut by_time: Vec<_> = steps.iter().collect();
    by_time.sort_by_key(|step| std::cmp::Reverse(step.ns_per_run));
    if slowest > 0 {
        let _ = writeln!(text, "slowest steps:");
    }
    for step in by_time.iter().take(slowest) {
        let _ = writeln!(text, "  {:>8.3} ms  {}", ms(step.ns_per_run), step.label);
    }
    text
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
            workers: Vec::new(),
        };
        if let Some(ItemPlan::Planned(_)) = self.load_time_plan() {
            session.workers = spawn_workers(network.path(), self.shared.settings.threads)?;
        }
        // Ready for the load-time shape, so the first run of it allocates no state.
        session.item_index(load_item_shape(&contract, &self.shared.options))?;
        Ok(Box::new(session))
    }
}

/// The `threads - 1` worker threads a session of the planned executor runs beside the
/// caller's (at most [`planned::MAX_LANES`] threads in all).
fn spawn_workers(path: &Path, threads: usize) -> Result<Vec<Worker>, EngineError> {
    (1..threads.min(planned::MAX_LANES))
        .map(|index| {
            Worker::spawn(format!("posed-cpu-{index}"))
                .map_err(|error| EngineError::io(path, "starting a CPU worker thread", error))
        })
        .collect()
}

/// The error of a session's buffers the machine has no memory for.
fn out_of_memory(path: &Path, what: &str, bytes: usize) -> EngineError {
    EngineError::TooLarge {
        path: path.to_owned(),
        node: "(session)".to_owned(),
        reason: format!("no memory for {what} ({bytes} bytes)"),
    }
}

/// A scratch buffer for each of `workers` worker threads.
fn scratches(
    path: &Path,
    plan: &PlannedGraph,
    workers: usize,
) -> Result<Vec<Vec<f32>>, EngineError> {
    let len = plan.scratch_len();
    (0..workers)
        .map(|_| {
            zeroed(len).ok_or_else(|| {
                out_of_memory(path, "a worker's scratch buffer", len * size_of::<f32>())
            })
        })
        .collect()
}

/// One step of the planned executor and its time ([`CpuModel::profile`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepProfile {
    /// What the step does, with its sizes: `conv 3x3/2 x1 6->40 120x160+Silu`.
    pub label: String,
    /// Its mean time per run, nanoseconds.
    pub ns_per_run: u64,
}

/// What a session keeps per item shape.
enum ItemState {
    /// The planned executor's buffers; for a batch of more than one item, a job with its
    /// own buffers per worker thread (`None` once that worker's run panicked); and a
    /// scratch buffer per worker for the steps of one item it computes parts of.
    Planned {
        shape: Shape,
        plan: Arc<PlannedGraph>,
        buffers: Vec<Vec<f32>>,
        jobs: Vec<Option<ItemJob>>,
        scratches: Vec<Vec<f32>>,
    },
    /// tract's state and the input tensor it reads.
    Tract {
        shape: Shape,
        state: TypedSimpleState,
        input: Arc<Tensor>,
    },
}

impl ItemState {
    fn shape(&self) -> Shape {
        match self {
            ItemState::Planned { shape, .. } | ItemState::Tract { shape, .. } => *shape,
        }
    }
}

struct CpuSession {
    model: Arc<ModelShared>,
    path: PathBuf,
    contract: Contract,
    options: ModelOptions,
    max_detections: usize,
    items: Vec<ItemState>,
    /// Threads that run a batch's items beside the caller's (planned executor only).
    workers: Vec<Worker>,
}

impl CpuSession {
    fn tract_error(&self, stage: &'static str) -> impl Fn(TractError) -> EngineError {
        tract_error(&self.path, stage)
    }

    /// The index of the state for `shape`, made on first sight.
    fn item_index(&mut self, shape: Shape) -> Result<usize, EngineError> {
        if let Some(index) = self.items.iter().position(|item| item.shape() == shape) {
            return Ok(index);
        }
        let state = match self.model.plan(shape)? {
            ItemPlan::Planned(plan) => {
                if plan.input_len() != shape.volume() {
                    return Err(EngineError::Tract {
                        path: self.path.clone(),
                        stage: "planning",
                        reason: format!(
                            "the planned graph reads {} values, the input {shape} has {}",
                            plan.input_len(),
                            shape.volume()
                        ),
                    });
                }
                let batched = self.contract.is_batched() && self.options.max_batch > 1;
                let item_jobs = if batched { self.workers.len() } else { 0 };
                let buffers_error =
                    || out_of_memory(&self.path, "the session's buffers", plan.buffer_bytes());
                ItemState::Planned {
                    shape,
                    buffers: plan.new_buffers().ok_or_else(buffers_error)?,
                    jobs: (0..item_jobs)
                        .map(|_| ItemJob::new(Arc::clone(&plan)).map(Some))
                        .collect::<Option<_>>()
                        .ok_or_else(buffers_error)?,
                    scratches: scratches(&self.path, &plan, self.workers.len())?,
                    plan,
                }
            }
            ItemPlan::Tract(plan, _) => {
                let state = plan
                    .spawn()
                    .map_err(self.tract_error("creating a session"))?;
                let input = Tensor::zero::<f32>(shape.dims())
                    .map_err(self.tract_error("allocating the input"))?;
                ItemState::Tract {
                    shape,
                    state,
                    input: Arc::new(input),
                }
            }
        };
        if self.items.len() == MAX_ITEM_SHAPES {
            // The load-time shape (index 0) stays ready.
            self.items.remove(1);
        }
        self.items.push(state);
        Ok(self.items.len() - 1)
    }
}

/// Runs one item on tract's plan and returns tract's outputs.
fn run_tract_item(
    path: &Path,
    shape: Shape,
    state: &mut TypedSimpleState,
    input: &mut Arc<Tensor>,
    values: &[f32],
) -> Result<TVec<TValue>, EngineError> {
    if Arc::get_mut(input).is_none() {
        // tract still holds the last run's input (it should not): start a fresh one.
        let fresh =
            Tensor::zero::<f32>(shape.dims()).map_err(tract_error(path, "allocating the input"))?;
        *input = Arc::new(fresh);
    }
    let tensor = Arc::get_mut(input).ok_or_else(|| EngineError::Tract {
        path: path.to_owned(),
        stage: "filling the input",
        reason: "input tensor is shared".to_owned(),
    })?;
    tensor
        .try_as_plain_ram_mut()
        .and_then(|mut view| {
            view.as_slice_mut::<f32>()?.copy_from_slice(values);
            Ok(())
        })
        .map_err(tract_error(path, "filling the input"))?;
    let inputs = tvec![TValue::from_const(Arc::clone(input))];
    tract_stage(path, "running", || state.run(inputs))
}

/// Where one batch item's outputs go: checks each output's shape against the contract and
/// copies it into the item's rows of the caller's buffers.
struct ItemWriter<'a> {
    contract: &'a Contract,
    max_detections: usize,
    batch: usize,
    item: usize,
    /// The detection count, which must agree between outputs and between batch items.
    detections: &'a mut Option<usize>,
}

impl<'a> ItemWriter<'a> {
    /// The writer of item `item` of a batch of `batch`.
    fn new(
        (contract, max_detections): (&'a Contract, usize),
        (batch, item): (usize, usize),
        detections: &'a mut Option<usize>,
    ) -> ItemWriter<'a> {
        ItemWriter {
            contract,
            max_detections,
            batch,
            item,
            detections,
        }
    }

    fn write(
        &mut self,
        index: usize,
        item_dims: &[usize],
        data: OutputView<'_>,
        out: &mut OutputTensor,
    ) -> Result<(), EngineError> {
        let spec = &self.contract.outputs[index];
        let item_batch = usize::from(self.contract.is_batched());
        check_output_shape(
            spec,
            item_dims,
            item_batch,
            self.max_detections,
            self.detections,
        )?;
        // The whole batch's shape: the item's with the batch dimension set.
        let mut full = [0usize; crate::tensor::MAX_RANK];
        full[..item_dims.len()].copy_from_slice(item_dims);
        if self.contract.is_batched() {
            full[0] = self.batch;
        }
        let row_len: usize = item_dims.iter().product();
        let rows = self.item * row_len..(self.item + 1) * row_len;
        match (spec.dtype, out.prepare(&full[..item_dims.len()])?, data) {
            (DType::F32, OutputData::F32(dst), OutputView::F32(src)) if src.len() == row_len => {
                dst[rows].copy_from_slice(src);
            }
            (DType::I64, OutputData::I64(dst), OutputView::I64(src)) if src.len() == row_len => {
                dst[rows].copy_from_slice(src);
            }
            _ => {
                return Err(EngineError::Output {
                    tensor: spec.name.to_owned(),
                    reason: format!(
                        "expected {} with {row_len} values; the model or the caller's buffer has another type",
                        spec.dtype.onnx_name()
                    ),
                });
            }
        }
        Ok(())
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
        // An output that breaks the contract is the network's doing: name its file.
        self.run_batch(input, shape, outputs)
            .map_err(|e| e.in_network(&self.path))
    }
}

impl CpuSession {
    /// [`Session::run`], its output errors without the file.
    fn run_batch(
        &mut self,
        input: &[f32],
        shape: &[usize],
        outputs: &mut Outputs,
    ) -> Result<(), EngineError> {
        let batch = check_input(&self.contract, &self.options, input, shape)?;
        let n_outputs = self.contract.outputs.len();
        if outputs.tensors().len() != n_outputs {
            return Err(EngineError::Output {
                tensor: "(all)".to_owned(),
                reason: format!(
                    "{} output buffers, the contract has {n_outputs} outputs",
                    outputs.tensors().len(),
                ),
            });
        }
        let item = item_shape(&self.contract, shape);
        let index = self.item_index(item)?;
        let item_len = item.volume();
        let mut detections = None;
        let count_error = |found: usize| EngineError::Output {
            tensor: "(all)".to_owned(),
            reason: format!("{found} outputs from the model, the contract has {n_outputs}"),
        };
        match &mut self.items[index] {
            ItemState::Planned {
                plan,
                buffers,
                jobs,
                scratches,
                ..
            } => {
                if plan.output_count() != n_outputs {
                    return Err(count_error(plan.output_count()));
                }
                let mut write =
                    |b: usize, plan: &PlannedGraph, buffers: &[Vec<f32>], values: &[f32]| {
                        let mut writer = ItemWriter::new(
                            (&self.contract, self.max_detections),
                            (batch, b),
                            &mut detections,
                        );
                        for (i, out) in outputs.tensors_mut().iter_mut().enumerate() {
                            let (data, dims) = plan
                                .output(buffers, values, i)
                                .ok_or_else(|| count_error(i))?;
                            writer.write(i, dims, data, out)?;
                        }
                        Ok::<(), EngineError>(())
                    };
                // Waves of one item on this thread and one per worker; all of them on this
                // thread once a worker is lost. A wave of one item splits its large steps
                // across the threads instead.
                let lanes = if jobs.iter().all(Option::is_some) {
                    1 + jobs.len()
                } else {
                    1
                };
                let mut first = 0;
                while first < batch {
                    let wave = first..(first + lanes).min(batch);
                    let on_workers = || (wave.start + 1..wave.end).zip(self.workers.iter());
                    for ((b, worker), job) in on_workers().zip(jobs.iter_mut()) {
                        if let Some(mut job) = job.take() {
                            job.input
                                .copy_from_slice(&input[b * item_len..(b + 1) * item_len]);
                            worker.start(job);
                        }
                    }
                    let values = &input[wave.start * item_len..(wave.start + 1) * item_len];
                    if wave.len() == 1 {
                        let mut team = Team {
                            workers: &self.workers,
                            scratches,
                        };
                        plan.run(buffers, values, &mut team);
                    } else {
                        plan.run(buffers, values, &mut Team::alone());
                    }
                    let mut lost = false;
                    for ((_, worker), job) in on_workers().zip(jobs.iter_mut()) {
                        *job = worker.finish();
                        lost |= job.is_none();
                    }
                    if lost {
                        return Err(EngineError::Tract {
                            path: self.path.clone(),
                            stage: "running a batch item on a worker thread",
                            reason: "the run panicked (a bug); later runs of this input size \
                                     use the caller's thread only"
                                .to_owned(),
                        });
                    }
                    write(wave.start, plan, buffers, values)?;
                    for (b, job) in (wave.start + 1..wave.end).zip(jobs.iter()) {
                        if let Some(job) = job {
                            write(b, &job.plan, &job.buffers, &job.input)?;
                        }
                    }
                    first = wave.end;
                }
            }
            ItemState::Tract {
                shape,
                state,
                input: tract_input,
            } => {
                for b in 0..batch {
                    let values = &input[b * item_len..(b + 1) * item_len];
                    let mut writer = ItemWriter::new(
                        (&self.contract, self.max_detections),
                        (batch, b),
                        &mut detections,
                    );
                    let results = run_tract_item(&self.path, *shape, state, tract_input, values)?;
                    if results.len() != n_outputs {
                        return Err(count_error(results.len()));
                    }
                    for (i, (value, out)) in results.iter().zip(outputs.tensors_mut()).enumerate() {
                        let view = value
                            .try_as_plain_ram()
                            .map_err(tract_error(&self.path, "reading outputs"))?;
                        let data = match self.contract.outputs[i].dtype {
                            DType::I64 => view.as_slice::<i64>().map(OutputView::I64),
                            _ => view.as_slice::<f32>().map(OutputView::F32),
                        }
                        .map_err(|e| EngineError::Output {
                            tensor: self.contract.outputs[i].name.to_owned(),
                            reason: format!(
                                "expected {}: {e:#}",
                                self.contract.outputs[i].dtype.onnx_name()
                            ),
                        })?;
                        writer.write(i, value.shape(), data, out)?;
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refiner_tiny() -> Network {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/networks/refiner-tiny.onnx");
        Network::open(&path).expect("data/networks/refiner-tiny.onnx")
    }

    #[test]
    fn archives_are_checked_for_their_layout_and_read_errors_print_no_raw_bytes() {
        let network = refiner_tiny();
        let item = load_item_shape(&network.contract(), &ModelOptions::default());
        let decluttered = decluttered_from_onnx(&network, item).expect("declutters");
        let mut archive = Vec::new();
        tract_nnef::nnef()
            .with_onnx()
            .write_to_tar_with_config(&decluttered, &mut archive, false, true)
            .expect("archive");
        assert_eq!(check_archive_layout(&archive), Ok(()));
        assert!(read_archive(network.path(), &archive).is_ok());

        let cut = &archive[..archive.len() / 2];
        let problem = check_archive_layout(cut).expect_err("cut");
        assert!(problem.contains("past the end"), "{problem}");
        let mut flipped = archive.clone();
        flipped[3] ^= 1;
        let problem = check_archive_layout(&flipped).expect_err("flipped");
        assert!(problem.contains("checksum"), "{problem}");
        // A tar archive with a header and an entry, but no graph in it.
        let mut other = archive[..512].to_vec();
        other[..10].copy_from_slice(b"graph.nnex");
        let sum: u32 = other
            .iter()
            .enumerate()
            .map(|(i, &b)| {
                if (148..156).contains(&i) {
                    32
                } else {
                    u32::from(b)
                }
            })
            .sum();
        other[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        let size = usize::from_str_radix(std::str::from_utf8(&other[124..135]).expect("octal"), 8)
            .expect("size");
        other.extend(vec![0; size.div_ceil(512) * 512 + 1024]);
        let problem = check_archive_layout(&other).expect_err("no graph");
        assert!(problem.contains("no graph.nnef"), "{problem}");

        // Bytes that are no archive at all: tract's message, if it quotes them, is made
        // printable and short.
        let garbage: Vec<u8> = (0..5000u32).map(|i| (i * 7919 % 256) as u8).collect();
        assert!(check_archive_layout(&garbage).is_err());
        let err = read_archive(network.path(), &garbage).expect_err("garbage");
        let message = err.to_string();
        assert!(message.contains("refiner-tiny.onnx"), "{message}");
        assert!(message.len() < 1000, "{message}");
        assert!(!message.chars().any(char::is_control), "{message:?}");
    }

    #[test]
    fn a_panic_inside_tract_is_an_error_naming_the_file_and_the_stage() {
        let network = refiner_tiny();
        let err = tract_stage(network.path(), "decluttering", || -> TractResult<()> {
            panic!("attempt to divide by zero")
        })
        .expect_err("panicked");
        let message = err.to_string();
        assert!(
            message.contains("refiner-tiny.onnx")
                && message.contains("decluttering")
                && message.contains("attempt to divide by zero"),
            "{message}"
        );
    }

    /// refiner-tiny's batch norms (a Mul and an Add by per-channel constants once
    /// decluttered) and SiLUs fold into the convolutions and einsums before them, on every
    /// target: tract's declutter lays some convolutions out channels last on aarch64, so
    /// the 1x1 convolutions around them see pixels as rows there. Left: the residual Add,
    /// the squeeze-excite gates and the averages' 1 / count. (48 steps unfused; 22 on
    /// x86_64, 25 on aarch64 with its transposes.)
    #[test]
    fn refiner_tiny_folds_its_batch_norms_and_activations() {
        let network = refiner_tiny();
        let item = load_item_shape(&network.contract(), &ModelOptions::default());
        let decluttered = decluttered_from_onnx(&network, item).expect("declutters");
        let plan = PlannedGraph::plan(&decluttered).expect("plans");
        let steps = plan.step_names();
        let count = |name: &str| steps.iter().filter(|step| *step == name).count();
        assert_eq!(count("Add"), 1, "{steps:?}");
        assert_eq!(count("Mul"), 5, "{steps:?}");
        assert_eq!(count("Silu") + count("Sigmoid"), 0, "{steps:?}");
        assert!(steps.len() <= 25, "{steps:?}");
    }
}
