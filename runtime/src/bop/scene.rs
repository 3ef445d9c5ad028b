//! Per-scene annotation files: `scene_camera.json`, `scene_gt.json`, `scene_gt_info.json`.

use std::collections::BTreeMap;
use std::path::Path;

use posed_kernels::{Intrinsics, Pose};
use serde::Deserialize;

use super::json::{all_finite, check_rotation, invalid, read_json};
use super::models::MM_TO_M;
use crate::Result;

#[derive(Debug, Deserialize)]
struct CameraFile {
    #[serde(rename = "cam_K")]
    cam_k: [f64; 9],
    depth_scale: Option<f64>,
    #[serde(rename = "cam_R_w2c")]
    cam_r_w2c: Option<[f64; 9]>,
    cam_t_w2c: Option<[f64; 3]>,
}

/// One image's camera (`scene_camera.json`).
#[derive(Debug, Clone, PartialEq)]
pub struct ImageCamera {
    /// Intrinsics K.
    pub intrinsics: Intrinsics,
    /// Multiply a depth-image value by this to get millimetres.
    pub depth_scale_mm: Option<f64>,
    /// The world (table) frame in the camera frame, when annotated.
    pub camera_from_world: Option<Pose>,
}

/// Reads `scene_camera.json`: image id -> camera.
pub fn read_scene_camera(path: &Path) -> Result<BTreeMap<u32, ImageCamera>> {
    let raw: BTreeMap<u32, CameraFile> = read_json(path)?;
    raw.into_iter()
        .map(|(im_id, entry)| Ok((im_id, convert_camera(path, im_id, entry)?)))
        .collect()
}

fn convert_camera(path: &Path, im_id: u32, entry: CameraFile) -> Result<ImageCamera> {
    let k = &entry.cam_k;
    if !all_finite(k) || k[0] <= 0.0 || k[4] <= 0.0 || k[3] != 0.0 || k[6..] != [0.0, 0.0, 1.0] {
        return Err(invalid(
            path,
            format!(
                "image {im_id}, cam_K: expected [fx, s, cx, 0, fy, cy, 0, 0, 1] with fx, fy > 0, found {k:?}"
            ),
        ));
    }
    if let Some(scale) = entry.depth_scale {
        if !(scale.is_finite() && scale > 0.0) {
            return Err(invalid(
                path,
                format!("image {im_id}, depth_scale: expected a positive number, found {scale}"),
            ));
        }
    }
    let camera_from_world = match (entry.cam_r_w2c, entry.cam_t_w2c) {
        (Some(r), Some(t)) => {
            let pose = pose_from_file(&r, &t).ok_or_else(|| {
                invalid(
                    path,
                    format!("image {im_id}: cam_R_w2c / cam_t_w2c are not finite"),
                )
            })?;
            check_rotation(&pose)
                .map_err(|why| invalid(path, format!("image {im_id}, cam_R_w2c: {why}")))?;
            Some(pose)
        }
        (None, None) => None,
        _ => {
            return Err(invalid(
                path,
                format!("image {im_id}: expected both cam_R_w2c and cam_t_w2c, or neither"),
            ))
        }
    };
    Ok(ImageCamera {
        intrinsics: Intrinsics::from_row_major(k),
        depth_scale_mm: entry.depth_scale,
        camera_from_world,
    })
}

/// A pose from a BOP row-major rotation and a translation in millimetres; `None` if any
/// value is not finite.
pub(crate) fn pose_from_file(rotation: &[f64; 9], translation_mm: &[f64; 3]) -> Option<Pose> {
    if !all_finite(rotation) || !all_finite(translation_mm) {
        return None;
    }
    Some(Pose::from_row_major(
        rotation,
        translation_mm.map(|v| v * MM_TO_M),
    ))
}

/// One annotated object instance (`scene_gt.json`).
#[derive(Debug, Clone, PartialEq)]
pub struct GtInstance {
    /// BOP object id.
    pub obj_id: u32,
    /// The instance's pose, metres.
    pub camera_from_object: Pose,
}

/// Reads `scene_gt.json`: image id -> instances, in file order (the `gt_idx` of masks).
pub fn read_scene_gt(path: &Path) -> Result<BTreeMap<u32, Vec<GtInstance>>> {
    #[derive(Deserialize)]
    struct Raw {
        #[serde(rename = "cam_R_m2c")]
        cam_r_m2c: [f64; 9],
        cam_t_m2c: [f64; 3],
        obj_id: u32,
    }
    let raw: BTreeMap<u32, Vec<Raw>> = read_json(path)?;
    let mut out = BTreeMap::new();
    for (im_id, instances) in raw {
        let mut converted = Vec::with_capacity(instances.len());
        for (gt_idx, instance) in instances.into_iter().enumerate() {
            let context = format!(
                "image {im_id}, instance {gt_idx} (obj_id {})",
                instance.obj_id
            );
            let pose = pose_from_file(&instance.cam_r_m2c, &instance.cam_t_m2c)
                .ok_or_else(|| invalid(path, format!("{context}: pose values are not finite")))?;
            check_rotation(&pose)
                .map_err(|why| invalid(path, format!("{context}, cam_R_m2c: {why}")))?;
            // Annotated objects are in front of the camera (the BOP toolkit projects them).
            let z_mm = instance.cam_t_m2c[2];
            if z_mm <= 0.0 {
                return Err(invalid(
                    path,
                    format!("{context}, cam_t_m2c: the object is at z = {z_mm} mm, not in front of the camera"),
                ));
            }
            converted.push(GtInstance {
                obj_id: instance.obj_id,
                camera_from_object: pose,
            });
        }
        out.insert(im_id, converted);
    }
    Ok(out)
}

/// Visibility statistics of one instance (`scene_gt_info.json`), in pixels.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct GtInfo {
    /// `[x, y, w, h]` of the full silhouette (may leave the image).
    pub bbox_obj: [f64; 4],
    /// `[x, y, w, h]` of the visible part, `[-1, -1, -1, -1]` when nothing is visible.
    pub bbox_visib: [f64; 4],
    /// Pixels of the full silhouette, outside the image included.
    pub px_count_all: u64,
    /// Silhouette pixels inside the image with valid depth.
    pub px_count_valid: u64,
    /// Visible pixels.
    pub px_count_visib: u64,
    /// `px_count_visib / px_count_all`.
    pub visib_fract: f64,
}

/// Reads `scene_gt_info.json`: image id -> per-instance info, in `scene_gt.json` order.
pub fn read_scene_gt_info(path: &Path) -> Result<BTreeMap<u32, Vec<GtInfo>>> {
    let raw: BTreeMap<u32, Vec<GtInfo>> = read_json(path)?;
    for (im_id, infos) in &raw {
        for (gt_idx, info) in infos.iter().enumerate() {
            if !(0.0..=1.0).contains(&info.visib_fract) {
                return Err(invalid(
                    path,
                    format!(
                        "image {im_id}, instance {gt_idx}, visib_fract: expected a fraction in [0, 1], found {}",
                        info.visib_fract
                    ),
                ));
            }
        }
    }
    Ok(raw)
}
