/*
 * posed_trt_shim.h: the C ABI between posed (Rust) and TensorRT (C++).
 *
 * Plain C, POD types only. Every call that can fail returns a POSED_TRT_* status code and,
 * on failure, writes a NUL-terminated message into the caller's `err` buffer (truncated to
 * `err_len` bytes; `err` may be NULL). No call throws or lets a C++ exception escape.
 *
 * The shim links no TensorRT symbol: posed_trt_library_open() dlopen()s libnvinfer and
 * libnvonnxparser and resolves their four C entry points; everything else goes through
 * TensorRT's C++ virtual interfaces. See README.md beside this file for which TensorRT
 * API each call uses and since which version.
 *
 * Ownership: every handle a call creates is destroyed by the matching *_destroy call.
 * An engine must outlive the contexts made from it; the library must outlive everything.
 */
#ifndef POSED_TRT_SHIM_H
#define POSED_TRT_SHIM_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Version of this ABI and of the engine-building code behind it. Part of every engine
 * cache key: bump it whenever the shim builds engines differently. The Rust side checks
 * that the shim it links reports the version it was written for. */
#define POSED_TRT_SHIM_VERSION 1

/* Most dimensions a tensor has (nvinfer1::Dims::MAX_DIMS). */
#define POSED_TRT_MAX_DIMS 8
/* Longest tensor name, including the terminating NUL. */
#define POSED_TRT_MAX_NAME 256

/* Status codes. */
#define POSED_TRT_OK 0
#define POSED_TRT_ERR_LIBRARY_NOT_FOUND 1 /* libnvinfer / libnvonnxparser could not be dlopen()ed */
#define POSED_TRT_ERR_SYMBOL 2            /* a library lacks one of the entry points */
#define POSED_TRT_ERR_VERSION 3           /* the library's TensorRT does not match the headers */
#define POSED_TRT_ERR_INVALID_ARGUMENT 4  /* a NULL handle, a bad rank, an unknown tensor name */
#define POSED_TRT_ERR_PARSE 5             /* the ONNX parser rejected the model */
#define POSED_TRT_ERR_BUILD 6             /* the builder could not build the engine */
#define POSED_TRT_ERR_RUNTIME 7           /* deserialising, creating a context, enqueueing */
#define POSED_TRT_ERR_CANCELLED 8         /* the progress callback asked to stop */
#define POSED_TRT_ERR_UNSUPPORTED 9       /* e.g. INT8 without Q/DQ nodes, no such DLA core */
#define POSED_TRT_ERR_INTERNAL 10         /* an exception or allocation failure in the shim */

/* Precisions for posed_trt_build_params.precision. */
#define POSED_TRT_PRECISION_FP32 0
#define POSED_TRT_PRECISION_FP16 1
#define POSED_TRT_PRECISION_INT8 2

/* Progress events passed to posed_trt_progress_fn. */
#define POSED_TRT_PROGRESS_PHASE_START 0
#define POSED_TRT_PROGRESS_STEP 1
#define POSED_TRT_PROGRESS_PHASE_FINISH 2

/* Opaque handles. */
typedef struct posed_trt_library posed_trt_library;
typedef struct posed_trt_blob posed_trt_blob;
typedef struct posed_trt_engine posed_trt_engine;
typedef struct posed_trt_context posed_trt_context;

/* TensorRT's log messages: severity is nvinfer1::ILogger::Severity (0 internal error,
 * 1 error, 2 warning, 3 info, 4 verbose). Called from any thread TensorRT logs on. */
typedef void (*posed_trt_log_fn)(int32_t severity, const char* message);

/* Build progress (TensorRT 10's IProgressMonitor; never called with TensorRT 8.6).
 * `parent` is "" for a top-level phase. Return nonzero to continue, 0 to cancel. */
typedef int32_t (*posed_trt_progress_fn)(void* user, int32_t event, const char* phase,
                                         const char* parent, int32_t step, int32_t nb_steps);

/* What to build. Dimension arrays hold `rank` entries. */
typedef struct posed_trt_build_params {
    const void* onnx;       /* the ONNX file's bytes */
    size_t onnx_len;
    const char* onnx_path;  /* for external weights and messages; may be NULL */
    int32_t precision;      /* POSED_TRT_PRECISION_* */
    int32_t dla_core;       /* -1: GPU only; else the DLA core, with GPU fallback */
    uint64_t workspace_bytes; /* 0: TensorRT's default (the device's memory) */
    const char* input_name; /* the one input the optimisation profile is for */
    int32_t rank;
    int64_t min_dims[POSED_TRT_MAX_DIMS];
    int64_t opt_dims[POSED_TRT_MAX_DIMS];
    int64_t max_dims[POSED_TRT_MAX_DIMS];
    /* The outputs to keep (NUL-terminated names); every other network output is unmarked
     * so that the engine computes and binds only these. */
    const char* const* output_names;
    int32_t output_count;
} posed_trt_build_params;

