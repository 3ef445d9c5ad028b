#!/usr/bin/env bash
# The project's test command (README): formatting, lints, and the test suite on x86_64
# and on aarch64-unknown-linux-gnu (the Jetson target) under qemu-aarch64.
# Prerequisites on a fresh Debian 12 machine: see .ci/run, which installs them.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy (x86_64, and aarch64 for the crate with target-specific code, -D warnings)"
cargo clippy --workspace --all-targets --locked -- -D warnings
# Only posed-kernels has code that differs between the targets (the x86_64 SIMD paths);
# everything else is compiled for aarch64 by the test run below.
cargo clippy -p posed-kernels --all-targets --locked --target aarch64-unknown-linux-gnu -- -D warnings

echo "== cargo clippy (the tensorrt feature: its Rust side builds without TensorRT)"
cargo clippy -p posed-engines -p posed --all-targets --locked --features posed/tensorrt -- -D warnings

echo "== cargo clippy (posed-kernels without the cuda feature)"
cargo clippy -p posed-kernels --all-targets --locked --no-default-features -- -D warnings

echo "== systemd files: systemd-analyze verify, sysusers and tmpfiles in a temporary root"
bash systemd/verify.sh

# With the tensorrt feature (what the packages ship): its Rust side builds without
# TensorRT, and its tests (cache keys, plans, the unavailable backend) run with the rest.
# One feature set for the whole run: a separate `-p posed-engines --features tensorrt`
# run resolved other features for the shared dependencies and rebuilt them (2.5 min).
echo "== cargo test (x86_64, --features posed/tensorrt)"
cargo test --workspace --locked --features posed/tensorrt

echo "== CUDA kernels: NVRTC compile check, sm_87 and sm_90 (no GPU needed)"
bash scripts/check-cuda-kernels.sh

echo "== cargo test (aarch64-unknown-linux-gnu, --features posed/tensorrt, under qemu-aarch64)"
# Tests that start the `posed` binary go through the same runner as cargo's.
POSED_TEST_RUNNER="$PWD/cross/qemu-aarch64-runner.sh" \
  cargo test --workspace --locked --target aarch64-unknown-linux-gnu --exclude posed-benches \
  --features posed/tensorrt

echo "== Debian packages (amd64, arm64) from the binaries the tests built: scripts/check-debs.sh"
bash scripts/check-debs.sh
