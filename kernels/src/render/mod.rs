//! The renderer: triangle meshes with per-vertex colour or a texture map drawn into RGB, depth and an
//! instance mask, with CosyPose's conventions (OpenCV camera, pixel centres at integer
//! coordinates, near 0.01 m, far 10 m, black background).
//!
//! [`CpuRenderer`] is the reference: multi-threaded, and allocation-free once warmed up
//! (buffers grow on the first frames, then are reused). `raster.rs` holds the arithmetic
//! the CUDA twin repeats operation for operation.

mod mesh;
mod pool;
mod raster;

use std::sync::Mutex;

pub use mesh::{
    Mesh, Texture, TextureCoords, DEFAULT_VERTEX_COLOR, MAX_TEXTURE_SIDE, MAX_TRIANGLES_PER_MESH,
};
pub use pool::WorkerPool;
pub use raster::{
    decode_key, interpolate, sample_bilinear, Light, ProjectedVertex, Projection, Shading,
    EMPTY_KEY, FAR_M, MAX_INSTANCES_PER_IMAGE, NEAR_M, SUBPIXEL_BITS,
};

use crate::{Intrinsics, KernelError, Pose};
use raster::{
    fragment_depth_m, perspective_weights, project_vertex, setup_triangle, shade_albedo,
    visibility_key,
};

/// An image to render into: intrinsics and size in pixels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Camera {
    /// Pinhole intrinsics (pixel centres at integer coordinates).
    pub intrinsics: Intrinsics,
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
}

/// One object in an image: which mesh, and where.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Instance {
    /// Index of the mesh in the renderer's mesh list.
    pub mesh: usize,
    /// The object's pose in the camera frame.
    pub camera_from_object: Pose,
}

/// One image to render: a camera and the objects in it (they occlude each other).
#[derive(Debug, Clone, Copy)]
pub struct RenderItem<'a> {
    /// Intrinsics and size.
    pub camera: Camera,
    /// The objects, at most [`MAX_INSTANCES_PER_IMAGE`].
    pub instances: &'a [Instance],
}

/// The output of one rendered image, row-major, owned by the caller and reused frame
/// after frame.
#[derive(Debug, Clone, PartialEq)]
pub struct RenderTarget {
    width: usize,
    height: usize,
    rgb: Vec<[u8; 3]>,
    depth_m: Vec<f32>,
    mask: Vec<u8>,
    keys: Vec<u64>,
}

impl RenderTarget {
    /// Buffers for a `width` x `height` image.
    pub fn new(width: usize, height: usize) -> Self {
        let pixels = width * height;
        Self {
            width,
            height,
            rgb: vec![[0; 3]; pixels],
            depth_m: vec![0.0; pixels],
            mask: vec![0; pixels],
            keys: vec![EMPTY_KEY; pixels],
        }
    }

    /// Width in pixels.
    pub fn width(&self) -> usize {
        self.width
    }

    /// Height in pixels.
    pub fn height(&self) -> usize {
        self.height
    }

    /// Colour, black where no object is.
    pub fn rgb(&self) -> &[[u8; 3]] {
        &self.rgb
    }

    /// Depth in metres (z in the camera frame), 0 where no object is.
    pub fn depth_m(&self) -> &[f32] {
        &self.depth_m
    }

    /// Per pixel, 1 + the index of the visible instance in the item, 0 for background.
    pub fn mask(&self) -> &[u8] {
        &self.mask
    }

    /// The visibility keys (see `raster.rs`): depth, instance and triangle per pixel.
    pub fn keys(&self) -> &[u64] {
        &self.keys
    }

    /// rgb, depth_m, mask and keys at once, for the GPU renderer's copies back.
    #[cfg(feature = "cuda")]
    #[allow(clippy::type_complexity)] // Four plain slices, in the order of the docs.
    pub(crate) fn buffers_mut(&mut self) -> (&mut [[u8; 3]], &mut [f32], &mut [u8], &mut [u64]) {
        (
            &mut self.rgb,
            &mut self.depth_m,
            &mut self.mask,
            &mut self.keys,
        )
    }
}

