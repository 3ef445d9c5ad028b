// posed_trt_shim.cpp: posed's thin C ABI over TensorRT (8.6 and 10.x).
//
// Links no TensorRT symbol. libnvinfer and libnvonnxparser are dlopen()ed at run time and
// only their C entry points are resolved with dlsym():
//
//   createInferBuilder_INTERNAL   (libnvinfer, all versions posed supports)
//   createInferRuntime_INTERNAL   (libnvinfer)
//   getInferLibVersion            (libnvinfer)
//   createNvOnnxParser_INTERNAL   (libnvonnxparser)
//
// These are what TensorRT's own inline createInferBuilder() / createInferRuntime() /
// nvonnxparser::createParser() call. Everything after that goes through the C++ virtual
// interfaces (IBuilder, INetworkDefinition, ...), whose methods are inline wrappers around
// virtual calls, so nothing here needs the library at link time.
//
// One source serves TensorRT 8.6 and 10.x: every call below exists in both (the
// name-based I/O API, setMemoryPoolLimit, enqueueV3: TensorRT 8.5+), except the progress
// monitor and the output allocator's async reallocation, which are TensorRT 10 only and
// sit behind `#if NV_TENSORRT_MAJOR >= 10`. Each call is annotated with the version that
// introduced it. A shim compiled against one major version drives only that major
// version's library (the virtual tables differ between majors), and only a library at
// least as new as its headers (TensorRT keeps the ABI forward-compatible within a major
// version): posed_trt_library_open() checks both.

#include "posed_trt_shim.h"

#include <NvInfer.h>
#include <NvOnnxParser.h>
#include <dlfcn.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <exception>
#include <memory>
#include <mutex>
#include <new>
#include <string>
#include <type_traits>
#include <vector>

#if !defined(NV_TENSORRT_MAJOR) || !defined(NV_TENSORRT_MINOR) || !defined(NV_TENSORRT_PATCH)
#error "NvInferVersion.h did not define the TensorRT version"
#endif
#if NV_TENSORRT_MAJOR < 8 || (NV_TENSORRT_MAJOR == 8 && NV_TENSORRT_MINOR < 6)
#error "posed's TensorRT shim needs TensorRT 8.6 or newer headers"
#endif

