//! V4L2 camera capture: [`V4l2Source`] opens a single-planar video capture node, negotiates
//! the pixel format, size and frame rate of `[source]`, streams through MMAP or USERPTR
//! buffers and converts each image to 8-bit RGB, handing the buffer back to the driver as
//! soon as its pixels are converted.
//!
//! With a CUDA device ([`V4l2Source::open_with_cuda`]) and `source.io = "auto"` or
//! `"userptr"`, the buffers lent to the driver are host memory mapped into the GPU
//! ([`MappedHostBuffer`](super::MappedHostBuffer)): the camera writes a frame, the GPU's
//! colour conversion (`GpuColor::to_rgb8_mapped`, twin of `color::to_rgb8`) reads it where
//! it lies and writes the RGB bytes into the frame's own mapped buffer, and the buffer goes
//! back to the driver only once that kernel has finished. On a Jetson no byte is copied
//! between the camera and the crops. MJPEG is decoded on the CPU, and MMAP buffers (the
//! driver's memory) are converted on the CPU, into the same mapped frame.
//!
//! The kernel interface is a small hand-written ioctl layer over `libc` (the `sys`
//! submodule, which says why no crate is used). [`list_devices`] and [`describe`] back
//! `posed camera info`.
//!
//! Allocation: everything is allocated in [`V4l2Source::open`]; a YUYV, NV12, RGB24 or
//! MJPEG frame is captured without touching the heap. MJPEG frames are decoded by posed's
//! own decoder ([`super::jpeg`]), whose buffers are sized at open; only a JPEG it does not
//! handle (progressive, say: not what cameras send) falls back to zune-jpeg, which
//! allocates at every frame.

mod sys;

use std::alloc::Layout;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::time::{Duration, Instant};

use image::ImageDecoder;
use posed_kernels::color::{to_rgb8, PackedImage, PixelLayout};
use posed_kernels::Intrinsics;

use super::jpeg::{JpegFault, MjpegDecoder};
use super::{monotonic_ns, wall_ns, Captured, Cuda, Frame, FrameSource, SourceInfo};
use crate::config::daemon::{CameraFormat, CameraIo, SourceConfig};
use crate::{Error, Result};
#[cfg(feature = "cuda")]
use posed_kernels::cuda::{CudaDevice, GpuColor, MappedHostBuffer};

/// Buffers asked of the driver: one being converted, one being filled, two in hand so that
/// a slow frame does not make the driver drop the next.
const BUFFER_COUNT: u32 = 4;
/// The most buffers posed takes from a driver that grants more than asked.
const MAX_DRIVER_BUFFERS: u32 = 32;
/// The largest image side posed takes from a driver (8K cameras are 7680 wide).
const MAX_DRIVER_SIDE: u32 = 8192;
/// The largest camera buffer posed allocates (an 8192 x 8192 RGB24 frame is 192 MiB).
const MAX_DRIVER_BUFFER_BYTES: usize = 256 << 20;

/// How long [`V4l2Source::capture`] waits for a frame before it reports the camera lost: an
/// unplugged camera must show as an error, not a hang (the slowest frame rate a camera is
/// set to in practice is 5 fps).
const FRAME_TIMEOUT: Duration = Duration::from_secs(2);

/// A V4L2 pixel format code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fourcc(pub u32);

impl Fourcc {
    /// Packed 8-bit RGB (`V4L2_PIX_FMT_RGB24`).
    pub const RGB3: Fourcc = Fourcc::new(b"RGB3");
    /// Packed 4:2:2 YUV (`V4L2_PIX_FMT_YUYV`).
    pub const YUYV: Fourcc = Fourcc::new(b"YUYV");
    /// 4:2:0, a Y plane then interleaved UV (`V4L2_PIX_FMT_NV12`).
    pub const NV12: Fourcc = Fourcc::new(b"NV12");
    /// Motion JPEG (`V4L2_PIX_FMT_MJPEG`).
    pub const MJPG: Fourcc = Fourcc::new(b"MJPG");
    /// JPEG (`V4L2_PIX_FMT_JPEG`), which some cameras offer instead of MJPG.
    pub const JPEG: Fourcc = Fourcc::new(b"JPEG");

    /// The code of four ASCII characters, first character in the low byte.
    pub const fn new(code: &[u8; 4]) -> Self {
        Fourcc(u32::from_le_bytes(*code))
    }
}

impl fmt::Display for Fourcc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in self.0.to_le_bytes() {
            let c = if byte.is_ascii_graphic() || byte == b' ' {
                byte as char
            } else {
                '.'
            };
            write!(f, "{c}")?;
        }
        Ok(())
    }
}

/// The fourccs that satisfy `format`, in order of preference. `auto` prefers formats that
/// cost least to convert: RGB24 (none), YUYV, NV12, then MJPEG (a JPEG decode per frame).
pub fn accepted_fourccs(format: CameraFormat) -> &'static [Fourcc] {
    match format {
        CameraFormat::Auto => &[Fourcc::RGB3, Fourcc::YUYV, Fourcc::NV12, Fourcc::MJPG],
        CameraFormat::Rgb24 => &[Fourcc::RGB3],
        CameraFormat::Yuyv => &[Fourcc::YUYV],
        CameraFormat::Nv12 => &[Fourcc::NV12],
        CameraFormat::Mjpeg => &[Fourcc::MJPG, Fourcc::JPEG],
    }
}

/// One pixel format a camera offers, as [`select_format`] sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OfferedFormat {
    /// The format.
    pub fourcc: Fourcc,
    /// Whether the camera lists the requested size for it (true when the driver does not
    /// enumerate sizes).
    pub has_size: bool,
}

/// Picks the fourcc to negotiate: the first of [`accepted_fourccs`] the camera offers at the
/// requested size, else the first it offers at any size (the driver then picks the nearest
/// size and [`V4l2Source::open`] warns).
///
/// # Errors
/// A message for a person when the camera offers none of the accepted formats, listing
/// what it offers.
pub fn select_format(
    requested: CameraFormat,
    offered: &[OfferedFormat],
) -> std::result::Result<Fourcc, String> {
    let accepted = accepted_fourccs(requested);
    let find = |need_size: bool| {
        accepted.iter().copied().find(|fourcc| {
            offered
                .iter()
                .any(|o| o.fourcc == *fourcc && (o.has_size || !need_size))
        })
    };
    if let Some(fourcc) = find(true).or_else(|| find(false)) {
        return Ok(fourcc);
    }
    let offers = if offered.is_empty() {
        "no single-planar capture format at all".to_owned()
    } else {
        offered
            .iter()
            .map(|o| o.fourcc.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let wanted = accepted
        .iter()
        .map(|f| f.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    Err(match requested {
        CameraFormat::Auto => format!(
            "the camera offers none of the formats posed reads ({wanted}); it offers {offers}"
        ),
        _ => format!(
            "the camera does not offer source.format = \"{}\" ({wanted}); it offers {offers}",
            config_name(requested)
        ),
    })
}

fn config_name(format: CameraFormat) -> &'static str {
    match format {
        CameraFormat::Auto => "auto",
        CameraFormat::Yuyv => "yuyv",
        CameraFormat::Mjpeg => "mjpeg",
        CameraFormat::Nv12 => "nv12",
        CameraFormat::Rgb24 => "rgb24",
    }
}

/// The V4L2 capture nodes, `/dev/video*`, in numeric order.
pub fn list_devices() -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir("/dev") else {
        return Vec::new();
    };
    let mut nodes: Vec<(u32, PathBuf)> = entries
        .filter_map(|entry| entry.ok())
        .filter_map(|entry| {
            let name = entry.file_name();
            let number = name.to_str()?.strip_prefix("video")?.parse::<u32>().ok()?;
            Some((number, entry.path()))
        })
        .collect();
    nodes.sort();
    nodes.into_iter().map(|(_, path)| path).collect()
}

/// A description of a camera for a person choosing its settings: driver, card, bus,
/// capabilities, and every capture format with its sizes and frame rates.
///
/// # Errors
/// [`Error::Camera`] naming the device when it is missing, not accessible or not a V4L2
/// device.
pub fn describe(device: &Path) -> Result<String> {
    use fmt::Write;

    let file = open_node(device)?;
    let fd = file.as_fd();
    let cap = query_capabilities(device, fd)?;
    let caps = cap.node_caps();
    let mut text = String::new();
    // Writing to a String cannot fail.
    let _ = writeln!(text, "{}", device.display());
    let _ = writeln!(
        text,
        "  driver        {} {}.{}.{}",
        sys::c_str(&cap.driver),
        cap.version >> 16,
        (cap.version >> 8) & 0xff,
        cap.version & 0xff
    );
    let _ = writeln!(text, "  card          {}", sys::c_str(&cap.card));
    let _ = writeln!(text, "  bus           {}", sys::c_str(&cap.bus_info));
    let _ = writeln!(
        text,
        "  capabilities  {} (0x{caps:08x})",
        capability_names(caps)
    );
    if caps & sys::CAP_VIDEO_CAPTURE == 0 {
        let _ = writeln!(
            text,
            "  formats       none: not a single-planar video capture node"
        );
        return Ok(text);
    }
    let formats = enumerate_formats(fd);
    if formats.is_empty() {
        let _ = writeln!(text, "  formats       none offered");
    } else {
        let _ = writeln!(text, "  formats       (* = posed reads it)");
    }
    let readable = accepted_fourccs(CameraFormat::Auto);
    for (fourcc, description) in &formats {
        let mark = if readable.contains(fourcc) || *fourcc == Fourcc::JPEG {
            '*'
        } else {
            ' '
        };
        let _ = writeln!(text, "    {mark} {fourcc}  {description}");
        for size in enumerate_sizes(fd, *fourcc) {
            match size {
                FrameSize::Discrete { width, height } => {
                    let rates = frame_rates(fd, *fourcc, width, height);
                    let _ = writeln!(text, "        {width}x{height}{rates}");
                }
                FrameSize::Range {
                    min: (min_w, min_h),
                    max: (max_w, max_h),
                    step: (step_w, step_h),
                } => {
                    let _ = writeln!(
                        text,
                        "        {min_w}x{min_h} to {max_w}x{max_h}, steps of {step_w}x{step_h}"
                    );
                }
            }
        }
    }
    Ok(text)
}

/// A V4L2 camera as a [`FrameSource`].
pub struct V4l2Source {
    config: SourceConfig,
    intrinsics: Intrinsics,
    info: SourceInfo,
    negotiated: Negotiated,
    /// `None` after a failed [`FrameSource::reopen`].
    camera: Option<Camera>,
    skipped_frames: u64,
    /// The CUDA device camera buffers and frames are mapped into (one that can map host
    /// memory).
    #[cfg(feature = "cuda")]
    cuda: Option<CudaDevice>,
    /// The GPU colour conversion, while the camera's buffers are mapped into `cuda` and
    /// its format is not JPEG.
    #[cfg(feature = "cuda")]
    color: Option<GpuColor>,
    /// The MJPEG decoder, while the format is MJPEG.
    jpeg: Option<JpegDecoding>,
}

impl fmt::Debug for V4l2Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("V4l2Source")
            .field("info", &self.info)
            .field("negotiated", &self.negotiated)
            .field("open", &self.camera.is_some())
            .field("skipped_frames", &self.skipped_frames)
            .field("gpu", &self.on_gpu())
            .finish()
    }
}

