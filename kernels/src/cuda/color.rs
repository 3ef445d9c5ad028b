//! Camera colour conversion on the GPU: [`GpuColor`], the twin of
//! [`to_rgb8`](crate::color::to_rgb8) and
//! [`to_normalized_planar`](crate::color::to_normalized_planar) (`kernels/cuda/color.cu`).
//!
//! The YUV maths is integer and the normalisation one IEEE division (`__fdiv_rn`), so the
//! results are bit-identical to the CPU twin's. `tests/gpu_color_equivalence.rs` checks
//! that on a GPU; the unit tests below check, on any machine, that a line-by-line Rust
//! transcription of the kernels, fed by the host side's launch geometry and layout codes,
//! gives the CPU twin's bytes.
//!
//! Input checks are the CPU twin's ([`PackedImage::validate`], then the output's length),
//! in its order and with its errors, then the session's limits. Device staging buffers
//! are sized for frames of at most `max_width` x `max_height` pixels with rows at most
//! `max_stride_bytes` apart and allocated once, by the first call that needs each: a
//! session that only converts mapped memory (the daemon's camera path,
//! [`GpuColor::to_rgb8_mapped`]) allocates none, about 40 MB less at 1920 x 1080 on a
//! Jetson whose GPU memory is the system's. A copying call copies the frame up (its
//! [`PixelLayout::min_len`] bytes), launches one kernel, copies the result down (unless it
//! stays on the device) and synchronises. As in the other sessions, cudarc's launch
//! builder still builds its small argument list on the heap at each launch.

use std::sync::Arc;

use cudarc::driver::{CudaFunction, CudaSlice, CudaStream, LaunchConfig, PushKernelArg};

use super::{driver_error, guarded, CompiledImage, CudaDevice, MappedHostBuffer, COLOR_SOURCE};
use crate::color::{check_conversion, PackedImage, PixelLayout, PLANAR_OUTPUT, RGB8_OUTPUT};
use crate::KernelError;

/// Threads per block along x and y: `POSED_COLOR_BLOCK_X` / `_Y` in `color.cu`.
const BLOCK_X: u32 = 32;
const BLOCK_Y: u32 = 8;

/// Layout codes of `color.cu` (`POSED_COLOR_*`).
const LAYOUT_YUYV: u32 = 0;
const LAYOUT_NV12: u32 = 1;
const LAYOUT_RGB24: u32 = 2;

/// The largest frame side a session accepts: pixel coordinates stay far inside `u32`, and
/// the grid's y dimension (65,535 blocks of 8 rows) is never the limit.
pub const MAX_SIDE: usize = 65_535;

fn layout_code(layout: PixelLayout) -> u32 {
    match layout {
        PixelLayout::Yuyv => LAYOUT_YUYV,
        PixelLayout::Nv12 => LAYOUT_NV12,
        PixelLayout::Rgb24 => LAYOUT_RGB24,
    }
}

/// One thread per output pixel, in blocks of `BLOCK_X` x `BLOCK_Y`.
fn launch_config(width: u32, height: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (width.div_ceil(BLOCK_X), height.div_ceil(BLOCK_Y), 1),
        block_dim: (BLOCK_X, BLOCK_Y, 1),
        shared_mem_bytes: 0,
    }
}

/// The frame's scalar kernel arguments, checked against a session's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FrameArgs {
    layout: u32,
    width: u32,
    height: u32,
    stride: u32,
    /// Bytes copied up: the frame's [`PixelLayout::min_len`].
    packed_len: usize,
    /// Values written: `3 * width * height`.
    output_len: usize,
}

/// The limits of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Limits {
    max_width: usize,
    max_height: usize,
    max_stride_bytes: usize,
}

impl Limits {
    /// Bytes of the largest frame: NV12's `height * 3 / 2` rows (rounded up) of the
    /// largest stride, the most of the three layouts.
    /// (Saturating: an impossible size then fails to allocate.)
    fn packed_capacity(&self) -> usize {
        let rows = self.max_height.saturating_add(self.max_height.div_ceil(2));
        self.max_stride_bytes.saturating_mul(rows)
    }

    fn output_capacity(&self) -> usize {
        self.max_width
            .saturating_mul(self.max_height)
            .saturating_mul(3)
    }

