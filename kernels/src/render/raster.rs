//! The rasterizer's arithmetic: vertex projection, triangle coverage, depth and shading.
//!
//! This file is the specification the CUDA renderer (`kernels/cuda/render.cu`) follows
//! operation for operation, so that the two agree bit for bit when the CUDA code is
//! compiled without FMA contraction (`--fmad=false`):
//!
//! 1. Vertices go to the camera frame and are projected in `f32`; screen positions are
//!    snapped to fixed point with [`SUBPIXEL_BITS`] fractional bits. A vertex nearer than
//!    [`NEAR_M`] or projecting beyond [`GUARD_BAND_PX`] is invalid, and a triangle with an
//!    invalid vertex is not drawn (objects closer than 1 cm to the lens do not occur in
//!    this application, so triangles are dropped rather than clipped).
//! 2. Coverage: a pixel (u, v) is sampled at its centre, the integer coordinates (u, v)
//!    (OpenCV convention). Edge functions are exact in `i64`; pixels on an edge belong to
//!    the triangle only if the edge is a top or left edge, so two triangles that share an
//!    edge never both cover a pixel and leave no gap. Both windings are drawn, except that
//!    back faces of closed meshes (`Mesh::cull_back_faces`) are skipped: positive area.
//! 3. Depth: `1/z` is interpolated linearly in screen space (exact for planar triangles),
//!    `z = area / sum(w_i / z_i)` in `f32`; fragments outside `[NEAR_M, FAR_M]` are dropped.
//! 4. Visibility: each pixel keeps the smallest 64-bit key `depth bits << 32 | instance <<
//!    24 | triangle`. Depth bits of positive floats order like the floats, so the nearest
//!    fragment wins and an exact tie goes to the lower instance, then the lower triangle,
//!    whatever order threads ran in.
//! 5. Shading reads the winning triangle back from the key. The albedo is the
//!    perspective-correct vertex colour or, for a textured mesh (`Mesh::with_texture`),
//!    the texture sampled at the perspective-correct texture coordinates (the same
//!    [`perspective_weights`]); then it is optionally Lambert-lit with the interpolated
//!    normal. Texture conventions ([`sample_bilinear`]): `u` grows to the right and `v`
//!    upwards (OBJ / PLY: `v = 0` is the bottom row of the image, stored last), so the
//!    texel coordinates are `x = u * width - 0.5`, `y = (1 - v) * height - 0.5` (texel
//!    centres at integers); bilinear filtering with weights in `f32`, clamped to the edge
//!    (coordinates outside `[0, 1]` repeat the border texels; no wrapping, no mipmaps).

/// Near plane, metres (CosyPose's `Camera` default).
pub const NEAR_M: f32 = 0.01;
/// Far plane, metres (CosyPose's `Camera` default).
pub const FAR_M: f32 = 10.0;
/// Fractional bits of the fixed-point screen coordinates.
pub const SUBPIXEL_BITS: u32 = 8;
/// Vertices must project within this many pixels of the image origin (keeps the edge
/// functions well inside `i64`).
pub const GUARD_BAND_PX: f32 = (1 << 20) as f32;
/// The key of a pixel no triangle covers.
pub const EMPTY_KEY: u64 = u64::MAX;
/// The most object instances one image may hold (the key keeps the index in 8 bits).
pub const MAX_INSTANCES_PER_IMAGE: usize = 255;

use super::mesh::Texture;

const SUBPIXEL_SCALE: f32 = (1 << SUBPIXEL_BITS) as f32;
const SUBPIXEL_ONE: i64 = 1 << SUBPIXEL_BITS;
const INVALID_INV_Z: f32 = -1.0;

/// A vertex after projection: fixed-point pixel position, `1 / z`, and its normal in the
/// camera frame.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProjectedVertex {
    /// Column, in 1/256 pixel.
    pub x_fp: i32,
    /// Row, in 1/256 pixel.
    pub y_fp: i32,
    /// `1 / z` in 1/metres; negative when the vertex is invalid (see module docs).
    pub inv_z: f32,
    /// Unit normal in the camera frame.
    pub normal: [f32; 3],
}

