//! The coarse + refiner loop of CosyPose (spec A.2-A.4), batched over the objects of one
//! frame, on the CPU, or with its geometry (crops, renders, updates) on a CUDA device.
//!
//! Per iteration and per batch of objects: the crop box around the current estimate, its
//! `K_crop`, RoIAlign of the camera image into channels 0-2 of the network input, a
//! rendering at `K_crop` into channels 3-5 (both in [0, 1]), one network pass, and the
//! image-space update of each pose. Every buffer (network input and outputs, render
//! targets, the batch list) is allocated in [`SingleViewPipeline::new`]; a warm frame
//! allocates nothing here (the network backend is another matter: see the engines crate).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use posed_engines::backend::check_input;
use posed_engines::contract::{POSE_INPUT_CHANNELS, POSE_UPDATE_LEN};
use posed_engines::tensor::OutputData;
use posed_engines::{Contract, DetectorLayout, EngineError, ModelOptions, Outputs, Role, Session};
use posed_kernels::cosypose::crop::{
    crop_box, k_crop, normalize_rgb8, projected_box, roi_align_normalized_rows,
};
use posed_kernels::cosypose::init::{init_pose_z1, init_pose_zup_autodepth};
use posed_kernels::cosypose::update::apply_update;
use posed_kernels::cosypose::{BoxXyxy, CROP_HEIGHT, CROP_WIDTH};
use posed_kernels::render::{Camera, CpuRenderer, Instance, RenderItem, RenderTarget, Shading};
use posed_kernels::{Intrinsics, KernelError, Pose};
use serde::Deserialize;

use super::points::CropPoints;
use crate::bop::models::ModelSet;
use crate::render::object_mesh;
use crate::source::{Cuda, MappedHostBuffer};
use crate::{Error, Result};

/// The most objects one network pass takes (CosyPose's `bsz_objects` default).
pub const MAX_BATCH_SIZE: usize = 64;
/// Most bands of rows one crop is split into for the CPU's threads.
const MAX_CROP_BANDS: usize = 8;
/// Most RoIAlign tasks of one batch.
const MAX_CROP_TASKS: usize = MAX_BATCH_SIZE * MAX_CROP_BANDS;

const PLANE: usize = CROP_HEIGHT * CROP_WIDTH;
/// Floats of one batch item of the network input: 6 planes of 240 x 320.
const ITEM_LEN: usize = POSE_INPUT_CHANNELS * PLANE;

/// Where a computation runs: the single-view loop's geometry (crops, renderings, pose
/// updates), `posed eval`'s ADD and ADD-S. Without a CUDA driver or device, `Cuda` falls
/// back to the CPU with a warning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ComputeDevice {
    /// The CPU (the renderer's threads).
    #[default]
    Cpu,
    /// The first CUDA device ([`SingleViewPipeline::with_cuda`]).
    Cuda,
}

/// How initial poses are made from boxes (spec A.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
pub enum InitScheme {
    /// The paper's setting: identity rotation, 1 m deep, centred on the box.
    #[serde(rename = "z1")]
    #[value(name = "z1")]
    Z1,
    /// BOP20's setting: the z-up rotation and the depth at which the model fills the box.
    #[serde(rename = "zup-autodepth")]
    #[value(name = "zup-autodepth")]
    ZupAutodepth,
}

/// One object of a frame: what it is, where it is believed to be, and how sure.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ObjectEstimate {
    /// BOP object id.
    pub obj_id: u32,
    /// Detection score (or the given initial pose's score).
    pub score: f64,
    /// The detection box (x1, y1, x2, y2) in pixels; for a given initial pose, the box of
    /// its projected model points.
    pub bbox_xyxy: BoxXyxy,
    /// The current estimate, metres.
    pub camera_from_object: Pose,
    /// False once an iteration had no finite result for this object (a degenerate network
    /// output, a crop with no extent); the object then keeps its last good pose and takes
    /// no further part.
    pub valid: bool,
}

impl ObjectEstimate {
    /// An object detected in a box; its pose is set by [`SingleViewPipeline::init_from_boxes`].
    pub fn from_box(obj_id: u32, score: f64, bbox_xyxy: BoxXyxy) -> Self {
        Self {
            obj_id,
            score,
            bbox_xyxy,
            camera_from_object: Pose::identity(),
            valid: true,
        }
    }

    /// An object with a given initial pose (the YCB-Video protocol's PoseCNN poses).
    pub fn from_pose(obj_id: u32, score: f64, camera_from_object: Pose) -> Self {
        Self {
            obj_id,
            score,
            bbox_xyxy: [0.0; 4],
            camera_from_object,
            valid: true,
        }
    }
}

/// The camera image of a frame: 8-bit RGB, row-major, and its intrinsics.
#[derive(Debug, Clone, Copy)]
pub struct ImageView<'a> {
    /// `width * height * 3` bytes.
    pub rgb: &'a [u8],
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// Intrinsics.
    pub intrinsics: Intrinsics,
    /// The host memory mapped into the CUDA device that `rgb` lies in, when it does (a
    /// daemon frame converted on the GPU): on a Jetson the CUDA loop then crops it in
    /// place instead of copying it up for every batch.
    pub mapped: Option<&'a MappedHostBuffer>,
}