    /// A frame the CPU twin accepts, against these limits.
    fn frame_args(&self, src: &PackedImage<'_>) -> Result<FrameArgs, KernelError> {
        for (what, limit, found) in [
            (
                "camera image width (GpuColor max_width)",
                self.max_width,
                src.width,
            ),
            (
                "camera image height (GpuColor max_height)",
                self.max_height,
                src.height,
            ),
            (
                "camera row stride in bytes (GpuColor max_stride_bytes)",
                self.max_stride_bytes,
                src.stride_bytes,
            ),
        ] {
            if found > limit {
                return Err(KernelError::LimitExceeded { what, limit, found });
            }
        }
        let packed_len = src.layout.min_len(src.width, src.height, src.stride_bytes);
        let capacity = self.packed_capacity();
        if packed_len > capacity {
            // Not reached for a frame within the three limits; kept so that the copy can
            // never overrun the buffer.
            return Err(KernelError::LimitExceeded {
                what: "camera frame bytes (GpuColor buffer)",
                limit: capacity,
                found: packed_len,
            });
        }
        // Each is at most MAX_SIDE or u32::MAX: checked at creation and above.
        Ok(FrameArgs {
            layout: layout_code(src.layout),
            width: src.width as u32,
            height: src.height as u32,
            stride: src.stride_bytes as u32,
            packed_len,
            output_len: src.output_len(),
        })
    }
}

/// Camera colour conversion on one GPU: a packed frame (YUYV, NV12, RGB24) to 8-bit RGB
/// or to normalised planar RGB, on the host or into a device buffer.
///
/// A session in the sense of DESIGN.md: it owns its CUDA stream, its two kernel handles
/// (resolved once, here) and every device buffer (the packed frame, the RGB8 image, the
/// planes), sized at creation and allocated by the first call that uses each.
pub struct GpuColor {
    stream: Arc<CudaStream>,
    to_rgb8: CudaFunction,
    to_planar: CudaFunction,
    image: CompiledImage,
    ordinal: usize,
    limits: Limits,
    /// The frame as the camera delivered it ([`Limits::packed_capacity`] bytes).
    packed: Option<CudaSlice<u8>>,
    /// `3 * max_width * max_height` bytes.
    rgb: Option<CudaSlice<u8>>,
    /// `3 * max_width * max_height` floats.
    planes: Option<CudaSlice<f32>>,
}

/// `buffer`, allocated (zeroed, `len` values on `stream`) if this is its first use.
fn staging<'b, T: cudarc::driver::DeviceRepr + cudarc::driver::ValidAsZeroBits>(
    stream: &Arc<CudaStream>,
    buffer: &'b mut Option<CudaSlice<T>>,
    len: usize,
) -> Result<&'b mut CudaSlice<T>, KernelError> {
    let slice = match buffer.take() {
        Some(slice) => slice,
        None => stream
            .alloc_zeros::<T>(len)
            .map_err(driver_error("cuMemAlloc"))?,
    };
    Ok(buffer.insert(slice))
}

impl std::fmt::Debug for GpuColor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuColor")
            .field("ordinal", &self.ordinal)
            .field("max_width", &self.limits.max_width)
            .field("max_height", &self.limits.max_height)
            .field("max_stride_bytes", &self.limits.max_stride_bytes)
            .field("target", &self.image.target)
            .finish()
    }
}

impl GpuColor {
    /// Compiles (or loads from the cache) `color.cu` for `device` and allocates the
    /// buffers of frames up to `max_width` x `max_height` pixels whose rows are at most
    /// `max_stride_bytes` apart (V4L2's `bytesperline`; for RGB24 at least `3 * width`).
    ///
    /// # Errors
    /// [`KernelError::InvalidValue`] for a zero limit; [`KernelError::LimitExceeded`] for
    /// a side above [`MAX_SIDE`] or a stride above `u32::MAX`; CUDA errors from compiling,
    /// loading or allocating.
    pub fn new(
        device: &CudaDevice,
        max_width: usize,
        max_height: usize,
        max_stride_bytes: usize,
    ) -> Result<Self, KernelError> {
        let limits = check_limits(max_width, max_height, max_stride_bytes)?;

        let module = device.load_module(&COLOR_SOURCE)?;
        let to_rgb8 = module.function("color_to_rgb8")?;
        let to_planar = module.function("color_to_normalized_planar_f32")?;
        let image = module.image().clone();

        guarded("creating the GPU colour conversion stream", || {
            let stream = device
                .context()
                .new_stream()
                .map_err(driver_error("cuStreamCreate"))?;
            Ok(Self {
                stream,
                to_rgb8,
                to_planar,
                image,
                ordinal: device.ordinal(),
                limits,
                packed: None,
                rgb: None,
                planes: None,
            })
        })
    }

