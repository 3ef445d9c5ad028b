//! The few parts of the kernel's V4L2 ABI (`linux/videodev2.h`) that capture needs, written
//! by hand over `libc::ioctl`.
//!
//! Why not a crate: `v4l` 0.14 (through `v4l2-sys-mit`) and `v4l2r` 0.0.8 both run bindgen
//! in their build scripts, so every build, the aarch64 cross build included, needs libclang
//! and the target's kernel headers, and `v4l`'s USERPTR stream allocates its own buffers,
//! where posed must lend the driver memory it allocated itself (CUDA-mapped pinned memory
//! on a Jetson). Capture needs eleven structs and thirteen ioctls; they are written out
//! here with their sizes and field offsets asserted against the kernel ABI (checked with
//! the 6.1 headers for x86_64 and aarch64, where the layouts are identical: both LP64,
//! 64-bit `time_t`).
//!
//! Only what posed reads is named; the rest of each struct is `reserved` padding that keeps
//! the layout. Every struct is plain old data: all-zero bytes are a valid value, which is
//! how the kernel expects requests to be initialised.

use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd, BorrowedFd};

/// `V4L2_CAP_VIDEO_CAPTURE`: single-planar video capture.
pub const CAP_VIDEO_CAPTURE: u32 = 0x0000_0001;
/// `V4L2_CAP_VIDEO_CAPTURE_MPLANE`: multi-planar capture (not read by posed).
pub const CAP_VIDEO_CAPTURE_MPLANE: u32 = 0x0000_1000;
/// `V4L2_CAP_READWRITE`.
pub const CAP_READWRITE: u32 = 0x0100_0000;
/// `V4L2_CAP_STREAMING`: MMAP / USERPTR / DMABUF streaming.
pub const CAP_STREAMING: u32 = 0x0400_0000;
/// `V4L2_CAP_DEVICE_CAPS`: `device_caps` is filled in (it describes this node; `capabilities`
/// describes the whole physical device).
pub const CAP_DEVICE_CAPS: u32 = 0x8000_0000;
/// `V4L2_CAP_TIMEPERFRAME`: the frame rate can be set with `VIDIOC_S_PARM`.
pub const CAP_TIMEPERFRAME: u32 = 0x1000;

/// `V4L2_BUF_TYPE_VIDEO_CAPTURE`.
pub const BUF_TYPE_VIDEO_CAPTURE: u32 = 1;
/// `V4L2_MEMORY_MMAP`.
pub const MEMORY_MMAP: u32 = 1;
/// `V4L2_MEMORY_USERPTR`.
pub const MEMORY_USERPTR: u32 = 2;
/// `V4L2_FIELD_NONE`: progressive frames.
pub const FIELD_NONE: u32 = 1;

/// `V4L2_BUF_FLAG_ERROR`: the buffer was dequeued but its data may be corrupt.
pub const BUF_FLAG_ERROR: u32 = 0x0000_0040;
/// `V4L2_BUF_FLAG_TIMESTAMP_MASK`.
pub const BUF_FLAG_TIMESTAMP_MASK: u32 = 0x0000_e000;
/// `V4L2_BUF_FLAG_TIMESTAMP_MONOTONIC`: `timestamp` is on CLOCK_MONOTONIC.
pub const BUF_FLAG_TIMESTAMP_MONOTONIC: u32 = 0x0000_2000;

/// `V4L2_FRMSIZE_TYPE_DISCRETE`.
pub const FRMSIZE_TYPE_DISCRETE: u32 = 1;
/// `V4L2_FRMSIZE_TYPE_CONTINUOUS`.
pub const FRMSIZE_TYPE_CONTINUOUS: u32 = 2;
/// `V4L2_FRMSIZE_TYPE_STEPWISE`.
pub const FRMSIZE_TYPE_STEPWISE: u32 = 3;
/// `V4L2_FRMIVAL_TYPE_DISCRETE`.
pub const FRMIVAL_TYPE_DISCRETE: u32 = 1;

/// `struct v4l2_capability` (`VIDIOC_QUERYCAP`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct Capability {
    /// Driver name, NUL-terminated.
    pub driver: [u8; 16],
    /// Device name, NUL-terminated.
    pub card: [u8; 32],
    /// Bus location, NUL-terminated.
    pub bus_info: [u8; 32],
    /// `KERNEL_VERSION` of the driver.
    pub version: u32,
    /// Capabilities of the physical device.
    pub capabilities: u32,
    /// Capabilities of this node (valid with [`CAP_DEVICE_CAPS`]).
    pub device_caps: u32,
    /// Reserved by the kernel (zero).
    pub reserved: [u32; 3],
}