/// The CUDA device `device` asks for (the first one), opened once for everything that runs
/// there (the loop, a daemon's camera). `None` for the CPU, and, with the reason as the
/// second value (for the caller's warning), where CUDA was asked for but there is no
/// driver, no device or no `cuda` feature.
///
/// # Errors
/// CUDA errors other than "no driver / no device".
pub fn open_compute_device(device: ComputeDevice) -> Result<(Option<Cuda>, Option<String>)> {
    match device {
        ComputeDevice::Cpu => Ok((None, None)),
        #[cfg(feature = "cuda")]
        ComputeDevice::Cuda => match posed_kernels::cuda::CudaDevice::open(0) {
            Ok(cuda) => {
                tracing::info!(
                    "CUDA device 0: {} (sm_{}{}, {})",
                    cuda.name(),
                    cuda.compute_capability().0,
                    cuda.compute_capability().1,
                    if cuda.integrated() {
                        "integrated: mapped frames are read in place"
                    } else {
                        "discrete"
                    }
                );
                Ok((Some(cuda), None))
            }
            Err(KernelError::CudaUnavailable { reason }) => Ok((None, Some(on_the_cpu(&reason)))),
            Err(source) => Err(Error::Kernel {
                context: "opening CUDA device 0".to_string(),
                source,
            }),
        },
        #[cfg(not(feature = "cuda"))]
        ComputeDevice::Cuda => Ok((
            None,
            Some("built without the cuda feature; the loop runs on the CPU".to_string()),
        )),
    }
}

/// Why the loop runs on the CPU although CUDA was asked for.
#[cfg(feature = "cuda")]
fn on_the_cpu(reason: &str) -> String {
    format!("no usable CUDA device ({reason}); the loop runs on the CPU")
}

/// Which network an iteration ran (coarse iterations come first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    /// The coarse model.
    Coarse,
    /// The refiner.
    Refiner,
}

impl Stage {
    /// `coarse` or `refiner`.
    pub fn name(self) -> &'static str {
        match self {
            Stage::Coarse => "coarse",
            Stage::Refiner => "refiner",
        }
    }
}

/// One finished iteration: the stage and its 1-based number within the stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Iteration {
    /// The network.
    pub stage: Stage,
    /// 1 for the first iteration of the stage.
    pub number: usize,
}

/// Time spent per stage since the last [`SingleViewPipeline::take_timings`].
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StageTimings {
    /// Initial poses from boxes.
    pub init: Duration,
    /// Crop boxes, `K_crop` and RoIAlign.
    pub crop: Duration,
    /// Rendering at the current estimates, and its conversion into the network input.
    pub render: Duration,
    /// Coarse network passes.
    pub coarse_network: Duration,
    /// Refiner network passes.
    pub refiner_network: Duration,
    /// Pose updates.
    pub update: Duration,
    /// Objects that lost their estimate to a non-finite result.
    pub invalid_objects: usize,
}

impl StageTimings {
    /// Everything but the networks.
    pub fn without_networks(&self) -> Duration {
        self.init + self.crop + self.render + self.update
    }

    /// Adds another frame's timings to these.
    pub fn accumulate(&mut self, other: &StageTimings) {
        self.init += other.init;
        self.crop += other.crop;
        self.render += other.render;
        self.coarse_network += other.coarse_network;
        self.refiner_network += other.refiner_network;
        self.update += other.update;
        self.invalid_objects += other.invalid_objects;
    }
}

/// The loop's settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PipelineOptions {
    /// Coarse iterations (BOP: 1; YCB-V from PoseCNN poses: 0).
    pub coarse_iterations: usize,
    /// Refiner iterations (BOP: 4; YCB-V: 2).
    pub refiner_iterations: usize,
    /// Objects per network pass, at most [`MAX_BATCH_SIZE`] and the networks' largest batch.
    pub batch_size: usize,
    /// Threads of the renderer (the caller's included).
    pub render_threads: usize,
    /// How renderings are lit.
    pub shading: Shading,
}

impl Default for PipelineOptions {
    fn default() -> Self {
        Self {
            coarse_iterations: 1,
            refiner_iterations: 4,
            batch_size: ModelOptions::default().max_batch,
            render_threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            shading: Shading::default(),
        }
    }
}

/// The coarse and refiner sessions (either may be absent when its iterations are 0).
pub struct PoseNetworks {
    /// The coarse model.
    pub coarse: Option<Box<dyn Session>>,
    /// The refiner.
    pub refiner: Option<Box<dyn Session>>,
}

struct NetworkSlot {
    session: Box<dyn Session>,
    outputs: Outputs,
}