    /// The compiled `color.cu`: target, NVRTC warnings (the log), cache status.
    pub fn compiled_image(&self) -> &CompiledImage {
        &self.image
    }

    /// The widest frame accepted, in pixels.
    pub fn max_width(&self) -> usize {
        self.limits.max_width
    }

    /// The tallest frame accepted, in pixels.
    pub fn max_height(&self) -> usize {
        self.limits.max_height
    }

    /// The largest row stride accepted, in bytes.
    pub fn max_stride_bytes(&self) -> usize {
        self.limits.max_stride_bytes
    }

    /// [`to_rgb8`](crate::color::to_rgb8) on the GPU: `src` into `dst` (row-major, 3
    /// bytes per pixel, exactly `3 * width * height` bytes), the same bytes.
    ///
    /// # Errors
    /// The CPU twin's, in its order; then [`KernelError::LimitExceeded`] for a frame
    /// beyond the session's limits; CUDA errors. Then `dst` is left untouched, except
    /// after a CUDA error during the copy back.
    pub fn to_rgb8(&mut self, src: &PackedImage<'_>, dst: &mut [u8]) -> Result<(), KernelError> {
        check_conversion(src, RGB8_OUTPUT, dst.len())?;
        let frame = self.limits.frame_args(src)?;
        guarded("GPU colour conversion to RGB8", || {
            let stream = &self.stream;
            let packed = staging(stream, &mut self.packed, self.limits.packed_capacity())?;
            let rgb = staging(stream, &mut self.rgb, self.limits.output_capacity())?;
            stream
                .memcpy_htod(&src.data[..frame.packed_len], packed)
                .map_err(driver_error("cuMemcpyHtoDAsync"))?;
            let mut builder = stream.launch_builder(&self.to_rgb8);
            builder
                .arg(&*packed)
                .arg(&frame.layout)
                .arg(&frame.width)
                .arg(&frame.height)
                .arg(&frame.stride)
                .arg(&mut *rgb);
            // SAFETY: color_to_rgb8(const unsigned char* packed, unsigned layout,
            // unsigned width, unsigned height, unsigned stride, unsigned char* rgb), in
            // this order and these types. The frame was validated as the CPU twin does
            // (even sizes where U and V are shared, stride >= a row) and its min_len
            // bytes, every byte a thread reads, were copied above on the same stream
            // into `packed` (capacity checked by frame_args). Thread (x, y) with
            // x < width, y < height writes rgb[3 (y width + x)..+3], inside the
            // 3 width height <= 3 max_width max_height bytes of `rgb`; the others
            // return.
            unsafe { builder.launch(launch_config(frame.width, frame.height)) }
                .map_err(driver_error("launch of color_to_rgb8"))?;
            stream
                .memcpy_dtoh(&rgb.slice(..frame.output_len), dst)
                .map_err(driver_error("cuMemcpyDtoHAsync"))?;
            stream
                .synchronize()
                .map_err(driver_error("cuStreamSynchronize"))
        })
    }