impl ProjectedVertex {
    /// Whether triangles using this vertex may be drawn.
    #[inline]
    pub fn is_valid(&self) -> bool {
        self.inv_z > 0.0
    }
}

/// The projection of one object instance: `camera_from_object` and K, in `f32`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Projection {
    /// Row-major rotation.
    pub rotation: [f32; 9],
    /// Translation, metres.
    pub translation_m: [f32; 3],
    /// Focal length along columns.
    pub fx: f32,
    /// Skew (`K[0][1]`).
    pub skew: f32,
    /// Principal point, column.
    pub cx: f32,
    /// Focal length along rows.
    pub fy: f32,
    /// Principal point, row.
    pub cy: f32,
}

/// Step 1: a vertex to the camera frame and the screen.
#[inline]
pub fn project_vertex(p: &Projection, position_m: [f32; 3], normal: [f32; 3]) -> ProjectedVertex {
    let r = &p.rotation;
    let [x, y, z] = position_m;
    let xc = r[0] * x + r[1] * y + r[2] * z + p.translation_m[0];
    let yc = r[3] * x + r[4] * y + r[5] * z + p.translation_m[1];
    let zc = r[6] * x + r[7] * y + r[8] * z + p.translation_m[2];
    let [nx, ny, nz] = normal;
    let normal_camera = [
        r[0] * nx + r[1] * ny + r[2] * nz,
        r[3] * nx + r[4] * ny + r[5] * nz,
        r[6] * nx + r[7] * ny + r[8] * nz,
    ];
    let invalid = ProjectedVertex {
        x_fp: 0,
        y_fp: 0,
        inv_z: INVALID_INV_Z,
        normal: normal_camera,
    };
    // `zc < NEAR_M` would let NaN through.
    if zc.is_nan() || zc < NEAR_M {
        return invalid;
    }
    let inv_z = 1.0 / zc;
    let xn = xc * inv_z;
    let yn = yc * inv_z;
    let u = p.fx * xn + p.skew * yn + p.cx;
    let v = p.fy * yn + p.cy;
    // Written so that NaN fails the test.
    if !(u.abs() < GUARD_BAND_PX && v.abs() < GUARD_BAND_PX) {
        return invalid;
    }
    ProjectedVertex {
        x_fp: (u * SUBPIXEL_SCALE).round() as i32,
        y_fp: (v * SUBPIXEL_SCALE).round() as i32,
        inv_z,
        normal: normal_camera,
    }
}

/// A triangle set up for coverage tests, vertices ordered so that its area is positive.
#[derive(Debug, Clone, Copy)]
pub struct TriangleSetup {
    /// The three vertices, in positive-area order.
    pub vertices: [ProjectedVertex; 3],
    /// Twice the area in fixed point squared.
    pub area: i64,
    /// The edge functions opposite vertices a, b and c as linear functions of the pixel.
    pub edges: [EdgeEquation; 3],
    /// Bounding box in whole pixels, inclusive: `min_u, min_v, max_u, max_v`.
    pub bbox_px: [i64; 4],
}

/// An edge function as a linear function of the whole-pixel position:
/// `w(u, v) = step_u * u + step_v * v + at_origin`, exact in `i64`, with the top-left bias.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EdgeEquation {
    /// Change of `w` from one column to the next.
    pub step_u: i64,
    /// Change of `w` from one row to the next.
    pub step_v: i64,
    /// `w` at pixel (0, 0).
    pub at_origin: i64,
    /// 0 for a top or left edge, -1 otherwise: a pixel is covered when `w + bias >= 0`
    /// for all three edges.
    pub bias: i64,
}