namespace {

using nvinfer1::BuilderFlag;
using nvinfer1::DataType;
using nvinfer1::DeviceType;
using nvinfer1::Dims;
using nvinfer1::ICudaEngine;
using nvinfer1::IExecutionContext;
using nvinfer1::IHostMemory;
using nvinfer1::IBuilder;
using nvinfer1::IBuilderConfig;
using nvinfer1::ILogger;
using nvinfer1::INetworkDefinition;
using nvinfer1::IOptimizationProfile;
using nvinfer1::IRuntime;
using nvinfer1::ITensor;
using nvinfer1::LayerType;
using nvinfer1::MemoryPoolType;
using nvinfer1::OptProfileSelector;
using nvinfer1::TensorIOMode;

constexpr int32_t kHeaderVersion = NV_TENSORRT_MAJOR * 10000 + NV_TENSORRT_MINOR * 100 + NV_TENSORRT_PATCH;

// The version argument of the *_INTERNAL entry points: what TensorRT's own inline
// factories pass (NV_TENSORRT_VERSION changed encoding in 10.0; the macro is right for the
// headers in use).
constexpr int32_t kCreateVersion = static_cast<int32_t>(NV_TENSORRT_VERSION);

using CreateFn = void* (*)(void* logger, int32_t version);
using CreateParserFn = void* (*)(void* network, void* logger, int32_t version);
using VersionFn = int32_t (*)();

// ---- Messages ---------------------------------------------------------------------------

void write_message(char* err, size_t err_len, std::string const& message) noexcept {
    if (err == nullptr || err_len == 0) {
        return;
    }
    size_t const n = std::min(err_len - 1, message.size());
    std::memcpy(err, message.data(), n);
    err[n] = '\0';
}

int32_t fail(char* err, size_t err_len, int32_t code, std::string const& message) noexcept {
    write_message(err, err_len, message);
    return code;
}

// For catch blocks: never let an exception cross the C ABI.
int32_t fail_exception(char* err, size_t err_len, char const* call) noexcept {
    try {
        throw;
    } catch (std::bad_alloc const&) {
        write_message(err, err_len, std::string(call) + ": out of host memory");
    } catch (std::exception const& e) {
        write_message(err, err_len, std::string(call) + ": " + e.what());
    } catch (...) {
        write_message(err, err_len, std::string(call) + ": unknown C++ exception");
    }
    return POSED_TRT_ERR_INTERNAL;
}

// ---- Logger -------------------------------------------------------------------------------

std::atomic<posed_trt_log_fn> g_log_callback{nullptr};
std::mutex g_last_error_mutex;
std::string g_last_error;  // the last error TensorRT logged, for the next failure message

// TensorRT 8.6 and 10: ILogger::log(Severity, AsciiChar const*) noexcept.
class Logger final : public ILogger {
public:
    void log(Severity severity, char const* msg) noexcept override {
        char const* text = msg != nullptr ? msg : "";
        if (severity == Severity::kERROR || severity == Severity::kINTERNAL_ERROR) {
            try {
                std::lock_guard<std::mutex> lock(g_last_error_mutex);
                g_last_error = text;
            } catch (...) {
            }
        }
        posed_trt_log_fn const callback = g_log_callback.load();
        if (callback != nullptr) {
            callback(static_cast<int32_t>(severity), text);
        }
    }
};

// Static storage: outlives every TensorRT object (TensorRT keeps the first logger it is
// given for the whole process).
Logger g_logger;

// What TensorRT's own factories pass as the `logger` argument: an ILogger*, as void*.
void* logger_arg() noexcept {
    return static_cast<ILogger*>(&g_logger);
}

void clear_last_error() noexcept {
    try {
        std::lock_guard<std::mutex> lock(g_last_error_mutex);
        g_last_error.clear();
    } catch (...) {
    }
}

// `what`, plus TensorRT's last logged error when there is one.
std::string with_log(std::string what) {
    std::lock_guard<std::mutex> lock(g_last_error_mutex);
    if (!g_last_error.empty()) {
        what += ": ";
        what += g_last_error;
    } else {
        what += " (TensorRT logged no error; see its warnings in the log)";
    }
    return what;
}

// ---- Helpers ------------------------------------------------------------------------------

template <typename T>
struct Deleter {
    void operator()(T* p) const noexcept {
        // TensorRT 8.0+: objects are released with delete (destroy() is deprecated in 8.x
        // and gone in 10).
        delete p;
    }
};
template <typename T>
using Owned = std::unique_ptr<T, Deleter<T>>;

std::string version_string(int32_t v) {
    return std::to_string(v / 10000) + "." + std::to_string((v / 100) % 100) + "." + std::to_string(v % 100);
}

// getInferLibVersion(): major * 1000 + minor * 100 + patch up to 8.x,
// major * 10000 + minor * 100 + patch from 10.0. Normalised to the latter.
int32_t normalise_lib_version(int32_t v) {
    if (v >= 100000) {
        return v;
    }
    int32_t const major = v / 1000;
    int32_t const minor = (v % 1000) / 100;
    int32_t const patch = v % 100;
    return major * 10000 + minor * 100 + patch;
}

bool to_dims(int32_t rank, int64_t const* values, Dims& out) {
    if (rank < 0 || rank > Dims::MAX_DIMS || rank > POSED_TRT_MAX_DIMS) {
        return false;
    }
    out = Dims{};
    out.nbDims = rank;
    using Extent = std::remove_reference_t<decltype(out.d[0])>;  // int32_t in 8.6, int64_t in 10
    for (int32_t i = 0; i < rank; ++i) {
        out.d[i] = static_cast<Extent>(values[i]);
    }
    return true;
}

void from_dims(Dims const& dims, int32_t* rank, int64_t* out) {
    int32_t const n = std::max(0, std::min<int32_t>(dims.nbDims, POSED_TRT_MAX_DIMS));
    *rank = dims.nbDims < 0 ? -1 : n;
    for (int32_t i = 0; i < POSED_TRT_MAX_DIMS; ++i) {
        out[i] = i < n ? static_cast<int64_t>(dims.d[i]) : 0;
    }
}

std::string dims_string(int32_t rank, int64_t const* values) {
    std::string s = "[";
    for (int32_t i = 0; i < rank; ++i) {
        if (i > 0) {
            s += ", ";
        }
        s += std::to_string(values[i]);
    }
    return s + "]";
}

#if NV_TENSORRT_MAJOR >= 10
// TensorRT 10.0+: IProgressMonitor, attached with IBuilderConfig::setProgressMonitor.
// TensorRT may call it from more than one thread; the Rust callback is Sync.
class ProgressMonitor final : public nvinfer1::IProgressMonitor {
public:
    ProgressMonitor(posed_trt_progress_fn callback, void* user) : mCallback(callback), mUser(user) {}

    void phaseStart(char const* phaseName, char const* parentPhase, int32_t nbSteps) noexcept override {
        mCallback(mUser, POSED_TRT_PROGRESS_PHASE_START, phaseName != nullptr ? phaseName : "",
                  parentPhase != nullptr ? parentPhase : "", 0, nbSteps);
    }

    bool stepComplete(char const* phaseName, int32_t step) noexcept override {
        int32_t const keep_going =
            mCallback(mUser, POSED_TRT_PROGRESS_STEP, phaseName != nullptr ? phaseName : "", "", step, 0);
        if (keep_going == 0) {
            mCancelled.store(true);
            return false;
        }
        return true;
    }

    void phaseFinish(char const* phaseName) noexcept override {
        mCallback(mUser, POSED_TRT_PROGRESS_PHASE_FINISH, phaseName != nullptr ? phaseName : "", "", 0, 0);
    }

