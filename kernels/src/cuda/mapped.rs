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
//! [`CudaDevice::integrated`] is there for callers to decide. Where the GPU cannot map
//! host memory ([`CudaDevice::maps_host_memory`]), [`MappedHostBuffer::new`] says so and
//! callers fall back to ordinary memory and copies.

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
/// crate that take one synchronise their stream before they return. Memory lent to a
/// device driver (a V4L2 buffer) must not be read through [`MappedHostBuffer::as_slice`]
/// while the driver may write it, i.e. unless the buffer is dequeued.
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
    /// [`KernelError::InvalidValue`] for `len == 0`; [`KernelError::CudaDriver`] when the
    /// GPU cannot map host memory or the memory cannot be allocated, locked or mapped;
    /// [`KernelError::CudaUnavailable`] when the driver library lacks what is needed.
    pub fn new(device: &CudaDevice, len: usize) -> Result<Self, KernelError> {
        if len == 0 {
            return Err(KernelError::InvalidValue {
                what: "mapped host buffer length",
                reason: "must be at least 1 byte",
            });
        }
        if !device.maps_host_memory() {
            return Err(KernelError::CudaDriver {
                call: "cuMemHostRegister",
                message: format!(
                    "{} cannot map host memory into its address space (no \
                     CAN_MAP_HOST_MEMORY / HOST_REGISTER_SUPPORTED)",
                    device.name()
                ),
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
        let registered = guarded("registering host memory with the GPU", || {
            context
                .bind_to_thread()
                .map_err(driver_error("cuCtxSetCurrent"))?;
            let flags =
                driver_sys::CU_MEMHOSTREGISTER_PORTABLE | driver_sys::CU_MEMHOSTREGISTER_DEVICEMAP;
            // SAFETY: `host` is `size` bytes this function allocated and owns; they stay
            // allocated until they are unregistered (`Drop`, or below on failure).
            unsafe { driver_sys::cuMemHostRegister_v2(host.as_ptr().cast(), size, flags) }
                .result()
                .map_err(driver_error("cuMemHostRegister"))
        });
        if let Err(error) = registered {
            // Not registered: cudarc panics on a missing symbol before it calls the
            // driver, and the driver's own failure registers nothing.
            // SAFETY: allocated above with `layout`, not registered.
            unsafe { std::alloc::dealloc(host.as_ptr(), layout) };
            return Err(error);
        }
        let mut buffer = Self {
            context,
            host,
            len: size,
            layout,
            device_ptr: 0,
        };
        // On failure `buffer` drops: unregistered, then freed.
        buffer.device_ptr = guarded("mapping host memory into the GPU", || {
            let mut device_ptr: driver_sys::CUdeviceptr = 0;
            // SAFETY: `host` was registered with DEVICEMAP above; `device_ptr` is a valid
            // place for the result; the flags argument must be 0.
            unsafe {
                driver_sys::cuMemHostGetDevicePointer_v2(
                    &mut device_ptr,
                    host.as_ptr().cast::<c_void>(),
                    0,
                )
            }
            .result()
            .map_err(driver_error("cuMemHostGetDevicePointer"))?;
            Ok(device_ptr)
        })?;
        Ok(buffer)
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
        let host = self.host.as_ptr();
        let unregistered = guarded("unmapping host memory from the GPU", || {
            // A failed bind (an error another call left on the context) is retried once:
            // unregistering needs the context current.
            if self.context.bind_to_thread().is_err() {
                self.context
                    .bind_to_thread()
                    .map_err(driver_error("cuCtxSetCurrent"))?;
            }
            // SAFETY: registered in `new`; no kernel uses it any more (the sessions that
            // read it synchronise before returning, and the buffer is not borrowed).
            unsafe { driver_sys::cuMemHostUnregister(host.cast()) }
                .result()
                .map_err(driver_error("cuMemHostUnregister"))
        });
        if unregistered.is_ok() {
            // SAFETY: allocated in `new` with `self.layout`, and no longer registered.
            unsafe { std::alloc::dealloc(host, self.layout) };
        }
        // Otherwise the pages are leaked on purpose: freed while still registered, they
        // could be handed out again and registered a second time (which fails), or be
        // written by the GPU through a mapping it still holds.
    }
}
