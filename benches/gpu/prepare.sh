#!/usr/bin/env bash
# Builds, HERE (x86_64 Linux with cargo, no GPU needed), everything benches/gpu/run.sh runs
# on a lent GPU machine (x86_64, CUDA driver, no cargo), and gathers it in
# target/gpu-carry/ for the device tool's `carry`:
#
#   target/gpu-carry/bin.tar.gz, holding bin/:
#     gpu_timings              cargo build --release -p posed-benches --bin gpu_timings
#     posed                    cargo build --release -p posed --bin posed (predict and run --demo
#                              on the GPU against the CPU)
#     gpu_equivalence          cargo test --release -p posed-kernels --no-run \
#     gpu_render_equivalence     --test gpu_equivalence --test gpu_render_equivalence \
#     gpu_cosypose_equivalence   --test gpu_cosypose_equivalence \
#     gpu_color_equivalence      --test gpu_color_equivalence
#   target/gpu-carry/nvrtc.tar.gz                 libnvrtc.so.12 + libnvrtc-builtins (NVRTC 12.6.85,
#                                                 from target/nvrtc-wheel/nvidia/cuda_nvrtc/lib,
#                                                 which scripts/check-cuda-kernels.sh installs)
#   target/gpu-carry/build-root                   this checkout's absolute path: the binaries read
#                                                 data/ycbv-mini through paths fixed at build time
#                                                 (CARGO_MANIFEST_DIR); run.sh links it on the device
#   target/gpu-carry/MANIFEST                     commit, dirty files, toolchain, sizes, sha256
#
# The NVRTC library and the binaries are carried gzipped: as plain files NVRTC (64 MB)
# would alone fill the 64 MiB the device tool sends per call (working tree + carried
# paths), and the binaries (about 50 MB stripped) would not fit beside it.
#
# Then, from the session (the device tool is no shell command):
#   run(command: "bash benches/gpu/run.sh", carry: ["target/gpu-carry"], timeout_s: 600)
# See benches/gpu/run.sh and docs/gpu-runs.md.
#
# Usage: bash benches/gpu/prepare.sh   (from anywhere; about a minute after a warm build)
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT="$(pwd -P)"
CARRY="$ROOT/target/gpu-carry"
NVRTC_LIB="$ROOT/target/nvrtc-wheel/nvidia/cuda_nvrtc/lib"
# What the device tool sends in one call: working tree + carried paths.
LIMIT_BYTES=$((64 * 1024 * 1024))

if [ "$(uname -m)" != x86_64 ]; then
  echo "prepare.sh: the GPU machine is x86_64; build on an x86_64 machine (this is $(uname -m))" >&2
  exit 1
fi
if ! command -v python3 >/dev/null; then
  echo "prepare.sh: python3 is needed (to read cargo's JSON messages)" >&2
  exit 1
fi

if [ ! -e "$NVRTC_LIB/libnvrtc.so.12" ]; then
  echo "== NVRTC 12.6 is not in target/nvrtc-wheel: scripts/check-cuda-kernels.sh installs it"
  bash scripts/check-cuda-kernels.sh
fi
for lib in libnvrtc.so.12 libnvrtc-builtins.so.12.6; do
  if [ ! -e "$NVRTC_LIB/$lib" ]; then
    echo "prepare.sh: no $lib in $NVRTC_LIB" >&2
    exit 1
  fi
done

# Prints the executables cargo reports for the named targets (one per line).
executables() {
  python3 -c '
import json, sys
wanted = set(sys.argv[1:])
for line in sys.stdin:
    try:
        message = json.loads(line)
    except ValueError:
        continue
    if message.get("reason") != "compiler-artifact" or not message.get("executable"):
        continue
    if message["target"]["name"] in wanted:
        print(message["target"]["name"] + " " + message["executable"])
' "$@"
}

echo "== cargo build --release -p posed-benches --bin gpu_timings"
timings="$(cargo build --locked --release -p posed-benches --bin gpu_timings \
  --message-format=json-render-diagnostics | executables gpu_timings)"