    bool cancelled() const noexcept { return mCancelled.load(); }

private:
    posed_trt_progress_fn mCallback;
    void* mUser;
    std::atomic<bool> mCancelled{false};
};
#endif

// Hands TensorRT one preallocated device buffer for an output and records the shape it
// reports. TensorRT 8.5+: IOutputAllocator; 10.0 added reallocateOutputAsync (the
// synchronous reallocateOutput is deprecated there).
class OutputBinding final : public nvinfer1::IOutputAllocator {
public:
    std::string name;
    void* ptr = nullptr;
    uint64_t capacity = 0;
    bool notified = false;
    Dims shape{};
    uint64_t refused_size = 0;  // nonzero: TensorRT asked for more than `capacity`

#if NV_TENSORRT_MAJOR >= 10
    void* reallocateOutputAsync(char const* /*tensorName*/, void* /*currentMemory*/, uint64_t size,
                                uint64_t alignment, cudaStream_t /*stream*/) noexcept override {
        return give(size, alignment);
    }
#else
    void* reallocateOutput(char const* /*tensorName*/, void* /*currentMemory*/, uint64_t size,
                           uint64_t alignment) noexcept override {
        return give(size, alignment);
    }
#endif

    void notifyShape(char const* /*tensorName*/, Dims const& dims) noexcept override {
        shape = dims;
        notified = true;
    }

private:
    void* give(uint64_t size, uint64_t alignment) noexcept {
        bool const aligned = alignment == 0 || reinterpret_cast<uintptr_t>(ptr) % alignment == 0;
        if (size > capacity || !aligned) {
            refused_size = size;
            return nullptr;
        }
        return ptr;
    }
};

}  // namespace

// ---- Opaque handle types --------------------------------------------------------------------

struct posed_trt_library {
    void* nvinfer = nullptr;
    void* onnxparser = nullptr;  // NULL: no parser installed (deserialising still works)
    CreateFn create_builder = nullptr;
    CreateFn create_runtime = nullptr;
    CreateParserFn create_parser = nullptr;
    int32_t version = 0;  // normalised getInferLibVersion()
    std::string parser_error;
};

struct posed_trt_blob {
    Owned<IHostMemory> memory;
};

struct posed_trt_engine {
    // Declaration order is destruction order reversed: the engine goes before its runtime.
    Owned<IRuntime> runtime;
    Owned<ICudaEngine> engine;
};

struct posed_trt_context {
    // The allocators must outlive the context that points at them: declared first.
    std::vector<std::unique_ptr<OutputBinding>> outputs;
    Owned<IExecutionContext> context;

    OutputBinding const* find(char const* name) const {
        for (auto const& o : outputs) {
            if (o->name == name) {
                return o.get();
            }
        }
        return nullptr;
    }
};

// ---- Shim and library -------------------------------------------------------------------------

extern "C" uint32_t posed_trt_shim_version(void) {
    return POSED_TRT_SHIM_VERSION;
}

extern "C" size_t posed_trt_struct_size(int32_t which) {
    switch (which) {
    case 0:
        return sizeof(posed_trt_build_params);
    case 1:
        return sizeof(posed_trt_tensor_info);
    default:
        return 0;
    }
}

extern "C" int32_t posed_trt_header_version(void) {
    return kHeaderVersion;
}

extern "C" void posed_trt_set_log_callback(posed_trt_log_fn callback) {
    g_log_callback.store(callback);
}

