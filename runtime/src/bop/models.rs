//! Object models: `models_info.json` and the `obj_XXXXXX.ply` meshes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use posed_kernels::symmetry::{ContinuousSymmetry, ObjectSymmetries};
use posed_kernels::Pose;
use rayon::prelude::*;
use serde::Deserialize;

use super::json::{all_finite, check_rotation, invalid, read_json};
use super::ply::{read_ply, PlyMesh};
use crate::{Error, Result};

/// Millimetres to metres.
pub const MM_TO_M: f64 = 0.001;

#[derive(Debug, Deserialize)]
struct ModelInfoFile {
    diameter: f64,
    min_x: f64,
    min_y: f64,
    min_z: f64,
    size_x: f64,
    size_y: f64,
    size_z: f64,
    #[serde(default)]
    symmetries_discrete: Vec<[f64; 16]>,
    #[serde(default)]
    symmetries_continuous: Vec<ContinuousSymmetryFile>,
}

#[derive(Debug, Deserialize)]
struct ContinuousSymmetryFile {
    axis: [f64; 3],
    offset: [f64; 3],
}

/// One entry of `models_info.json`, in metres.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelInfo {
    /// Largest distance between two vertices, metres.
    pub diameter_m: f64,
    /// Minimum corner of the axis-aligned bounding box, metres.
    pub min_m: [f64; 3],
    /// Size of the axis-aligned bounding box, metres.
    pub size_m: [f64; 3],
    /// Annotated symmetries (translations in metres).
    pub symmetries: ObjectSymmetries,
}

impl ModelInfo {
    /// The 8 corners of the axis-aligned bounding box (CosyPose's `aabb` points).
    pub fn aabb_corners_m(&self) -> [[f64; 3]; 8] {
        let mut corners = [[0.0; 3]; 8];
        for (i, corner) in corners.iter_mut().enumerate() {
            for (axis, value) in corner.iter_mut().enumerate() {
                let upper = (i >> axis) & 1 == 1;
                *value = self.min_m[axis] + if upper { self.size_m[axis] } else { 0.0 };
            }
        }
        corners
    }
}

/// Reads `models_info.json`: object id -> info.
pub fn read_models_info(path: &Path) -> Result<BTreeMap<u32, ModelInfo>> {
    let raw: BTreeMap<u32, ModelInfoFile> = read_json(path)?;
    raw.into_iter()
        .map(|(obj_id, entry)| Ok((obj_id, convert_model_info(path, obj_id, entry)?)))
        .collect()
}

/// The most symmetries an object may declare. BOP's objects have at most one continuous
/// symmetry and a few dozen discrete ones.
const MAX_CONTINUOUS_SYMMETRIES: usize = 3;
/// See [`MAX_CONTINUOUS_SYMMETRIES`].
const MAX_DISCRETE_SYMMETRIES: usize = 256;