impl V4l2Source {
    /// Opens `config.device`, negotiates format, size and frame rate, allocates and queues
    /// the buffers and starts streaming.
    ///
    /// # Errors
    /// [`Error::Invalid`] without `config.intrinsics`; [`Error::Camera`] naming the device
    /// when it is missing, not accessible (the `video` group), not a V4L2 capture device,
    /// offers none of the formats asked for, or fails to set up streaming.
    pub fn open(config: &SourceConfig) -> Result<Self> {
        Self::open_inner(config, None)
    }

    /// [`V4l2Source::open`] for a daemon whose loop runs on `device`: with `source.io`
    /// `"auto"` or `"userptr"` the buffers are mapped into the GPU and converted there
    /// (see the module's documentation), and frames come from
    /// [`FrameSource::allocate_frame`] in mapped memory. Whatever of that cannot be had
    /// (a GPU that cannot map host memory, a driver that refuses USERPTR buffers or the
    /// memory, no NVRTC for the conversion, a GPU error later) is logged and done as
    /// without a GPU: MMAP (or plain USERPTR) buffers, converted on the CPU.
    ///
    /// # Errors
    /// As [`V4l2Source::open`].
    #[cfg(feature = "cuda")]
    pub fn open_with_cuda(config: &SourceConfig, device: &CudaDevice) -> Result<Self> {
        Self::open_inner(config, Some(device))
    }

    fn open_inner(config: &SourceConfig, cuda: Option<&Cuda>) -> Result<Self> {
        let Some(k) = &config.intrinsics else {
            return Err(Error::Invalid {
                what: "source.intrinsics".to_owned(),
                reason: "a camera needs its K (9 numbers, row-major): poses are in its frame"
                    .to_owned(),
            });
        };
        let intrinsics = Intrinsics::from_row_major(k);
        #[cfg(feature = "cuda")]
        let cuda = cuda.filter(|device| {
            let maps = device.maps_host_memory();
            if !maps {
                tracing::warn!(
                    "{} cannot map host memory: camera frames are converted on the CPU and \
                     copied to the GPU",
                    device.name()
                );
            }
            maps
        });
        let (camera, negotiated) = open_camera(config, cuda)?;
        let info = source_info(config, &negotiated, intrinsics);
        #[cfg(feature = "cuda")]
        let color = color_session(&camera, cuda, &negotiated, None);
        #[cfg(feature = "cuda")]
        let on_gpu = color.is_some();
        #[cfg(not(feature = "cuda"))]
        let on_gpu = false;
        tracing::info!(
            device = %config.device.display(),
            format = %negotiated.fourcc,
            width = negotiated.width,
            height = negotiated.height,
            fps = negotiated.fps,
            io = camera.io_name(),
            buffers = camera.slots.len(),
            convert = if on_gpu { "GPU, in place" } else { "CPU" },
            "camera streaming"
        );
        Ok(Self {
            config: config.clone(),
            intrinsics,
            info,
            jpeg: JpegDecoding::for_format(&negotiated, None),
            negotiated,
            camera: Some(camera),
            skipped_frames: 0,
            #[cfg(feature = "cuda")]
            cuda: cuda.cloned(),
            #[cfg(feature = "cuda")]
            color,
        })
    }

    /// Whether frames are converted on a CUDA device.
    pub fn on_gpu(&self) -> bool {
        #[cfg(feature = "cuda")]
        {
            self.color.is_some()
        }
        #[cfg(not(feature = "cuda"))]
        {
            false
        }
    }

    fn cuda(&self) -> Option<&Cuda> {
        #[cfg(feature = "cuda")]
        {
            self.cuda.as_ref()
        }
        #[cfg(not(feature = "cuda"))]
        {
            None
        }
    }

    /// Frames dequeued but not delivered: flagged corrupt by the driver, shorter than the
    /// format needs, or (MJPEG) not decodable.
    pub fn skipped_frames(&self) -> u64 {
        self.skipped_frames
    }

    fn skip(&mut self, why: Skip) {
        self.skipped_frames += 1;
        // A camera going bad can deliver nothing but broken frames: log the 1st, 2nd, 4th,
        // 8th, ... so that the log stays readable and the count stays visible.
        if self.skipped_frames.is_power_of_two() {
            tracing::warn!(
                device = %self.config.device.display(),
                skipped = self.skipped_frames,
                "skipped a camera frame: {why}"
            );
        }
    }
}

impl FrameSource for V4l2Source {
    fn info(&self) -> &SourceInfo {
        &self.info
    }

    fn allocate_frame(&self) -> Result<Frame> {
        Ok(super::frame_for(self.cuda(), &self.info))
    }

    fn capture(&mut self, frame: &mut Frame) -> Result<Captured> {
        let started = Instant::now();
        loop {
            let device = &self.config.device;
            let Some(camera) = self.camera.as_ref() else {
                return Err(camera_error(
                    device,
                    "not open: the last reopen failed".to_owned(),
                ));
            };
            let buffer = camera.dequeue(device)?;
            let t_dequeued_ns = monotonic_ns();
            #[cfg(feature = "cuda")]
            let on_gpu = match (self.color.as_mut(), camera.mapped_slot(&buffer)) {
                (Some(color), Some(memory)) => Some(OnGpu { memory, color }),
                _ => None,
            };
            #[cfg(not(feature = "cuda"))]
            let on_gpu = None;
            let tried_gpu = on_gpu.is_some();
            let mut filled = fill_frame(
                &self.negotiated,
                camera.data(&buffer),
                &buffer,
                frame,
                on_gpu,
                self.jpeg.as_mut(),
            );
            // A GPU that fails (its context lost, say) must not stop the camera: the CPU
            // converts from here on, from the same (host) memory.
            #[cfg(feature = "cuda")]
            if tried_gpu {
                if let Err(Error::Kernel { context, source }) = &filled {
                    tracing::warn!(
                        device = %device.display(),
                        "{context}: {source}; converting camera frames on the CPU from now on"
                    );
                    self.color = None;
                    filled = fill_frame(
                        &self.negotiated,
                        camera.data(&buffer),
                        &buffer,
                        frame,
                        None,
                        self.jpeg.as_mut(),
                    );
                }
            }
            #[cfg(not(feature = "cuda"))]
            let _ = (tried_gpu, &mut filled);
            // The driver gets the buffer back before anything else can fail or return: a
            // buffer not requeued is a buffer the camera can never fill again. The GPU
            // conversion has finished reading it (it synchronises before returning).
            camera
                .queue(buffer.index as usize)
                .map_err(|e| ioctl_error(device, "VIDIOC_QBUF", &e))?;
            match filled? {
                Filled::Frame => {}
                Filled::Skipped(why) => {
                    self.skip(why);
                    // A camera that delivers nothing but broken frames is as lost as one
                    // that delivers none: let the daemon reopen it.
                    if started.elapsed() > FRAME_TIMEOUT {
                        return Err(camera_error(
                            &self.config.device,
                            format!(
                                "only unusable frames for {} s ({} skipped so far)",
                                FRAME_TIMEOUT.as_secs(),
                                self.skipped_frames
                            ),
                        ));
                    }
                    continue;
                }
            }
            let t_capture_ns = capture_time_ns(&buffer, t_dequeued_ns);
            let now_ns = monotonic_ns();
            frame.t_capture_ns = t_capture_ns;
            frame.t_capture_wall_ns = wall_from_monotonic(t_capture_ns, now_ns, wall_ns());
            frame.capture_latency_ns = now_ns.saturating_sub(t_dequeued_ns);
            frame.width = self.negotiated.width;
            frame.height = self.negotiated.height;
            frame.intrinsics = self.intrinsics;
            frame.bop_image = None;
            return Ok(Captured::Frame);
        }
    }

    fn reopen(&mut self) -> Result<()> {
        // Close first: the device (or the same camera plugged in again) may refuse a second
        // open while the old file still holds its buffers.
        self.camera = None;
        let (camera, negotiated) = open_camera(&self.config, self.cuda())?;
        check_reopened_size(&self.config.device, &self.negotiated, &negotiated)?;
        #[cfg(feature = "cuda")]
        {
            self.color = color_session(&camera, self.cuda.as_ref(), &negotiated, self.color.take());
        }
        if negotiated != self.negotiated {
            tracing::warn!(
                device = %self.config.device.display(),
                before = ?self.negotiated,
                now = ?negotiated,
                "the camera came back with other settings"
            );
            self.info = source_info(&self.config, &negotiated, self.intrinsics);
            self.negotiated = negotiated;
        }
        tracing::info!(device = %self.config.device.display(), "camera reopened");
        self.jpeg = JpegDecoding::for_format(&self.negotiated, self.jpeg.take());
        self.camera = Some(camera);
        Ok(())
    }
}

/// A reopened camera must deliver the size it was first opened at: the intrinsics are
/// for that size, and the daemon's frames were allocated for it. Another size (a
/// different camera on the same device node, a driver that fell back to a default) is a
/// camera fault, so the daemon keeps retrying with backoff instead of exiting or
/// estimating poses with the wrong intrinsics. A change of pixel format or stride at the
/// same size is fine: every frame is converted to RGB anyway.
fn check_reopened_size(device: &Path, before: &Negotiated, now: &Negotiated) -> Result<()> {
    if (now.width, now.height) == (before.width, before.height) {
        return Ok(());
    }
    // Dropping the Camera the caller holds closes the device again.
    Err(Error::Camera {
        device: device.to_path_buf(),
        detail: format!(
            "came back at {}x{} ({}), but posed started it at {}x{}: the intrinsics and \
             the frame buffers are for that size, so posed keeps retrying (restart posed \
             to take the new size)",
            now.width, now.height, now.fourcc, before.width, before.height
        ),
    })
}

fn source_info(config: &SourceConfig, n: &Negotiated, intrinsics: Intrinsics) -> SourceInfo {
    SourceInfo {
        name: config.device.display().to_string(),
        width: n.width,
        height: n.height,
        intrinsics,
        format: n.fourcc.to_string(),
    }
}

/// How a negotiated format becomes RGB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decode {
    Rgb24,
    Yuyv,
    Nv12,
    Jpeg,
}

impl Decode {
    fn of(fourcc: Fourcc) -> Option<Self> {
        match fourcc {
            Fourcc::RGB3 => Some(Decode::Rgb24),
            Fourcc::YUYV => Some(Decode::Yuyv),
            Fourcc::NV12 => Some(Decode::Nv12),
            Fourcc::MJPG | Fourcc::JPEG => Some(Decode::Jpeg),
            _ => None,
        }
    }