extern "C" int32_t posed_trt_library_open(posed_trt_library** out, char* err, size_t err_len) {
    if (out == nullptr) {
        return fail(err, err_len, POSED_TRT_ERR_INVALID_ARGUMENT, "posed_trt_library_open: out is NULL");
    }
    *out = nullptr;
    try {
        std::string const major = std::to_string(NV_TENSORRT_MAJOR);
        std::string const soname = "libnvinfer.so." + major;
        dlerror();
        void* nvinfer = dlopen(soname.c_str(), RTLD_NOW | RTLD_LOCAL);
        if (nvinfer == nullptr) {
            char const* reason = dlerror();
            std::string const why = reason != nullptr ? reason : "no reason given";
            // The other supported major version may be installed: say so rather than
            // "not found".
            char const* const others[] = {"libnvinfer.so.10", "libnvinfer.so.8"};
            for (char const* other : others) {
                if (soname == other) {
                    continue;
                }
                void* handle = dlopen(other, RTLD_NOW | RTLD_LOCAL);
                if (handle == nullptr) {
                    continue;
                }
                auto version = reinterpret_cast<VersionFn>(dlsym(handle, "getInferLibVersion"));
                std::string found = version != nullptr ? version_string(normalise_lib_version(version())) : "?";
                dlclose(handle);
                return fail(err, err_len, POSED_TRT_ERR_VERSION,
                            std::string("found ") + other + " (TensorRT " + found +
                                ") but posed's TensorRT shim was compiled against TensorRT " +
                                version_string(kHeaderVersion) + " headers, which need " + soname +
                                ": rebuild posed against the installed TensorRT's headers");
            }
            return fail(err, err_len, POSED_TRT_ERR_LIBRARY_NOT_FOUND,
                        "libnvinfer.so.10 or .so.8 not found: install TensorRT (JetPack) (dlopen " + soname +
                            ": " + why + ")");
        }
        auto library = std::make_unique<posed_trt_library>();
        library->nvinfer = nvinfer;
        auto symbol = [&](char const* name) -> void* {
            dlerror();
            return dlsym(nvinfer, name);
        };
        auto get_version = reinterpret_cast<VersionFn>(symbol("getInferLibVersion"));
        library->create_builder = reinterpret_cast<CreateFn>(symbol("createInferBuilder_INTERNAL"));
        library->create_runtime = reinterpret_cast<CreateFn>(symbol("createInferRuntime_INTERNAL"));
        if (get_version == nullptr || library->create_builder == nullptr || library->create_runtime == nullptr) {
            return fail(err, err_len, POSED_TRT_ERR_SYMBOL,
                        soname + " lacks getInferLibVersion, createInferBuilder_INTERNAL or "
                                 "createInferRuntime_INTERNAL: not a TensorRT library posed can use");
        }
        library->version = normalise_lib_version(get_version());
        int32_t const lib_major = library->version / 10000;
        if (lib_major != NV_TENSORRT_MAJOR || library->version < kHeaderVersion) {
            return fail(err, err_len, POSED_TRT_ERR_VERSION,
                        soname + " is TensorRT " + version_string(library->version) +
                            ", but posed's TensorRT shim was compiled against TensorRT " +
                            version_string(kHeaderVersion) +
                            " headers and needs that version or a newer one of the same major version");
        }
        std::string const parser_soname = "libnvonnxparser.so." + major;
        dlerror();
        void* parser = dlopen(parser_soname.c_str(), RTLD_NOW | RTLD_LOCAL);
        if (parser == nullptr) {
            char const* reason = dlerror();
            library->parser_error = parser_soname + " not found (" + (reason != nullptr ? reason : "") +
                                    "): install TensorRT's ONNX parser to build engines (prebuilt engines "
                                    "in the cache still load)";
        } else {
            library->onnxparser = parser;
            dlerror();
            library->create_parser = reinterpret_cast<CreateParserFn>(dlsym(parser, "createNvOnnxParser_INTERNAL"));
            if (library->create_parser == nullptr) {
                library->parser_error = parser_soname + " lacks createNvOnnxParser_INTERNAL";
            }
        }
        *out = library.release();
        return POSED_TRT_OK;
    } catch (...) {
        return fail_exception(err, err_len, "posed_trt_library_open");
    }
}

extern "C" int32_t posed_trt_library_version(posed_trt_library const* library) {
    return library != nullptr ? library->version : 0;
}

extern "C" void posed_trt_library_close(posed_trt_library* library) {
    // No dlclose(): TensorRT registers process-wide state (plugins, the logger) and may have
    // started threads; unloading it while the process runs is not safe.
    delete library;
}

extern "C" int32_t posed_trt_dla_core_count(posed_trt_library const* library, int32_t* out, char* err,
                                            size_t err_len) {
    if (library == nullptr || out == nullptr) {
        return fail(err, err_len, POSED_TRT_ERR_INVALID_ARGUMENT, "posed_trt_dla_core_count: NULL argument");
    }
    try {
        clear_last_error();
        Owned<IBuilder> builder{static_cast<IBuilder*>(library->create_builder(logger_arg(), kCreateVersion))};
        if (!builder) {
            return fail(err, err_len, POSED_TRT_ERR_RUNTIME, with_log("createInferBuilder failed"));
        }
        *out = builder->getNbDLACores();  // TensorRT 5+
        return POSED_TRT_OK;
    } catch (...) {
        return fail_exception(err, err_len, "posed_trt_dla_core_count");
    }
}

// ---- Building --------------------------------------------------------------------------------