impl NetworkSlot {
    fn new(session: Box<dyn Session>, stage: Stage) -> Result<Self> {
        let contract = session.contract();
        if !matches!(contract.role, Role::Coarse | Role::Refiner) {
            return Err(Error::Invalid {
                what: format!("the {} network", stage.name()),
                reason: format!(
                    "expected a coarse or refiner network, found a {}",
                    contract.role
                ),
            });
        }
        let outputs = session.allocate_outputs();
        Ok(Self { session, outputs })
    }
}

/// One object of the current batch.
#[derive(Debug, Clone, Copy)]
struct BatchItem {
    /// Index in the frame's object list.
    object: usize,
    crop: BoxXyxy,
    k_crop: Intrinsics,
    instance: Instance,
}

/// CosyPose's single-view loop with every buffer allocated up front.
pub struct SingleViewPipeline {
    options: PipelineOptions,
    batch_size: usize,
    points: CropPoints,
    renderer: CpuRenderer,
    mesh_of_object: BTreeMap<u32, usize>,
    coarse: Option<NetworkSlot>,
    refiner: Option<NetworkSlot>,
    input: Vec<f32>,
    /// The camera image divided by 255, what RoIAlign reads; sized by the largest image.
    normalized: Vec<f32>,
    targets: Vec<RenderTarget>,
    batch: Vec<BatchItem>,
    timings: StageTimings,
    /// The geometry on a CUDA device ([`SingleViewPipeline::with_cuda`]); the CPU when
    /// absent.
    #[cfg(feature = "cuda")]
    gpu: Option<Box<super::gpu::GpuGeometry>>,
}

impl std::fmt::Debug for SingleViewPipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SingleViewPipeline")
            .field("options", &self.options)
            .field("batch_size", &self.batch_size)
            .field("objects", &self.mesh_of_object.len())
            .finish_non_exhaustive()
    }
}

impl SingleViewPipeline {
    /// Prepares the loop for the objects of `models` with these networks.
    ///
    /// # Errors
    /// [`Error::Invalid`] when iterations are asked of a network that is absent, the batch
    /// size is 0, or a session is not a pose network; what [`object_mesh`] and
    /// [`CropPoints::from_models`] refuse.
    pub fn new(
        models: &ModelSet,
        networks: PoseNetworks,
        options: PipelineOptions,
    ) -> Result<Self> {
        let invalid = |what: &str, reason: String| Error::Invalid {
            what: what.to_string(),
            reason,
        };
        if options.coarse_iterations > 0 && networks.coarse.is_none() {
            return Err(invalid(
                "coarse iterations",
                format!(
                    "{} asked, but no coarse network is given",
                    options.coarse_iterations
                ),
            ));
        }
        if options.refiner_iterations > 0 && networks.refiner.is_none() {
            return Err(invalid(
                "refiner iterations",
                format!(
                    "{} asked, but no refiner network is given",
                    options.refiner_iterations
                ),
            ));
        }
        if options.batch_size == 0 {
            return Err(invalid("batch size", "must be at least 1".to_string()));
        }
        let coarse = networks
            .coarse
            .map(|s| NetworkSlot::new(s, Stage::Coarse))
            .transpose()?;
        let refiner = networks
            .refiner
            .map(|s| NetworkSlot::new(s, Stage::Refiner))
            .transpose()?;
        let batch_size = [&coarse, &refiner]
            .into_iter()
            .flatten()
            .map(|slot| slot.session.options().max_batch)
            .fold(options.batch_size.min(MAX_BATCH_SIZE), usize::min);

        let mut meshes = Vec::with_capacity(models.objects.len());
        let mut mesh_of_object = BTreeMap::new();
        for (obj_id, model) in &models.objects {
            mesh_of_object.insert(*obj_id, meshes.len());
            meshes.push(object_mesh(model)?);
        }
        Ok(Self {
            options,
            batch_size,
            points: CropPoints::from_models(models)?,
            renderer: CpuRenderer::new(meshes, options.render_threads),
            mesh_of_object,
            coarse,
            refiner,
            input: vec![0.0; batch_size * ITEM_LEN],
            normalized: Vec::new(),
            targets: (0..batch_size)
                .map(|_| RenderTarget::new(CROP_WIDTH, CROP_HEIGHT))
                .collect(),
            batch: Vec::with_capacity(batch_size),
            timings: StageTimings::default(),
            #[cfg(feature = "cuda")]
            gpu: None,
        })
    }

    /// [`SingleViewPipeline::new`], with the crops, `K_crop`, RoIAlign, renderings and
    /// pose updates on `device` (the CUDA twins of the CPU code, compiled by NVRTC or
    /// loaded from the kernel cache), for camera images of at most `max_width` x
    /// `max_height`. The network input is copied to the host for the backend.
    ///
    /// # Errors
    /// What [`SingleViewPipeline::new`] refuses; [`Error::Kernel`] for CUDA errors
    /// (compiling, loading, allocating) and limits the kernels refuse.
    #[cfg(feature = "cuda")]
    pub fn with_cuda(
        models: &ModelSet,
        networks: PoseNetworks,
        options: PipelineOptions,
        device: &posed_kernels::cuda::CudaDevice,
        max_width: usize,
        max_height: usize,
    ) -> Result<Self> {
        let mut pipeline = Self::new(models, networks, options)?;
        pipeline
            .attach_cuda(device, max_width, max_height)
            .map_err(|source| Error::Kernel {
                context: "preparing the pipeline's CUDA geometry".to_string(),
                source,
            })?;
        Ok(pipeline)
    }

