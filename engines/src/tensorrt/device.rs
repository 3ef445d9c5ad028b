//! The parts of the TensorRT backend that need TensorRT and a GPU: opening both, getting
//! an engine from the cache (building it on a miss), and the model and session types.
//! Only compiled with the shim (`cfg(posed_trt_shim)`).

use std::ffi::{c_void, CString};
use std::panic::catch_unwind;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use cudarc::driver::{
    CudaContext, CudaSlice, CudaStream, DevicePtrMut, DriverError, PinnedHostSlice,
};
use posed_kernels::cuda::CudaDevice;

use super::plan::{
    binding_plan, check_engine_io, optimisation_profile, BindingSize, ProfileShapes, Transfer,
};
use super::shim::{BuildRequest, Context, Engine, Library, ProgressSink};
use super::{BuildProgress, TensorRtOptions, BACKEND_NAME};
use crate::backend::{check_input, check_output_shape, Model, ModelOptions, Session};
use crate::cache::{CacheOutcome, EngineKey};
use crate::contract::{Contract, TensorSpec};
use crate::tensor::{OutputData, Outputs, Shape, MAX_RANK};
use crate::{EngineError, Network};

fn unavailable(reason: String) -> EngineError {
    EngineError::BackendUnavailable {
        backend: BACKEND_NAME,
        reason,
    }
}

/// A CUDA driver error on the backend's path, as an error naming the call.
fn cuda(call: &'static str) -> impl Fn(DriverError) -> EngineError {
    move |error| EngineError::TensorRt {
        call,
        message: format!("CUDA: {error:?}"),
    }
}

/// TensorRT and the GPU, opened.
pub struct Runtime {
    library: Arc<Library>,
    device: CudaDevice,
    context: Arc<CudaContext>,
}

/// An engine from the cache or a fresh build, checked against its contract.
pub struct Prepared {
    pub engine: Arc<Engine>,
    pub outputs: Vec<Transfer>,
    pub outcome: CacheOutcome,
}

impl Runtime {
    /// Opens libnvinfer, then the GPU.
    pub fn open(options: &TensorRtOptions) -> Result<Runtime, EngineError> {
        let library = Arc::new(Library::open()?);
        let device = CudaDevice::open(options.device_ordinal).map_err(|e| {
            unavailable(format!(
                "TensorRT {} is installed but {e}",
                library.version_string()
            ))
        })?;
        // The device opened, so the driver is there: this retains the same primary context
        // posed-kernels uses. cudarc panics instead of failing on a missing symbol.
        let context = catch_unwind(|| CudaContext::new(options.device_ordinal))
            .map_err(|_| unavailable("the CUDA driver lacks a symbol cudarc needs".to_owned()))?
            .map_err(|e| unavailable(format!("cuDevicePrimaryCtxRetain: {e:?}")))?;
        tracing::info!(
            tensorrt = library.version_string(),
            gpu = device.name(),
            compute_capability = ?device.compute_capability(),
            "TensorRT backend ready"
        );
        Ok(Runtime {
            library,
            device,
            context,
        })
    }

    pub fn tensorrt_version(&self) -> &str {
        self.library.version_string()
    }

    pub fn device(&self) -> &CudaDevice {
        &self.device
    }

