//! Frame sources of the daemon: a V4L2 camera ([`v4l2`]) or an image sequence
//! ([`sequence`]). A source fills a [`Frame`] the daemon allocated before the first frame,
//! so that capturing allocates nothing in steady state.
//!
//! The capture thread converts the camera's pixels (YUYV, NV12, RGB24, MJPEG) to 8-bit
//! RGB and hands the camera buffer back to the driver at once: on the CPU, or, with a
//! CUDA device, on the GPU reading the camera buffer in place (see [`v4l2`]). Then a
//! frame's RGB bytes live in host memory mapped into the GPU ([`RgbBuffer::mapped_into`]),
//! where the detector reads them on the CPU and the crops on the GPU, with no copy on a
//! Jetson.

pub mod jpeg;
pub mod sequence;
pub mod v4l2;

use std::ops::{Deref, DerefMut};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use posed_kernels::Intrinsics;

use crate::Result;

/// Host memory mapped into a CUDA device (posed-kernels' type).
#[cfg(feature = "cuda")]
pub use posed_kernels::cuda::MappedHostBuffer;

/// Without the `cuda` feature there is no mapped memory: a type with no values, so that
/// the code around it is the same in both builds.
#[cfg(not(feature = "cuda"))]
#[derive(Debug)]
pub enum MappedHostBuffer {}

/// The RGB bytes of a frame (`width * height * 3`, row-major), in a buffer allocated once
/// at the largest image's size: on the heap, or in host memory mapped into a CUDA device.
/// Dereferences to the current image's bytes.
pub struct RgbBuffer {
    storage: RgbStorage,
    len: usize,
}

enum RgbStorage {
    Heap(Vec<u8>),
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    Mapped(MappedHostBuffer),
}

impl std::fmt::Debug for RgbBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RgbBuffer")
            .field("len", &self.len)
            .field("capacity", &self.capacity())
            .field("mapped", &self.mapped_memory().is_some())
            .finish()
    }
}

impl RgbBuffer {
    /// Room for `capacity` bytes on the heap; empty.
    pub fn heap(capacity: usize) -> Self {
        Self {
            storage: RgbStorage::Heap(vec![0; capacity]),
            len: 0,
        }
    }

    /// Room for at least `capacity` bytes in host memory mapped into `device`; empty.
    ///
    /// # Errors
    /// CUDA errors allocating, locking or mapping the memory.
    #[cfg(feature = "cuda")]
    pub fn mapped_into(
        device: &posed_kernels::cuda::CudaDevice,
        capacity: usize,
    ) -> std::result::Result<Self, posed_kernels::KernelError> {
        Ok(Self {
            storage: RgbStorage::Mapped(MappedHostBuffer::new(device, capacity.max(1))?),
            len: 0,
        })
    }

    /// The most bytes an image may have.
    pub fn capacity(&self) -> usize {
        match &self.storage {
            RgbStorage::Heap(bytes) => bytes.len(),
            #[cfg(feature = "cuda")]
            RgbStorage::Mapped(buffer) => buffer.len(),
            #[cfg(not(feature = "cuda"))]
            RgbStorage::Mapped(never) => match *never {},
        }
    }

    /// Makes the image `len` bytes long and returns them to be written (they hold whatever
    /// the previous image left); `None`, changing nothing, when `len` exceeds the capacity.
    pub fn set_len(&mut self, len: usize) -> Option<&mut [u8]> {
        if len > self.capacity() {
            return None;
        }
        self.len = len;
        Some(&mut self.whole_mut()[..len])
    }

    /// The mapped memory holding the image, when it is mapped into a CUDA device.
    pub fn mapped_memory(&self) -> Option<&MappedHostBuffer> {
        match &self.storage {
            RgbStorage::Heap(_) => None,
            RgbStorage::Mapped(buffer) => Some(buffer),
        }
    }

    /// The mapped memory, for a kernel to write the image into (after
    /// [`RgbBuffer::set_len`]).
    pub fn mapped_memory_mut(&mut self) -> Option<&mut MappedHostBuffer> {
        match &mut self.storage {
            RgbStorage::Heap(_) => None,
            RgbStorage::Mapped(buffer) => Some(buffer),
        }
    }

