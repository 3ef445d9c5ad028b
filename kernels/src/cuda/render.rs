//! The renderer on the GPU: [`GpuRenderer`], the twin of
//! [`CpuRenderer`] (`kernels/cuda/render.cu`).
//!
//! The kernels repeat `render/raster.rs` operation for operation (f32 in the same order,
//! exact 64-bit edge functions, no FMA contraction, IEEE division and square root), and
//! the per-pixel visibility is the minimum of the same 64-bit keys, taken by `atomicMin`
//! in whatever order threads run: keys, depth, mask and colour are expected to be
//! bit-identical to the CPU renderer's. `tests/gpu_render_equivalence.rs` checks that on
//! a GPU; the unit tests below check, on any machine, that the host side (mesh tables,
//! batch packing, projections) and a line-by-line Rust transcription of the kernels give
//! the CPU renderer's bits.
//!
//! A frame goes: pack the batch's items and instances on the host (buffers reserved at
//! creation), copy them up, `clear_keys`, `project_vertices`, `raster_triangles`,
//! `shade_pixels`, copy rgb / depth / mask / keys of each item back into its
//! [`RenderTarget`], synchronise. Meshes are uploaded once, at creation.
//!
//! Not yet allocation-free: cudarc's launch builder collects its kernel arguments (and,
//! when the context tracks events, the events to wait on and record) in `Vec`s built per
//! launch, a few small heap allocations for each of the four kernels of a chunk. Removing
//! them needs our own `cuLaunchKernel` call with a fixed argument array, to be done when
//! the renderer moves onto the frame path; nothing else in [`GpuRenderer::render`]
//! allocates on the host.

use std::sync::Arc;

use cudarc::driver::{
    CudaFunction, CudaSlice, CudaStream, DeviceRepr, LaunchConfig, PushKernelArg, ValidAsZeroBits,
};

use super::{driver_error, guarded, CompiledImage, CudaDevice, RENDER_SOURCE};
use crate::render::{projection, CpuRenderer, Mesh, RenderItem, RenderTarget, Shading};
use crate::KernelError;

/// Threads per block of `project_vertices` and `raster_triangles`.
const BLOCK_GEOMETRY: u32 = 128;
/// Threads per block of `clear_keys` and `shade_pixels`.
const BLOCK_PIXELS: u32 = 256;
/// The most blocks along a grid's y dimension (instances, items) in one launch.
const MAX_GRID_Y: usize = 65_535;
/// Pixels are indexed in 32 bits, colour bytes (3 per pixel) too.
const MAX_PIXELS: usize = (u32::MAX / 3) as usize;
/// Mesh vertices and triangles are indexed in 32 bits, 3 values per entry.
const MAX_MESH_ENTRIES: usize = (u32::MAX / 3) as usize;
/// Texture bytes of all meshes are indexed in 32 bits.
const MAX_TEXTURE_BYTES: usize = u32::MAX as usize;
/// Corner UVs of textured triangles are indexed in 32 bits, 6 floats per triangle.
const MAX_UV_TRIANGLES: usize = (u32::MAX / 6) as usize;
/// A projected vertex in device memory (`PosedVertex` in `render.cu`): `x_fp`, `y_fp`,
/// `inv_z`, normal, as 32-bit words.
const PROJECTED_VERTEX_WORDS: usize = 6;

/// One mesh in the concatenated vertex and triangle arrays (`PosedMesh` in `render.cu`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct GpuMesh {
    first_vertex: u32,
    vertex_count: u32,
    first_triangle: u32,
    triangle_count: u32,
    /// [`Mesh::cull_back_faces`], 1 or 0.
    cull_back_faces: u32,
    /// 1 when the mesh has a texture ([`Mesh::texture`]), else 0 (and the fields below 0).
    textured: u32,
    /// Where its texels start in the texture bytes.
    texture_first_byte: u32,
    /// Texture width, texels.
    texture_width: u32,
    /// Texture height, texels.
    texture_height: u32,
    /// Where its triangles' corner UVs start in the UV table, in triangles (6 floats each).
    first_uv: u32,
}

/// One image of a chunk (`PosedItem` in `render.cu`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct GpuItem {
    width: u32,
    height: u32,
    first_pixel: u32,
    first_instance: u32,
    instance_count: u32,
    fx: f32,
    skew: f32,
    cx: f32,
    fy: f32,
    cy: f32,
}

/// One object of a chunk (`PosedInstance` in `render.cu`): a [`Projection`] plus indices.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct GpuInstance {
    rotation: [f32; 9],
    translation_m: [f32; 3],
    fx: f32,
    skew: f32,
    cx: f32,
    fy: f32,
    cy: f32,
    mesh: u32,
    item: u32,
    instance_in_item: u32,
    first_vertex: u32,
}

// The sizes `render.cu` asserts for its structs (a unit test checks the two agree).
const _: () = assert!(std::mem::size_of::<GpuMesh>() == 40);
const _: () = assert!(std::mem::size_of::<GpuItem>() == 40);
const _: () = assert!(std::mem::size_of::<GpuInstance>() == 84);

// SAFETY: `repr(C)` structs of 4-byte `u32` / `f32` fields only, so no padding and no
// pointers; `render.cu` declares the same fields in the same order (sizes asserted on
// both sides), so the device reads exactly what the host wrote.
unsafe impl DeviceRepr for GpuMesh {}
// SAFETY: as above.
unsafe impl DeviceRepr for GpuItem {}
// SAFETY: as above.
unsafe impl DeviceRepr for GpuInstance {}
// SAFETY: every field is a `u32` or `f32`, for which all-zero bits are a valid value.
unsafe impl ValidAsZeroBits for GpuItem {}
// SAFETY: as above.
unsafe impl ValidAsZeroBits for GpuInstance {}

/// The largest chunk of a batch a [`GpuRenderer`] draws in one sequence of launches. The
/// device buffers are allocated for it at creation; a larger batch is drawn in several
/// chunks (the result is the same), and only an item that alone exceeds a limit is
/// refused ([`KernelError::LimitExceeded`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GpuRenderLimits {
    /// Images per chunk, at most 65,535.
    pub max_items: usize,
    /// Pixels per chunk, all images together.
    pub max_pixels: usize,
    /// Object instances per chunk, all images together, at most 65,535.
    pub max_instances: usize,
    /// Projected vertices per chunk: the vertex counts of the instances' meshes, summed.
    pub max_vertices: usize,
}

impl GpuRenderLimits {
    /// Room for `items` images of at most `width` x `height` pixels, each with at most
    /// `instances_per_item` objects of any of `meshes` (every limit at least 1).
    pub fn for_batch(
        meshes: &[Mesh],
        items: usize,
        width: usize,
        height: usize,
        instances_per_item: usize,
    ) -> Self {
        let largest_mesh = meshes
            .iter()
            .map(|mesh| mesh.positions_m().len())
            .max()
            .unwrap_or(1);
        let instances = items.saturating_mul(instances_per_item);
        Self {
            max_items: items.max(1),
            max_pixels: items.saturating_mul(width).saturating_mul(height).max(1),
            max_instances: instances.max(1),
            max_vertices: instances.saturating_mul(largest_mesh).max(1),
        }
    }

    /// Every limit at least 1, and within what the kernels can index.
    fn check(&self) -> Result<(), KernelError> {
        if self.max_items == 0
            || self.max_pixels == 0
            || self.max_instances == 0
            || self.max_vertices == 0
        {
            return Err(KernelError::InvalidValue {
                what: "GpuRenderLimits",
                reason: "every limit must be at least 1",
            });
        }
        let within = |what, limit, found| {
            if found > limit {
                Err(KernelError::LimitExceeded { what, limit, found })
            } else {
                Ok(())
            }
        };
        within(
            "GpuRenderLimits::max_items (one grid row per image)",
            MAX_GRID_Y,
            self.max_items,
        )?;
        within(
            "GpuRenderLimits::max_instances (one grid row per instance)",
            MAX_GRID_Y,
            self.max_instances,
        )?;
        within(
            "GpuRenderLimits::max_pixels (32-bit pixel indices)",
            MAX_PIXELS,
            self.max_pixels,
        )?;
        within(
            "GpuRenderLimits::max_vertices (32-bit vertex indices)",
            u32::MAX as usize,
            self.max_vertices,
        )
    }
}

