//! The CUDA twins of the CPU kernels (feature `cuda`, on by default).
//!
//! Nothing here needs CUDA to build: cudarc opens `libcuda` and `libnvrtc` at run time.
//! On a machine without them, [`CudaDevice::open`] returns
//! [`KernelError::CudaUnavailable`] and the caller falls back to the CPU twins.
//!
//! - [`CudaDevice`]: one GPU (a retained primary context), its compute capability, and
//!   [`CudaDevice::load_module`], which compiles an embedded `.cu` source for it
//!   ([`compile`]: NVRTC, CUBIN first, cached on disk).
//! - [`metrics`]: ADD and ADD-S for a batch of pose pairs ([`GpuPoseMetrics`]), the twins
//!   of [`crate::metrics::PoseErrorModel::add`] / [`crate::metrics::PoseErrorModel::adds`].
//! - [`render`]: the renderer ([`GpuRenderer`]), the twin of
//!   [`crate::render::CpuRenderer`]: same keys, depth, mask and colour, bit for bit.
//! - [`cosypose`]: CosyPose's crop box and `K_crop`, RoIAlign into the network input,
//!   and the pose update ([`GpuCosyPose`]), the twins of [`crate::cosypose::crop`] and
//!   [`crate::cosypose::update`].
//! - [`color`]: camera frames (YUYV, NV12, RGB24) to 8-bit RGB and to normalised planar
//!   RGB ([`GpuColor`]), the twin of [`crate::color`].
//!
//! The sources live in `kernels/cuda/` and are listed in [`SOURCES`];
//! `scripts/check-cuda-kernels.sh` compiles every one of them for `sm_87` and `sm_90` in CI.
//!
//! cudarc panics (instead of returning an error) when a library or one of its symbols is
//! missing. This module checks that the libraries load before the first call and runs
//! every cudarc call that could hit a missing symbol inside `catch_unwind`; with
//! `panic = "abort"` (posed's release profile) only the presence checks protect, so they
//! come first.

pub mod color;
pub mod compile;
pub mod cosypose;
pub mod mapped;
pub mod metrics;
pub mod render;

use std::ffi::c_int;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use cudarc::driver::{result::DriverError, sys as driver_sys, CudaContext, CudaModule};
use cudarc::nvrtc::Ptx;

pub use color::GpuColor;
pub use compile::{CacheStatus, CompiledImage, ImageKind, KernelCache, KernelSource, Target};
pub use cosypose::GpuCosyPose;
pub use mapped::MappedHostBuffer;
pub use metrics::GpuPoseMetrics;
pub use render::{GpuRenderLimits, GpuRenderer};

use crate::KernelError;

/// `kernels/cuda/metrics.cu`: ADD and ADD-S.
pub const METRICS_SOURCE: KernelSource = KernelSource {
    name: "metrics.cu",
    code: include_str!("../../cuda/metrics.cu"),
};

/// `kernels/cuda/render.cu`: the renderer.
pub const RENDER_SOURCE: KernelSource = KernelSource {
    name: "render.cu",
    code: include_str!("../../cuda/render.cu"),
};

/// `kernels/cuda/cosypose.cu`: CosyPose's crop geometry and pose update.
pub const COSYPOSE_SOURCE: KernelSource = KernelSource {
    name: "cosypose.cu",
    code: include_str!("../../cuda/cosypose.cu"),
};

/// `kernels/cuda/color.cu`: camera colour conversion.
pub const COLOR_SOURCE: KernelSource = KernelSource {
    name: "color.cu",
    code: include_str!("../../cuda/color.cu"),
};

/// Every embedded CUDA source.
pub const SOURCES: &[KernelSource] =
    &[METRICS_SOURCE, RENDER_SOURCE, COSYPOSE_SOURCE, COLOR_SOURCE];

/// Whether the CUDA driver library (`libcuda.so`) can be loaded on this machine.
pub fn driver_present() -> bool {
    // SAFETY: this only dlopen()s the candidate library names (running the library's
    // initialisers, as any first use of the driver does) and closes them again.
    catch_unwind(|| unsafe { driver_sys::is_culib_present() }).unwrap_or(false)
}

fn no_driver() -> KernelError {
    KernelError::CudaUnavailable {
        reason: "no CUDA driver found (libcuda.so could not be loaded); use the CPU device"
            .to_owned(),
    }
}