impl EdgeEquation {
    /// The equation of `E_pq` (see [`edge_function`]).
    fn new(p: &ProjectedVertex, q: &ProjectedVertex) -> Self {
        let (px, py) = (i64::from(p.x_fp), i64::from(p.y_fp));
        let (dx, dy) = (i64::from(q.x_fp) - px, i64::from(q.y_fp) - py);
        // E(s) = dx (sy - py) - dy (sx - px) = -dy sx + dx sy + (dy px - dx py).
        Self {
            step_u: -dy * SUBPIXEL_ONE,
            step_v: dx * SUBPIXEL_ONE,
            at_origin: dy * px - dx * py,
            bias: if is_top_left(p, q) { 0 } else { -1 },
        }
    }

    /// `w` at pixel (u, v).
    #[inline]
    pub fn at(&self, u: i64, v: i64) -> i64 {
        self.step_u * u + self.step_v * v + self.at_origin
    }
}

/// Steps 1-2: the setup of a triangle, or `None` when it covers no pixel centre (an
/// invalid vertex, zero area, or a bounding box between pixel centres) or when it faces
/// away from the camera and `cull_back_faces` (see [`crate::render::Mesh::cull_back_faces`]).
#[inline]
pub fn setup_triangle(
    a: ProjectedVertex,
    b: ProjectedVertex,
    c: ProjectedVertex,
    cull_back_faces: bool,
) -> Option<TriangleSetup> {
    if !(a.is_valid() && b.is_valid() && c.is_valid()) {
        return None;
    }
    let area = edge_function(&a, &b, i64::from(c.x_fp), i64::from(c.y_fp));
    // With y pointing down, a triangle wound counter-clockwise seen from outside the
    // object has a negative area when it faces the camera.
    if cull_back_faces && area > 0 {
        return None;
    }
    let (vertices, area) = match area {
        0 => return None,
        a_pos if a_pos > 0 => ([a, b, c], a_pos),
        a_neg => ([a, c, b], -a_neg),
    };
    let xs = vertices.map(|v| i64::from(v.x_fp));
    let ys = vertices.map(|v| i64::from(v.y_fp));
    let min = |values: [i64; 3]| values[0].min(values[1]).min(values[2]);
    let max = |values: [i64; 3]| values[0].max(values[1]).max(values[2]);
    let bbox_px = [
        ceil_div(min(xs), SUBPIXEL_ONE),
        ceil_div(min(ys), SUBPIXEL_ONE),
        max(xs).div_euclid(SUBPIXEL_ONE),
        max(ys).div_euclid(SUBPIXEL_ONE),
    ];
    // Most triangles of a dense mesh are about a pixel in size: many hold no pixel centre.
    if bbox_px[0] > bbox_px[2] || bbox_px[1] > bbox_px[3] {
        return None;
    }
    let [a, b, c] = &vertices;
    Some(TriangleSetup {
        vertices,
        area,
        edges: [
            EdgeEquation::new(b, c),
            EdgeEquation::new(c, a),
            EdgeEquation::new(a, b),
        ],
        bbox_px,
    })
}

#[inline]
fn ceil_div(value: i64, divisor: i64) -> i64 {
    -((-value).div_euclid(divisor))
}

/// `E_pq(s) = (q.x - p.x)(s.y - p.y) - (q.y - p.y)(s.x - p.x)`: positive on the
/// interior side of edge p -> q for a positive-area triangle.
#[inline]
fn edge_function(p: &ProjectedVertex, q: &ProjectedVertex, sx: i64, sy: i64) -> i64 {
    let (px, py) = (i64::from(p.x_fp), i64::from(p.y_fp));
    (i64::from(q.x_fp) - px) * (sy - py) - (i64::from(q.y_fp) - py) * (sx - px)
}

/// Top-left rule for edge p -> q of a positive-area triangle (y grows downwards).
#[inline]
fn is_top_left(p: &ProjectedVertex, q: &ProjectedVertex) -> bool {
    let dy = i64::from(q.y_fp) - i64::from(p.y_fp);
    let dx = i64::from(q.x_fp) - i64::from(p.x_fp);
    dy < 0 || (dy == 0 && dx > 0)
}