extern "C" int32_t posed_trt_build_serialized(posed_trt_library const* library, posed_trt_build_params const* params,
                                              posed_trt_progress_fn progress, void* progress_user,
                                              posed_trt_blob** out, char* err, size_t err_len) {
    if (library == nullptr || params == nullptr || out == nullptr || params->onnx == nullptr ||
        params->input_name == nullptr || (params->output_count > 0 && params->output_names == nullptr)) {
        return fail(err, err_len, POSED_TRT_ERR_INVALID_ARGUMENT, "posed_trt_build_serialized: NULL argument");
    }
    *out = nullptr;
    try {
        if (library->create_parser == nullptr) {
            return fail(err, err_len, POSED_TRT_ERR_LIBRARY_NOT_FOUND, library->parser_error);
        }
        Dims min_dims{};
        Dims opt_dims{};
        Dims max_dims{};
        if (params->rank < 1 || !to_dims(params->rank, params->min_dims, min_dims) ||
            !to_dims(params->rank, params->opt_dims, opt_dims) || !to_dims(params->rank, params->max_dims, max_dims)) {
            return fail(err, err_len, POSED_TRT_ERR_INVALID_ARGUMENT,
                        "optimisation profile rank " + std::to_string(params->rank) + " is not 1 to " +
                            std::to_string(POSED_TRT_MAX_DIMS));
        }
        clear_last_error();

        // TensorRT 5+: createInferBuilder_INTERNAL (through dlsym).
        Owned<IBuilder> builder{static_cast<IBuilder*>(library->create_builder(logger_arg(), kCreateVersion))};
        if (!builder) {
            return fail(err, err_len, POSED_TRT_ERR_BUILD, with_log("createInferBuilder failed"));
        }
        // Explicit batch: a flag up to 8.6, the only mode (flag deprecated) from 10.0.
        uint32_t flags = 0;
#if NV_TENSORRT_MAJOR < 10
        flags = 1U << static_cast<uint32_t>(nvinfer1::NetworkDefinitionCreationFlag::kEXPLICIT_BATCH);
#endif
        Owned<INetworkDefinition> network{builder->createNetworkV2(flags)};  // TensorRT 6+
        if (!network) {
            return fail(err, err_len, POSED_TRT_ERR_BUILD, with_log("createNetworkV2 failed"));
        }
        // TensorRT 5+: createNvOnnxParser_INTERNAL (through dlsym).
        Owned<nvonnxparser::IParser> parser{static_cast<nvonnxparser::IParser*>(
            library->create_parser(network.get(), logger_arg(), NV_ONNX_PARSER_VERSION))};
        if (!parser) {
            return fail(err, err_len, POSED_TRT_ERR_PARSE, with_log("createNvOnnxParser failed"));
        }
        if (!parser->parse(params->onnx, params->onnx_len, params->onnx_path)) {  // TensorRT 7+
            std::string message = "the ONNX parser rejected the model";
            int32_t const n = parser->getNbErrors();
            for (int32_t i = 0; i < n && i < 5; ++i) {
                auto const* e = parser->getError(i);
                if (e == nullptr) {
                    continue;
                }
                message += i == 0 ? ": " : "; ";
                message += "node " + std::to_string(e->node()) + ": " + (e->desc() != nullptr ? e->desc() : "");
            }
            if (n > 5) {
                message += "; and " + std::to_string(n - 5) + " more";
            }
            return fail(err, err_len, POSED_TRT_ERR_PARSE, message);
        }

        // Keep only the outputs posed reads (e.g. drop torchvision's `masks`).
        auto wanted = [&](char const* name) {
            for (int32_t i = 0; i < params->output_count; ++i) {
                if (params->output_names[i] != nullptr && std::strcmp(params->output_names[i], name) == 0) {
                    return true;
                }
            }
            return false;
        };
        for (int32_t i = network->getNbOutputs() - 1; i >= 0; --i) {
            ITensor* tensor = network->getOutput(i);
            if (tensor != nullptr && !wanted(tensor->getName())) {
                network->unmarkOutput(*tensor);  // TensorRT 6+
            }
        }
        for (int32_t i = 0; i < params->output_count; ++i) {
            bool found = false;
            for (int32_t j = 0; j < network->getNbOutputs(); ++j) {
                if (std::strcmp(network->getOutput(j)->getName(), params->output_names[i]) == 0) {
                    found = true;
                }
            }
            if (!found) {
                return fail(err, err_len, POSED_TRT_ERR_PARSE,
                            std::string("the parsed network has no output named `") + params->output_names[i] + "`");
            }
        }

        std::string inputs;
        bool input_found = false;
        for (int32_t i = 0; i < network->getNbInputs(); ++i) {
            char const* name = network->getInput(i)->getName();
            inputs += (i > 0 ? ", " : "") + std::string(name);
            input_found = input_found || std::strcmp(name, params->input_name) == 0;
        }
        if (!input_found || network->getNbInputs() != 1) {
            return fail(err, err_len, POSED_TRT_ERR_PARSE,
                        std::string("expected one input named `") + params->input_name +
                            "`, the parsed network has: " + inputs);
        }

        if (params->precision == POSED_TRT_PRECISION_INT8) {
            // posed does not calibrate: INT8 needs an explicitly quantised (Q/DQ) model.
            bool has_qdq = false;
            for (int32_t i = 0; i < network->getNbLayers() && !has_qdq; ++i) {
                LayerType const type = network->getLayer(i)->getType();
                has_qdq = type == LayerType::kQUANTIZE || type == LayerType::kDEQUANTIZE;  // TensorRT 8.0+
            }
            if (!has_qdq) {
                return fail(err, err_len, POSED_TRT_ERR_UNSUPPORTED,
                            "precision int8 needs an explicitly quantised ONNX model (QuantizeLinear / "
                            "DequantizeLinear nodes); this one has none and posed does not calibrate: "
                            "use fp16, or export a Q/DQ model");
            }
        }

#if NV_TENSORRT_MAJOR >= 10
        // Declared before the config so that it outlives the config that points at it.
        std::unique_ptr<ProgressMonitor> monitor;
        if (progress != nullptr) {
            monitor = std::make_unique<ProgressMonitor>(progress, progress_user);
        }
#else
        (void)progress;
        (void)progress_user;
#endif
        Owned<IBuilderConfig> config{builder->createBuilderConfig()};  // TensorRT 5+
        if (!config) {
            return fail(err, err_len, POSED_TRT_ERR_BUILD, with_log("createBuilderConfig failed"));
        }
        if (params->workspace_bytes > 0) {
            // TensorRT 8.4+ (setMaxWorkspaceSize is deprecated in 8.4 and gone in 10).
            config->setMemoryPoolLimit(MemoryPoolType::kWORKSPACE, static_cast<size_t>(params->workspace_bytes));
        }
        switch (params->precision) {
        case POSED_TRT_PRECISION_FP32:
            break;
        case POSED_TRT_PRECISION_FP16:
            config->setFlag(BuilderFlag::kFP16);
            break;
        case POSED_TRT_PRECISION_INT8:
            // Layers left unquantised may still run in half precision.
            config->setFlag(BuilderFlag::kINT8);
            config->setFlag(BuilderFlag::kFP16);
            break;
        default:
            return fail(err, err_len, POSED_TRT_ERR_INVALID_ARGUMENT,
                        "unknown precision code " + std::to_string(params->precision));
        }
        if (params->dla_core >= 0) {
            int32_t const cores = builder->getNbDLACores();
            if (params->dla_core >= cores) {
                return fail(err, err_len, POSED_TRT_ERR_UNSUPPORTED,
                            "DLA core " + std::to_string(params->dla_core) + " requested, this device has " +
                                std::to_string(cores) + " DLA core(s)");
            }
            config->setDefaultDeviceType(DeviceType::kDLA);  // TensorRT 5+
            config->setDLACore(params->dla_core);
            config->setFlag(BuilderFlag::kGPU_FALLBACK);  // layers DLA cannot run go to the GPU
        }

        IOptimizationProfile* profile = builder->createOptimizationProfile();  // TensorRT 6+; owned by the builder
        if (profile == nullptr ||
            !profile->setDimensions(params->input_name, OptProfileSelector::kMIN, min_dims) ||
            !profile->setDimensions(params->input_name, OptProfileSelector::kOPT, opt_dims) ||
            !profile->setDimensions(params->input_name, OptProfileSelector::kMAX, max_dims) ||
            config->addOptimizationProfile(profile) < 0) {
            return fail(err, err_len, POSED_TRT_ERR_BUILD,
                        with_log("optimisation profile for `" + std::string(params->input_name) + "` min " +
                                 dims_string(params->rank, params->min_dims) + " opt " +
                                 dims_string(params->rank, params->opt_dims) + " max " +
                                 dims_string(params->rank, params->max_dims) + " rejected"));
        }
#if NV_TENSORRT_MAJOR >= 10
        if (monitor) {
            config->setProgressMonitor(monitor.get());  // TensorRT 10.0+
        }
#endif

        // TensorRT 8.0+: buildSerializedNetwork (buildEngineWithConfig is gone in 10).
        Owned<IHostMemory> plan{builder->buildSerializedNetwork(*network, *config)};
        if (!plan || plan->size() == 0) {
#if NV_TENSORRT_MAJOR >= 10
            if (monitor && monitor->cancelled()) {
                return fail(err, err_len, POSED_TRT_ERR_CANCELLED, "engine build cancelled");
            }
#endif
            return fail(err, err_len, POSED_TRT_ERR_BUILD, with_log("buildSerializedNetwork failed"));
        }
        *out = new posed_trt_blob{std::move(plan)};
        return POSED_TRT_OK;
    } catch (...) {
        return fail_exception(err, err_len, "posed_trt_build_serialized");
    }
}

