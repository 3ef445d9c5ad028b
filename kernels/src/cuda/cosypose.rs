//! CosyPose's crop geometry and pose update on the GPU: [`GpuCosyPose`], the twin of
//! [`crop_box`](crate::cosypose::crop::crop_box) + [`k_crop`](crate::cosypose::crop::k_crop),
//! [`roi_align_rgb8`](crate::cosypose::crop::roi_align_rgb8) and
//! [`apply_update`](crate::cosypose::update::apply_update) (`kernels/cuda/cosypose.cu`).
//!
//! The kernels repeat the CPU twins operation for operation (f64 for the crop box, `K_crop`
//! and the update, f32 for RoIAlign; the CPU's order, no FMA contraction, IEEE division
//! and square root): the results are expected to be bit-identical.
//! `tests/gpu_cosypose_equivalence.rs` checks that on a GPU; the unit tests below check,
//! on any machine, that the host side (packing, status codes) and a line-by-line Rust
//! transcription of the kernels give the CPU twins' bits.
//!
//! Every batch method writes one result per item: `out[i]` is what the CPU twin returns
//! for item `i` alone, its error included (the kernels report a status code per item,
//! turned here into the CPU's [`KernelError`]). The method's own error is for the whole
//! batch: slice lengths, limits, CUDA.
//!
//! Device buffers are allocated once, at creation, for `max_batch` objects and images of
//! at most `max_width` x `max_height`; a call copies its inputs up, launches one kernel,
//! copies the results down and synchronises. As in the renderer, cudarc's launch builder
//! still builds its small argument list on the heap at each launch.

use std::sync::Arc;

use cudarc::driver::{CudaFunction, CudaSlice, CudaStream, LaunchConfig, PushKernelArg};
use nalgebra::{Matrix3, Vector3};

use super::{driver_error, guarded, CompiledImage, CudaDevice, MappedHostBuffer, COSYPOSE_SOURCE};
use crate::cosypose::{BoxXyxy, CROP_HEIGHT, CROP_WIDTH};
use crate::{Intrinsics, KernelError, Pose};

/// Channels of one item of the network input: the crop's RGB (written by
/// [`GpuCosyPose::roi_align_batch`]), then the render's RGB.
pub const INPUT_CHANNELS: usize = 6;
/// Floats of one item of the network input, `6 x 240 x 320`.
pub const INPUT_ITEM_LEN: usize = INPUT_CHANNELS * CROP_HEIGHT * CROP_WIDTH;

/// Threads per block of `cosypose_crop`: `POSED_CROP_BLOCK` in `cosypose.cu`.
const BLOCK_CROP: u32 = 256;
/// Threads per block of `cosypose_roi_align_rgb8`.
const BLOCK_PIXELS: u32 = 256;
/// Threads per block of `cosypose_apply_update`.
const BLOCK_UPDATE: u32 = 128;
/// RoIAlign puts the batch item on the grid's y axis.
const MAX_BATCH: usize = 65_535;

/// Status codes of `cosypose_crop` (`POSED_CROP_*` in `cosypose.cu`).
const CROP_OK: u32 = 0;
const CROP_NO_POINTS: u32 = 1;
const CROP_NOT_FINITE: u32 = 2;
const CROP_NOT_POSITIVE: u32 = 3;

/// Status codes of `cosypose_apply_update` (`POSED_UPDATE_*` in `cosypose.cu`).
const UPDATE_OK: u32 = 0;
const UPDATE_6D_NOT_FINITE: u32 = 1;
const UPDATE_A1_ZERO: u32 = 2;
const UPDATE_A2_PARALLEL: u32 = 3;
const UPDATE_T_NOT_FINITE: u32 = 4;

/// The crop of one object: the box ([`crop_box`](crate::cosypose::crop::crop_box)) and
/// the intrinsics of its 240 x 320 resize ([`k_crop`](crate::cosypose::crop::k_crop)).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Crop {
    /// `(x1, y1, x2, y2)` in pixels of the full image; may leave the image.
    pub box_xyxy: BoxXyxy,
    /// `K_crop`.
    pub k_crop: Intrinsics,
}

/// CosyPose's per-object geometry on one GPU: the crop box and `K_crop` of a batch of
/// objects, RoIAlign of the camera image into the network input, and the pose update
/// from the network's outputs.
///
/// A session in the sense of DESIGN.md: it owns its CUDA stream, its kernel handles
/// (resolved once, here), the objects' sampled points (uploaded once, here) and every
/// device buffer, including the network input `[max_batch, 6, 240, 320]`.
pub struct GpuCosyPose {
    stream: Arc<CudaStream>,
    crop: CudaFunction,
    roi_align: CudaFunction,
    apply_update: CudaFunction,
    image: CompiledImage,
    ordinal: usize,
    max_batch: usize,
    max_width: usize,
    max_height: usize,
    /// Host copy of each object's point count.
    point_counts: Vec<u32>,
    /// xyz f32 triples, metres, object frame, the objects one after the other.
    points_m: CudaSlice<f32>,
    object_first_point: CudaSlice<u32>,
    object_point_count: CudaSlice<u32>,
    /// Host staging, sized for `max_batch` at creation.
    objects_host: Vec<u32>,
    poses_host: Vec<f64>,
    boxes_host: Vec<f64>,
    k_crops_host: Vec<f64>,
    status_host: Vec<u32>,
    outputs_host: Vec<f32>,
    focal_lengths_host: Vec<f64>,
    updated_host: Vec<f64>,
    /// Device buffers, same layouts as the host staging (see `cosypose.cu`).
    objects: CudaSlice<u32>,
    poses: CudaSlice<f64>,
    k: CudaSlice<f64>,
    boxes: CudaSlice<f64>,
    k_crops: CudaSlice<f64>,
    status: CudaSlice<u32>,
    rgb: CudaSlice<u8>,
    input: CudaSlice<f32>,
    outputs: CudaSlice<f32>,
    focal_lengths: CudaSlice<f64>,
    updated: CudaSlice<f64>,
}

impl std::fmt::Debug for GpuCosyPose {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuCosyPose")
            .field("objects", &self.point_counts.len())
            .field("max_batch", &self.max_batch)
            .field("max_width", &self.max_width)
            .field("max_height", &self.max_height)
            .field("target", &self.image.target)
            .finish()
    }
}