/// Edge functions of a triangle at one pixel centre: `[w_a, w_b, w_c]`, the weights of
/// vertices a, b and c (they sum to the area).
#[cfg(test)]
pub fn edge_weights(t: &TriangleSetup, u: i64, v: i64) -> [i64; 3] {
    t.edges.map(|edge| edge.at(u, v))
}

/// Step 2 (the renderer walks biased edge values instead; the same test): whether the
/// pixel centre with these edge weights is covered: inside all three
/// edges, or on an edge that is a top or left edge.
#[cfg(test)]
pub fn covers(t: &TriangleSetup, weights: [i64; 3]) -> bool {
    ((weights[0] + t.edges[0].bias)
        | (weights[1] + t.edges[1].bias)
        | (weights[2] + t.edges[2].bias))
        >= 0
}

/// Step 3: the fragment depth in metres, or `None` outside `[NEAR_M, FAR_M]`.
#[inline]
pub fn fragment_depth_m(t: &TriangleSetup, weights: [i64; 3]) -> Option<f32> {
    let [a, b, c] = &t.vertices;
    let inv_z_sum =
        weights[0] as f32 * a.inv_z + weights[1] as f32 * b.inv_z + weights[2] as f32 * c.inv_z;
    let z = t.area as f32 / inv_z_sum;
    (NEAR_M..=FAR_M).contains(&z).then_some(z)
}

/// Step 4: the visibility key of a fragment.
#[inline]
pub fn visibility_key(depth_m: f32, instance: usize, triangle: usize) -> u64 {
    (u64::from(depth_m.to_bits()) << 32) | ((instance as u64) << 24) | triangle as u64
}

/// The parts of a visibility key: depth in metres, instance, triangle.
#[inline]
pub fn decode_key(key: u64) -> (f32, usize, usize) {
    (
        f32::from_bits((key >> 32) as u32),
        ((key >> 24) & 0xff) as usize,
        (key & 0xff_ffff) as usize,
    )
}

/// Perspective-correct barycentric weights of a triangle's corners (in the mesh's corner
/// order, whatever the winding) at pixel (u, v): the screen-space edge weights times each
/// corner's `1 / z`, normalised. The winding's sign cancels in the ratio.
#[inline]
pub fn perspective_weights(corners: &[ProjectedVertex; 3], u: i64, v: i64) -> [f32; 3] {
    let (sx, sy) = (u * SUBPIXEL_ONE, v * SUBPIXEL_ONE);
    let [a, b, c] = corners;
    let q = [
        edge_function(b, c, sx, sy) as f32 * a.inv_z,
        edge_function(c, a, sx, sy) as f32 * b.inv_z,
        edge_function(a, b, sx, sy) as f32 * c.inv_z,
    ];
    let sum = q[0] + q[1] + q[2];
    [q[0] / sum, q[1] / sum, q[2] / sum]
}

/// Shading of the rendered colour.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Shading {
    /// The vertex colour as it is (flat albedo): what happypose's Panda3D renderer does
    /// with its ambient-only light.
    Albedo,
    /// Lambert: `colour * (ambient + diffuse * max(0, n . l))` with a directional light.
    Lambert(Light),
}

impl Default for Shading {
    /// Lambert with [`Light::default`]: CosyPose's networks were trained on pybullet
    /// renders lit by pybullet's default ambient + diffuse light, so shaded renders are
    /// closer to what they saw than flat albedo.
    fn default() -> Self {
        Shading::Lambert(Light::default())
    }
}

/// A directional light plus ambient, in the camera frame.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Light {
    /// Unit vector from the surface towards the light, camera frame.
    pub towards_light_camera: [f32; 3],
    /// Ambient coefficient.
    pub ambient: f32,
    /// Diffuse coefficient.
    pub diffuse: f32,
}

impl Default for Light {
    /// A head light (from the camera, along the optical axis) with pybullet's default
    /// coefficients for its renderers: ambient 0.6, diffuse 0.35.
    fn default() -> Self {
        Self {
            towards_light_camera: [0.0, 0.0, -1.0],
            ambient: 0.6,
            diffuse: 0.35,
        }
    }
}

