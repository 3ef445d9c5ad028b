//! `posed predict`: the single-view pipeline over a BOP dataset's test images, written as
//! a BOP19 results CSV that `posed eval` reads.
//!
//! Objects come from one of three sources: a detector network, a BOP 2D-detection JSON
//! file, or a BOP19 results CSV of initial poses (the YCB-Video protocol: PoseCNN poses,
//! refiner only). Detections are filtered as CosyPose filters them (threshold, one
//! instance per class, labels) and get initial poses from their boxes; given poses are
//! taken as they are.

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use posed_engines::{Backend, ModelOptions, Network, Role, Session};

use crate::bop::atomic::check_writable;
use crate::bop::dataset::BopDataset;
use crate::bop::detections::read_detections;
use crate::bop::models::ModelSet;
use crate::bop::results::{read_results, write_results, Estimate};
use crate::bop::targets::read_targets;
use crate::config::EnginesConfig;
use crate::engines::make_backend;
use crate::pipeline::{
    ComputeDevice, DetectionFilter, Detector, ImageView, InitScheme, Iteration, ObjectEstimate,
    PipelineOptions, PoseNetworks, SingleViewPipeline, Stage, StageTimings,
};
use crate::{Error, Result};

/// Where a frame's objects come from.
#[derive(Debug, Clone, PartialEq)]
pub enum ObjectSource {
    /// A detector network (ONNX file with its sidecar).
    Detector(PathBuf),
    /// A BOP 2D-detection JSON file.
    Detections(PathBuf),
    /// A BOP19 results CSV of initial poses.
    InitPoses(PathBuf),
}

/// Everything `posed predict` needs.
#[derive(Debug, Clone)]
pub struct PredictRequest {
    /// BOP dataset folder.
    pub dataset: PathBuf,
    /// Split folder, e.g. `test`.
    pub split: String,
    /// Where objects come from.
    pub source: ObjectSource,
    /// Coarse network.
    pub coarse: Option<PathBuf>,
    /// Refiner network.
    pub refiner: Option<PathBuf>,
    /// Initial poses from boxes.
    pub init: InitScheme,
    /// Iterations, batch size, renderer.
    pub pipeline: PipelineOptions,
    /// Where the loop's geometry runs; CUDA without a driver or device is a warning and
    /// the CPU.
    pub device: ComputeDevice,
    /// Filters of detections (not of given initial poses).
    pub filter: DetectionFilter,
    /// Backend and engine settings.
    pub engines: EnginesConfig,
    /// Every image of the split instead of those of `test_targets_bop19.json`.
    pub all_images: bool,
    /// Stop after this many images.
    pub max_images: Option<usize>,
    /// Results CSV.
    pub out: PathBuf,
    /// Folder for one results CSV per iteration (`coarse-1.csv`, `refiner-1.csv`, ...).
    pub save_iterations: Option<PathBuf>,
}

/// What a run did, for the summary.
#[derive(Debug, Clone, Default)]
pub struct PredictReport {
    /// Images processed.
    pub images: usize,
    /// Images the run was to process (more than `images` when it was stopped).
    pub images_planned: usize,
    /// Objects that entered the pose loop.
    pub objects: usize,
    /// Estimates written.
    pub estimates: usize,
    /// Detections left out by the filter.
    pub filtered_out: usize,
    /// Detections whose category names no object of the dataset.
    pub unknown_objects: usize,
    /// Per-stage time of the pose loop.
    pub stages: StageTimings,
    /// Detector network time.
    pub detector: Duration,
    /// Reading and decoding images.
    pub read: Duration,
    /// The whole run.
    pub wall: Duration,
    /// Files written (results, then per-iteration files).
    pub written: Vec<PathBuf>,
}

/// One image to process.
type ImageKey = (u32, u32);

