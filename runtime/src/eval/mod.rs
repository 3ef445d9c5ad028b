//! Evaluation of pose estimates on a BOP dataset with the metrics CosyPose and the BOP
//! toolkit report (COSYPOSE_SPEC.md B.1 and B.2):
//!
//! - CosyPose's meters: AUC of ADD, ADD-S and ADD(-S) (YCB-Video VOCap, 0 to 0.1 m; top-n
//!   estimates per image and object, matched to ground truth of the same object with no
//!   error threshold, "ntop=1_matching=CLASS"), and mAP@ADD-S<0.1d (every estimate,
//!   matched when ADD-S <= 0.1 d, "ntop=ALL_matching=BOP").
//! - BOP19: average recall of VSD (10 taus x 10 thresholds 0.05..0.5), MSSD
//!   (thresholds 0.05..0.5 d) and MSPD (5..50 px at 640 px width), with BOP's targets,
//!   top-`inst_count` estimates and strict thresholds; the BOP19 AR is their mean.
//!   VSD renders the objects and reads the test depth images; `EvalOptions::vsd` turns it
//!   off.
//!
//! Which ground truth counts: without targets every instance is valid for CosyPose's
//! meters and n_top = 1 (the YCB-Video protocol); with targets, the `inst_count` most
//! visible instances of each target are valid and n_top = `inst_count` (CosyPose's BOP19
//! setting). BOP19 recalls always use targets.

#[cfg(feature = "cuda")]
mod gpu;
mod report;
mod vsd;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use posed_kernels::metrics::auc::auc_voc;
use posed_kernels::metrics::average_precision::average_precision;
use posed_kernels::metrics::matching::{match_greedy, Admit, MatchingRule};
use posed_kernels::metrics::vsd::BOP19_VSD_CORRECT_THRESHOLDS;
use posed_kernels::metrics::PoseErrorModel;
use posed_kernels::symmetry::{bop_symmetry_transforms, BOP_MAX_SYM_DISC_STEP};
use rayon::prelude::*;

pub use report::{ObjectReport, Report};

use crate::bop::dataset::{BopDataset, ImageAnnotations};
use crate::bop::results::EstimateRow;
use crate::bop::targets::Target;
use crate::pipeline::ComputeDevice;
use crate::{Error, Result};

/// Which BOP19 targets were used, for the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetSource {
    /// A targets file given by the user or found in the dataset.
    File(std::path::PathBuf),
    /// No targets file: every annotated instance is a target.
    AllInstances,
}

/// What to evaluate and how.
#[derive(Debug, Clone)]
pub struct EvalOptions {
    /// Targets for CosyPose's meters (`None`: all ground truth, n_top = 1).
    pub cosypose_targets: Option<Vec<Target>>,
    /// Targets for the BOP19 recalls and where they came from.
    pub bop_targets: (Vec<Target>, TargetSource),
    /// Objects whose symmetries ADD(-S) ignores (CosyPose's YCB-V "bop-compat" models
    /// drop them for 002_master_chef_can and 040_large_marker).
    pub symmetric_as_asymmetric: BTreeSet<u32>,
    /// Show a progress bar on stderr (hidden anyway when stderr is not a terminal).
    pub progress: bool,
    /// Compute VSD, hence AR_VSD and the BOP19 AR: renders the object in every needed
    /// estimated and ground-truth pose and reads the test depth images. Off, both are
    /// `None`.
    pub vsd: bool,
    /// Where ADD and ADD-S are computed: on the CPU (exact nearest neighbours through a
    /// k-d tree), or on the first CUDA device (brute-force nearest neighbours; without a
    /// CUDA driver or device, a warning and the CPU).
    pub device: ComputeDevice,
}

/// Correctness thresholds of BOP19 MSSD, as fractions of the object diameter.
pub fn bop_mssd_thresholds() -> [f64; 10] {
    // np.arange(0.05, 0.51, 0.05): start + k * step, as numpy computes it.
    std::array::from_fn(|k| 0.05 + k as f64 * 0.05)
}

/// Correctness thresholds of BOP19 MSPD, pixels at a 640-pixel-wide image.
pub fn bop_mspd_thresholds_px() -> [f64; 10] {
    std::array::from_fn(|k| 5.0 + k as f64 * 5.0)
}

