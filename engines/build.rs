//! Compiles the TensorRT shim (`shim/posed_trt_shim.cpp`) when the `tensorrt` feature is on
//! and TensorRT's headers are found, and then sets `cfg(posed_trt_shim)`.
//!
//! Where the headers are looked for, in order:
//!
//! - NvInfer.h: `$TENSORRT_ROOT/include`, `$TENSORRT_INCLUDE_DIR`, then JetPack's and
//!   Debian's multiarch directory for the target (`/usr/include/aarch64-linux-gnu`,
//!   `/usr/include/x86_64-linux-gnu`), then `/usr/include` (native builds only).
//!   NvOnnxParser.h must sit beside it.
//! - cuda_runtime_api.h (TensorRT's headers include it): the TensorRT directory itself,
//!   `$CUDA_INCLUDE_DIR`, `$CUDA_ROOT/include`, `$CUDA_PATH/include`, then
//!   `/usr/local/cuda/targets/<arch>-linux/include`, `/usr/local/cuda/include` and
//!   `/usr/include`.
//!
//! Without the feature nothing is compiled. With the feature but without headers the
//! crate still builds: the TensorRT backend exists and reports itself unavailable at run
//! time, and a `cargo:warning` says so. The shim links no TensorRT library (it dlopen()s
//! libnvinfer at run time); it links libdl and the C++ standard library.

use std::env;
use std::path::{Path, PathBuf};

const SHIM_SOURCE: &str = "shim/posed_trt_shim.cpp";
const SHIM_HEADER: &str = "shim/posed_trt_shim.h";

fn main() {
    println!("cargo:rustc-check-cfg=cfg(posed_trt_shim)");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed={SHIM_SOURCE}");
    println!("cargo:rerun-if-changed={SHIM_HEADER}");
    for var in [
        "TENSORRT_ROOT",
        "TENSORRT_INCLUDE_DIR",
        "CUDA_ROOT",
        "CUDA_PATH",
        "CUDA_INCLUDE_DIR",
    ] {
        println!("cargo:rerun-if-env-changed={var}");
    }

    if env::var_os("CARGO_FEATURE_TENSORRT").is_none() {
        return;
    }

    let target_arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let native = env::var("HOST").ok() == env::var("TARGET").ok();

    let Some(trt_include) = find_tensorrt(&target_arch, native) else {
        println!(
            "cargo:warning=feature `tensorrt`: TensorRT headers (NvInfer.h) not found in \
             $TENSORRT_ROOT/include, $TENSORRT_INCLUDE_DIR or /usr/include/{target_arch}-linux-gnu; \
             the TensorRT shim is not compiled and the backend will report itself unavailable \
             at run time. Set TENSORRT_ROOT to build it."
        );
        return;
    };
    if !trt_include.join("NvOnnxParser.h").is_file() {
        println!(
            "cargo:warning=feature `tensorrt`: {} has NvInfer.h but not NvOnnxParser.h (JetPack: \
             install libnvonnxparsers-dev); the TensorRT shim is not compiled and the backend will \
             report itself unavailable at run time.",
            trt_include.display()
        );
        return;
    }
    let Some(cuda_include) = find_cuda(&trt_include, &target_arch, native) else {
        println!(
            "cargo:warning=feature `tensorrt`: found TensorRT headers in {} but not CUDA's \
             cuda_runtime_api.h (looked in $CUDA_INCLUDE_DIR, $CUDA_ROOT/include, $CUDA_PATH/include, \
             /usr/local/cuda/include); the TensorRT shim is not compiled and the backend will \
             report itself unavailable at run time.",
            trt_include.display()
        );
        return;
    };

    let mut build = cc::Build::new();
    build
        .cpp(true)
        .std("c++17")
        .file(SHIM_SOURCE)
        .include("shim")
        .warnings(true)
        // TensorRT marks APIs deprecated a version before removing them; the shim chooses
        // per version with #if and should not drown the build in its headers' notices.
        .flag_if_supported("-Wno-deprecated-declarations");
    // System includes: warnings inside TensorRT's and CUDA's headers are theirs, not ours.
    build.flag("-isystem").flag(trt_include.as_os_str());
    if cuda_include != trt_include {
        build.flag("-isystem").flag(cuda_include.as_os_str());
    }
    if let Err(error) = build.try_compile("posed_trt_shim") {
        // The feature was asked for and the headers are there: a shim that does not compile
        // is a bug to fix, not something to paper over with an unavailable backend.
        panic!(
            "compiling {SHIM_SOURCE} against TensorRT headers in {} (CUDA headers in {}) failed: {error}",
            trt_include.display(),
            cuda_include.display()
        );
    }
    println!("cargo:rustc-link-lib=dl");
    println!("cargo:rustc-cfg=posed_trt_shim");
}

fn env_dir(var: &str) -> Option<PathBuf> {
    env::var_os(var)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

fn multiarch_dir(target_arch: &str) -> Option<PathBuf> {
    match target_arch {
        "aarch64" => Some(PathBuf::from("/usr/include/aarch64-linux-gnu")),
        "x86_64" => Some(PathBuf::from("/usr/include/x86_64-linux-gnu")),
        _ => None,
    }
}

fn find_tensorrt(target_arch: &str, native: bool) -> Option<PathBuf> {
    let mut candidates = Vec::new();
    if let Some(root) = env_dir("TENSORRT_ROOT") {
        candidates.push(root.join("include"));
    }
    if let Some(dir) = env_dir("TENSORRT_INCLUDE_DIR") {
        candidates.push(dir);
    }
    candidates.extend(multiarch_dir(target_arch));
    if native {
        candidates.push(PathBuf::from("/usr/include"));
    }
    candidates.into_iter().find(|dir| has(dir, "NvInfer.h"))
}

fn find_cuda(trt_include: &Path, target_arch: &str, native: bool) -> Option<PathBuf> {
    let mut candidates = vec![trt_include.to_owned()];
    if let Some(dir) = env_dir("CUDA_INCLUDE_DIR") {
        candidates.push(dir);
    }
    for var in ["CUDA_ROOT", "CUDA_PATH"] {
        if let Some(root) = env_dir(var) {
            candidates.push(root.join("include"));
        }
    }
    let cuda_arch = match target_arch {
        "aarch64" => Some("aarch64-linux"),
        "x86_64" => Some("x86_64-linux"),
        _ => None,
    };
    if let Some(arch) = cuda_arch {
        candidates.push(PathBuf::from(format!(
            "/usr/local/cuda/targets/{arch}/include"
        )));
    }
    if native {
        candidates.push(PathBuf::from("/usr/local/cuda/include"));
        candidates.push(PathBuf::from("/usr/include"));
    }
    candidates
        .into_iter()
        .find(|dir| has(dir, "cuda_runtime_api.h"))
}

fn has(dir: &Path, file: &str) -> bool {
    dir.join(file).is_file()
}