impl GpuCosyPose {
    /// Compiles (or loads from the cache) `cosypose.cu` for `device`, uploads each
    /// object's sampled points (metres, object frame; the points the CPU twin's
    /// `crop_box` takes, e.g. the 2,000 of [`crate::cosypose::sample`]) once, and
    /// allocates the buffers of a batch of `max_batch` objects on an image of at most
    /// `max_width` x `max_height`. Objects are then named by their index in
    /// `object_points_m`. An empty point set is allowed: its crops fail as on the CPU.
    ///
    /// # Errors
    /// [`KernelError::Empty`] without objects; [`KernelError::InvalidValue`] for a zero
    /// limit; [`KernelError::LimitExceeded`] for a batch above 65,535 or more than 2^32 - 1
    /// points or image bytes; CUDA errors from compiling, loading or allocating.
    pub fn new<P: AsRef<[[f32; 3]]>>(
        device: &CudaDevice,
        max_batch: usize,
        max_width: usize,
        max_height: usize,
        object_points_m: &[P],
    ) -> Result<Self, KernelError> {
        if object_points_m.is_empty() {
            return Err(KernelError::Empty {
                what: "object point sets for GpuCosyPose",
            });
        }
        if max_batch == 0 || max_width == 0 || max_height == 0 {
            return Err(KernelError::InvalidValue {
                what: "GpuCosyPose limits",
                reason: "max_batch, max_width and max_height must be at least 1",
            });
        }
        let max_u32 = u32::MAX as usize;
        let total_points: usize = object_points_m.iter().map(|p| p.as_ref().len()).sum();
        let image_bytes = max_width.saturating_mul(max_height).saturating_mul(3);
        for (what, limit, found) in [
            (
                "GpuCosyPose max_batch (one grid row per item)",
                MAX_BATCH,
                max_batch,
            ),
            (
                "points of all objects (GpuCosyPose, 32-bit indices)",
                max_u32,
                total_points,
            ),
            (
                "GpuCosyPose image bytes (3 x max_width x max_height)",
                max_u32,
                image_bytes,
            ),
        ] {
            if found > limit {
                return Err(KernelError::LimitExceeded { what, limit, found });
            }
        }
        // All fit in u32: checked above.
        let point_counts: Vec<u32> = object_points_m
            .iter()
            .map(|p| p.as_ref().len() as u32)
            .collect();
        let mut first_points = Vec::with_capacity(point_counts.len());
        let mut points_flat = Vec::with_capacity(3 * total_points.max(1));
        for points in object_points_m {
            first_points.push((points_flat.len() / 3) as u32);
            points_flat.extend_from_slice(points.as_ref().as_flattened());
        }
        if points_flat.is_empty() {
            // No zero-sized allocation; no object reads it (every count is 0).
            points_flat.extend_from_slice(&[0.0; 3]);
        }

        let module = device.load_module(&COSYPOSE_SOURCE)?;
        let crop = module.function("cosypose_crop")?;
        let roi_align = module.function("cosypose_roi_align_rgb8")?;
        let apply_update = module.function("cosypose_apply_update")?;
        let image = module.image().clone();

        guarded("allocating the GPU CosyPose buffers", || {
            let stream = device
                .context()
                .new_stream()
                .map_err(driver_error("cuStreamCreate"))?;
            let points_m = stream
                .clone_htod(points_flat.as_slice())
                .map_err(driver_error("cuMemcpyHtoD"))?;
            let object_first_point = stream
                .clone_htod(first_points.as_slice())
                .map_err(driver_error("cuMemcpyHtoD"))?;
            let object_point_count = stream
                .clone_htod(point_counts.as_slice())
                .map_err(driver_error("cuMemcpyHtoD"))?;
            let alloc_f64 = |len: usize| {
                stream
                    .alloc_zeros::<f64>(len)
                    .map_err(driver_error("cuMemAlloc"))
            };
            let alloc_u32 = |len: usize| {
                stream
                    .alloc_zeros::<u32>(len)
                    .map_err(driver_error("cuMemAlloc"))
            };
            let alloc_f32 = |len: usize| {
                stream
                    .alloc_zeros::<f32>(len)
                    .map_err(driver_error("cuMemAlloc"))
            };
            let objects = alloc_u32(max_batch)?;
            let poses = alloc_f64(12 * max_batch)?;
            let k = alloc_f64(9)?;
            let boxes = alloc_f64(4 * max_batch)?;
            let k_crops = alloc_f64(9 * max_batch)?;
            let status = alloc_u32(max_batch)?;
            let rgb = stream
                .alloc_zeros::<u8>(image_bytes)
                .map_err(driver_error("cuMemAlloc"))?;
            let input = alloc_f32(INPUT_ITEM_LEN * max_batch)?;
            let outputs = alloc_f32(9 * max_batch)?;
            let focal_lengths = alloc_f64(2 * max_batch)?;
            let updated = alloc_f64(12 * max_batch)?;
            stream
                .synchronize()
                .map_err(driver_error("cuStreamSynchronize"))?;
            Ok(Self {
                stream,
                crop,
                roi_align,
                apply_update,
                image,
                ordinal: device.ordinal(),
                max_batch,
                max_width,
                max_height,
                point_counts,
                points_m,
                object_first_point,
                object_point_count,
                objects_host: vec![0; max_batch],
                poses_host: vec![0.0; 12 * max_batch],
                boxes_host: vec![0.0; 4 * max_batch],
                k_crops_host: vec![0.0; 9 * max_batch],
                status_host: vec![0; max_batch],
                outputs_host: vec![0.0; 9 * max_batch],
                focal_lengths_host: vec![0.0; 2 * max_batch],
                updated_host: vec![0.0; 12 * max_batch],
                objects,
                poses,
                k,
                boxes,
                k_crops,
                status,
                rgb,
                input,
                outputs,
                focal_lengths,
                updated,
            })
        })
    }

    /// The number of objects (point sets) uploaded at creation.
    pub fn object_count(&self) -> usize {
        self.point_counts.len()
    }

    /// The most items a batch may hold.
    pub fn max_batch(&self) -> usize {
        self.max_batch
    }

    /// The compiled `cosypose.cu`: target, NVRTC warnings (the log), cache status.
    pub fn compiled_image(&self) -> &CompiledImage {
        &self.image
    }