/// Threshold of mAP@ADD-S<0.1d, as a fraction of the diameter.
const MAP_THRESHOLD: f64 = 0.1;

/// Every target of a dataset when no targets file exists: each (image, object) with its
/// instance count.
pub fn all_instance_targets(dataset: &BopDataset) -> Vec<Target> {
    let mut targets = Vec::new();
    for (scene_id, scene) in &dataset.scenes {
        for (im_id, image) in &scene.images {
            let mut counts: BTreeMap<u32, u32> = BTreeMap::new();
            for instance in &image.gt {
                *counts.entry(instance.obj_id).or_default() += 1;
            }
            targets.extend(counts.into_iter().map(|(obj_id, inst_count)| Target {
                scene_id: *scene_id,
                im_id: *im_id,
                obj_id,
                inst_count,
            }));
        }
    }
    targets
}

/// Errors of one (estimate, ground truth) pair, metres and pixels; NaN where a metric was
/// not needed for that pair.
#[derive(Debug, Clone, Copy)]
struct PairErrors {
    add: f64,
    adds: f64,
    mssd: f64,
    mspd: f64,
    /// VSD, one per BOP19 tau.
    vsd: [f64; vsd::N_VSD_TAUS],
}

/// All estimates and ground truth of one object in one image.
struct Group<'a> {
    scene_id: u32,
    im_id: u32,
    obj_id: u32,
    image: &'a ImageAnnotations,
    /// Indices into `image.gt` of this object's instances.
    gt: Vec<usize>,
    /// Indices into the estimate rows, by decreasing score (stable).
    estimates: Vec<usize>,
    /// Valid ground truth (same order as `gt`) and n_top for CosyPose's meters.
    cosypose_valid: Vec<bool>,
    cosypose_n_top: usize,
    /// Valid ground truth and instance count for BOP19 (0 when not a target).
    bop_valid: Vec<bool>,
    bop_inst_count: usize,
    /// Row-major `estimates.len() x gt.len()`.
    errors: Vec<PairErrors>,
}

impl Group<'_> {
    fn error(&self, e: usize, g: usize) -> &PairErrors {
        &self.errors[e * self.gt.len() + g]
    }

    fn error_matrix(&self, n_est: usize, pick: impl Fn(&PairErrors) -> f64) -> Vec<f64> {
        self.errors[..n_est * self.gt.len()]
            .iter()
            .map(pick)
            .collect()
    }
}

/// Evaluates estimates against a dataset. Rows naming an object or image the dataset does
/// not have are errors (with their line), never dropped.
/// `results_path` names the results file in errors.
pub fn evaluate(
    dataset: &BopDataset,
    results_path: &Path,
    rows: &[EstimateRow],
    options: &EvalOptions,
) -> Result<Report> {
    validate_rows(dataset, results_path, rows, options)?;

    let mut groups = build_groups(dataset, rows, options)?;
    let models = prepare_models(dataset, &groups)?;
    let mut device_note = None;
    #[cfg(feature = "cuda")]
    let cuda = match options.device {
        ComputeDevice::Cpu => None,
        ComputeDevice::Cuda => match gpu::open_device() {
            Ok(device) => Some(device),
            Err(reason) => {
                eprintln!(
                    "posed eval: no CUDA device ({reason}); computing ADD / ADD-S on the CPU"
                );
                device_note = Some(format!(
                    "--device cuda: no CUDA device ({reason}); ADD / ADD-S ran on the CPU"
                ));
                None
            }
        },
    };
    #[cfg(not(feature = "cuda"))]
    if options.device == ComputeDevice::Cuda {
        eprintln!("posed eval: this build has no CUDA support; computing ADD / ADD-S on the CPU");
        device_note =
            Some("--device cuda: built without CUDA; ADD / ADD-S ran on the CPU".to_string());
    }
    #[cfg(feature = "cuda")]
    let add_adds_on_cpu = cuda.is_none();
    #[cfg(not(feature = "cuda"))]
    let add_adds_on_cpu = true;
    compute_pair_errors(
        &mut groups,
        rows,
        &models,
        add_adds_on_cpu,
        options.progress,
    );
    #[cfg(feature = "cuda")]
    if let Some(device) = &cuda {
        gpu::fill_add_adds(device, &mut groups, rows, &models)?;
        device_note = Some(format!(
            "ADD / ADD-S computed on CUDA device {} (compute capability {}.{})",
            device.name(),
            device.compute_capability().0,
            device.compute_capability().1
        ));
    }
    if options.vsd {
        vsd::compute_vsd_errors(dataset, &mut groups, rows, options.progress)?;
    }

    let mut report = Report::new(rows.len());
    for row in rows {
        report.object(row.estimate.obj_id).n_predictions += 1;
    }
    let is_symmetric = |obj_id: u32| {
        !options.symmetric_as_asymmetric.contains(&obj_id)
            && dataset
                .models
                .get(obj_id)
                .is_some_and(|m| m.info.symmetries.is_symmetric())
    };
    cosypose_auc(&groups, rows, &is_symmetric, &mut report);
    cosypose_map(&groups, &models, rows, &mut report);
    bop_recalls(dataset, &groups, &models, rows, options.vsd, &mut report);
    report.notes.extend(device_note);
    report.finish(options);
    Ok(report)
}

