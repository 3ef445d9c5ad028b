#!/usr/bin/env bash
# Cargo runner for aarch64-unknown-linux-gnu: run natively on an aarch64 host (a Jetson),
# under qemu-aarch64 with Debian's cross sysroot anywhere else.
set -euo pipefail
if [ "$(uname -m)" = aarch64 ]; then
  exec "$@"
fi
exec qemu-aarch64 -L /usr/aarch64-linux-gnu "$@"
