#!/usr/bin/env bash
# CI's check of the Debian packages (issue 6): packages the posed binaries the test run
# just built, for amd64 and arm64, through scripts/build-debs.sh --from-test-build (the
# real packaging script, without its release builds), then checks what each package
# holds and declares: the binary for its architecture, the systemd unit, the sysusers and
# tmpfiles snippets, the example configuration as a conffile, the maintainer scripts that
# create the user, and dependencies that JetPack 6 (glibc 2.35) can satisfy.
#
# Usage: bash scripts/check-debs.sh   (after the x86_64 and aarch64 test builds)
# Needs: cargo-deb, dpkg-dev (both installed by .ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."

fail() {
  echo "scripts/check-debs.sh: $*" >&2
  exit 1
}

out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
target_dir="${CARGO_TARGET_DIR:-$PWD/target}"
CARGO_TARGET_DIR="$target_dir" bash scripts/build-debs.sh --from-test-build amd64 arm64 |
  tee "$out/log"

for arch in amd64 arm64; do
  deb="$(ls "$target_dir"/debian/posed_*_"$arch".deb 2>/dev/null | sort -V | tail -n 1)"
  [ -f "$deb" ] || fail "no posed_*_$arch.deb in $target_dir/debian"
  echo "== $deb"
  contents="$(dpkg-deb -c "$deb" | awk '{print $NF}')"
  for path in ./usr/bin/posed ./usr/lib/systemd/system/posed.service \
    ./usr/lib/sysusers.d/posed.conf ./usr/lib/tmpfiles.d/posed.conf \
    ./etc/posed/posed.toml ./usr/share/doc/posed/copyright; do
    grep -qx "$path" <<<"$contents" || fail "$deb lacks $path"
  done
  [ "$(dpkg-deb -f "$deb" Architecture)" = "$arch" ] || fail "$deb: Architecture is not $arch"
  depends="$(dpkg-deb -f "$deb" Depends)"
  grep -q "systemd | systemd-standalone-sysusers" <<<"$depends" || fail "$deb: Depends: $depends"
  if grep -q ":$arch" <<<"$depends"; then
    fail "$deb: arch-qualified Depends ($depends): apt on the target would not match them"
  fi
  floor="$(sed -nE 's/.*libc6 \(>= ([0-9.]+)\).*/\1/p' <<<"$depends")"
  [ -n "$floor" ] || fail "$deb: no libc6 floor in Depends: $depends"
  if [ "$(printf '%s\n2.35\n' "$floor" | sort -V | tail -n 1)" != 2.35 ]; then
    fail "$deb: needs glibc $floor, newer than JetPack 6's 2.35"
  fi
  work="$out/$arch"
  mkdir -p "$work"
  dpkg-deb -e "$deb" "$work/control"
  grep -qx "/etc/posed/posed.toml" "$work/control/conffiles" || fail "$deb: posed.toml is no conffile"
  grep -q "systemd-sysusers" "$work/control/postinst" || fail "$deb: postinst does not create the user"
  dpkg-deb -x "$deb" "$work/root"
  machine="$(od -An -t u2 -j 18 -N 2 "$work/root/usr/bin/posed" | tr -d ' ')"
  case "$arch:$machine" in
    amd64:62 | arm64:183) ;;
    *) fail "$deb: usr/bin/posed is for ELF machine $machine, not $arch" ;;
  esac
  cmp -s "$work/root/usr/lib/systemd/system/posed.service" systemd/posed.service ||
    fail "$deb: posed.service differs from systemd/posed.service"
  echo "   ok: binary for $arch, unit, sysusers, tmpfiles, conffile, postinst, Depends: $depends"
done