    /// Builds `network`'s engine (no cache involved).
    fn build(
        &self,
        network: &Network,
        options: &ModelOptions,
        settings: &TensorRtOptions,
        hook: Option<&(dyn Fn(BuildProgress) + Send + Sync)>,
    ) -> Result<Vec<u8>, EngineError> {
        let contract = network.contract();
        let profile = optimisation_profile(&contract, options);
        let output_names: Vec<&str> = contract.outputs.iter().map(|o| o.name).collect();
        let onnx_path = network.path().to_string_lossy();
        let detailed = self.library.reports_progress();
        let started = BuildProgress::Started {
            network: network.path().to_owned(),
            role: contract.role,
            precision: settings.precision,
            tensorrt_version: self.library.version_string().to_owned(),
            detailed,
        };
        tracing::info!(
            network = %network.path().display(),
            precision = settings.precision.name(),
            profile_min = ?profile.min,
            profile_max = ?profile.max,
            "building a TensorRT engine; this takes minutes on a Jetson{}",
            if detailed { "" } else { " (TensorRT 8.6 reports no progress)" }
        );
        if let Some(hook) = hook {
            hook(started);
        }
        let start = Instant::now();
        self.context
            .bind_to_thread()
            .map_err(cuda("cuCtxSetCurrent"))?;
        let bytes = self.library.build(
            &BuildRequest {
                onnx: network.onnx_bytes(),
                onnx_path: &onnx_path,
                precision: settings.precision,
                dla_core: settings.dla_core,
                workspace_bytes: settings.workspace_bytes(),
                input_name: contract.input.name,
                min: &profile.min,
                opt: &profile.opt,
                max: &profile.max,
                output_names: &output_names,
            },
            &ProgressSink { hook },
        )?;
        let elapsed = start.elapsed();
        tracing::info!(
            network = %network.path().display(),
            seconds = elapsed.as_secs_f64(),
            bytes = bytes.len(),
            "TensorRT engine built"
        );
        if let Some(hook) = hook {
            hook(BuildProgress::Finished {
                elapsed,
                engine_bytes: bytes.len(),
            });
        }
        Ok(bytes)
    }

    /// The checked engine for `key`: from the cache, or built and stored. A cached engine
    /// that TensorRT cannot deserialise is set aside (`.rejected`) and rebuilt.
    pub fn prepare(
        &self,
        network: &Network,
        options: &ModelOptions,
        settings: &TensorRtOptions,
        key: &EngineKey,
        hook: Option<&(dyn Fn(BuildProgress) + Send + Sync)>,
    ) -> Result<Prepared, EngineError> {
        options.validate()?;
        self.context
            .bind_to_thread()
            .map_err(cuda("cuCtxSetCurrent"))?;
        // A cached engine that TensorRT cannot deserialise (its sha256 proves only that
        // the bytes are the ones written) is set aside as `.rejected` and rebuilt, as the
        // CPU backend's are: a corrupt or foreign engine is kept for a look, never
        // overwritten unseen.
        let build = || {
            let bytes = self.build(network, options, settings, hook)?;
            let engine = self.library.deserialize(&bytes, settings.dla_core)?;
            Ok((bytes, engine))
        };
        let check = |bytes: &[u8]| {
            self.library
                .deserialize(bytes, settings.dla_core)
                .map_err(|e| e.to_string())
        };
        let (_, engine, outcome) = settings.cache.get_or_build_checked(key, build, check)?;
        let tensors = engine.io_tensors()?;
        let io = check_engine_io(&network.contract(), network.path(), &tensors)?;
        Ok(Prepared {
            engine: Arc::new(engine),
            outputs: io.outputs,
            outcome,
        })
    }

    /// A model for `network`.
    pub fn load(
        &self,
        network: Network,
        options: ModelOptions,
        settings: &TensorRtOptions,
        key: &EngineKey,
        hook: Option<&(dyn Fn(BuildProgress) + Send + Sync)>,
    ) -> Result<TensorRtModel, EngineError> {
        let prepared = self.prepare(&network, &options, settings, key, hook)?;
        tracing::info!(network = %network.path().display(), outcome = ?prepared.outcome, "TensorRT engine loaded");
        let contract = network.contract();
        let max_detections = network
            .sidecar()
            .detector
            .as_ref()
            .map_or(1, |d| d.max_detections);
        Ok(TensorRtModel {
            profile: optimisation_profile(&contract, &options),
            plan: binding_plan(&contract, &options, max_detections),
            contract,
            max_detections,
            network,
            options,
            engine: prepared.engine,
            transfers: prepared.outputs,
            context: Arc::clone(&self.context),
        })
    }
}

