//! Triangle meshes as the renderer draws them.

use crate::KernelError;

/// The most triangles one mesh may have: the visibility key keeps a triangle index in 24
/// bits (see `raster.rs`).
pub const MAX_TRIANGLES_PER_MESH: usize = 1 << 24;

/// A triangle mesh ready to render: positions in metres (object frame), one unit normal
/// and one colour per vertex, and triangles as vertex indices.
///
/// Built once per object model and kept for the life of the renderer.
#[derive(Debug, Clone, PartialEq)]
pub struct Mesh {
    positions_m: Vec<[f32; 3]>,
    normals: Vec<[f32; 3]>,
    colors: Vec<[f32; 3]>,
    triangles: Vec<[u32; 3]>,
}

/// Vertex colour of a mesh that has none: white, as CosyPose's URDF material.
pub const DEFAULT_VERTEX_COLOR: [u8; 3] = [255, 255, 255];

impl Mesh {
    /// Builds a mesh. `normals` (unit, outward) are computed from the faces when absent
    /// (area-weighted, as most mesh tools do); `colors_rgb` default to
    /// [`DEFAULT_VERTEX_COLOR`].
    ///
    /// # Errors
    /// [`KernelError::InvalidMesh`] for a mesh without vertices or triangles, a triangle
    /// index past the vertex list, a non-finite position or normal, or more than
    /// [`MAX_TRIANGLES_PER_MESH`] triangles; [`KernelError::SizeMismatch`] when normals or
    /// colours do not have one entry per vertex.
    pub fn new(
        positions_m: Vec<[f32; 3]>,
        triangles: Vec<[u32; 3]>,
        normals: Option<Vec<[f32; 3]>>,
        colors_rgb: Option<&[[u8; 3]]>,
    ) -> Result<Self, KernelError> {
        let invalid = |reason| Err(KernelError::InvalidMesh { reason });
        if positions_m.is_empty() {
            return invalid("no vertices");
        }
        if triangles.is_empty() {
            return invalid("no triangles");
        }
        if triangles.len() > MAX_TRIANGLES_PER_MESH {
            return Err(KernelError::LimitExceeded {
                what: "triangles in one mesh",
                limit: MAX_TRIANGLES_PER_MESH,
                found: triangles.len(),
            });
        }
        if positions_m.iter().flatten().any(|v| !v.is_finite()) {
            return invalid("a vertex position is not finite");
        }
        let vertex_count = positions_m.len();
        if triangles
            .iter()
            .flatten()
            .any(|&index| index as usize >= vertex_count)
        {
            return invalid("a triangle refers to a vertex past the end of the vertex list");
        }
        let normals = match normals {
            Some(normals) => {
                check_len("vertex normals", vertex_count, normals.len())?;
                if normals.iter().flatten().any(|v| !v.is_finite()) {
                    return invalid("a vertex normal is not finite");
                }
                normals
            }
            None => face_weighted_normals(&positions_m, &triangles),
        };
        let colors = match colors_rgb {
            Some(colors) => {
                check_len("vertex colours", vertex_count, colors.len())?;
                colors.iter().map(|c| c.map(f32::from)).collect()
            }
            None => vec![DEFAULT_VERTEX_COLOR.map(f32::from); vertex_count],
        };
        Ok(Self {
            positions_m,
            normals,
            colors,
            triangles,
        })
    }

    /// A UV sphere of `radius_m` around the origin with `rings` x `segments` quads and a
    /// colour pattern: a closed mesh with a known silhouette, for tests and benches.
    ///
    /// # Errors
    /// [`KernelError::InvalidMesh`] when `rings < 2` or `segments < 3`.
    pub fn uv_sphere(radius_m: f32, rings: u32, segments: u32) -> Result<Self, KernelError> {
        if rings < 2 || segments < 3 {
            return Err(KernelError::InvalidMesh {
                reason: "a UV sphere needs at least 2 rings and 3 segments",
            });
        }
        let mut positions = Vec::new();
        let mut colors = Vec::new();
        for ring in 0..=rings {
            let theta = std::f32::consts::PI * ring as f32 / rings as f32;
            for segment in 0..segments {
                let phi = 2.0 * std::f32::consts::PI * segment as f32 / segments as f32;
                positions.push([
                    radius_m * theta.sin() * phi.cos(),
                    radius_m * theta.sin() * phi.sin(),
                    radius_m * theta.cos(),
                ]);
                colors.push([(ring * 7 % 256) as u8, (segment * 13 % 256) as u8, 128]);
            }
        }
        let mut triangles = Vec::new();
        for ring in 0..rings {
            for segment in 0..segments {
                let next = (segment + 1) % segments;
                let (a, b) = (ring * segments + segment, ring * segments + next);
                let (c, d) = (
                    (ring + 1) * segments + segment,
                    (ring + 1) * segments + next,
                );
                triangles.push([a, c, b]);
                triangles.push([b, c, d]);
            }
        }
        Self::new(positions, triangles, None, Some(&colors))
    }