    /// [`GpuColor::to_rgb8`] without a copy either way: the kernel reads the frame where
    /// the camera wrote it (`src.data` must lie inside `src_memory`, a V4L2 USERPTR
    /// buffer, say) and writes the RGB bytes to `dst.as_slice()[..3 * width * height]`,
    /// where the CPU and later kernels find them. Returns once the kernel is done: the
    /// camera buffer may be handed back to the driver at once.
    ///
    /// # Errors
    /// The CPU twin's, in its order; [`KernelError::TooSmall`] for a `dst` shorter than
    /// the image; [`KernelError::InvalidValue`] for `src.data` outside `src_memory` or a
    /// buffer mapped into another GPU; then those of [`GpuColor::to_rgb8`].
    pub fn to_rgb8_mapped(
        &mut self,
        src: &PackedImage<'_>,
        src_memory: &MappedHostBuffer,
        dst: &mut MappedHostBuffer,
    ) -> Result<(), KernelError> {
        src.validate()?;
        if dst.len() < src.output_len() {
            return Err(KernelError::TooSmall {
                what: "mapped buffer for the RGB image (bytes, 3 x width x height)",
                minimum: src.output_len(),
                found: dst.len(),
            });
        }
        let Some(packed) = src_memory.device_ptr_of(src.data) else {
            return Err(KernelError::InvalidValue {
                what: "camera frame",
                reason: "its bytes must lie inside the mapped buffer given with it",
            });
        };
        if src_memory.ordinal() != self.ordinal || dst.ordinal() != self.ordinal {
            return Err(KernelError::InvalidValue {
                what: "mapped buffer",
                reason: "expected memory mapped into the GpuColor session's GPU, found \
                         memory mapped into another GPU",
            });
        }
        let frame = self.limits.frame_args(src)?;
        let rgb = dst.device_ptr();
        guarded("GPU colour conversion to RGB8 in place", || {
            let stream = &self.stream;
            let mut builder = stream.launch_builder(&self.to_rgb8);
            builder
                .arg(&packed)
                .arg(&frame.layout)
                .arg(&frame.width)
                .arg(&frame.height)
                .arg(&frame.stride)
                .arg(&rgb);
            // SAFETY: color_to_rgb8(const unsigned char* packed, unsigned layout,
            // unsigned width, unsigned height, unsigned stride, unsigned char* rgb), in
            // this order and these types (the two pointers as 64-bit device addresses).
            // The frame was validated as the CPU twin does, and `packed` is the device
            // address of `src.data`, whose min_len bytes (every byte a thread reads) lie
            // inside `src_memory` (device_ptr_of checked it). Thread (x, y) with
            // x < width, y < height writes rgb[3 (y width + x)..+3], inside the
            // 3 width height <= dst.len() bytes of `dst`, which `&mut` keeps from any
            // other use until the synchronisation below.
            unsafe { builder.launch(launch_config(frame.width, frame.height)) }
                .map_err(driver_error("launch of color_to_rgb8"))?;
            stream
                .synchronize()
                .map_err(driver_error("cuStreamSynchronize"))
        })
    }

    /// [`to_normalized_planar`](crate::color::to_normalized_planar) on the GPU: `src` into
    /// `dst` (R, G, B planes of `width * height` f32, exactly `3 * width * height`
    /// values), the same bits.
    ///
    /// # Errors
    /// As [`GpuColor::to_rgb8`].
    pub fn to_normalized_planar(
        &mut self,
        src: &PackedImage<'_>,
        dst: &mut [f32],
    ) -> Result<(), KernelError> {
        check_conversion(src, PLANAR_OUTPUT, dst.len())?;
        let frame = self.limits.frame_args(src)?;
        guarded("GPU colour conversion to normalised planes", || {
            let packed = staging(
                &self.stream,
                &mut self.packed,
                self.limits.packed_capacity(),
            )?;
            let planes = staging(
                &self.stream,
                &mut self.planes,
                self.limits.output_capacity(),
            )?;
            upload_and_launch_planar(&self.stream, &self.to_planar, packed, src, &frame, planes)?;
            self.stream
                .memcpy_dtoh(&planes.slice(..frame.output_len), dst)
                .map_err(driver_error("cuMemcpyDtoHAsync"))?;
            self.stream
                .synchronize()
                .map_err(driver_error("cuStreamSynchronize"))
        })
    }

    /// [`GpuColor::to_normalized_planar`] into a device buffer the caller owns (the
    /// detector's input, say): the planes go to `dst[..3 * width * height]`, the rest of
    /// `dst` is left as it is. Returns when they are written (the stream is synchronised,
    /// so `src` may be reused at once); cudarc orders the write after earlier work on
    /// `dst` from other streams and later work after it.
    ///
    /// # Errors
    /// The CPU twin's errors about the frame; [`KernelError::TooSmall`] for a `dst` shorter
    /// than `3 * width * height`; [`KernelError::InvalidValue`] for a `dst` on another GPU;
    /// then those of [`GpuColor::to_rgb8`]. Then `dst` is left untouched.
    pub fn to_normalized_planar_device(
        &mut self,
        src: &PackedImage<'_>,
        dst: &mut CudaSlice<f32>,
    ) -> Result<(), KernelError> {
        src.validate()?;
        if dst.len() < src.output_len() {
            return Err(KernelError::TooSmall {
                what: "device buffer for the normalised planes (floats, 3 x width x height)",
                minimum: src.output_len(),
                found: dst.len(),
            });
        }
        if dst.ordinal() != self.ordinal {
            return Err(KernelError::InvalidValue {
                what: "device buffer for the normalised planes",
                reason: "expected a buffer on the GpuColor session's GPU, found one on \
                         another GPU",
            });
        }
        let frame = self.limits.frame_args(src)?;
        guarded(
            "GPU colour conversion to normalised planes on the device",
            || {
                let packed = staging(
                    &self.stream,
                    &mut self.packed,
                    self.limits.packed_capacity(),
                )?;
                upload_and_launch_planar(&self.stream, &self.to_planar, packed, src, &frame, dst)?;
                self.stream
                    .synchronize()
                    .map_err(driver_error("cuStreamSynchronize"))
            },
        )
    }
}