/// A deserialised engine with what its sessions need to know.
pub struct TensorRtModel {
    network: Network,
    options: ModelOptions,
    contract: Contract,
    max_detections: usize,
    profile: ProfileShapes,
    plan: Vec<BindingSize>,
    transfers: Vec<Transfer>,
    engine: Arc<Engine>,
    context: Arc<CudaContext>,
}

impl Drop for TensorRtModel {
    fn drop(&mut self) {
        // TensorRT frees the engine's device memory with the CUDA runtime, which uses the
        // calling thread's current context: make it this model's, whatever thread drops it.
        let _ = self.context.bind_to_thread();
    }
}

impl Model for TensorRtModel {
    fn network(&self) -> &Network {
        &self.network
    }

    fn options(&self) -> ModelOptions {
        self.options
    }

    fn new_session(&self) -> Result<Box<dyn Session>, EngineError> {
        Ok(Box::new(TensorRtSession::new(self)?))
    }
}

enum DeviceBuffer {
    F32(CudaSlice<f32>),
    I32(CudaSlice<i32>),
    I64(CudaSlice<i64>),
}

enum HostBuffer {
    F32(PinnedHostSlice<f32>),
    I32(PinnedHostSlice<i32>),
    I64(PinnedHostSlice<i64>),
}

struct OutputBinding {
    spec: TensorSpec,
    name: CString,
    capacity: usize,
    device: DeviceBuffer,
    host: HostBuffer,
    /// The shape of the last run's output (set before the copy back).
    shape: Shape,
}

/// Page-locked host memory for `len` elements, zeroed. `write_combined` for memory the CPU
/// only writes (fast to write and to copy to the device, very slow to read back).
fn pinned<T: cudarc::driver::DeviceRepr + cudarc::driver::ValidAsZeroBits>(
    context: &Arc<CudaContext>,
    len: usize,
    write_combined: bool,
) -> Result<PinnedHostSlice<T>, EngineError> {
    let flags = if write_combined {
        cudarc::driver::sys::CU_MEMHOSTALLOC_WRITECOMBINED
    } else {
        0
    };
    // SAFETY: the allocation is uninitialised; it is zeroed below before any read.
    let mut slice = unsafe { context.alloc_pinned_with_flags::<T>(len, flags) }
        .map_err(cuda("cuMemHostAlloc"))?;
    let ptr = slice.as_mut_ptr().map_err(cuda("cuEventSynchronize"))?;
    // SAFETY: `ptr` is the start of `len` elements of host memory owned by `slice`, and T is
    // valid as all-zero bits.
    unsafe { ptr.write_bytes(0, len) };
    Ok(slice)
}

/// One execution context with every buffer a run needs.
struct TensorRtSession {
    // Field order is drop order: the context (which points at the buffers) goes first.
    trt: Context,
    outputs: Vec<OutputBinding>,
    input_device: CudaSlice<f32>,
    input_host: PinnedHostSlice<f32>,
    input_name: CString,
    stream: Arc<CudaStream>,
    contract: Contract,
    options: ModelOptions,
    max_detections: usize,
    profile: ProfileShapes,
    last_input_shape: Option<Shape>,
    /// The ONNX file, to name in output errors.
    network_path: PathBuf,
}

impl Drop for TensorRtSession {
    fn drop(&mut self) {
        // As for the model: the context's memory is freed through the current CUDA context.
        // Wait for any work still queued on the buffers before they go.
        let _ = self.stream.context().bind_to_thread();
        let _ = self.stream.synchronize();
    }
}

