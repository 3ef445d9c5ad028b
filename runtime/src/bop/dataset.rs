//! A BOP dataset split on disk: `DIR/models`, `DIR/camera.json`, `DIR/<split>/<scene>/`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::images::{read_rgb, RgbImage, MAX_IMAGE_SIDE};
use super::json::read_json;
use super::models::ModelSet;
use super::scene::{
    read_scene_camera, read_scene_gt, read_scene_gt_info, GtInfo, GtInstance, ImageCamera,
};
use crate::{Error, Result};

/// Dataset-wide camera parameters (`camera.json`).
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
pub struct DatasetCamera {
    /// Image width, pixels.
    pub width: u32,
    /// Image height, pixels.
    pub height: u32,
}

/// One image of a scene with its annotations.
#[derive(Debug, Clone)]
pub struct ImageAnnotations {
    /// The camera of this image.
    pub camera: ImageCamera,
    /// Annotated instances, in file order.
    pub gt: Vec<GtInstance>,
    /// Visibility of each instance (same order), when `scene_gt_info.json` exists.
    pub gt_info: Option<Vec<GtInfo>>,
}

/// One scene folder.
#[derive(Debug, Clone)]
pub struct Scene {
    /// Scene id (the folder name).
    pub scene_id: u32,
    /// The scene folder.
    pub dir: PathBuf,
    /// Images with annotations, by image id.
    pub images: BTreeMap<u32, ImageAnnotations>,
}

/// One of the per-image files of a BOP scene folder (see [`BopDataset::image_file`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFile {
    /// `rgb/{im_id:06}.png`, or `.jpg` when only that exists (BOP's PBR training sets).
    Rgb,
    /// `depth/{im_id:06}.png`.
    Depth,
    /// `mask/{im_id:06}_{gt_idx:06}.png`: the full silhouette of instance `gt_idx`.
    Mask {
        /// Index of the instance in the image's `scene_gt.json` list.
        gt_idx: usize,
    },
    /// `mask_visib/{im_id:06}_{gt_idx:06}.png`: the visible part of instance `gt_idx`.
    MaskVisib {
        /// Index of the instance in the image's `scene_gt.json` list.
        gt_idx: usize,
    },
}

/// A loaded dataset split.
#[derive(Debug, Clone)]
pub struct BopDataset {
    /// The dataset folder.
    pub root: PathBuf,
    /// Object models.
    pub models: ModelSet,
    /// Dataset-wide camera parameters.
    pub camera: DatasetCamera,
    /// Scenes by id.
    pub scenes: BTreeMap<u32, Scene>,
}

impl BopDataset {
    /// Loads models, `camera.json` and every scene of `split` (e.g. `"test"`).
    pub fn load(root: &Path, split: &str) -> Result<Self> {
        let models = ModelSet::load(&root.join("models"))?;
        let camera_path = root.join("camera.json");
        let camera: DatasetCamera = read_json(&camera_path)?;
        for (field, value) in [("width", camera.width), ("height", camera.height)] {
            if !(1..=MAX_IMAGE_SIDE).contains(&value) {
                return Err(Error::Json {
                    path: camera_path,
                    detail: format!(
                        "{field}: expected 1 to {MAX_IMAGE_SIDE} pixels, found {value}"
                    ),
                });
            }
        }
        let split_dir = root.join(split);
        let entries = std::fs::read_dir(&split_dir).map_err(|source| Error::Io {
            path: split_dir.clone(),
            source,
        })?;
        let mut scenes = BTreeMap::new();
        for entry in entries {
            let entry = entry.map_err(|source| Error::Io {
                path: split_dir.clone(),
                source,
            })?;
            let dir = entry.path();
            if !dir.is_dir() {
                continue;
            }
            let name = entry.file_name();
            let scene_id = name
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
                .ok_or_else(|| Error::Dataset {
                    path: dir.clone(),
                    detail: "expected scene folders named by their numeric id (e.g. 000001)".into(),
                })?;
            scenes.insert(scene_id, load_scene(&dir, scene_id, &models)?);
        }
        if scenes.is_empty() {
            return Err(Error::Dataset {
                path: split_dir,
                detail: "no scene folders found".into(),
            });
        }
        Ok(Self {
            root: root.to_path_buf(),
            models,
            camera,
            scenes,
        })
    }

    /// The annotations of one image, if the dataset has it.
    pub fn image(&self, scene_id: u32, im_id: u32) -> Option<&ImageAnnotations> {
        self.scenes.get(&scene_id)?.images.get(&im_id)
    }

