#!/usr/bin/env bash
# Builds the Debian packages of posed with cargo-deb: amd64 (this machine) and arm64
# (Jetson, cross-compiled with the linker configured in .cargo/config.toml), into
# <target dir>/debian/, and prints their paths. The package layout is
# `[package.metadata.deb]` in runtime/Cargo.toml; systemd/README.md describes it.
#
# Usage: bash scripts/build-debs.sh [--from-test-build] [amd64] [arm64]   (default: both)
#
# --from-test-build packages the debug binaries `cargo test` built (target/debug/posed and
# target/aarch64-unknown-linux-gnu/debug/posed; default features, so no TensorRT shim)
# instead of building release ones: what CI does (scripts/check-debs.sh) to check the
# packaging itself in seconds. Such packages are for checking, not for installing.
# Needs: cargo-deb (`cargo install cargo-deb --locked`), dpkg-dev (dpkg-shlibdeps, for the
# $auto dependencies), and for arm64 what `.ci/run` installs for the aarch64 tests
# (gcc-aarch64-linux-gnu, libc6-dev-arm64-cross, rustup target aarch64-unknown-linux-gnu).
# Honours CARGO_TARGET_DIR. CI runs it with --from-test-build only (a release build of each
# target takes long).
#
# The packages enable the `tensorrt` feature. Its C++ shim is compiled only where
# TensorRT's headers are found (a JetPack machine, or TENSORRT_ROOT / CUDA_INCLUDE_DIR
# pointing at headers copied from one); without them the package still builds, and a
# warning below says that its `backend = "tensorrt"` will report itself unavailable.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! cargo deb --version >/dev/null 2>&1; then
  echo "scripts/build-debs.sh: cargo-deb not found: cargo install cargo-deb --locked" >&2
  exit 1
fi

from_test_build=false
if [ "${1:-}" = --from-test-build ]; then
  from_test_build=true
  shift
fi
arches=("$@")
[ "${#arches[@]}" -gt 0 ] || arches=(amd64 arm64)

target_dir="${CARGO_TARGET_DIR:-$(cargo metadata --format-version 1 --no-deps |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')}"
out_dir="$target_dir/debian"
mkdir -p "$out_dir"

host_triple="$(rustc -vV | sed -n 's/^host: //p')"

# A cross-built package's dependencies come from dpkg-shlibdeps with the cross toolchain's
# libraries (libc6-arm64-cross), which have shlibs files but no symbols files: it then
# writes the cross package's own version as the floor, arch-qualified
# (`libc6:arm64 (>= 2.36)` from Debian 12), which JetPack 6 (Ubuntu 22.04, glibc 2.35)
# cannot satisfy although the binary needs nothing newer. Replace the libc floor with the
# newest GLIBC_ symbol version the binary actually uses (what dpkg-shlibdeps computes from
# a symbols file on a native build) and drop the `:arch` qualifiers, then repack.
fix_cross_depends() {
  local deb="$1" binary="$2" arch="$3"
  local depends floor fixed work
  depends="$(dpkg-deb -f "$deb" Depends)"
  floor="$(readelf -W --dyn-syms "$binary" | grep -o 'GLIBC_[0-9][0-9.]*' |
    sed 's/^GLIBC_//' | sort -V | tail -n 1)"
  if [ -z "$floor" ]; then
    echo "scripts/build-debs.sh: no GLIBC_ symbol versions in $binary" >&2
    exit 1
  fi
  fixed="$(sed -E -e "s/libc6:$arch \\(>= [^)]*\\)/libc6 (>= $floor)/" \
    -e "s/:$arch( |,|\$)/\\1/g" <<<"$depends")"
  [ "$fixed" != "$depends" ] || return 0
  echo "   Depends: $depends -> $fixed (newest glibc symbol the binary uses: $floor)"
  work="$(mktemp -d)"
  dpkg-deb -R "$deb" "$work/pkg"
  sed -i "s/^Depends: .*/Depends: $fixed/" "$work/pkg/DEBIAN/control"
  dpkg-deb --root-owner-group -Zxz -b "$work/pkg" "$deb" >/dev/null
  rm -rf "$work"
}

built=()
for arch in "${arches[@]}"; do
  case "$arch" in
    amd64) triple=x86_64-unknown-linux-gnu ;;
    arm64) triple=aarch64-unknown-linux-gnu ;;
    *)
      echo "scripts/build-debs.sh: unknown architecture $arch (amd64 or arm64)" >&2
      exit 1
      ;;
  esac
  multiarch="${triple%%-*}-linux-gnu"
  if [ -z "${TENSORRT_ROOT:-}${TENSORRT_INCLUDE_DIR:-}" ] &&
    [ ! -e "/usr/include/$multiarch/NvInfer.h" ]; then
    echo "warning: no TensorRT headers for $arch (TENSORRT_ROOT, /usr/include/$multiarch):" \
      "this package's TensorRT backend will report itself unavailable at run time" >&2
  fi
  # --target even for the host: every package then comes from target/<triple>/release,
  # and the file name carries the architecture either way. cargo-deb prints the path of
  # the .deb it wrote as its last line. From the test build: the host's binary is in
  # target/debug (cargo test builds it without --target).
  deb_args=(-p posed --output "$out_dir")
  binary="$target_dir/$triple/release/posed"
  if $from_test_build; then
    deb_args+=(--no-build --profile dev)
    if [ "$triple" = "$host_triple" ]; then
      binary="$target_dir/debug/posed"
    else
      deb_args+=(--target "$triple")
      binary="$target_dir/$triple/debug/posed"
    fi
    if [ ! -x "$binary" ]; then
      echo "scripts/build-debs.sh: no $binary: run the tests for $triple first" >&2
      exit 1
    fi
  else
    deb_args+=(--target "$triple")
  fi
  echo "== cargo deb ${deb_args[*]}"
  log="$(mktemp)"
  # cargo-deb's warnings about debug info in the dev profile are noise here.
  if ! cargo deb "${deb_args[@]}" 2> >(grep -v -e "debug info" -e "profile.release" -e "dev profile is not supported" -e "^  " >&2) | tee "$log"; then
    rm -f "$log"
    echo "scripts/build-debs.sh: cargo deb failed for $arch" >&2
    exit 1
  fi
  deb="$(grep -E '\.deb$' "$log" | tail -n 1)"
  rm -f "$log"
  if [ ! -f "$deb" ]; then
    echo "scripts/build-debs.sh: cargo deb did not report a .deb for $arch" >&2
    exit 1
  fi
  if [ "$triple" != "$host_triple" ]; then
    fix_cross_depends "$deb" "$binary" "$arch"
  fi
  built+=("$deb")
done

echo
echo "Packages (the -dbgsym .ddeb beside each holds its debug symbols):"
for deb in "${built[@]}"; do
  printf '  %s (%s)\n' "$deb" "$(du -h "$deb" | cut -f1)"
done
