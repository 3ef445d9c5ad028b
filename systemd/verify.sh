#!/usr/bin/env bash
# Checks the files in systemd/ with systemd's own tools, as installed by the package:
#   - `systemd-analyze verify` on posed.service (syntax, values, and that ExecStart's
#     binary exists and is executable),
#   - `systemd-sysusers` on posed.sysusers (it must create the user posed, member of video),
#   - `systemd-tmpfiles --create` on posed.tmpfile (the state and cache folders).
# Everything happens in a temporary root (--root=): nothing is installed on this machine,
# and no systemd needs to be running (CI runs in a container without systemd as PID 1).
# The unit is checked byte for byte as shipped; the temporary root gets a stand-in
# /usr/bin/posed (verify only checks that ExecStart's binary is executable; which binary
# the package installs there is runtime/tests/systemd_files.rs's business).
#
# Usage: bash systemd/verify.sh   (needs the `systemd` package: apt-get install systemd)
# A warning counts as a failure: systemd reports unknown keys and bad values as warnings
# ("..., ignoring") and some versions exit 0 after printing them.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"

for tool in systemd-analyze systemd-sysusers systemd-tmpfiles; do
  if ! command -v "$tool" >/dev/null; then
    echo "systemd/verify.sh: $tool not found (apt-get install systemd)" >&2
    exit 1
  fi
done

root="$(mktemp -d)"
trap 'rm -rf "$root"' EXIT

# A merged-/usr root, like Debian 12's and JetPack's, with the host's own units (the
# targets posed.service is ordered against: sysinit.target, multi-user.target, ...).
mkdir -p "$root/usr/bin" "$root/usr/lib/systemd" "$root/usr/lib/sysusers.d" \
  "$root/usr/lib/tmpfiles.d" "$root/etc" "$root/var/lib" "$root/var/cache"
ln -s usr/bin "$root/bin"
ln -s usr/lib "$root/lib"
host_units=/usr/lib/systemd/system
[ -d "$host_units" ] || host_units=/lib/systemd/system
cp -a "$host_units" "$root/usr/lib/systemd/system"
install -m 0644 "$here/posed.service" "$root/usr/lib/systemd/system/posed.service"
install -m 0644 "$here/posed.sysusers" "$root/usr/lib/sysusers.d/posed.conf"
install -m 0644 "$here/posed.tmpfile" "$root/usr/lib/tmpfiles.d/posed.conf"
printf '#!/bin/sh\nexit 0\n' >"$root/usr/bin/posed"
chmod 0755 "$root/usr/bin/posed"

failed=0
# Runs a command and fails if it fails or prints a complaint. `verify` prints nothing for
# a good unit, so any output at all counts there (mode "silent"); sysusers and tmpfiles
# also report what they create (mode "quiet-ok": only warnings and errors count).
check() {
  local mode="$1" what="$2"
  shift 2
  local output status=0 complaint=""
  output="$("$@" 2>&1)" || status=$?
  if [ "$mode" = silent ]; then
    complaint="$output"
  else
    complaint="$(grep -Ei 'ignor|invalid|unknown|fail|error|warn|not |cannot|bad ' <<<"$output" || true)"
  fi
  if [ "$status" -ne 0 ] || [ -n "$complaint" ]; then
    echo "FAIL $what (exit $status): $*" >&2
    [ -z "$output" ] || printf '%s\n' "$output" >&2
    failed=1
  else
    echo "ok   $what"
  fi
}

check silent "systemd-analyze verify posed.service" \
  systemd-analyze verify --root="$root" --man=no --generators=no --recursive-errors=no \
  posed.service

# sysusers and tmpfiles in the temporary root: the user, its groups, the folders.
check quiet-ok "systemd-sysusers posed.conf" systemd-sysusers --root="$root" posed.conf
if ! grep -q '^posed:' "$root/etc/passwd" 2>/dev/null; then
  echo "FAIL posed.sysusers: no user posed in the resulting /etc/passwd" >&2
  failed=1
fi
if ! grep -Eq '^video:[^:]*:[^:]*:(.*,)?posed(,.*)?$' "$root/etc/group" 2>/dev/null; then
  echo "FAIL posed.sysusers: posed is not a member of video in the resulting /etc/group" >&2
  failed=1
fi
check quiet-ok "systemd-tmpfiles --create posed.conf" \
  systemd-tmpfiles --root="$root" --create posed.conf
# stat would name owners from this machine's /etc/passwd, not the temporary root's:
# compare numeric ids with the temporary root's posed.
expected_uid="$(awk -F: '$1 == "posed" { print $3 }' "$root/etc/passwd" 2>/dev/null || true)"
expected_gid="$(awk -F: '$1 == "posed" { print $3 }' "$root/etc/group" 2>/dev/null || true)"
for folder in var/lib/posed var/cache/posed; do
  found="$(stat -c '%u:%g %a' "$root/$folder" 2>/dev/null || echo missing)"
  if [ "$found" != "$expected_uid:$expected_gid 755" ]; then
    echo "FAIL posed.tmpfile: /$folder is '$found', expected posed's uid:gid" \
      "($expected_uid:$expected_gid) and mode 755" >&2
    failed=1
  fi
done

if [ "$failed" -ne 0 ]; then
  echo "systemd/verify.sh: the systemd files have errors (see above)" >&2
  exit 1
fi
echo "systemd/verify.sh: posed.service, posed.sysusers and posed.tmpfile are valid"
