#!/usr/bin/env bash
# Runs the GPU checks and timings ON a lent GPU machine (the device tool's `run`: x86_64,
# an NVIDIA driver, CUDA 13, no cargo, nothing reachable outside it), from binaries built
# beforehand on the session's machine.
#
# 1. HERE, on the session's machine (x86_64, cargo; no GPU needed):
#
#      bash benches/gpu/prepare.sh
#
#    which runs
#      cargo build --release -p posed-benches --bin gpu_timings
#      cargo build --release -p posed --bin posed
#      cargo test --release -p posed-kernels --no-run --test gpu_equivalence --test gpu_render_equivalence \
#        --test gpu_cosypose_equivalence --test gpu_color_equivalence
#    (the test executables are found through cargo's --message-format=json), installs NVRTC
#    12.6 into target/nvrtc-wheel through scripts/check-cuda-kernels.sh if it is missing,
#    and fills target/gpu-carry/: bin.tar.gz (bin/{gpu_timings,posed,gpu_equivalence,
#    gpu_render_equivalence,gpu_cosypose_equivalence,gpu_color_equivalence}, stripped),
#    nvrtc.tar.gz (libnvrtc.so.12 + libnvrtc-builtins.so.12.6), build-root, MANIFEST.
#    It checks that the working tree plus the carry fit the 64 MiB a call sends.
#
# 2. From the session, call the device tool (it is no shell command):
#
#      run(command: "bash benches/gpu/run.sh", carry: ["target/gpu-carry"], timeout_s: 600)
#
#    Arguments after run.sh go to gpu_timings (e.g. `bash benches/gpu/run.sh --iterations 200`).
#    The data (data/ycbv-mini) travels with the working tree.
#
# What this does there: unpacks NVRTC into /tmp and puts it on LD_LIBRARY_PATH (the
# kernels are compiled at start by NVRTC 12.6, as on JetPack 6; the CUDA 13 driver loads
# its CUBIN), uses a fresh kernel cache, links the build-time checkout path to this
# checkout (the binaries find data/ through paths fixed at build time), then runs, each
# under a time limit, the four CPU-vs-GPU equivalence test binaries (--nocapture),
# gpu_timings, and the posed binary: `posed predict --device cpu` vs `--device cuda` (the
# CSVs must agree but for the time column), `posed run` on the demo with the loop on
# the GPU, and `posed bench` on the demo with the loop on the CPU and on the GPU.
# Everything lands in $OUT (the device tool's output folder; 8 files, the most a call
# brings back, so nvidia-smi's output goes at the end of environment.txt and
# gpu_timings' final JSON line is the last `{` line of gpu_timings.log):
#
#   environment.txt  gpu_equivalence.log  gpu_render_equivalence.log
#   gpu_cosypose_equivalence.log  gpu_color_equivalence.log
#   gpu_timings.log  posed.log  summary.txt
#
# A step that fails, times out, or prints SKIPPED (no device seen, on a GPU machine) makes
# the script exit 1; the summary is printed last. It changes no GPU setting (nvidia-smi
# is only queried).
set -uo pipefail
cd "$(dirname "$0")/../.."

if [ -z "${OUT:-}" ]; then
  echo "run.sh: OUT is not set: this script runs on the device machine, through the device" \
    "tool's run, which sets OUT to its output folder" >&2
  exit 2
fi
mkdir -p "$OUT"
CARRY="$PWD/target/gpu-carry"
for needed in bin.tar.gz nvrtc.tar.gz build-root; do
  if [ ! -e "$CARRY/$needed" ]; then
    echo "run.sh: $CARRY/$needed is missing: run 'bash benches/gpu/prepare.sh' on the session's" \
      "machine first, and pass carry: [\"target/gpu-carry\"] to the device tool's run" >&2
    exit 2
  fi
done

# Unpacks the carried archive $1 into a fresh folder $2.
unpack() {
  rm -rf "$2"
  mkdir -p "$2"
  if ! tar -C "$2" -xzf "$CARRY/$1"; then
    echo "run.sh: could not unpack $CARRY/$1" >&2
    exit 2
  fi
}

# The binaries, carried gzipped.
unpack bin.tar.gz /tmp/posed-carry
BIN=/tmp/posed-carry/bin
for binary in gpu_timings posed gpu_equivalence gpu_render_equivalence gpu_cosypose_equivalence gpu_color_equivalence; do
  if [ ! -x "$BIN/$binary" ]; then
    echo "run.sh: $CARRY/bin.tar.gz has no bin/$binary: run prepare.sh again" >&2
    exit 2
  fi
