//! BOP19 VSD errors of the (estimate, ground truth) pairs the BOP matching needs, as the
//! BOP toolkit's `eval_calc_errors.py` computes them (COSYPOSE_SPEC.md B.2):
//!
//! - only images and objects that are targets, only the top `inst_count` estimates by
//!   score, and only ground truth that is valid (the `inst_count` most visible instances;
//!   the toolkit computes errors against the others too, but its matching never uses them);
//! - `misc.overlapping_sphere_projections` first: when the projections of the bounding
//!   spheres (radius = diameter / 2) around the two poses' origins do not overlap, every
//!   error is 1 and nothing is rendered;
//! - otherwise the object is rendered alone in the ground-truth pose and alone in the
//!   estimated pose at the image's intrinsics and the dataset's image size (`camera.json`),
//!   and `vsd_errors` compares both with the test depth image: delta 15 mm, taus
//!   {0.05, ..., 0.5} times the diameter.
//!
//! Work is per image and lazy: the depth image is read only when some pair of the image
//! needs rendering, each ground-truth instance is rendered at most once and each estimate
//! once, and nothing outlives the image. Images run in parallel on rayon's threads, each
//! with its own single-threaded renderer taken from a small pool (one per thread at most):
//! on two cores this measured faster than one renderer using both cores, because reading
//! the depth PNG and the VSD pass then run in parallel too.

use std::sync::{Mutex, PoisonError};

use nalgebra::Vector3;
use posed_kernels::metrics::vsd::{vsd_errors, BOP19_VSD_DELTA_M, BOP19_VSD_TAUS};
use posed_kernels::render::Shading;
use rayon::prelude::*;

use super::Group;
use crate::bop::dataset::{BopDataset, ImageFile};
use crate::bop::images::{read_depth_m, DepthImage};
use crate::bop::models::ModelSet;
use crate::bop::results::EstimateRow;
use crate::render::ObjectRenderer;
use crate::{Error, Result};

/// Number of VSD taus (and of correctness thresholds) of BOP19.
pub(super) const N_VSD_TAUS: usize = BOP19_VSD_TAUS.len();

/// `misc.overlapping_sphere_projections`: whether the (approximate) projections of two
/// spheres of radius `radius_m` centred at `a` and `b` (camera frame) overlap. A centre
/// with z = 0 never overlaps. Scale-free, so metres give what the toolkit's millimetres
/// give.
pub(super) fn sphere_projections_overlap(
    radius_m: f64,
    a: &Vector3<f64>,
    b: &Vector3<f64>,
) -> bool {
    if a.z == 0.0 || b.z == 0.0 {
        return false;
    }
    let du = a.x / a.z - b.x / b.z;
    let dv = a.y / a.z - b.y / b.z;
    let distance = (du * du + dv * dv).sqrt();
    distance < radius_m * (1.0 / a.z + 1.0 / b.z)
}

/// Single-threaded renderers shared out to rayon's threads, created on first need.
struct RendererPool<'m> {
    models: &'m ModelSet,
    idle: Mutex<Vec<ObjectRenderer>>,
}

impl RendererPool<'_> {
    fn take(&self) -> Result<ObjectRenderer> {
        let idle = self
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        match idle {
            Some(renderer) => Ok(renderer),
            None => ObjectRenderer::new(self.models, 1),
        }
    }

    fn give_back(&self, renderer: ObjectRenderer) {
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(renderer);
    }
}

/// Whether a group has pairs the BOP19 matching looks at.
fn needs_vsd(group: &Group<'_>) -> bool {
    group.bop_inst_count > 0 && !group.estimates.is_empty() && group.bop_valid.contains(&true)
}