extern "C" void const* posed_trt_blob_data(posed_trt_blob const* blob) {
    return blob != nullptr && blob->memory ? blob->memory->data() : nullptr;
}

extern "C" size_t posed_trt_blob_size(posed_trt_blob const* blob) {
    return blob != nullptr && blob->memory ? blob->memory->size() : 0;
}

extern "C" void posed_trt_blob_destroy(posed_trt_blob* blob) {
    delete blob;
}

// ---- Engines ----------------------------------------------------------------------------------

extern "C" int32_t posed_trt_engine_deserialize(posed_trt_library const* library, void const* data, size_t len,
                                                int32_t dla_core, posed_trt_engine** out, char* err,
                                                size_t err_len) {
    if (library == nullptr || data == nullptr || out == nullptr) {
        return fail(err, err_len, POSED_TRT_ERR_INVALID_ARGUMENT, "posed_trt_engine_deserialize: NULL argument");
    }
    *out = nullptr;
    try {
        clear_last_error();
        auto engine = std::make_unique<posed_trt_engine>();
        // TensorRT 5+: createInferRuntime_INTERNAL (through dlsym).
        engine->runtime.reset(static_cast<IRuntime*>(library->create_runtime(logger_arg(), kCreateVersion)));
        if (!engine->runtime) {
            return fail(err, err_len, POSED_TRT_ERR_RUNTIME, with_log("createInferRuntime failed"));
        }
        if (dla_core >= 0) {
            engine->runtime->setDLACore(dla_core);  // TensorRT 5+
        }
        engine->engine.reset(engine->runtime->deserializeCudaEngine(data, len));  // two-argument form: 8.0+
        if (!engine->engine) {
            return fail(err, err_len, POSED_TRT_ERR_RUNTIME, with_log("deserializeCudaEngine failed"));
        }
        *out = engine.release();
        return POSED_TRT_OK;
    } catch (...) {
        return fail_exception(err, err_len, "posed_trt_engine_deserialize");
    }
}