    /// The path of one file of image `im_id` in scene `scene_id`, or `None` when the
    /// dataset has no such image or, for a mask, the image has no instance `gt_idx`. Only
    /// [`ImageFile::Rgb`] looks at the disk (to pick `.jpg` when there is no `.png`).
    pub fn image_file(&self, scene_id: u32, im_id: u32, file: ImageFile) -> Option<PathBuf> {
        let scene = self.scenes.get(&scene_id)?;
        let image = scene.images.get(&im_id)?;
        let mask = |folder: &str, gt_idx: usize| {
            (gt_idx < image.gt.len()).then(|| {
                scene
                    .dir
                    .join(folder)
                    .join(format!("{im_id:06}_{gt_idx:06}.png"))
            })
        };
        match file {
            ImageFile::Rgb => {
                let png = scene.dir.join("rgb").join(format!("{im_id:06}.png"));
                let jpg = png.with_extension("jpg");
                Some(if !png.exists() && jpg.exists() {
                    jpg
                } else {
                    png
                })
            }
            ImageFile::Depth => Some(scene.dir.join("depth").join(format!("{im_id:06}.png"))),
            ImageFile::Mask { gt_idx } => mask("mask", gt_idx),
            ImageFile::MaskVisib { gt_idx } => mask("mask_visib", gt_idx),
        }
    }

    /// Reads the RGB image of `im_id` in `scene_id`, checking that it has the size of
    /// `camera.json` (its intrinsics are for that size).
    pub fn read_rgb(&self, scene_id: u32, im_id: u32) -> Result<RgbImage> {
        let path = self
            .image_file(scene_id, im_id, ImageFile::Rgb)
            .ok_or_else(|| Error::Dataset {
                path: self.root.clone(),
                detail: format!("scene {scene_id} has no image {im_id}"),
            })?;
        let rgb = read_rgb(&path)?;
        let expected = (self.camera.width, self.camera.height);
        if (rgb.width, rgb.height) != expected {
            return Err(Error::Image {
                path,
                reason: format!(
                    "it is {} x {}; the dataset's camera.json says {} x {}, the size its \
                     intrinsics are for",
                    rgb.width, rgb.height, expected.0, expected.1
                ),
            });
        }
        Ok(rgb)
    }

    /// Number of annotated object instances over all scenes.
    pub fn n_gt_instances(&self) -> usize {
        self.scenes
            .values()
            .flat_map(|s| s.images.values())
            .map(|image| image.gt.len())
            .sum()
    }
}

fn load_scene(dir: &Path, scene_id: u32, models: &ModelSet) -> Result<Scene> {
    let camera_path = dir.join("scene_camera.json");
    let gt_path = dir.join("scene_gt.json");
    let info_path = dir.join("scene_gt_info.json");
    let cameras = read_scene_camera(&camera_path)?;
    let mut gt = read_scene_gt(&gt_path)?;
    let mut gt_info = if info_path.exists() {
        Some(read_scene_gt_info(&info_path)?)
    } else {
        None
    };
    let mut images = BTreeMap::new();
    for (im_id, camera) in cameras {
        let instances = gt.remove(&im_id).unwrap_or_default();
        for (gt_idx, instance) in instances.iter().enumerate() {
            if models.get(instance.obj_id).is_none() {
                return Err(Error::Dataset {
                    path: gt_path.clone(),
                    detail: format!(
                        "image {im_id}, instance {gt_idx}: obj_id {} is not in models/models_info.json",
                        instance.obj_id
                    ),
                });
            }
        }
        let info = match gt_info.as_mut() {
            Some(all) => {
                let info = all.remove(&im_id).unwrap_or_default();
                if info.len() != instances.len() {
                    return Err(Error::Dataset {
                        path: info_path.clone(),
                        detail: format!(
                            "image {im_id}: expected {} entries (one per scene_gt.json instance), found {}",
                            instances.len(),
                            info.len()
                        ),
                    });
                }
                Some(info)
            }
            None => None,
        };
        images.insert(
            im_id,
            ImageAnnotations {
                camera,
                gt: instances,
                gt_info: info,
            },
        );
    }
    if let Some(im_id) = gt.keys().next() {
        return Err(Error::Dataset {
            path: gt_path,
            detail: format!("image {im_id} has annotations but no entry in scene_camera.json"),
        });
    }
    Ok(Scene {
        scene_id,
        dir: dir.to_path_buf(),
        images,
    })
}