/// Fills `PairErrors::vsd` of every pair the BOP19 matching needs (the others stay NaN
/// and never match). `groups` must be sorted by (scene, image, object), as
/// `build_groups` returns them.
pub(super) fn compute_vsd_errors(
    dataset: &BopDataset,
    groups: &mut [Group<'_>],
    rows: &[EstimateRow],
    show_progress: bool,
) -> Result<()> {
    // Split the groups into runs of one image each, keeping the images with work.
    let mut images: Vec<&mut [Group<'_>]> = Vec::new();
    let mut rest = groups;
    while let Some(first) = rest.first() {
        let key = (first.scene_id, first.im_id);
        let len = rest
            .iter()
            .position(|g| (g.scene_id, g.im_id) != key)
            .unwrap_or(rest.len());
        let (image, tail) = rest.split_at_mut(len);
        if image.iter().any(needs_vsd) {
            images.push(image);
        }
        rest = tail;
    }

    let progress = if show_progress {
        indicatif::ProgressBar::new(images.len() as u64)
    } else {
        indicatif::ProgressBar::hidden()
    };
    progress.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg} {bar:40} {pos}/{len} images, {per_sec}, eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    progress.set_message("VSD");
    let pool = RendererPool {
        models: &dataset.models,
        idle: Mutex::new(Vec::new()),
    };
    let result = images.into_par_iter().try_for_each(|image| {
        image_vsd(dataset, image, rows, &pool)?;
        progress.inc(1);
        Ok(())
    });
    progress.finish_and_clear();
    result
}

/// The test depth image of one image, checked against the dataset's image size.
fn load_test_depth(dataset: &BopDataset, group: &Group<'_>) -> Result<DepthImage> {
    let (scene_id, im_id) = (group.scene_id, group.im_id);
    let path = dataset
        .image_file(scene_id, im_id, ImageFile::Depth)
        .ok_or_else(|| Error::Dataset {
            path: dataset.root.clone(),
            detail: format!("scene {scene_id} image {im_id} is not in the dataset"),
        })?;
    let depth_scale_mm = group.image.camera.depth_scale_mm.ok_or_else(|| Error::Dataset {
        path: path.clone(),
        detail: format!(
            "scene {scene_id} image {im_id}: scene_camera.json gives no depth_scale, which VSD needs to read this depth image (--no-vsd skips VSD)"
        ),
    })?;
    let depth = read_depth_m(&path, depth_scale_mm).map_err(|err| match err {
        Error::Io { path, source } => Error::Dataset {
            detail: format!("cannot read the depth image VSD needs (--no-vsd skips VSD): {source}"),
            path,
        },
        other => other,
    })?;
    let camera = dataset.camera;
    if (depth.width, depth.height) != (camera.width, camera.height) {
        return Err(Error::Dataset {
            path,
            detail: format!(
                "the depth image is {} x {} pixels, camera.json says {} x {}",
                depth.width, depth.height, camera.width, camera.height
            ),
        });
    }
    Ok(depth)
}

/// VSD of every needed pair of one image (`groups`: the image's groups).
fn image_vsd(
    dataset: &BopDataset,
    groups: &mut [Group<'_>],
    rows: &[EstimateRow],
    pool: &RendererPool<'_>,
) -> Result<()> {
    let mut renderer: Option<ObjectRenderer> = None;
    let result = image_vsd_with(dataset, groups, rows, pool, &mut renderer);
    if let Some(renderer) = renderer {
        pool.give_back(renderer);
    }
    result
}

fn image_vsd_with(
    dataset: &BopDataset,
    groups: &mut [Group<'_>],
    rows: &[EstimateRow],
    pool: &RendererPool<'_>,
    renderer: &mut Option<ObjectRenderer>,
) -> Result<()> {
    let width = dataset.camera.width as usize;
    let height = dataset.camera.height as usize;
    let mut depth_test: Option<DepthImage> = None;
    let mut overlapping: Vec<usize> = Vec::new();
    for group in groups.iter_mut().filter(|g| needs_vsd(g)) {
        let image = group.image;
        let intrinsics = image.camera.intrinsics;
        let (scene_id, im_id, obj_id) = (group.scene_id, group.im_id, group.obj_id);
        let context = || format!("VSD of obj_id {obj_id} in scene {scene_id} image {im_id}");
        let diameter_m = dataset
            .models
            .get(obj_id)
            .map(|m| m.info.diameter_m)
            .ok_or_else(|| Error::Dataset {
                path: dataset.root.join("models/models_info.json"),
                detail: format!("obj_id {obj_id} is missing"),
            })?;
        let n_gt = group.gt.len();
        let n_est = group.estimates.len().min(group.bop_inst_count);
        // Depth of each ground-truth instance rendered alone, on first need.
        let mut gt_depth_m: Vec<Option<Vec<f32>>> = vec![None; n_gt];
        for rank in 0..n_est {
            let est = rows[group.estimates[rank]].estimate.camera_from_object;
            overlapping.clear();
            for g in 0..n_gt {
                if !group.bop_valid[g] {
                    continue;
                }
                let gt = &image.gt[group.gt[g]].camera_from_object;
                if sphere_projections_overlap(
                    0.5 * diameter_m,
                    &est.translation_m,
                    &gt.translation_m,
                ) {
                    overlapping.push(g);
                } else {
                    group.errors[rank * n_gt + g].vsd = [1.0; N_VSD_TAUS];
                }
            }
            if overlapping.is_empty() {
                continue;
            }
            let depth_test_m = match &mut depth_test {
                Some(depth) => &depth.depth_m,
                None => &depth_test.insert(load_test_depth(dataset, group)?).depth_m,
            };
            let renderer = match renderer {
                Some(renderer) => renderer,
                None => renderer.insert(pool.take()?),
            };
            for &g in &overlapping {
                if gt_depth_m[g].is_none() {
                    let gt = image.gt[group.gt[g]].camera_from_object;
                    let target = renderer.render_scene(
                        &intrinsics,
                        width,
                        height,
                        &[(obj_id, gt)],
                        &Shading::Albedo,
                    )?;
                    gt_depth_m[g] = Some(target.depth_m().to_vec());
                }
            }
            let est_depth_m = renderer
                .render_scene(
                    &intrinsics,
                    width,
                    height,
                    &[(obj_id, est)],
                    &Shading::Albedo,
                )?
                .depth_m();
            for &g in &overlapping {
                let Some(gt_depth_m) = &gt_depth_m[g] else {
                    continue;
                };
                let mut errors = [f64::NAN; N_VSD_TAUS];
                vsd_errors(
                    depth_test_m,
                    gt_depth_m,
                    est_depth_m,
                    width,
                    height,
                    &intrinsics,
                    BOP19_VSD_DELTA_M,
                    &BOP19_VSD_TAUS,
                    diameter_m,
                    &mut errors,
                )
                .map_err(|source| Error::Kernel {
                    context: context(),
                    source,
                })?;
                group.errors[rank * n_gt + g].vsd = errors;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sphere_projections_overlap_as_the_toolkit_tests_it() {
        let at = |x: f64, y: f64, z: f64| Vector3::new(x, y, z);
        // Radius 0.1 at 1 m on both sides: projections overlap while the centre
        // projections are closer than 0.1 * (1 + 1) = 0.2.
        assert!(sphere_projections_overlap(
            0.1,
            &at(0.0, 0.0, 1.0),
            &at(0.19, 0.0, 1.0)
        ));
        assert!(!sphere_projections_overlap(
            0.1,
            &at(0.0, 0.0, 1.0),
            &at(0.2, 0.0, 1.0)
        ));
        // Along the optical axis the projections always coincide.
        assert!(sphere_projections_overlap(
            0.1,
            &at(0.0, 0.0, 1.0),
            &at(0.0, 0.0, 5.0)
        ));
        // Farther away the threshold shrinks: 0.1 * (1 / 2 + 1 / 2) = 0.1 in the image plane.
        assert!(!sphere_projections_overlap(
            0.1,
            &at(0.0, 0.0, 2.0),
            &at(0.0, 0.22, 2.0)
        ));
        assert!(sphere_projections_overlap(
            0.1,
            &at(0.0, 0.0, 2.0),
            &at(0.0, 0.18, 2.0)
        ));
        // A centre in the camera plane never overlaps.
        assert!(!sphere_projections_overlap(
            0.1,
            &at(0.0, 0.0, 0.0),
            &at(0.0, 0.0, 1.0)
        ));
    }
}