/* One input or output of a deserialised engine. Dimensions are -1 where dynamic. */
typedef struct posed_trt_tensor_info {
    char name[POSED_TRT_MAX_NAME];
    int32_t is_input;  /* 1 input, 0 output */
    int32_t dtype;     /* nvinfer1::DataType */
    int32_t format;    /* nvinfer1::TensorFormat (0 = kLINEAR) */
    int32_t rank;
    int64_t dims[POSED_TRT_MAX_DIMS];
    /* Inputs only: optimisation profile 0 (rank 0 when there is none). */
    int32_t profile_rank;
    int64_t profile_min[POSED_TRT_MAX_DIMS];
    int64_t profile_opt[POSED_TRT_MAX_DIMS];
    int64_t profile_max[POSED_TRT_MAX_DIMS];
} posed_trt_tensor_info;

/* ---- Shim and library ------------------------------------------------------------ */

/* POSED_TRT_SHIM_VERSION of the compiled shim. */
uint32_t posed_trt_shim_version(void);

/* sizeof(posed_trt_build_params) (which = 0) or sizeof(posed_trt_tensor_info) (which = 1),
 * 0 otherwise: the Rust side checks its mirrors of these structs against them. */
size_t posed_trt_struct_size(int32_t which);

/* The TensorRT version of the headers the shim was compiled against, as
 * major * 10000 + minor * 100 + patch. */
int32_t posed_trt_header_version(void);

/* Where TensorRT's log messages go (NULL: dropped). Process-wide; TensorRT uses the
 * first logger it is given for the whole process, so the shim has exactly one. */
void posed_trt_set_log_callback(posed_trt_log_fn callback);

/* dlopen()s libnvinfer.so.<major> and libnvonnxparser.so.<major> for the headers' major
 * version and checks that the library is at least as new as the headers. */
int32_t posed_trt_library_open(posed_trt_library** out, char* err, size_t err_len);

/* The library's version (getInferLibVersion), as major * 10000 + minor * 100 + patch. */
int32_t posed_trt_library_version(const posed_trt_library* library);

/* Frees the handle. The libraries stay loaded: TensorRT objects may still refer to them. */
void posed_trt_library_close(posed_trt_library* library);

/* Number of DLA cores the builder sees (0 on GPUs without DLA). */
int32_t posed_trt_dla_core_count(const posed_trt_library* library, int32_t* out, char* err,
                                 size_t err_len);

/* ---- Building --------------------------------------------------------------------- */

/* Parses the ONNX model and builds a serialised engine for one optimisation profile.
 * Blocks for as long as the build takes (minutes on a Jetson). `progress` may be NULL. */
int32_t posed_trt_build_serialized(const posed_trt_library* library,
                                   const posed_trt_build_params* params,
                                   posed_trt_progress_fn progress, void* progress_user,
                                   posed_trt_blob** out, char* err, size_t err_len);

const void* posed_trt_blob_data(const posed_trt_blob* blob);
size_t posed_trt_blob_size(const posed_trt_blob* blob);
void posed_trt_blob_destroy(posed_trt_blob* blob);

/* ---- Engines ---------------------------------------------------------------------- */

/* Deserialises an engine (dla_core >= 0: the runtime's DLA core for DLA engines). */
int32_t posed_trt_engine_deserialize(const posed_trt_library* library, const void* data,
                                     size_t len, int32_t dla_core, posed_trt_engine** out,
                                     char* err, size_t err_len);
void posed_trt_engine_destroy(posed_trt_engine* engine);

/* Number of I/O tensors, and each one's name, direction, type, shape and profile. */
int32_t posed_trt_engine_io_count(const posed_trt_engine* engine, int32_t* out, char* err,
                                  size_t err_len);
int32_t posed_trt_engine_io_info(const posed_trt_engine* engine, int32_t index,
                                 posed_trt_tensor_info* out, char* err, size_t err_len);

/* ---- Execution contexts ----------------------------------------------------------- */

int32_t posed_trt_context_create(posed_trt_engine* engine, posed_trt_context** out, char* err,
                                 size_t err_len);
void posed_trt_context_destroy(posed_trt_context* context);

/* The input's shape for the next enqueue. */
int32_t posed_trt_context_set_input_shape(posed_trt_context* context, const char* name,
                                          int32_t rank, const int64_t* dims, char* err,
                                          size_t err_len);

/* Binds device memory to a tensor for every following enqueue. For an output it also
 * installs an output allocator that hands TensorRT this same buffer (never a new one) and
 * records the shape TensorRT reports, so data-dependent output shapes work too. */
int32_t posed_trt_context_bind(posed_trt_context* context, const char* name, void* device_ptr,
                               uint64_t capacity_bytes, int32_t is_output, char* err,
                               size_t err_len);

/* Enqueues one inference on `stream` (a cudaStream_t / CUstream). Does not wait. */
int32_t posed_trt_context_enqueue(posed_trt_context* context, void* stream, char* err,
                                  size_t err_len);

/* A tensor's current shape: the shape an output allocator was told during the last
 * enqueue if there was one, else the context's shape (-1 where not yet known: wait for the
 * stream and ask again). */
int32_t posed_trt_context_tensor_shape(const posed_trt_context* context, const char* name,
                                       int32_t* rank, int64_t* dims, char* err, size_t err_len);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* POSED_TRT_SHIM_H */
