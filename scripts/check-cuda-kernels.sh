#!/usr/bin/env bash
# CI compile check of the CUDA kernels, on a machine with no GPU and no CUDA toolkit.
#
# Installs NVRTC from PyPI (the nvidia-cuda-nvrtc-cu12 wheel, CUDA 12.6 as on JetPack 6.1+)
# into target/nvrtc-wheel, then compiles EVERY kernels/cuda/*.cu for sm_87 (Orin) and
# sm_90, to CUBIN and to PTX, through the same Rust code the device runs
# (posed_kernels::cuda::compile, via the compile_cuda_kernels example). Fails on any
# compile error, any NVRTC warning, a CUBIN for the wrong architecture, or PTX whose ISA
# version is not the one CUDA 12.6's NVRTC emits (8.5). The images land in
# target/cuda-kernels/<arch>/. Then runs the kernels crate's NVRTC tests (cache, logs).
#
# Needs python3 with pip (Debian: python3-pip) and network access to PyPI on first run.
set -euo pipefail
cd "$(dirname "$0")/.."

NVRTC_VERSION=12.6.85
EXPECTED_PTX_ISA=8.5
ARCHS=(sm_87 sm_90)
WHEEL_DIR="$PWD/target/nvrtc-wheel"
NVRTC_LIB="$WHEEL_DIR/nvidia/cuda_nvrtc/lib"
OUT_DIR="$PWD/target/cuda-kernels"

installed_version() {
  local metadata="$WHEEL_DIR/nvidia_cuda_nvrtc_cu12-$NVRTC_VERSION.dist-info/METADATA"
  [ -f "$metadata" ] && [ -e "$NVRTC_LIB/libnvrtc.so.12" ] && echo "$NVRTC_VERSION"
}

if [ "$(installed_version || true)" != "$NVRTC_VERSION" ]; then
  echo "== pip install nvidia-cuda-nvrtc-cu12==$NVRTC_VERSION into target/nvrtc-wheel"
  if ! python3 -m pip --version >/dev/null 2>&1; then
    echo "python3 -m pip not found: install pip (Debian: apt-get install python3-pip)" >&2
    exit 1
  fi
  rm -rf "$WHEEL_DIR"
  # --target installs outside any Python environment (and is allowed on Debian 12's
  # externally managed Python); the wheel is self-contained, hence --no-deps.
  python3 -m pip install --quiet --disable-pip-version-check --no-deps \
    --target "$WHEEL_DIR" "nvidia-cuda-nvrtc-cu12==$NVRTC_VERSION"
fi
if [ ! -e "$NVRTC_LIB/libnvrtc.so.12" ]; then
  echo "no libnvrtc.so.12 in $NVRTC_LIB after installing the wheel" >&2
  exit 1
fi
export LD_LIBRARY_PATH="$NVRTC_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

arch_args=()
for arch in "${ARCHS[@]}"; do arch_args+=(--arch "$arch"); done

echo "== compile every kernels/cuda/*.cu for ${ARCHS[*]} (CUBIN and PTX, warnings are errors)"
rm -rf "$OUT_DIR"
cargo run --locked --quiet -p posed-kernels --example compile_cuda_kernels -- \
  "${arch_args[@]}" --dir kernels/cuda --out "$OUT_DIR" --expect-ptx-isa "$EXPECTED_PTX_ISA"

echo "== NVRTC tests of posed-kernels (compile, cache, logs)"
cargo test --locked --quiet -p posed-kernels --lib cuda::
