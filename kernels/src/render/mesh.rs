//! Triangle meshes as the renderer draws them.

use crate::KernelError;

/// The most triangles one mesh may have: the visibility key keeps a triangle index in 24
/// bits (see `raster.rs`).
pub const MAX_TRIANGLES_PER_MESH: usize = 1 << 24;

/// The longest side of a texture, in texels (keeps texel coordinates exact in `f32` and
/// a texture's bytes indexable in 32 bits on the GPU).
pub const MAX_TEXTURE_SIDE: usize = 1 << 14;

/// A texture map: 8-bit RGB texels, row-major, row 0 the top of the image (as image
/// files store it).
#[derive(Debug, Clone, PartialEq)]
pub struct Texture {
    width: usize,
    height: usize,
    rgb: Vec<[u8; 3]>,
}

impl Texture {
    /// A `width` x `height` texture from its texels, row-major, top row first.
    ///
    /// # Errors
    /// [`KernelError::InvalidValue`] for a zero width or height;
    /// [`KernelError::LimitExceeded`] for a side longer than [`MAX_TEXTURE_SIDE`];
    /// [`KernelError::SizeMismatch`] when `rgb` does not hold `width * height` texels.
    pub fn new(width: usize, height: usize, rgb: Vec<[u8; 3]>) -> Result<Self, KernelError> {
        if width == 0 || height == 0 {
            return Err(KernelError::InvalidValue {
                what: "texture size",
                reason: "width and height must be at least 1",
            });
        }
        let side = width.max(height);
        if side > MAX_TEXTURE_SIDE {
            return Err(KernelError::LimitExceeded {
                what: "texture width or height, texels",
                limit: MAX_TEXTURE_SIDE,
                found: side,
            });
        }
        check_len("texture texels (width x height)", width * height, rgb.len())?;
        Ok(Self { width, height, rgb })
    }

    /// Width in texels.
    pub fn width(&self) -> usize {
        self.width
    }

    /// Height in texels.
    pub fn height(&self) -> usize {
        self.height
    }

    /// The texels, row-major, top row first.
    pub fn rgb(&self) -> &[[u8; 3]] {
        &self.rgb
    }
}

/// Texture coordinates `(u, v)` of a mesh: `u` grows to the right, `v` upwards (the
/// OBJ / PLY convention: `v = 0` is the bottom row of the image), `[0, 1]` spanning the
/// texture (see `sample_bilinear` in `raster.rs`).
#[derive(Debug, Clone, PartialEq)]
pub enum TextureCoords {
    /// One `(u, v)` per vertex.
    PerVertex(Vec<[f32; 2]>),
    /// One `(u, v)` per corner of each triangle, in the order of the triangles and
    /// corners given to [`Mesh::new`] (a PLY's face `texcoord`).
    PerCorner(Vec<[[f32; 2]; 3]>),
}