/// Runs the pipeline over the dataset. `progress(done, total)` is called once everything
/// is loaded (`done` 0), then after each image; when it answers `Break` (a stop signal)
/// the run stops there and writes the results of the images done (`images <
/// images_planned` in the report): hours of a BOP run are not lost to a Ctrl-C.
///
/// # Errors
/// Any input that cannot be read or does not fit (dataset, networks, detections, initial
/// poses naming objects the dataset lacks), a network that fails, a results file that
/// cannot be written. Files are written only once every image is done, or the run stopped.
pub fn predict(
    request: &PredictRequest,
    progress: &mut dyn FnMut(usize, usize) -> ControlFlow<()>,
) -> Result<PredictReport> {
    let started = Instant::now();
    // Outputs are written at the end: find out now, not after the last image, that they
    // cannot be.
    check_writable(&request.out)?;
    if let Some(dir) = &request.save_iterations {
        std::fs::create_dir_all(dir).map_err(|source| Error::Write {
            path: dir.clone(),
            source,
        })?;
        check_writable(&dir.join("refiner-1.csv"))?;
    }
    let dataset = BopDataset::load(&request.dataset, &request.split)?;
    let mut images = image_list(&dataset, request.all_images)?;
    if let Some(max) = request.max_images {
        images.truncate(max);
    }

    let backend = make_backend(&request.engines)?;
    let mut options = request.engines.model_options();
    let (h, w) = (
        dataset.camera.height as usize,
        dataset.camera.width as usize,
    );
    options.max_image_hw = (options.max_image_hw.0.max(h), options.max_image_hw.1.max(w));
    let open = |path: &Path, role: Role| open_session(backend.as_ref(), path, role, options);
    let open_pose = |path: &Path, role: Role| {
        let (session, network) = open(path, role)?;
        let labels = &request.filter.obj_ids;
        if let Some(warning) = uncovered_objects_warning(&network, role, labels, &dataset.models) {
            eprintln!("posed predict: warning: {warning}");
        }
        Ok::<_, Error>(session)
    };
    let networks = PoseNetworks {
        coarse: request
            .coarse
            .as_deref()
            .map(|p| open_pose(p, Role::Coarse))
            .transpose()?,
        refiner: request
            .refiner
            .as_deref()
            .map(|p| open_pose(p, Role::Refiner))
            .transpose()?,
    };
    let (mut pipeline, fallback) = SingleViewPipeline::for_device(
        &dataset.models,
        networks,
        request.pipeline,
        request.device,
        (w, h),
    )?;
    if let Some(reason) = fallback {
        eprintln!("posed predict: {reason}");
    }

    let mut source = match &request.source {
        ObjectSource::Detector(path) => {
            let (session, network) = open(path, Role::Detector)?;
            Source::Detector(Detector::new(session, network.sidecar())?)
        }
        ObjectSource::Detections(path) => Source::Given {
            by_image: load_detections(
                path,
                &pipeline,
                (dataset.camera.width, dataset.camera.height),
            )?,
            poses: false,
        },
        ObjectSource::InitPoses(path) => {
            if request.pipeline.coarse_iterations > 0 {
                return Err(Error::Invalid {
                    what: "coarse iterations with initial poses".to_string(),
                    reason: "CosyPose runs no coarse model from given poses (YCB-Video \
                             protocol: 0 coarse, 2 refiner iterations); set coarse \
                             iterations to 0"
                        .to_string(),
                });
            }
            Source::Given {
                by_image: load_init_poses(path, &pipeline)?,
                poses: true,
            }
        }
    };

    let mut report = PredictReport::default();
    let mut estimates = Vec::new();
    let mut per_iteration: BTreeMap<(Stage, usize), Vec<Estimate>> = BTreeMap::new();
    let mut objects = Vec::new();
    let mut stop = progress(0, images.len()).is_break();
    for (done, &(scene_id, im_id)) in images.iter().enumerate() {
        if stop {
            break;
        }
        let read_start = Instant::now();
        let camera = dataset
            .image(scene_id, im_id)
            .map(|a| a.camera.intrinsics)
            .ok_or_else(|| Error::Dataset {
                path: dataset.root.clone(),
                detail: format!("scene {scene_id} has no camera for image {im_id}"),
            })?;
        let rgb = dataset.read_rgb(scene_id, im_id)?;
        report.read += read_start.elapsed();

        let frame_start = Instant::now();
        let image = ImageView {
            rgb: rgb.pixels.as_flattened(),
            width: rgb.width as usize,
            height: rgb.height as usize,
            intrinsics: camera,
            mapped: None,
        };
        objects.clear();
        let from_boxes = match &mut source {
            Source::Detector(detector) => {
                let start = Instant::now();
                report.unknown_objects += detector.detect(&image, &mut objects)?;
                report.detector += start.elapsed();
                let detected = objects.len();
                objects.retain(|o| pipeline.has_object(o.obj_id));
                report.unknown_objects += detected - objects.len();
                let before = objects.len();
                request.filter.apply(&mut objects);
                report.filtered_out += before - objects.len();
                true
            }
            Source::Given { by_image, poses } => {
                objects.extend_from_slice(by_image.get(&(scene_id, im_id)).map_or(&[][..], |v| v));
                // Initial poses are filtered too when asked (by default the filter keeps
                // everything): a flag that silently did nothing would mislead.
                let before = objects.len();
                request.filter.apply(&mut objects);
                report.filtered_out += before - objects.len();
                !*poses
            }
        };
        if from_boxes {
            pipeline.init_from_boxes(&camera, request.init, &mut objects)?;
        } else {
            pipeline.boxes_from_poses(&camera, &mut objects)?;
        }
        let save = request.save_iterations.is_some();
        pipeline.run(
            &image,
            &mut objects,
            &mut |iteration: Iteration, current| {
                if save {
                    let key = (iteration.stage, iteration.number);
                    let rows = per_iteration.entry(key).or_default();
                    rows.extend(rows_of(scene_id, im_id, current, -1.0));
                }
            },
        )?;
        let time_s = frame_start.elapsed().as_secs_f64();
        estimates.extend(rows_of(scene_id, im_id, &objects, time_s));
        report.objects += objects.len();
        report.images += 1;
        report.stages.accumulate(&pipeline.take_timings());
        stop = progress(done + 1, images.len()).is_break();
    }
    report.images_planned = images.len();

    report.estimates = estimates.len();
    write_results(&request.out, &estimates)?;
    report.written.push(request.out.clone());
    if let Some(dir) = &request.save_iterations {
        std::fs::create_dir_all(dir).map_err(|source| Error::Write {
            path: dir.clone(),
            source,
        })?;
        for ((stage, number), rows) in &per_iteration {
            let path = dir.join(format!("{}-{number}.csv", stage.name()));
            write_results(&path, rows)?;
            report.written.push(path);
        }
    }
    report.wall = started.elapsed();
    Ok(report)
}