    /// Bytes of one pixel in the first plane (0 for JPEG).
    fn bytes_per_pixel(self) -> usize {
        match self {
            Decode::Rgb24 => 3,
            Decode::Yuyv => 2,
            Decode::Nv12 => 1,
            Decode::Jpeg => 0,
        }
    }
}

/// What the driver agreed to.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Negotiated {
    fourcc: Fourcc,
    decode: Decode,
    width: usize,
    height: usize,
    /// Bytes per row of the first plane (the UV plane of NV12 has the same).
    stride_bytes: usize,
    /// Bytes a buffer must hold.
    size_bytes: usize,
    /// The frame rate the driver reports (0 when it does not say).
    fps: f64,
}

impl Negotiated {
    /// Bytes of a raw frame with every row padded to the stride (0 for JPEG): what a
    /// buffer must hold at least.
    fn padded_frame_bytes(&self) -> usize {
        let rows = match self.decode {
            Decode::Rgb24 | Decode::Yuyv => self.height,
            // The interleaved UV plane has a row for every two luma rows.
            Decode::Nv12 => self.height + self.height.div_ceil(2),
            Decode::Jpeg => return 0,
        };
        self.stride_bytes * rows
    }
}

/// Why a dequeued frame was not delivered.
#[derive(Debug)]
enum Skip {
    FlaggedError,
    Short { bytes: usize, needed: usize },
    Mjpeg(JpegFault),
    Jpeg(image::ImageError),
    JpegSize { width: u32, height: u32 },
    JpegColor(image::ColorType),
}

impl fmt::Display for Skip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Skip::FlaggedError => write!(f, "the driver flagged it as corrupt"),
            Skip::Short { bytes, needed } => {
                write!(f, "{bytes} bytes where the format needs {needed}")
            }
            Skip::Mjpeg(fault) => write!(f, "{fault}"),
            Skip::Jpeg(e) => write!(f, "corrupt JPEG: {e}"),
            Skip::JpegSize { width, height } => {
                write!(f, "a JPEG of {width}x{height}, not the negotiated size")
            }
            Skip::JpegColor(c) => write!(f, "a JPEG in {c:?}, not RGB or grey"),
        }
    }
}

enum Filled {
    Frame,
    Skipped(Skip),
}

/// The GPU side of [`fill_frame`]: the camera buffer's memory, mapped into the GPU, and
/// the conversion session.
#[cfg(feature = "cuda")]
struct OnGpu<'a> {
    memory: &'a MappedHostBuffer,
    color: &'a mut GpuColor,
}

/// Without the `cuda` feature: never built.
#[cfg(not(feature = "cuda"))]
#[allow(dead_code)]
struct OnGpu<'a>(std::marker::PhantomData<&'a ()>);

/// Converts one dequeued buffer into `frame.rgb` (and only that): on the GPU when `on_gpu`
/// is given and the frame is in mapped memory (the kernel reads the camera buffer and
/// writes the frame in place, and has finished when this returns, so the caller may
/// requeue the buffer at once), else on the CPU. JPEG is decoded on the CPU, by `jpeg`
/// (see [`JpegDecoding`]).
fn fill_frame(
    n: &Negotiated,
    data: &[u8],
    buffer: &sys::Buffer,
    frame: &mut Frame,
    on_gpu: Option<OnGpu<'_>>,
    jpeg: Option<&mut JpegDecoding>,
) -> Result<Filled> {
    if buffer.flags & sys::BUF_FLAG_ERROR != 0 {
        return Ok(Filled::Skipped(Skip::FlaggedError));
    }
    let rgb_bytes = n.width * n.height * 3;
    let capacity = frame.rgb.capacity();
    if frame.rgb.set_len(rgb_bytes).is_none() {
        return Err(Error::Invalid {
            what: "camera frame".to_owned(),
            reason: format!(
                "a {}x{} RGB image needs {rgb_bytes} bytes, the frame was allocated for \
                 {capacity}: allocate it with the source's allocate_frame",
                n.width, n.height,
            ),
        });
    }
    let layout = match n.decode {
        Decode::Jpeg => {
            return Ok(match jpeg {
                Some(jpeg) => jpeg.decode(data, &mut frame.rgb),
                None => decode_jpeg(data, n.width, n.height, &mut frame.rgb),
            })
        }
        Decode::Rgb24 => PixelLayout::Rgb24,
        Decode::Yuyv => PixelLayout::Yuyv,
        Decode::Nv12 => PixelLayout::Nv12,
    };
    let needed = layout.min_len(n.width, n.height, n.stride_bytes);
    if data.len() < needed {
        return Ok(Filled::Skipped(Skip::Short {
            bytes: data.len(),
            needed,
        }));
    }
    let image = PackedImage {
        layout,
        data,
        width: n.width,
        height: n.height,
        stride_bytes: n.stride_bytes,
    };
    #[cfg(feature = "cuda")]
    if let (Some(gpu), Some(dst)) = (on_gpu, frame.rgb.mapped_memory_mut()) {
        gpu.color
            .to_rgb8_mapped(&image, gpu.memory, dst)
            .map_err(|source| Error::Kernel {
                context: format!("converting a {} camera frame on the GPU", n.fourcc),
                source,
            })?;
        return Ok(Filled::Frame);
    }
    #[cfg(not(feature = "cuda"))]
    let _ = on_gpu;
    to_rgb8(&image, &mut frame.rgb).map_err(|source| Error::Kernel {
        context: format!("converting a {} camera frame", n.fourcc),
        source,
    })?;
    Ok(Filled::Frame)
}

/// The GPU colour conversion for `camera` as negotiated: `None` when its buffers are not
/// mapped into a GPU, for JPEG (decoded on the CPU), or when the session cannot be had
/// (no NVRTC: a warning, and the CPU converts). `current` is kept when it fits. Rows up to
/// `3 * width` bytes apart at least, so that a camera reopened in another format rarely
/// needs a new session.
#[cfg(feature = "cuda")]
fn color_session(
    camera: &Camera,
    cuda: Option<&CudaDevice>,
    n: &Negotiated,
    current: Option<GpuColor>,
) -> Option<GpuColor> {
    let device = cuda?;
    if !camera.gpu_readable() || n.decode == Decode::Jpeg {
        return None;
    }
    if let Some(color) = current {
        if n.stride_bytes <= color.max_stride_bytes()
            && n.width <= color.max_width()
            && n.height <= color.max_height()
        {
            return Some(color);
        }
    }
    let max_stride = n.stride_bytes.max(3 * n.width).max(1);
    match GpuColor::new(device, n.width.max(1), n.height.max(1), max_stride) {
        Ok(color) => Some(color),
        Err(e) => {
            tracing::warn!("the camera's colour conversion on the GPU: {e}; converting on the CPU");
            None
        }
    }
}

/// Opens the camera, with its buffers mapped into `cuda` where that is asked for; when
/// that fails (memory the GPU cannot map, a driver that takes USERPTR requests but not
/// the memory), with a warning, as it would be without a GPU.
fn open_camera(config: &SourceConfig, cuda: Option<&Cuda>) -> Result<(Camera, Negotiated)> {
    match Camera::open(config, cuda) {
        Err(e) if cuda.is_some() && config.io != CameraIo::Mmap => {
            tracing::warn!(
                device = %config.device.display(),
                "camera buffers mapped into the GPU: {e}; trying without"
            );
            Camera::open(config, None)
        }
        other => other,
    }
}

/// How MJPEG frames are decoded: by posed's own decoder, which allocates nothing per
/// frame, and by zune-jpeg, which does allocate (said once in the log), from the first
/// JPEG posed's does not handle (progressive, 4:1:1, ...: not what cameras send; a
/// camera sends one kind) and for a camera whose frames posed's keeps refusing as corrupt
/// where zune-jpeg, more lenient with damaged data, decodes them: better an allocating
/// stream than none.
struct JpegDecoding {
    decoder: MjpegDecoder,
    /// Frames in a row posed's decoder refused as corrupt.
    corrupt_in_a_row: u32,
    /// Every frame goes to zune-jpeg from now on (until the camera is reopened).
    zune_only: bool,
    fallback_logged: bool,
}

/// Corrupt frames in a row after which zune-jpeg is asked whether it decodes them.
const CORRUPT_BEFORE_TRYING_ZUNE: u32 = 3;

impl JpegDecoding {
    /// The decoding for a camera as negotiated: `None` unless it sends JPEG; `current`'s
    /// buffers when they fit, with its judgement of the camera forgotten (a reopened
    /// device node may hold another camera).
    fn for_format(n: &Negotiated, current: Option<JpegDecoding>) -> Option<JpegDecoding> {
        if n.decode != Decode::Jpeg {
            return None;
        }
        let decoder = match current {
            Some(current) if current.decoder.size() == (n.width, n.height) => current.decoder,
            _ => MjpegDecoder::new(n.width, n.height),
        };
        Some(JpegDecoding {
            decoder,
            corrupt_in_a_row: 0,
            zune_only: false,
            fallback_logged: false,
        })
    }

    fn decode(&mut self, data: &[u8], dst: &mut [u8]) -> Filled {
        let (width, height) = self.decoder.size();
        if self.zune_only {
            return decode_jpeg(data, width, height, dst);
        }
        let fault = match self.decoder.decode_rgb(data, dst) {
            Ok(()) => {
                self.corrupt_in_a_row = 0;
                return Filled::Frame;
            }
            Err(fault) => fault,
        };
        match fault {
            JpegFault::Unsupported(what) => {
                self.zune_only = true;
                self.log_fallback(format_args!(
                    "JPEGs posed's decoder does not handle ({what})"
                ));
                decode_jpeg(data, width, height, dst)
            }
            JpegFault::Corrupt(what) => {
                self.corrupt_in_a_row += 1;
                if self.corrupt_in_a_row < CORRUPT_BEFORE_TRYING_ZUNE {
                    return Filled::Skipped(Skip::Mjpeg(fault));
                }
                match decode_jpeg(data, width, height, dst) {
                    Filled::Frame => {
                        self.zune_only = true;
                        self.log_fallback(format_args!(
                            "frames posed's decoder refuses ({what}) and zune-jpeg decodes"
                        ));
                        Filled::Frame
                    }
                    Filled::Skipped(_) => Filled::Skipped(Skip::Mjpeg(fault)),
                }
            }
            JpegFault::Size { .. } | JpegFault::OutputSize => Filled::Skipped(Skip::Mjpeg(fault)),
        }
    }

    fn log_fallback(&mut self, what: fmt::Arguments<'_>) {
        if !self.fallback_logged {
            self.fallback_logged = true;
            tracing::warn!(
                "the camera sends {what}: decoding them with zune-jpeg, which allocates at \
                 every frame"
            );
        }
    }
}