    /// The crop of each object `objects[i]` at `camera_from_object[i]` in an image of
    /// `image_width` x `image_height` seen through `k`, into `out[i]`: the CPU twin's
    /// `crop_box(k, pose, points, width, height)` then `k_crop(k, box)`, errors included.
    ///
    /// # Errors
    /// [`KernelError::SizeMismatch`] when the slices differ in length,
    /// [`KernelError::LimitExceeded`] for more than `max_batch` items or an object index
    /// past the point sets; CUDA errors. Then nothing is written to `out`.
    pub fn crop_batch(
        &mut self,
        k: &Intrinsics,
        image_width: usize,
        image_height: usize,
        camera_from_object: &[Pose],
        objects: &[usize],
        out: &mut [Result<Crop, KernelError>],
    ) -> Result<(), KernelError> {
        let n = camera_from_object.len();
        self.check_batch(
            n,
            &[
                ("object indices", objects.len()),
                ("crop results", out.len()),
            ],
        )?;
        if let Some(&object) = objects.iter().find(|&&o| o >= self.point_counts.len()) {
            return Err(KernelError::LimitExceeded {
                what: "object index for GpuCosyPose::crop_batch",
                limit: self.point_counts.len() - 1,
                found: object,
            });
        }
        if n == 0 {
            return Ok(());
        }
        if image_width == 0 || image_height == 0 {
            // The CPU twin's errors, in its order, without a launch.
            for (&object, slot) in objects.iter().zip(out.iter_mut()) {
                *slot = Err(if self.point_counts[object] == 0 {
                    crop_error(CROP_NO_POINTS)
                } else {
                    KernelError::InvalidValue {
                        what: "image size",
                        reason: "width and height must be positive",
                    }
                });
            }
            return Ok(());
        }
        for (i, (pose, &object)) in camera_from_object.iter().zip(objects).enumerate() {
            // Below point_counts.len(), which fits in u32.
            self.objects_host[i] = object as u32;
            self.poses_host[12 * i..12 * i + 12].copy_from_slice(&pack_pose(pose));
        }
        let k_row_major = pack_matrix(&k.k);
        // As the CPU twin converts them.
        let (width, height) = (image_width as f64, image_height as f64);

        guarded("GPU CosyPose crop", || {
            let stream = &self.stream;
            stream
                .memcpy_htod(&self.objects_host[..n], &mut self.objects)
                .map_err(driver_error("cuMemcpyHtoDAsync"))?;
            stream
                .memcpy_htod(&self.poses_host[..12 * n], &mut self.poses)
                .map_err(driver_error("cuMemcpyHtoDAsync"))?;
            stream
                .memcpy_htod(&k_row_major, &mut self.k)
                .map_err(driver_error("cuMemcpyHtoDAsync"))?;
            let mut builder = stream.launch_builder(&self.crop);
            builder
                .arg(&self.points_m)
                .arg(&self.object_first_point)
                .arg(&self.object_point_count)
                .arg(&self.objects)
                .arg(&self.poses)
                .arg(&self.k)
                .arg(&width)
                .arg(&height)
                .arg(&mut self.boxes)
                .arg(&mut self.k_crops)
                .arg(&mut self.status);
            let config = LaunchConfig {
                // n <= max_batch <= 65,535.
                grid_dim: (n as u32, 1, 1),
                block_dim: (BLOCK_CROP, 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: cosypose_crop(const float* points_m, const unsigned* object_first_point,
            // const unsigned* object_point_count, const unsigned* objects,
            // const double* poses, const double* k, double width, double height,
            // double* boxes, double* k_crops, unsigned* status), in this order and these
            // types; block b < n reads objects[b] (uploaded above, same stream, checked
            // < object count), that object's points (first + count <= the uploaded
            // points), poses[12 b..], k[..9], and writes boxes[4 b..], k_crops[9 b..],
            // status[b], all sized for max_batch >= n. The block is POSED_CROP_BLOCK
            // threads, the size of the kernel's shared arrays.
            unsafe { builder.launch(config) }.map_err(driver_error("launch of cosypose_crop"))?;
            stream
                .memcpy_dtoh(&self.boxes.slice(..4 * n), &mut self.boxes_host[..4 * n])
                .map_err(driver_error("cuMemcpyDtoHAsync"))?;
            stream
                .memcpy_dtoh(
                    &self.k_crops.slice(..9 * n),
                    &mut self.k_crops_host[..9 * n],
                )
                .map_err(driver_error("cuMemcpyDtoHAsync"))?;
            stream
                .memcpy_dtoh(&self.status.slice(..n), &mut self.status_host[..n])
                .map_err(driver_error("cuMemcpyDtoHAsync"))?;
            stream
                .synchronize()
                .map_err(driver_error("cuStreamSynchronize"))
        })?;
        for (i, slot) in out.iter_mut().enumerate() {
            *slot = crop_result(
                self.status_host[i],
                &self.boxes_host[4 * i..4 * i + 4],
                &self.k_crops_host[9 * i..9 * i + 9],
            );
        }
        Ok(())
    }

    /// RoIAlign of the 8-bit RGB image `rgb` (row-major, 3 bytes per pixel) over each
    /// crop box `crops[i]` into item `i` of the network input, channels 0..3 (see
    /// [`GpuCosyPose::network_input`]); `out[i]` is the CPU twin's
    /// `roi_align_rgb8(rgb, width, height, crops[i], ..)` result. An item with an error is
    /// left untouched, as the CPU twin leaves its output.
    ///
    /// # Errors
    /// The CPU twin's errors about the image ([`KernelError::InvalidValue`] for a zero
    /// size, [`KernelError::SizeMismatch`] for the wrong byte count);
    /// [`KernelError::SizeMismatch`] when `out` and `crops` differ in length;
    /// [`KernelError::LimitExceeded`] for more than `max_batch` items or an image larger
    /// than the limits; CUDA errors. Then nothing is written.
    pub fn roi_align_batch(
        &mut self,
        rgb: &[u8],
        width: usize,
        height: usize,
        crops: &[BoxXyxy],
        out: &mut [Result<(), KernelError>],
    ) -> Result<(), KernelError> {
        self.roi_align(rgb, None, width, height, crops, out)
    }

    /// [`GpuCosyPose::roi_align_batch`] reading the image where it lies: `rgb` must lie
    /// inside `memory` (a camera frame converted in place by
    /// [`GpuColor::to_rgb8_mapped`](super::GpuColor::to_rgb8_mapped)), and nothing is
    /// copied up. Best on an integrated GPU ([`CudaDevice::integrated`]); a discrete GPU
    /// reads each texel over PCIe, several times per batch, where one upload is cheaper.
    ///
    /// # Errors
    /// As [`GpuCosyPose::roi_align_batch`]; [`KernelError::InvalidValue`] for an `rgb`
    /// outside `memory` or memory mapped into another GPU.
    pub fn roi_align_batch_mapped(
        &mut self,
        rgb: &[u8],
        memory: &MappedHostBuffer,
        width: usize,
        height: usize,
        crops: &[BoxXyxy],
        out: &mut [Result<(), KernelError>],
    ) -> Result<(), KernelError> {
        self.roi_align(rgb, Some(memory), width, height, crops, out)
    }

    fn roi_align(
        &mut self,
        rgb: &[u8],
        memory: Option<&MappedHostBuffer>,
        width: usize,
        height: usize,
        crops: &[BoxXyxy],
        out: &mut [Result<(), KernelError>],
    ) -> Result<(), KernelError> {
        let n = crops.len();
        self.check_batch(n, &[("RoIAlign results", out.len())])?;
        if width == 0 || height == 0 {
            return Err(KernelError::InvalidValue {
                what: "image size",
                reason: "width and height must be positive",
            });
        }
        if rgb.len() != width.saturating_mul(height).saturating_mul(3) {
            return Err(KernelError::SizeMismatch {
                what: "RGB image bytes",
                expected: width.saturating_mul(height).saturating_mul(3),
                found: rgb.len(),
            });
        }
        for (what, limit, found) in [
            ("image width (GpuCosyPose max_width)", self.max_width, width),
            (
                "image height (GpuCosyPose max_height)",
                self.max_height,
                height,
            ),
        ] {
            if found > limit {
                return Err(KernelError::LimitExceeded { what, limit, found });
            }
        }
        let mapped_rgb = match memory {
            None => None,
            Some(memory) => {
                let Some(address) = memory.device_ptr_of(rgb) else {
                    return Err(KernelError::InvalidValue {
                        what: "mapped RGB image",
                        reason: "its bytes must lie inside the mapped buffer given with it",
                    });
                };
                if memory.ordinal() != self.ordinal {
                    return Err(KernelError::InvalidValue {
                        what: "mapped RGB image",
                        reason: "expected memory mapped into the GpuCosyPose session's GPU, \
                                 found memory mapped into another GPU",
                    });
                }
                Some(address)
            }
        };
        if n == 0 {
            return Ok(());
        }
        for (i, crop) in crops.iter().enumerate() {
            self.boxes_host[4 * i..4 * i + 4].copy_from_slice(crop);
        }
        // Both fit in u32: at most max_width and max_height, whose product is checked.
        let (width_u32, height_u32) = (width as u32, height as u32);
        let item_stride = INPUT_ITEM_LEN as u32;
        let channel_offset = 0u32;

        guarded("GPU CosyPose RoIAlign", || {
            let stream = &self.stream;
            if mapped_rgb.is_none() {
                stream
                    .memcpy_htod(rgb, &mut self.rgb)
                    .map_err(driver_error("cuMemcpyHtoDAsync"))?;
            }
            stream
                .memcpy_htod(&self.boxes_host[..4 * n], &mut self.boxes)
                .map_err(driver_error("cuMemcpyHtoDAsync"))?;
            let mut builder = stream.launch_builder(&self.roi_align);
            match &mapped_rgb {
                Some(address) => builder.arg(address),
                None => builder.arg(&self.rgb),
            };
            builder
                .arg(&width_u32)
                .arg(&height_u32)
                .arg(&self.boxes)
                .arg(&mut self.input)
                .arg(&item_stride)
                .arg(&channel_offset);
            let plane = (CROP_HEIGHT * CROP_WIDTH) as u32;
            let config = LaunchConfig {
                grid_dim: (plane.div_ceil(BLOCK_PIXELS), n as u32, 1),
                block_dim: (BLOCK_PIXELS, 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: cosypose_roi_align_rgb8(const unsigned char* rgb, unsigned width,
            // unsigned height, const double* boxes, float* out, unsigned item_stride,
            // unsigned channel_offset), in this order and these types; rgb holds the
            // width * height * 3 bytes uploaded above (<= its max size, same stream), or
            // is the device address of `rgb`'s bytes inside the mapped buffer (checked
            // by device_ptr_of, the length checked above; the borrow keeps them alive),
            // texel indices are clamped to the image; row y < n reads boxes[4 y..]
            // (uploaded above) and writes out[y * INPUT_ITEM_LEN + c * 240 * 320 + p] for
            // c < 3 and p < 240 * 320 (threads past that return), inside the
            // max_batch * INPUT_ITEM_LEN floats of the input buffer.
            unsafe { builder.launch(config) }
                .map_err(driver_error("launch of cosypose_roi_align_rgb8"))?;
            stream
                .synchronize()
                .map_err(driver_error("cuStreamSynchronize"))
        })?;
        for (crop, slot) in crops.iter().zip(out.iter_mut()) {
            // The CPU twin's check, on the CPU twin's conversion (the kernel skips the
            // same items).
            *slot = if crop.iter().all(|&v| (v as f32).is_finite()) {
                Ok(())
            } else {
                Err(KernelError::NotFinite { what: "crop box" })
            };
        }
        Ok(())
    }

    /// The network input, `[max_batch, 6, 240, 320]` f32 on the device: item `i` of the
    /// last [`GpuCosyPose::roi_align_batch`] starts at `i * INPUT_ITEM_LEN`, its crop's
    /// RGB in channels 0..3. Channels 3..6 (the render) are left to the caller; the
    /// buffer is zeroed at creation. Written on this session's stream.
    pub fn network_input(&self) -> &CudaSlice<f32> {
        &self.input
    }

    /// The network input, for whoever writes channels 3..6 (see
    /// [`GpuCosyPose::network_input`]); synchronise with this session's stream.
    pub fn network_input_mut(&mut self) -> &mut CudaSlice<f32> {
        &mut self.input
    }

    /// Copies the first `out.len()` floats of the network input to the host (tests,
    /// debugging), after the work queued on this session's stream.
    ///
    /// # Errors
    /// [`KernelError::LimitExceeded`] when `out` is longer than the input buffer
    /// (`max_batch * INPUT_ITEM_LEN`); CUDA errors.
    pub fn read_network_input(&self, out: &mut [f32]) -> Result<(), KernelError> {
        let len = self.max_batch * INPUT_ITEM_LEN;
        if out.len() > len {
            return Err(KernelError::LimitExceeded {
                what: "floats read from the GpuCosyPose network input",
                limit: len,
                found: out.len(),
            });
        }
        guarded("reading the GPU CosyPose network input", || {
            self.stream
                .memcpy_dtoh(&self.input.slice(..out.len()), out)
                .map_err(driver_error("cuMemcpyDtoHAsync"))?;
            self.stream
                .synchronize()
                .map_err(driver_error("cuStreamSynchronize"))
        })
    }

    /// Applies the network output `outputs[i]` to `camera_from_object[i]` with the
    /// intrinsics of its crop `k_crops[i]` (only `fx'` and `fy'` are used) into `out[i]`:
    /// the CPU twin's `apply_update(pose, output, k_crop)`, errors included.
    ///
    /// # Errors
    /// [`KernelError::SizeMismatch`] when the slices differ in length,
    /// [`KernelError::LimitExceeded`] for more than `max_batch` items; CUDA errors. Then
    /// nothing is written to `out`.
    pub fn apply_update_batch(
        &mut self,
        camera_from_object: &[Pose],
        outputs: &[[f32; 9]],
        k_crops: &[Intrinsics],
        out: &mut [Result<Pose, KernelError>],
    ) -> Result<(), KernelError> {
        let n = camera_from_object.len();
        self.check_batch(
            n,
            &[
                ("network outputs", outputs.len()),
                ("crop intrinsics", k_crops.len()),
                ("update results", out.len()),
            ],
        )?;
        if n == 0 {
            return Ok(());
        }
        for (i, ((pose, output), k_crop)) in camera_from_object
            .iter()
            .zip(outputs)
            .zip(k_crops)
            .enumerate()
        {
            self.poses_host[12 * i..12 * i + 12].copy_from_slice(&pack_pose(pose));
            self.outputs_host[9 * i..9 * i + 9].copy_from_slice(output);
            self.focal_lengths_host[2 * i] = k_crop.k[(0, 0)];
            self.focal_lengths_host[2 * i + 1] = k_crop.k[(1, 1)];
        }
        // n <= max_batch <= 65,535.
        let n_u32 = n as u32;

        guarded("GPU CosyPose update", || {
            let stream = &self.stream;
            stream
                .memcpy_htod(&self.outputs_host[..9 * n], &mut self.outputs)
                .map_err(driver_error("cuMemcpyHtoDAsync"))?;
            stream
                .memcpy_htod(&self.poses_host[..12 * n], &mut self.poses)
                .map_err(driver_error("cuMemcpyHtoDAsync"))?;
            stream
                .memcpy_htod(&self.focal_lengths_host[..2 * n], &mut self.focal_lengths)
                .map_err(driver_error("cuMemcpyHtoDAsync"))?;
            let mut builder = stream.launch_builder(&self.apply_update);
            builder
                .arg(&self.outputs)
                .arg(&self.poses)
                .arg(&self.focal_lengths)
                .arg(&n_u32)
                .arg(&mut self.updated)
                .arg(&mut self.status);
            let config = LaunchConfig {
                grid_dim: (n_u32.div_ceil(BLOCK_UPDATE), 1, 1),
                block_dim: (BLOCK_UPDATE, 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: cosypose_apply_update(const float* outputs, const double* poses,
            // const double* focal_lengths, unsigned n_items, double* updated,
            // unsigned* status), in this order and these types; thread t < n reads
            // outputs[9 t..], poses[12 t..], focal_lengths[2 t..] (uploaded above, same
            // stream) and writes updated[12 t..] and status[t], all sized for
            // max_batch >= n; threads past n return.
            unsafe { builder.launch(config) }
                .map_err(driver_error("launch of cosypose_apply_update"))?;
            stream
                .memcpy_dtoh(
                    &self.updated.slice(..12 * n),
                    &mut self.updated_host[..12 * n],
                )
                .map_err(driver_error("cuMemcpyDtoHAsync"))?;
            stream
                .memcpy_dtoh(&self.status.slice(..n), &mut self.status_host[..n])
                .map_err(driver_error("cuMemcpyDtoHAsync"))?;
            stream
                .synchronize()
                .map_err(driver_error("cuStreamSynchronize"))
        })?;
        for (i, slot) in out.iter_mut().enumerate() {
            *slot = update_result(self.status_host[i], &self.updated_host[12 * i..12 * i + 12]);
        }
        Ok(())
    }

    /// A batch of `n` items fits `max_batch`, and every other slice has `n` entries.
    fn check_batch(&self, n: usize, others: &[(&'static str, usize)]) -> Result<(), KernelError> {
        for &(what, found) in others {
            if found != n {
                return Err(KernelError::SizeMismatch {
                    what,
                    expected: n,
                    found,
                });
            }
        }
        if n > self.max_batch {
            return Err(KernelError::LimitExceeded {
                what: "items of one batch (GpuCosyPose max_batch)",
                limit: self.max_batch,
                found: n,
            });
        }
        Ok(())
    }
}

/// A pose as the kernels take it: rotation row-major, then translation (metres).
fn pack_pose(pose: &Pose) -> [f64; 12] {
    let mut packed = [0.0; 12];
    packed[..9].copy_from_slice(&pose.rotation_row_major());
    packed[9..].copy_from_slice(pose.translation_m.as_slice());
    packed
}

/// A 3 x 3 matrix, row-major.
fn pack_matrix(m: &Matrix3<f64>) -> [f64; 9] {
    let mut packed = [0.0; 9];
    for (i, value) in packed.iter_mut().enumerate() {
        *value = m[(i / 3, i % 3)];
    }
    packed
}

/// The CPU twin's error for a `cosypose_crop` status other than `CROP_OK`.
fn crop_error(status: u32) -> KernelError {
    match status {
        CROP_NO_POINTS => KernelError::Empty {
            what: "model points for the crop",
        },
        CROP_NOT_FINITE => KernelError::NotFinite { what: "crop box" },
        CROP_NOT_POSITIVE => KernelError::InvalidValue {
            what: "crop box",
            reason: "width and height must be positive and finite",
        },
        _ => KernelError::InvalidValue {
            what: "cosypose_crop status",
            reason: "unknown status code (cosypose.cu and cosypose.rs disagree)",
        },
    }
}

/// One item's result of `cosypose_crop`: its status, box (4 values) and `K_crop` (9,
/// row-major).
fn crop_result(status: u32, box_xyxy: &[f64], k_crop: &[f64]) -> Result<Crop, KernelError> {
    if status != CROP_OK {
        return Err(crop_error(status));
    }
    let mut packed = [0.0; 9];
    packed.copy_from_slice(k_crop);
    Ok(Crop {
        box_xyxy: [box_xyxy[0], box_xyxy[1], box_xyxy[2], box_xyxy[3]],
        k_crop: Intrinsics::from_row_major(&packed),
    })
}

/// One item's result of `cosypose_apply_update`: its status and pose (12 values).
fn update_result(status: u32, pose: &[f64]) -> Result<Pose, KernelError> {
    match status {
        UPDATE_OK => Ok(Pose {
            rotation: Matrix3::from_row_slice(&pose[..9]),
            translation_m: Vector3::new(pose[9], pose[10], pose[11]),
        }),
        UPDATE_6D_NOT_FINITE => Err(KernelError::NotFinite {
            what: "6D rotation output",
        }),
        UPDATE_A1_ZERO => Err(KernelError::InvalidValue {
            what: "6D rotation output",
            reason: "the first column a1 has zero length",
        }),
        UPDATE_A2_PARALLEL => Err(KernelError::InvalidValue {
            what: "6D rotation output",
            reason: "the second column a2 is parallel to a1",
        }),
        UPDATE_T_NOT_FINITE => Err(KernelError::NotFinite {
            what: "translation update",
        }),
        _ => Err(KernelError::InvalidValue {
            what: "cosypose_apply_update status",
            reason: "unknown status code (cosypose.cu and cosypose.rs disagree)",
        }),
    }
}

#[cfg(test)]
mod tests {
    //! `cosypose.cu`'s kernels transcribed line by line into Rust (which never contracts
    //! into FMA, like `--fmad=false`), fed by the host side's packing and read back
    //! through its status mapping, against the CPU twins: bit-identical, errors equal.
    //! This checks the operation order and the host side on any machine;
    //! `tests/gpu_cosypose_equivalence.rs` checks the kernels themselves on a GPU.

    // The transcription follows cosypose.cu line by line, C idioms included.
    #![allow(clippy::needless_range_loop)]

    use super::*;
    use crate::cosypose::crop::{crop_box, k_crop, roi_align_rgb8};
    use crate::cosypose::update::apply_update;
    use nalgebra::Rotation3;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    const BLOCK: usize = BLOCK_CROP as usize;

    fn project_robust(k: &[f64; 9], pose: &[f64; 12], x: f64, y: f64, z: f64) -> (f64, f64) {
        let px = ((pose[0] * x + pose[1] * y) + pose[2] * z) + pose[9];
        let py = ((pose[3] * x + pose[4] * y) + pose[5] * z) + pose[10];
        let pz = ((pose[6] * x + pose[7] * y) + pose[8] * z) + pose[11];
        let su = (k[0] * px + k[1] * py) + k[2] * pz;
        let sv = (k[3] * px + k[4] * py) + k[5] * pz;
        let s = (k[6] * px + k[7] * py) + k[8] * pz;
        let depth = s.max(0.1);
        (su / depth, sv / depth)
    }

    /// cosypose_crop for one block: per-thread strided min / max, the shared-memory tree,
    /// then thread 0. Returns (status, box, K_crop).
    fn crop_kernel(
        points: &[[f32; 3]],
        k: &[f64; 9],
        pose: &[f64; 12],
        width: f64,
        height: f64,
    ) -> (u32, [f64; 4], [f64; 9]) {
        let infinity = f64::INFINITY;
        let mut shared = [[0.0f64; BLOCK]; 4];
        for thread in 0..BLOCK {
            let (mut x1, mut y1, mut x2, mut y2) = (infinity, infinity, -infinity, -infinity);
            let mut p = thread;
            while p < points.len() {
                let point = points[p];
                let (u, v) = project_robust(
                    k,
                    pose,
                    f64::from(point[0]),
                    f64::from(point[1]),
                    f64::from(point[2]),
                );
                x1 = x1.min(u);
                y1 = y1.min(v);
                x2 = x2.max(u);
                y2 = y2.max(v);
                p += BLOCK;
            }
            shared[0][thread] = x1;
            shared[1][thread] = y1;
            shared[2][thread] = x2;
            shared[3][thread] = y2;
        }
        let mut stride = BLOCK / 2;
        while stride > 0 {
            for thread in 0..stride {
                let other = thread + stride;
                shared[0][thread] = shared[0][thread].min(shared[0][other]);
                shared[1][thread] = shared[1][thread].min(shared[1][other]);
                shared[2][thread] = shared[2][thread].max(shared[2][other]);
                shared[3][thread] = shared[3][thread].max(shared[3][other]);
            }
            stride /= 2;
        }
        let mut bbox = [0.0; 4];
        let mut kc = [0.0; 9];
        if points.is_empty() {
            return (CROP_NO_POINTS, bbox, kc);
        }
        let (x1, y1, x2, y2) = (shared[0][0], shared[1][0], shared[2][0], shared[3][0]);
        let (xc, yc) = project_robust(k, pose, 0.0, 0.0, 0.0);
        let r = width.max(height) / width.min(height);
        let dx = (x1 - xc).abs().max((x2 - xc).abs());
        let dy = (y1 - yc).abs().max((y2 - yc).abs());
        let crop_w = 2.0 * 1.4 * dx.max(r * dy);
        let crop_h = 2.0 * 1.4 * (dx / r).max(dy);
        bbox[0] = xc - crop_w / 2.0;
        bbox[1] = yc - crop_h / 2.0;
        bbox[2] = xc + crop_w / 2.0;
        bbox[3] = yc + crop_h / 2.0;
        if !bbox.iter().all(|v| v.is_finite()) {
            return (CROP_NOT_FINITE, bbox, kc);
        }
        let box_w = bbox[2] - bbox[0];
        let box_h = bbox[3] - bbox[1];
        if !(box_w > 0.0 && box_h > 0.0 && box_w.is_finite() && box_h.is_finite()) {
            return (CROP_NOT_POSITIVE, bbox, kc);
        }
        let sx = 320.0 / box_w;
        let sy = 240.0 / box_h;
        let cx = (320.0 - 1.0) / 2.0 + sx * (k[2] - (bbox[0] + bbox[2]) / 2.0);
        let cy = (240.0 - 1.0) / 2.0 + sy * (k[5] - (bbox[1] + bbox[3]) / 2.0);
        kc = [sx * k[0], k[1], cx, 0.0, sy * k[4], cy, 0.0, 0.0, 1.0];
        (CROP_OK, bbox, kc)
    }

    #[derive(Clone, Copy)]
    struct AxisSample {
        valid: bool,
        low: u32,
        high: u32,
        frac: f32,
    }

    fn axis_sample(coordinate: f32, size: u32) -> AxisSample {
        let mut sample = AxisSample {
            valid: false,
            low: 0,
            high: 0,
            frac: 0.0,
        };
        let size_f = size as f32;
        if coordinate < -1.0 || coordinate > size_f {
            return sample;
        }
        let c = coordinate.max(0.0);
        let low = c as u32;
        if low >= size - 1 {
            sample.low = size - 1;
            sample.high = size - 1;
            sample.frac = 0.0;
        } else {
            sample.low = low;
            sample.high = low + 1;
            sample.frac = c - low as f32;
        }
        sample.valid = true;
        sample
    }

    fn sample_coordinate(start: f32, bin: f32, index: u32, s: u32) -> f32 {
        let offset = ((s as f32 + 0.5) * bin) / 4.0;
        start + index as f32 * bin + offset
    }

    fn texel(byte: u8) -> f32 {
        f32::from(byte) / 255.0
    }

    /// cosypose_roi_align_rgb8 for every pixel of one item.
    fn roi_align_kernel(rgb: &[u8], width: u32, height: u32, bbox: &[f64], out: &mut [f32]) {
        let plane = (CROP_HEIGHT * CROP_WIDTH) as u32;
        for pixel in 0..plane {
            let i = pixel / 320;
            let j = pixel % 320;
            let x_start = bbox[0] as f32;
            let y_start = bbox[1] as f32;
            let x_end = bbox[2] as f32;
            let y_end = bbox[3] as f32;
            if !(x_start.is_finite()
                && y_start.is_finite()
                && x_end.is_finite()
                && y_end.is_finite())
            {
                return;
            }
            let x_bin = (x_end - x_start).max(1.0) / 320.0;
            let y_bin = (y_end - y_start).max(1.0) / 240.0;
            let mut xs = [axis_sample(0.0, 1); 4];
            let mut ys = [axis_sample(0.0, 1); 4];
            for s in 0..4 {
                xs[s] = axis_sample(sample_coordinate(x_start, x_bin, j, s as u32), width);
                ys[s] = axis_sample(sample_coordinate(y_start, y_bin, i, s as u32), height);
            }
            let mut sums = [0.0f32; 3];
            for sy in 0..4 {
                for sx in 0..4 {
                    if !(ys[sy].valid && xs[sx].valid) {
                        continue;
                    }
                    let ly = ys[sy].frac;
                    let lx = xs[sx].frac;
                    let hy = 1.0 - ly;
                    let hx = 1.0 - lx;
                    let w1 = hy * hx;
                    let w2 = hy * lx;
                    let w3 = ly * hx;
                    let w4 = ly * lx;
                    let at = |y: u32, x: u32| 3 * (y as usize * width as usize + x as usize);
                    let t00 = at(ys[sy].low, xs[sx].low);
                    let t10 = at(ys[sy].low, xs[sx].high);
                    let t01 = at(ys[sy].high, xs[sx].low);
                    let t11 = at(ys[sy].high, xs[sx].high);
                    for c in 0..3 {
                        sums[c] += w1 * texel(rgb[t00 + c])
                            + w2 * texel(rgb[t10 + c])
                            + w3 * texel(rgb[t01 + c])
                            + w4 * texel(rgb[t11 + c]);
                    }
                }
            }
            let count = 16.0f32;
            for c in 0..3 {
                out[c * plane as usize + pixel as usize] = sums[c] / count;
            }
        }
    }

    fn norm(x: f64, y: f64, z: f64) -> f64 {
        ((x * x + y * y) + z * z).sqrt()
    }

    /// cosypose_apply_update for one item: (status, updated pose).
    fn update_kernel(output: &[f32; 9], pose: &[f64; 12], focal: [f64; 2]) -> (u32, [f64; 12]) {
        let mut out = [0.0; 12];
        let o = output.map(f64::from);
        if !o[..6].iter().all(|v| v.is_finite()) {
            return (UPDATE_6D_NOT_FINITE, out);
        }
        let n1 = norm(o[0], o[1], o[2]);
        if n1 < 1e-12 {
            return (UPDATE_A1_ZERO, out);
        }
        let e1 = [o[0] / n1, o[1] / n1, o[2] / n1];
        let cross = [
            e1[1] * o[5] - e1[2] * o[4],
            e1[2] * o[3] - e1[0] * o[5],
            e1[0] * o[4] - e1[1] * o[3],
        ];
        let n3 = norm(cross[0], cross[1], cross[2]);
        if n3 < 1e-12 {
            return (UPDATE_A2_PARALLEL, out);
        }
        let e3 = [cross[0] / n3, cross[1] / n3, cross[2] / n3];
        let e2 = [
            e3[1] * e1[2] - e3[2] * e1[1],
            e3[2] * e1[0] - e3[0] * e1[2],
            e3[0] * e1[1] - e3[1] * e1[0],
        ];
        let delta = [
            e1[0], e2[0], e3[0], e1[1], e2[1], e3[1], e1[2], e2[2], e3[2],
        ];
        let (vx, vy, vz) = (o[6], o[7], o[8]);
        if !(vx.is_finite() && vy.is_finite() && vz.is_finite()) {
            return (UPDATE_T_NOT_FINITE, out);
        }
        let (x, y, z) = (pose[9], pose[10], pose[11]);
        let z_new = vz * z;
        let x_new = (vx / focal[0] + x / z) * z_new;
        let y_new = (vy / focal[1] + y / z) * z_new;
        for row in 0..3 {
            for col in 0..3 {
                out[3 * row + col] = (delta[3 * row] * pose[col]
                    + delta[3 * row + 1] * pose[3 + col])
                    + delta[3 * row + 2] * pose[6 + col];
            }
        }
        out[9] = x_new;
        out[10] = y_new;
        out[11] = z_new;
        (UPDATE_OK, out)
    }

    fn ycbv_k() -> Intrinsics {
        Intrinsics::from_row_major(&[
            1066.778, 0.0, 312.9869, 0.0, 1067.487, 241.3109, 0.0, 0.0, 1.0,
        ])
    }

    fn random_rotation(rng: &mut ChaCha8Rng) -> Matrix3<f64> {
        let axis = Vector3::new(
            rng.random_range(-1.0..1.0),
            rng.random_range(-1.0..1.0),
            rng.random_range(-1.0..1.0),
        );
        *Rotation3::new(axis * rng.random_range(0.0..3.0)).matrix()
    }

    /// An uneven cloud of `n` points, a few centimetres across.
    fn cloud(rng: &mut ChaCha8Rng, n: usize) -> Vec<[f32; 3]> {
        (0..n)
            .map(|_| {
                [
                    rng.random_range(-0.05..0.04),
                    rng.random_range(-0.03..0.06),
                    rng.random_range(-0.02..0.02),
                ]
            })
            .collect()
    }

    fn bits(values: &[f64]) -> Vec<u64> {
        values.iter().map(|v| v.to_bits()).collect()
    }

    fn assert_same_crop(gpu: &Result<Crop, KernelError>, cpu: &Result<Crop, KernelError>) {
        match (gpu, cpu) {
            (Ok(g), Ok(c)) => {
                assert_eq!(bits(&g.box_xyxy), bits(&c.box_xyxy), "box");
                assert_eq!(
                    bits(g.k_crop.k.as_slice()),
                    bits(c.k_crop.k.as_slice()),
                    "K_crop"
                );
            }
            _ => assert_eq!(gpu, cpu),
        }
    }

    fn cpu_crop(
        k: &Intrinsics,
        pose: &Pose,
        points: &[[f32; 3]],
        width: usize,
        height: usize,
    ) -> Result<Crop, KernelError> {
        let box_xyxy = crop_box(k, pose, points, width, height)?;
        Ok(Crop {
            box_xyxy,
            k_crop: k_crop(k, &box_xyxy)?,
        })
    }

    #[test]
    fn the_crop_transcription_is_bit_identical_to_the_cpu_twin() {
        let mut rng = ChaCha8Rng::seed_from_u64(0xc0_5e);
        let clouds = [
            cloud(&mut rng, 2000),
            cloud(&mut rng, 300),
            cloud(&mut rng, 1),
            Vec::new(),
            vec![[0.0; 3]; 5],
        ];
        let skewed =
            Intrinsics::from_row_major(&[600.5, 1.25, 330.0, 0.0, 598.0, 250.5, 0.0, 0.0, 1.0]);
        let mut compared = 0;
        for k in [ycbv_k(), skewed] {
            for (width, height) in [(640, 480), (480, 640), (720, 540)] {
                for points in &clouds {
                    for n in 0..40 {
                        // In view, off to the side, close to or behind the camera.
                        let z: f64 = match n % 4 {
                            0 => rng.random_range(0.3..2.0),
                            1 => rng.random_range(0.05..0.15),
                            2 => rng.random_range(-0.5..0.1),
                            _ => rng.random_range(1.0..5.0),
                        };
                        let pose = Pose {
                            rotation: random_rotation(&mut rng),
                            translation_m: Vector3::new(
                                rng.random_range(-1.0..1.0) * z.abs(),
                                rng.random_range(-0.8..0.8) * z.abs(),
                                z,
                            ),
                        };
                        let (status, bbox, kc) = crop_kernel(
                            points,
                            &pack_matrix(&k.k),
                            &pack_pose(&pose),
                            width as f64,
                            height as f64,
                        );
                        let gpu = crop_result(status, &bbox, &kc);
                        let cpu = cpu_crop(&k, &pose, points, width, height);
                        assert_same_crop(&gpu, &cpu);
                        compared += usize::from(cpu.is_ok());
                    }
                }
            }
        }
        assert!(compared > 600, "{compared} successful crops compared");
        // A NaN pose: every projection is NaN, the box is not finite.
        let mut pose = Pose::identity();
        pose.translation_m.z = f64::NAN;
        let (status, bbox, kc) = crop_kernel(
            &clouds[0],
            &pack_matrix(&ycbv_k().k),
            &pack_pose(&pose),
            640.0,
            480.0,
        );
        assert_eq!(
            crop_result(status, &bbox, &kc),
            cpu_crop(&ycbv_k(), &pose, &clouds[0], 640, 480)
        );
        assert_eq!(status, CROP_NOT_FINITE);
    }

    #[test]
    fn the_roi_align_transcription_is_bit_identical_to_the_cpu_twin() {
        let mut rng = ChaCha8Rng::seed_from_u64(0x0_4a11);
        let (width, height) = (37usize, 23usize);
        let rgb: Vec<u8> = (0..width * height * 3).map(|_| rng.random()).collect();
        let boxes: [BoxXyxy; 8] = [
            [3.25, 2.5, 30.75, 20.125],
            [-10.3, -7.7, 45.1, 33.9],
            [-100.0, -80.0, -60.0, -50.0],
            [35.9, 21.9, 36.4, 22.2],
            [20.0, 10.0, 5.0, 2.0],
            [-1e6, -1e6, 1e6, 1e6],
            [-3.0e38, -3.0e38, 3.0e38, 3.0e38],
            [0.0, 0.0, 1e39, 10.0],
        ];
        let plane = CROP_HEIGHT * CROP_WIDTH;
        for bbox in &boxes {
            let mut cpu = vec![-1.0f32; 3 * plane];
            let mut gpu = vec![-1.0f32; 3 * plane];
            let cpu_result = roi_align_rgb8(&rgb, width, height, bbox, &mut cpu);
            roi_align_kernel(&rgb, width as u32, height as u32, bbox, &mut gpu);
            let gpu_result = if bbox.iter().all(|&v| (v as f32).is_finite()) {
                Ok(())
            } else {
                Err(KernelError::NotFinite { what: "crop box" })
            };
            assert_eq!(gpu_result, cpu_result, "{bbox:?}");
            let as_bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert!(as_bits(&gpu) == as_bits(&cpu), "{bbox:?}");
        }
    }

    #[test]
    fn the_update_transcription_is_bit_identical_to_the_cpu_twin() {
        let mut rng = ChaCha8Rng::seed_from_u64(0x0_dae);
        let mut outputs: Vec<[f32; 9]> = (0..400)
            .map(|n| {
                let spread = if n % 2 == 0 { 0.05 } else { 3.0 };
                let mut o = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0];
                for v in &mut o[..6] {
                    *v += rng.random_range(-spread..spread);
                }
                o[6] = rng.random_range(-30.0..30.0);
                o[7] = rng.random_range(-30.0..30.0);
                o[8] = rng.random_range(0.7..1.3);
                o
            })
            .collect();
        outputs.extend([
            [0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
            [1e-13, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
            [1.0, 0.0, 0.0, 2.0, 0.0, 0.0, 0.0, 0.0, 1.0],
            [f32::NAN, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
            [1.0, 0.0, 0.0, 0.0, f32::INFINITY, 0.0, 0.0, 0.0, 1.0],
            [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, f32::NAN, 1.0],
            [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, f32::INFINITY],
            [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
        ]);
        let mut ok = 0;
        for (n, output) in outputs.iter().enumerate() {
            let pose = Pose {
                rotation: random_rotation(&mut rng),
                translation_m: Vector3::new(
                    rng.random_range(-0.3..0.3),
                    rng.random_range(-0.3..0.3),
                    if n % 50 == 7 {
                        0.0
                    } else {
                        rng.random_range(0.2..2.0)
                    },
                ),
            };
            let k_crop = Intrinsics::from_row_major(&[
                rng.random_range(300.0..3000.0),
                0.0,
                160.0,
                0.0,
                rng.random_range(300.0..3000.0),
                120.0,
                0.0,
                0.0,
                1.0,
            ]);
            let (status, packed) = update_kernel(
                output,
                &pack_pose(&pose),
                [k_crop.k[(0, 0)], k_crop.k[(1, 1)]],
            );
            let gpu = update_result(status, &packed);
            let cpu = apply_update(&pose, output, &k_crop);
            match (&gpu, &cpu) {
                (Ok(g), Ok(c)) => {
                    assert_eq!(bits(g.rotation.as_slice()), bits(c.rotation.as_slice()));
                    assert_eq!(
                        bits(g.translation_m.as_slice()),
                        bits(c.translation_m.as_slice())
                    );
                    ok += 1;
                }
                _ => assert_eq!(gpu, cpu, "output {output:?}"),
            }
        }
        // All but the seven degenerate outputs.
        assert_eq!(ok, outputs.len() - 7);
    }

    #[test]
    fn status_codes_and_kernel_names_match_cosypose_cu() {
        let code = COSYPOSE_SOURCE.code;
        for (name, value) in [
            ("POSED_CROP_BLOCK", BLOCK_CROP),
            ("POSED_CROP_OK", CROP_OK),
            ("POSED_CROP_NO_POINTS", CROP_NO_POINTS),
            ("POSED_CROP_NOT_FINITE", CROP_NOT_FINITE),
            ("POSED_CROP_NOT_POSITIVE", CROP_NOT_POSITIVE),
            ("POSED_UPDATE_OK", UPDATE_OK),
            ("POSED_UPDATE_6D_NOT_FINITE", UPDATE_6D_NOT_FINITE),
            ("POSED_UPDATE_A1_ZERO", UPDATE_A1_ZERO),
            ("POSED_UPDATE_A2_PARALLEL", UPDATE_A2_PARALLEL),
            ("POSED_UPDATE_T_NOT_FINITE", UPDATE_T_NOT_FINITE),
        ] {
            let define = format!("#define {name} {value}");
            assert!(
                code.lines()
                    .any(|line| line == define || line == format!("{define}u")),
                "cosypose.cu lacks `{define}`"
            );
        }
        for (name, value) in [
            ("POSED_CROP_HEIGHT", CROP_HEIGHT),
            ("POSED_CROP_WIDTH", CROP_WIDTH),
            ("POSED_ROI_RATIO", crate::cosypose::ROI_ALIGN_SAMPLING_RATIO),
        ] {
            assert!(
                code.contains(&format!("#define {name} {value}\n")),
                "{name}"
            );
        }
        assert!(code.contains(&format!(
            "#define POSED_CROP_SCALE {:?}\n",
            crate::cosypose::CROP_SCALE
        )));
        assert!(code.contains(&format!(
            "#define POSED_MIN_DEPTH_M {:?}\n",
            crate::cosypose::PROJECTION_MIN_DEPTH_M
        )));
        for kernel in [
            "cosypose_crop",
            "cosypose_roi_align_rgb8",
            "cosypose_apply_update",
        ] {
            assert!(
                code.contains(&format!("extern \"C\" __global__ void {kernel}(")),
                "{kernel}"
            );
        }
    }
}
