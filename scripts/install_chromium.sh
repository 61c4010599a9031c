#!/usr/bin/env bash
# Install Debian's chromium and chromium-driver for the browser end-to-end test (tests/e2e/).
# Idempotent: does nothing when both binaries are already there. Uses sudo only when not root.
# An flock on a lock file serialises concurrent runs (two pytest sessions, make + pytest).
set -euo pipefail

CHROMIUM=/usr/bin/chromium
DRIVER=/usr/bin/chromedriver

have_all() { [[ -x "$CHROMIUM" && -x "$DRIVER" ]]; }

if have_all; then
  exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "install_chromium.sh: apt-get not found; install chromium and chromium-driver" \
       "(binaries $CHROMIUM and $DRIVER) by hand" >&2
  exit 2
fi

SUDO=()
if [[ "$(id -u)" -ne 0 ]]; then
  if ! command -v sudo >/dev/null 2>&1; then
    echo "install_chromium.sh: not root and sudo not found; cannot apt-get install chromium" >&2
    exit 2
  fi
  SUDO=(sudo -n)
fi

LOCK="${GOVTUNE_CHROMIUM_LOCK:-${TMPDIR:-/tmp}/govtune-install-chromium.lock}"
exec 9>"$LOCK"
flock -w 900 9 || { echo "install_chromium.sh: timed out waiting for $LOCK" >&2; exit 3; }

# another run may have finished the installation while we waited for the lock
if have_all; then
  exit 0
fi

export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -q
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
  apt-get install -y -q --no-install-recommends chromium chromium-driver

if ! have_all; then
  echo "install_chromium.sh: apt-get finished but $CHROMIUM or $DRIVER is missing" >&2
  exit 4
fi
"$CHROMIUM" --version
"$DRIVER" --version