/// How many rows a raster task covers, and how many tasks an item gets.
#[derive(Debug, Clone, Copy)]
struct BandPlan {
    bands_per_item: usize,
}

/// The most tasks handed to the pool in one go (items are processed in chunks beyond).
const MAX_TASKS_PER_RUN: usize = 256;

/// One raster task: a band of rows of one item, with the output rows it owns.
struct BandTask<'t> {
    item: usize,
    first_row: usize,
    keys: &'t mut [u64],
    rgb: &'t mut [[u8; 3]],
    depth_m: &'t mut [f32],
    mask: &'t mut [u8],
}

/// One projection task: the vertices of one instance.
struct VertexTask<'t> {
    mesh: usize,
    projection: Projection,
    out: &'t mut [ProjectedVertex],
}

/// The CPU renderer: meshes uploaded once, a worker pool, and scratch space that grows to
/// the largest frame seen and is then reused.
#[derive(Debug)]
pub struct CpuRenderer {
    meshes: Vec<Mesh>,
    pool: WorkerPool,
    /// Projected vertices of every instance of the current chunk of items.
    vertices: Vec<ProjectedVertex>,
    /// Start of each instance's vertices in `vertices`, per item: `instance_offsets[item]
    /// [instance]`, flattened with `item_first_instance`.
    instance_offsets: Vec<usize>,
    item_first_instance: Vec<usize>,
}

impl CpuRenderer {
    /// A renderer for these meshes, using `threads` threads (the caller's included).
    pub fn new(meshes: Vec<Mesh>, threads: usize) -> Self {
        Self {
            meshes,
            pool: WorkerPool::new(threads.max(1)),
            vertices: Vec::new(),
            instance_offsets: Vec::new(),
            item_first_instance: Vec::new(),
        }
    }

    /// The meshes, indexed by [`Instance::mesh`].
    pub fn meshes(&self) -> &[Mesh] {
        &self.meshes
    }

    /// Threads used per frame.
    pub fn thread_count(&self) -> usize {
        self.pool.thread_count()
    }

    /// The worker pool, for other per-frame work to share the renderer's threads.
    pub fn pool(&self) -> &WorkerPool {
        &self.pool
    }

