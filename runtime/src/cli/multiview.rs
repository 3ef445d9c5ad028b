//! `posed multiview`: CosyPose's multi-view scene reconstruction over a BOP dataset's
//! views, from single-view candidates in a BOP19 results CSV (what `posed predict` writes).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use posed_kernels::Pose;
use serde::Serialize;

use super::load_dataset;
use crate::bop::atomic::write_atomically;
use crate::bop::results::{read_results, write_results, Estimate};
use crate::multiview::{
    reconstruct_scene, view_groups_of_scenes, Candidate, MultiviewOptions, ObjectGeometry, View,
    ViewGroup,
};
use crate::predict::image_list;

/// Arguments of `posed multiview`.
#[derive(Debug, clap::Args)]
pub struct MultiviewArgs {
    /// BOP dataset folder (models, and each view's camera in scene_camera.json).
    #[arg(long)]
    pub dataset: PathBuf,
    /// Split folder.
    #[arg(long, default_value = "test")]
    pub split: String,
    /// Single-view candidates: a BOP19 results CSV (`posed predict --out`).
    #[arg(long)]
    pub candidates: PathBuf,
    /// Folder for the outputs: results.csv (the reconstructed objects in every view, then
    /// every candidate, for `posed eval`) and scene_SSSSSS/group_N/predicted_scene.json and
    /// scene_reprojected.csv per view group.
    #[arg(long)]
    pub out_dir: PathBuf,
    /// Group every image of each scene, not only those of the dataset's
    /// test_targets_bop19.json (what `posed predict` processes by default).
    #[arg(long)]
    pub all_images: bool,
    /// Views per group: each scene's images in CosyPose's random order (RandomState(0)),
    /// cut into groups of this many (YCB-V: 5, T-LESS: 4 or 8) [default: each scene whole].
    #[arg(long, value_parser = clap::value_parser!(u32).range(2..=10_000))]
    pub n_views: Option<u32>,
    /// Use the known camera poses of scene_camera.json (cam_R_w2c, cam_t_w2c) instead of
    /// estimating them.
    #[arg(long)]
    pub known_cameras: bool,
    /// Candidates scoring below this are not matched (they stay in results.csv).
    #[arg(long, default_value_t = 0.3)]
    pub score_threshold: f64,
    /// RANSAC seeds per ordered view pair.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub ransac_iterations: u32,
    /// Distance within which two candidates agree (mean box-corner distance, metres).
    #[arg(long, default_value_t = 0.02)]
    pub inlier_distance_m: f64,
    /// Bundle adjustment iterations at most (CosyPose: 100 in evaluation, 10 in
    /// run_custom_scenario).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(0..=100_000))]
    pub ba_iterations: u32,
    /// Label-agnostic 3D NMS distance of predicted_scene.json, metres.
    #[arg(long, default_value_t = 0.04)]
    pub nms_distance_m: f64,
}

/// `predicted_scene.json`, as CosyPose's run_custom_scenario writes it (4x4 matrices in
/// metres, row by row).
#[derive(Serialize)]
struct PredictedScene {
    objects: Vec<PredictedObject>,
    cameras: Vec<PredictedCamera>,
}

#[derive(Serialize)]
struct PredictedObject {
    label: String,
    obj_id: u32,
    score: f64,
    n_cand: usize,
    #[serde(rename = "TWO")]
    world_from_object: [[f64; 4]; 4],
}

#[derive(Serialize)]
struct PredictedCamera {
    view_id: u32,
    #[serde(rename = "TWC")]
    world_from_camera: [[f64; 4]; 4],
    #[serde(rename = "K")]
    k: [[f64; 3]; 3],
}

fn matrix4(pose: &Pose) -> [[f64; 4]; 4] {
    let r = &pose.rotation;
    let t = &pose.translation_m;
    [
        [r[(0, 0)], r[(0, 1)], r[(0, 2)], t.x],
        [r[(1, 0)], r[(1, 1)], r[(1, 2)], t.y],
        [r[(2, 0)], r[(2, 1)], r[(2, 2)], t.z],
        [0.0, 0.0, 0.0, 1.0],
    ]
}