/// A triangle mesh ready to render: positions in metres (object frame), one unit normal
/// and one colour per vertex, triangles as vertex indices, and optionally a texture with
/// coordinates per triangle corner (then the texture, not the vertex colour, is the
/// albedo).
///
/// Built once per object model and kept for the life of the renderer.
#[derive(Debug, Clone, PartialEq)]
pub struct Mesh {
    positions_m: Vec<[f32; 3]>,
    normals: Vec<[f32; 3]>,
    colors: Vec<[f32; 3]>,
    triangles: Vec<[u32; 3]>,
    cull_back_faces: bool,
    /// Whether `new` swapped corners 1 and 2 of every triangle (a closed mesh wound
    /// inwards), so that per-corner data given later follows the same turn.
    turned: bool,
    texture: Option<Texture>,
    /// `(u, v)` of each corner of each triangle (in `triangles`' corner order) when
    /// `texture` is set, else empty.
    corner_uvs: Vec<[[f32; 2]; 3]>,
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
        let mut triangles = triangles;
        let volume = closed_surface_volume(&positions_m, &triangles);
        let turned = matches!(volume, Some(volume) if volume < 0.0);
        if turned {
            // Closed but wound inwards: turn every triangle around.
            for triangle in &mut triangles {
                triangle.swap(1, 2);
            }
        }
        let cull_back_faces = volume.is_some_and(|volume| volume != 0.0);
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
            cull_back_faces,
            turned,
            texture: None,
            corner_uvs: Vec::new(),
        })
    }

    /// The same mesh with a texture map as its albedo (replacing the vertex colours when
    /// rendered) and the texture coordinates of its vertices or triangle corners.
    ///
    /// # Errors
    /// [`KernelError::SizeMismatch`] when `uvs` do not have one entry per vertex
    /// ([`TextureCoords::PerVertex`]) or per triangle ([`TextureCoords::PerCorner`]);
    /// [`KernelError::NotFinite`] for a non-finite coordinate.
    pub fn with_texture(
        mut self,
        texture: Texture,
        uvs: TextureCoords,
    ) -> Result<Mesh, KernelError> {
        let corner_uvs: Vec<[[f32; 2]; 3]> = match uvs {
            TextureCoords::PerVertex(uvs) => {
                check_len(
                    "texture coordinates (one per vertex)",
                    self.positions_m.len(),
                    uvs.len(),
                )?;
                self.triangles
                    .iter()
                    .map(|triangle| triangle.map(|i| uvs[i as usize]))
                    .collect()
            }
            TextureCoords::PerCorner(mut uvs) => {
                check_len(
                    "texture coordinates (one triple per triangle)",
                    self.triangles.len(),
                    uvs.len(),
                )?;
                if self.turned {
                    for corners in &mut uvs {
                        corners.swap(1, 2);
                    }
                }
                uvs
            }
        };
        if corner_uvs
            .iter()
            .flatten()
            .flatten()
            .any(|v| !v.is_finite())
        {
            return Err(KernelError::NotFinite {
                what: "texture coordinates",
            });
        }
        self.texture = Some(texture);
        self.corner_uvs = corner_uvs;
        Ok(self)
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
        // Vertex 0 is the north pole, then rings 1..rings of `segments` vertices, then the
        // south pole: a closed surface, wound outwards.
        let color =
            |ring: u32, segment: u32| [(ring * 7 % 256) as u8, (segment * 13 % 256) as u8, 128];
        let mut positions = vec![[0.0, 0.0, radius_m]];
        let mut colors = vec![color(0, 0)];
        for ring in 1..rings {
            let theta = std::f32::consts::PI * ring as f32 / rings as f32;
            for segment in 0..segments {
                let phi = 2.0 * std::f32::consts::PI * segment as f32 / segments as f32;
                positions.push([
                    radius_m * theta.sin() * phi.cos(),
                    radius_m * theta.sin() * phi.sin(),
                    radius_m * theta.cos(),
                ]);
                colors.push(color(ring, segment));
            }
        }
        let south = positions.len() as u32;
        positions.push([0.0, 0.0, -radius_m]);
        colors.push(color(rings, 0));
        let at = |ring: u32, segment: u32| 1 + (ring - 1) * segments + segment % segments;
        let mut triangles = Vec::new();
        for segment in 0..segments {
            triangles.push([0, at(1, segment), at(1, segment + 1)]);
            triangles.push([south, at(rings - 1, segment + 1), at(rings - 1, segment)]);
        }
        for ring in 1..rings - 1 {
            for segment in 0..segments {
                let (a, b) = (at(ring, segment), at(ring, segment + 1));
                let (c, d) = (at(ring + 1, segment), at(ring + 1, segment + 1));
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

    /// Whether the renderer skips triangles facing away from the camera. True when the
    /// mesh is a closed surface (every edge shared by exactly two triangles, in opposite
    /// directions), whose triangles `new` turned to face outwards if they did not: then a
    /// back face is always hidden behind a front face, and skipping it changes nothing but
    /// the time. Open or inconsistently wound meshes draw both sides.
    pub fn cull_back_faces(&self) -> bool {
        self.cull_back_faces
    }

    /// The same mesh with back-face culling off (both sides of every triangle drawn).
    pub fn draw_both_sides(mut self) -> Self {
        self.cull_back_faces = false;
        self
    }

    /// Triangles as indices into the vertex lists.
    pub fn triangles(&self) -> &[[u32; 3]] {
        &self.triangles
    }

    /// The texture map, if the mesh has one (see [`Mesh::with_texture`]).
    pub fn texture(&self) -> Option<&Texture> {
        self.texture.as_ref()
    }

    /// Texture coordinates of each corner of each triangle, in the corner order of
    /// [`Mesh::triangles`]; empty when the mesh has no texture.
    pub fn corner_uvs(&self) -> &[[[f32; 2]; 3]] {
        &self.corner_uvs
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

/// The signed volume enclosed by the triangles if they form a closed, consistently wound
/// surface (positive when they face outwards), else `None`.
fn closed_surface_volume(positions: &[[f32; 3]], triangles: &[[u32; 3]]) -> Option<f64> {
    let mut directed_edges: Vec<(u32, u32)> = triangles
        .iter()
        .flat_map(|&[a, b, c]| [(a, b), (b, c), (c, a)])
        .collect();
    directed_edges.sort_unstable();
    // Closed and consistent: each directed edge once, and its reverse present.
    let unique = directed_edges.windows(2).all(|pair| pair[0] != pair[1]);
    let paired = directed_edges
        .iter()
        .all(|&(a, b)| directed_edges.binary_search(&(b, a)).is_ok());
    if !(unique && paired) {
        return None;
    }
    let volume6: f64 = triangles
        .iter()
        .map(|triangle| {
            let [a, b, c] = triangle.map(|i| positions[i as usize].map(f64::from));
            a[0] * (b[1] * c[2] - b[2] * c[1]) - a[1] * (b[0] * c[2] - b[2] * c[0])
                + a[2] * (b[0] * c[1] - b[1] * c[0])
        })
        .sum();
    Some(volume6 / 6.0)
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
    fn closed_meshes_cull_back_faces_and_are_turned_outwards() {
        let sphere = Mesh::uv_sphere(0.1, 8, 12).unwrap();
        assert!(sphere.cull_back_faces());
        let inward: Vec<[u32; 3]> = sphere
            .triangles()
            .iter()
            .map(|t| [t[0], t[2], t[1]])
            .collect();
        let turned = Mesh::new(sphere.positions_m().to_vec(), inward, None, None).unwrap();
        assert!(turned.cull_back_faces());
        assert_eq!(turned.triangles(), sphere.triangles());
        // An open mesh draws both sides.
        let (positions, triangles) = unit_triangle();
        assert!(!Mesh::new(positions, triangles, None, None)
            .unwrap()
            .cull_back_faces());
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