echo "== cargo build --release -p posed --bin posed"
posed_bin="$(cargo build --locked --release -p posed --bin posed \
  --message-format=json-render-diagnostics | executables posed)"
echo "== cargo test --release -p posed-kernels --no-run --test gpu_equivalence --test gpu_render_equivalence --test gpu_cosypose_equivalence --test gpu_color_equivalence"
tests="$(cargo test --locked --release -p posed-kernels --no-run \
  --test gpu_equivalence --test gpu_render_equivalence --test gpu_cosypose_equivalence \
  --test gpu_color_equivalence \
  --message-format=json-render-diagnostics \
  | executables gpu_equivalence gpu_render_equivalence gpu_cosypose_equivalence \
    gpu_color_equivalence)"

rm -rf "$CARRY"
mkdir -p "$CARRY/bin"
found=0
while read -r name path; do
  [ -n "$name" ] || continue
  cp "$path" "$CARRY/bin/$name"
  found=$((found + 1))
done <<<"$timings
$posed_bin
$tests"
for name in gpu_timings posed gpu_equivalence gpu_render_equivalence gpu_cosypose_equivalence \
  gpu_color_equivalence; do
  if [ ! -x "$CARRY/bin/$name" ]; then
    echo "prepare.sh: cargo reported no executable for $name" >&2
    exit 1
  fi
done
if [ "$found" -ne 6 ]; then
  echo "prepare.sh: expected 6 executables, cargo reported $found" >&2
  exit 1
fi

# Release builds keep line tables (Cargo.toml); dropping them here takes gpu_timings from
# about 80 MB to under 20 MB, which the 64 MiB a call sends needs. Symbols stay, so a
# backtrace still names functions.
strip --strip-debug "$CARRY"/bin/*
binaries_sha256="$(cd "$CARRY" && sha256sum bin/*)"
echo "== packing the binaries"
tar -C "$CARRY" -czf "$CARRY/bin.tar.gz" bin
rm -rf "$CARRY/bin"

echo "== packing NVRTC ($NVRTC_LIB)"
tar -C "$NVRTC_LIB" -czf "$CARRY/nvrtc.tar.gz" libnvrtc.so.12 libnvrtc-builtins.so.12.6
printf '%s\n' "$ROOT" >"$CARRY/build-root"

{
  echo "prepared: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(uname -srm)"
  echo "commit: $(git rev-parse HEAD 2>/dev/null || echo unknown)"
  echo "uncommitted changes: $(git status --porcelain 2>/dev/null | wc -l) paths"
  echo "rustc: $(rustc --version)"
  echo "glibc here: $(ldd --version 2>/dev/null | head -n 1)"
  echo "build root: $ROOT"
  echo "nvrtc: $(ls "$ROOT"/target/nvrtc-wheel | grep -m 1 dist-info || echo unknown)"
  echo "$binaries_sha256"
  (cd "$CARRY" && sha256sum bin.tar.gz nvrtc.tar.gz)
} >"$CARRY/MANIFEST"

carry_bytes=$(du -sb "$CARRY" | cut -f 1)
tree_bytes=$(git ls-files -z --cached --others --exclude-standard \
  | du -cb --files0-from=- 2>/dev/null | tail -n 1 | cut -f 1)
total=$((carry_bytes + tree_bytes))
echo "== target/gpu-carry: $((carry_bytes / 1024 / 1024)) MiB; working tree about" \
  "$((tree_bytes / 1024 / 1024)) MiB; together $((total / 1024 / 1024)) MiB of the 64 MiB a call sends"
ls -l "$CARRY"
if [ "$total" -gt "$LIMIT_BYTES" ]; then
  echo "prepare.sh: too large for one device call (over 64 MiB)" >&2
  exit 1
fi
echo "== ready: run(command: \"bash benches/gpu/run.sh\", carry: [\"target/gpu-carry\"], timeout_s: 600)"