/// The meshes as the kernels read them: concatenated, 3 values per vertex or triangle;
/// the textures' texels as bytes, and 6 floats of corner UVs per textured triangle.
#[derive(Debug, Clone, Default, PartialEq)]
struct MeshTables {
    extents: Vec<GpuMesh>,
    positions_m: Vec<f32>,
    normals: Vec<f32>,
    colors: Vec<f32>,
    triangles: Vec<u32>,
    textures: Vec<u8>,
    corner_uvs: Vec<f32>,
}

impl MeshTables {
    fn new(meshes: &[Mesh]) -> Result<Self, KernelError> {
        let vertices: usize = meshes.iter().map(|m| m.positions_m().len()).sum();
        let triangles: usize = meshes.iter().map(|m| m.triangles().len()).sum();
        for (what, found) in [
            (
                "vertices of all meshes (GpuRenderer, 32-bit indices)",
                vertices,
            ),
            (
                "triangles of all meshes (GpuRenderer, 32-bit indices)",
                triangles,
            ),
        ] {
            if found > MAX_MESH_ENTRIES {
                return Err(KernelError::LimitExceeded {
                    what,
                    limit: MAX_MESH_ENTRIES,
                    found,
                });
            }
        }
        let texture_bytes: usize = meshes
            .iter()
            .filter_map(Mesh::texture)
            .map(|texture| 3 * texture.rgb().len())
            .sum();
        let uv_triangles: usize = meshes.iter().map(|m| m.corner_uvs().len()).sum();
        for (what, limit, found) in [
            (
                "texture bytes of all meshes (GpuRenderer, 32-bit indices)",
                MAX_TEXTURE_BYTES,
                texture_bytes,
            ),
            (
                "textured triangles of all meshes (GpuRenderer, 32-bit indices)",
                MAX_UV_TRIANGLES,
                uv_triangles,
            ),
        ] {
            if found > limit {
                return Err(KernelError::LimitExceeded { what, limit, found });
            }
        }
        let mut tables = Self {
            extents: Vec::with_capacity(meshes.len()),
            positions_m: Vec::with_capacity(3 * vertices),
            normals: Vec::with_capacity(3 * vertices),
            colors: Vec::with_capacity(3 * vertices),
            triangles: Vec::with_capacity(3 * triangles),
            textures: Vec::with_capacity(texture_bytes),
            corner_uvs: Vec::with_capacity(6 * uv_triangles),
        };
        for mesh in meshes {
            // All fit in u32: checked above (texture sides are at most MAX_TEXTURE_SIDE).
            let (textured, texture_width, texture_height) = match mesh.texture() {
                Some(texture) => (1, texture.width() as u32, texture.height() as u32),
                None => (0, 0, 0),
            };
            tables.extents.push(GpuMesh {
                first_vertex: (tables.positions_m.len() / 3) as u32,
                vertex_count: mesh.positions_m().len() as u32,
                first_triangle: (tables.triangles.len() / 3) as u32,
                triangle_count: mesh.triangles().len() as u32,
                cull_back_faces: u32::from(mesh.cull_back_faces()),
                textured,
                texture_first_byte: tables.textures.len() as u32,
                texture_width,
                texture_height,
                first_uv: (tables.corner_uvs.len() / 6) as u32,
            });
            if let Some(texture) = mesh.texture() {
                tables
                    .textures
                    .extend_from_slice(texture.rgb().as_flattened());
                tables
                    .corner_uvs
                    .extend_from_slice(mesh.corner_uvs().as_flattened().as_flattened());
            }
            tables
                .positions_m
                .extend_from_slice(mesh.positions_m().as_flattened());
            tables
                .normals
                .extend_from_slice(mesh.normals().as_flattened());
            tables
                .colors
                .extend_from_slice(mesh.colors().as_flattened());
            tables
                .triangles
                .extend_from_slice(mesh.triangles().as_flattened());
        }
        Ok(tables)
    }
}

/// What the launches of one chunk cover.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct ChunkShape {
    /// Pixels of all items.
    pixels: usize,
    /// Projected vertices of all instances.
    vertices: usize,
    /// Pixels of the largest item (the x extent of the shading grid).
    max_item_pixels: usize,
    /// Vertices of the largest mesh in the chunk (the x extent of the projection grid).
    max_mesh_vertices: usize,
    /// Triangles of the largest mesh in the chunk (the x extent of the raster grid).
    max_mesh_triangles: usize,
}

/// What one item needs of the limits: pixels, instances, projected vertices.
fn item_needs(meshes: &[GpuMesh], item: &RenderItem<'_>) -> (usize, usize, usize) {
    let pixels = item.camera.width.saturating_mul(item.camera.height);
    let vertices = item
        .instances
        .iter()
        .map(|instance| meshes[instance.mesh].vertex_count as usize)
        .sum();
    (pixels, item.instances.len(), vertices)
}

