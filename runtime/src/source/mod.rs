//! Frame sources of the daemon: a V4L2 camera ([`v4l2`]) or an image sequence
//! ([`sequence`]). A source fills a [`Frame`] the daemon allocated before the first frame,
//! so that capturing allocates nothing in steady state.
//!
//! The CPU path converts the camera's pixels (YUYV, NV12, RGB24, MJPEG) to 8-bit RGB in
//! the capture thread and hands the camera buffer back to the driver at once.

pub mod sequence;
pub mod v4l2;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use posed_kernels::Intrinsics;

use crate::Result;

/// One camera image on its way through the daemon. Allocated once, reused for every frame.
#[derive(Debug, Clone)]
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
    /// `width * height * 3` bytes of 8-bit RGB, row-major (the vector's capacity is the
    /// largest image the source produces; its length is this image's).
    pub rgb: Vec<u8>,
    /// For a BOP sequence: the (scene id, image id) of the image, so that its annotated
    /// boxes can stand in for detections.
    pub bop_image: Option<(u32, u32)>,
}

impl Frame {
    /// A frame with room for `width * height` RGB pixels.
    pub fn with_capacity(width: usize, height: usize) -> Self {
        Self {
            number: 0,
            t_capture_ns: 0,
            t_capture_wall_ns: 0,
            capture_latency_ns: 0,
            width: 0,
            height: 0,
            intrinsics: Intrinsics::from_row_major(&[1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]),
            rgb: Vec::with_capacity(width * height * 3),
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

    /// Waits for the next image and writes it into `frame` (everything but `number`).
    /// Must not allocate once running.
    ///
    /// # Errors
    /// [`crate::Error::Camera`] when the device fails or disappears: the daemon logs it and
    /// calls [`FrameSource::reopen`] with backoff. Other errors are final.
    fn capture(&mut self, frame: &mut Frame) -> Result<Captured>;

    /// Opens the device again after [`FrameSource::capture`] failed.
    ///
    /// # Errors
    /// [`crate::Error::Camera`] while the device is still away.
    fn reopen(&mut self) -> Result<()>;
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