done

# NVRTC 12.6, carried.
NVRTC_DIR=/tmp/posed-nvrtc
unpack nvrtc.tar.gz "$NVRTC_DIR"
# cudarc tries the name libnvrtc.so before libnvrtc.so.12: without this link it would load
# the machine's own NVRTC (CUDA 13) if the loader can find one.
ln -s libnvrtc.so.12 "$NVRTC_DIR/libnvrtc.so"
export LD_LIBRARY_PATH="$NVRTC_DIR${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
# A fresh kernel cache: the first load compiles with NVRTC here, the next hit the cache.
export XDG_CACHE_HOME=/tmp/posed-cache
rm -rf "$XDG_CACHE_HOME"
export RUST_BACKTRACE=1

# The binaries read data/ycbv-mini at the absolute path of the checkout they were built in.
build_root="$(cat "$CARRY/build-root")"
here="$(pwd -P)"
link_note="build root $build_root is this checkout"
if [ "$build_root" != "$here" ]; then
  if [ -e "$build_root" ] || [ -L "$build_root" ]; then
    if [ "$(cd "$build_root" 2>/dev/null && pwd -P)" = "$here" ]; then
      link_note="build root $build_root already leads here"
    else
      link_note="WARNING: build root $build_root exists and is not this checkout ($here): the binaries will read data from there"
    fi
  elif mkdir -p "$(dirname "$build_root")" && ln -s "$here" "$build_root"; then
    link_note="linked build root $build_root -> $here"
  else
    link_note="WARNING: could not link build root $build_root -> $here: the binaries will not find data/"
  fi
fi

{
  echo "== date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "== uname: $(uname -a)"
  echo "== glibc: $(ldd --version 2>/dev/null | head -n 1)"
  echo "== $link_note"
  echo "== LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
  echo "== nvrtc: $(ls "$NVRTC_DIR" | tr '\n' ' ')"
  echo "== CPU cores: $(nproc)"
  echo "== MANIFEST (from prepare.sh)"
  cat "$CARRY/MANIFEST" 2>/dev/null || echo "(none)"
} >"$OUT/environment.txt" 2>&1
cat "$OUT/environment.txt"

{
  echo "== nvidia-smi"
  nvidia-smi
  echo
  nvidia-smi --query-gpu=name,pci.bus_id,driver_version,memory.total,memory.used,clocks.sm,clocks.max.sm,clocks.mem,clocks.max.mem,power.draw,temperature.gpu,compute_mode,mig.mode.current --format=csv
} >>"$OUT/environment.txt" 2>&1
grep -A 20 "^== nvidia-smi" "$OUT/environment.txt"

declare -a summary
status_of() { # name rc log
  local name=$1 rc=$2 log=$3 status
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    status="TIMED OUT"
  elif [ "$rc" -ne 0 ]; then
    status="FAILED (exit $rc)"
  elif grep -q "SKIPPED" "$log"; then
    status="SKIPPED (no device seen: see the log)"
  else
    status="ok"
  fi
  summary+=("$(printf '%-24s %s' "$name" "$status")")
  [ "$status" = ok ]
}

failed=0
for test in gpu_equivalence gpu_render_equivalence gpu_cosypose_equivalence gpu_color_equivalence; do
  echo
  echo "== $test --nocapture --test-threads=1"
  timeout 120 "$BIN/$test" --nocapture --test-threads=1 2>&1 | tee "$OUT/$test.log"
  rc=${PIPESTATUS[0]}
  status_of "$test" "$rc" "$OUT/$test.log" || failed=1
done

echo
echo "== gpu_timings $*"
timeout 200 "$BIN/gpu_timings" "$@" 2>&1 | tee "$OUT/gpu_timings.log"
rc=${PIPESTATUS[0]}
status_of gpu_timings "$rc" "$OUT/gpu_timings.log" || failed=1