/// How many items from the front of `items` fit one chunk (at least one: every item has
/// been checked to fit alone).
fn chunk_len(meshes: &[GpuMesh], limits: &GpuRenderLimits, items: &[RenderItem<'_>]) -> usize {
    let (mut pixels, mut instances, mut vertices) = (0, 0, 0);
    let mut count = 0;
    for item in items.iter().take(limits.max_items) {
        let (p, i, v) = item_needs(meshes, item);
        if count > 0
            && (pixels + p > limits.max_pixels
                || instances + i > limits.max_instances
                || vertices + v > limits.max_vertices)
        {
            break;
        }
        pixels += p;
        instances += i;
        vertices += v;
        count += 1;
    }
    count.max(1)
}

/// Fills the item and instance tables of a chunk (cleared first; their capacity was
/// reserved for the limits, so nothing is allocated) and returns the launch extents. The
/// items have passed `check_item` and fit the limits, so every index fits in `u32`.
fn pack_chunk(
    meshes: &[GpuMesh],
    items: &[RenderItem<'_>],
    items_out: &mut Vec<GpuItem>,
    instances_out: &mut Vec<GpuInstance>,
) -> ChunkShape {
    items_out.clear();
    instances_out.clear();
    let mut shape = ChunkShape::default();
    for (item_index, item) in items.iter().enumerate() {
        let camera = &item.camera;
        let pixels = camera.width * camera.height;
        let k = &camera.intrinsics.k;
        items_out.push(GpuItem {
            width: camera.width as u32,
            height: camera.height as u32,
            first_pixel: shape.pixels as u32,
            first_instance: instances_out.len() as u32,
            instance_count: item.instances.len() as u32,
            // As CpuRenderer's `shade_band` converts them.
            fx: k[(0, 0)] as f32,
            skew: k[(0, 1)] as f32,
            cx: k[(0, 2)] as f32,
            fy: k[(1, 1)] as f32,
            cy: k[(1, 2)] as f32,
        });
        for (instance_index, instance) in item.instances.iter().enumerate() {
            let mesh = &meshes[instance.mesh];
            let p = projection(camera, &instance.camera_from_object);
            instances_out.push(GpuInstance {
                rotation: p.rotation,
                translation_m: p.translation_m,
                fx: p.fx,
                skew: p.skew,
                cx: p.cx,
                fy: p.fy,
                cy: p.cy,
                mesh: instance.mesh as u32,
                item: item_index as u32,
                instance_in_item: instance_index as u32,
                first_vertex: shape.vertices as u32,
            });
            shape.vertices += mesh.vertex_count as usize;
            shape.max_mesh_vertices = shape.max_mesh_vertices.max(mesh.vertex_count as usize);
            shape.max_mesh_triangles = shape.max_mesh_triangles.max(mesh.triangle_count as usize);
        }
        shape.pixels += pixels;
        shape.max_item_pixels = shape.max_item_pixels.max(pixels);
    }
    shape
}

/// `(lambert, towards_light_camera, ambient, diffuse)` as `shade_pixels` takes them.
fn shading_arguments(shading: &Shading) -> (u32, [f32; 3], f32, f32) {
    match shading {
        Shading::Albedo => (0, [0.0; 3], 0.0, 0.0),
        Shading::Lambert(light) => (1, light.towards_light_camera, light.ambient, light.diffuse),
    }
}

/// A launch of `x_threads` threads along x (in blocks of `block`) times `y_blocks` rows.
fn launch_config(x_threads: usize, y_blocks: usize, block: u32) -> LaunchConfig {
    LaunchConfig {
        // Both fit: x_threads is below 2^32 and y_blocks at most 65,535 (the limits).
        grid_dim: (
            x_threads.div_ceil(block as usize) as u32,
            y_blocks as u32,
            1,
        ),
        block_dim: (block, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// The renderer on one GPU: the meshes uploaded once, device buffers for a chunk of
/// [`GpuRenderLimits`], the four kernels resolved once, and its own CUDA stream.
///
/// [`GpuRenderer::render`] has the signature, the checks and the output of
/// [`CpuRenderer::render`]; see the module docs for
/// what it still allocates. On a CUDA error, the targets' contents are unspecified.
pub struct GpuRenderer {
    stream: Arc<CudaStream>,
    clear_keys: CudaFunction,
    project_vertices: CudaFunction,
    raster_triangles: CudaFunction,
    shade_pixels: CudaFunction,
    image: CompiledImage,
    limits: GpuRenderLimits,
    /// Host copy of the mesh extents: counts for the checks and the grids.
    meshes: Vec<GpuMesh>,
    mesh_table: CudaSlice<GpuMesh>,
    positions_m: CudaSlice<f32>,
    normals: CudaSlice<f32>,
    colors: CudaSlice<f32>,
    triangles: CudaSlice<u32>,
    /// Texels of every textured mesh (`GpuMesh::texture_first_byte`).
    textures: CudaSlice<u8>,
    /// Corner UVs of every textured mesh (`GpuMesh::first_uv`).
    corner_uvs: CudaSlice<f32>,
    /// Host staging of a chunk's tables, capacity reserved at creation.
    items_host: Vec<GpuItem>,
    instances_host: Vec<GpuInstance>,
    items: CudaSlice<GpuItem>,
    instances: CudaSlice<GpuInstance>,
    /// `PROJECTED_VERTEX_WORDS` words per projected vertex.
    vertices: CudaSlice<u32>,
    keys: CudaSlice<u64>,
    /// 3 bytes per pixel.
    rgb: CudaSlice<u8>,
    depth_m: CudaSlice<f32>,
    mask: CudaSlice<u8>,
}

impl std::fmt::Debug for GpuRenderer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuRenderer")
            .field("meshes", &self.meshes.len())
            .field("limits", &self.limits)
            .field("target", &self.image.target)
            .finish()
    }
}

impl GpuRenderer {
    /// Compiles (or loads from the cache) `render.cu` for `device`, uploads `meshes` once
    /// (indexed by [`Instance::mesh`](crate::render::Instance::mesh), as for the CPU
    /// renderer) and allocates the device buffers of a chunk of `limits`.
    ///
    /// # Errors
    /// [`KernelError::InvalidValue`] or [`KernelError::LimitExceeded`] for limits of zero
    /// or beyond what the kernels index (65,535 items or instances per chunk, 32-bit pixel
    /// and vertex indices), [`KernelError::LimitExceeded`] for meshes with more than about
    /// 1.4 billion vertices or triangles together; CUDA errors from compiling, loading or
    /// allocating.
    pub fn new(
        device: &CudaDevice,
        meshes: &[Mesh],
        limits: GpuRenderLimits,
    ) -> Result<Self, KernelError> {
        limits.check()?;
        let tables = MeshTables::new(meshes)?;
        let module = device.load_module(&RENDER_SOURCE)?;
        let clear_keys = module.function("clear_keys")?;
        let project_vertices = module.function("project_vertices")?;
        let raster_triangles = module.function("raster_triangles")?;
        let shade_pixels = module.function("shade_pixels")?;
        let image = module.image().clone();

        guarded("uploading the meshes for the GPU renderer", || {
            let stream = device
                .context()
                .new_stream()
                .map_err(driver_error("cuStreamCreate"))?;
            // No zero-sized allocations (an empty mesh list is allowed, as on the CPU).
            let upload_f32 = |values: &[f32]| {
                let values = if values.is_empty() {
                    &[0.0][..]
                } else {
                    values
                };
                stream
                    .clone_htod(values)
                    .map_err(driver_error("cuMemcpyHtoD"))
            };
            let positions_m = upload_f32(&tables.positions_m)?;
            let normals = upload_f32(&tables.normals)?;
            let colors = upload_f32(&tables.colors)?;
            let corner_uvs = upload_f32(&tables.corner_uvs)?;
            let textures = stream
                .clone_htod(if tables.textures.is_empty() {
                    &[0][..]
                } else {
                    &tables.textures
                })
                .map_err(driver_error("cuMemcpyHtoD"))?;
            let triangles = stream
                .clone_htod(if tables.triangles.is_empty() {
                    &[0][..]
                } else {
                    &tables.triangles
                })
                .map_err(driver_error("cuMemcpyHtoD"))?;
            let placeholder = [GpuMesh::default()];
            let mesh_table = stream
                .clone_htod(if tables.extents.is_empty() {
                    &placeholder[..]
                } else {
                    &tables.extents
                })
                .map_err(driver_error("cuMemcpyHtoD"))?;
            let items = stream
                .alloc_zeros::<GpuItem>(limits.max_items)
                .map_err(driver_error("cuMemAlloc"))?;
            let instances = stream
                .alloc_zeros::<GpuInstance>(limits.max_instances)
                .map_err(driver_error("cuMemAlloc"))?;
            let vertices = stream
                .alloc_zeros::<u32>(PROJECTED_VERTEX_WORDS * limits.max_vertices)
                .map_err(driver_error("cuMemAlloc"))?;
            let keys = stream
                .alloc_zeros::<u64>(limits.max_pixels)
                .map_err(driver_error("cuMemAlloc"))?;
            let rgb = stream
                .alloc_zeros::<u8>(3 * limits.max_pixels)
                .map_err(driver_error("cuMemAlloc"))?;
            let depth_m = stream
                .alloc_zeros::<f32>(limits.max_pixels)
                .map_err(driver_error("cuMemAlloc"))?;
            let mask = stream
                .alloc_zeros::<u8>(limits.max_pixels)
                .map_err(driver_error("cuMemAlloc"))?;
            stream
                .synchronize()
                .map_err(driver_error("cuStreamSynchronize"))?;
            Ok(Self {
                stream,
                clear_keys,
                project_vertices,
                raster_triangles,
                shade_pixels,
                image,
                limits,
                meshes: tables.extents,
                mesh_table,
                positions_m,
                normals,
                colors,
                triangles,
                textures,
                corner_uvs,
                items_host: Vec::with_capacity(limits.max_items),
                instances_host: Vec::with_capacity(limits.max_instances),
                items,
                instances,
                vertices,
                keys,
                rgb,
                depth_m,
                mask,
            })
        })
    }

    /// The number of meshes, indexed by [`Instance::mesh`](crate::render::Instance::mesh).
    pub fn mesh_count(&self) -> usize {
        self.meshes.len()
    }

    /// The chunk size the device buffers were allocated for.
    pub fn limits(&self) -> &GpuRenderLimits {
        &self.limits
    }

    /// The compiled `render.cu`: target, NVRTC warnings (the log), cache status.
    pub fn compiled_image(&self) -> &CompiledImage {
        &self.image
    }

    /// Renders each item into the target of the same index, as
    /// [`CpuRenderer::render`] does: the same rgb,
    /// depth, mask and visibility keys in every target.
    ///
    /// # Errors
    /// The CPU renderer's, for the same input: [`KernelError::SizeMismatch`] when the
    /// item and target counts differ or a target's size is not its camera's;
    /// [`KernelError::LimitExceeded`] for more than
    /// [`MAX_INSTANCES_PER_IMAGE`](crate::render::MAX_INSTANCES_PER_IMAGE) instances in
    /// an item; [`KernelError::InvalidMesh`] for a mesh index past the mesh list;
    /// [`KernelError::NotFinite`] for a non-finite pose or intrinsics. Then
    /// [`KernelError::LimitExceeded`] for an item that alone exceeds the
    /// [`GpuRenderLimits`]. Nothing is drawn when one of these is returned. CUDA errors
    /// from the copies and launches.
    pub fn render(
        &mut self,
        items: &[RenderItem<'_>],
        targets: &mut [RenderTarget],
        shading: &Shading,
    ) -> Result<(), KernelError> {
        CpuRenderer::check_batch(items, targets, self.meshes.len())?;
        for item in items {
            self.check_fits(item)?;
        }
        guarded("GPU render", || {
            let mut start = 0;
            while start < items.len() {
                let end = start + chunk_len(&self.meshes, &self.limits, &items[start..]);
                self.render_chunk(&items[start..end], &mut targets[start..end], shading)?;
                start = end;
            }
            Ok(())
        })
    }

    /// Whether one item fits a chunk on its own.
    fn check_fits(&self, item: &RenderItem<'_>) -> Result<(), KernelError> {
        let (pixels, instances, vertices) = item_needs(&self.meshes, item);
        for (what, limit, found) in [
            (
                "pixels of one render item (GpuRenderLimits::max_pixels)",
                self.limits.max_pixels,
                pixels,
            ),
            (
                "instances of one render item (GpuRenderLimits::max_instances)",
                self.limits.max_instances,
                instances,
            ),
            (
                "projected vertices of one render item (GpuRenderLimits::max_vertices)",
                self.limits.max_vertices,
                vertices,
            ),
        ] {
            if found > limit {
                return Err(KernelError::LimitExceeded { what, limit, found });
            }
        }
        Ok(())
    }

    /// Draws one chunk that fits the limits and copies its results into `targets`.
    fn render_chunk(
        &mut self,
        items: &[RenderItem<'_>],
        targets: &mut [RenderTarget],
        shading: &Shading,
    ) -> Result<(), KernelError> {
        let shape = pack_chunk(
            &self.meshes,
            items,
            &mut self.items_host,
            &mut self.instances_host,
        );
        let n_items = items.len();
        let n_instances = self.instances_host.len();
        let stream = &self.stream;
        stream
            .memcpy_htod(self.items_host.as_slice(), &mut self.items)
            .map_err(driver_error("cuMemcpyHtoDAsync"))?;
        if n_instances > 0 {
            stream
                .memcpy_htod(self.instances_host.as_slice(), &mut self.instances)
                .map_err(driver_error("cuMemcpyHtoDAsync"))?;
        }
        // All fit in u32 (the limits are checked at creation).
        let n_pixels = shape.pixels as u32;

        if shape.pixels > 0 {
            let mut builder = stream.launch_builder(&self.clear_keys);
            builder.arg(&mut self.keys).arg(&n_pixels);
            // SAFETY: clear_keys(unsigned long long* keys, unsigned int n_pixels): keys
            // holds max_pixels >= n_pixels values; threads past n_pixels do nothing.
            unsafe { builder.launch(launch_config(shape.pixels, 1, BLOCK_PIXELS)) }
                .map_err(driver_error("launch of clear_keys"))?;
        }

        if n_instances > 0 {
            let mut builder = stream.launch_builder(&self.project_vertices);
            builder
                .arg(&self.instances)
                .arg(&self.mesh_table)
                .arg(&self.positions_m)
                .arg(&self.normals)
                .arg(&mut self.vertices);
            // SAFETY: project_vertices(const PosedInstance*, const PosedMesh*,
            // const float* positions_m, const float* normals, PosedVertex*): the struct
            // layouts match (asserted on both sides); grid row y reads instance y <
            // n_instances (uploaded above, same stream), whose mesh index was checked
            // against the mesh table; threads past the mesh's vertex count return; the
            // others read 3 floats per mesh vertex (uploaded at creation) and write vertex
            // first_vertex + i < shape.vertices <= max_vertices (pack_chunk, check_fits).
            unsafe {
                builder.launch(launch_config(
                    shape.max_mesh_vertices,
                    n_instances,
                    BLOCK_GEOMETRY,
                ))
            }
            .map_err(driver_error("launch of project_vertices"))?;

            let mut builder = stream.launch_builder(&self.raster_triangles);
            builder
                .arg(&self.instances)
                .arg(&self.items)
                .arg(&self.mesh_table)
                .arg(&self.triangles)
                .arg(&self.vertices)
                .arg(&mut self.keys);
            // SAFETY: raster_triangles(const PosedInstance*, const PosedItem*,
            // const PosedMesh*, const unsigned int* triangles, const PosedVertex*,
            // unsigned long long* keys): row y is instance y < n_instances; its item index
            // is < n_items (uploaded above); triangle indices are < the mesh's vertex
            // count (checked by Mesh::new), so the vertex reads stay in this instance's
            // projected vertices (written by the launch above, same stream); pixel writes
            // are clipped to the item's width x height, inside its first_pixel.. range of
            // the keys (sized max_pixels >= shape.pixels).
            unsafe {
                builder.launch(launch_config(
                    shape.max_mesh_triangles,
                    n_instances,
                    BLOCK_GEOMETRY,
                ))
            }
            .map_err(driver_error("launch of raster_triangles"))?;
        }

        if shape.max_item_pixels > 0 {
            let (lambert, light, ambient, diffuse) = shading_arguments(shading);
            let mut builder = stream.launch_builder(&self.shade_pixels);
            builder
                .arg(&self.items)
                .arg(&self.instances)
                .arg(&self.mesh_table)
                .arg(&self.triangles)
                .arg(&self.colors)
                .arg(&self.textures)
                .arg(&self.corner_uvs)
                .arg(&self.vertices)
                .arg(&self.keys)
                .arg(&lambert)
                .arg(&light[0])
                .arg(&light[1])
                .arg(&light[2])
                .arg(&ambient)
                .arg(&diffuse)
                .arg(&mut self.rgb)
                .arg(&mut self.depth_m)
                .arg(&mut self.mask);
            // SAFETY: shade_pixels(const PosedItem*, const PosedInstance*,
            // const PosedMesh*, const unsigned int* triangles, const float* colors,
            // const unsigned char* textures, const float* corner_uvs,
            // const PosedVertex*, const unsigned long long* keys, unsigned int lambert,
            // float x 5, unsigned char* rgb, float* depth_m, unsigned char* mask), in this
            // order and these types; row y is item y < n_items; threads past the item's
            // pixel count return; the others touch pixel first_pixel + p < shape.pixels
            // <= max_pixels (3 bytes of rgb each); a non-empty key was written by
            // raster_triangles (same stream) and names an instance of this item and a
            // triangle of its mesh; a textured mesh's 6 UVs of that triangle lie in
            // corner_uvs (MeshTables), and the texel indices are clamped to its texture,
            // which lies in textures from texture_first_byte on.
            unsafe { builder.launch(launch_config(shape.max_item_pixels, n_items, BLOCK_PIXELS)) }
                .map_err(driver_error("launch of shade_pixels"))?;
        }

        for (packed, target) in self.items_host.iter().zip(targets.iter_mut()) {
            let first = packed.first_pixel as usize;
            let end = first + (packed.width * packed.height) as usize;
            if end == first {
                continue;
            }
            let (rgb, depth_m, mask, keys) = target.buffers_mut();
            stream
                .memcpy_dtoh(&self.rgb.slice(3 * first..3 * end), rgb.as_flattened_mut())
                .map_err(driver_error("cuMemcpyDtoHAsync"))?;
            stream
                .memcpy_dtoh(&self.depth_m.slice(first..end), depth_m)
                .map_err(driver_error("cuMemcpyDtoHAsync"))?;
            stream
                .memcpy_dtoh(&self.mask.slice(first..end), mask)
                .map_err(driver_error("cuMemcpyDtoHAsync"))?;
            stream
                .memcpy_dtoh(&self.keys.slice(first..end), keys)
                .map_err(driver_error("cuMemcpyDtoHAsync"))?;
        }
        stream
            .synchronize()
            .map_err(driver_error("cuStreamSynchronize"))
    }
}

#[cfg(test)]
mod tests {
    //! `render.cu`'s kernels transcribed line by line into Rust (which never contracts
    //! into FMA, like `--fmad=false`), run on the tables the host side packs, against the
    //! CPU renderer: bit-identical. This checks the packing, the projections and the
    //! operation order on any machine; `tests/gpu_render_equivalence.rs` checks the
    //! kernels themselves on a GPU.

    // The transcription follows render.cu line by line, C idioms included.
    #![allow(
        clippy::manual_range_contains,
        clippy::needless_range_loop,
        clippy::manual_clamp
    )]

    use super::*;
    use crate::render::{
        Camera, Instance, Light, Texture, TextureCoords, EMPTY_KEY, FAR_M, NEAR_M,
    };
    use crate::{Intrinsics, Pose};
    use nalgebra::{Rotation3, Vector3};

    #[derive(Debug, Clone, Copy)]
    struct PosedVertex {
        x_fp: i32,
        y_fp: i32,
        inv_z: f32,
        normal: [f32; 3],
    }

    #[derive(Debug, Clone, Copy)]
    struct PosedEdge {
        step_u: i64,
        step_v: i64,
        at_origin: i64,
        bias: i64,
    }

    fn floor_div(value: i64) -> i64 {
        let mut quotient = value / 256;
        if value % 256 != 0 && value < 0 {
            quotient -= 1;
        }
        quotient
    }

    fn ceil_div(value: i64) -> i64 {
        -floor_div(-value)
    }

    fn edge_function(p: &PosedVertex, q: &PosedVertex, sx: i64, sy: i64) -> i64 {
        let (px, py) = (i64::from(p.x_fp), i64::from(p.y_fp));
        (i64::from(q.x_fp) - px) * (sy - py) - (i64::from(q.y_fp) - py) * (sx - px)
    }

    fn edge(p: &PosedVertex, q: &PosedVertex) -> PosedEdge {
        let (px, py) = (i64::from(p.x_fp), i64::from(p.y_fp));
        let (dx, dy) = (i64::from(q.x_fp) - px, i64::from(q.y_fp) - py);
        let top_left = dy < 0 || (dy == 0 && dx > 0);
        PosedEdge {
            step_u: -dy * 256,
            step_v: dx * 256,
            at_origin: dy * px - dx * py,
            bias: if top_left { 0 } else { -1 },
        }
    }

    fn edge_at(e: &PosedEdge, u: i64, v: i64) -> i64 {
        e.step_u * u + e.step_v * v + e.at_origin
    }

    fn project_vertices(
        instances: &[GpuInstance],
        tables: &MeshTables,
        vertices: &mut [PosedVertex],
    ) {
        for instance in instances {
            let mesh = tables.extents[instance.mesh as usize];
            for vertex in 0..mesh.vertex_count {
                let r = &instance.rotation;
                let t = &instance.translation_m;
                let at = (3 * (mesh.first_vertex + vertex)) as usize;
                let [x, y, z] = [
                    tables.positions_m[at],
                    tables.positions_m[at + 1],
                    tables.positions_m[at + 2],
                ];
                let xc = r[0] * x + r[1] * y + r[2] * z + t[0];
                let yc = r[3] * x + r[4] * y + r[5] * z + t[1];
                let zc = r[6] * x + r[7] * y + r[8] * z + t[2];
                let [nx, ny, nz] = [
                    tables.normals[at],
                    tables.normals[at + 1],
                    tables.normals[at + 2],
                ];
                let mut out = PosedVertex {
                    x_fp: 0,
                    y_fp: 0,
                    inv_z: -1.0,
                    normal: [
                        r[0] * nx + r[1] * ny + r[2] * nz,
                        r[3] * nx + r[4] * ny + r[5] * nz,
                        r[6] * nx + r[7] * ny + r[8] * nz,
                    ],
                };
                if zc >= NEAR_M {
                    let inv_z = 1.0 / zc;
                    let xn = xc * inv_z;
                    let yn = yc * inv_z;
                    let u = instance.fx * xn + instance.skew * yn + instance.cx;
                    let v = instance.fy * yn + instance.cy;
                    if u.abs() < 1_048_576.0 && v.abs() < 1_048_576.0 {
                        out.x_fp = (u * 256.0).round() as i32;
                        out.y_fp = (v * 256.0).round() as i32;
                        out.inv_z = inv_z;
                    }
                }
                vertices[(instance.first_vertex + vertex) as usize] = out;
            }
        }
    }

    fn raster_triangles(
        instances: &[GpuInstance],
        items: &[GpuItem],
        tables: &MeshTables,
        vertices: &[PosedVertex],
        keys: &mut [u64],
    ) {
        for instance in instances {
            let mesh = tables.extents[instance.mesh as usize];
            for triangle in 0..mesh.triangle_count {
                let corner = &tables.triangles[(3 * (mesh.first_triangle + triangle)) as usize..];
                let own = &vertices[instance.first_vertex as usize..];
                let a = own[corner[0] as usize];
                let mut b = own[corner[1] as usize];
                let mut c = own[corner[2] as usize];
                if !(a.inv_z > 0.0 && b.inv_z > 0.0 && c.inv_z > 0.0) {
                    continue;
                }
                let mut area = edge_function(&a, &b, c.x_fp.into(), c.y_fp.into());
                if mesh.cull_back_faces != 0 && area > 0 {
                    continue;
                }
                if area == 0 {
                    continue;
                }
                if area < 0 {
                    std::mem::swap(&mut b, &mut c);
                    area = -area;
                }
                let xs = [a.x_fp, b.x_fp, c.x_fp].map(i64::from);
                let ys = [a.y_fp, b.y_fp, c.y_fp].map(i64::from);
                let min_u = ceil_div(xs[0].min(xs[1]).min(xs[2]));
                let min_v = ceil_div(ys[0].min(ys[1]).min(ys[2]));
                let max_u = floor_div(xs[0].max(xs[1]).max(xs[2]));
                let max_v = floor_div(ys[0].max(ys[1]).max(ys[2]));
                if min_u > max_u || min_v > max_v {
                    continue;
                }
                let item = items[instance.item as usize];
                let (width, height) = (i64::from(item.width), i64::from(item.height));
                let (u0, u1) = (min_u.max(0), max_u.min(width - 1));
                let (v0, v1) = (min_v.max(0), max_v.min(height - 1));
                if u0 > u1 {
                    continue;
                }
                let [e0, e1, e2] = [edge(&b, &c), edge(&c, &a), edge(&a, &b)];
                let area_f = area as f32;
                let low_bits = (u64::from(instance.instance_in_item) << 24) | u64::from(triangle);
                let item_keys = &mut keys[item.first_pixel as usize..];
                let mut row_start = [
                    edge_at(&e0, u0, v0) + e0.bias,
                    edge_at(&e1, u0, v0) + e1.bias,
                    edge_at(&e2, u0, v0) + e2.bias,
                ];
                for v in v0..=v1 {
                    let mut w = row_start;
                    for u in u0..=u1 {
                        if (w[0] | w[1] | w[2]) >= 0 {
                            let inv_z_sum = (w[0] - e0.bias) as f32 * a.inv_z
                                + (w[1] - e1.bias) as f32 * b.inv_z
                                + (w[2] - e2.bias) as f32 * c.inv_z;
                            let z = area_f / inv_z_sum;
                            if NEAR_M <= z && z <= FAR_M {
                                let key = (u64::from(z.to_bits()) << 32) | low_bits;
                                let slot = &mut item_keys[(v * width + u) as usize];
                                *slot = (*slot).min(key);
                            }
                        }
                        w[0] += e0.step_u;
                        w[1] += e1.step_u;
                        w[2] += e2.step_u;
                    }
                    row_start[0] += e0.step_v;
                    row_start[1] += e1.step_v;
                    row_start[2] += e2.step_v;
                }
            }
        }
    }

    /// `posed_sample_bilinear`.
    fn sample_bilinear(textures: &[u8], mesh: &GpuMesh, u: f32, v: f32, out: &mut [f32; 3]) {
        let x = u * mesh.texture_width as f32 - 0.5;
        let y = (1.0 - v) * mesh.texture_height as f32 - 0.5;
        let x_floor = x.floor();
        let y_floor = y.floor();
        let fx = x - x_floor;
        let fy = y - y_floor;
        let last_x = (mesh.texture_width - 1) as f32;
        let last_y = (mesh.texture_height - 1) as f32;
        // __float2uint_rz of clamped values; fmaxf / fminf as f32::max / min.
        let x0 = x_floor.max(0.0).min(last_x) as u32;
        let x1 = (x_floor + 1.0).max(0.0).min(last_x) as u32;
        let y0 = y_floor.max(0.0).min(last_y) as u32;
        let y1 = (y_floor + 1.0).max(0.0).min(last_y) as u32;
        let texels = &textures[mesh.texture_first_byte as usize..];
        let width = mesh.texture_width;
        let texel = |x: u32, y: u32| &texels[(3 * (y * width + x)) as usize..];
        let (t00, t10, t01, t11) = (texel(x0, y0), texel(x1, y0), texel(x0, y1), texel(x1, y1));
        let w00 = (1.0 - fx) * (1.0 - fy);
        let w10 = fx * (1.0 - fy);
        let w01 = (1.0 - fx) * fy;
        let w11 = fx * fy;
        for channel in 0..3 {
            out[channel] = w00 * t00[channel] as f32
                + w10 * t10[channel] as f32
                + w01 * t01[channel] as f32
                + w11 * t11[channel] as f32;
        }
    }

    /// One pixel of `shade_pixels`: (rgb, depth, mask).
    #[allow(clippy::too_many_arguments)]
    fn shade_pixel(
        item: &GpuItem,
        p: u32,
        instances: &[GpuInstance],
        tables: &MeshTables,
        vertices: &[PosedVertex],
        keys: &[u64],
        shading: &Shading,
    ) -> ([u8; 3], f32, u8) {
        let (lambert, light, ambient, diffuse) = shading_arguments(shading);
        let pixel = (item.first_pixel + p) as usize;
        let key = keys[pixel];
        if key == EMPTY_KEY {
            return ([0; 3], 0.0, 0);
        }
        let depth = f32::from_bits((key >> 32) as u32);
        let instance_index = ((key >> 24) & 0xff) as u32;
        let triangle = (key & 0xff_ffff) as u32;
        let instance = &instances[(item.first_instance + instance_index) as usize];
        let mesh = tables.extents[instance.mesh as usize];
        let corner = &tables.triangles[(3 * (mesh.first_triangle + triangle)) as usize..];
        let own = &vertices[instance.first_vertex as usize..];
        let [a, b, c] = [0, 1, 2].map(|i| own[corner[i] as usize]);
        let u = i64::from(p % item.width);
        let v = i64::from(p / item.width);
        let (sx, sy) = (u * 256, v * 256);
        let q0 = edge_function(&b, &c, sx, sy) as f32 * a.inv_z;
        let q1 = edge_function(&c, &a, sx, sy) as f32 * b.inv_z;
        let q2 = edge_function(&a, &b, sx, sy) as f32 * c.inv_z;
        let sum = q0 + q1 + q2;
        let (w0, w1, w2) = (q0 / sum, q1 / sum, q2 / sum);
        let y_ray = (v as f32 - item.cy) / item.fy;
        let x_ray = (u as f32 - item.cx - item.skew * y_ray) / item.fx;
        let mut value = [0.0_f32; 3];
        if mesh.textured != 0 {
            let uv = &tables.corner_uvs[(6 * (mesh.first_uv + triangle)) as usize..];
            let tex_u = w0 * uv[0] + w1 * uv[2] + w2 * uv[4];
            let tex_v = w0 * uv[1] + w1 * uv[3] + w2 * uv[5];
            sample_bilinear(&tables.textures, &mesh, tex_u, tex_v, &mut value);
        } else {
            let color = |i: usize| {
                let at = (3 * (mesh.first_vertex + corner[i])) as usize;
                &tables.colors[at..at + 3]
            };
            let (ca, cb, cc) = (color(0), color(1), color(2));
            for channel in 0..3 {
                value[channel] = w0 * ca[channel] + w1 * cb[channel] + w2 * cc[channel];
            }
        }
        if lambert != 0 {
            let mut n = [0.0_f32; 3];
            for axis in 0..3 {
                n[axis] = w0 * a.normal[axis] + w1 * b.normal[axis] + w2 * c.normal[axis];
            }
            let length = (n[0] * n[0] + n[1] * n[1] + n[2] * n[2]).sqrt();
            let facing = n[0] * x_ray + n[1] * y_ray + n[2] * 1.0;
            let sign = if facing > 0.0 { -1.0 } else { 1.0 };
            let mut n_dot_l = 0.0;
            if length > 0.0 {
                n_dot_l = sign * (n[0] * light[0] + n[1] * light[1] + n[2] * light[2]) / length;
            }
            let intensity = ambient + diffuse * n_dot_l.max(0.0);
            for channel in &mut value {
                *channel *= intensity;
            }
        }
        let rgb = value.map(|v| {
            let mut clamped = v;
            if clamped < 0.0 {
                clamped = 0.0;
            }
            if clamped > 255.0 {
                clamped = 255.0;
            }
            // __float2uint_rz: truncation, NaN -> 0.
            (clamped + 0.5) as u32 as u8
        });
        (rgb, depth, (instance_index + 1) as u8)
    }

    /// The whole GPU pipeline, transcribed, for one chunk: per item (rgb, depth, mask,
    /// keys).
    #[allow(clippy::type_complexity)]
    fn transcribed_render(
        tables: &MeshTables,
        items: &[RenderItem<'_>],
        shading: &Shading,
    ) -> Vec<(Vec<[u8; 3]>, Vec<f32>, Vec<u8>, Vec<u64>)> {
        let mut packed_items = Vec::new();
        let mut packed_instances = Vec::new();
        let shape = pack_chunk(
            &tables.extents,
            items,
            &mut packed_items,
            &mut packed_instances,
        );
        let invalid = PosedVertex {
            x_fp: 0,
            y_fp: 0,
            inv_z: f32::NAN,
            normal: [f32::NAN; 3],
        };
        let mut vertices = vec![invalid; shape.vertices];
        let mut keys = vec![EMPTY_KEY; shape.pixels];
        project_vertices(&packed_instances, tables, &mut vertices);
        raster_triangles(
            &packed_instances,
            &packed_items,
            tables,
            &vertices,
            &mut keys,
        );
        packed_items
            .iter()
            .map(|item| {
                let pixels = item.width * item.height;
                let mut rgb = Vec::new();
                let mut depth = Vec::new();
                let mut mask = Vec::new();
                for p in 0..pixels {
                    let (c, d, m) = shade_pixel(
                        item,
                        p,
                        &packed_instances,
                        tables,
                        &vertices,
                        &keys,
                        shading,
                    );
                    rgb.push(c);
                    depth.push(d);
                    mask.push(m);
                }
                let first = item.first_pixel as usize;
                let own_keys = keys[first..first + pixels as usize].to_vec();
                (rgb, depth, mask, own_keys)
            })
            .collect()
    }

    /// A closed box with per-vertex colours (flat-shaded faces: 4 vertices per face).
    fn colored_box(half_m: [f32; 3], hue: u8) -> Mesh {
        let mut positions = Vec::new();
        let mut colors = Vec::new();
        let mut triangles = Vec::new();
        for axis in 0..3 {
            for sign in [-1.0_f32, 1.0] {
                let (a1, a2) = ((axis + 1) % 3, (axis + 2) % 3);
                let first = positions.len() as u32;
                for (s1, s2) in [(-1.0, -1.0), (1.0, -1.0), (1.0, 1.0), (-1.0, 1.0)] {
                    let mut p = [0.0_f32; 3];
                    p[axis] = sign * half_m[axis];
                    p[a1] = s1 * half_m[a1];
                    p[a2] = s2 * half_m[a2];
                    positions.push(p);
                    let shade = (positions.len() * 37 % 200) as u8;
                    colors.push([hue, shade, 255 - shade]);
                }
                triangles.push([first, first + 1, first + 2]);
                triangles.push([first, first + 2, first + 3]);
            }
        }
        Mesh::new(positions, triangles, None, Some(&colors)).unwrap()
    }

    /// A closed cube of 8 shared vertices (so `Mesh::new` turns back-face culling on),
    /// wound outwards or, with `inwards`, the other way (which `Mesh::new` turns around).
    fn closed_cube(half_m: f32, inwards: bool) -> Mesh {
        let positions: Vec<[f32; 3]> = (0..8)
            .map(|i| {
                [i & 1, (i >> 1) & 1, (i >> 2) & 1].map(|bit| (bit as f32 * 2.0 - 1.0) * half_m)
            })
            .collect();
        let colors: Vec<[u8; 3]> = (0..8_u8)
            .map(|i| [30 * i, 255 - 20 * i, 60 + 10 * i])
            .collect();
        let mut triangles = vec![
            [0, 2, 3],
            [0, 3, 1],
            [4, 5, 7],
            [4, 7, 6],
            [0, 1, 5],
            [0, 5, 4],
            [2, 6, 7],
            [2, 7, 3],
            [0, 4, 6],
            [0, 6, 2],
            [1, 3, 7],
            [1, 7, 5],
        ];
        if inwards {
            for triangle in &mut triangles {
                triangle.swap(1, 2);
            }
        }
        Mesh::new(positions, triangles, None, Some(&colors)).unwrap()
    }

    /// A UV sphere with smooth normals and coloured bands (open at the poles: both sides
    /// drawn).
    fn sphere(radius_m: f32, rings: u32, segments: u32) -> Mesh {
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
                colors.push([(ring * 29 % 256) as u8, (segment * 13 % 256) as u8, 90]);
            }
        }
        let mut triangles = Vec::new();
        for ring in 0..rings {
            for segment in 0..segments {
                let next = (segment + 1) % segments;
                let a = ring * segments + segment;
                let b = ring * segments + next;
                let c = (ring + 1) * segments + segment;
                let d = (ring + 1) * segments + next;
                triangles.push([a, c, b]);
                triangles.push([b, c, d]);
            }
        }
        Mesh::new(positions, triangles, None, Some(&colors)).unwrap()
    }

    fn pose(euler: [f64; 3], t: [f64; 3]) -> Pose {
        Pose {
            rotation: *Rotation3::from_euler_angles(euler[0], euler[1], euler[2]).matrix(),
            translation_m: Vector3::from(t),
        }
    }

    fn camera(width: usize, height: usize, skew: f64) -> Camera {
        Camera {
            intrinsics: Intrinsics::from_row_major(&[
                180.0,
                skew,
                width as f64 / 2.0 - 0.3,
                0.0,
                175.5,
                height as f64 / 2.0 + 0.2,
                0.0,
                0.0,
                1.0,
            ]),
            width,
            height,
        }
    }

    /// A square in the object's z = 0 plane, split along a diagonal (open: both sides).
    fn square(half_m: f32) -> Mesh {
        Mesh::new(
            vec![
                [-half_m, -half_m, 0.0],
                [half_m, -half_m, 0.0],
                [half_m, half_m, 0.0],
                [-half_m, half_m, 0.0],
            ],
            vec![[0, 1, 2], [0, 2, 3]],
            None,
            Some(&[[250, 10, 10], [10, 250, 10], [10, 10, 250], [128, 128, 128]]),
        )
        .unwrap()
    }

    fn meshes() -> Vec<Mesh> {
        vec![
            sphere(0.06, 24, 48),
            colored_box([0.05, 0.03, 0.02], 200),
            sphere(0.02, 8, 16),
            closed_cube(0.04, false),
            closed_cube(0.03, true),
            square(0.1),
        ]
    }

    /// Overlapping and touching objects, one partly behind the camera, one across the
    /// image border, one nearly edge-on, an empty item and a skewed camera.
    fn scenes() -> Vec<(Camera, Vec<Instance>)> {
        let at = |mesh, euler, t| Instance {
            mesh,
            camera_from_object: pose(euler, t),
        };
        vec![
            (
                camera(192, 144, 0.0),
                vec![
                    at(0, [0.3, -0.2, 0.5], [0.0, 0.0, 0.5]),
                    at(1, [0.7, 0.4, -0.1], [0.03, 0.01, 0.45]),
                    at(2, [0.0, 0.0, 0.0], [-0.05, -0.03, 0.4]),
                    // The same mesh again, farther: occluded in part.
                    at(0, [1.0, 0.0, 0.0], [0.08, 0.05, 0.7]),
                ],
            ),
            (
                camera(64, 48, 1.5),
                vec![
                    at(1, [0.0, std::f64::consts::FRAC_PI_2, 0.0], [0.0, 0.0, 0.3]),
                    at(0, [0.0, 0.0, 0.0], [0.15, 0.0, 0.3]),
                    at(1, [0.2, 0.2, 0.2], [0.0, 0.0, 0.03]),
                ],
            ),
            (camera(32, 24, 0.0), vec![]),
            (
                camera(80, 60, -0.7),
                vec![
                    at(2, [0.1, 0.2, 0.3], [0.0, 0.0, 0.2]),
                    at(0, [2.0, 1.0, 0.5], [0.0, 0.0, 0.25]),
                    at(3, [0.5, 0.6, 0.7], [-0.06, 0.04, 0.3]),
                    at(4, [-0.3, 0.9, 0.2], [0.07, -0.05, 0.35]),
                ],
            ),
            // Fronto-parallel squares whose corners and diagonals fall on pixel centres:
            // the top-left rule decides their borders, and where the first two overlap
            // (at the same depth) the lower instance must win.
            (
                Camera {
                    intrinsics: Intrinsics::from_row_major(&[
                        100.0, 0.0, 32.0, 0.0, 100.0, 24.0, 0.0, 0.0, 1.0,
                    ]),
                    width: 64,
                    height: 48,
                },
                vec![
                    at(5, [0.0, 0.0, 0.0], [0.0, 0.0, 1.0]),
                    at(5, [0.0, 0.0, 0.0], [0.1, 0.05, 1.0]),
                    at(
                        5,
                        [0.0, 0.0, std::f64::consts::FRAC_PI_2],
                        [-0.1, -0.1, 1.0],
                    ),
                ],
            ),
        ]
    }

    #[test]
    fn the_kernel_transcription_is_bit_identical_to_the_cpu_renderer() {
        assert_transcription_matches(meshes(), &scenes(), 3000);
    }

    /// A texture of `width` x `height` texels with a smooth gradient and a checker.
    fn pattern_texture(width: usize, height: usize) -> Texture {
        let rgb = (0..height)
            .flat_map(|y| {
                (0..width).map(move |x| {
                    let checker = if (x / 3 + y / 3) % 2 == 0 { 200 } else { 30 };
                    [(x * 255 / width) as u8, (y * 255 / height) as u8, checker]
                })
            })
            .collect();
        Texture::new(width, height, rgb).unwrap()
    }

    #[test]
    fn textured_meshes_transcribe_bit_identically() {
        let mut meshes = meshes();
        // A square with UVs beyond [0, 1] (clamped), per corner; a sphere with per-vertex
        // UVs; a closed box wound inwards (turned by `Mesh::new`) with per-corner UVs.
        let corner_uvs = vec![
            [[-0.2, -0.1], [1.3, -0.1], [1.3, 1.2]],
            [[-0.2, -0.1], [1.3, 1.2], [-0.2, 1.2]],
        ];
        meshes.push(
            square(0.1)
                .with_texture(
                    pattern_texture(17, 11),
                    TextureCoords::PerCorner(corner_uvs),
                )
                .unwrap(),
        );
        let ball = sphere(0.05, 12, 24);
        let vertex_uvs = ball
            .positions_m()
            .iter()
            .map(|p| [0.5 + p[0] * 9.0, 0.5 - p[2] * 9.0])
            .collect();
        meshes.push(
            ball.with_texture(
                pattern_texture(64, 32),
                TextureCoords::PerVertex(vertex_uvs),
            )
            .unwrap(),
        );
        let cube = closed_cube(0.04, true);
        let cube_uvs = (0..cube.triangles().len())
            .map(|t| {
                let s = t as f32 * 0.07;
                [[s, 0.0], [1.0 - s, 0.3], [0.5, 1.0 - s]]
            })
            .collect();
        meshes.push(
            cube.with_texture(pattern_texture(5, 9), TextureCoords::PerCorner(cube_uvs))
                .unwrap(),
        );
        let tables = MeshTables::new(&meshes).unwrap();
        assert_eq!(tables.extents[5].textured, 0);
        assert_eq!(tables.extents[6].textured, 1);
        assert_eq!(tables.extents[7].texture_first_byte, 3 * 17 * 11);
        assert_eq!(tables.extents[7].first_uv, 2);
        assert_eq!(tables.extents[8].first_uv, 2 + 12 * 24 * 2);
        assert_eq!(tables.textures.len(), 3 * (17 * 11 + 64 * 32 + 5 * 9));
        let at = |mesh, euler, t| Instance {
            mesh,
            camera_from_object: pose(euler, t),
        };
        let mut scenes = scenes();
        scenes.push((
            camera(160, 120, 0.4),
            vec![
                at(6, [0.2, -0.3, 0.1], [0.0, 0.0, 0.5]),
                at(7, [0.5, 0.1, -0.4], [0.05, 0.02, 0.4]),
                at(8, [0.3, 0.6, 0.9], [-0.06, -0.03, 0.35]),
                at(1, [0.1, 0.1, 0.1], [0.0, 0.06, 0.3]),
            ],
        ));
        assert_transcription_matches(meshes, &scenes, 3000);
    }

    /// Renders `scenes` with the CPU renderer and the transcription, for several shadings,
    /// and asserts identical bits and more than `min_covered` object pixels.
    fn assert_transcription_matches(
        meshes: Vec<Mesh>,
        scenes: &[(Camera, Vec<Instance>)],
        min_covered: usize,
    ) {
        let tables = MeshTables::new(&meshes).unwrap();
        let items: Vec<RenderItem<'_>> = scenes
            .iter()
            .map(|(camera, instances)| RenderItem {
                camera: *camera,
                instances,
            })
            .collect();
        let mut cpu = CpuRenderer::new(meshes, 2);
        let shadings = [
            Shading::Albedo,
            Shading::default(),
            Shading::Lambert(Light {
                towards_light_camera: [0.48, -0.6, -0.64],
                ambient: 0.3,
                diffuse: 0.9,
            }),
        ];
        for shading in &shadings {
            let mut targets: Vec<RenderTarget> = items
                .iter()
                .map(|i| RenderTarget::new(i.camera.width, i.camera.height))
                .collect();
            cpu.render(&items, &mut targets, shading).unwrap();
            let transcribed = transcribed_render(&tables, &items, shading);
            let mut covered = 0;
            for (index, (target, (rgb, depth, mask, keys))) in
                targets.iter().zip(&transcribed).enumerate()
            {
                assert_eq!(target.keys(), keys.as_slice(), "keys of item {index}");
                assert_eq!(target.mask(), mask.as_slice(), "mask of item {index}");
                assert_eq!(target.rgb(), rgb.as_slice(), "rgb of item {index}");
                let bits = |d: &[f32]| d.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(target.depth_m()), bits(depth), "depth of item {index}");
                covered += mask.iter().filter(|&&m| m != 0).count();
            }
            // The scenes are not empty: most of the first image is covered.
            assert!(covered > min_covered, "{covered} pixels covered");
        }
    }

    #[test]
    fn chunks_respect_the_limits() {
        let meshes = meshes();
        let tables = MeshTables::new(&meshes).unwrap();
        let scenes = scenes();
        let items: Vec<RenderItem<'_>> = scenes
            .iter()
            .map(|(camera, instances)| RenderItem {
                camera: *camera,
                instances,
            })
            .collect();
        let roomy = GpuRenderLimits::for_batch(&meshes, 4, 192, 144, 4);
        assert_eq!(chunk_len(&tables.extents, &roomy, &items), 4);
        let two_items = GpuRenderLimits {
            max_items: 2,
            ..roomy
        };
        assert_eq!(chunk_len(&tables.extents, &two_items, &items), 2);
        // 96 x 72 + 64 x 48 pixels do not fit 8,000: one item per chunk, then the empty
        // 32 x 24 item joins the next one.
        let few_pixels = GpuRenderLimits {
            max_pixels: 8_000,
            ..roomy
        };
        assert_eq!(chunk_len(&tables.extents, &few_pixels, &items), 1);
        assert_eq!(chunk_len(&tables.extents, &few_pixels, &items[1..]), 2);
        let few_instances = GpuRenderLimits {
            max_instances: 5,
            ..roomy
        };
        assert_eq!(chunk_len(&tables.extents, &few_instances, &items), 1);
        assert_eq!(chunk_len(&tables.extents, &few_instances, &items[1..]), 2);

        // Packing: offsets follow each other.
        let mut packed_items = Vec::new();
        let mut packed_instances = Vec::new();
        let shape = pack_chunk(
            &tables.extents,
            &items[..4],
            &mut packed_items,
            &mut packed_instances,
        );
        assert_eq!(shape.pixels, 192 * 144 + 64 * 48 + 32 * 24 + 80 * 60);
        assert_eq!(shape.max_item_pixels, 192 * 144);
        assert_eq!(packed_items[1].first_pixel, 192 * 144);
        assert_eq!(packed_items[3].first_instance, 7);
        assert_eq!(packed_instances.len(), 11);
        assert_eq!(packed_instances[4].instance_in_item, 0);
        assert_eq!(packed_instances[4].item, 1);
        let sphere_vertices = 25 * 48;
        assert_eq!(packed_instances[1].first_vertex, sphere_vertices);
        assert_eq!(shape.max_mesh_triangles, 24 * 48 * 2);
        assert_eq!(
            shape.vertices,
            packed_instances
                .iter()
                .map(|i| tables.extents[i.mesh as usize].vertex_count as usize)
                .sum::<usize>()
        );
    }

    #[test]
    fn limits_are_checked() {
        let meshes = meshes();
        let limits = GpuRenderLimits::for_batch(&meshes, 8, 320, 240, 4);
        assert_eq!(limits.max_vertices, 32 * 25 * 48);
        assert!(limits.check().is_ok());
        assert!(matches!(
            GpuRenderLimits {
                max_items: 0,
                ..limits
            }
            .check(),
            Err(KernelError::InvalidValue { .. })
        ));
        assert!(matches!(
            GpuRenderLimits {
                max_instances: 70_000,
                ..limits
            }
            .check(),
            Err(KernelError::LimitExceeded { limit: 65_535, .. })
        ));
        assert!(matches!(
            GpuRenderLimits {
                max_pixels: 1 << 31,
                ..limits
            }
            .check(),
            Err(KernelError::LimitExceeded { .. })
        ));
        assert_eq!(
            GpuRenderLimits::for_batch(&[], 0, 0, 0, 0),
            GpuRenderLimits {
                max_items: 1,
                max_pixels: 1,
                max_instances: 1,
                max_vertices: 1
            }
        );
    }

    #[test]
    fn the_struct_sizes_match_render_cu() {
        let code = RENDER_SOURCE.code;
        for (name, size) in [
            ("PosedMesh", std::mem::size_of::<GpuMesh>()),
            ("PosedItem", std::mem::size_of::<GpuItem>()),
            ("PosedInstance", std::mem::size_of::<GpuInstance>()),
            ("PosedVertex", 4 * PROJECTED_VERTEX_WORDS),
        ] {
            let assertion = format!("static_assert(sizeof({name}) == {size},");
            assert!(code.contains(&assertion), "render.cu lacks `{assertion}`");
        }
        for kernel in [
            "clear_keys",
            "project_vertices",
            "raster_triangles",
            "shade_pixels",
        ] {
            assert!(
                code.contains(&format!("extern \"C\" __global__ void {kernel}(")),
                "{kernel}"
            );
        }
    }

    #[test]
    fn mesh_tables_concatenate_the_meshes() {
        let meshes = meshes();
        let tables = MeshTables::new(&meshes).unwrap();
        assert_eq!(tables.extents.len(), 6);
        let culls: Vec<u32> = tables.extents.iter().map(|m| m.cull_back_faces).collect();
        assert_eq!(culls, [0, 0, 0, 1, 1, 0], "closed meshes cull back faces");
        assert_eq!(tables.extents[1].first_vertex, 25 * 48);
        assert_eq!(tables.extents[1].vertex_count, 24);
        assert_eq!(tables.extents[2].first_triangle, 24 * 48 * 2 + 12);
        assert_eq!(
            tables.positions_m.len(),
            3 * (25 * 48 + 24 + 9 * 16 + 8 + 8 + 4)
        );
        assert_eq!(
            tables.triangles.len(),
            3 * (24 * 48 * 2 + 12 + 8 * 16 * 2 + 12 + 12 + 2)
        );
        let empty = MeshTables::new(&[]).unwrap();
        assert!(empty.extents.is_empty());
    }
}
