//! Declarations of the shim's C ABI (`engines/shim/posed_trt_shim.h`). Only compiled when
//! build.rs compiled the shim (`cfg(posed_trt_shim)`). The structs mirror the header's;
//! [`super::shim::Library::open`] compares their sizes with the shim's own.

use std::ffi::{c_char, c_void};

/// `POSED_TRT_MAX_DIMS`.
pub const MAX_DIMS: usize = 8;
/// `POSED_TRT_MAX_NAME`.
pub const MAX_NAME: usize = 256;

pub const OK: i32 = 0;
pub const ERR_CANCELLED: i32 = 8;

pub const PRECISION_FP32: i32 = 0;
pub const PRECISION_FP16: i32 = 1;
pub const PRECISION_INT8: i32 = 2;

pub const PROGRESS_PHASE_START: i32 = 0;
pub const PROGRESS_STEP: i32 = 1;
pub const PROGRESS_PHASE_FINISH: i32 = 2;

/// `posed_trt_library`.
#[repr(C)]
pub struct RawLibrary {
    _opaque: [u8; 0],
}
/// `posed_trt_blob`.
#[repr(C)]
pub struct RawBlob {
    _opaque: [u8; 0],
}
/// `posed_trt_engine`.
#[repr(C)]
pub struct RawEngine {
    _opaque: [u8; 0],
}
/// `posed_trt_context`.
#[repr(C)]
pub struct RawContext {
    _opaque: [u8; 0],
}

pub type LogFn = extern "C" fn(severity: i32, message: *const c_char);
pub type ProgressFn = extern "C" fn(
    user: *mut c_void,
    event: i32,
    phase: *const c_char,
    parent: *const c_char,
    step: i32,
    nb_steps: i32,
) -> i32;

/// `posed_trt_build_params`.
#[repr(C)]
pub struct BuildParams {
    pub onnx: *const c_void,
    pub onnx_len: usize,
    pub onnx_path: *const c_char,
    pub precision: i32,
    pub dla_core: i32,
    pub workspace_bytes: u64,
    pub input_name: *const c_char,
    pub rank: i32,
    pub min_dims: [i64; MAX_DIMS],
    pub opt_dims: [i64; MAX_DIMS],
    pub max_dims: [i64; MAX_DIMS],
    pub output_names: *const *const c_char,
    pub output_count: i32,
}

/// `posed_trt_tensor_info`.
#[repr(C)]
pub struct TensorInfo {
    pub name: [c_char; MAX_NAME],
    pub is_input: i32,
    pub dtype: i32,
    pub format: i32,
    pub rank: i32,
    pub dims: [i64; MAX_DIMS],
    pub profile_rank: i32,
    pub profile_min: [i64; MAX_DIMS],
    pub profile_opt: [i64; MAX_DIMS],
    pub profile_max: [i64; MAX_DIMS],
}

impl TensorInfo {
    pub fn zeroed() -> TensorInfo {
        TensorInfo {
            name: [0; MAX_NAME],
            is_input: 0,
            dtype: 0,
            format: 0,
            rank: 0,
            dims: [0; MAX_DIMS],
            profile_rank: 0,
            profile_min: [0; MAX_DIMS],
            profile_opt: [0; MAX_DIMS],
            profile_max: [0; MAX_DIMS],
        }
    }
}

unsafe extern "C" {
    pub fn posed_trt_shim_version() -> u32;
    pub fn posed_trt_struct_size(which: i32) -> usize;
    pub fn posed_trt_header_version() -> i32;
    pub fn posed_trt_set_log_callback(callback: Option<LogFn>);
    pub fn posed_trt_library_open(
        out: *mut *mut RawLibrary,
        err: *mut c_char,
        err_len: usize,
    ) -> i32;
    pub fn posed_trt_library_version(library: *const RawLibrary) -> i32;
    pub fn posed_trt_library_close(library: *mut RawLibrary);
    pub fn posed_trt_build_serialized(
        library: *const RawLibrary,
        params: *const BuildParams,
        progress: Option<ProgressFn>,
        progress_user: *mut c_void,
        out: *mut *mut RawBlob,
        err: *mut c_char,
        err_len: usize,
    ) -> i32;
    pub fn posed_trt_blob_data(blob: *const RawBlob) -> *const c_void;
    pub fn posed_trt_blob_size(blob: *const RawBlob) -> usize;
    pub fn posed_trt_blob_destroy(blob: *mut RawBlob);
    pub fn posed_trt_engine_deserialize(
        library: *const RawLibrary,
        data: *const c_void,
        len: usize,
        dla_core: i32,
        out: *mut *mut RawEngine,
        err: *mut c_char,
        err_len: usize,
    ) -> i32;
    pub fn posed_trt_engine_destroy(engine: *mut RawEngine);
    pub fn posed_trt_engine_io_count(
        engine: *const RawEngine,
        out: *mut i32,
        err: *mut c_char,
        err_len: usize,
    ) -> i32;
    pub fn posed_trt_engine_io_info(
        engine: *const RawEngine,
        index: i32,
        out: *mut TensorInfo,
        err: *mut c_char,
        err_len: usize,
    ) -> i32;
    pub fn posed_trt_context_create(
        engine: *mut RawEngine,
        out: *mut *mut RawContext,
        err: *mut c_char,
        err_len: usize,
    ) -> i32;
    pub fn posed_trt_context_destroy(context: *mut RawContext);
    pub fn posed_trt_context_set_input_shape(
        context: *mut RawContext,
        name: *const c_char,
        rank: i32,
        dims: *const i64,
        err: *mut c_char,
        err_len: usize,
    ) -> i32;
    pub fn posed_trt_context_bind(
        context: *mut RawContext,
        name: *const c_char,
        device_ptr: *mut c_void,
        capacity_bytes: u64,
        is_output: i32,
        err: *mut c_char,
        err_len: usize,
    ) -> i32;
    pub fn posed_trt_context_enqueue(
        context: *mut RawContext,
        stream: *mut c_void,
        err: *mut c_char,
        err_len: usize,
    ) -> i32;
    pub fn posed_trt_context_tensor_shape(
        context: *const RawContext,
        name: *const c_char,
        rank: *mut i32,
        dims: *mut i64,
        err: *mut c_char,
        err_len: usize,
    ) -> i32;
}