fn convert_model_info(path: &Path, obj_id: u32, entry: ModelInfoFile) -> Result<ModelInfo> {
    let scalars = [
        entry.diameter,
        entry.min_x,
        entry.min_y,
        entry.min_z,
        entry.size_x,
        entry.size_y,
        entry.size_z,
    ];
    if !all_finite(&scalars) || entry.diameter <= 0.0 {
        return Err(invalid(
            path,
            format!(
                "object {obj_id}: expected a positive finite diameter and finite min/size values, found diameter {}",
                entry.diameter
            ),
        ));
    }
    if [entry.size_x, entry.size_y, entry.size_z]
        .iter()
        .any(|&v| v < 0.0)
    {
        return Err(invalid(
            path,
            format!(
                "object {obj_id}: expected box sizes of 0 or more, found size_x {}, size_y {}, size_z {}",
                entry.size_x, entry.size_y, entry.size_z
            ),
        ));
    }
    // Every metric composes each discrete symmetry with every sample of the continuous
    // ones (315 per axis for BOP19): a few bytes of JSON must not ask for gigabytes.
    let (n_discrete, n_continuous) = (
        entry.symmetries_discrete.len(),
        entry.symmetries_continuous.len(),
    );
    if n_continuous > MAX_CONTINUOUS_SYMMETRIES || n_discrete > MAX_DISCRETE_SYMMETRIES {
        return Err(invalid(
            path,
            format!(
                "object {obj_id}: {n_discrete} discrete and {n_continuous} continuous symmetries; \
                 posed takes at most {MAX_DISCRETE_SYMMETRIES} discrete and \
                 {MAX_CONTINUOUS_SYMMETRIES} continuous ones"
            ),
        ));
    }
    let mut discrete = Vec::new();
    for (index, m) in entry.symmetries_discrete.iter().enumerate() {
        let context = format!("object {obj_id}, symmetries_discrete[{index}]");
        if !all_finite(m) || m[12..15] != [0.0, 0.0, 0.0] || m[15] != 1.0 {
            return Err(invalid(
                path,
                format!("{context}: expected a rigid 4x4 matrix, row-major, last row 0 0 0 1"),
            ));
        }
        let rotation = [m[0], m[1], m[2], m[4], m[5], m[6], m[8], m[9], m[10]];
        let symmetry =
            Pose::from_row_major(&rotation, [m[3] * MM_TO_M, m[7] * MM_TO_M, m[11] * MM_TO_M]);
        check_rotation(&symmetry).map_err(|why| invalid(path, format!("{context}: {why}")))?;
        discrete.push(symmetry);
    }
    let mut continuous = Vec::new();
    for (index, symmetry) in entry.symmetries_continuous.iter().enumerate() {
        let norm = symmetry.axis.iter().map(|v| v * v).sum::<f64>().sqrt();
        if !all_finite(&symmetry.axis) || !all_finite(&symmetry.offset) || norm < 1e-9 {
            return Err(invalid(
                path,
                format!(
                    "object {obj_id}, symmetries_continuous[{index}]: expected a non-zero finite axis and a finite offset"
                ),
            ));
        }
        continuous.push(ContinuousSymmetry {
            axis: symmetry.axis,
            offset_m: symmetry.offset.map(|v| v * MM_TO_M),
        });
    }
    Ok(ModelInfo {
        diameter_m: entry.diameter * MM_TO_M,
        min_m: [entry.min_x, entry.min_y, entry.min_z].map(|v| v * MM_TO_M),
        size_m: [entry.size_x, entry.size_y, entry.size_z].map(|v| v * MM_TO_M),
        symmetries: ObjectSymmetries {
            discrete,
            continuous,
        },
    })
}

/// An object of a BOP dataset: its `models_info.json` entry and its mesh.
#[derive(Debug, Clone)]
pub struct ObjectModel {
    /// BOP object id.
    pub obj_id: u32,
    /// The PLY file the mesh came from.
    pub mesh_path: PathBuf,
    /// Diameter, bounding box and symmetries.
    pub info: ModelInfo,
    /// The mesh, with positions converted to metres (`mesh.positions` is in metres).
    pub mesh: PlyMesh,
}

/// The objects of a dataset, by id.
#[derive(Debug, Clone, Default)]
pub struct ModelSet {
    /// Object id -> model.
    pub objects: BTreeMap<u32, ObjectModel>,
}

impl ModelSet {
    /// Loads `models_info.json` and every `obj_XXXXXX.ply` it lists from a BOP models
    /// folder; the meshes are read in parallel.
    pub fn load(models_dir: &Path) -> Result<Self> {
        let infos = read_models_info(&models_dir.join("models_info.json"))?;
        let objects = infos
            .into_par_iter()
            .map(|(obj_id, info)| {
                let mesh_path = models_dir.join(format!("obj_{obj_id:06}.ply"));
                let mut mesh = read_ply(&mesh_path)?;
                if mesh.positions.is_empty() {
                    return Err(Error::Ply {
                        path: mesh_path,
                        detail: "the mesh has no vertices".into(),
                    });
                }
                for position in &mut mesh.positions {
                    *position = position.map(|v| v * MM_TO_M);
                }
                Ok((
                    obj_id,
                    ObjectModel {
                        obj_id,
                        mesh_path,
                        info,
                        mesh,
                    },
                ))
            })
            .collect::<Result<BTreeMap<_, _>>>()?;
        Ok(Self { objects })
    }

    /// The model of `obj_id`, if the dataset has it.
    pub fn get(&self, obj_id: u32) -> Option<&ObjectModel> {
        self.objects.get(&obj_id)
    }
}