    /// Moves the geometry of a pipeline built by [`SingleViewPipeline::new`] onto
    /// `device`: the renderer's meshes and the crop points, uploaded once.
    #[cfg(feature = "cuda")]
    fn attach_cuda(
        &mut self,
        device: &posed_kernels::cuda::CudaDevice,
        max_width: usize,
        max_height: usize,
    ) -> std::result::Result<(), KernelError> {
        let meshes = self.renderer.meshes();
        // Object indices on the device are mesh indices.
        let mut points: Vec<&[[f32; 3]]> = vec![&[]; meshes.len()];
        for (obj_id, &mesh) in &self.mesh_of_object {
            points[mesh] = self.points.get(*obj_id).unwrap_or(&[]);
        }
        let gpu = super::gpu::GpuGeometry::new(
            device,
            meshes,
            &points,
            self.batch_size,
            max_width,
            max_height,
        )?;
        self.gpu = Some(Box::new(gpu));
        Ok(())
    }

    /// [`SingleViewPipeline::new`] or [`SingleViewPipeline::with_cuda`] (the first CUDA
    /// device, camera images of at most `max_image_wh`) as `device` says. Asked for CUDA
    /// where there is no driver, no device or no `cuda` feature, it is the CPU, and the
    /// second value says why (for the caller's warning).
    ///
    /// # Errors
    /// What [`open_compute_device`], [`SingleViewPipeline::new`] and
    /// [`SingleViewPipeline::with_cuda`] refuse.
    pub fn for_device(
        models: &ModelSet,
        networks: PoseNetworks,
        options: PipelineOptions,
        device: ComputeDevice,
        max_image_wh: (usize, usize),
    ) -> Result<(Self, Option<String>)> {
        let (cuda, reason) = open_compute_device(device)?;
        Self::on_device_or_cpu(models, networks, options, cuda.as_ref(), max_image_wh)
            .map(|(pipeline, later)| (pipeline, reason.or(later)))
    }

    /// [`SingleViewPipeline::with_cuda`] on an open `device`, or [`SingleViewPipeline::new`]
    /// without one, or where the kernels cannot be had (no NVRTC), with the reason (for the
    /// caller's warning).
    ///
    /// # Errors
    /// What [`SingleViewPipeline::new`] and [`SingleViewPipeline::with_cuda`] refuse.
    pub fn on_device_or_cpu(
        models: &ModelSet,
        networks: PoseNetworks,
        options: PipelineOptions,
        device: Option<&Cuda>,
        max_image_wh: (usize, usize),
    ) -> Result<(Self, Option<String>)> {
        #[allow(unused_mut)] // Attached only with the `cuda` feature.
        let mut pipeline = Self::new(models, networks, options)?;
        let Some(device) = device else {
            return Ok((pipeline, None));
        };
        #[cfg(not(feature = "cuda"))]
        {
            let _ = max_image_wh;
            match *device {}
        }
        #[cfg(feature = "cuda")]
        {
            let (width, height) = max_image_wh;
            match pipeline.attach_cuda(device, width, height) {
                Ok(()) => Ok((pipeline, None)),
                // No NVRTC, or the driver lost: the CPU, and why.
                Err(KernelError::CudaUnavailable { reason }) => {
                    Ok((pipeline, Some(on_the_cpu(&reason))))
                }
                Err(source) => Err(Error::Kernel {
                    context: "preparing the pipeline's CUDA geometry".to_string(),
                    source,
                }),
            }
        }
    }

    /// Whether the geometry runs on a CUDA device.
    pub fn on_cuda(&self) -> bool {
        #[cfg(feature = "cuda")]
        {
            self.gpu.is_some()
        }
        #[cfg(not(feature = "cuda"))]
        {
            false
        }
    }

    /// The options it was built with.
    pub fn options(&self) -> &PipelineOptions {
        &self.options
    }

    /// Objects per network pass (the option, capped by the networks' largest batch).
    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// The crop points of the objects.
    pub fn points(&self) -> &CropPoints {
        &self.points
    }

    /// Whether the models include `obj_id`.
    pub fn has_object(&self, obj_id: u32) -> bool {
        self.mesh_of_object.contains_key(&obj_id)
    }

    /// The timings since the last call, and a fresh start.
    pub fn take_timings(&mut self) -> StageTimings {
        std::mem::take(&mut self.timings)
    }

