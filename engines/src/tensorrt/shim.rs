//! A safe wrapper over the shim's C ABI ([`super::ffi`]): owned handles that destroy
//! themselves, errors as [`EngineError`], TensorRT's log forwarded to `tracing`.

use std::ffi::{c_char, c_void, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr::{self, NonNull};
use std::sync::{Arc, Mutex, Once};

use super::ffi;
use super::plan::{EngineTensor, TrtDataType};
use super::{BuildProgress, SHIM_VERSION};
use crate::cache::Precision;
use crate::EngineError;

/// Bytes of the message buffer every fallible call gets (on the stack: no allocation
/// unless the call fails).
const ERR_LEN: usize = 1024;

/// A shim call's status and message, turned into an error by the caller.
struct Failure {
    code: i32,
    message: String,
}

/// Runs a shim call that takes `(err, err_len)` last.
fn call(f: impl FnOnce(*mut c_char, usize) -> i32) -> Result<(), Failure> {
    let mut err = [0 as c_char; ERR_LEN];
    let code = f(err.as_mut_ptr(), ERR_LEN);
    if code == ffi::OK {
        return Ok(());
    }
    // SAFETY: the shim always NUL-terminates inside the buffer, and the buffer starts
    // zeroed, so there is a NUL within ERR_LEN bytes whatever the shim did.
    let message = unsafe { CStr::from_ptr(err.as_ptr()) }
        .to_string_lossy()
        .into_owned();
    Err(Failure { code, message })
}

fn trt_error(call: &'static str) -> impl Fn(Failure) -> EngineError {
    move |failure| EngineError::TensorRt {
        call,
        message: failure.message,
    }
}

/// Forwards TensorRT's log to `tracing` (target `tensorrt`). TensorRT's info messages are
/// many and mostly about tactics: they go to debug.
extern "C" fn log_to_tracing(severity: i32, message: *const c_char) {
    let _ = catch_unwind(|| {
        if message.is_null() {
            return;
        }
        // SAFETY: the shim passes a NUL-terminated string that lives for this call.
        let text = unsafe { CStr::from_ptr(message) }.to_string_lossy();
        match severity {
            0 | 1 => tracing::error!(target: "tensorrt", "{text}"),
            2 => tracing::warn!(target: "tensorrt", "{text}"),
            3 => tracing::debug!(target: "tensorrt", "{text}"),
            _ => tracing::trace!(target: "tensorrt", "{text}"),
        }
    });
}

/// libnvinfer and libnvonnxparser, opened.
pub struct Library {
    raw: NonNull<ffi::RawLibrary>,
    version: (u32, u32, u32),
    version_string: String,
}

// SAFETY: the handle holds function pointers and a version, written once by
// posed_trt_library_open and only read afterwards; TensorRT's factory functions may be
// called from any thread.
unsafe impl Send for Library {}
// SAFETY: as above: shared access only reads.
unsafe impl Sync for Library {}

impl Drop for Library {
    fn drop(&mut self) {
        // SAFETY: `raw` came from posed_trt_library_open and is closed exactly once; every
        // engine holds an Arc<Library>, so none outlives it.
        unsafe { ffi::posed_trt_library_close(self.raw.as_ptr()) }
    }
}

impl Library {
    /// Opens TensorRT. Any failure is [`EngineError::BackendUnavailable`].
    pub fn open() -> Result<Library, EngineError> {
        let unavailable = |reason: String| EngineError::BackendUnavailable {
            backend: super::BACKEND_NAME,
            reason,
        };
        // SAFETY: these take no arguments and only return constants.
        let (shim_version, params_size, info_size) = unsafe {
            (
                ffi::posed_trt_shim_version(),
                ffi::posed_trt_struct_size(0),
                ffi::posed_trt_struct_size(1),
            )
        };
        if shim_version != SHIM_VERSION
            || params_size != size_of::<ffi::BuildParams>()
            || info_size != size_of::<ffi::TensorInfo>()
        {
            return Err(unavailable(format!(
                "the compiled TensorRT shim (version {shim_version}, structs of {params_size} and {info_size} \
                 bytes) does not match this posed (version {SHIM_VERSION}, {} and {} bytes): rebuild posed",
                size_of::<ffi::BuildParams>(),
                size_of::<ffi::TensorInfo>()
            )));
        }
        static LOGGER: Once = Once::new();
        // SAFETY: `log_to_tracing` is a plain function that never unwinds (it catches
        // panics) and lives for the whole program.
        LOGGER.call_once(|| unsafe { ffi::posed_trt_set_log_callback(Some(log_to_tracing)) });

        let mut raw = ptr::null_mut();
        // SAFETY: `raw` is a valid out-pointer; the error buffer is provided by `call`.
        call(|err, len| unsafe { ffi::posed_trt_library_open(&mut raw, err, len) })
            .map_err(|f| unavailable(f.message))?;
        let raw = NonNull::new(raw)
            .ok_or_else(|| unavailable("posed_trt_library_open returned no handle".to_owned()))?;
        // SAFETY: `raw` is a live library handle.
        let v = unsafe { ffi::posed_trt_library_version(raw.as_ptr()) };
        let v = u32::try_from(v).unwrap_or(0);
        let version = (v / 10000, (v / 100) % 100, v % 100);
        // SAFETY: returns a constant.
        let headers = unsafe { ffi::posed_trt_header_version() };
        tracing::debug!(
            library = format!("{}.{}.{}", version.0, version.1, version.2),
            headers = format!(
                "{}.{}.{}",
                headers / 10000,
                (headers / 100) % 100,
                headers % 100
            ),
            "TensorRT opened"
        );
        Ok(Library {
            raw,
            version,
            version_string: format!("{}.{}.{}", version.0, version.1, version.2),
        })
    }

    /// "major.minor.patch" of libnvinfer.
    pub fn version_string(&self) -> &str {
        &self.version_string
    }

    /// Whether builds report progress (TensorRT 10's IProgressMonitor; the shim compiles
    /// it only against TensorRT 10 headers, and opens only its headers' major version).
    pub fn reports_progress(&self) -> bool {
        self.version.0 >= 10
    }

    /// Parses `request.onnx` and builds a serialised engine. Blocks for the whole build.
    pub fn build(
        &self,
        request: &BuildRequest<'_>,
        progress: &ProgressSink<'_>,
    ) -> Result<Vec<u8>, EngineError> {
        let invalid = |what: &str| EngineError::TensorRt {
            call: "posed_trt_build_serialized",
            message: format!("{what} contains a NUL byte"),
        };
        let input_name = CString::new(request.input_name).map_err(|_| invalid("the input name"))?;
        let onnx_path = CString::new(request.onnx_path).map_err(|_| invalid("the ONNX path"))?;
        let output_names = request
            .output_names
            .iter()
            .map(|name| CString::new(*name).map_err(|_| invalid("an output name")))
            .collect::<Result<Vec<CString>, EngineError>>()?;
        let output_ptrs: Vec<*const c_char> = output_names.iter().map(|n| n.as_ptr()).collect();
        let rank = request.min.len();
        if rank == 0
            || rank > ffi::MAX_DIMS
            || request.opt.len() != rank
            || request.max.len() != rank
        {
            return Err(EngineError::TensorRt {
                call: "posed_trt_build_serialized",
                message: format!(
                    "optimisation profile of rank {rank}: expected 1 to {}",
                    ffi::MAX_DIMS
                ),
            });
        }
        let dims = |values: &[usize]| {
            let mut out = [0i64; ffi::MAX_DIMS];
            for (slot, &v) in out.iter_mut().zip(values) {
                *slot = i64::try_from(v).unwrap_or(i64::MAX);
            }
            out
        };
        let params = ffi::BuildParams {
            onnx: request.onnx.as_ptr().cast(),
            onnx_len: request.onnx.len(),
            onnx_path: onnx_path.as_ptr(),
            precision: match request.precision {
                Precision::Fp32 => ffi::PRECISION_FP32,
                Precision::Fp16 => ffi::PRECISION_FP16,
                Precision::Int8 => ffi::PRECISION_INT8,
            },
            dla_core: request
                .dla_core
                .map_or(-1, |core| i32::try_from(core).unwrap_or(i32::MAX)),
            workspace_bytes: request.workspace_bytes,
            input_name: input_name.as_ptr(),
            rank: rank as i32,
            min_dims: dims(request.min),
            opt_dims: dims(request.opt),
            max_dims: dims(request.max),
            output_names: output_ptrs.as_ptr(),
            output_count: i32::try_from(output_ptrs.len()).unwrap_or(0),
        };
        let mut blob = ptr::null_mut();
        let user = ptr::from_ref(progress).cast_mut().cast::<c_void>();
        // SAFETY: every pointer in `params` points into locals (the ONNX bytes, CStrings,
        // `output_ptrs`) that outlive this blocking call; `user` points at `progress`, which
        // also outlives it, and `progress_trampoline` only reads it through a shared
        // reference; `blob` is a valid out-pointer.
        call(|err, len| unsafe {
            ffi::posed_trt_build_serialized(
                self.raw.as_ptr(),
                &params,
                Some(progress_trampoline),
                user,
                &mut blob,
                err,
                len,
            )
        })
        .map_err(|failure| match failure.code {
            ffi::ERR_CANCELLED => EngineError::TensorRt {
                call: "buildSerializedNetwork",
                message: "cancelled".to_owned(),
            },
            _ => EngineError::TensorRt {
                call: "buildSerializedNetwork",
                message: failure.message,
            },
        })?;
        let blob = NonNull::new(blob).ok_or_else(|| EngineError::TensorRt {
            call: "buildSerializedNetwork",
            message: "the shim returned no engine".to_owned(),
        })?;
        // SAFETY: `blob` is a live blob; its data pointer is valid for `size` bytes until
        // the blob is destroyed, which happens after the copy.
        let bytes = unsafe {
            let data = ffi::posed_trt_blob_data(blob.as_ptr()).cast::<u8>();
            let size = ffi::posed_trt_blob_size(blob.as_ptr());
            let bytes = if data.is_null() {
                Vec::new()
            } else {
                std::slice::from_raw_parts(data, size).to_vec()
            };
            ffi::posed_trt_blob_destroy(blob.as_ptr());
            bytes
        };
        Ok(bytes)
    }

    /// Deserialises an engine.
    pub fn deserialize(
        self: &Arc<Self>,
        bytes: &[u8],
        dla_core: Option<u32>,
    ) -> Result<Engine, EngineError> {
        let mut raw = ptr::null_mut();
        let dla = dla_core.map_or(-1, |core| i32::try_from(core).unwrap_or(i32::MAX));
        // SAFETY: `bytes` is valid for its length during the call (TensorRT copies what it
        // keeps); `raw` is a valid out-pointer.
        call(|err, len| unsafe {
            ffi::posed_trt_engine_deserialize(
                self.raw.as_ptr(),
                bytes.as_ptr().cast(),
                bytes.len(),
                dla,
                &mut raw,
                err,
                len,
            )
        })
        .map_err(trt_error("deserializeCudaEngine"))?;
        let raw = NonNull::new(raw).ok_or_else(|| EngineError::TensorRt {
            call: "deserializeCudaEngine",
            message: "the shim returned no engine".to_owned(),
        })?;
        Ok(Engine {
            raw,
            context_lock: Mutex::new(()),
            _library: Arc::clone(self),
        })
    }
}

/// What to build.
pub struct BuildRequest<'a> {
    pub onnx: &'a [u8],
    pub onnx_path: &'a str,
    pub precision: Precision,
    pub dla_core: Option<u32>,
    pub workspace_bytes: u64,
    pub input_name: &'a str,
    pub min: &'a [usize],
    pub opt: &'a [usize],
    pub max: &'a [usize],
    pub output_names: &'a [&'a str],
}