extern "C" void posed_trt_engine_destroy(posed_trt_engine* engine) {
    delete engine;
}

extern "C" int32_t posed_trt_engine_io_count(posed_trt_engine const* engine, int32_t* out, char* err,
                                             size_t err_len) {
    if (engine == nullptr || out == nullptr) {
        return fail(err, err_len, POSED_TRT_ERR_INVALID_ARGUMENT, "posed_trt_engine_io_count: NULL argument");
    }
    *out = engine->engine->getNbIOTensors();  // TensorRT 8.5+ (noexcept)
    return POSED_TRT_OK;
}

extern "C" int32_t posed_trt_engine_io_info(posed_trt_engine const* engine, int32_t index,
                                            posed_trt_tensor_info* out, char* err, size_t err_len) {
    if (engine == nullptr || out == nullptr) {
        return fail(err, err_len, POSED_TRT_ERR_INVALID_ARGUMENT, "posed_trt_engine_io_info: NULL argument");
    }
    try {
        ICudaEngine const& e = *engine->engine;
        if (index < 0 || index >= e.getNbIOTensors()) {
            return fail(err, err_len, POSED_TRT_ERR_INVALID_ARGUMENT,
                        "I/O tensor index " + std::to_string(index) + " out of range");
        }
        *out = posed_trt_tensor_info{};
        char const* name = e.getIOTensorName(index);  // TensorRT 8.5+
        if (name == nullptr || std::strlen(name) >= POSED_TRT_MAX_NAME) {
            return fail(err, err_len, POSED_TRT_ERR_UNSUPPORTED,
                        "I/O tensor " + std::to_string(index) + " has no name or one longer than " +
                            std::to_string(POSED_TRT_MAX_NAME - 1) + " bytes");
        }
        std::strncpy(out->name, name, POSED_TRT_MAX_NAME - 1);
        out->is_input = e.getTensorIOMode(name) == TensorIOMode::kINPUT ? 1 : 0;  // TensorRT 8.5+
        out->dtype = static_cast<int32_t>(e.getTensorDataType(name));              // TensorRT 8.5+
        out->format = static_cast<int32_t>(e.getTensorFormat(name));               // TensorRT 8.5+
        from_dims(e.getTensorShape(name), &out->rank, out->dims);                   // TensorRT 8.5+
        if (out->is_input != 0 && e.getNbOptimizationProfiles() > 0) {              // TensorRT 6+
            int32_t rank = 0;
            from_dims(e.getProfileShape(name, 0, OptProfileSelector::kMIN), &out->profile_rank,
                      out->profile_min);  // name-based: TensorRT 8.5+
            from_dims(e.getProfileShape(name, 0, OptProfileSelector::kOPT), &rank, out->profile_opt);
            from_dims(e.getProfileShape(name, 0, OptProfileSelector::kMAX), &rank, out->profile_max);
        }
        return POSED_TRT_OK;
    } catch (...) {
        return fail_exception(err, err_len, "posed_trt_engine_io_info");
    }
}

// ---- Execution contexts -----------------------------------------------------------------------

extern "C" int32_t posed_trt_context_create(posed_trt_engine* engine, posed_trt_context** out, char* err,
                                            size_t err_len) {
    if (engine == nullptr || out == nullptr) {
        return fail(err, err_len, POSED_TRT_ERR_INVALID_ARGUMENT, "posed_trt_context_create: NULL argument");
    }
    *out = nullptr;
    try {
        clear_last_error();
        auto context = std::make_unique<posed_trt_context>();
        context->context.reset(engine->engine->createExecutionContext());  // TensorRT 5+
        if (!context->context) {
            return fail(err, err_len, POSED_TRT_ERR_RUNTIME,
                        with_log("createExecutionContext failed (out of device memory?)"));
        }
        *out = context.release();
        return POSED_TRT_OK;
    } catch (...) {
        return fail_exception(err, err_len, "posed_trt_context_create");
    }
}

extern "C" void posed_trt_context_destroy(posed_trt_context* context) {
    delete context;
}