    /// Vertex positions in metres, object frame.
    pub fn positions_m(&self) -> &[[f32; 3]] {
        &self.positions_m
    }

    /// Unit vertex normals, object frame.
    pub fn normals(&self) -> &[[f32; 3]] {
        &self.normals
    }

    /// Vertex colours, RGB in `0.0..=255.0`.
    pub fn colors(&self) -> &[[f32; 3]] {
        &self.colors
    }

    /// Triangles as indices into the vertex lists.
    pub fn triangles(&self) -> &[[u32; 3]] {
        &self.triangles
    }
}

fn check_len(what: &'static str, expected: usize, found: usize) -> Result<(), KernelError> {
    if expected == found {
        Ok(())
    } else {
        Err(KernelError::SizeMismatch {
            what,
            expected,
            found,
        })
    }
}

/// Area-weighted vertex normals: the sum of the (unnormalised) cross products of the
/// faces around each vertex, normalised; `[0, 0, 0]` for a vertex on no face of area.
fn face_weighted_normals(positions: &[[f32; 3]], triangles: &[[u32; 3]]) -> Vec<[f32; 3]> {
    let mut sums = vec![[0.0_f64; 3]; positions.len()];
    for triangle in triangles {
        let [a, b, c] = triangle.map(|i| positions[i as usize].map(f64::from));
        let ab = [b[0] - a[0], b[1] - a[1], b[2] - a[2]];
        let ac = [c[0] - a[0], c[1] - a[1], c[2] - a[2]];
        let cross = [
            ab[1] * ac[2] - ab[2] * ac[1],
            ab[2] * ac[0] - ab[0] * ac[2],
            ab[0] * ac[1] - ab[1] * ac[0],
        ];
        for &index in triangle {
            let sum = &mut sums[index as usize];
            for axis in 0..3 {
                sum[axis] += cross[axis];
            }
        }
    }
    sums.iter()
        .map(|sum| {
            let length = (sum[0] * sum[0] + sum[1] * sum[1] + sum[2] * sum[2]).sqrt();
            if length > 0.0 {
                sum.map(|v| (v / length) as f32)
            } else {
                [0.0; 3]
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit_triangle() -> (Vec<[f32; 3]>, Vec<[u32; 3]>) {
        (
            vec![[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]],
            vec![[0, 1, 2]],
        )
    }

    #[test]
    fn normals_are_computed_from_faces_when_absent() {
        let (positions, triangles) = unit_triangle();
        let mesh = Mesh::new(positions, triangles, None, None).unwrap();
        assert_eq!(mesh.normals(), &[[0.0, 0.0, 1.0]; 3]);
        assert_eq!(mesh.colors(), &[[255.0; 3]; 3]);
    }

    #[test]
    fn bad_meshes_are_errors() {
        let (positions, _) = unit_triangle();
        assert!(matches!(
            Mesh::new(positions.clone(), vec![[0, 1, 3]], None, None),
            Err(KernelError::InvalidMesh { .. })
        ));
        assert!(matches!(
            Mesh::new(positions.clone(), vec![], None, None),
            Err(KernelError::InvalidMesh { .. })
        ));
        assert!(matches!(
            Mesh::new(positions.clone(), vec![[0, 1, 2]], None, Some(&[[1, 2, 3]])),
            Err(KernelError::SizeMismatch {
                expected: 3,
                found: 1,
                ..
            })
        ));
        let mut nan = positions;
        nan[1][2] = f32::NAN;
        assert!(matches!(
            Mesh::new(nan, vec![[0, 1, 2]], None, None),
            Err(KernelError::InvalidMesh { .. })
        ));
    }
}