/// Runs `f`, turning a panic inside cudarc (a missing library or symbol) into
/// [`KernelError::CudaUnavailable`].
pub(crate) fn guarded<T>(
    what: &'static str,
    f: impl FnOnce() -> Result<T, KernelError>,
) -> Result<T, KernelError> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(result) => result,
        Err(payload) => {
            let message = payload
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| payload.downcast_ref::<&str>().copied())
                .unwrap_or("(no message)");
            Err(KernelError::CudaUnavailable {
                reason: format!("{what}: the CUDA library is missing something: {message}"),
            })
        }
    }
}

/// A driver error as `CUDA_ERROR_NAME: description`.
pub(crate) fn driver_message(error: &DriverError) -> String {
    let name = error
        .error_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|_| format!("{:?}", error.0));
    match error.error_string() {
        Ok(text) => format!("{name}: {}", text.to_string_lossy()),
        Err(_) => name,
    }
}

pub(crate) fn driver_error(call: &'static str) -> impl Fn(DriverError) -> KernelError {
    move |error| KernelError::CudaDriver {
        call,
        message: driver_message(&error),
    }
}

/// One GPU, opened through the CUDA driver API (its primary context).
#[derive(Clone)]
pub struct CudaDevice {
    context: Arc<CudaContext>,
    name: String,
    compute_capability: (u32, u32),
    driver_version: (i32, i32),
    integrated: bool,
    maps_host_memory: bool,
    cache: KernelCache,
}

impl std::fmt::Debug for CudaDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaDevice")
            .field("ordinal", &self.context.ordinal())
            .field("name", &self.name)
            .field("compute_capability", &self.compute_capability)
            .field("driver_version", &self.driver_version)
            .field("integrated", &self.integrated)
            .field("maps_host_memory", &self.maps_host_memory)
            .field("cache", &self.cache)
            .finish()
    }
}

impl CudaDevice {
    /// Opens GPU number `ordinal`. Without a CUDA driver, without a GPU, or with an
    /// ordinal past the last GPU, this is [`KernelError::CudaUnavailable`], never a panic.
    /// Kernels compiled for it are cached in [`KernelCache::default_location`]; see
    /// [`CudaDevice::with_cache`].
    pub fn open(ordinal: usize) -> Result<Self, KernelError> {
        if !driver_present() {
            return Err(no_driver());
        }
        guarded("opening the CUDA device", || {
            cudarc::driver::result::init().map_err(|e| KernelError::CudaUnavailable {
                reason: format!(
                    "the CUDA driver did not initialise ({}); use the CPU device",
                    driver_message(&e)
                ),
            })?;
            let count = CudaContext::device_count().map_err(driver_error("cuDeviceGetCount"))?;
            let count = usize::try_from(count).unwrap_or(0);
            if ordinal >= count {
                return Err(KernelError::CudaUnavailable {
                    reason: format!(
                        "no CUDA device {ordinal}: the driver sees {count} device(s); use the \
                         CPU device"
                    ),
                });
            }
            let context =
                CudaContext::new(ordinal).map_err(driver_error("cuDevicePrimaryCtxRetain"))?;
            let name = context.name().map_err(driver_error("cuDeviceGetName"))?;
            let (major, minor) = context
                .compute_capability()
                .map_err(driver_error("cuDeviceGetAttribute"))?;
            let mut version: c_int = 0;
            // SAFETY: `version` is valid for a write of one c_int; the driver is initialised.
            unsafe { driver_sys::cuDriverGetVersion(&mut version) }
                .result()
                .map_err(driver_error("cuDriverGetVersion"))?;
            let flag = |attribute| {
                context
                    .attribute(attribute)
                    .map(|value| value != 0)
                    .map_err(driver_error("cuDeviceGetAttribute"))
            };
            use driver_sys::CUdevice_attribute as Attribute;
            let integrated = flag(Attribute::CU_DEVICE_ATTRIBUTE_INTEGRATED)?;
            let maps_host_memory = flag(Attribute::CU_DEVICE_ATTRIBUTE_CAN_MAP_HOST_MEMORY)?
                && flag(Attribute::CU_DEVICE_ATTRIBUTE_HOST_REGISTER_SUPPORTED)?;
            Ok(Self {
                context,
                name,
                integrated,
                maps_host_memory,
                compute_capability: (
                    u32::try_from(major).unwrap_or(0),
                    u32::try_from(minor).unwrap_or(0),
                ),
                driver_version: (version / 1000, (version % 1000) / 10),
                cache: KernelCache::default_location(),
            })
        })
    }