impl Capability {
    /// The capabilities of this node: `device_caps` where the driver fills it in.
    pub fn node_caps(&self) -> u32 {
        if self.capabilities & CAP_DEVICE_CAPS != 0 {
            self.device_caps
        } else {
            self.capabilities
        }
    }
}

/// `struct v4l2_fmtdesc` (`VIDIOC_ENUM_FMT`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct FmtDesc {
    /// Which format, from 0.
    pub index: u32,
    /// Buffer type ([`BUF_TYPE_VIDEO_CAPTURE`]).
    pub type_: u32,
    /// `V4L2_FMT_FLAG_*`.
    pub flags: u32,
    /// Human-readable name, NUL-terminated.
    pub description: [u8; 32],
    /// The fourcc.
    pub pixelformat: u32,
    /// Reserved by the kernel (zero).
    pub reserved: [u32; 4],
}

/// `struct v4l2_pix_format`: one single-planar image format.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct PixFormat {
    /// Width, pixels.
    pub width: u32,
    /// Height, pixels.
    pub height: u32,
    /// The fourcc.
    pub pixelformat: u32,
    /// `enum v4l2_field`.
    pub field: u32,
    /// Bytes from one row to the next (of the first plane for NV12); 0 for compressed
    /// formats.
    pub bytesperline: u32,
    /// Bytes a buffer must hold.
    pub sizeimage: u32,
    /// Reserved by the kernel (zero).
    pub reserved: [u32; 6],
}

/// The union `v4l2_format.fmt`: 200 bytes, aligned as its pointer-holding member
/// (`struct v4l2_window`), so that `fmt` starts at offset 8 on LP64.
#[repr(C)]
#[derive(Clone, Copy)]
pub union FormatUnion {
    /// `fmt.pix`, for [`BUF_TYPE_VIDEO_CAPTURE`].
    pub pix: PixFormat,
    /// The union's other members, as bytes.
    pub raw: [u8; 200],
    /// Gives the union the 8-byte alignment of `struct v4l2_window`'s pointers.
    pub align: [u64; 25],
}

/// `struct v4l2_format` (`VIDIOC_G_FMT` / `VIDIOC_S_FMT`).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Format {
    /// Buffer type ([`BUF_TYPE_VIDEO_CAPTURE`]).
    pub type_: u32,
    /// The format; `pix` for single-planar capture.
    pub fmt: FormatUnion,
}

impl Default for Format {
    fn default() -> Self {
        Self {
            type_: 0,
            fmt: FormatUnion { align: [0; 25] },
        }
    }
}

impl Format {
    /// `fmt.pix`.
    pub fn pix(&self) -> PixFormat {
        // SAFETY: every member of the union is plain old data of at least 48 bytes
        // initialised (the union is built zeroed or filled by the kernel), so reading the
        // `pix` member is reading initialised integers.
        unsafe { self.fmt.pix }
    }
}

/// `struct v4l2_requestbuffers` (`VIDIOC_REQBUFS`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestBuffers {
    /// Buffers asked for; the driver writes how many it allocated.
    pub count: u32,
    /// Buffer type.
    pub type_: u32,
    /// `V4L2_MEMORY_*`.
    pub memory: u32,
    /// `V4L2_BUF_CAP_*` (kernel 5.0 and later; 0 before).
    pub capabilities: u32,
    /// `V4L2_MEMORY_FLAG_*`.
    pub flags: u8,
    /// Reserved by the kernel (zero).
    pub reserved: [u8; 3],
}

/// `struct timeval` as the 64-bit kernel ABI has it (two `long`s on LP64).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct Timeval {
    /// Seconds.
    pub tv_sec: i64,
    /// Microseconds.
    pub tv_usec: i64,
}

/// `struct v4l2_timecode` (not read).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct Timecode {
    /// Reserved by the kernel (zero).
    pub reserved: [u32; 4],
}