/// Step 5: the colour of a pixel from the corner colours and normals of the winning
/// triangle, its perspective weights, and the pixel's viewing ray (camera frame, any
/// length): [`shade_albedo`] of the interpolated colour.
#[cfg(test)]
pub fn shade(
    shading: &Shading,
    weights: [f32; 3],
    colors: [[f32; 3]; 3],
    normals: [[f32; 3]; 3],
    ray: [f32; 3],
) -> [u8; 3] {
    shade_albedo(shading, interpolate(weights, colors), weights, normals, ray)
}

/// Step 5: `weights[0] * values[0] + weights[1] * values[1] + weights[2] * values[2]`
/// per component, left to right (vertex colours, texture coordinates).
#[inline]
pub fn interpolate<const N: usize>(weights: [f32; 3], values: [[f32; N]; 3]) -> [f32; N] {
    let mut out = [0.0_f32; N];
    for (component, value) in out.iter_mut().enumerate() {
        *value = weights[0] * values[0][component]
            + weights[1] * values[1][component]
            + weights[2] * values[2][component];
    }
    out
}

/// Step 5: the texture's colour at `uv` (`0.0..=255.0` per channel), bilinear and
/// clamped to the edge, in this order of operations (see the module docs):
/// `x = u * width - 0.5`, `y = (1 - v) * height - 0.5`; `fx = x - floor(x)`,
/// `fy = y - floor(y)`; columns `floor(x)` and `floor(x) + 1`, rows `floor(y)` and
/// `floor(y) + 1`, each clamped to the texture with `max(0)` then `min(side - 1)` in `f32`
/// (NaN becomes 0) and truncated to an integer; weights `(1 - fx)(1 - fy)`, `fx (1 - fy)`,
/// `(1 - fx) fy`, `fx fy`; the colour `w00 t00 + w10 t10 + w01 t01 + w11 t11`, left to
/// right, with the texels converted exactly to `f32`.
#[inline]
pub fn sample_bilinear(texture: &Texture, uv: [f32; 2]) -> [f32; 3] {
    let (width, height) = (texture.width(), texture.height());
    let x = uv[0] * width as f32 - 0.5;
    let y = (1.0 - uv[1]) * height as f32 - 0.5;
    let x_floor = x.floor();
    let y_floor = y.floor();
    let fx = x - x_floor;
    let fy = y - y_floor;
    // Sides are at most 2^14: `side - 1` is exact in f32, and so are the clamped values.
    let last_x = (width - 1) as f32;
    let last_y = (height - 1) as f32;
    let x0 = x_floor.max(0.0).min(last_x) as usize;
    let x1 = (x_floor + 1.0).max(0.0).min(last_x) as usize;
    let y0 = y_floor.max(0.0).min(last_y) as usize;
    let y1 = (y_floor + 1.0).max(0.0).min(last_y) as usize;
    let rgb = texture.rgb();
    let t00 = rgb[y0 * width + x0];
    let t10 = rgb[y0 * width + x1];
    let t01 = rgb[y1 * width + x0];
    let t11 = rgb[y1 * width + x1];
    let w00 = (1.0 - fx) * (1.0 - fy);
    let w10 = fx * (1.0 - fy);
    let w01 = (1.0 - fx) * fy;
    let w11 = fx * fy;
    let mut out = [0.0_f32; 3];
    for (channel, value) in out.iter_mut().enumerate() {
        *value = w00 * f32::from(t00[channel])
            + w10 * f32::from(t10[channel])
            + w01 * f32::from(t01[channel])
            + w11 * f32::from(t11[channel]);
    }
    out
}