/// The session's limits, checked.
fn check_limits(
    max_width: usize,
    max_height: usize,
    max_stride_bytes: usize,
) -> Result<Limits, KernelError> {
    if max_width == 0 || max_height == 0 || max_stride_bytes == 0 {
        return Err(KernelError::InvalidValue {
            what: "GpuColor limits",
            reason: "max_width, max_height and max_stride_bytes must be at least 1",
        });
    }
    for (what, limit, found) in [
        ("GpuColor max_width", MAX_SIDE, max_width),
        ("GpuColor max_height", MAX_SIDE, max_height),
        (
            "GpuColor max_stride_bytes (32-bit kernel argument)",
            u32::MAX as usize,
            max_stride_bytes,
        ),
    ] {
        if found > limit {
            return Err(KernelError::LimitExceeded { what, limit, found });
        }
    }
    Ok(Limits {
        max_width,
        max_height,
        max_stride_bytes,
    })
}

/// Copies the frame up and queues `color_to_normalized_planar_f32` into `planes` (at least
/// `frame.output_len` floats, on the stream's GPU).
fn upload_and_launch_planar(
    stream: &Arc<CudaStream>,
    function: &CudaFunction,
    packed: &mut CudaSlice<u8>,
    src: &PackedImage<'_>,
    frame: &FrameArgs,
    planes: &mut CudaSlice<f32>,
) -> Result<(), KernelError> {
    stream
        .memcpy_htod(&src.data[..frame.packed_len], packed)
        .map_err(driver_error("cuMemcpyHtoDAsync"))?;
    let mut builder = stream.launch_builder(function);
    builder
        .arg(&*packed)
        .arg(&frame.layout)
        .arg(&frame.width)
        .arg(&frame.height)
        .arg(&frame.stride)
        .arg(planes);
    // SAFETY: color_to_normalized_planar_f32(const unsigned char* packed, unsigned layout,
    // unsigned width, unsigned height, unsigned stride, float* planes), in this order and
    // these types. The frame was validated as the CPU twin does and its min_len bytes,
    // every byte a thread reads, were copied above on the same stream into `packed`
    // (capacity checked by frame_args). Thread (x, y) with x < width, y < height writes
    // planes[c width height + y width + x] for c < 3, inside the 3 width height floats
    // the callers checked `planes` to hold; the others return.
    unsafe { builder.launch(launch_config(frame.width, frame.height)) }
        .map_err(driver_error("launch of color_to_normalized_planar_f32"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    //! `color.cu`'s kernels transcribed line by line into Rust, run over the host side's
    //! launch grid with its layout codes, against the CPU twin: the same bytes and bits.
    //! This checks the indexing and the arithmetic on any machine;
    //! `tests/gpu_color_equivalence.rs` checks the kernels themselves on a GPU.

    use super::*;
    use crate::color::{to_normalized_planar, to_rgb8, yuv_to_rgb};
    use crate::cuda::{driver_present, CudaDevice};
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn clamp_shift(sum: i32) -> u8 {
        (sum.max(0) >> 8).min(255) as u8
    }

    fn yuv_kernel(y: u8, u: u8, v: u8) -> [u8; 3] {
        let c = i32::from(y) - 16;
        let d = i32::from(u) - 128;
        let e = i32::from(v) - 128;
        [
            clamp_shift(298 * c + 409 * e + 128),
            clamp_shift(298 * c - 100 * d - 208 * e + 128),
            clamp_shift(298 * c + 516 * d + 128),
        ]
    }

    /// posed_color_pixel.
    fn pixel_kernel(
        packed: &[u8],
        layout: u32,
        height: u32,
        stride: u32,
        x: u32,
        y: u32,
    ) -> [u8; 3] {
        let row = y as usize * stride as usize;
        if layout == LAYOUT_YUYV {
            let pair = row + 4 * (x / 2) as usize;
            yuv_kernel(
                packed[pair + 2 * (x & 1) as usize],
                packed[pair + 1],
                packed[pair + 3],
            )
        } else if layout == LAYOUT_NV12 {
            let uv = stride as usize * height as usize
                + (y / 2) as usize * stride as usize
                + (x & !1) as usize;
            yuv_kernel(packed[row + x as usize], packed[uv], packed[uv + 1])
        } else {
            let p = row + 3 * x as usize;
            [packed[p], packed[p + 1], packed[p + 2]]
        }
    }

    /// Both kernels over the whole launch grid: (RGB8, planes).
    fn run_kernels(packed: &[u8], frame: &FrameArgs) -> (Vec<u8>, Vec<f32>) {
        let config = launch_config(frame.width, frame.height);
        let (width, height) = (frame.width as usize, frame.height as usize);
        let mut rgb = vec![0xa5u8; 3 * width * height];
        let mut planes = vec![f32::NAN; 3 * width * height];
        let plane = width * height;
        for block_y in 0..config.grid_dim.1 {
            for block_x in 0..config.grid_dim.0 {
                for thread_y in 0..config.block_dim.1 {
                    for thread_x in 0..config.block_dim.0 {
                        let x = block_x * config.block_dim.0 + thread_x;
                        let y = block_y * config.block_dim.1 + thread_y;
                        if x >= frame.width || y >= frame.height {
                            continue;
                        }
                        let pixel =
                            pixel_kernel(packed, frame.layout, frame.height, frame.stride, x, y);
                        let at = y as usize * width + x as usize;
                        rgb[3 * at..3 * at + 3].copy_from_slice(&pixel);
                        for c in 0..3 {
                            planes[c * plane + at] = f32::from(pixel[c]) / 255.0;
                        }
                    }
                }
            }
        }
        (rgb, planes)
    }

    #[test]
    fn the_fixed_point_transcription_matches_yuv_to_rgb_for_every_triplet() {
        for y in 0..=255u8 {
            for u in 0..=255u8 {
                for v in 0..=255u8 {
                    assert_eq!(yuv_kernel(y, u, v), yuv_to_rgb(y, u, v), "{y} {u} {v}");
                }
            }
        }
    }

    #[test]
    fn the_kernel_transcription_gives_the_cpu_twins_bytes() {
        let mut rng = ChaCha8Rng::seed_from_u64(0xc0_10c);
        let limits = check_limits(200, 120, 1024).expect("limits");
        let mut compared = 0;
        for layout in [PixelLayout::Yuyv, PixelLayout::Nv12, PixelLayout::Rgb24] {
            for (width, height) in [(2, 2), (6, 4), (34, 10), (40, 9), (130, 66), (200, 120)] {
                if layout != PixelLayout::Rgb24 && width % 2 != 0
                    || layout == PixelLayout::Nv12 && height % 2 != 0
                {
                    continue;
                }
                let tight = layout.row_bytes(width);
                for stride in [tight, tight + 1, tight + 7, tight.next_multiple_of(256)] {
                    let len = layout.min_len(width, height, stride);
                    let data: Vec<u8> = (0..len).map(|_| rng.random()).collect();
                    let src = PackedImage {
                        layout,
                        data: &data,
                        width,
                        height,
                        stride_bytes: stride,
                    };
                    let frame = limits.frame_args(&src).expect("within the limits");
                    assert_eq!(frame.packed_len, len);
                    assert!(len <= limits.packed_capacity());
                    let (gpu_rgb, gpu_planes) = run_kernels(&data[..frame.packed_len], &frame);
                    let mut cpu_rgb = vec![0u8; src.output_len()];
                    to_rgb8(&src, &mut cpu_rgb).expect("CPU RGB8");
                    let mut cpu_planes = vec![0.0f32; src.output_len()];
                    to_normalized_planar(&src, &mut cpu_planes).expect("CPU planes");
                    assert!(
                        gpu_rgb == cpu_rgb,
                        "{layout:?} {width}x{height} stride {stride}"
                    );
                    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    assert!(
                        bits(&gpu_planes) == bits(&cpu_planes),
                        "{layout:?} {width}x{height} stride {stride}"
                    );
                    compared += 1;
                }
            }
        }
        assert!(compared >= 50, "{compared}");
    }

    #[test]
    fn frames_beyond_the_limits_are_refused() {
        let limits = check_limits(64, 48, 256).expect("limits");
        let data = vec![0u8; 1 << 20];
        let src = |layout, width, height, stride_bytes| PackedImage {
            layout,
            data: &data,
            width,
            height,
            stride_bytes,
        };
        assert!(limits
            .frame_args(&src(PixelLayout::Nv12, 64, 48, 256))
            .is_ok());
        assert!(limits
            .frame_args(&src(PixelLayout::Rgb24, 64, 48, 256))
            .is_ok());
        for (image, expected) in [
            (
                src(PixelLayout::Yuyv, 66, 48, 256),
                KernelError::LimitExceeded {
                    what: "camera image width (GpuColor max_width)",
                    limit: 64,
                    found: 66,
                },
            ),
            (
                src(PixelLayout::Nv12, 64, 50, 256),
                KernelError::LimitExceeded {
                    what: "camera image height (GpuColor max_height)",
                    limit: 48,
                    found: 50,
                },
            ),
            (
                src(PixelLayout::Rgb24, 64, 48, 257),
                KernelError::LimitExceeded {
                    what: "camera row stride in bytes (GpuColor max_stride_bytes)",
                    limit: 256,
                    found: 257,
                },
            ),
        ] {
            assert_eq!(limits.frame_args(&image), Err(expected));
        }
        assert!(matches!(
            check_limits(0, 48, 256),
            Err(KernelError::InvalidValue { .. })
        ));
        assert!(matches!(
            check_limits(64, MAX_SIDE + 1, 256),
            Err(KernelError::LimitExceeded { .. })
        ));
        assert!(matches!(
            check_limits(64, 48, u32::MAX as usize + 1),
            Err(KernelError::LimitExceeded { .. })
        ));
        // The largest session's buffers are sized without overflow.
        let largest = check_limits(MAX_SIDE, MAX_SIDE, u32::MAX as usize).expect("limits");
        assert!(largest.packed_capacity() < usize::MAX);
        assert_eq!(largest.output_capacity(), 3 * MAX_SIDE * MAX_SIDE);
    }

    #[test]
    fn opening_without_a_driver_is_an_error_not_a_panic() {
        match CudaDevice::open(0) {
            Err(KernelError::CudaUnavailable { reason }) => assert!(!reason.is_empty()),
            Err(other) => assert!(driver_present(), "unexpected {other:?}"),
            Ok(device) => {
                // A machine with a GPU: the session opens or says why not.
                match GpuColor::new(&device, 64, 48, 256) {
                    Ok(color) => assert_eq!(color.compiled_image().log, ""),
                    Err(e) => eprintln!("GpuColor::new: {e}"),
                }
            }
        }
        if !driver_present() {
            assert!(matches!(
                CudaDevice::open(0),
                Err(KernelError::CudaUnavailable { .. })
            ));
        }
    }

    #[test]
    fn layout_codes_and_kernel_names_match_color_cu() {
        let code = COLOR_SOURCE.code;
        for (name, value) in [
            ("POSED_COLOR_YUYV", LAYOUT_YUYV),
            ("POSED_COLOR_NV12", LAYOUT_NV12),
            ("POSED_COLOR_RGB24", LAYOUT_RGB24),
        ] {
            assert!(
                code.lines()
                    .any(|line| line == format!("#define {name} {value}u")),
                "color.cu lacks `#define {name} {value}u`"
            );
        }
        for (name, value) in [
            ("POSED_COLOR_BLOCK_X", BLOCK_X),
            ("POSED_COLOR_BLOCK_Y", BLOCK_Y),
        ] {
            assert!(
                code.contains(&format!("#define {name} {value}\n")),
                "{name}"
            );
        }
        for kernel in ["color_to_rgb8", "color_to_normalized_planar_f32"] {
            assert!(
                code.contains(&format!("extern \"C\" __global__ void {kernel}(")),
                "{kernel}"
            );
        }
        assert_eq!(layout_code(PixelLayout::Yuyv), LAYOUT_YUYV);
        assert_eq!(layout_code(PixelLayout::Nv12), LAYOUT_NV12);
        assert_eq!(layout_code(PixelLayout::Rgb24), LAYOUT_RGB24);
    }
}