/// `struct v4l2_buffer` (`VIDIOC_QUERYBUF`, `VIDIOC_QBUF`, `VIDIOC_DQBUF`) for
/// single-planar buffers. The union `m` is an `unsigned long` here: `offset` (MMAP, the low
/// 32 bits on little-endian) or `userptr` (USERPTR).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct Buffer {
    /// Which buffer.
    pub index: u32,
    /// Buffer type.
    pub type_: u32,
    /// Bytes of image data in the buffer.
    pub bytesused: u32,
    /// `V4L2_BUF_FLAG_*`.
    pub flags: u32,
    /// `enum v4l2_field`.
    pub field: u32,
    /// When the first byte was captured (see [`BUF_FLAG_TIMESTAMP_MASK`]).
    pub timestamp: Timeval,
    /// Not read.
    pub timecode: Timecode,
    /// Frame counter of the driver (gaps are dropped frames).
    pub sequence: u32,
    /// `V4L2_MEMORY_*`.
    pub memory: u32,
    /// `m.offset` (MMAP: pass to `mmap`) or `m.userptr` (USERPTR: the buffer's address).
    pub m: u64,
    /// Size of the buffer, bytes.
    pub length: u32,
    /// Reserved by the kernel (zero).
    pub reserved2: u32,
    /// Reserved by the kernel (zero).
    pub request_fd: i32,
}

/// `struct v4l2_fract`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Fract {
    /// Numerator.
    pub numerator: u32,
    /// Denominator.
    pub denominator: u32,
}

/// `struct v4l2_captureparm`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct CaptureParm {
    /// [`CAP_TIMEPERFRAME`] when the frame rate can be set.
    pub capability: u32,
    /// `V4L2_MODE_*`.
    pub capturemode: u32,
    /// Seconds per frame.
    pub timeperframe: Fract,
    /// Driver-specific.
    pub extendedmode: u32,
    /// Read / write I/O only.
    pub readbuffers: u32,
    /// Reserved by the kernel (zero).
    pub reserved: [u32; 4],
}

/// The union `v4l2_streamparm.parm` (200 bytes, 4-aligned).
#[repr(C)]
#[derive(Clone, Copy)]
pub union StreamParmUnion {
    /// `parm.capture`.
    pub capture: CaptureParm,
    /// The union's other members, as bytes.
    pub raw: [u8; 200],
}

/// `struct v4l2_streamparm` (`VIDIOC_G_PARM` / `VIDIOC_S_PARM`).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct StreamParm {
    /// Buffer type.
    pub type_: u32,
    /// The parameters; `capture` for capture.
    pub parm: StreamParmUnion,
}

impl Default for StreamParm {
    fn default() -> Self {
        Self {
            type_: 0,
            parm: StreamParmUnion { raw: [0; 200] },
        }
    }
}

impl StreamParm {
    /// `parm.capture`.
    pub fn capture(&self) -> CaptureParm {
        // SAFETY: both members are plain old data and the union is built zeroed or filled
        // by the kernel, so the `capture` member's bytes are initialised integers.
        unsafe { self.parm.capture }
    }
}

/// `struct v4l2_frmsizeenum` (`VIDIOC_ENUM_FRAMESIZES`). The union holds `discrete`
/// (`width`, `height`) or `stepwise` (min / max / step of width, then of height); both are
/// read as the six words of `size`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct FrmSizeEnum {
    /// Which size, from 0.
    pub index: u32,
    /// The fourcc asked about.
    pub pixel_format: u32,
    /// `V4L2_FRMSIZE_TYPE_*`.
    pub type_: u32,
    /// Discrete: `[width, height, ..]`; stepwise / continuous:
    /// `[min_width, max_width, step_width, min_height, max_height, step_height]`.
    pub size: [u32; 6],
    /// Reserved by the kernel (zero).
    pub reserved: [u32; 2],
}

/// `struct v4l2_frmivalenum` (`VIDIOC_ENUM_FRAMEINTERVALS`). The union holds `discrete`
/// (one fraction) or `stepwise` (min, max, step fractions).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct FrmIvalEnum {
    /// Which interval, from 0.
    pub index: u32,
    /// The fourcc asked about.
    pub pixel_format: u32,
    /// Width asked about.
    pub width: u32,
    /// Height asked about.
    pub height: u32,
    /// `V4L2_FRMIVAL_TYPE_*`.
    pub type_: u32,
    /// Discrete: `[interval, ..]`; stepwise: `[min, max, step]`.
    pub interval: [Fract; 3],
    /// Reserved by the kernel (zero).
    pub reserved: [u32; 2],
}

// The kernel ABI of both LP64 targets (x86_64, aarch64), from the 6.1 headers.
const _: () = {
    assert!(size_of::<Capability>() == 104);
    assert!(size_of::<FmtDesc>() == 64);
    assert!(size_of::<PixFormat>() == 48);
    assert!(size_of::<Format>() == 208);
    assert!(size_of::<RequestBuffers>() == 20);
    assert!(size_of::<Timecode>() == 16);
    assert!(size_of::<Buffer>() == 88);
    assert!(size_of::<CaptureParm>() == 40);
    assert!(size_of::<StreamParm>() == 204);
    assert!(size_of::<FrmSizeEnum>() == 44);
    assert!(size_of::<FrmIvalEnum>() == 52);
};