/// How far the times of one image's estimates may differ (the BOP toolkit's
/// `check_consistent_timing`).
const TIME_TOLERANCE_S: f64 = 1e-3;

/// Every target must name an image of the split and an object annotated there at least
/// `inst_count` times, once: a target that matches nothing would silently change the
/// recall's denominator.
fn validate_targets(dataset: &BopDataset, path: &Path, targets: &[Target]) -> Result<()> {
    let mut seen = BTreeSet::new();
    for (index, t) in targets.iter().enumerate() {
        let entry = format!(
            "target {index} (scene {}, image {}, object {})",
            t.scene_id, t.im_id, t.obj_id
        );
        let error = |detail: String| Error::Dataset {
            path: path.to_path_buf(),
            detail: format!("{entry}: {detail}"),
        };
        let Some(image) = dataset.image(t.scene_id, t.im_id) else {
            return Err(error(format!(
                "the image is not in the dataset's split ({})",
                dataset.root.display()
            )));
        };
        let annotated = image.gt.iter().filter(|g| g.obj_id == t.obj_id).count();
        if t.inst_count == 0 || t.inst_count as usize > annotated {
            return Err(error(format!(
                "inst_count {} but the image annotates {annotated} instance(s) of the object",
                t.inst_count
            )));
        }
        if !seen.insert((t.scene_id, t.im_id, t.obj_id)) {
            return Err(error("listed a second time".to_owned()));
        }
    }
    Ok(())
}

fn validate_rows(
    dataset: &BopDataset,
    results_path: &Path,
    rows: &[EstimateRow],
    options: &EvalOptions,
) -> Result<()> {
    let row_error = |row: &EstimateRow, detail: String| Error::Csv {
        path: results_path.to_path_buf(),
        line: row.line,
        detail,
    };
    for obj_id in &options.symmetric_as_asymmetric {
        if dataset.models.get(*obj_id).is_none() {
            return Err(Error::Dataset {
                path: dataset.root.join("models/models_info.json"),
                detail: format!("--symmetric-as-asymmetric names obj_id {obj_id}, which the dataset does not have"),
            });
        }
    }
    if let (targets, TargetSource::File(path)) = &options.bop_targets {
        validate_targets(dataset, path, targets)?;
    }
    // The BOP toolkit refuses results whose estimates of one image disagree on its time
    // by more than 1 ms (the time is per image); so does posed, naming both lines.
    let mut image_time: BTreeMap<(u32, u32), (f64, u64)> = BTreeMap::new();
    for row in rows {
        let e = &row.estimate;
        let (time, line) = *image_time
            .entry((e.scene_id, e.im_id))
            .or_insert((e.time_s, row.line));
        if (e.time_s - time).abs() > TIME_TOLERANCE_S {
            return Err(row_error(
                row,
                format!(
                    "time {} for scene {} image {}, where line {line} says {time}: every \
                     estimate of an image must carry the image's time",
                    e.time_s, e.scene_id, e.im_id
                ),
            ));
        }
    }
    for row in rows {
        let e = &row.estimate;
        if dataset.models.get(e.obj_id).is_none() {
            let known: Vec<String> = dataset.models.objects.keys().map(u32::to_string).collect();
            return Err(row_error(
                row,
                format!(
                    "obj_id {} is not an object of the dataset (models_info.json has {})",
                    e.obj_id,
                    known.join(", ")
                ),
            ));
        }
        if dataset.image(e.scene_id, e.im_id).is_none() {
            return Err(row_error(
                row,
                format!(
                    "scene {} image {} is not in the dataset (no such image in {})",
                    e.scene_id,
                    e.im_id,
                    dataset.root.join("test").display()
                ),
            ));
        }
    }
    Ok(())
}