    fn whole(&self) -> &[u8] {
        match &self.storage {
            RgbStorage::Heap(bytes) => bytes,
            #[cfg(feature = "cuda")]
            RgbStorage::Mapped(buffer) => buffer.as_slice(),
            #[cfg(not(feature = "cuda"))]
            RgbStorage::Mapped(never) => match *never {},
        }
    }

    fn whole_mut(&mut self) -> &mut [u8] {
        match &mut self.storage {
            RgbStorage::Heap(bytes) => bytes,
            #[cfg(feature = "cuda")]
            RgbStorage::Mapped(buffer) => buffer.as_mut_slice(),
            #[cfg(not(feature = "cuda"))]
            RgbStorage::Mapped(never) => match *never {},
        }
    }
}

impl Deref for RgbBuffer {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.whole()[..self.len]
    }
}

impl DerefMut for RgbBuffer {
    fn deref_mut(&mut self) -> &mut [u8] {
        let len = self.len;
        &mut self.whole_mut()[..len]
    }
}

/// One camera image on its way through the daemon. Allocated once, reused for every frame.
#[derive(Debug)]
pub struct Frame {
    /// Frame number, from 0, counted by the capture thread (dropped frames keep theirs).
    pub number: u64,
    /// When the image was captured, CLOCK_MONOTONIC nanoseconds (the driver's timestamp
    /// for a camera).
    pub t_capture_ns: u64,
    /// The same instant on the wall clock, nanoseconds since the Unix epoch.
    pub t_capture_wall_ns: u64,
    /// Time spent getting the image into `rgb` (dequeue, decode, convert), nanoseconds.
    pub capture_latency_ns: u64,
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// Intrinsics of this image.
    pub intrinsics: Intrinsics,
    /// `width * height * 3` bytes of 8-bit RGB, row-major (the buffer's capacity is the
    /// largest image the source produces; its length is this image's).
    pub rgb: RgbBuffer,
    /// For a BOP sequence: the (scene id, image id) of the image, so that its annotated
    /// boxes can stand in for detections.
    pub bop_image: Option<(u32, u32)>,
}

impl Frame {
    /// A frame with room for `width * height` RGB pixels, on the heap.
    pub fn with_capacity(width: usize, height: usize) -> Self {
        Self::with_buffer(RgbBuffer::heap(width * height * 3))
    }

    /// The image, for the detector and the pose loop.
    pub fn view(&self) -> crate::pipeline::ImageView<'_> {
        crate::pipeline::ImageView {
            rgb: &self.rgb,
            width: self.width,
            height: self.height,
            intrinsics: self.intrinsics,
            mapped: self.rgb.mapped_memory(),
        }
    }

    /// A frame whose RGB bytes go into `rgb`.
    pub fn with_buffer(rgb: RgbBuffer) -> Self {
        Self {
            number: 0,
            t_capture_ns: 0,
            t_capture_wall_ns: 0,
            capture_latency_ns: 0,
            width: 0,
            height: 0,
            intrinsics: Intrinsics::from_row_major(&[1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]),
            rgb,
            bop_image: None,
        }
    }
}

/// What a source is and produces, for the hello message and the logs.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceInfo {
    /// Device node or folder.
    pub name: String,
    /// Largest image width, pixels.
    pub width: usize,
    /// Largest image height, pixels.
    pub height: usize,
    /// Intrinsics of the first image (a camera's, or the sequence's first image's).
    pub intrinsics: Intrinsics,
    /// The negotiated format, as a short name (`YUYV`, `MJPG`, `NV12`, `RGB3`, `PNG`).
    pub format: String,
}

/// What [`FrameSource::capture`] produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Captured {
    /// `frame` holds a new image.
    Frame,
    /// The source has no more images (a sequence that does not loop).
    End,
}

/// A source of camera images.
pub trait FrameSource: Send {
    /// What the source is.
    fn info(&self) -> &SourceInfo;