    /// Sets each object's initial pose from its box (spec A.2).
    ///
    /// # Errors
    /// [`Error::Kernel`] for an object without a model or a box that gives no depth.
    pub fn init_from_boxes(
        &mut self,
        intrinsics: &Intrinsics,
        scheme: InitScheme,
        objects: &mut [ObjectEstimate],
    ) -> Result<()> {
        let start = Instant::now();
        for object in objects.iter_mut() {
            object.camera_from_object = match scheme {
                InitScheme::Z1 => init_pose_z1(&object.bbox_xyxy, intrinsics),
                InitScheme::ZupAutodepth => {
                    let points = self.points_of(object.obj_id)?;
                    init_pose_zup_autodepth(&object.bbox_xyxy, intrinsics, points).map_err(
                        |source| Error::Kernel {
                            context: format!(
                                "initial pose of object {} from box {:?}",
                                object.obj_id, object.bbox_xyxy
                            ),
                            source,
                        },
                    )?
                }
            };
        }
        self.timings.init += start.elapsed();
        Ok(())
    }

    /// Sets each object's box to the box of its projected model points (for objects that
    /// come with a pose rather than a detection).
    ///
    /// # Errors
    /// [`Error::Kernel`] for an object without a model.
    pub fn boxes_from_poses(
        &self,
        intrinsics: &Intrinsics,
        objects: &mut [ObjectEstimate],
    ) -> Result<()> {
        for object in objects.iter_mut() {
            let points = self.points_of(object.obj_id)?;
            object.bbox_xyxy = projected_box(intrinsics, &object.camera_from_object, points);
        }
        Ok(())
    }

    /// Runs the configured coarse, then refiner iterations on `objects`, calling
    /// `on_iteration` after each with the updated list.
    ///
    /// # Errors
    /// [`Error::Kernel`] for an object without a model or an image whose size does not
    /// match its bytes; [`Error::Engine`] when a network run fails. An object whose update
    /// is not finite is not an error: it is marked invalid and counted.
    pub fn run(
        &mut self,
        image: &ImageView<'_>,
        objects: &mut [ObjectEstimate],
        on_iteration: &mut dyn FnMut(Iteration, &[ObjectEstimate]),
    ) -> Result<()> {
        if image.rgb.len() != image.width * image.height * 3 {
            return Err(Error::Kernel {
                context: "the camera image".to_string(),
                source: KernelError::SizeMismatch {
                    what: "RGB image bytes",
                    expected: image.width * image.height * 3,
                    found: image.rgb.len(),
                },
            });
        }
        for object in objects.iter() {
            self.points_of(object.obj_id)?;
        }
        let start = Instant::now();
        // RoIAlign on the device reads the 8-bit image itself.
        if !self.on_cuda() {
            if self.normalized.len() < image.rgb.len() {
                // Grows with the largest image seen, then is reused.
                self.normalized.resize(image.rgb.len(), 0.0);
            }
            normalize_rgb8(image.rgb, &mut self.normalized[..image.rgb.len()]).map_err(
                |source| Error::Kernel {
                    context: "the camera image".to_string(),
                    source,
                },
            )?;
        }
        self.timings.crop += start.elapsed();
        let stages = [
            (Stage::Coarse, self.options.coarse_iterations),
            (Stage::Refiner, self.options.refiner_iterations),
        ];
        for (stage, iterations) in stages {
            for number in 1..=iterations {
                let mut next = 0;
                while next < objects.len() {
                    next = self.fill_batch(image, objects, next)?;
                    if !self.batch.is_empty() {
                        self.run_batch(stage, objects)?;
                    }
                }
                on_iteration(Iteration { stage, number }, objects);
            }
        }
        Ok(())
    }

    fn points_of(&self, obj_id: u32) -> Result<&[[f32; 3]]> {
        self.points.get(obj_id).ok_or_else(|| Error::Kernel {
            context: format!("object {obj_id}"),
            source: KernelError::InvalidMesh {
                reason: "the object models have no object with this id",
            },
        })
    }

    /// Takes valid objects from `first` on until the batch is full: their crop boxes,
    /// `K_crop` and RoIAlign crops. Returns the index after the last object looked at.
    fn fill_batch(
        &mut self,
        image: &ImageView<'_>,
        objects: &mut [ObjectEstimate],
        first: usize,
    ) -> Result<usize> {
        let start = Instant::now();
        self.batch.clear();
        #[cfg(feature = "cuda")]
        if self.gpu.is_some() {
            let index = self.fill_batch_cuda(image, objects, first)?;
            self.timings.crop += start.elapsed();
            return Ok(index);
        }
        let mut index = first;
        while index < objects.len() && self.batch.len() < self.batch_size {
            let object = &mut objects[index];
            index += 1;
            if !object.valid {
                continue;
            }
            let points = self.points.get(object.obj_id).unwrap_or(&[]);
            let pose = &object.camera_from_object;
            let crop = crop_box(&image.intrinsics, pose, points, image.width, image.height)
                .and_then(|crop| Ok((crop, k_crop(&image.intrinsics, &crop)?)));
            // RoIAlign samples in f32: a box beyond f32's range (a pose far off the image)
            // is as invalid as one that is not finite, as the CUDA path judges it.
            let crop = crop
                .ok()
                .filter(|(crop, _)| crop.iter().all(|&v| (v as f32).is_finite()));
            let Some((crop, k_crop)) = crop else {
                object.valid = false;
                self.timings.invalid_objects += 1;
                continue;
            };
            self.batch.push(BatchItem {
                object: index - 1,
                crop,
                k_crop,
                instance: Instance {
                    mesh: mesh_index(&self.mesh_of_object, object.obj_id),
                    camera_from_object: *pose,
                },
            });
        }
        self.crop_batch(image)?;
        self.timings.crop += start.elapsed();
        Ok(index)
    }

