//! Helpers shared by posed's benches and timing harnesses.

use std::path::{Path, PathBuf};

use anyhow::Context;
use nalgebra::{Rotation3, Unit, Vector3};
use posed::bop::targets::{read_targets, Target};
use posed_kernels::Pose;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The bundled ycbv-mini dataset.
pub fn ycbv_mini() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../data/ycbv-mini")
}

/// Random (ground truth, estimate) pose pairs like those of data/metrics-cases.json:
/// ground truth uniform on SO(3) at 0.6 to 1.2 m, estimate rotated by up to `max_rot_deg`
/// and shifted by up to `max_trans_m`.
pub fn random_pose_pairs(
    n: usize,
    max_rot_deg: f64,
    max_trans_m: f64,
    seed: u64,
) -> Vec<(Pose, Pose)> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let unit = |rng: &mut ChaCha8Rng| loop {
        let v = Vector3::new(
            rng.random_range(-1.0..1.0),
            rng.random_range(-1.0..1.0),
            rng.random_range(-1.0..1.0),
        );
        let norm: f64 = v.norm();
        if (1e-3..=1.0).contains(&norm) {
            break Unit::new_normalize(v);
        }
    };
    (0..n)
        .map(|_| {
            let gt_rotation = Rotation3::from_axis_angle(
                &unit(&mut rng),
                rng.random_range(0.0..std::f64::consts::PI),
            );
            let gt = Pose {
                rotation: *gt_rotation.matrix(),
                translation_m: Vector3::new(
                    rng.random_range(-0.15..0.15),
                    rng.random_range(-0.1..0.1),
                    rng.random_range(0.6..1.2),
                ),
            };
            let delta = Rotation3::from_axis_angle(
                &unit(&mut rng),
                rng.random_range(0.0..max_rot_deg.to_radians()),
            );
            let shift = unit(&mut rng).into_inner() * rng.random_range(0.0..max_trans_m);
            let est = Pose {
                rotation: delta.matrix() * gt.rotation,
                translation_m: gt.translation_m + shift,
            };
            (gt, est)
        })
        .collect()
}

/// Writes a BOP dataset that repeats the scenes of `source` `copies` times (annotation
/// files only; models are linked), so evaluations can be timed at YCB-Video scale
/// (about 3,000 images, 15,000 estimates). Returns the new dataset folder under `dir`.
pub fn replicate_dataset(source: &Path, dir: &Path, copies: u32) -> anyhow::Result<PathBuf> {
    let root = dir.join("replicated");
    let test = root.join("test");
    std::fs::create_dir_all(&test)?;
    let models = source
        .join("models")
        .canonicalize()
        .context("source models folder")?;
    std::os::unix::fs::symlink(models, root.join("models"))?;
    std::fs::copy(source.join("camera.json"), root.join("camera.json"))?;
    let mut scene_ids: Vec<u32> = Vec::new();
    for entry in std::fs::read_dir(source.join("test"))? {
        let entry = entry?;
        if let Some(id) = entry.file_name().to_str().and_then(|n| n.parse().ok()) {
            scene_ids.push(id);
        }
    }
    scene_ids.sort_unstable();
    let mut targets = Vec::new();
    let source_targets = read_targets(&source.join("test_targets_bop19.json"))?;
    for copy in 0..copies {
        for &scene_id in &scene_ids {
            let new_id = copy * 1000 + scene_id;
            let from = source.join(format!("test/{scene_id:06}"));
            let to = test.join(format!("{new_id:06}"));
            std::fs::create_dir_all(&to)?;
            for name in ["scene_camera.json", "scene_gt.json", "scene_gt_info.json"] {
                std::fs::copy(from.join(name), to.join(name))?;
            }
            for t in source_targets.iter().filter(|t| t.scene_id == scene_id) {
                targets.push(Target {
                    scene_id: new_id,
                    ..*t
                });
            }
        }
    }
    std::fs::write(
        root.join("test_targets_bop19.json"),
        serde_json::to_string(&targets)?,
    )?;
    Ok(root)
}