fn build_groups<'a>(
    dataset: &'a BopDataset,
    rows: &[EstimateRow],
    options: &EvalOptions,
) -> Result<Vec<Group<'a>>> {
    let mut by_key: BTreeMap<(u32, u32, u32), Group<'a>> = BTreeMap::new();
    for (scene_id, scene) in &dataset.scenes {
        for (im_id, image) in &scene.images {
            for (gt_idx, instance) in image.gt.iter().enumerate() {
                group_entry(&mut by_key, *scene_id, *im_id, instance.obj_id, image)
                    .gt
                    .push(gt_idx);
            }
        }
    }
    for (index, row) in rows.iter().enumerate() {
        let e = &row.estimate;
        // validate_rows guarantees the image exists.
        if let Some(image) = dataset.image(e.scene_id, e.im_id) {
            group_entry(&mut by_key, e.scene_id, e.im_id, e.obj_id, image)
                .estimates
                .push(index);
        }
    }
    let cosypose_targets = options.cosypose_targets.as_ref().map(|t| target_counts(t));
    let bop_targets = target_counts(&options.bop_targets.0);
    for ((scene_id, im_id, obj_id), group) in by_key.iter_mut() {
        let key = (*scene_id, *im_id, *obj_id);
        group
            .estimates
            .sort_by(|&a, &b| rows[b].estimate.score.total_cmp(&rows[a].estimate.score));
        let (valid, n_top) = match &cosypose_targets {
            None => (vec![true; group.gt.len()], 1),
            Some(counts) => {
                let count = counts.get(&key).copied().unwrap_or(0);
                (most_visible(dataset, group, count)?, count)
            }
        };
        group.cosypose_valid = valid;
        group.cosypose_n_top = n_top;
        let count = bop_targets.get(&key).copied().unwrap_or(0);
        group.bop_valid = most_visible(dataset, group, count)?;
        group.bop_inst_count = count;
    }
    Ok(by_key.into_values().collect())
}

fn group_entry<'m, 'a>(
    by_key: &'m mut BTreeMap<(u32, u32, u32), Group<'a>>,
    scene_id: u32,
    im_id: u32,
    obj_id: u32,
    image: &'a ImageAnnotations,
) -> &'m mut Group<'a> {
    by_key
        .entry((scene_id, im_id, obj_id))
        .or_insert_with(|| Group {
            scene_id,
            im_id,
            obj_id,
            image,
            gt: Vec::new(),
            estimates: Vec::new(),
            cosypose_valid: Vec::new(),
            cosypose_n_top: 0,
            bop_valid: Vec::new(),
            bop_inst_count: 0,
            errors: Vec::new(),
        })
}

fn target_counts(targets: &[Target]) -> BTreeMap<(u32, u32, u32), usize> {
    let mut counts = BTreeMap::new();
    for t in targets {
        *counts.entry((t.scene_id, t.im_id, t.obj_id)).or_insert(0) += t.inst_count as usize;
    }
    counts
}

/// BOP's rule for valid ground truth under targets: the `count` most visible instances
/// (by `visib_fract`, stable) of the object in the image.
fn most_visible(dataset: &BopDataset, group: &Group<'_>, count: usize) -> Result<Vec<bool>> {
    let mut valid = vec![false; group.gt.len()];
    if count == 0 {
        return Ok(valid);
    }
    if count >= group.gt.len() {
        valid.fill(true);
        return Ok(valid);
    }
    let info = group.image.gt_info.as_ref().ok_or_else(|| Error::Dataset {
        path: dataset
            .root
            .join(format!("test/{:06}/scene_gt_info.json", group.scene_id)),
        detail: format!(
            "missing: image {} has more instances of obj_id {} than its target counts, and choosing the most visible needs visib_fract",
            group.im_id, group.obj_id
        ),
    })?;
    let mut order: Vec<usize> = (0..group.gt.len()).collect();
    order.sort_by(|&a, &b| {
        info[group.gt[b]]
            .visib_fract
            .total_cmp(&info[group.gt[a]].visib_fract)
    });
    for &i in order.iter().take(count) {
        valid[i] = true;
    }
    Ok(valid)
}