impl TensorRtSession {
    fn new(model: &TensorRtModel) -> Result<TensorRtSession, EngineError> {
        let context = &model.context;
        context.bind_to_thread().map_err(cuda("cuCtxSetCurrent"))?;
        let stream = context.new_stream().map_err(cuda("cuStreamCreate"))?;
        let mut trt = model.engine.create_context()?;
        let name = |name: &str| {
            CString::new(name).map_err(|_| EngineError::TensorRt {
                call: "setTensorAddress",
                message: format!("tensor name `{name}` contains a NUL byte"),
            })
        };
        let [input_plan, output_plans @ ..] = model.plan.as_slice() else {
            return Err(EngineError::TensorRt {
                call: "setTensorAddress",
                message: "empty binding plan".to_owned(),
            });
        };
        let mut input_device = stream
            .alloc_zeros::<f32>(input_plan.max_elements)
            .map_err(cuda("cuMemAlloc"))?;
        let input_host = pinned::<f32>(context, input_plan.max_elements, true)?;
        let input_name = name(input_plan.name)?;
        {
            let (ptr, _sync) = input_device.device_ptr_mut(&stream);
            // SAFETY: the buffer holds max_elements f32 on this context and lives in the
            // session, which drops the TensorRT context first.
            unsafe {
                trt.bind(
                    &input_name,
                    ptr as *mut c_void,
                    input_plan.device_bytes(Transfer::F32) as u64,
                    false,
                )?
            };
        }
        let mut outputs = Vec::with_capacity(output_plans.len());
        for ((binding, spec), &transfer) in output_plans
            .iter()
            .zip(model.contract.outputs)
            .zip(&model.transfers)
        {
            let len = binding.max_elements;
            let (device, host) = match transfer {
                Transfer::F32 => (
                    DeviceBuffer::F32(stream.alloc_zeros::<f32>(len).map_err(cuda("cuMemAlloc"))?),
                    HostBuffer::F32(pinned::<f32>(context, len, false)?),
                ),
                Transfer::I64 => (
                    DeviceBuffer::I64(stream.alloc_zeros::<i64>(len).map_err(cuda("cuMemAlloc"))?),
                    HostBuffer::I64(pinned::<i64>(context, len, false)?),
                ),
                Transfer::I32ToI64 => (
                    DeviceBuffer::I32(stream.alloc_zeros::<i32>(len).map_err(cuda("cuMemAlloc"))?),
                    HostBuffer::I32(pinned::<i32>(context, len, false)?),
                ),
            };
            let mut output = OutputBinding {
                spec: *spec,
                name: name(binding.name)?,
                capacity: len,
                device,
                host,
                shape: Shape::default(),
            };
            let bytes = binding.device_bytes(transfer) as u64;
            let ptr = match &mut output.device {
                DeviceBuffer::F32(buffer) => buffer.device_ptr_mut(&stream).0,
                DeviceBuffer::I32(buffer) => buffer.device_ptr_mut(&stream).0,
                DeviceBuffer::I64(buffer) => buffer.device_ptr_mut(&stream).0,
            };
            // SAFETY: as for the input: `bytes` of device memory owned by the session.
            unsafe { trt.bind(&output.name, ptr as *mut c_void, bytes, true)? };
            outputs.push(output);
        }
        stream.synchronize().map_err(cuda("cuStreamSynchronize"))?;
        Ok(TensorRtSession {
            trt,
            outputs,
            input_device,
            input_host,
            input_name,
            stream,
            contract: model.contract,
            options: model.options,
            max_detections: model.max_detections,
            profile: model.profile.clone(),
            last_input_shape: None,
            network_path: model.network.path().to_owned(),
        })
    }