enum Source {
    Detector(Detector),
    Given {
        by_image: BTreeMap<ImageKey, Vec<ObjectEstimate>>,
        /// True for initial poses, false for detections (boxes).
        poses: bool,
    },
}

/// The valid objects of one image as results rows.
fn rows_of<'a>(
    scene_id: u32,
    im_id: u32,
    objects: &'a [ObjectEstimate],
    time_s: f64,
) -> impl Iterator<Item = Estimate> + 'a {
    objects.iter().filter(|o| o.valid).map(move |o| Estimate {
        scene_id,
        im_id,
        obj_id: o.obj_id,
        score: o.score,
        camera_from_object: o.camera_from_object,
        time_s,
    })
}

/// A warning when a pose network's sidecar does not list some of the objects to
/// estimate (`labels`, else every object of `models`): the network was never trained on
/// them, and its poses for them mean nothing. None for a detector, when every object is
/// listed, or when a sidecar label is not a BOP object name (`obj_000007`), since
/// coverage cannot be told then.
pub fn uncovered_objects_warning(
    network: &Network,
    role: Role,
    labels: &[u32],
    models: &ModelSet,
) -> Option<String> {
    if role == Role::Detector {
        return None;
    }
    let known: Vec<u32> = network
        .sidecar()
        .labels
        .iter()
        .map(|label| crate::pipeline::obj_id_of_label(label))
        .collect::<Option<_>>()?;
    let estimated: Vec<u32> = if labels.is_empty() {
        models.objects.keys().copied().collect()
    } else {
        labels.to_vec()
    };
    let unknown: Vec<String> = estimated
        .iter()
        .filter(|obj_id| !known.contains(obj_id))
        .map(u32::to_string)
        .collect();
    if unknown.is_empty() {
        return None;
    }
    let listed = &unknown[..unknown.len().min(16)];
    Some(format!(
        "the {role} network {} was trained for {} object(s), not for object(s) {}{}: its \
         poses for them mean nothing (restrict the objects with --labels or \
         pipeline.labels)",
        network.path().display(),
        known.len(),
        listed.join(", "),
        if unknown.len() > listed.len() {
            ", ..."
        } else {
            ""
        }
    ))
}