    /// [`Self::fill_batch`] on the CUDA device: the crop boxes and `K_crop` of up to a
    /// batch of valid objects in one launch, then RoIAlign of the batch's crops into the
    /// network input, copied to the host.
    #[cfg(feature = "cuda")]
    fn fill_batch_cuda(
        &mut self,
        image: &ImageView<'_>,
        objects: &mut [ObjectEstimate],
        first: usize,
    ) -> Result<usize> {
        let kernel_error = |context: &str| {
            let context = context.to_string();
            move |source| Error::Kernel { context, source }
        };
        let Some(gpu) = self.gpu.as_mut() else {
            return Ok(first);
        };
        let mesh_of = |obj_id: u32| mesh_index(&self.mesh_of_object, obj_id);
        // As on the CPU, the batch fills up with objects whose crops succeed: one launch
        // for as many valid objects as there are free places, again while some failed.
        let mut end = first;
        while end < objects.len() && self.batch.len() < self.batch_size {
            let start = end;
            let mut taken = 0;
            while end < objects.len() && taken < self.batch_size - self.batch.len() {
                taken += usize::from(objects[end].valid);
                end += 1;
            }
            let candidates = objects[start..end]
                .iter()
                .filter(|o| o.valid)
                .map(|o| (o.camera_from_object, mesh_of(o.obj_id)));
            let crops = gpu
                .crops(&image.intrinsics, image.width, image.height, candidates)
                .map_err(kernel_error(
                    "the crop boxes of the current estimates (CUDA)",
                ))?;
            // The valid objects' indices, in the order their crops come back.
            let mut valid = [0usize; MAX_BATCH_SIZE];
            let mut valid_count = 0;
            for i in (start..end).filter(|&i| objects[i].valid) {
                valid[valid_count] = i;
                valid_count += 1;
            }
            for (&object_index, crop) in valid[..valid_count].iter().zip(crops) {
                let object = &mut objects[object_index];
                match crop {
                    Ok(crop) => self.batch.push(BatchItem {
                        object: object_index,
                        crop: crop.box_xyxy,
                        k_crop: crop.k_crop,
                        instance: Instance {
                            mesh: mesh_of(object.obj_id),
                            camera_from_object: object.camera_from_object,
                        },
                    }),
                    Err(_) => {
                        object.valid = false;
                        self.timings.invalid_objects += 1;
                    }
                }
            }
        }
        let count = self.batch.len();
        if count > 0 {
            gpu.crop_into(
                image.rgb,
                image.mapped,
                image.width,
                image.height,
                self.batch.iter().map(|item| item.crop),
                &mut self.input[..count * ITEM_LEN],
            )
            .map_err(kernel_error("cropping the camera image (CUDA)"))?;
        }
        Ok(end)
    }