    /// A frame this source can fill, for the daemon's pool (allocated before the first
    /// frame): room for the largest image, on the heap unless the source converts into
    /// memory mapped into a CUDA device.
    ///
    /// # Errors
    /// [`crate::Error::Kernel`] when mapped memory cannot be had.
    fn allocate_frame(&self) -> Result<Frame> {
        let info = self.info();
        Ok(Frame::with_capacity(info.width, info.height))
    }

    /// Waits for the next image and writes it into `frame` (everything but `number`).
    /// Must not allocate once running.
    ///
    /// # Errors
    /// [`crate::Error::Camera`] when the device fails or disappears: the daemon logs it and
    /// calls [`FrameSource::reopen`] with backoff. Other errors are final.
    fn capture(&mut self, frame: &mut Frame) -> Result<Captured>;

    /// Whether [`FrameSource::capture`] waits for the next image by itself (a camera, a
    /// sequence played at a rate). An unpaced source (a sequence played as fast as
    /// possible) is asked for a frame only when the pipeline waits for one: captured
    /// earlier, the frame would wait in the queue or be overtaken there, and the capture
    /// thread would spin.
    fn paced(&self) -> bool {
        true
    }

    /// Opens the device again after [`FrameSource::capture`] failed.
    ///
    /// # Errors
    /// [`crate::Error::Camera`] while the device is still away.
    fn reopen(&mut self) -> Result<()>;
}

/// A CUDA device (posed-kernels' type), for frames mapped into it and the loop on it.
#[cfg(feature = "cuda")]
pub type Cuda = posed_kernels::cuda::CudaDevice;
/// Without the `cuda` feature: no device, a type with no values, so that the code around
/// it is the same in both builds.
#[cfg(not(feature = "cuda"))]
#[derive(Debug)]
pub enum Cuda {}

/// A frame for images up to `info`'s size: in memory mapped into `cuda` when one is given
/// and that memory can be had, else (with a warning) on the heap.
pub(crate) fn frame_for(cuda: Option<&Cuda>, info: &SourceInfo) -> Frame {
    let (width, height) = (info.width, info.height);
    #[cfg(feature = "cuda")]
    if let Some(device) = cuda {
        match RgbBuffer::mapped_into(device, width * height * 3) {
            Ok(rgb) => return Frame::with_buffer(rgb),
            Err(e) => tracing::warn!(
                "{}: a frame in memory mapped into the GPU: {e}; on the heap instead",
                info.name
            ),
        }
    }
    #[cfg(not(feature = "cuda"))]
    if let Some(never) = cuda {
        match *never {}
    }
    Frame::with_capacity(width, height)
}

/// Now on CLOCK_MONOTONIC, nanoseconds.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

/// Now on the wall clock, nanoseconds since the Unix epoch (0 before 1970).
pub fn wall_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_nanos() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_rgb_buffer_takes_images_up_to_its_capacity_without_reallocating() {
        let mut rgb = RgbBuffer::heap(12);
        assert_eq!((rgb.len(), rgb.capacity()), (0, 12));
        assert!(rgb.mapped_memory().is_none());
        let before = rgb.whole().as_ptr();
        rgb.set_len(6)
            .expect("fits")
            .copy_from_slice(&[1, 2, 3, 4, 5, 6]);
        assert_eq!(&rgb[..], &[1, 2, 3, 4, 5, 6]);
        rgb.set_len(12).expect("fits")[6..].fill(9);
        assert_eq!(rgb.len(), 12);
        assert_eq!(&rgb[..7], &[1, 2, 3, 4, 5, 6, 9]);
        // Too large: refused, nothing changed.
        assert!(rgb.set_len(13).is_none());
        assert_eq!(rgb.len(), 12);
        rgb.set_len(3).expect("fits");
        assert_eq!(&rgb[..], &[1, 2, 3]);
        rgb[0] = 7;
        assert_eq!(&rgb[..], &[7, 2, 3]);
        assert_eq!(rgb.whole().as_ptr(), before);
    }

    #[test]
    fn a_frame_on_the_heap_has_room_for_its_largest_image() {
        let frame = Frame::with_capacity(4, 3);
        assert_eq!(frame.rgb.capacity(), 36);
        assert!(frame.rgb.is_empty());
        assert!(frame.rgb.mapped_memory().is_none());
    }
}