/// Decodes a JPEG of `width` x `height` into `dst` (`width * height * 3` bytes) with
/// zune-jpeg, which copies `data` and allocates its working buffers.
fn decode_jpeg(data: &[u8], width: usize, height: usize, dst: &mut [u8]) -> Filled {
    let decoder = match image::codecs::jpeg::JpegDecoder::new(io::Cursor::new(data)) {
        Ok(decoder) => decoder,
        Err(e) => return Filled::Skipped(Skip::Jpeg(e)),
    };
    let (w, h) = decoder.dimensions();
    if (w as usize, h as usize) != (width, height) {
        return Filled::Skipped(Skip::JpegSize {
            width: w,
            height: h,
        });
    }
    let pixels = width * height;
    let result = match decoder.color_type() {
        image::ColorType::Rgb8 => decoder.read_image(dst),
        image::ColorType::L8 => decoder.read_image(&mut dst[..pixels]).map(|()| {
            // Grey to RGB in place, from the end: pixel i moves to 3i >= i, so no grey
            // value is overwritten before it is read.
            for i in (0..pixels).rev() {
                let v = dst[i];
                dst[3 * i..3 * i + 3].fill(v);
            }
        }),
        other => return Filled::Skipped(Skip::JpegColor(other)),
    };
    match result {
        Ok(()) => Filled::Frame,
        Err(e) => Filled::Skipped(Skip::Jpeg(e)),
    }
}

/// When the frame was captured on CLOCK_MONOTONIC: the driver's timestamp when it is on
/// that clock and plausible, else the moment of the dequeue.
fn capture_time_ns(buffer: &sys::Buffer, dequeued_ns: u64) -> u64 {
    if buffer.flags & sys::BUF_FLAG_TIMESTAMP_MASK != sys::BUF_FLAG_TIMESTAMP_MONOTONIC {
        return dequeued_ns;
    }
    let sec = u64::try_from(buffer.timestamp.tv_sec).ok();
    let usec = u64::try_from(buffer.timestamp.tv_usec).ok();
    let ns = sec
        .zip(usec)
        .and_then(|(s, us)| s.checked_mul(1_000_000_000)?.checked_add(us * 1_000));
    match ns {
        Some(ns) if ns > 0 && ns <= dequeued_ns => ns,
        _ => dequeued_ns,
    }
}

/// The wall-clock time of monotonic instant `t_ns`, given both clocks read now.
fn wall_from_monotonic(t_ns: u64, now_monotonic_ns: u64, now_wall_ns: u64) -> u64 {
    now_wall_ns.saturating_sub(now_monotonic_ns.saturating_sub(t_ns))
}

fn camera_error(device: &Path, detail: String) -> Error {
    Error::Camera {
        device: device.to_owned(),
        detail,
    }
}

/// An ioctl failure on an open camera, with what the usual errnos mean for a person.
fn ioctl_error(device: &Path, what: &str, error: &io::Error) -> Error {
    let detail = match error.raw_os_error() {
        Some(libc::ENODEV) | Some(libc::ENXIO) => {
            format!("{what}: the camera is gone (unplugged?)")
        }
        Some(libc::EIO) => {
            format!("{what}: input/output error (a USB or driver fault; check dmesg): {error}")
        }
        Some(libc::EPIPE) => format!("{what}: the stream broke (the camera stopped): {error}"),
        _ => format!("{what}: {error}"),
    };
    camera_error(device, detail)
}

/// Why a node could not be opened, in words a person can act on.
fn open_error_detail(error: &io::Error) -> String {
    match error.raw_os_error() {
        Some(libc::ENOENT) | Some(libc::ENODEV) | Some(libc::ENXIO) | Some(libc::ENOTDIR) => {
            "no such device; is the camera plugged in?".to_owned()
        }
        Some(libc::EACCES) | Some(libc::EPERM) => "permission denied: the user running posed \
             must be in the `video` group (`usermod -aG video USER`, or \
             `SupplementaryGroups=video` in the systemd unit)"
            .to_owned(),
        Some(libc::EBUSY) => "busy: another program is using the camera".to_owned(),
        _ => format!("cannot open: {error}"),
    }
}

/// Opens a V4L2 node read-write and non-blocking (so that dequeueing never blocks past
/// the poll timeout), after checking it is a character device.
fn open_node(device: &Path) -> Result<File> {
    let metadata =
        std::fs::metadata(device).map_err(|e| camera_error(device, open_error_detail(&e)))?;
    let file_type = metadata.file_type();
    if !file_type.is_char_device() {
        let what = if file_type.is_file() {
            "a regular file"
        } else if file_type.is_dir() {
            "a directory"
        } else {
            "not a character device"
        };
        return Err(camera_error(
            device,
            format!("not a V4L2 device: {what} (camera nodes are /dev/videoN character devices)"),
        ));
    }
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(device)
        .map_err(|e| camera_error(device, open_error_detail(&e)))
}

fn query_capabilities(device: &Path, fd: BorrowedFd<'_>) -> Result<sys::Capability> {
    let mut cap = sys::Capability::default();
    // SAFETY: VIDIOC_QUERYCAP takes a `v4l2_capability`, which `sys::Capability` is.
    unsafe { sys::ioctl(fd, sys::VIDIOC_QUERYCAP, &mut cap) }.map_err(|e| {
        camera_error(
            device,
            format!("not a V4L2 device (it does not answer VIDIOC_QUERYCAP: {e})"),
        )
    })?;
    Ok(cap)
}

fn capability_names(caps: u32) -> String {
    const NAMES: [(u32, &str); 12] = [
        (sys::CAP_VIDEO_CAPTURE, "video-capture"),
        (0x0000_0002, "video-output"),
        (sys::CAP_VIDEO_CAPTURE_MPLANE, "video-capture-mplane"),
        (0x0000_2000, "video-output-mplane"),
        (0x0000_4000, "video-m2m-mplane"),
        (0x0000_8000, "video-m2m"),
        (0x0020_0000, "ext-pix-format"),
        (0x0080_0000, "meta-capture"),
        (sys::CAP_READWRITE, "readwrite"),
        (sys::CAP_STREAMING, "streaming"),
        (0x1000_0000, "touch"),
        (0x2000_0000, "io-mc"),
    ];
    let names: Vec<&str> = NAMES
        .iter()
        .filter(|(bit, _)| caps & bit != 0)
        .map(|(_, name)| *name)
        .collect();
    if names.is_empty() {
        "none".to_owned()
    } else {
        names.join(", ")
    }
}

/// The capture formats the node offers, with their descriptions.
fn enumerate_formats(fd: BorrowedFd<'_>) -> Vec<(Fourcc, String)> {
    let mut formats = Vec::new();
    // Bounded: a driver that never ends the list must not hang posed.
    for index in 0..256 {
        let mut desc = sys::FmtDesc {
            index,
            type_: sys::BUF_TYPE_VIDEO_CAPTURE,
            ..Default::default()
        };
        // SAFETY: VIDIOC_ENUM_FMT takes a `v4l2_fmtdesc`, which `sys::FmtDesc` is.
        if unsafe { sys::ioctl(fd, sys::VIDIOC_ENUM_FMT, &mut desc) }.is_err() {
            break;
        }
        formats.push((Fourcc(desc.pixelformat), sys::c_str(&desc.description)));
    }
    formats
}

/// A frame size from VIDIOC_ENUM_FRAMESIZES.
enum FrameSize {
    Discrete {
        width: u32,
        height: u32,
    },
    /// Stepwise or continuous (step 1).
    Range {
        min: (u32, u32),
        max: (u32, u32),
        step: (u32, u32),
    },
}

impl FrameSize {
    fn contains(&self, width: u32, height: u32) -> bool {
        match *self {
            FrameSize::Discrete {
                width: w,
                height: h,
            } => (w, h) == (width, height),
            FrameSize::Range { min, max, step } => {
                let fits = |v: u32, lo: u32, hi: u32, step: u32| {
                    (lo..=hi).contains(&v) && (v - lo).is_multiple_of(step.max(1))
                };
                fits(width, min.0, max.0, step.0) && fits(height, min.1, max.1, step.1)
            }
        }
    }
}

fn enumerate_sizes(fd: BorrowedFd<'_>, fourcc: Fourcc) -> Vec<FrameSize> {
    let mut sizes = Vec::new();
    for index in 0..1024 {
        let mut size = sys::FrmSizeEnum {
            index,
            pixel_format: fourcc.0,
            ..Default::default()
        };
        // SAFETY: VIDIOC_ENUM_FRAMESIZES takes a `v4l2_frmsizeenum`, which
        // `sys::FrmSizeEnum` is.
        if unsafe { sys::ioctl(fd, sys::VIDIOC_ENUM_FRAMESIZES, &mut size) }.is_err() {
            break;
        }
        let [a, b, c, d, e, f] = size.size;
        match size.type_ {
            sys::FRMSIZE_TYPE_DISCRETE => sizes.push(FrameSize::Discrete {
                width: a,
                height: b,
            }),
            sys::FRMSIZE_TYPE_STEPWISE | sys::FRMSIZE_TYPE_CONTINUOUS => {
                sizes.push(FrameSize::Range {
                    min: (a, d),
                    max: (b, e),
                    step: (c, f),
                });
                // A range is the only entry.
                break;
            }
            _ => break,
        }
    }
    sizes
}

/// `": 30, 15 fps"` for a discrete size, or nothing when the driver does not say.
fn frame_rates(fd: BorrowedFd<'_>, fourcc: Fourcc, width: u32, height: u32) -> String {
    let mut rates = Vec::new();
    for index in 0..64 {
        let mut ival = sys::FrmIvalEnum {
            index,
            pixel_format: fourcc.0,
            width,
            height,
            ..Default::default()
        };
        // SAFETY: VIDIOC_ENUM_FRAMEINTERVALS takes a `v4l2_frmivalenum`, which
        // `sys::FrmIvalEnum` is.
        if unsafe { sys::ioctl(fd, sys::VIDIOC_ENUM_FRAMEINTERVALS, &mut ival) }.is_err() {
            break;
        }
        if ival.type_ == sys::FRMIVAL_TYPE_DISCRETE {
            rates.push(fps_text(ival.interval[0]));
        } else {
            // Stepwise / continuous: min interval is the max rate.
            rates.push(format!(
                "{} to {}",
                fps_text(ival.interval[1]),
                fps_text(ival.interval[0])
            ));
            break;
        }
    }
    if rates.is_empty() {
        String::new()
    } else {
        format!(": {} fps", rates.join(", "))
    }
}

fn fps_of(interval: sys::Fract) -> f64 {
    if interval.numerator == 0 {
        0.0
    } else {
        f64::from(interval.denominator) / f64::from(interval.numerator)
    }
}

fn fps_text(interval: sys::Fract) -> String {
    let fps = fps_of(interval);
    if fps.fract() == 0.0 {
        format!("{fps:.0}")
    } else {
        format!("{fps:.2}")
    }
}

/// Memory of one V4L2 buffer, mapped from the driver or lent to it.
struct Slot {
    ptr: NonNull<u8>,
    len: usize,
    kind: SlotKind,
}

enum SlotKind {
    /// Driver memory mapped with `mmap`.
    Mapped,
    /// Memory posed allocated with this layout and lends (USERPTR).
    Lent(Layout),
    /// Memory posed lends (USERPTR) that is also mapped into a CUDA device, which reads
    /// the frames in place. Freed (and unmapped) by its own `Drop`.
    #[cfg(feature = "cuda")]
    LentToGpu(MappedHostBuffer),
}

