//! Host memory the GPU reads and writes in place: [`MappedHostBuffer`].
//!
//! On a Jetson the GPU and the CPU share one DRAM, so a camera buffer the GPU can address
//! needs no copy at all: the driver writes the frame, a kernel reads it where it lies.
//! Such memory is ordinary page-aligned host memory, page-locked and mapped into the
//! device's address space with `cuMemHostRegister(DEVICEMAP | PORTABLE)`.
//!
//! Registered (rather than `cuMemHostAlloc`ated) because the memory is also lent to V4L2
//! as USERPTR buffers: the kernel's `get_user_pages` accepts ordinary anonymous pages,
//! whereas `cuMemHostAlloc` memory on a discrete GPU is a driver mapping V4L2 refuses.
//! On a discrete GPU the same buffer still works (the GPU reads it over PCIe); whether
//! reading in place beats one upload depends on how often each byte is read, which is why
//! [`CudaDevice::integrated`] is there for callers to decide.

use std::alloc::Layout;
use std::ffi::c_void;
use std::ptr::NonNull;
use std::sync::Arc;

use cudarc::driver::{sys as driver_sys, CudaContext};

use super::{driver_error, guarded, CudaDevice};
use crate::KernelError;

/// `len` bytes of page-locked host memory mapped into one GPU's address space, zeroed at
/// creation. The CPU reads and writes it through [`MappedHostBuffer::as_slice`] /
/// [`MappedHostBuffer::as_mut_slice`]; kernels through [`MappedHostBuffer::device_ptr`].
///
/// Nothing orders the two: a kernel writing the buffer must be synchronised before the CPU
/// reads it, and the CPU must not write it while a kernel reads it. The sessions of this
/// crate that take one synchronise their stream before they return.
pub struct MappedHostBuffer {
    context: Arc<CudaContext>,
    host: NonNull<u8>,
    len: usize,
    layout: Layout,
    device_ptr: u64,
}

// SAFETY: the buffer is a plain address range owned by this value (the CUDA context
// handle is itself Send + Sync); nothing about it is tied to the creating thread.
unsafe impl Send for MappedHostBuffer {}
// SAFETY: shared access only hands out `&[u8]` and the device address; writing needs
// `&mut self`.
unsafe impl Sync for MappedHostBuffer {}

impl std::fmt::Debug for MappedHostBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MappedHostBuffer")
            .field("len", &self.len)
            .field("ordinal", &self.context.ordinal())
            .finish()
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
        n if n > 0 => n as usize,
        _ => 4096,
    }
}