/// Step 5: the colour of a pixel from its albedo (`0.0..=255.0`, interpolated colour or
/// texture sample), the corner normals of the winning triangle, its perspective weights
/// and the pixel's viewing ray (camera frame, any length). Normals facing away from the
/// camera are flipped, so back faces of open meshes are lit like front faces.
#[inline]
pub fn shade_albedo(
    shading: &Shading,
    albedo: [f32; 3],
    weights: [f32; 3],
    normals: [[f32; 3]; 3],
    ray: [f32; 3],
) -> [u8; 3] {
    let mut rgb = albedo;
    if let Shading::Lambert(light) = shading {
        let mut n = [0.0_f32; 3];
        for (axis, value) in n.iter_mut().enumerate() {
            *value = weights[0] * normals[0][axis]
                + weights[1] * normals[1][axis]
                + weights[2] * normals[2][axis];
        }
        let length = (n[0] * n[0] + n[1] * n[1] + n[2] * n[2]).sqrt();
        let facing = n[0] * ray[0] + n[1] * ray[1] + n[2] * ray[2];
        let sign = if facing > 0.0 { -1.0 } else { 1.0 };
        let l = &light.towards_light_camera;
        let n_dot_l = if length > 0.0 {
            sign * (n[0] * l[0] + n[1] * l[1] + n[2] * l[2]) / length
        } else {
            0.0
        };
        let intensity = light.ambient + light.diffuse * n_dot_l.max(0.0);
        for value in &mut rgb {
            *value *= intensity;
        }
    }
    // Round half up (the values are not negative): cheaper than `round`, which is a
    // library call on x86_64, and the same on the GPU.
    rgb.map(|value| (value.clamp(0.0, 255.0) + 0.5) as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vertex(u: f32, v: f32, z: f32) -> ProjectedVertex {
        ProjectedVertex {
            x_fp: (u * SUBPIXEL_SCALE).round() as i32,
            y_fp: (v * SUBPIXEL_SCALE).round() as i32,
            inv_z: 1.0 / z,
            normal: [0.0, 0.0, -1.0],
        }
    }

    fn covered_pixels(t: &TriangleSetup) -> Vec<(i64, i64)> {
        let [u0, v0, u1, v1] = t.bbox_px;
        let mut pixels = Vec::new();
        for v in v0..=v1 {
            for u in u0..=u1 {
                if covers(t, edge_weights(t, u, v)) {
                    pixels.push((u, v));
                }
            }
        }
        pixels
    }

    #[test]
    fn two_triangles_sharing_an_edge_cover_each_pixel_once() {
        // A square from (0.5, 0.5) to (10.5, 10.5) cut along a diagonal that passes
        // through pixel centres: each of the 100 centres inside lands in exactly one half.
        let [a, b, c, d] = [
            vertex(0.5, 0.5, 1.0),
            vertex(10.5, 0.5, 1.0),
            vertex(10.5, 10.5, 1.0),
            vertex(0.5, 10.5, 1.0),
        ];
        let first = setup_triangle(a, b, c, false).unwrap();
        let second = setup_triangle(a, c, d, false).unwrap();
        let mut all = covered_pixels(&first);
        all.extend(covered_pixels(&second));
        all.sort_unstable();
        let before = all.len();
        all.dedup();
        assert_eq!(before, all.len(), "a pixel was covered twice");
        assert_eq!(all.len(), 100);
    }

    #[test]
    fn pixels_exactly_on_a_shared_edge_go_to_one_side_only() {
        // Square with corners on pixel centres: its edges run through centres.
        let [a, b, c, d] = [
            vertex(0.0, 0.0, 1.0),
            vertex(4.0, 0.0, 1.0),
            vertex(4.0, 4.0, 1.0),
            vertex(0.0, 4.0, 1.0),
        ];
        // Opposite windings too: coverage does not depend on the winding.
        let first = setup_triangle(a, c, b, false).unwrap();
        let second = setup_triangle(a, c, d, false).unwrap();
        let mut all = covered_pixels(&first);
        all.extend(covered_pixels(&second));
        all.sort_unstable();
        let before = all.len();
        all.dedup();
        assert_eq!(before, all.len(), "the diagonal was covered twice");
        // Top-left rule: rows 0..4 and columns 0..4 (the top and left borders are in,
        // the bottom and right ones out).
        assert_eq!(all.len(), 16);
        assert!(all
            .iter()
            .all(|&(u, v)| (0..4).contains(&u) && (0..4).contains(&v)));
    }

    #[test]
    fn edge_equations_equal_the_edge_functions() {
        let t = setup_triangle(
            vertex(3.3, -1.7, 1.0),
            vertex(-20.1, 40.9, 1.0),
            vertex(55.55, 12.25, 1.0),
            false,
        )
        .unwrap();
        let [a, b, c] = &t.vertices;
        for (u, v) in [(0, 0), (-5, 7), (13, 11), (1000, -300)] {
            let (sx, sy) = (u * SUBPIXEL_ONE, v * SUBPIXEL_ONE);
            assert_eq!(
                edge_weights(&t, u, v),
                [
                    edge_function(b, c, sx, sy),
                    edge_function(c, a, sx, sy),
                    edge_function(a, b, sx, sy)
                ]
            );
        }
    }

    #[test]
    fn depth_is_exact_for_a_fronto_parallel_triangle() {
        let t = setup_triangle(
            vertex(0.0, 0.0, 0.75),
            vertex(9.0, 0.0, 0.75),
            vertex(0.0, 9.0, 0.75),
            false,
        )
        .unwrap();
        for (u, v) in covered_pixels(&t) {
            let depth = fragment_depth_m(&t, edge_weights(&t, u, v)).unwrap();
            assert!((depth - 0.75).abs() <= 1e-7, "{depth}");
        }
    }

    #[test]
    fn keys_order_by_depth_then_instance_then_triangle() {
        assert!(visibility_key(0.5, 9, 9) < visibility_key(0.6, 0, 0));
        assert!(visibility_key(0.5, 1, 9) < visibility_key(0.5, 2, 0));
        assert!(visibility_key(0.5, 1, 3) < visibility_key(0.5, 1, 4));
        assert!(visibility_key(FAR_M, 254, 0xff_ffff) < EMPTY_KEY);
        assert_eq!(decode_key(visibility_key(0.5, 7, 12345)), (0.5, 7, 12345));
    }

    #[test]
    fn vertices_behind_the_near_plane_are_invalid() {
        let projection = Projection {
            rotation: [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
            translation_m: [0.0; 3],
            fx: 500.0,
            skew: 0.0,
            cx: 320.0,
            fy: 500.0,
            cy: 240.0,
        };
        assert!(!project_vertex(&projection, [0.0, 0.0, 0.005], [0.0; 3]).is_valid());
        assert!(!project_vertex(&projection, [0.0, 0.0, -1.0], [0.0; 3]).is_valid());
        assert!(!project_vertex(&projection, [f32::NAN, 0.0, 1.0], [0.0; 3]).is_valid());
        let centre = project_vertex(&projection, [0.0, 0.0, 2.0], [0.0; 3]);
        assert_eq!((centre.x_fp, centre.y_fp), (320 * 256, 240 * 256));
        assert_eq!(centre.inv_z, 0.5);
    }

    #[test]
    fn albedo_and_lambert_shading() {
        let weights = [1.0, 0.0, 0.0];
        let colors = [[200.0, 100.0, 50.0]; 3];
        let towards_camera = [[0.0, 0.0, -1.0]; 3];
        let ray = [0.0, 0.0, 1.0];
        assert_eq!(
            shade(&Shading::Albedo, weights, colors, towards_camera, ray),
            [200, 100, 50]
        );
        // Head light on a surface facing the camera: ambient + diffuse = 0.95.
        assert_eq!(
            shade(&Shading::default(), weights, colors, towards_camera, ray),
            [190, 95, 48]
        );
        // A normal facing away is flipped: same result.
        let away = [[0.0, 0.0, 1.0]; 3];
        assert_eq!(
            shade(&Shading::default(), weights, colors, away, ray),
            [190, 95, 48]
        );
        // Grazing light: ambient only.
        let sideways = [[1.0, 0.0, 0.0]; 3];
        assert_eq!(
            shade(&Shading::default(), weights, colors, sideways, ray),
            [120, 60, 30]
        );
    }
}