// SAFETY: a slot is a plain address range owned by the `Camera` that holds it; nothing
// about it is tied to the thread that created it.
unsafe impl Send for Slot {}

impl Slot {
    fn map(device: &Path, fd: BorrowedFd<'_>, index: u32) -> Result<Self> {
        let mut buffer = sys::Buffer {
            index,
            type_: sys::BUF_TYPE_VIDEO_CAPTURE,
            memory: sys::MEMORY_MMAP,
            ..Default::default()
        };
        // SAFETY: VIDIOC_QUERYBUF takes a `v4l2_buffer`, which `sys::Buffer` is.
        unsafe { sys::ioctl(fd, sys::VIDIOC_QUERYBUF, &mut buffer) }
            .map_err(|e| ioctl_error(device, "VIDIOC_QUERYBUF", &e))?;
        let len = buffer.length as usize;
        // `m.offset` is the union's low 32 bits on these little-endian targets.
        let offset = (buffer.m & 0xffff_ffff) as libc::off_t;
        // SAFETY: a fresh shared mapping of the driver's buffer, at the offset and length
        // the driver gave for it; no existing memory is touched.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                offset,
            )
        };
        if ptr == libc::MAP_FAILED || len == 0 {
            let error = io::Error::last_os_error();
            return Err(camera_error(
                device,
                format!("cannot map buffer {index} ({len} bytes): {error}"),
            ));
        }
        let ptr = NonNull::new(ptr.cast::<u8>()).ok_or_else(|| {
            camera_error(device, format!("buffer {index} was mapped at address 0"))
        })?;
        Ok(Self {
            ptr,
            len,
            kind: SlotKind::Mapped,
        })
    }

    /// Page-aligned memory of at least `len` bytes for USERPTR streaming, mapped into
    /// `cuda` when given.
    fn allocate(device: &Path, len: usize, cuda: Option<&Cuda>) -> Result<Self> {
        #[cfg(feature = "cuda")]
        if let Some(cuda) = cuda {
            let memory = MappedHostBuffer::new(cuda, len.max(1)).map_err(|e| {
                camera_error(
                    device,
                    format!("cannot map a {len}-byte camera buffer into the GPU: {e}"),
                )
            })?;
            let ptr = NonNull::new(memory.host_ptr())
                .ok_or_else(|| camera_error(device, "a mapped buffer at address 0".to_owned()))?;
            return Ok(Self {
                ptr,
                len: memory.len(),
                kind: SlotKind::LentToGpu(memory),
            });
        }
        #[cfg(not(feature = "cuda"))]
        if let Some(never) = cuda {
            match *never {}
        }
        // SAFETY: sysconf has no preconditions.
        let page = match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
            n if n > 0 => n as usize,
            _ => 4096,
        };
        let size = len.div_ceil(page).max(1) * page;
        let layout = Layout::from_size_align(size, page).map_err(|e| {
            camera_error(device, format!("cannot lay out a {size}-byte buffer: {e}"))
        })?;
        // Zeroed: the bytes are read as `&[u8]` after the driver fills them, and must be
        // initialised even where a short frame leaves them untouched.
        // SAFETY: `layout` has a non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        let ptr = NonNull::new(ptr).ok_or_else(|| {
            camera_error(device, format!("out of memory for a {size}-byte buffer"))
        })?;
        Ok(Self {
            ptr,
            len: size,
            kind: SlotKind::Lent(layout),
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        match self.kind {
            SlotKind::Mapped => {
                // SAFETY: `ptr`/`len` are exactly the mapping `mmap` returned; no slice of
                // it outlives the slot (they borrow the `Camera`).
                unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
            }
            SlotKind::Lent(layout) => {
                // SAFETY: allocated in `allocate` with this layout. The `Camera` closes
                // the device (which stops streaming and makes the driver let go of the
                // pages) before it drops its slots.
                unsafe { std::alloc::dealloc(self.ptr.as_ptr(), layout) };
            }
            // Unmapped and freed by the buffer's own Drop, after this one, and after the
            // `Camera` closed the device.
            #[cfg(feature = "cuda")]
            SlotKind::LentToGpu(_) => {}
        }
    }
}

/// An open, streaming capture node and its buffers.
struct Camera {
    // Declared before `slots` so that the device is closed before lent memory is freed:
    // closing releases the driver's queue and its hold on the pages.
    file: File,
    slots: Vec<Slot>,
    memory: u32,
}

impl Drop for Camera {
    fn drop(&mut self) {
        let mut kind = sys::BUF_TYPE_VIDEO_CAPTURE as i32;
        // Stops the driver writing into the buffers. Errors are ignored: the device may be
        // gone, and closing the file (the first field dropped after this) stops streaming
        // and releases the driver's queue and its hold on lent pages in any case.
        // SAFETY: VIDIOC_STREAMOFF takes an `int` buffer type.
        let _ = unsafe { sys::ioctl(self.file.as_fd(), sys::VIDIOC_STREAMOFF, &mut kind) };
    }
}

impl Camera {
    /// Opens and starts streaming. With `cuda`, USERPTR buffers (`source.io` "auto" or
    /// "userptr") are mapped into that device.
    fn open(config: &SourceConfig, cuda: Option<&Cuda>) -> Result<(Self, Negotiated)> {
        let device = config.device.as_path();
        let file = open_node(device)?;
        let fd = file.as_fd();
        let cap = query_capabilities(device, fd)?;
        let caps = cap.node_caps();
        if caps & sys::CAP_VIDEO_CAPTURE == 0 {
            let hint = if caps & sys::CAP_VIDEO_CAPTURE_MPLANE != 0 {
                "it offers only multi-planar capture, which posed does not read yet"
            } else {
                "a UVC camera has two nodes, the second for metadata: try the other \
                 /dev/videoN (`posed camera info` lists them)"
            };
            return Err(camera_error(
                device,
                format!(
                    "not a video capture device (capabilities: {}); {hint}",
                    capability_names(caps)
                ),
            ));
        }
        if caps & sys::CAP_STREAMING == 0 {
            return Err(camera_error(
                device,
                format!(
                    "the driver does not support streaming I/O (capabilities: {}), which \
                     posed needs",
                    capability_names(caps)
                ),
            ));
        }

        let negotiated = negotiate(device, fd, config)?;
        let mut request = sys::RequestBuffers {
            count: BUFFER_COUNT,
            type_: sys::BUF_TYPE_VIDEO_CAPTURE,
            ..Default::default()
        };
        request.memory = buffer_memory(config.io, cuda.is_some());
        // SAFETY: VIDIOC_REQBUFS takes a `v4l2_requestbuffers`, which
        // `sys::RequestBuffers` is.
        if let Err(e) = unsafe { sys::ioctl(fd, sys::VIDIOC_REQBUFS, &mut request) } {
            let refused =
                request.memory == sys::MEMORY_USERPTR && e.raw_os_error() == Some(libc::EINVAL);
            if refused && config.io == CameraIo::Auto {
                tracing::warn!(
                    device = %device.display(),
                    "the driver does not take USERPTR buffers: MMAP buffers, converted on \
                     the CPU"
                );
                request = sys::RequestBuffers {
                    count: BUFFER_COUNT,
                    type_: sys::BUF_TYPE_VIDEO_CAPTURE,
                    memory: sys::MEMORY_MMAP,
                    ..Default::default()
                };
                // SAFETY: as above.
                unsafe { sys::ioctl(fd, sys::VIDIOC_REQBUFS, &mut request) }
                    .map_err(|e| ioctl_error(device, "VIDIOC_REQBUFS", &e))?;
            } else if refused {
                return Err(camera_error(
                    device,
                    "the driver does not take USERPTR buffers (source.io = \"userptr\"); use \
                     source.io = \"mmap\" or \"auto\""
                        .to_owned(),
                ));
            } else {
                return Err(ioctl_error(device, "VIDIOC_REQBUFS", &e));
            }
        }
        if request.count < 2 {
            return Err(camera_error(
                device,
                format!(
                    "the driver granted {} buffers; streaming needs at least 2",
                    request.count
                ),
            ));
        }
        // The driver may grant more than asked; more than a few dozen is not a camera.
        if request.count > MAX_DRIVER_BUFFERS {
            return Err(camera_error(
                device,
                format!(
                    "the driver granted {} buffers; posed takes at most {MAX_DRIVER_BUFFERS}",
                    request.count
                ),
            ));
        }
        let mut slots = Vec::with_capacity(request.count as usize);
        for index in 0..request.count {
            slots.push(if request.memory == sys::MEMORY_MMAP {
                Slot::map(device, fd, index)?
            } else {
                Slot::allocate(device, negotiated.size_bytes, cuda)?
            });
        }
        let camera = Camera {
            file,
            slots,
            memory: request.memory,
        };
        for index in 0..camera.slots.len() {
            camera
                .queue(index)
                .map_err(|e| ioctl_error(device, "VIDIOC_QBUF", &e))?;
        }
        let mut kind = sys::BUF_TYPE_VIDEO_CAPTURE as i32;
        // SAFETY: VIDIOC_STREAMON takes an `int` buffer type.
        unsafe { sys::ioctl(camera.file.as_fd(), sys::VIDIOC_STREAMON, &mut kind) }
            .map_err(|e| ioctl_error(device, "VIDIOC_STREAMON", &e))?;
        Ok((camera, negotiated))
    }