    /// RoIAlign of the normalised camera image over each batch item's crop box into
    /// channels 0-2 of its network input, on the renderer's threads. Each crop is split
    /// into bands of rows, enough for every thread to have work to the end (5 crops on 2
    /// threads as 5 tasks kept one thread idle for a fifth of the time).
    fn crop_batch(&mut self, image: &ImageView<'_>) -> Result<()> {
        let count = self.batch.len();
        if count == 0 {
            return Ok(());
        }
        let threads = self.renderer.pool().thread_count().max(1);
        let bands = (4 * threads).div_ceil(count).clamp(1, MAX_CROP_BANDS);
        let band_rows = CROP_HEIGHT.div_ceil(bands);
        let band_len = band_rows * CROP_WIDTH;
        // (item, first row, its three planes' rows), one per task.
        type Band<'a> = (usize, usize, [&'a mut [f32]; 3]);
        let mut tasks: heapless::Vec<Mutex<Band<'_>>, MAX_CROP_TASKS> = heapless::Vec::new();
        for (item, input) in self
            .input
            .chunks_exact_mut(ITEM_LEN)
            .take(count)
            .enumerate()
        {
            let (red, rest) = input[..3 * PLANE].split_at_mut(PLANE);
            let (green, blue) = rest.split_at_mut(PLANE);
            let planes = red
                .chunks_mut(band_len)
                .zip(green.chunks_mut(band_len))
                .zip(blue.chunks_mut(band_len));
            for (band, ((r, g), b)) in planes.enumerate() {
                // count <= MAX_BATCH_SIZE and bands <= MAX_CROP_BANDS: the push cannot fail.
                let _ = tasks.push(Mutex::new((item, band * band_rows, [r, g, b])));
            }
        }
        let failure: Mutex<Option<KernelError>> = Mutex::new(None);
        let texels = &self.normalized[..image.rgb.len()];
        let batch = &self.batch;
        self.renderer.pool().run(tasks.len(), &|task| {
            let mut band = tasks[task].lock().unwrap_or_else(PoisonError::into_inner);
            let (item, first_row, planes) = &mut *band;
            let rows = *first_row..*first_row + planes[0].len() / CROP_WIDTH;
            let [r, g, b] = planes;
            if let Err(error) = roi_align_normalized_rows(
                texels,
                image.width,
                image.height,
                &batch[*item].crop,
                rows,
                [r, g, b],
            ) {
                *failure.lock().unwrap_or_else(PoisonError::into_inner) = Some(error);
            }
        });
        match failure.into_inner().unwrap_or_else(PoisonError::into_inner) {
            None => Ok(()),
            Some(source) => Err(Error::Kernel {
                context: "cropping the camera image".to_string(),
                source,
            }),
        }
    }

    /// Renders, runs the network and updates the poses of the current batch.
    fn run_batch(&mut self, stage: Stage, objects: &mut [ObjectEstimate]) -> Result<()> {
        let count = self.batch.len();

        let start = Instant::now();
        let mut items: heapless::Vec<RenderItem<'_>, MAX_BATCH_SIZE> = heapless::Vec::new();
        for item in &self.batch {
            let render_item = RenderItem {
                camera: Camera {
                    intrinsics: item.k_crop,
                    width: CROP_WIDTH,
                    height: CROP_HEIGHT,
                },
                instances: std::slice::from_ref(&item.instance),
            };
            // The batch never exceeds MAX_BATCH_SIZE (see `new`).
            let _ = items.push(render_item);
        }
        let targets = &mut self.targets[..count];
        #[cfg(feature = "cuda")]
        let rendered = match self.gpu.as_deref_mut() {
            Some(gpu) => gpu.render(&items, targets, &self.options.shading),
            None => self.renderer.render(&items, targets, &self.options.shading),
        };
        #[cfg(not(feature = "cuda"))]
        let rendered = self.renderer.render(&items, targets, &self.options.shading);
        rendered.map_err(|source| Error::Kernel {
            context: "rendering the objects at their current estimates".to_string(),
            source,
        })?;
        for (item, target) in self.targets[..count].iter().enumerate() {
            let rendered = &mut self.input[item * ITEM_LEN + 3 * PLANE..(item + 1) * ITEM_LEN];
            let (red, rest) = rendered.split_at_mut(PLANE);
            let (green, blue) = rest.split_at_mut(PLANE);
            for (p, rgb) in target.rgb().iter().enumerate() {
                red[p] = f32::from(rgb[0]) / 255.0;
                green[p] = f32::from(rgb[1]) / 255.0;
                blue[p] = f32::from(rgb[2]) / 255.0;
            }
        }
        self.timings.render += start.elapsed();

        let start = Instant::now();
        let slot = match stage {
            Stage::Coarse => self.coarse.as_mut(),
            Stage::Refiner => self.refiner.as_mut(),
        };
        let Some(slot) = slot else {
            return Ok(());
        };
        let shape = [count, POSE_INPUT_CHANNELS, CROP_HEIGHT, CROP_WIDTH];
        slot.session
            .run(&self.input[..count * ITEM_LEN], &shape, &mut slot.outputs)?;
        let updates = slot
            .outputs
            .tensors()
            .first()
            .and_then(|t| t.f32s())
            .filter(|u| u.len() == count * POSE_UPDATE_LEN)
            .ok_or_else(|| EngineError::Output {
                tensor: "pose_update".to_string(),
                reason: format!(
                    "the {} network did not write [{count}, {POSE_UPDATE_LEN}] floats",
                    stage.name()
                ),
            })?;
        let elapsed = start.elapsed();
        match stage {
            Stage::Coarse => self.timings.coarse_network += elapsed,
            Stage::Refiner => self.timings.refiner_network += elapsed,
        }

        let start = Instant::now();
        let output_of = |update: &[f32]| {
            let mut output = [0.0f32; POSE_UPDATE_LEN];
            output.copy_from_slice(update);
            output
        };
        #[cfg(feature = "cuda")]
        if let Some(gpu) = self.gpu.as_deref_mut() {
            let triples = self
                .batch
                .iter()
                .zip(updates.chunks_exact(POSE_UPDATE_LEN))
                .map(|(item, update)| {
                    let pose = objects[item.object].camera_from_object;
                    (pose, output_of(update), item.k_crop)
                });
            let results = gpu.updates(triples).map_err(|source| Error::Kernel {
                context: "updating the poses (CUDA)".to_string(),
                source,
            })?;
            for (item, result) in self.batch.iter().zip(results) {
                let accepted = accept_update(&mut objects[item.object], result.clone());
                self.timings.invalid_objects += usize::from(!accepted);
            }
            self.timings.update += start.elapsed();
            return Ok(());
        }
        for (item, update) in self.batch.iter().zip(updates.chunks_exact(POSE_UPDATE_LEN)) {
            let object = &mut objects[item.object];
            let result = apply_update(&object.camera_from_object, &output_of(update), &item.k_crop);
            let accepted = accept_update(object, result);
            self.timings.invalid_objects += usize::from(!accepted);
        }
        self.timings.update += start.elapsed();
        Ok(())
    }
}