const IOC_WRITE: u32 = 1;
const IOC_READ: u32 = 2;

/// `_IOC(dir, 'V', nr, size)` in the generic encoding x86_64 and arm64 share.
const fn ioc(dir: u32, nr: u32, size: usize) -> u32 {
    (dir << 30) | ((size as u32) << 16) | ((b'V' as u32) << 8) | nr
}

/// `VIDIOC_QUERYCAP`.
pub const VIDIOC_QUERYCAP: u32 = ioc(IOC_READ, 0, size_of::<Capability>());
/// `VIDIOC_ENUM_FMT`.
pub const VIDIOC_ENUM_FMT: u32 = ioc(IOC_READ | IOC_WRITE, 2, size_of::<FmtDesc>());
/// `VIDIOC_S_FMT`.
pub const VIDIOC_S_FMT: u32 = ioc(IOC_READ | IOC_WRITE, 5, size_of::<Format>());
/// `VIDIOC_REQBUFS`.
pub const VIDIOC_REQBUFS: u32 = ioc(IOC_READ | IOC_WRITE, 8, size_of::<RequestBuffers>());
/// `VIDIOC_QUERYBUF`.
pub const VIDIOC_QUERYBUF: u32 = ioc(IOC_READ | IOC_WRITE, 9, size_of::<Buffer>());
/// `VIDIOC_QBUF`.
pub const VIDIOC_QBUF: u32 = ioc(IOC_READ | IOC_WRITE, 15, size_of::<Buffer>());
/// `VIDIOC_DQBUF`.
pub const VIDIOC_DQBUF: u32 = ioc(IOC_READ | IOC_WRITE, 17, size_of::<Buffer>());
/// `VIDIOC_STREAMON`.
pub const VIDIOC_STREAMON: u32 = ioc(IOC_WRITE, 18, size_of::<i32>());
/// `VIDIOC_STREAMOFF`.
pub const VIDIOC_STREAMOFF: u32 = ioc(IOC_WRITE, 19, size_of::<i32>());
/// `VIDIOC_G_PARM`.
pub const VIDIOC_G_PARM: u32 = ioc(IOC_READ | IOC_WRITE, 21, size_of::<StreamParm>());
/// `VIDIOC_S_PARM`.
pub const VIDIOC_S_PARM: u32 = ioc(IOC_READ | IOC_WRITE, 22, size_of::<StreamParm>());
/// `VIDIOC_ENUM_FRAMESIZES`.
pub const VIDIOC_ENUM_FRAMESIZES: u32 = ioc(IOC_READ | IOC_WRITE, 74, size_of::<FrmSizeEnum>());
/// `VIDIOC_ENUM_FRAMEINTERVALS`.
pub const VIDIOC_ENUM_FRAMEINTERVALS: u32 = ioc(IOC_READ | IOC_WRITE, 75, size_of::<FrmIvalEnum>());

/// Marks the argument types of the ioctls above, so that [`ioctl`] can only pass a request
/// the struct it was encoded for.
///
/// # Safety
/// Implemented only for the `repr(C)` structs of this module, whose layouts are asserted
/// against the kernel's; all-zero bytes and any bytes the kernel writes are valid values.
pub unsafe trait IoctlArg {}
// SAFETY: each is a `repr(C)` struct of integers (and unions of them) with the layout
// asserted above.
unsafe impl IoctlArg for Capability {}
// SAFETY: as above.
unsafe impl IoctlArg for FmtDesc {}
// SAFETY: as above.
unsafe impl IoctlArg for Format {}
// SAFETY: as above.
unsafe impl IoctlArg for RequestBuffers {}
// SAFETY: as above.
unsafe impl IoctlArg for Buffer {}
// SAFETY: as above.
unsafe impl IoctlArg for StreamParm {}
// SAFETY: as above.
unsafe impl IoctlArg for FrmSizeEnum {}
// SAFETY: as above.
unsafe impl IoctlArg for FrmIvalEnum {}
// SAFETY: `int`, for STREAMON / STREAMOFF.
unsafe impl IoctlArg for i32 {}