    fn io_name(&self) -> &'static str {
        if self.gpu_readable() {
            "userptr, mapped into the GPU"
        } else if self.memory == sys::MEMORY_USERPTR {
            "userptr"
        } else {
            "mmap"
        }
    }

    /// Whether the buffers are mapped into a CUDA device.
    fn gpu_readable(&self) -> bool {
        #[cfg(feature = "cuda")]
        {
            self.slots
                .iter()
                .all(|slot| matches!(slot.kind, SlotKind::LentToGpu(_)))
        }
        #[cfg(not(feature = "cuda"))]
        {
            false
        }
    }

    /// The mapped memory of a dequeued buffer, when the buffers are mapped into the GPU.
    #[cfg(feature = "cuda")]
    fn mapped_slot(&self, buffer: &sys::Buffer) -> Option<&MappedHostBuffer> {
        match &self.slots.get(buffer.index as usize)?.kind {
            SlotKind::LentToGpu(memory) => Some(memory),
            _ => None,
        }
    }

    /// Hands buffer `index` to the driver to fill.
    fn queue(&self, index: usize) -> io::Result<()> {
        let slot = &self.slots[index];
        let mut buffer = sys::Buffer {
            index: index as u32,
            type_: sys::BUF_TYPE_VIDEO_CAPTURE,
            memory: self.memory,
            ..Default::default()
        };
        if self.memory == sys::MEMORY_USERPTR {
            buffer.m = slot.ptr.as_ptr() as u64;
            buffer.length = slot.len as u32;
        }
        // SAFETY: VIDIOC_QBUF takes a `v4l2_buffer`, which `sys::Buffer` is. A USERPTR
        // buffer points to the slot's `len` bytes, which live as long as the `Camera`, and
        // the `Camera` closes the device before freeing them.
        unsafe { sys::ioctl(self.file.as_fd(), sys::VIDIOC_QBUF, &mut buffer) }
    }

    /// Waits up to [`FRAME_TIMEOUT`] for a filled buffer and takes it from the driver.
    fn dequeue(&self, device: &Path) -> Result<sys::Buffer> {
        let deadline = Instant::now() + FRAME_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(camera_error(
                    device,
                    format!(
                        "no frame for {} s: the camera stopped delivering (unplugged, or short \
                         of USB bandwidth?)",
                        FRAME_TIMEOUT.as_secs()
                    ),
                ));
            }
            let mut pollfd = libc::pollfd {
                fd: self.file.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid, writable pollfd, and the count says one.
            let rc = unsafe { libc::poll(&mut pollfd, 1, left.as_millis().max(1) as i32) };
            if rc < 0 {
                let error = io::Error::last_os_error();
                if error.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(ioctl_error(device, "poll", &error));
            }
            if rc == 0 {
                continue;
            }
            let mut buffer = sys::Buffer {
                type_: sys::BUF_TYPE_VIDEO_CAPTURE,
                memory: self.memory,
                ..Default::default()
            };
            // SAFETY: VIDIOC_DQBUF takes a `v4l2_buffer`, which `sys::Buffer` is.
            match unsafe { sys::ioctl(self.file.as_fd(), sys::VIDIOC_DQBUF, &mut buffer) } {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if pollfd.revents & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0 {
                        return Err(camera_error(
                            device,
                            "the driver reports an error on the stream (unplugged?)".to_owned(),
                        ));
                    }
                    continue;
                }
                Err(e) => return Err(ioctl_error(device, "VIDIOC_DQBUF", &e)),
            }
            if buffer.index as usize >= self.slots.len() {
                return Err(camera_error(
                    device,
                    format!(
                        "the driver returned buffer {} of {}",
                        buffer.index,
                        self.slots.len()
                    ),
                ));
            }
            return Ok(buffer);
        }
    }

    /// The image bytes of a dequeued buffer.
    fn data(&self, buffer: &sys::Buffer) -> &[u8] {
        let slot = &self.slots[buffer.index as usize];
        let len = (buffer.bytesused as usize).min(slot.len);
        // SAFETY: the slot's `len` bytes are mapped or allocated (and initialised: the
        // driver's pages, or zeroed memory) for as long as `self` lives; the buffer is
        // dequeued, so the driver does not write to it until `queue` hands it back, which
        // needs this borrow to have ended in `capture`.
        unsafe { std::slice::from_raw_parts(slot.ptr.as_ptr(), len) }
    }
}

/// The V4L2 memory type for `source.io`. `auto`: USERPTR where it pays, i.e. where the
/// buffers are mapped into the GPU that converts them in place; MMAP (the driver's own
/// memory) otherwise (and, in `Camera::open`, where the driver refuses USERPTR).
fn buffer_memory(io: CameraIo, on_gpu: bool) -> u32 {
    match (io, on_gpu) {
        (CameraIo::Auto, true) | (CameraIo::Userptr, _) => sys::MEMORY_USERPTR,
        (CameraIo::Auto, false) | (CameraIo::Mmap, _) => sys::MEMORY_MMAP,
    }
}

/// Sets format, size and frame rate; returns what the driver agreed to.
fn negotiate(device: &Path, fd: BorrowedFd<'_>, config: &SourceConfig) -> Result<Negotiated> {
    let formats = enumerate_formats(fd);
    let offered: Vec<OfferedFormat> = formats
        .iter()
        .map(|(fourcc, _)| {
            let sizes = enumerate_sizes(fd, *fourcc);
            OfferedFormat {
                fourcc: *fourcc,
                has_size: sizes.is_empty()
                    || sizes
                        .iter()
                        .any(|s| s.contains(config.width, config.height)),
            }
        })
        .collect();
    let fourcc = select_format(config.format, &offered).map_err(|e| camera_error(device, e))?;
    let Some(decode) = Decode::of(fourcc) else {
        return Err(camera_error(
            device,
            format!("posed cannot read {fourcc} frames"),
        ));
    };

    let mut format = sys::Format {
        type_: sys::BUF_TYPE_VIDEO_CAPTURE,
        ..Default::default()
    };
    format.fmt.pix = sys::PixFormat {
        width: config.width,
        height: config.height,
        pixelformat: fourcc.0,
        field: sys::FIELD_NONE,
        ..Default::default()
    };
    // SAFETY: VIDIOC_S_FMT takes a `v4l2_format`, which `sys::Format` is.
    unsafe { sys::ioctl(fd, sys::VIDIOC_S_FMT, &mut format) }
        .map_err(|e| ioctl_error(device, &format!("VIDIOC_S_FMT {fourcc}"), &e))?;
    let mut negotiated = check_driver_format(device, config, fourcc, decode, &format.pix())?;
    negotiated.fps = set_frame_rate(device, fd, config.fps);
    Ok(negotiated)
}

/// What the driver set with VIDIOC_S_FMT, checked before it sizes any buffer: the format
/// asked for, a size no camera exceeds, even sizes where the chroma is shared, a buffer
/// size that fits.
fn check_driver_format(
    device: &Path,
    config: &SourceConfig,
    fourcc: Fourcc,
    decode: Decode,
    pix: &sys::PixFormat,
) -> Result<Negotiated> {
    if pix.pixelformat != fourcc.0 {
        return Err(camera_error(
            device,
            format!(
                "asked for {fourcc}, the driver set {} instead",
                Fourcc(pix.pixelformat)
            ),
        ));
    }
    if pix.width == 0 || pix.height == 0 {
        return Err(camera_error(
            device,
            format!(
                "the driver set an empty image size {}x{}",
                pix.width, pix.height
            ),
        ));
    }
    // The driver's numbers size every frame buffer: refuse what no camera delivers.
    if pix.width > MAX_DRIVER_SIDE || pix.height > MAX_DRIVER_SIDE {
        return Err(camera_error(
            device,
            format!(
                "the driver set {}x{}; posed takes camera images of at most {MAX_DRIVER_SIDE} \
                 pixels a side",
                pix.width, pix.height
            ),
        ));
    }
    if (pix.width, pix.height) != (config.width, config.height) {
        tracing::warn!(
            device = %device.display(),
            "asked for {}x{}, the camera delivers {}x{}; source.intrinsics is used as given, \
             but it was meant for {}x{}: give K for {}x{}",
            config.width,
            config.height,
            pix.width,
            pix.height,
            config.width,
            config.height,
            pix.width,
            pix.height
        );
    }
    let width = pix.width as usize;
    let height = pix.height as usize;
    // Two pixels share their chroma samples (and NV12 two rows): the converter needs even
    // sizes, and a driver that sets odd ones is better refused here than at every frame.
    let odd = match decode {
        Decode::Yuyv => !width.is_multiple_of(2),
        Decode::Nv12 => !width.is_multiple_of(2) || !height.is_multiple_of(2),
        Decode::Rgb24 | Decode::Jpeg => false,
    };
    if odd {
        return Err(camera_error(
            device,
            format!("the driver set {fourcc} at {width}x{height}; {fourcc} needs an even size"),
        ));
    }
    let packed_row = width * decode.bytes_per_pixel();
    let stride_bytes = (pix.bytesperline as usize).max(packed_row);
    let mut negotiated = Negotiated {
        fourcc,
        decode,
        width,
        height,
        stride_bytes,
        size_bytes: pix.sizeimage as usize,
        fps: 0.0,
    };
    negotiated.size_bytes = negotiated.size_bytes.max(negotiated.padded_frame_bytes());
    // A V4L2 buffer's length is 32 bits, and posed allocates these: bound what a driver's
    // stride and image size can ask for.
    if negotiated.size_bytes > MAX_DRIVER_BUFFER_BYTES {
        return Err(camera_error(
            device,
            format!(
                "the driver asks for {}-byte buffers ({fourcc} {width}x{height}, {} bytes per \
                 line); posed takes at most {MAX_DRIVER_BUFFER_BYTES}",
                negotiated.size_bytes, negotiated.stride_bytes
            ),
        ));
    }
    if negotiated.size_bytes == 0 {
        return Err(camera_error(
            device,
            format!("the driver gives no buffer size for {fourcc} {width}x{height}"),
        ));
    }
    Ok(negotiated)
}

