//! The model points CosyPose projects to place crops and to pick the auto-depth initial
//! pose (spec A.2, A.6): every object's vertices in metres, padded to the longest mesh by
//! repeating random vertices (`MeshDataBase.batched`, one `RandomState(0)` across the
//! objects in id order), then the same 2,000 indices of `RandomState(0).choice(n_padded,
//! 2000, replace=False)` for every object.
//!
//! CosyPose loads meshes with trimesh, which merges duplicate vertices; for the bundled
//! YCB meshes that changes nothing (checked with trimesh 5.2), and posed takes the PLY's
//! vertices as they are. A model set whose longest mesh has fewer than 2,000 vertices
//! (CosyPose asserts) uses all its padded vertices.

use std::collections::BTreeMap;

use posed_kernels::cosypose::sample::{
    choice_with_replacement, choice_without_replacement, Mt19937, CROP_POINTS,
};

use crate::bop::models::ModelSet;
use crate::{Error, Result};

/// The sampled points of every object, addressed by BOP object id.
#[derive(Debug, Clone)]
pub struct CropPoints {
    points_per_object: usize,
    index_of_object: BTreeMap<u32, usize>,
    /// `points_per_object` points per object, objects in id order.
    points_m: Vec<[f32; 3]>,
}

impl CropPoints {
    /// Pads and samples the vertices of every model, as CosyPose does.
    ///
    /// # Errors
    /// [`Error::Kernel`] for a model set too large for numpy's 32-bit draws (over 2^32
    /// vertices in one mesh) or with no objects.
    pub fn from_models(models: &ModelSet) -> Result<Self> {
        let kernel_error = |source| Error::Kernel {
            context: "sampling the crop points of the object models".to_string(),
            source,
        };
        let n_padded = models
            .objects
            .values()
            .map(|m| m.mesh.positions.len())
            .max()
            .ok_or_else(|| {
                kernel_error(posed_kernels::KernelError::Empty {
                    what: "object models",
                })
            })?;
        let points_per_object = CROP_POINTS.min(n_padded);
        let mut chosen = vec![0u32; points_per_object];
        let mut scratch = vec![0u32; n_padded];
        choice_without_replacement(0, n_padded, &mut scratch, &mut chosen).map_err(kernel_error)?;

        let mut padding_rng = Mt19937::new(0);
        let mut pad_ids = Vec::new();
        let mut index_of_object = BTreeMap::new();
        let mut points_m = Vec::with_capacity(points_per_object * models.objects.len());
        for (obj_id, model) in &models.objects {
            let vertices = &model.mesh.positions;
            pad_ids.resize(n_padded - vertices.len(), 0);
            choice_with_replacement(&mut padding_rng, vertices.len(), &mut pad_ids)
                .map_err(kernel_error)?;
            // CosyPose scales in f64, then casts the stacked points to f32.
            let padded = |i: usize| {
                let vertex = match i.checked_sub(vertices.len()) {
                    None => vertices[i],
                    Some(pad) => vertices[pad_ids[pad] as usize],
                };
                vertex.map(|v| v as f32)
            };
            index_of_object.insert(*obj_id, index_of_object.len());
            points_m.extend(chosen.iter().map(|&i| padded(i as usize)));
        }
        Ok(Self {
            points_per_object,
            index_of_object,
            points_m,
        })
    }

    /// The points of `obj_id` in metres, or `None` when the model set has no such object.
    pub fn get(&self, obj_id: u32) -> Option<&[[f32; 3]]> {
        let index = *self.index_of_object.get(&obj_id)?;
        let start = index * self.points_per_object;
        Some(&self.points_m[start..start + self.points_per_object])
    }

    /// Points per object (2,000 unless the meshes are smaller).
    pub fn points_per_object(&self) -> usize {
        self.points_per_object
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use serde::Deserialize;

    use super::*;

    #[derive(Deserialize)]
    struct Golden {
        n_padded: usize,
        objects: Vec<GoldenObject>,
    }

    #[derive(Deserialize)]
    struct GoldenObject {
        obj_id: u32,
        n_vertices: usize,
        first: Vec<[f32; 3]>,
        last: Vec<[f32; 3]>,
        sum: [f64; 3],
    }

    /// The points match what CosyPose's own code computes on the same meshes
    /// (`tools/cosypose_points.py`, numpy 2.4 and trimesh 5.2), bit for bit.
    #[test]
    fn match_cosypose_on_ycbv_mini() {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
        let models = ModelSet::load(&root.join("data/ycbv-mini/models")).expect("models");
        let text = std::fs::read_to_string(
            root.join("runtime/src/pipeline/testdata/crop_points_ycbv_mini.json"),
        )
        .expect("golden file");
        let golden: Golden = serde_json::from_str(&text).expect("golden json");
        let points = CropPoints::from_models(&models).expect("points");
        assert_eq!(points.points_per_object(), CROP_POINTS);
        let longest = models.objects.values().map(|m| m.mesh.positions.len());
        assert_eq!(longest.max(), Some(golden.n_padded));
        for object in &golden.objects {
            let model = models.get(object.obj_id).expect("model");
            assert_eq!(model.mesh.positions.len(), object.n_vertices);
            let ours = points.get(object.obj_id).expect("object points");
            assert_eq!(ours[..3], object.first[..], "obj {}", object.obj_id);
            assert_eq!(
                ours[CROP_POINTS - 3..],
                object.last[..],
                "obj {}",
                object.obj_id
            );
            for axis in 0..3 {
                let sum: f64 = ours.iter().map(|p| f64::from(p[axis])).sum();
                assert!(
                    (sum - object.sum[axis]).abs() < 1e-9,
                    "obj {} axis {axis}: {sum} vs {}",
                    object.obj_id,
                    object.sum[axis]
                );
            }
        }
        assert!(points.get(99).is_none());
    }
}
