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
#      cargo test --release -p posed-kernels --no-run --test gpu_equivalence --test gpu_render_equivalence \
#        --test gpu_cosypose_equivalence --test gpu_color_equivalence
#    (the test executables are found through cargo's --message-format=json), installs NVRTC
#    12.6 into target/nvrtc-wheel through scripts/check-cuda-kernels.sh if it is missing,
#    and fills target/gpu-carry/: bin/{gpu_timings,gpu_equivalence,gpu_render_equivalence,
#    gpu_cosypose_equivalence,gpu_color_equivalence},
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
# under a time limit, the four CPU-vs-GPU equivalence test binaries (--nocapture) and
# gpu_timings. Everything lands in $OUT (the device tool's output folder; 8 files, the
# most a call brings back, so nvidia-smi's output goes at the end of environment.txt):
#
#   environment.txt  gpu_equivalence.log  gpu_render_equivalence.log
#   gpu_cosypose_equivalence.log  gpu_color_equivalence.log
#   gpu_timings.log  gpu_timings.json (gpu_timings' final JSON line)  summary.txt
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
for needed in bin/gpu_timings bin/gpu_equivalence bin/gpu_render_equivalence bin/gpu_cosypose_equivalence bin/gpu_color_equivalence nvrtc.tar.gz build-root; do
  if [ ! -e "$CARRY/$needed" ]; then
    echo "run.sh: $CARRY/$needed is missing: run 'bash benches/gpu/prepare.sh' on the session's" \
      "machine first, and pass carry: [\"target/gpu-carry\"] to the device tool's run" >&2
    exit 2
  fi
done

# NVRTC 12.6, carried.
NVRTC_DIR=/tmp/posed-nvrtc
rm -rf "$NVRTC_DIR"
mkdir -p "$NVRTC_DIR"
if ! tar -C "$NVRTC_DIR" -xzf "$CARRY/nvrtc.tar.gz"; then
  echo "run.sh: could not unpack $CARRY/nvrtc.tar.gz" >&2
  exit 2
fi
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
  timeout 120 "$CARRY/bin/$test" --nocapture --test-threads=1 2>&1 | tee "$OUT/$test.log"
  rc=${PIPESTATUS[0]}
  status_of "$test" "$rc" "$OUT/$test.log" || failed=1
done

echo
echo "== gpu_timings $*"
timeout 200 "$CARRY/bin/gpu_timings" "$@" 2>&1 | tee "$OUT/gpu_timings.log"
rc=${PIPESTATUS[0]}
grep '^{' "$OUT/gpu_timings.log" | tail -n 1 >"$OUT/gpu_timings.json"
status_of gpu_timings "$rc" "$OUT/gpu_timings.log" || failed=1

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