/// Where build progress goes.
pub struct ProgressSink<'a> {
    pub hook: Option<&'a (dyn Fn(BuildProgress) + Send + Sync)>,
}

fn lossy(text: *const c_char) -> String {
    if text.is_null() {
        return String::new();
    }
    // SAFETY: the shim passes NUL-terminated strings valid for the callback's duration.
    unsafe { CStr::from_ptr(text) }
        .to_string_lossy()
        .into_owned()
}

/// IProgressMonitor events from the shim, to the hook and the log. Never unwinds into C++.
extern "C" fn progress_trampoline(
    user: *mut c_void,
    event: i32,
    phase: *const c_char,
    parent: *const c_char,
    step: i32,
    nb_steps: i32,
) -> i32 {
    let result = catch_unwind(AssertUnwindSafe(|| {
        if user.is_null() {
            return;
        }
        // SAFETY: `user` is the `&ProgressSink` Library::build passed, alive for the build.
        let sink = unsafe { &*user.cast_const().cast::<ProgressSink<'_>>() };
        let phase = lossy(phase);
        let progress = match event {
            ffi::PROGRESS_PHASE_START => {
                let parent = lossy(parent);
                if parent.is_empty() {
                    tracing::info!(phase = %phase, steps = nb_steps, "TensorRT build phase");
                }
                BuildProgress::PhaseStarted {
                    phase,
                    parent: (!parent.is_empty()).then_some(parent),
                    steps: u32::try_from(nb_steps).unwrap_or(0),
                }
            }
            ffi::PROGRESS_STEP => BuildProgress::Step {
                phase,
                step: u32::try_from(step).unwrap_or(0),
            },
            ffi::PROGRESS_PHASE_FINISH => BuildProgress::PhaseFinished { phase },
            _ => return,
        };
        if let Some(hook) = sink.hook {
            hook(progress);
        }
    }));
    if result.is_err() {
        tracing::warn!("the build progress hook panicked; the build goes on");
    }
    1
}

/// A deserialised engine.
pub struct Engine {
    raw: NonNull<ffi::RawEngine>,
    /// TensorRT does not promise that creating contexts from several threads at once is
    /// safe; posed makes them one at a time.
    context_lock: Mutex<()>,
    _library: Arc<Library>,
}

// SAFETY: an ICudaEngine may be used from any thread; the only mutating use
// (createExecutionContext) is serialised by `context_lock`, the rest are const queries.
unsafe impl Send for Engine {}
// SAFETY: as above.
unsafe impl Sync for Engine {}

impl Drop for Engine {
    fn drop(&mut self) {
        // SAFETY: created by posed_trt_engine_deserialize, destroyed once; every context
        // holds an Arc<Engine>, so none outlives it.
        unsafe { ffi::posed_trt_engine_destroy(self.raw.as_ptr()) }
    }
}

impl Engine {
    /// The engine's inputs and outputs.
    pub fn io_tensors(&self) -> Result<Vec<EngineTensor>, EngineError> {
        let mut count = 0i32;
        // SAFETY: live engine, valid out-pointer.
        call(|err, len| unsafe {
            ffi::posed_trt_engine_io_count(self.raw.as_ptr(), &mut count, err, len)
        })
        .map_err(trt_error("getNbIOTensors"))?;
        let mut tensors = Vec::with_capacity(usize::try_from(count).unwrap_or(0));
        for index in 0..count {
            let mut info = ffi::TensorInfo::zeroed();
            // SAFETY: live engine, index in range, `info` is a valid out-pointer.
            call(|err, len| unsafe {
                ffi::posed_trt_engine_io_info(self.raw.as_ptr(), index, &mut info, err, len)
            })
            .map_err(trt_error("getIOTensorName"))?;
            // SAFETY: the shim NUL-terminates `name` within MAX_NAME bytes (and it started zeroed).
            let name = unsafe { CStr::from_ptr(info.name.as_ptr()) }
                .to_string_lossy()
                .into_owned();
            let rank = usize::try_from(info.rank).unwrap_or(0).min(ffi::MAX_DIMS);
            tensors.push(EngineTensor {
                name,
                is_input: info.is_input != 0,
                dtype: TrtDataType::from_code(info.dtype),
                format: info.format,
                dims: info.dims[..rank].to_vec(),
            });
        }
        Ok(tensors)
    }

    /// A new execution context (TensorRT allocates its activation memory here).
    pub fn create_context(self: &Arc<Self>) -> Result<Context, EngineError> {
        let _guard = self
            .context_lock
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut raw = ptr::null_mut();
        // SAFETY: live engine, valid out-pointer; creation is serialised by the lock.
        call(|err, len| unsafe {
            ffi::posed_trt_context_create(self.raw.as_ptr(), &mut raw, err, len)
        })
        .map_err(trt_error("createExecutionContext"))?;
        let raw = NonNull::new(raw).ok_or_else(|| EngineError::TensorRt {
            call: "createExecutionContext",
            message: "the shim returned no context".to_owned(),
        })?;
        Ok(Context {
            raw,
            _engine: Arc::clone(self),
        })
    }
}

/// An execution context: used by one session, one thread at a time.
pub struct Context {
    raw: NonNull<ffi::RawContext>,
    _engine: Arc<Engine>,
}

// SAFETY: an IExecutionContext may move between threads; all its methods take &mut self
// here (or &self for a pure query), so it is never used from two threads at once.
unsafe impl Send for Context {}

impl Drop for Context {
    fn drop(&mut self) {
        // SAFETY: created by posed_trt_context_create, destroyed once, before its engine
        // (which the Arc keeps alive).
        unsafe { ffi::posed_trt_context_destroy(self.raw.as_ptr()) }
    }
}

impl Context {
    /// The input's shape for the next enqueue.
    pub fn set_input_shape(&mut self, name: &CStr, dims: &[i64]) -> Result<(), EngineError> {
        let rank = i32::try_from(dims.len()).unwrap_or(i32::MAX);
        // SAFETY: live context, NUL-terminated name, `dims` valid for `rank` values.
        call(|err, len| unsafe {
            ffi::posed_trt_context_set_input_shape(
                self.raw.as_ptr(),
                name.as_ptr(),
                rank,
                dims.as_ptr(),
                err,
                len,
            )
        })
        .map_err(trt_error("setInputShape"))
    }

    /// Binds device memory to a tensor for every following enqueue.
    ///
    /// # Safety
    ///
    /// `device_ptr` must be device memory of at least `capacity_bytes` bytes, in the
    /// context's CUDA context, that stays allocated until this context is dropped or the
    /// tensor is bound elsewhere.
    pub unsafe fn bind(
        &mut self,
        name: &CStr,
        device_ptr: *mut c_void,
        capacity_bytes: u64,
        is_output: bool,
    ) -> Result<(), EngineError> {
        // SAFETY: live context, NUL-terminated name; the caller vouches for the memory.
        call(|err, len| unsafe {
            ffi::posed_trt_context_bind(
                self.raw.as_ptr(),
                name.as_ptr(),
                device_ptr,
                capacity_bytes,
                i32::from(is_output),
                err,
                len,
            )
        })
        .map_err(trt_error("setTensorAddress"))
    }

    /// Enqueues one inference on `stream`.
    ///
    /// # Safety
    ///
    /// `stream` must be a live CUDA stream of the context the bound buffers belong to, and
    /// the bound buffers must not be used by anything else until the stream is synchronised.
    pub unsafe fn enqueue(&mut self, stream: *mut c_void) -> Result<(), EngineError> {
        // SAFETY: live context; the caller vouches for the stream and buffers.
        call(|err, len| unsafe {
            ffi::posed_trt_context_enqueue(self.raw.as_ptr(), stream, err, len)
        })
        .map_err(trt_error("enqueueV3"))
    }

    /// A tensor's current shape: (rank, dimensions), -1 where not yet known.
    pub fn tensor_shape(&self, name: &CStr) -> Result<(usize, [i64; ffi::MAX_DIMS]), EngineError> {
        let mut rank = 0i32;
        let mut dims = [0i64; ffi::MAX_DIMS];
        // SAFETY: live context, NUL-terminated name, out-pointers valid (dims holds MAX_DIMS).
        call(|err, len| unsafe {
            ffi::posed_trt_context_tensor_shape(
                self.raw.as_ptr(),
                name.as_ptr(),
                &mut rank,
                dims.as_mut_ptr(),
                err,
                len,
            )
        })
        .map_err(trt_error("getTensorShape"))?;
        Ok((usize::try_from(rank).unwrap_or(0).min(ffi::MAX_DIMS), dims))
    }
}