# The posed binary on the GPU against the CPU (one log, posed.log, for both checks):
# 1. `posed predict` with the test networks on ycbv-mini's first two images, --device cpu
#    and --device cuda: the BOP19 CSVs must be equal but for the time column (the loop's
#    kernels are bit-identical to their CPU twins; this is predict_cli's
#    the_cuda_device_gives_the_cpu_poses_or_falls_back_to_the_cpu, without cargo);
# 2. `posed run` on the demo with pipeline.device = "cuda" (frames in host memory mapped
#    into the GPU, the loop on the GPU) for 6 frames: it must run on the GPU and exit 0;
#    then `posed bench` on the demo, the loop on the CPU and on the GPU (the latency of
#    each stage both ways).
posed_checks() {
  local work=/tmp/posed-checks net=data/networks
  rm -rf "$work"
  mkdir -p "$work"
  "$BIN/posed" dataset make-detections --dataset data/ycbv-mini --box-noise 0.05 --seed 11 \
    --out "$work/detections.json" || return 1
  for device in cpu cuda; do
    echo "-- posed predict --device $device"
    "$BIN/posed" predict --dataset data/ycbv-mini --coarse "$net/coarse-tiny.onnx" \
      --refiner "$net/refiner-tiny.onnx" --detections "$work/detections.json" \
      --init zup-autodepth --refiner-iterations 2 --max-images 2 --batch-size 3 \
      --device "$device" --out "$work/$device.csv" 2>&1 | tee "$work/$device.err" || return 1
  done
  if grep -q -e "no usable CUDA device" -e "without the cuda feature" "$work/cuda.err"; then
    echo "SKIPPED: posed predict --device cuda fell back to the CPU"
    return 0
  fi
  # Everything but the last column (the per-image time).
  local rows
  rows=$(wc -l <"$work/cpu.csv")
  if [ "$rows" -lt 2 ] || ! cmp <(awk -F, -v OFS=, '{NF--; print}' "$work/cpu.csv") \
    <(awk -F, -v OFS=, '{NF--; print}' "$work/cuda.csv"); then
    echo "posed predict: --device cuda differs from --device cpu ($rows lines)"
    diff <(awk -F, -v OFS=, '{NF--; print}' "$work/cpu.csv") \
      <(awk -F, -v OFS=, '{NF--; print}' "$work/cuda.csv") | head -n 20
    return 1
  fi
  echo "posed predict: --device cuda equals --device cpu ($rows lines, time column aside)"

  echo "-- posed run on the demo with pipeline.device = \"cuda\""
  sed -e 's|^\[pipeline\]|[pipeline]\ndevice = "cuda"|' \
    -e "s|^socket = .*|socket = \"$work/poses.sock\"|" data/demo.toml >data/demo-cuda.toml
  "$BIN/posed" run --config data/demo-cuda.toml --frames 6 2>&1 | tee "$work/run.err"
  local rc=${PIPESTATUS[0]}
  # The latency harness on the same demo, the loop on the CPU then on the GPU, frames as
  # fast as the pipeline takes them (per-stage latency for docs/gpu-runs.md).
  local bench_rc=0
  if [ "$rc" -eq 0 ]; then
    for config in data/demo.toml data/demo-cuda.toml; do
      echo "-- posed bench --config $config --frames 30 --warmup 5 --rate-hz 0"
      timeout 150 "$BIN/posed" bench --config "$config" --frames 30 --warmup 5 --rate-hz 0 \
        --idle-s 0 --socket "$work/bench.sock" || bench_rc=1
    done
  fi
  rm -f data/demo-cuda.toml
  [ "$rc" -eq 0 ] && [ "$bench_rc" -eq 0 ] || return 1
  if grep -q "no usable CUDA device" "$work/run.err" || ! grep -q "CUDA device 0" "$work/run.err"; then
    echo "SKIPPED: posed run did not run the loop on the GPU"
    return 0
  fi
  echo "posed run: 6 frames with the loop on the GPU"
}

echo
echo "== posed: predict --device cpu vs cuda, run --demo on cuda"
( posed_checks ) 2>&1 | tee "$OUT/posed.log"
rc=${PIPESTATUS[0]}
status_of posed "$rc" "$OUT/posed.log" || failed=1

{
  echo "== summary"
  grep -m 1 '^device 0' "$OUT/gpu_timings.log" || true
  printf '%s\n' "${summary[@]}"
  echo "== timings"
  grep -E '^  (kernels|GPU|CPU|floors|achieved)' "$OUT/gpu_timings.log" || echo "(none)"
} >"$OUT/summary.txt"
echo
cat "$OUT/summary.txt"
exit "$failed"