/// The renderer's mesh of object `obj_id` (every object has one: `run` checks them first).
fn mesh_index(mesh_of_object: &BTreeMap<u32, usize>, obj_id: u32) -> usize {
    mesh_of_object.get(&obj_id).copied().unwrap_or(0)
}

/// Takes an updated pose if it is finite; otherwise the object keeps its last good pose
/// and leaves the loop. Returns whether the update was taken.
fn accept_update(
    object: &mut ObjectEstimate,
    updated: std::result::Result<Pose, KernelError>,
) -> bool {
    match updated {
        Ok(pose) if pose.translation_m.iter().all(|v| v.is_finite()) => {
            object.camera_from_object = pose;
            true
        }
        _ => {
            object.valid = false;
            false
        }
    }
}

/// A pose network whose every answer is the same update; [`ConstantPoseNetwork::identity`]
/// answers `(1,0,0, 0,1,0, 0,0,1)`, leaving poses where they are. It stands in for the
/// network where everything else is measured (benches, allocation tests) or checked.
#[derive(Debug, Clone, Copy)]
pub struct ConstantPoseNetwork {
    options: ModelOptions,
    update: [f32; POSE_UPDATE_LEN],
}

impl ConstantPoseNetwork {
    /// A session answering `update` for every crop of batches up to `max_batch`.
    pub fn new(max_batch: usize, update: [f32; POSE_UPDATE_LEN]) -> Self {
        Self {
            options: ModelOptions {
                max_batch,
                ..ModelOptions::default()
            },
            update,
        }
    }

    /// The identity update of spec A.3.
    pub fn identity(max_batch: usize) -> Self {
        Self::new(max_batch, [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0])
    }
}

impl Session for ConstantPoseNetwork {
    fn contract(&self) -> Contract {
        Contract::for_role(Role::Refiner, DetectorLayout::Batched)
    }

    fn options(&self) -> ModelOptions {
        self.options
    }

    fn max_detections(&self) -> usize {
        1
    }

    fn run(
        &mut self,
        input: &[f32],
        shape: &[usize],
        outputs: &mut Outputs,
    ) -> std::result::Result<(), EngineError> {
        let batch = check_input(&self.contract(), &self.options, input, shape)?;
        let tensor = outputs
            .tensors_mut()
            .first_mut()
            .ok_or_else(|| EngineError::Output {
                tensor: "pose_update".to_string(),
                reason: "no output buffer".to_string(),
            })?;
        if let OutputData::F32(values) = tensor.prepare(&[batch, POSE_UPDATE_LEN])? {
            for chunk in values[..batch * POSE_UPDATE_LEN].chunks_exact_mut(POSE_UPDATE_LEN) {
                chunk.copy_from_slice(&self.update);
            }
        }
        Ok(())
    }
}

/// A [`ConstantPoseNetwork`] that also keeps a copy of each of the first `keep` input
/// items it is given (`[6, 240, 320]` floats each, in order): to check what the loop feeds
/// a network (tests; the CPU-vs-CUDA comparison of `gpu_timings`).
pub struct RecordingPoseNetwork {
    inner: ConstantPoseNetwork,
    keep: usize,
    inputs: Arc<Mutex<Vec<Vec<f32>>>>,
}

impl RecordingPoseNetwork {
    /// The network, and the list its inputs go to.
    pub fn new(inner: ConstantPoseNetwork, keep: usize) -> (Self, Arc<Mutex<Vec<Vec<f32>>>>) {
        let inputs = Arc::new(Mutex::new(Vec::new()));
        let network = Self {
            inner,
            keep,
            inputs: Arc::clone(&inputs),
        };
        (network, inputs)
    }
}

impl Session for RecordingPoseNetwork {
    fn contract(&self) -> Contract {
        self.inner.contract()
    }

    fn options(&self) -> ModelOptions {
        self.inner.options()
    }

    fn max_detections(&self) -> usize {
        self.inner.max_detections()
    }

    fn run(
        &mut self,
        input: &[f32],
        shape: &[usize],
        outputs: &mut Outputs,
    ) -> std::result::Result<(), EngineError> {
        let mut inputs = self.inputs.lock().unwrap_or_else(PoisonError::into_inner);
        let room = self.keep.saturating_sub(inputs.len());
        inputs.extend(input.chunks_exact(ITEM_LEN).take(room).map(<[f32]>::to_vec));
        drop(inputs);
        self.inner.run(input, shape, outputs)
    }
}