    /// Reads an output's shape from TensorRT into `self.outputs[index].shape`: `Ok(false)`
    /// while it is not known yet (data-dependent: wait for the stream).
    fn read_output_shape(&mut self, index: usize) -> Result<bool, EngineError> {
        let output = &mut self.outputs[index];
        let (rank, dims) = self.trt.tensor_shape(&output.name)?;
        if dims[..rank].iter().any(|&d| d < 0) {
            return Ok(false);
        }
        let mut sizes = [0usize; MAX_RANK];
        if rank > MAX_RANK {
            return Err(EngineError::Output {
                tensor: output.spec.name.to_owned(),
                reason: format!("TensorRT reports rank {rank}, posed handles at most {MAX_RANK}"),
            });
        }
        for (size, &d) in sizes.iter_mut().zip(&dims[..rank]) {
            *size = usize::try_from(d).unwrap_or(0);
        }
        let shape = Shape::new(&sizes[..rank]).unwrap_or_default();
        if shape.volume() > output.capacity {
            return Err(EngineError::Output {
                tensor: output.spec.name.to_owned(),
                reason: format!(
                    "TensorRT produced {shape}, more than the {} elements its buffer holds (sidecar max_detections {})",
                    output.capacity, self.max_detections
                ),
            });
        }
        output.shape = shape;
        Ok(true)
    }

    /// Queues the copy of output `index` (its shape known) into its staging buffer.
    fn queue_copy_back(&mut self, index: usize) -> Result<(), EngineError> {
        let output = &mut self.outputs[index];
        let n = output.shape.volume();
        if n == 0 {
            // No detections: nothing to copy.
            return Ok(());
        }
        let stream = &self.stream;
        let copy = cuda("cuMemcpyDtoHAsync");
        let host_slice = cuda("cuEventSynchronize");
        match (&output.device, &mut output.host) {
            (DeviceBuffer::F32(src), HostBuffer::F32(dst)) => {
                let dst = dst.as_mut_slice().map_err(host_slice)?;
                stream
                    .memcpy_dtoh(&src.slice(..n), &mut dst[..n])
                    .map_err(copy)
            }
            (DeviceBuffer::I32(src), HostBuffer::I32(dst)) => {
                let dst = dst.as_mut_slice().map_err(host_slice)?;
                stream
                    .memcpy_dtoh(&src.slice(..n), &mut dst[..n])
                    .map_err(copy)
            }
            (DeviceBuffer::I64(src), HostBuffer::I64(dst)) => {
                let dst = dst.as_mut_slice().map_err(host_slice)?;
                stream
                    .memcpy_dtoh(&src.slice(..n), &mut dst[..n])
                    .map_err(copy)
            }
            _ => Err(EngineError::Output {
                tensor: output.spec.name.to_owned(),
                reason: "device and host buffers of different types".to_owned(),
            }),
        }
    }
}

impl Session for TensorRtSession {
    fn contract(&self) -> Contract {
        self.contract
    }

    fn options(&self) -> ModelOptions {
        self.options
    }

    fn max_detections(&self) -> usize {
        self.max_detections
    }

    fn run(
        &mut self,
        input: &[f32],
        shape: &[usize],
        outputs: &mut Outputs,
    ) -> Result<(), EngineError> {
        self.run_unnamed(input, shape, outputs)
            .map_err(|e| e.in_network(&self.network_path))
    }
}