    /// Renders each item into the target of the same index.
    ///
    /// # Errors
    /// [`KernelError::SizeMismatch`] when the item and target counts differ or a target's
    /// size is not its camera's; [`KernelError::LimitExceeded`] for more than
    /// [`MAX_INSTANCES_PER_IMAGE`] instances in an item; [`KernelError::InvalidMesh`] for a
    /// mesh index past the mesh list; [`KernelError::NotFinite`] for a non-finite pose or
    /// intrinsics. Nothing is drawn when an error is returned.
    pub fn render(
        &mut self,
        items: &[RenderItem<'_>],
        targets: &mut [RenderTarget],
        shading: &Shading,
    ) -> Result<(), KernelError> {
        Self::check_batch(items, targets, self.meshes.len())?;
        // Chunks of items small enough that their bands fit one pool run.
        let plan = self.band_plan(items);
        let items_per_chunk = (MAX_TASKS_PER_RUN / plan.bands_per_item).max(1);
        for (item_chunk, target_chunk) in items
            .chunks(items_per_chunk)
            .zip(targets.chunks_mut(items_per_chunk))
        {
            self.project_chunk(item_chunk);
            self.raster_chunk(item_chunk, target_chunk, plan, shading);
        }
        Ok(())
    }

    /// The checks every renderer makes before drawing anything: one target per item, and
    /// [`Self::check_item`] for each.
    pub(crate) fn check_batch(
        items: &[RenderItem<'_>],
        targets: &[RenderTarget],
        mesh_count: usize,
    ) -> Result<(), KernelError> {
        if items.len() != targets.len() {
            return Err(KernelError::SizeMismatch {
                what: "render targets (one per item)",
                expected: items.len(),
                found: targets.len(),
            });
        }
        for (item, target) in items.iter().zip(targets) {
            Self::check_item(item, target, mesh_count)?;
        }
        Ok(())
    }

    /// The checks of [`CpuRenderer::render`] for one item against a list of `mesh_count`
    /// meshes (shared with the GPU renderer, so that both refuse the same input).
    pub(crate) fn check_item(
        item: &RenderItem<'_>,
        target: &RenderTarget,
        mesh_count: usize,
    ) -> Result<(), KernelError> {
        let camera = &item.camera;
        let pixels = camera.width * camera.height;
        if target.width != camera.width || target.height != camera.height {
            return Err(KernelError::SizeMismatch {
                what: "render target pixels (width x height of its camera)",
                expected: pixels,
                found: target.width * target.height,
            });
        }
        if item.instances.len() > MAX_INSTANCES_PER_IMAGE {
            return Err(KernelError::LimitExceeded {
                what: "object instances in one image",
                limit: MAX_INSTANCES_PER_IMAGE,
                found: item.instances.len(),
            });
        }
        if camera.intrinsics.k.iter().any(|v| !v.is_finite()) {
            return Err(KernelError::NotFinite { what: "intrinsics" });
        }
        for instance in item.instances {
            if instance.mesh >= mesh_count {
                return Err(KernelError::InvalidMesh {
                    reason: "instance refers to a mesh index past the renderer's mesh list",
                });
            }
            let pose = &instance.camera_from_object;
            if pose
                .rotation
                .iter()
                .chain(pose.translation_m.iter())
                .any(|v| !v.is_finite())
            {
                return Err(KernelError::NotFinite {
                    what: "camera_from_object pose",
                });
            }
        }
        Ok(())
    }

    /// Enough bands that every thread has several tasks, but none thinner than 8 rows.
    fn band_plan(&self, items: &[RenderItem<'_>]) -> BandPlan {
        let threads = self.pool.thread_count();
        let max_height = items.iter().map(|i| i.camera.height).max().unwrap_or(1);
        let wanted = (4 * threads).div_ceil(items.len().max(1));
        BandPlan {
            bands_per_item: wanted.clamp(1, (max_height / 8).max(1)),
        }
    }

    /// Projects the vertices of every instance of these items into `self.vertices`.
    fn project_chunk(&mut self, items: &[RenderItem<'_>]) {
        self.instance_offsets.clear();
        self.item_first_instance.clear();
        let mut total = 0;
        for item in items {
            self.item_first_instance.push(self.instance_offsets.len());
            for instance in item.instances {
                self.instance_offsets.push(total);
                total += self.meshes[instance.mesh].positions_m().len();
            }
        }
        self.instance_offsets.push(total);
        self.item_first_instance
            .push(self.instance_offsets.len() - 1);
        let invalid = ProjectedVertex {
            x_fp: 0,
            y_fp: 0,
            inv_z: -1.0,
            normal: [0.0; 3],
        };
        self.vertices.resize(total, invalid);

        let meshes = &self.meshes;
        let mut remaining: &mut [ProjectedVertex] = &mut self.vertices;
        let mut instances = items.iter().flat_map(|item| {
            let camera = item.camera;
            item.instances
                .iter()
                .map(move |instance| (camera, *instance))
        });
        loop {
            let mut tasks: [Option<Mutex<VertexTask<'_>>>; MAX_TASKS_PER_RUN] =
                [const { None }; MAX_TASKS_PER_RUN];
            let mut task_count = 0;
            for (camera, instance) in instances.by_ref().take(MAX_TASKS_PER_RUN) {
                let count = meshes[instance.mesh].positions_m().len();
                let (out, rest) = std::mem::take(&mut remaining).split_at_mut(count);
                remaining = rest;
                tasks[task_count] = Some(Mutex::new(VertexTask {
                    mesh: instance.mesh,
                    projection: projection(&camera, &instance.camera_from_object),
                    out,
                }));
                task_count += 1;
            }
            if task_count == 0 {
                break;
            }
            self.pool.run(task_count, &|index| {
                if let Some(Ok(mut task)) = tasks[index].as_ref().map(Mutex::lock) {
                    let mesh = &meshes[task.mesh];
                    let projection = task.projection;
                    for ((out, &position), &normal) in task
                        .out
                        .iter_mut()
                        .zip(mesh.positions_m())
                        .zip(mesh.normals())
                    {
                        *out = project_vertex(&projection, position, normal);
                    }
                }
            });
        }
    }

    /// Rasterizes and shades the items whose vertices `project_chunk` just projected.
    fn raster_chunk(
        &self,
        items: &[RenderItem<'_>],
        targets: &mut [RenderTarget],
        plan: BandPlan,
        shading: &Shading,
    ) {
        let mut tasks: [Option<Mutex<BandTask<'_>>>; MAX_TASKS_PER_RUN] =
            [const { None }; MAX_TASKS_PER_RUN];
        let mut task_count = 0;
        for (item_index, target) in targets.iter_mut().enumerate() {
            let width = target.width;
            let rows_per_band = target.height.div_ceil(plan.bands_per_item).max(1);
            let chunk = rows_per_band * width.max(1);
            let bands = target
                .keys
                .chunks_mut(chunk)
                .zip(target.rgb.chunks_mut(chunk))
                .zip(target.depth_m.chunks_mut(chunk))
                .zip(target.mask.chunks_mut(chunk));
            for (band, (((keys, rgb), depth_m), mask)) in bands.enumerate() {
                tasks[task_count] = Some(Mutex::new(BandTask {
                    item: item_index,
                    first_row: band * rows_per_band,
                    keys,
                    rgb,
                    depth_m,
                    mask,
                }));
                task_count += 1;
            }
        }
        self.pool.run(task_count, &|index| {
            if let Some(Ok(mut task)) = tasks[index].as_ref().map(Mutex::lock) {
                let item = &items[task.item];
                self.raster_band(item, &mut task);
                self.shade_band(item, &mut task, shading);
            }
        });
    }

    /// The projected vertices of instance `instance` of chunk item `item`.
    fn instance_vertices(&self, item: usize, instance: usize) -> &[ProjectedVertex] {
        let index = self.item_first_instance[item] + instance;
        &self.vertices[self.instance_offsets[index]..self.instance_offsets[index + 1]]
    }

    fn raster_band(&self, item: &RenderItem<'_>, task: &mut BandTask<'_>) {
        task.keys.fill(EMPTY_KEY);
        let width = item.camera.width as i64;
        let first_row = task.first_row as i64;
        let last_row = first_row + (task.keys.len() as i64 / width.max(1)) - 1;
        for (instance_index, instance) in item.instances.iter().enumerate() {
            let vertices = self.instance_vertices(task.item, instance_index);
            let mesh = &self.meshes[instance.mesh];
            let (triangles, cull_back_faces) = (mesh.triangles(), mesh.cull_back_faces());
            for (triangle_index, triangle) in triangles.iter().enumerate() {
                let [a, b, c] = triangle.map(|i| vertices[i as usize]);
                // Cheap reject of triangles outside this band's rows, before the set-up.
                let subpixel = 1_i64 << SUBPIXEL_BITS;
                let min_y = i64::from(a.y_fp.min(b.y_fp).min(c.y_fp));
                let max_y = i64::from(a.y_fp.max(b.y_fp).max(c.y_fp));
                let min_x = i64::from(a.x_fp.min(b.x_fp).min(c.x_fp));
                let max_x = i64::from(a.x_fp.max(b.x_fp).max(c.x_fp));
                if max_y < first_row * subpixel
                    || min_y > last_row * subpixel
                    || max_x < 0
                    || min_x > (width - 1) * subpixel
                {
                    continue;
                }
                let Some(setup) = setup_triangle(a, b, c, cull_back_faces) else {
                    continue;
                };
                let [min_u, min_v, max_u, max_v] = setup.bbox_px;
                let (u0, u1) = (min_u.max(0), max_u.min(width - 1));
                let (v0, v1) = (min_v.max(first_row), max_v.min(last_row));
                if u0 > u1 {
                    continue;
                }
                let [e0, e1, e2] = setup.edges;
                // Biased edge values (covered when all three are >= 0), walked along the
                // rows; the true weights are the biased ones minus the bias.
                let mut row_start = [
                    e0.at(u0, v0) + e0.bias,
                    e1.at(u0, v0) + e1.bias,
                    e2.at(u0, v0) + e2.bias,
                ];
                for v in v0..=v1 {
                    let row = ((v - first_row) * width) as usize;
                    let mut w = row_start;
                    for u in u0..=u1 {
                        if (w[0] | w[1] | w[2]) >= 0 {
                            let weights = [w[0] - e0.bias, w[1] - e1.bias, w[2] - e2.bias];
                            if let Some(depth_m) = fragment_depth_m(&setup, weights) {
                                let key = visibility_key(depth_m, instance_index, triangle_index);
                                let slot = &mut task.keys[row + u as usize];
                                if key < *slot {
                                    *slot = key;
                                }
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

    fn shade_band(&self, item: &RenderItem<'_>, task: &mut BandTask<'_>, shading: &Shading) {
        let width = item.camera.width;
        let k = &item.camera.intrinsics.k;
        let (fx, skew, cx, fy, cy) = (
            k[(0, 0)] as f32,
            k[(0, 1)] as f32,
            k[(0, 2)] as f32,
            k[(1, 1)] as f32,
            k[(1, 2)] as f32,
        );
        // Background everywhere first (plain memsets), then the covered pixels.
        task.rgb.as_flattened_mut().fill(0);
        task.depth_m.fill(0.0);
        task.mask.fill(0);
        let mut current_instance = usize::MAX;
        let mut vertices: &[ProjectedVertex] = &[];
        // No mesh means no instance (`check_item`), so nothing but background.
        let Some(mut mesh) = self.meshes.first() else {
            return;
        };
        for (pixel, &key) in task.keys.iter().enumerate() {
            if key == EMPTY_KEY {
                continue;
            }
            let (depth_m, instance_index, triangle_index) = decode_key(key);
            if instance_index != current_instance {
                current_instance = instance_index;
                vertices = self.instance_vertices(task.item, instance_index);
                mesh = &self.meshes[item.instances[instance_index].mesh];
            }
            let u = (pixel % width) as i64;
            let v = (task.first_row + pixel / width) as i64;
            let triangle = mesh.triangles()[triangle_index];
            let corners = triangle.map(|i| vertices[i as usize]);
            let weights = perspective_weights(&corners, u, v);
            let albedo = match mesh.texture() {
                Some(texture) => sample_bilinear(
                    texture,
                    interpolate(weights, mesh.corner_uvs()[triangle_index]),
                ),
                None => interpolate(weights, triangle.map(|i| mesh.colors()[i as usize])),
            };
            let normals = corners.map(|c| c.normal);
            let y_ray = (v as f32 - cy) / fy;
            let x_ray = (u as f32 - cx - skew * y_ray) / fx;
            task.rgb[pixel] = shade_albedo(shading, albedo, weights, normals, [x_ray, y_ray, 1.0]);
            task.depth_m[pixel] = depth_m;
            task.mask[pixel] = (instance_index + 1) as u8;
        }
    }
}

/// The `f32` projection of an instance (see `raster.rs`); the CUDA renderer uses it too.
pub(crate) fn projection(camera: &Camera, camera_from_object: &Pose) -> Projection {
    let r = camera_from_object.rotation_row_major().map(|v| v as f32);
    let t = &camera_from_object.translation_m;
    let k = &camera.intrinsics.k;
    Projection {
        rotation: r,
        translation_m: [t.x as f32, t.y as f32, t.z as f32],
        fx: k[(0, 0)] as f32,
        skew: k[(0, 1)] as f32,
        cx: k[(0, 2)] as f32,
        fy: k[(1, 1)] as f32,
        cy: k[(1, 2)] as f32,
    }
}

#[cfg(test)]
mod tests;