/// Opens a network for `role` and makes a session.
pub(crate) fn open_session(
    backend: &dyn Backend,
    path: &Path,
    role: Role,
    options: ModelOptions,
) -> Result<(Box<dyn Session>, Network)> {
    let network = Network::open(path)?;
    let found = network.sidecar().role;
    if found != role {
        return Err(Error::Invalid {
            what: path.display().to_string(),
            reason: format!("expected a {role} network, its sidecar says {found}"),
        });
    }
    let model = backend.load(network.clone(), options)?;
    Ok((model.new_session()?, network))
}

/// The images to process: those of the targets file (in its order, each once) unless
/// `all_images` or the dataset has none; otherwise every image of every scene.
pub(crate) fn image_list(dataset: &BopDataset, all_images: bool) -> Result<Vec<ImageKey>> {
    let targets_path = dataset.root.join("test_targets_bop19.json");
    if !all_images && targets_path.exists() {
        let mut images: Vec<ImageKey> = Vec::new();
        for target in read_targets(&targets_path)? {
            let key = (target.scene_id, target.im_id);
            if dataset.image(key.0, key.1).is_none() {
                return Err(Error::Dataset {
                    path: targets_path,
                    detail: format!(
                        "target scene {} image {} is not in the {} split",
                        key.0,
                        key.1,
                        dataset.root.display()
                    ),
                });
            }
            if !images.contains(&key) {
                images.push(key);
            }
        }
        return Ok(images);
    }
    Ok(dataset
        .scenes
        .iter()
        .flat_map(|(scene_id, scene)| scene.images.keys().map(move |im_id| (*scene_id, *im_id)))
        .collect())
}

fn load_detections(
    path: &Path,
    pipeline: &SingleViewPipeline,
    image_size: (u32, u32),
) -> Result<BTreeMap<ImageKey, Vec<ObjectEstimate>>> {
    let mut by_image: BTreeMap<ImageKey, Vec<ObjectEstimate>> = BTreeMap::new();
    for (index, detection) in read_detections(path)?.into_iter().enumerate() {
        if !pipeline.has_object(detection.obj_id) {
            return Err(Error::Json {
                path: path.to_path_buf(),
                detail: format!(
                    "entry {index}: category_id {} is not an object of the dataset's models",
                    detection.obj_id
                ),
            });
        }
        // The initial pose and the crop come from the box: one with no area, or none of
        // it in the image, gives no pose to refine.
        let [x1, y1, x2, y2] = detection.bbox_xyxy();
        let (width, height) = (f64::from(image_size.0), f64::from(image_size.1));
        if !(x2 > x1 && y2 > y1 && x1 < width && y1 < height && x2 > 0.0 && y2 > 0.0) {
            return Err(Error::Json {
                path: path.to_path_buf(),
                detail: format!(
                    "entry {index}: bbox {:?} has no area inside the {width} x {height} image",
                    detection.bbox_xywh
                ),
            });
        }
        by_image
            .entry((detection.scene_id, detection.im_id))
            .or_default()
            .push(ObjectEstimate::from_box(
                detection.obj_id,
                detection.score,
                detection.bbox_xyxy(),
            ));
    }
    Ok(by_image)
}

fn load_init_poses(
    path: &Path,
    pipeline: &SingleViewPipeline,
) -> Result<BTreeMap<ImageKey, Vec<ObjectEstimate>>> {
    let mut by_image: BTreeMap<ImageKey, Vec<ObjectEstimate>> = BTreeMap::new();
    for row in read_results(path)? {
        let e = row.estimate;
        if !pipeline.has_object(e.obj_id) {
            return Err(Error::Csv {
                path: path.to_path_buf(),
                line: row.line,
                detail: format!(
                    "obj_id {} is not an object of the dataset's models",
                    e.obj_id
                ),
            });
        }
        // The crop projects the object: it must be in front of the camera.
        let z_m = e.camera_from_object.translation_m.z;
        if z_m <= 0.0 {
            return Err(Error::Csv {
                path: path.to_path_buf(),
                line: row.line,
                detail: format!(
                    "the initial pose is at z = {} mm, not in front of the camera",
                    z_m * 1e3
                ),
            });
        }
        by_image
            .entry((e.scene_id, e.im_id))
            .or_default()
            .push(ObjectEstimate::from_pose(
                e.obj_id,
                e.score,
                e.camera_from_object,
            ));
    }
    Ok(by_image)
}