impl TensorRtSession {
    /// [`Session::run`], its output errors not yet naming the network.
    fn run_unnamed(
        &mut self,
        input: &[f32],
        shape: &[usize],
        outputs: &mut Outputs,
    ) -> Result<(), EngineError> {
        let batch = check_input(&self.contract, &self.options, input, shape)?;
        if !self.profile.admits(shape) {
            return Err(EngineError::Input {
                what: "input shape",
                expected: format!(
                    "between {:?} and {:?} (the engine's optimisation profile)",
                    self.profile.min, self.profile.max
                ),
                found: format!("{shape:?}"),
            });
        }
        if outputs.tensors().len() != self.outputs.len() {
            return Err(EngineError::Output {
                tensor: "(all)".to_owned(),
                reason: format!(
                    "{} output buffers, the contract has {}: use Session::allocate_outputs",
                    outputs.tensors().len(),
                    self.outputs.len()
                ),
            });
        }
        let n = input.len();
        if n > self.input_device.len() {
            return Err(EngineError::Input {
                what: "input length",
                expected: format!("at most {} values", self.input_device.len()),
                found: n.to_string(),
            });
        }
        self.stream
            .context()
            .bind_to_thread()
            .map_err(cuda("cuCtxSetCurrent"))?;

        // Input: caller -> pinned staging -> device.
        let staging = self
            .input_host
            .as_mut_slice()
            .map_err(cuda("cuEventSynchronize"))?;
        staging[..n].copy_from_slice(input);
        let mut dst = self.input_device.slice_mut(..n);
        self.stream
            .memcpy_htod(&staging[..n], &mut dst)
            .map_err(cuda("cuMemcpyHtoDAsync"))?;

        let shape_now = Shape::new(shape);
        if shape_now.is_none() || shape_now != self.last_input_shape {
            let mut dims = [0i64; MAX_RANK];
            for (d, &s) in dims.iter_mut().zip(shape) {
                *d = i64::try_from(s).unwrap_or(i64::MAX);
            }
            // A failed set leaves the context's shape unknown: forget the last one.
            self.last_input_shape = None;
            self.trt
                .set_input_shape(&self.input_name, &dims[..shape.len()])?;
            self.last_input_shape = shape_now;
        }

        // SAFETY: the stream belongs to the context the bound buffers were allocated in,
        // and nothing else touches them until the synchronisations below.
        unsafe { self.trt.enqueue(self.stream.cu_stream().cast::<c_void>())? };

        // Outputs whose shape follows from the input's are copied right behind the
        // inference; data-dependent ones once the stream has run.
        let mut waiting = 0u32; // bit i: output i's shape is known only after the run
        for index in 0..self.outputs.len() {
            if self.read_output_shape(index)? {
                self.queue_copy_back(index)?;
            } else {
                waiting |= 1 << index;
            }
        }
        self.stream
            .synchronize()
            .map_err(cuda("cuStreamSynchronize"))?;
        if waiting != 0 {
            for index in (0..self.outputs.len()).filter(|i| waiting & (1 << i) != 0) {
                if !self.read_output_shape(index)? {
                    return Err(EngineError::Output {
                        tensor: self.outputs[index].spec.name.to_owned(),
                        reason: "TensorRT reported no shape for it after the run".to_owned(),
                    });
                }
                self.queue_copy_back(index)?;
            }
            self.stream
                .synchronize()
                .map_err(cuda("cuStreamSynchronize"))?;
        }

        let mut detections = None;
        for (output, out) in self.outputs.iter().zip(outputs.tensors_mut()) {
            check_output_shape(
                &output.spec,
                output.shape.dims(),
                batch,
                self.max_detections,
                &mut detections,
            )?;
            let n = output.shape.volume();
            let wrong_type = || EngineError::Output {
                tensor: output.spec.name.to_owned(),
                reason: "the caller's buffer has the wrong element type".to_owned(),
            };
            match (&output.host, out.prepare(output.shape.dims())?) {
                (HostBuffer::F32(src), OutputData::F32(dst)) => {
                    let src = src.as_slice().map_err(cuda("cuEventSynchronize"))?;
                    dst[..n].copy_from_slice(&src[..n]);
                }
                (HostBuffer::I64(src), OutputData::I64(dst)) => {
                    let src = src.as_slice().map_err(cuda("cuEventSynchronize"))?;
                    dst[..n].copy_from_slice(&src[..n]);
                }
                (HostBuffer::I32(src), OutputData::I64(dst)) => {
                    let src = src.as_slice().map_err(cuda("cuEventSynchronize"))?;
                    for (d, &s) in dst[..n].iter_mut().zip(&src[..n]) {
                        *d = i64::from(s);
                    }
                }
                _ => return Err(wrong_type()),
            }
        }
        Ok(())
    }
}