extern "C" int32_t posed_trt_context_set_input_shape(posed_trt_context* context, char const* name, int32_t rank,
                                                     int64_t const* dims, char* err, size_t err_len) {
    if (context == nullptr || name == nullptr || dims == nullptr) {
        return fail(err, err_len, POSED_TRT_ERR_INVALID_ARGUMENT, "posed_trt_context_set_input_shape: NULL argument");
    }
    try {
        Dims shape{};
        if (!to_dims(rank, dims, shape)) {
            return fail(err, err_len, POSED_TRT_ERR_INVALID_ARGUMENT, "input rank " + std::to_string(rank));
        }
        if (!context->context->setInputShape(name, shape)) {  // TensorRT 8.5+
            return fail(err, err_len, POSED_TRT_ERR_INVALID_ARGUMENT,
                        with_log("setInputShape(`" + std::string(name) + "`, " + dims_string(rank, dims) +
                                 ") refused"));
        }
        return POSED_TRT_OK;
    } catch (...) {
        return fail_exception(err, err_len, "posed_trt_context_set_input_shape");
    }
}

extern "C" int32_t posed_trt_context_bind(posed_trt_context* context, char const* name, void* device_ptr,
                                          uint64_t capacity_bytes, int32_t is_output, char* err, size_t err_len) {
    if (context == nullptr || name == nullptr || device_ptr == nullptr) {
        return fail(err, err_len, POSED_TRT_ERR_INVALID_ARGUMENT, "posed_trt_context_bind: NULL argument");
    }
    try {
        if (!context->context->setTensorAddress(name, device_ptr)) {  // TensorRT 8.5+
            return fail(err, err_len, POSED_TRT_ERR_INVALID_ARGUMENT,
                        with_log("setTensorAddress(`" + std::string(name) + "`) refused"));
        }
        if (is_output != 0) {
            OutputBinding* binding = nullptr;
            for (auto& o : context->outputs) {
                if (o->name == name) {
                    binding = o.get();
                }
            }
            if (binding == nullptr) {
                context->outputs.push_back(std::make_unique<OutputBinding>());
                binding = context->outputs.back().get();
                binding->name = name;
            }
            binding->ptr = device_ptr;
            binding->capacity = capacity_bytes;
            if (!context->context->setOutputAllocator(name, binding)) {  // TensorRT 8.5+
                return fail(err, err_len, POSED_TRT_ERR_INVALID_ARGUMENT,
                            with_log("setOutputAllocator(`" + std::string(name) + "`) refused"));
            }
        }
        return POSED_TRT_OK;
    } catch (...) {
        return fail_exception(err, err_len, "posed_trt_context_bind");
    }
}

extern "C" int32_t posed_trt_context_enqueue(posed_trt_context* context, void* stream, char* err, size_t err_len) {
    if (context == nullptr) {
        return fail(err, err_len, POSED_TRT_ERR_INVALID_ARGUMENT, "posed_trt_context_enqueue: NULL context");
    }
    try {
        for (auto& o : context->outputs) {
            o->notified = false;
            o->refused_size = 0;
        }
        // TensorRT 8.5+: enqueueV3 (enqueueV2 and bindings are deprecated in 8.5, gone in 10).
        bool const ok = context->context->enqueueV3(static_cast<cudaStream_t>(stream));
        for (auto const& o : context->outputs) {
            if (o->refused_size > 0) {
                return fail(err, err_len, POSED_TRT_ERR_RUNTIME,
                            "output `" + o->name + "` needs " + std::to_string(o->refused_size) +
                                " bytes, its buffer holds " + std::to_string(o->capacity) +
                                " (raise the sidecar's max_detections?)");
            }
        }
        if (!ok) {
            return fail(err, err_len, POSED_TRT_ERR_RUNTIME, with_log("enqueueV3 failed"));
        }
        return POSED_TRT_OK;
    } catch (...) {
        return fail_exception(err, err_len, "posed_trt_context_enqueue");
    }
}

extern "C" int32_t posed_trt_context_tensor_shape(posed_trt_context const* context, char const* name, int32_t* rank,
                                                  int64_t* dims, char* err, size_t err_len) {
    if (context == nullptr || name == nullptr || rank == nullptr || dims == nullptr) {
        return fail(err, err_len, POSED_TRT_ERR_INVALID_ARGUMENT, "posed_trt_context_tensor_shape: NULL argument");
    }
    try {
        OutputBinding const* binding = context->find(name);
        if (binding != nullptr && binding->notified) {
            from_dims(binding->shape, rank, dims);
        } else {
            from_dims(context->context->getTensorShape(name), rank, dims);  // TensorRT 8.5+
        }
        if (*rank < 0) {
            return fail(err, err_len, POSED_TRT_ERR_INVALID_ARGUMENT, "no tensor named `" + std::string(name) + "`");
        }
        return POSED_TRT_OK;
    } catch (...) {
        return fail_exception(err, err_len, "posed_trt_context_tensor_shape");
    }
}
