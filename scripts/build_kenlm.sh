#!/usr/bin/env bash
# Build KenLM's model builders (lmplz, build_binary) into <repo>/.tools/kenlm/bin.
#
# The `kenlm` PyPI wheel ships only the query module; the builders come from the kenlm source
# distribution, compiled with CMake. Idempotent: exits at once when both binaries exist.
# Environment: KENLM_VERSION (default 0.3.0), KENLM_JOBS (default: number of cores),
# GOVTUNE_TOOLS (default <repo>/.tools).
set -euo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
TOOLS="${GOVTUNE_TOOLS:-$REPO/.tools}"
BIN="$TOOLS/kenlm/bin"
VERSION="${KENLM_VERSION:-0.3.0}"
JOBS="${KENLM_JOBS:-$(nproc 2>/dev/null || echo 2)}"
PY="$REPO/.venv/bin/python"
[ -x "$PY" ] || PY="$(command -v python3)"

say() { echo "[build_kenlm] $*"; }

if [ -x "$BIN/lmplz" ] && [ -x "$BIN/build_binary" ]; then
    say "lmplz and build_binary already in $BIN (delete it to rebuild)"
    exit 0
fi

# one build at a time (make test and a test fixture may both ask); the second one waits, then
# finds the tools built
mkdir -p "$TOOLS"
if command -v flock >/dev/null 2>&1; then
    exec 9>"$TOOLS/.build_kenlm.lock"
    flock 9
    if [ -x "$BIN/lmplz" ] && [ -x "$BIN/build_binary" ]; then
        say "lmplz and build_binary were built meanwhile in $BIN"
        exit 0
    fi
fi
LOG="$(mktemp "${TMPDIR:-/tmp}/govtune-kenlm-apt.XXXXXX")"
WORK=""
trap 'rm -rf "$LOG" ${WORK:+"$WORK"}' EXIT

DEBS=(cmake g++ make libboost-program-options-dev libboost-system-dev libboost-thread-dev
      libboost-test-dev libeigen3-dev zlib1g-dev libbz2-dev liblzma-dev)
MISSING=()
for pkg in "${DEBS[@]}"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || MISSING+=("$pkg")
done
if [ "${#MISSING[@]}" -gt 0 ]; then
    say "installing missing Debian packages: ${MISSING[*]}"
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null 2>&1 || { say "need root or sudo to install ${MISSING[*]}"; exit 1; }
        SUDO="sudo"
    fi
    # wait for a concurrent apt/dpkg run instead of failing on its lock
    APT=(-o DPkg::Lock::Timeout=600 -o Acquire::Retries=3)
    if ! { $SUDO apt-get "${APT[@]}" update -qq \
           && DEBIAN_FRONTEND=noninteractive $SUDO apt-get "${APT[@]}" install -y -qq \
              --no-install-recommends "${MISSING[@]}"; } >"$LOG" 2>&1; then
        tail -n 30 "$LOG" >&2
        say "apt-get failed; install these packages by hand: ${MISSING[*]}"
        exit 1
    fi
    say "installed ${#MISSING[@]} packages"
else
    say "Debian build dependencies present"
fi

WORK="$(mktemp -d "${TMPDIR:-/tmp}/govtune-kenlm.XXXXXX")"

say "fetching the kenlm==$VERSION source distribution"
# --no-binary=kenlm, not :all: (which would rebuild cmake itself from source for minutes)
"$PY" -m pip download --quiet --no-deps --no-binary=kenlm --dest "$WORK" "kenlm==$VERSION" \
    >"$WORK/pip.log" 2>&1 \
    || { cat "$WORK/pip.log" >&2; say "could not download the kenlm sdist"; exit 1; }
SDIST="$(ls "$WORK"/kenlm-*.tar.gz | head -n1)"
tar -xzf "$SDIST" -C "$WORK"
SRC="$(find "$WORK" -maxdepth 1 -mindepth 1 -type d -name 'kenlm*' | head -n1)"
[ -f "$SRC/CMakeLists.txt" ] || { say "no CMakeLists.txt in $SDIST"; exit 1; }

say "configuring and building lmplz + build_binary with $JOBS jobs (about a minute on 2 cores)"
cmake -S "$SRC" -B "$WORK/build" -DCMAKE_BUILD_TYPE=Release -DKENLM_MAX_ORDER=6 \
    -DCOMPILE_TESTS=OFF >"$WORK/cmake.log" 2>&1 \
    || { tail -n 40 "$WORK/cmake.log" >&2; say "cmake configure failed"; exit 1; }
cmake --build "$WORK/build" --target lmplz build_binary -j "$JOBS" >"$WORK/make.log" 2>&1 \
    || { tail -n 40 "$WORK/make.log" >&2; say "compilation failed"; exit 1; }

mkdir -p "$BIN"
for tool in lmplz build_binary; do
    found="$(find "$WORK/build" -type f -name "$tool" -perm -u+x | head -n1)"
    [ -n "$found" ] || { say "build produced no $tool"; exit 1; }
    # copy then rename, so an interrupted copy never looks like a finished tool
    cp "$found" "$BIN/.$tool.tmp" && mv "$BIN/.$tool.tmp" "$BIN/$tool"
done
say "done: $BIN/lmplz $BIN/build_binary"