impl MappedHostBuffer {
    /// Allocates `len` zeroed bytes (rounded up to whole pages, page-aligned) and maps
    /// them into `device`'s address space.
    ///
    /// # Errors
    /// [`KernelError::InvalidValue`] for `len == 0`; [`KernelError::CudaDriver`] when
    /// the memory cannot be allocated, locked or mapped (`ulimit -l` applies to page-locked memory); [`KernelError::CudaUnavailable`]
    /// without a driver.
    pub fn new(device: &CudaDevice, len: usize) -> Result<Self, KernelError> {
        if len == 0 {
            return Err(KernelError::InvalidValue {
                what: "mapped host buffer length",
                reason: "must be at least 1 byte",
            });
        }
        let page = page_size();
        let size = len
            .checked_next_multiple_of(page)
            .ok_or(KernelError::LimitExceeded {
                what: "mapped host buffer length (bytes)",
                limit: usize::MAX - page,
                found: len,
            })?;
        let layout =
            Layout::from_size_align(size, page).map_err(|_| KernelError::LimitExceeded {
                what: "mapped host buffer length (bytes)",
                limit: isize::MAX as usize - page,
                found: len,
            })?;
        // Zeroed: the bytes are handed out as `&[u8]` and must be initialised even where
        // a camera or kernel never writes them.
        // SAFETY: `layout` has a non-zero size.
        let host = NonNull::new(unsafe { std::alloc::alloc_zeroed(layout) }).ok_or(
            KernelError::CudaDriver {
                call: "alloc_zeroed",
                message: format!("out of host memory for a {size}-byte mapped buffer"),
            },
        )?;
        let context = Arc::clone(device.context());
        let registered = guarded("mapping host memory into the GPU", || {
            context
                .bind_to_thread()
                .map_err(driver_error("cuCtxSetCurrent"))?;
            let flags =
                driver_sys::CU_MEMHOSTREGISTER_PORTABLE | driver_sys::CU_MEMHOSTREGISTER_DEVICEMAP;
            // SAFETY: `host` is `size` bytes this function allocated and owns; they stay
            // allocated until `Drop`, which unregisters them first.
            unsafe { driver_sys::cuMemHostRegister_v2(host.as_ptr().cast(), size, flags) }
                .result()
                .map_err(driver_error("cuMemHostRegister"))?;
            let mut device_ptr: driver_sys::CUdeviceptr = 0;
            // SAFETY: `host` was registered with DEVICEMAP just above; `device_ptr` is a
            // valid place for the result; the flags argument must be 0.
            let mapped = unsafe {
                driver_sys::cuMemHostGetDevicePointer_v2(
                    &mut device_ptr,
                    host.as_ptr().cast::<c_void>(),
                    0,
                )
            }
            .result()
            .map_err(driver_error("cuMemHostGetDevicePointer"));
            if let Err(error) = mapped {
                // SAFETY: registered above and not used since.
                let _ = unsafe { driver_sys::cuMemHostUnregister(host.as_ptr().cast()) };
                return Err(error);
            }
            Ok(device_ptr)
        });
        match registered {
            Ok(device_ptr) => Ok(Self {
                context,
                host,
                len: size,
                layout,
                device_ptr,
            }),
            Err(error) => {
                // SAFETY: allocated above with `layout`, not registered (or unregistered).
                unsafe { std::alloc::dealloc(host.as_ptr(), layout) };
                Err(error)
            }
        }
    }

    /// Bytes in the buffer (the requested length rounded up to whole pages).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Never true: a buffer has at least one page.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The buffer's address on the host (page-aligned), for handing to a driver (V4L2
    /// USERPTR).
    pub fn host_ptr(&self) -> *mut u8 {
        self.host.as_ptr()
    }

    /// The buffer's address in the GPU's address space, for a kernel argument.
    pub fn device_ptr(&self) -> u64 {
        self.device_ptr
    }

    /// The ordinal of the GPU it is mapped into.
    pub fn ordinal(&self) -> usize {
        self.context.ordinal()
    }

    /// The whole buffer, for the CPU.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `len` initialised (zeroed) bytes owned by `self`; GPU writes are
        // ordered before CPU reads by the callers' stream synchronisation.
        unsafe { std::slice::from_raw_parts(self.host.as_ptr(), self.len) }
    }

    /// The whole buffer, for the CPU to write.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as `as_slice`, and `&mut self` makes this the only reference.
        unsafe { std::slice::from_raw_parts_mut(self.host.as_ptr(), self.len) }
    }

    /// The device address of `part`, which must lie inside this buffer (a frame the
    /// camera wrote at the start of it, say): `None` otherwise.
    pub fn device_ptr_of(&self, part: &[u8]) -> Option<u64> {
        let start = self.host.as_ptr() as usize;
        let part_start = part.as_ptr() as usize;
        let offset = part_start.checked_sub(start)?;
        if offset.checked_add(part.len())? > self.len {
            return None;
        }
        Some(self.device_ptr + offset as u64)
    }
}

impl Drop for MappedHostBuffer {
    fn drop(&mut self) {
        // Errors are ignored: the memory is freed either way, and a driver that fails to
        // unregister has lost the context, with it the mapping.
        let _ = guarded("unmapping host memory from the GPU", || {
            let _ = self.context.bind_to_thread();
            // SAFETY: registered in `new`; no kernel uses it any more (the sessions that
            // read it synchronise before returning, and the buffer is not borrowed).
            let _ = unsafe { driver_sys::cuMemHostUnregister(self.host.as_ptr().cast()) };
            Ok(())
        });
        // SAFETY: allocated in `new` with `self.layout`.
        unsafe { std::alloc::dealloc(self.host.as_ptr(), self.layout) };
    }
}