/// Runs `request` on `fd` with `arg`, retrying when a signal interrupts it.
///
/// # Safety
/// `request` must be one of the `VIDIOC_*` constants of this module whose encoded size is
/// `size_of::<T>()` and whose argument is a `T` (the type is checked below at run time in
/// debug builds through the size bits). For `VIDIOC_QBUF` with [`MEMORY_USERPTR`], `arg.m`
/// must point to `arg.length` bytes that stay allocated until the buffer is dequeued or
/// streaming stops.
pub unsafe fn ioctl<T: IoctlArg>(fd: BorrowedFd<'_>, request: u32, arg: &mut T) -> io::Result<()> {
    debug_assert_eq!(((request >> 16) & 0x3fff) as usize, size_of::<T>());
    loop {
        // SAFETY: `arg` is a live, exclusive `T` of the size the request encodes (the
        // caller's contract); the kernel reads and writes only those bytes. The request
        // type differs between libc flavours (`c_ulong` on glibc, `c_int` on musl); the
        // value fits either.
        let rc = unsafe {
            libc::ioctl(
                fd.as_raw_fd(),
                request as _,
                arg as *mut T as *mut libc::c_void,
            )
        };
        if rc != -1 {
            return Ok(());
        }
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
}

/// The text of a NUL-terminated fixed-size field.
pub fn c_str(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use std::mem::offset_of;

    use super::*;

    /// Field offsets of the 6.1 headers on x86_64 and aarch64 (printed by a C program with
    /// `offsetof`; identical on both).
    #[test]
    fn layouts_match_the_kernel_abi() {
        assert_eq!(offset_of!(Capability, capabilities), 84);
        assert_eq!(offset_of!(Capability, device_caps), 88);
        assert_eq!(offset_of!(FmtDesc, description), 12);
        assert_eq!(offset_of!(FmtDesc, pixelformat), 44);
        assert_eq!(offset_of!(Format, fmt), 8);
        assert_eq!(offset_of!(PixFormat, bytesperline), 16);
        assert_eq!(offset_of!(PixFormat, sizeimage), 20);
        assert_eq!(offset_of!(RequestBuffers, capabilities), 12);
        assert_eq!(offset_of!(RequestBuffers, flags), 16);
        assert_eq!(offset_of!(Buffer, field), 16);
        assert_eq!(offset_of!(Buffer, timestamp), 24);
        assert_eq!(offset_of!(Buffer, timecode), 40);
        assert_eq!(offset_of!(Buffer, sequence), 56);
        assert_eq!(offset_of!(Buffer, memory), 60);
        assert_eq!(offset_of!(Buffer, m), 64);
        assert_eq!(offset_of!(Buffer, length), 72);
        assert_eq!(offset_of!(Buffer, reserved2), 76);
        assert_eq!(offset_of!(Buffer, request_fd), 80);
        assert_eq!(offset_of!(StreamParm, parm), 4);
        assert_eq!(offset_of!(CaptureParm, timeperframe), 8);
        assert_eq!(offset_of!(CaptureParm, readbuffers), 20);
        assert_eq!(offset_of!(FrmSizeEnum, type_), 8);
        assert_eq!(offset_of!(FrmSizeEnum, size), 12);
        assert_eq!(offset_of!(FrmSizeEnum, reserved), 36);
        assert_eq!(offset_of!(FrmIvalEnum, type_), 16);
        assert_eq!(offset_of!(FrmIvalEnum, interval), 20);
        assert_eq!(offset_of!(FrmIvalEnum, reserved), 44);
        assert_eq!(std::mem::align_of::<Format>(), 8);
    }

    /// The request numbers the kernel headers define, on both targets.
    #[test]
    fn request_numbers_match_the_kernel_headers() {
        assert_eq!(VIDIOC_QUERYCAP, 0x8068_5600);
        assert_eq!(VIDIOC_ENUM_FMT, 0xc040_5602);
        assert_eq!(VIDIOC_S_FMT, 0xc0d0_5605);
        assert_eq!(VIDIOC_REQBUFS, 0xc014_5608);
        assert_eq!(VIDIOC_QUERYBUF, 0xc058_5609);
        assert_eq!(VIDIOC_QBUF, 0xc058_560f);
        assert_eq!(VIDIOC_DQBUF, 0xc058_5611);
        assert_eq!(VIDIOC_STREAMON, 0x4004_5612);
        assert_eq!(VIDIOC_STREAMOFF, 0x4004_5613);
        assert_eq!(VIDIOC_G_PARM, 0xc0cc_5615);
        assert_eq!(VIDIOC_S_PARM, 0xc0cc_5616);
        assert_eq!(VIDIOC_ENUM_FRAMESIZES, 0xc02c_564a);
        assert_eq!(VIDIOC_ENUM_FRAMEINTERVALS, 0xc034_564b);
    }

    #[test]
    fn c_strings_stop_at_the_first_nul() {
        assert_eq!(c_str(b"uvcvideo\0\0\0junk"), "uvcvideo");
        assert_eq!(c_str(b"full"), "full");
    }
}