/// The 400 (object id, ground truth, estimate) pairs of data/metrics-cases.json: the
/// distribution the BOP toolkit's `adi` figure (about 370 pairs/s) was measured on.
pub fn metrics_case_pairs() -> anyhow::Result<Vec<(u32, Pose, Pose)>> {
    let path = ycbv_mini().join("../metrics-cases.json");
    let cases: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
    let pairs = cases["pairs"]
        .as_array()
        .context("metrics-cases.json: pairs")?;
    let floats = |value: &serde_json::Value| -> anyhow::Result<Vec<f64>> {
        value
            .as_array()
            .context("expected an array")?
            .iter()
            .map(|v| v.as_f64().context("expected a number"))
            .collect()
    };
    let pose = |record: &serde_json::Value, which: &str| -> anyhow::Result<Pose> {
        let r: [f64; 9] = floats(&record[format!("R_{which}")])?
            .try_into()
            .map_err(|_| anyhow::anyhow!("R has 9 values"))?;
        let t: [f64; 3] = floats(&record[format!("t_{which}")])?
            .try_into()
            .map_err(|_| anyhow::anyhow!("t has 3 values"))?;
        Ok(Pose::from_row_major(&r, t.map(|v| v * 1e-3)))
    };
    pairs
        .iter()
        .map(|record| {
            let obj_id = record["obj_id"].as_u64().context("obj_id")? as u32;
            Ok((obj_id, pose(record, "gt")?, pose(record, "est")?))
        })
        .collect()
}

/// A refiner-sized render batch: each of the five ycbv-mini objects alone in a 240 x 320
/// crop, filling it as CosyPose's crops do (the object's diameter spans 1 / 1.4 of the
/// crop height), at 0.8 m under a fixed rotation.
#[derive(Debug)]
pub struct CropBatch {
    /// Renderer meshes, one per object, in obj_id order.
    pub meshes: Vec<posed_kernels::render::Mesh>,
    /// The PLY file of each mesh.
    pub ply_paths: Vec<PathBuf>,
    /// One crop camera per object (K_crop, 320 x 240).
    pub cameras: Vec<posed_kernels::render::Camera>,
    /// One pose per object.
    pub poses: Vec<Pose>,
}

/// Crop width, pixels (CosyPose's render size is 240 x 320).
pub const CROP_WIDTH: usize = 320;
/// Crop height, pixels.
pub const CROP_HEIGHT: usize = 240;

impl CropBatch {
    /// One single-object instance list per crop, to borrow into render items.
    pub fn instances(&self) -> Vec<[posed_kernels::render::Instance; 1]> {
        self.poses
            .iter()
            .enumerate()
            .map(|(mesh, &camera_from_object)| {
                [posed_kernels::render::Instance {
                    mesh,
                    camera_from_object,
                }]
            })
            .collect()
    }

    /// One render target per crop.
    pub fn targets(&self) -> Vec<posed_kernels::render::RenderTarget> {
        self.cameras
            .iter()
            .map(|c| posed_kernels::render::RenderTarget::new(c.width, c.height))
            .collect()
    }
}

/// The crop batch of [`CropBatch`] from the bundled ycbv-mini models.
pub fn refiner_crop_batch() -> anyhow::Result<CropBatch> {
    let models = posed::bop::models::ModelSet::load(&ycbv_mini().join("models"))?;
    let mut batch = CropBatch {
        meshes: Vec::new(),
        ply_paths: Vec::new(),
        cameras: Vec::new(),
        poses: Vec::new(),
    };
    for (index, model) in models.objects.values().enumerate() {
        let depth_m = 0.8;
        let focal_px = CROP_HEIGHT as f64 / 1.4 * depth_m / model.info.diameter_m;
        batch.meshes.push(posed::render::object_mesh(model)?);
        batch.ply_paths.push(model.mesh_path.clone());
        batch.cameras.push(posed_kernels::render::Camera {
            intrinsics: posed_kernels::Intrinsics::from_row_major(&[
                focal_px,
                0.0,
                CROP_WIDTH as f64 / 2.0,
                0.0,
                focal_px,
                CROP_HEIGHT as f64 / 2.0,
                0.0,
                0.0,
                1.0,
            ]),
            width: CROP_WIDTH,
            height: CROP_HEIGHT,
        });
        let angle = 0.4 + 0.3 * index as f64;
        batch.poses.push(Pose {
            rotation: *Rotation3::from_euler_angles(angle, -0.5 * angle, 0.25).matrix(),
            translation_m: Vector3::new(0.0, 0.0, depth_m),
        });
    }
    Ok(batch)
}