/// Asks for `fps` with VIDIOC_S_PARM; returns the rate the driver set (0 when unknown).
/// A camera that cannot set it, or sets another rate, is not an error: posed warns and
/// takes the frames as they come.
fn set_frame_rate(device: &Path, fd: BorrowedFd<'_>, fps: u32) -> f64 {
    let mut parm = sys::StreamParm {
        type_: sys::BUF_TYPE_VIDEO_CAPTURE,
        ..Default::default()
    };
    // SAFETY: VIDIOC_G_PARM takes a `v4l2_streamparm`, which `sys::StreamParm` is.
    if let Err(e) = unsafe { sys::ioctl(fd, sys::VIDIOC_G_PARM, &mut parm) } {
        tracing::warn!(device = %device.display(), "cannot read the frame rate (VIDIOC_G_PARM: {e}); asked for {fps} fps");
        return 0.0;
    }
    let current = parm.capture();
    if current.capability & sys::CAP_TIMEPERFRAME == 0 {
        let now = fps_of(current.timeperframe);
        tracing::warn!(device = %device.display(), "the driver does not let the frame rate be set; asked for {fps} fps, it runs at {now:.2} fps (0: unknown)");
        return now;
    }
    let mut capture = current;
    capture.timeperframe = sys::Fract {
        numerator: 1,
        denominator: fps,
    };
    parm.parm.capture = capture;
    // SAFETY: VIDIOC_S_PARM takes a `v4l2_streamparm`, which `sys::StreamParm` is.
    if let Err(e) = unsafe { sys::ioctl(fd, sys::VIDIOC_S_PARM, &mut parm) } {
        tracing::warn!(device = %device.display(), "cannot set {fps} fps (VIDIOC_S_PARM: {e})");
        return fps_of(current.timeperframe);
    }
    let set = fps_of(parm.capture().timeperframe);
    if (set - f64::from(fps)).abs() > 0.01 {
        tracing::warn!(device = %device.display(), "asked for {fps} fps, the camera runs at {set:.2} fps");
    }
    set
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn driver_formats_that_would_size_huge_buffers_are_refused() {
        let device = Path::new("/dev/video9");
        let config = SourceConfig {
            width: 640,
            height: 480,
            ..SourceConfig::default()
        };
        let pix = |width: u32, height: u32, bytesperline: u32, sizeimage: u32| sys::PixFormat {
            width,
            height,
            pixelformat: Fourcc::YUYV.0,
            bytesperline,
            sizeimage,
            ..Default::default()
        };
        let check = |p: &sys::PixFormat| {
            check_driver_format(device, &config, Fourcc::YUYV, Decode::Yuyv, p)
        };
        let ok = check(&pix(640, 480, 1280, 614_400)).expect("a plain YUYV frame");
        assert_eq!((ok.width, ok.height, ok.size_bytes), (640, 480, 614_400));
        let message = check(&pix(100_000, 480, 0, 0))
            .expect_err("too wide")
            .to_string();
        assert!(
            message.contains("/dev/video9") && message.contains("at most 8192"),
            "{message}"
        );
        // A stride of 4 GB per line.
        let message = check(&pix(640, 480, u32::MAX, 0))
            .expect_err("huge stride")
            .to_string();
        assert!(
            message.contains("byte buffers") && message.contains("at most"),
            "{message}"
        );
        let message = check(&pix(641, 480, 0, 0))
            .expect_err("odd YUYV")
            .to_string();
        assert!(message.contains("even size"), "{message}");
    }

    fn offered(list: &[(&[u8; 4], bool)]) -> Vec<OfferedFormat> {
        list.iter()
            .map(|(code, has_size)| OfferedFormat {
                fourcc: Fourcc::new(code),
                has_size: *has_size,
            })
            .collect()
    }

    fn config(device: &Path) -> SourceConfig {
        SourceConfig {
            device: device.to_owned(),
            intrinsics: Some([600.0, 0.0, 320.0, 0.0, 600.0, 240.0, 0.0, 0.0, 1.0]),
            ..SourceConfig::default()
        }
    }

    fn camera_detail(result: Result<V4l2Source>, device: &Path) -> String {
        match result {
            Err(error @ Error::Camera { .. }) => {
                let Error::Camera { device: named, .. } = &error else {
                    unreachable!()
                };
                assert_eq!(named, device);
                let message = error.to_string();
                assert!(
                    message.starts_with(&device.display().to_string()),
                    "{message}"
                );
                message
            }
            other => panic!("expected a camera error, got {other:?}"),
        }
    }

    #[test]
    fn auto_lends_buffers_only_to_a_gpu_that_reads_them_in_place() {
        assert_eq!(buffer_memory(CameraIo::Auto, true), sys::MEMORY_USERPTR);
        assert_eq!(buffer_memory(CameraIo::Auto, false), sys::MEMORY_MMAP);
        for on_gpu in [false, true] {
            assert_eq!(buffer_memory(CameraIo::Mmap, on_gpu), sys::MEMORY_MMAP);
            assert_eq!(
                buffer_memory(CameraIo::Userptr, on_gpu),
                sys::MEMORY_USERPTR
            );
        }
    }

    #[test]
    fn fourccs_print_as_their_four_characters() {
        assert_eq!(Fourcc::YUYV.to_string(), "YUYV");
        assert_eq!(Fourcc::RGB3.0, 0x3342_4752);
        assert_eq!(Fourcc::MJPG.0, 0x4750_4a4d);
        assert_eq!(Fourcc::NV12.0, 0x3231_564e);
        assert_eq!(Fourcc(0x0000_4142).to_string(), "BA..");
    }

    #[test]
    fn auto_takes_the_cheapest_format_offered_at_the_size() {
        let all = offered(&[(b"MJPG", true), (b"YUYV", true), (b"NV12", true)]);
        assert_eq!(select_format(CameraFormat::Auto, &all), Ok(Fourcc::YUYV));
        let with_rgb = offered(&[(b"MJPG", true), (b"RGB3", true), (b"YUYV", true)]);
        assert_eq!(
            select_format(CameraFormat::Auto, &with_rgb),
            Ok(Fourcc::RGB3)
        );
        // YUYV not at this size (USB 2 webcams at 1280x720): MJPEG is.
        let sized = offered(&[(b"YUYV", false), (b"MJPG", true)]);
        assert_eq!(select_format(CameraFormat::Auto, &sized), Ok(Fourcc::MJPG));
        // Nothing at this size: the preferred format, the driver picks the size.
        let no_size = offered(&[(b"MJPG", false), (b"YUYV", false)]);
        assert_eq!(
            select_format(CameraFormat::Auto, &no_size),
            Ok(Fourcc::YUYV)
        );
        let grey_and_nv12 = offered(&[(b"GREY", true), (b"NV12", true)]);
        assert_eq!(
            select_format(CameraFormat::Auto, &grey_and_nv12),
            Ok(Fourcc::NV12)
        );
    }

    #[test]
    fn an_explicit_format_must_be_offered() {
        let webcam = offered(&[(b"YUYV", true), (b"MJPG", true)]);
        assert_eq!(
            select_format(CameraFormat::Mjpeg, &webcam),
            Ok(Fourcc::MJPG)
        );
        assert_eq!(select_format(CameraFormat::Yuyv, &webcam), Ok(Fourcc::YUYV));
        let jpeg = offered(&[(b"JPEG", true)]);
        assert_eq!(select_format(CameraFormat::Mjpeg, &jpeg), Ok(Fourcc::JPEG));
        let message = select_format(CameraFormat::Nv12, &webcam).expect_err("not offered");
        assert!(message.contains("\"nv12\""), "{message}");
        assert!(message.contains("it offers YUYV, MJPG"), "{message}");
        let message = select_format(CameraFormat::Rgb24, &[]).expect_err("nothing offered");
        assert!(
            message.contains("no single-planar capture format"),
            "{message}"
        );
    }

    #[test]
    fn auto_names_what_the_camera_offers_when_nothing_fits() {
        let ir = offered(&[(b"GREY", true), (b"Y16 ", true)]);
        let message = select_format(CameraFormat::Auto, &ir).expect_err("unreadable");
        assert!(message.contains("RGB3, YUYV, NV12, MJPG"), "{message}");
        assert!(message.contains("it offers GREY, Y16 "), "{message}");
    }

    #[test]
    fn frame_size_ranges_respect_their_steps() {
        let range = FrameSize::Range {
            min: (16, 16),
            max: (1920, 1080),
            step: (16, 8),
        };
        assert!(range.contains(640, 480));
        assert!(!range.contains(650, 480));
        assert!(!range.contains(3840, 480));
        let discrete = FrameSize::Discrete {
            width: 640,
            height: 480,
        };
        assert!(discrete.contains(640, 480));
        assert!(!discrete.contains(480, 640));
    }

    #[test]
    fn a_missing_node_is_a_clear_camera_error() {
        let device = Path::new("/dev/video-posed-test-missing");
        let message = camera_detail(V4l2Source::open(&config(device)), device);
        assert!(
            message.contains("no such device; is the camera plugged in?"),
            "{message}"
        );
        match describe(device) {
            Err(Error::Camera {
                device: named,
                detail,
            }) => {
                assert_eq!(named, device);
                assert!(detail.contains("no such device"), "{detail}");
            }
            other => panic!("expected a camera error, got {other:?}"),
        }
    }

    #[test]
    fn a_regular_file_is_not_a_camera() {
        let dir = tempfile::tempdir().expect("temporary folder");
        let device = dir.path().join("video0");
        std::fs::write(&device, b"not a camera").expect("write");
        let message = camera_detail(V4l2Source::open(&config(&device)), &device);
        assert!(
            message.contains("not a V4L2 device: a regular file"),
            "{message}"
        );
        let message = camera_detail(V4l2Source::open(&config(dir.path())), dir.path());
        assert!(message.contains("a directory"), "{message}");
    }

    #[test]
    fn dev_null_is_not_a_camera() {
        let device = Path::new("/dev/null");
        let message = camera_detail(V4l2Source::open(&config(device)), device);
        assert!(message.contains("not a V4L2 device"), "{message}");
        assert!(message.contains("VIDIOC_QUERYCAP"), "{message}");
        match describe(device) {
            Err(Error::Camera { detail, .. }) => assert!(detail.contains("not a V4L2 device")),
            other => panic!("expected a camera error, got {other:?}"),
        }
    }

    #[test]
    fn a_camera_without_intrinsics_is_refused() {
        let mut config = config(Path::new("/dev/video0"));
        config.intrinsics = None;
        match V4l2Source::open(&config) {
            Err(Error::Invalid { what, .. }) => assert_eq!(what, "source.intrinsics"),
            other => panic!("expected an invalid request, got {other:?}"),
        }
    }

    #[test]
    fn open_errors_say_what_to_do() {
        let detail = |errno| open_error_detail(&io::Error::from_raw_os_error(errno));
        assert!(detail(libc::EACCES).contains("`video` group"));
        assert!(detail(libc::ENOENT).contains("plugged in"));
        assert!(detail(libc::EBUSY).contains("another program"));
        let gone = ioctl_error(
            Path::new("/dev/video0"),
            "VIDIOC_DQBUF",
            &io::Error::from_raw_os_error(libc::ENODEV),
        );
        assert_eq!(
            gone.to_string(),
            "/dev/video0: VIDIOC_DQBUF: the camera is gone (unplugged?)"
        );
    }

    #[test]
    fn list_devices_lists_only_video_nodes() {
        for path in list_devices() {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            assert!(name.starts_with("video"), "{}", path.display());
        }
    }

    #[test]
    fn driver_timestamps_are_used_when_monotonic() {
        let mut buffer = sys::Buffer {
            flags: sys::BUF_FLAG_TIMESTAMP_MONOTONIC,
            timestamp: sys::Timeval {
                tv_sec: 12,
                tv_usec: 345_678,
            },
            ..Default::default()
        };
        assert_eq!(capture_time_ns(&buffer, 20_000_000_000), 12_345_678_000);
        // In the future of the dequeue: not believable.
        assert_eq!(capture_time_ns(&buffer, 10_000_000_000), 10_000_000_000);
        // Another clock (e.g. the copy flag, 0x4000): the dequeue time.
        buffer.flags = 0x4000;
        assert_eq!(capture_time_ns(&buffer, 20_000_000_000), 20_000_000_000);
        buffer.flags = sys::BUF_FLAG_TIMESTAMP_MONOTONIC;
        buffer.timestamp = sys::Timeval::default();
        assert_eq!(capture_time_ns(&buffer, 7), 7);
        buffer.timestamp.tv_sec = -1;
        assert_eq!(capture_time_ns(&buffer, 7), 7);
    }

    #[test]
    fn wall_time_is_now_minus_the_age() {
        assert_eq!(wall_from_monotonic(900, 1000, 1_000_000), 999_900);
        assert_eq!(wall_from_monotonic(1200, 1000, 1_000_000), 1_000_000);
        assert_eq!(wall_from_monotonic(0, 5000, 10), 0);
    }

    fn negotiated(decode: Decode, width: usize, height: usize, stride_bytes: usize) -> Negotiated {
        Negotiated {
            fourcc: Fourcc::YUYV,
            decode,
            width,
            height,
            stride_bytes,
            size_bytes: stride_bytes * height * 2,
            fps: 30.0,
        }
    }

    #[test]
    fn a_camera_that_comes_back_at_another_size_is_a_camera_fault() {
        let device = Path::new("/dev/video7");
        let before = negotiated(Decode::Yuyv, 640, 480, 1280);
        // Another format and stride at the same size: accepted.
        let mut same_size = negotiated(Decode::Nv12, 640, 480, 704);
        same_size.fourcc = Fourcc::NV12;
        assert!(check_reopened_size(device, &before, &same_size).is_ok());
        // A larger (or smaller) image: the daemon's frames and K do not fit it.
        for (w, h) in [(1280, 720), (320, 240)] {
            match check_reopened_size(device, &before, &negotiated(Decode::Yuyv, w, h, 2 * w)) {
                Err(Error::Camera {
                    device: named,
                    detail,
                }) => {
                    assert_eq!(named, device);
                    assert!(
                        detail.contains(&format!("came back at {w}x{h}")),
                        "{detail}"
                    );
                    assert!(detail.contains("started it at 640x480"), "{detail}");
                }
                other => panic!("expected a camera error, got {other:?}"),
            }
        }
    }

    fn jpeg_of(width: u32, height: u32, color: image::ExtendedColorType, pixels: &[u8]) -> Vec<u8> {
        let mut bytes = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 100)
            .encode(pixels, width, height, color)
            .expect("encode");
        bytes
    }

    #[test]
    fn mjpeg_frames_decode_into_the_frame() {
        let (w, h) = (16usize, 8usize);
        let rgb: Vec<u8> = (0..w * h).flat_map(|_| [200u8, 40, 90]).collect();
        let jpeg = jpeg_of(w as u32, h as u32, image::ExtendedColorType::Rgb8, &rgb);
        let grey = jpeg_of(
            w as u32,
            h as u32,
            image::ExtendedColorType::L8,
            &vec![77u8; w * h],
        );
        let n = Negotiated {
            fourcc: Fourcc::MJPG,
            ..negotiated(Decode::Jpeg, w, h, 0)
        };
        let mut decoding = JpegDecoding::for_format(&n, None).expect("a JPEG format");
        let mut frame = Frame::with_capacity(w, h);
        let capacity = frame.rgb.capacity();
        let buffer = sys::Buffer::default();
        // posed's decoder, then zune-jpeg's (what a JPEG posed does not handle gets).
        for jpeg_decoding in [Some(&mut decoding), None] {
            let by_posed = jpeg_decoding.is_some();
            assert!(matches!(
                fill_frame(&n, &jpeg, &buffer, &mut frame, None, jpeg_decoding),
                Ok(Filled::Frame)
            ));
            assert_eq!(frame.rgb.len(), w * h * 3);
            assert_eq!(frame.rgb.capacity(), capacity);
            for px in frame.rgb.chunks_exact(3) {
                assert!(
                    px[0].abs_diff(200) <= 3 && px[1].abs_diff(40) <= 3 && px[2].abs_diff(90) <= 3,
                    "{px:?} (by posed: {by_posed})"
                );
            }
        }
        assert!(!decoding.fallback_logged, "posed's decoder took it");
        assert!(matches!(
            fill_frame(&n, &grey, &buffer, &mut frame, None, Some(&mut decoding)),
            Ok(Filled::Frame)
        ));
        assert!(frame.rgb.iter().all(|v| v.abs_diff(77) <= 1));
    }

    #[test]
    fn jpegs_posed_does_not_decode_fall_back_to_zune_jpeg() {
        let progressive = std::fs::read(
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("src/source/testdata/ycbv_progressive.jpg"),
        )
        .expect("fixture");
        let n = negotiated(Decode::Jpeg, 160, 120, 0);
        let mut decoding = JpegDecoding::for_format(&n, None).expect("a JPEG format");
        let mut frame = Frame::with_capacity(160, 120);
        for _ in 0..2 {
            assert!(matches!(
                fill_frame(
                    &n,
                    &progressive,
                    &sys::Buffer::default(),
                    &mut frame,
                    None,
                    Some(&mut decoding)
                ),
                Ok(Filled::Frame)
            ));
        }
        assert!(decoding.fallback_logged && decoding.zune_only);
        assert!(
            frame.rgb.iter().any(|&v| v != frame.rgb[0]),
            "an image, not a flat fill"
        );
        // Other formats have no decoder; a reopened camera at its size keeps its own.
        assert!(JpegDecoding::for_format(&negotiated(Decode::Yuyv, 160, 120, 320), None).is_none());
        let kept = JpegDecoding::for_format(&n, Some(decoding)).expect("kept");
        assert!(!kept.fallback_logged, "a reopened camera is judged afresh");
    }

    #[test]
    fn a_camera_whose_frames_only_zune_jpeg_takes_goes_to_zune_jpeg() {
        // Frames cut short, every one: posed's decoder refuses them as truncated, zune-jpeg
        // (as libjpeg) decodes them with the missing part grey. After 3 in a row, the
        // camera streams through zune-jpeg rather than not at all.
        let jpeg = std::fs::read(
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src/source/testdata/ycbv_422.jpg"),
        )
        .expect("fixture");
        let cut = &jpeg[..jpeg.len() - 2000];
        let n = negotiated(Decode::Jpeg, 640, 480, 0);
        let mut decoding = JpegDecoding::for_format(&n, None).expect("a JPEG format");
        let mut frame = Frame::with_capacity(640, 480);
        let buffer = sys::Buffer::default();
        let mut fill = |data: &[u8], decoding: &mut JpegDecoding| {
            fill_frame(&n, data, &buffer, &mut frame, None, Some(decoding))
        };
        for _ in 0..2 {
            assert!(matches!(
                fill(cut, &mut decoding),
                Ok(Filled::Skipped(Skip::Mjpeg(JpegFault::Corrupt(_))))
            ));
        }
        // A good frame in between starts the count again.
        assert!(matches!(fill(&jpeg, &mut decoding), Ok(Filled::Frame)));
        for _ in 0..2 {
            assert!(matches!(fill(cut, &mut decoding), Ok(Filled::Skipped(_))));
        }
        assert!(!decoding.zune_only);
        assert!(matches!(fill(cut, &mut decoding), Ok(Filled::Frame)));
        assert!(decoding.zune_only && decoding.fallback_logged);
        assert!(matches!(fill(cut, &mut decoding), Ok(Filled::Frame)));
        // Garbage stays garbage for both.
        assert!(matches!(
            fill(b"\xff\xd8\xff\xe0garbage", &mut decoding),
            Ok(Filled::Skipped(Skip::Jpeg(_)))
        ));
        let reopened = JpegDecoding::for_format(&n, Some(decoding)).expect("kept");
        assert!(!reopened.zune_only);
    }

    #[test]
    fn corrupt_mjpeg_frames_are_skipped_not_errors() {
        let (w, h) = (16usize, 8usize);
        let n = negotiated(Decode::Jpeg, w, h, 0);
        let mut decoding = JpegDecoding::for_format(&n, None).expect("a JPEG format");
        let mut frame = Frame::with_capacity(w, h);
        let buffer = sys::Buffer::default();
        for data in [&b""[..], b"\xff\xd8\xff\xe0garbage", &[0u8; 64]] {
            assert!(matches!(
                fill_frame(&n, data, &buffer, &mut frame, None, Some(&mut decoding)),
                Ok(Filled::Skipped(Skip::Mjpeg(JpegFault::Corrupt(_))))
            ));
            assert!(matches!(
                fill_frame(&n, data, &buffer, &mut frame, None, None),
                Ok(Filled::Skipped(Skip::Jpeg(_)))
            ));
        }
        let other_size = jpeg_of(8, 8, image::ExtendedColorType::L8, &[0u8; 64]);
        assert!(matches!(
            fill_frame(
                &n,
                &other_size,
                &buffer,
                &mut frame,
                None,
                Some(&mut decoding)
            ),
            Ok(Filled::Skipped(Skip::Mjpeg(JpegFault::Size {
                width: 8,
                height: 8
            })))
        ));
        assert!(matches!(
            fill_frame(&n, &other_size, &buffer, &mut frame, None, None),
            Ok(Filled::Skipped(Skip::JpegSize {
                width: 8,
                height: 8
            }))
        ));
        let flagged = sys::Buffer {
            flags: sys::BUF_FLAG_ERROR,
            ..Default::default()
        };
        assert!(matches!(
            fill_frame(&n, &[], &flagged, &mut frame, None, Some(&mut decoding)),
            Ok(Filled::Skipped(Skip::FlaggedError))
        ));
        assert!(!decoding.fallback_logged);
    }

    #[test]
    fn a_frame_too_small_for_the_image_is_an_error_not_a_reallocation() {
        let n = negotiated(Decode::Yuyv, 64, 48, 128);
        let mut frame = Frame::with_capacity(32, 24);
        let data = vec![128u8; 128 * 48];
        match fill_frame(&n, &data, &sys::Buffer::default(), &mut frame, None, None) {
            Err(Error::Invalid { reason, .. }) => assert!(reason.contains("allocate_frame")),
            _ => panic!("expected an error"),
        }
        assert_eq!(frame.rgb.capacity(), 32 * 24 * 3);
    }

    #[test]
    fn packed_frames_honour_the_stride_and_short_frames_are_skipped() {
        // 4x2 YUYV with 4 bytes of padding per row; the padding holds values that would show
        // if the stride were ignored.
        let (w, h, stride) = (4usize, 2usize, 12usize);
        let mut data = vec![255u8; stride * h];
        for row in 0..h {
            for x in 0..w / 2 {
                let at = row * stride + 4 * x;
                data[at..at + 4].copy_from_slice(&[81, 90, 81, 240]); // pure red in BT.601
            }
        }
        let n = negotiated(Decode::Yuyv, w, h, stride);
        let mut frame = Frame::with_capacity(w, h);
        assert!(matches!(
            fill_frame(&n, &data, &sys::Buffer::default(), &mut frame, None, None),
            Ok(Filled::Frame)
        ));
        for px in frame.rgb.chunks_exact(3) {
            assert!(px[0] > 200 && px[1] < 40 && px[2] < 40, "{px:?}");
        }
        assert!(matches!(
            fill_frame(
                &n,
                &data[..stride * (h - 1) + 2 * w - 1],
                &sys::Buffer::default(),
                &mut frame,
                None,
                None
            ),
            Ok(Filled::Skipped(Skip::Short { .. }))
        ));

        let nv12 = negotiated(Decode::Nv12, 4, 3, 8);
        assert_eq!(nv12.padded_frame_bytes(), 8 * (3 + 2));
        let rgb = negotiated(Decode::Rgb24, 4, 3, 12);
        let mut pixels = vec![0u8; 12 * 3];
        pixels[..3].copy_from_slice(&[1, 2, 3]);
        let mut frame = Frame::with_capacity(4, 3);
        assert!(matches!(
            fill_frame(
                &rgb,
                &pixels,
                &sys::Buffer::default(),
                &mut frame,
                None,
                None
            ),
            Ok(Filled::Frame)
        ));
        assert_eq!(&frame.rgb[..4], &[1, 2, 3, 0]);
    }

    #[test]
    fn the_source_can_move_to_the_capture_thread() {
        fn assert_send<T: Send>() {}
        assert_send::<V4l2Source>();
    }
}