/// Runs `posed multiview`.
pub fn run_multiview(args: &MultiviewArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let options = MultiviewOptions {
        score_threshold: args.score_threshold,
        ransac_iterations: args.ransac_iterations as usize,
        inlier_distance_m: args.inlier_distance_m,
        ba_iterations: args.ba_iterations as usize,
        known_cameras: args.known_cameras,
        nms_distance_m: args.nms_distance_m,
        ..MultiviewOptions::default()
    };
    let dataset = load_dataset(&args.dataset, &args.split)?;
    let rows = read_results(&args.candidates)?;
    // Every candidate must name an image and an object of the dataset.
    for row in &rows {
        let e = &row.estimate;
        if dataset.image(e.scene_id, e.im_id).is_none() {
            bail!(
                "{}:{}: scene {} image {} is not in {} (split {})",
                args.candidates.display(),
                row.line,
                e.scene_id,
                e.im_id,
                args.dataset.display(),
                args.split
            );
        }
        if dataset.models.get(e.obj_id).is_none() {
            bail!(
                "{}:{}: object {} is not among the dataset's models",
                args.candidates.display(),
                row.line,
                e.obj_id
            );
        }
    }
    // The objects the candidates name (another model's symmetries need not be usable).
    let named: std::collections::BTreeSet<u32> = rows.iter().map(|r| r.estimate.obj_id).collect();
    let geometry = named
        .iter()
        .filter_map(|id| Some((*id, dataset.models.get(*id)?)))
        .map(|(id, model)| Ok((id, ObjectGeometry::from_info(id, &model.info)?)))
        .collect::<crate::Result<BTreeMap<u32, ObjectGeometry>>>()?;
    // The images CosyPose groups are those it predicted on: the targets' images.
    let mut images: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    for (scene_id, im_id) in image_list(&dataset, args.all_images)? {
        images.entry(scene_id).or_default().push(im_id);
    }
    let groups = view_groups_of_scenes(&images, args.n_views.map(|n| n as usize));
    std::fs::create_dir_all(&args.out_dir)
        .with_context(|| format!("creating {}", args.out_dir.display()))?;

    // Per image, its single-view time: every row of an image gets the same time. A
    // negative time (-1: unknown) stays unknown.
    let mut image_time_s: BTreeMap<(u32, u32), f64> = BTreeMap::new();
    for row in &rows {
        let e = &row.estimate;
        let time = image_time_s
            .entry((e.scene_id, e.im_id))
            .or_insert(e.time_s);
        *time = if *time < 0.0 || e.time_s < 0.0 {
            -1.0
        } else {
            time.max(e.time_s)
        };
    }
    let add_time = |time: f64, seconds: f64| if time < 0.0 { time } else { time + seconds };
    let mut reprojected: Vec<Estimate> = Vec::new();
    let (mut n_objects, mut n_pairs, mut n_skipped) = (0, 0, 0);
    for (index, (scene_id, view_ids)) in groups.iter().enumerate() {
        let group_started = Instant::now();
        let candidates: Vec<Candidate> = rows
            .iter()
            .map(|row| &row.estimate)
            .filter(|e| e.scene_id == *scene_id && view_ids.contains(&e.im_id))
            .map(|e| Candidate {
                view_id: e.im_id,
                obj_id: e.obj_id,
                score: e.score,
                camera_from_object: e.camera_from_object,
            })
            .collect();
        let mut views = Vec::with_capacity(view_ids.len());
        for &view_id in view_ids {
            let image = dataset
                .image(*scene_id, view_id)
                .context("a listed image is in the dataset")?;
            let world_from_camera = image.camera.camera_from_world.map(|p| p.inverse());
            if args.known_cameras && world_from_camera.is_none() {
                bail!(
                    "--known-cameras: scene {scene_id} image {view_id} has no cam_R_w2c / \
                     cam_t_w2c in its scene_camera.json"
                );
            }
            views.push(View {
                view_id,
                intrinsics: image.camera.intrinsics,
                world_from_camera,
            });
        }
        // One group that cannot be reconstructed (a view that cannot be placed) is
        // skipped, not the run: its candidates stay in results.csv.
        let scene = match reconstruct_scene(&candidates, &views, &geometry, &options) {
            Ok(scene) => scene,
            Err(error) => {
                eprintln!("posed multiview: scene {scene_id} views {view_ids:?} skipped: {error}");
                n_skipped += 1;
                continue;
            }
        };
        let seconds_per_view = group_started.elapsed().as_secs_f64() / view_ids.len() as f64;
        n_pairs += scene.pairs.len();
        let group_dir = args
            .out_dir
            .join(format!("scene_{scene_id:06}"))
            .join(format!("group_{index}"));
        for (n, group) in scene.groups.iter().enumerate() {
            let dir = if scene.groups.len() == 1 {
                group_dir.clone()
            } else {
                group_dir.join(format!("subgroup_{n}"))
            };
            write_group(&dir, *scene_id, group, options.nms_distance_m)?;
            n_objects += group.objects.len();
            eprintln!(
                "scene {scene_id} views {:?}: {} object(s), {} candidate(s) matched; \
                 reprojection cost {:.2} -> {:.2} px^2 in {} iteration(s)",
                group.cameras.iter().map(|c| c.view_id).collect::<Vec<_>>(),
                group.objects.len(),
                group
                    .objects
                    .iter()
                    .map(|o| o.candidates.len())
                    .sum::<usize>(),
                group.initial_cost_px2,
                group.final_cost_px2,
                group.ba_iterations,
            );
            for estimate in group.reprojected() {
                let time_s = add_time(
                    image_time_s
                        .get(&(*scene_id, estimate.view_id))
                        .copied()
                        .unwrap_or(-1.0),
                    seconds_per_view,
                );
                reprojected.push(to_estimate(*scene_id, &estimate, time_s));
            }
        }
        // The image's time covers the multi-view work too.
        for &view_id in view_ids {
            if let Some(time) = image_time_s.get_mut(&(*scene_id, view_id)) {
                *time = add_time(*time, seconds_per_view);
            }
        }
    }
    // ba_output + all candidates, as CosyPose evaluates and submits them.
    let mut all = reprojected;
    all.extend(rows.iter().map(|row| {
        Estimate {
            time_s: image_time_s
                .get(&(row.estimate.scene_id, row.estimate.im_id))
                .copied()
                .unwrap_or(row.estimate.time_s),
            ..row.estimate.clone()
        }
    }));
    let results = args.out_dir.join("results.csv");
    write_results(&results, &all)?;
    eprintln!(
        "posed multiview: {} view group(s) ({n_skipped} skipped), {n_pairs} view pair(s) \
         accepted, {n_objects} object(s); wrote {} estimates to {} in {:.1} s",
        groups.len(),
        all.len(),
        results.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn to_estimate(scene_id: u32, candidate: &Candidate, time_s: f64) -> Estimate {
    Estimate {
        scene_id,
        im_id: candidate.view_id,
        obj_id: candidate.obj_id,
        score: candidate.score,
        camera_from_object: candidate.camera_from_object,
        time_s,
    }
}

/// Writes one view group's `predicted_scene.json` (objects after 3D NMS) and
/// `scene_reprojected.csv` (every object in every camera, not filtered, time -1).
fn write_group(dir: &Path, scene_id: u32, group: &ViewGroup, nms_m: f64) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let scene = PredictedScene {
        objects: group
            .objects_after_nms(nms_m)
            .into_iter()
            .map(|o| PredictedObject {
                label: format!("obj_{:06}", o.obj_id),
                obj_id: o.obj_id,
                score: o.score,
                n_cand: o.candidates.len(),
                world_from_object: matrix4(&o.world_from_object),
            })
            .collect(),
        cameras: group
            .cameras
            .iter()
            .map(|c| {
                let k = &c.intrinsics.k;
                PredictedCamera {
                    view_id: c.view_id,
                    world_from_camera: matrix4(&c.world_from_camera),
                    k: [
                        [k[(0, 0)], k[(0, 1)], k[(0, 2)]],
                        [k[(1, 0)], k[(1, 1)], k[(1, 2)]],
                        [k[(2, 0)], k[(2, 1)], k[(2, 2)]],
                    ],
                }
            })
            .collect(),
    };
    let json = dir.join("predicted_scene.json");
    write_atomically(&json, |out| {
        serde_json::to_writer_pretty(&mut *out, &scene).map_err(std::io::Error::other)?;
        writeln!(out)
    })?;
    let reprojected: Vec<Estimate> = group
        .reprojected()
        .iter()
        .map(|c| to_estimate(scene_id, c, -1.0))
        .collect();
    write_results(&dir.join("scene_reprojected.csv"), &reprojected)?;
    Ok(())
}