fn prepare_models(
    dataset: &BopDataset,
    groups: &[Group<'_>],
) -> Result<BTreeMap<u32, PoseErrorModel>> {
    let obj_ids: BTreeSet<u32> = groups.iter().map(|g| g.obj_id).collect();
    obj_ids
        .into_par_iter()
        .map(|obj_id| {
            let model = dataset.models.get(obj_id).ok_or_else(|| Error::Dataset {
                path: dataset.root.join("models/models_info.json"),
                detail: format!("obj_id {obj_id} is missing"),
            })?;
            let context = || model.mesh_path.display().to_string();
            let symmetries = bop_symmetry_transforms(&model.info.symmetries, BOP_MAX_SYM_DISC_STEP)
                .map_err(|source| Error::Kernel {
                    context: context(),
                    source,
                })?;
            let prepared = PoseErrorModel::new(
                model.mesh.positions.clone(),
                model.info.diameter_m,
                symmetries,
            )
            .map_err(|source| Error::Kernel {
                context: context(),
                source,
            })?;
            Ok((obj_id, prepared))
        })
        .collect()
}

fn compute_pair_errors(
    groups: &mut [Group<'_>],
    rows: &[EstimateRow],
    models: &BTreeMap<u32, PoseErrorModel>,
    add_adds_on_cpu: bool,
    show_progress: bool,
) {
    let n_pairs: usize = groups.iter().map(|g| g.estimates.len() * g.gt.len()).sum();
    let progress = if show_progress {
        indicatif::ProgressBar::new(n_pairs as u64)
    } else {
        indicatif::ProgressBar::hidden()
    };
    progress.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg} {bar:40} {pos}/{len} pairs, {per_sec}, eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    progress.set_message("pose errors");
    groups.par_iter_mut().for_each(|group| {
        let Some(model) = models.get(&group.obj_id) else {
            return;
        };
        let n_gt = group.gt.len();
        let mut errors = Vec::with_capacity(group.estimates.len() * n_gt);
        for (rank, &row) in group.estimates.iter().enumerate() {
            let est = &rows[row].estimate.camera_from_object;
            for &gt_idx in &group.gt {
                let gt = &group.image.gt[gt_idx].camera_from_object;
                let needs_bop = rank < group.bop_inst_count;
                errors.push(PairErrors {
                    add: if add_adds_on_cpu && rank < group.cosypose_n_top {
                        model.add(gt, est)
                    } else {
                        f64::NAN
                    },
                    adds: if add_adds_on_cpu {
                        model.adds(gt, est)
                    } else {
                        f64::NAN
                    },
                    mssd: if needs_bop {
                        model.mssd(gt, est)
                    } else {
                        f64::NAN
                    },
                    mspd: if needs_bop {
                        model.mspd(&group.image.camera.intrinsics, gt, est)
                    } else {
                        f64::NAN
                    },
                    vsd: [f64::NAN; vsd::N_VSD_TAUS],
                });
                progress.inc(1);
            }
        }
        group.errors = errors;
    });
    progress.finish_and_clear();
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum AucKind {
    Add,
    Adds,
    AddOrAdds,
}

/// CosyPose's "ntop=n, matching=CLASS" meters: per object, the VOCap AUC over every
/// valid ground-truth instance (misses count as infinite error).
fn cosypose_auc(
    groups: &[Group<'_>],
    rows: &[EstimateRow],
    is_symmetric: &dyn Fn(u32) -> bool,
    report: &mut Report,
) {
    for kind in [AucKind::Add, AucKind::Adds, AucKind::AddOrAdds] {
        let mut per_object: BTreeMap<u32, Vec<f64>> = BTreeMap::new();
        for group in groups {
            let symmetric = is_symmetric(group.obj_id);
            let pick = |e: &PairErrors| match kind {
                AucKind::Add => e.add,
                AucKind::Adds => e.adds,
                AucKind::AddOrAdds if symmetric => e.adds,
                AucKind::AddOrAdds => e.add,
            };
            let n_est = group.estimates.len().min(group.cosypose_n_top);
            let scores: Vec<f64> = group.estimates[..n_est]
                .iter()
                .map(|&r| rows[r].estimate.score)
                .collect();
            let errors = group.error_matrix(n_est, pick);
            let matches = match_greedy(
                &scores,
                &errors,
                &group.cosypose_valid,
                MatchingRule::Class.admit(f64::INFINITY),
            );
            let mut gt_error = vec![f64::INFINITY; group.gt.len()];
            for (e, matched) in matches.iter().enumerate() {
                if let Some(g) = *matched {
                    gt_error[g] = pick(group.error(e, g));
                }
            }
            let object_errors = per_object.entry(group.obj_id).or_default();
            for (g, valid) in group.cosypose_valid.iter().enumerate() {
                if *valid {
                    object_errors.push(gt_error[g]);
                }
            }
        }
        for (obj_id, errors) in per_object {
            if errors.is_empty() {
                continue;
            }
            let object = report.object(obj_id);
            object.n_gt = errors.len();
            let auc = auc_voc(&errors);
            match kind {
                AucKind::Add => object.auc_add = auc,
                AucKind::Adds => object.auc_adds = auc,
                AucKind::AddOrAdds => object.auc_add_or_adds = auc,
            }
        }
    }
}

/// CosyPose's "ntop=ALL, matching=BOP" ADD-S meter: average precision per object, scaled
/// by recall (#TP / #GT), averaged over objects with at least one true positive.
fn cosypose_map(
    groups: &[Group<'_>],
    models: &BTreeMap<u32, PoseErrorModel>,
    rows: &[EstimateRow],
    report: &mut Report,
) {
    struct Label {
        scores: Vec<f64>,
        positive: Vec<bool>,
        n_gt: usize,
    }
    let mut labels: BTreeMap<u32, Label> = BTreeMap::new();
    for group in groups {
        let Some(model) = models.get(&group.obj_id) else {
            continue;
        };
        let threshold_m = MAP_THRESHOLD * model.diameter_m();
        let admit = MatchingRule::Bop.admit(model.diameter_m());
        let n_est = group.estimates.len();
        let scores: Vec<f64> = group
            .estimates
            .iter()
            .map(|&r| rows[r].estimate.score)
            .collect();
        let errors = group.error_matrix(n_est, |e| e.adds);
        let matches = match_greedy(&scores, &errors, &group.cosypose_valid, admit);
        let label = labels.entry(group.obj_id).or_insert_with(|| Label {
            scores: Vec::new(),
            positive: Vec::new(),
            n_gt: 0,
        });
        for (e, matched) in matches.iter().enumerate() {
            label.scores.push(scores[e]);
            label
                .positive
                .push(matched.is_some_and(|g| group.error(e, g).adds < threshold_m));
        }
        let n_valid = group.cosypose_valid.iter().filter(|v| **v).count();
        label.n_gt += n_valid.min(group.cosypose_n_top);
    }
    for (obj_id, label) in labels {
        let n_tp = label.positive.iter().filter(|p| **p).count();
        let ap = if n_tp == 0 || label.n_gt == 0 {
            None
        } else {
            average_precision(&label.scores, &label.positive)
                .map(|ap| ap * n_tp as f64 / label.n_gt as f64)
        };
        report.object(obj_id).ap_adds_01d = ap;
    }
}

/// True positives of one object per BOP19 threshold (and tau), and its number of targets.
#[derive(Debug, Clone, Copy, Default)]
struct BopCounts {
    /// `[tau][threshold]`.
    vsd: [[usize; 10]; vsd::N_VSD_TAUS],
    mssd: [usize; 10],
    mspd: [usize; 10],
    n_targets: usize,
}

impl BopCounts {
    fn add(&mut self, other: &BopCounts) {
        for (a, b) in self
            .vsd
            .iter_mut()
            .flatten()
            .zip(other.vsd.iter().flatten())
        {
            *a += b;
        }
        for (a, b) in self.mssd.iter_mut().zip(&other.mssd) {
            *a += b;
        }
        for (a, b) in self.mspd.iter_mut().zip(&other.mspd) {
            *a += b;
        }
        self.n_targets += other.n_targets;
    }

    /// AR_VSD, AR_MSSD, AR_MSPD and their mean (the BOP19 AR); VSD and AR are `None`
    /// when VSD was not computed.
    fn recalls(&self, with_vsd: bool) -> [Option<f64>; 4] {
        let vsd = if with_vsd {
            average_recall(self.vsd.as_flattened(), self.n_targets)
        } else {
            None
        };
        let mssd = average_recall(&self.mssd, self.n_targets);
        let mspd = average_recall(&self.mspd, self.n_targets);
        let ar = match (vsd, mssd, mspd) {
            (Some(vsd), Some(mssd), Some(mspd)) => Some((vsd + mssd + mspd) / 3.0),
            _ => None,
        };
        [vsd, mssd, mspd, ar]
    }
}

/// BOP19 average recalls: VSD (when computed), MSSD, MSPD and the BOP19 AR.
///
/// As `eval_bop19_pose.py` does: for each error (and each VSD tau) and each correctness
/// threshold, the toolkit's matching and a recall pooled over all targets; the average
/// recall is the mean of those recalls (100 for VSD, 10 for MSSD and MSPD), and the AR
/// the mean of the three.
fn bop_recalls(
    dataset: &BopDataset,
    groups: &[Group<'_>],
    models: &BTreeMap<u32, PoseErrorModel>,
    rows: &[EstimateRow],
    with_vsd: bool,
    report: &mut Report,
) {
    let width_scale = 640.0 / f64::from(dataset.camera.width);
    let mssd_thresholds = bop_mssd_thresholds();
    let mspd_thresholds = bop_mspd_thresholds_px();
    let mut counts: BTreeMap<u32, BopCounts> = BTreeMap::new();
    for group in groups.iter().filter(|g| g.bop_inst_count > 0) {
        let Some(model) = models.get(&group.obj_id) else {
            continue;
        };
        let entry = counts.entry(group.obj_id).or_default();
        entry.n_targets += group.bop_valid.iter().filter(|v| **v).count();
        let n_est = group.estimates.len().min(group.bop_inst_count);
        let scores: Vec<f64> = group.estimates[..n_est]
            .iter()
            .map(|&r| rows[r].estimate.score)
            .collect();
        let mssd = group.error_matrix(n_est, |e| e.mssd);
        let mspd = group.error_matrix(n_est, |e| e.mspd * width_scale);
        for (k, th) in mssd_thresholds.iter().enumerate() {
            let matches = match_greedy(
                &scores,
                &mssd,
                &group.bop_valid,
                Admit::Below(th * model.diameter_m()),
            );
            entry.mssd[k] += matches.iter().flatten().count();
        }
        for (k, th) in mspd_thresholds.iter().enumerate() {
            let matches = match_greedy(&scores, &mspd, &group.bop_valid, Admit::Below(*th));
            entry.mspd[k] += matches.iter().flatten().count();
        }
        if with_vsd && n_est > 0 {
            for (tau, vsd_tp) in entry.vsd.iter_mut().enumerate() {
                let errors = group.error_matrix(n_est, |e| e.vsd[tau]);
                for (k, th) in BOP19_VSD_CORRECT_THRESHOLDS.iter().enumerate() {
                    let matches =
                        match_greedy(&scores, &errors, &group.bop_valid, Admit::Below(*th));
                    vsd_tp[k] += matches.iter().flatten().count();
                }
            }
        }
    }
    let mut total = BopCounts::default();
    for (obj_id, object_counts) in &counts {
        let object = report.object(*obj_id);
        object.n_bop_targets = object_counts.n_targets;
        [object.ar_vsd, object.ar_mssd, object.ar_mspd, object.ar] =
            object_counts.recalls(with_vsd);
        total.add(object_counts);
    }
    [report.ar_vsd, report.ar_mssd, report.ar_mspd, report.ar] = total.recalls(with_vsd);
    report.n_bop_targets = total.n_targets;
}

/// Mean over thresholds (and taus) of `true positives / targets`; `None` without
/// targets.
fn average_recall(true_positives: &[usize], n_targets: usize) -> Option<f64> {
    (n_targets > 0 && !true_positives.is_empty()).then(|| {
        true_positives
            .iter()
            .map(|&tp| tp as f64 / n_targets as f64)
            .sum::<f64>()
            / true_positives.len() as f64
    })
}
