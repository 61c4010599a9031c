#!/usr/bin/env bash
# Install Debian's translated man pages (manpages, manpages-<lang>: real running text in about
# 25 languages) and render them once into plain text per language for the KenLM reference
# (quality_models/reference.py): <out>/<lang>.reference.txt.gz, <lang>.heldout.txt.gz and
# manifest.json (pages, tokens and seconds per language).
#
# Idempotent and cached: packages already installed are not touched, and a language already
# rendered with the same package version and settings is not rendered again (a second run
# takes about a second). Rendering is bounded (about 150k reference + 15k held-out tokens per
# language, not every page) and takes about a minute on 2 cores when nothing is cached.
# Where the image excludes /usr/share/man from packages (Debian slim), the packages are
# downloaded and unpacked under <out>/debs/ instead.
# Environment: GOVTUNE_REFERENCE_DIR (default <repo>/.tools/reference), REFERENCE_JOBS (groff
# processes at a time, default: cores), REFERENCE_UNPACK=1 (unpack the .debs even when the
# installed packages have their pages: for testing the slim-image path).
set -euo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
OUT="${GOVTUNE_REFERENCE_DIR:-$REPO/.tools/reference}"
JOBS="${REFERENCE_JOBS:-$(nproc 2>/dev/null || echo 2)}"
PY="$REPO/.venv/bin/python"
[ -x "$PY" ] || PY="$(command -v python3)"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"

say() { echo "[reference_text] $*"; }

mkdir -p "$OUT"
# one run at a time (make setup and a test fixture may both ask); the second waits, then finds
# everything cached
exec 9>"$OUT/.install.lock"
flock -w 1800 9 || { say "timed out waiting for $OUT/.install.lock"; exit 3; }

START=$SECONDS
mapfile -t PACKAGES < <(cd "$REPO" && "$PY" -m quality_models.reference packages)
[ "${#PACKAGES[@]}" -gt 0 ] || { say "no package list from quality_models.reference"; exit 1; }
WANT=("${PACKAGES[@]}")
command -v groff >/dev/null 2>&1 || WANT+=(groff-base)

installed() { [ "$(dpkg-query -W -f='${db:Status-Abbrev}' "$1" 2>/dev/null)" = "ii " ]; }

SUDO=()
need_root() {
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null 2>&1 || { say "need root or sudo to $1"; exit 1; }
        SUDO=(sudo -n)
    fi
}
# wait for a concurrent apt/dpkg run instead of failing on its lock
APT=(-o DPkg::Lock::Timeout=600 -o Acquire::Retries=3)
LOG="$(mktemp "${TMPDIR:-/tmp}/govtune-reference-apt.XXXXXX")"
WORK=""
trap 'rm -rf "$LOG" ${WORK:+"$WORK"}' EXIT
UPDATED=""
apt_update() {
    [ -n "$UPDATED" ] && return 0
    "${SUDO[@]}" apt-get "${APT[@]}" update -qq >>"$LOG" 2>&1 && UPDATED=1
}

MISSING=()
for pkg in "${WANT[@]}"; do
    installed "$pkg" || MISSING+=("$pkg")
done
if [ "${#MISSING[@]}" -gt 0 ]; then
    say "installing ${#MISSING[@]} Debian packages: ${MISSING[*]}"
    need_root "install ${MISSING[*]}"
    apt_update || { tail -n 30 "$LOG" >&2; say "apt-get update failed"; exit 1; }
    # a release without one of the packages: install the others, the language goes without
    AVAILABLE=()
    for pkg in "${MISSING[@]}"; do
        if [ -n "$(apt-cache policy "$pkg" 2>/dev/null | sed -n 's/^ *Candidate: *//p' \
                   | grep -v '(none)')" ]; then
            AVAILABLE+=("$pkg")
        else
            say "package $pkg is not available from the apt sources; skipped"
        fi
    done
    if [ "${#AVAILABLE[@]}" -gt 0 ] && ! DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" \
           apt-get "${APT[@]}" install -y -qq --no-install-recommends "${AVAILABLE[@]}" \
           >>"$LOG" 2>&1; then
        tail -n 30 "$LOG" >&2
        say "apt-get failed; install these packages by hand: ${MISSING[*]}"
        exit 1
    fi
    say "installed in $((SECONDS - START)) s"
else
    say "man-page packages present"
fi

# a package whose man pages are not on disk (dpkg path-exclude in slim images): unpack its .deb
UNPACK=()
for pkg in "${PACKAGES[@]}"; do
    installed "$pkg" || continue
    version="$(dpkg-query -W -f='${Version}' "$pkg")"
    if [ -f "$OUT/debs/$pkg/VERSION" ] && [ "$(cat "$OUT/debs/$pkg/VERSION")" = "$version" ]; then
        continue
    fi
    pages=0
    if [ "${REFERENCE_UNPACK:-0}" != 1 ]; then
        while IFS= read -r path; do
            [ -f "$path" ] && { pages=1; break; }
        done < <(dpkg-query -L "$pkg" | grep -E '^/usr/share/man/([^/]+/)?man[0-9][^/]*/[^/]+$')
    fi
    [ "$pages" = 1 ] || UNPACK+=("$pkg")
done
if [ "${#UNPACK[@]}" -gt 0 ]; then
    say "unpacking ${#UNPACK[@]} packages whose pages are not installed: ${UNPACK[*]}"
    WORK="$(mktemp -d "${TMPDIR:-/tmp}/govtune-reference.XXXXXX")"
    # apt-get download runs as the _apt user when it can: give it a folder it may write to
    chmod 0777 "$WORK"
    if ! (cd "$WORK" && apt-get "${APT[@]}" download -qq "${UNPACK[@]}") >>"$LOG" 2>&1; then
        need_root "update the package lists"
        if ! { apt_update && (cd "$WORK" && apt-get "${APT[@]}" download -qq "${UNPACK[@]}"); } \
             >>"$LOG" 2>&1; then
            tail -n 30 "$LOG" >&2
            say "apt-get download failed for: ${UNPACK[*]}"
            exit 1
        fi
    fi
    for pkg in "${UNPACK[@]}"; do
        deb="$(ls "$WORK/${pkg}"_*.deb | head -n1)"
        rm -rf "$OUT/debs/$pkg.tmp" && mkdir -p "$OUT/debs/$pkg.tmp"
        dpkg-deb -x "$deb" "$OUT/debs/$pkg.tmp"
        dpkg-deb -f "$deb" Version >"$OUT/debs/$pkg.tmp/VERSION"
        rm -rf "$OUT/debs/$pkg" && mv "$OUT/debs/$pkg.tmp" "$OUT/debs/$pkg"
    done
fi

RENDER_START=$SECONDS
(cd "$REPO" && "$PY" -m quality_models.reference render --dir "$OUT" --jobs "$JOBS")
say "done in $((SECONDS - START)) s (rendering $((SECONDS - RENDER_START)) s): $OUT"