    /// The same device, caching compiled kernels in `cache` instead.
    pub fn with_cache(mut self, cache: KernelCache) -> Self {
        self.cache = cache;
        self
    }

    /// The device ordinal.
    pub fn ordinal(&self) -> usize {
        self.context.ordinal()
    }

    /// The GPU's name (`Orin`, `NVIDIA H200`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Compute capability `(major, minor)`: `(8, 7)` on Orin.
    pub fn compute_capability(&self) -> (u32, u32) {
        self.compute_capability
    }

    /// The newest CUDA version the driver supports, `(major, minor)`.
    pub fn driver_version(&self) -> (i32, i32) {
        self.driver_version
    }

    /// Whether the GPU shares the host's memory (a Jetson): then a kernel reads a
    /// [`MappedHostBuffer`] from the same DRAM as device memory, and copying it up moves
    /// bytes within that DRAM.
    pub fn integrated(&self) -> bool {
        self.integrated
    }

    /// Whether [`MappedHostBuffer`]s can be had on this GPU: it maps host memory and
    /// registers existing memory (`cuMemHostRegister`; not on Jetsons older than Xavier,
    /// which lack I/O coherency).
    pub fn maps_host_memory(&self) -> bool {
        self.maps_host_memory
    }

    /// The kernel cache in use.
    pub fn cache(&self) -> &KernelCache {
        &self.cache
    }

    /// The context, for the sessions in this module.
    pub(crate) fn context(&self) -> &Arc<CudaContext> {
        &self.context
    }

    /// Compiles `source` for this device (or takes it from the cache) and loads it.
    /// NVRTC's warnings, if any, are in the returned [`CompiledImage::log`].
    pub fn load_module(&self, source: &KernelSource) -> Result<LoadedModule, KernelError> {
        let (major, minor) = self.compute_capability;
        let image = compile::compile_for_device(source, major, minor, &self.cache)?;
        let ptx = match image.target.kind {
            ImageKind::Cubin => Ptx::from_binary(image.bytes.clone()),
            ImageKind::Ptx => {
                // cudarc turns PTX text into a C string: it must hold no NUL byte.
                let text = std::str::from_utf8(&image.bytes)
                    .ok()
                    .filter(|text| !text.contains('\0'))
                    .ok_or_else(|| KernelError::CudaCompile {
                        source_name: source.name.to_owned(),
                        arch: image.target.arch(),
                        options: image.options.join(" "),
                        log: "NVRTC returned PTX that is not NUL-free UTF-8".to_owned(),
                    })?;
                Ptx::from_src(text)
            }
        };
        let module = guarded("cuModuleLoadData", || {
            self.context
                .load_module(ptx)
                .map_err(|e| KernelError::CudaDriver {
                    call: "cuModuleLoadData",
                    message: format!(
                        "{} ({} {} of {}; NVRTC {}.{}, driver supports CUDA {}.{})",
                        driver_message(&e),
                        image.target.kind.extension(),
                        image.target.arch(),
                        source.name,
                        image.nvrtc_version.0,
                        image.nvrtc_version.1,
                        self.driver_version.0,
                        self.driver_version.1,
                    ),
                })
        })?;
        Ok(LoadedModule { module, image })
    }
}

/// A module loaded on a device, with the image it came from.
#[derive(Debug)]
pub struct LoadedModule {
    module: Arc<CudaModule>,
    image: CompiledImage,
}

impl LoadedModule {
    /// The compiled image: target, NVRTC log (warnings), cache status.
    pub fn image(&self) -> &CompiledImage {
        &self.image
    }

    /// Resolves the kernel `name` (once, at session creation; never in a frame loop).
    pub fn function(
        &self,
        name: &'static str,
    ) -> Result<cudarc::driver::CudaFunction, KernelError> {
        self.module
            .load_function(name)
            .map_err(|e| KernelError::CudaDriver {
                call: "cuModuleGetFunction",
                message: format!(
                    "{name} in {}: {}",
                    self.image.source_name,
                    driver_message(&e)
                ),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_inside_cudarc_becomes_an_error() {
        let result: Result<(), KernelError> = guarded("test", || panic!("Missing symbol cuFoo"));
        match result {
            Err(KernelError::CudaUnavailable { reason }) => {
                assert!(reason.contains("Missing symbol cuFoo"), "{reason}")
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn every_source_is_embedded() {
        for source in SOURCES {
            assert!(source.name.ends_with(".cu"));
            assert!(
                source.code.contains("extern \"C\" __global__"),
                "{}",
                source.name
            );
        }
    }
}
