#!/usr/bin/env bash
# Install the OpenMMLab stack (mmengine, mmcv with compiled ops, mmsegmentation, mmdet)
# into the virtual environment that owns PYTHON.
#
#   bash scripts/install_mm.sh .venv/bin/python
#
# The recipe and why it is this way: docs/INSTALL.md. In short: everything but mmcv comes
# from requirements/lock.txt (hash-checked); PyPI has no mmcv 2.1.0 wheel for torch 2.14, so
# mmcv is built from its source archive, whose sha256 is pinned below and checked before the
# build, with its C++ standard raised to C++20 (the torch 2.14 headers need it). The build
# takes ~10 minutes on 2 cores, so the wheel is cached under
#   ${TCJEPA_CACHE_DIR:-$HOME/.cache/tcjepa}/wheels/mmcv-<version>-src<sha256 prefix>-torch<torch>-<ABI>-<cpu|cuda>/
# (a different source archive gets a different folder, so it can never reuse this wheel) and
# every later install takes seconds. Running the script again is a no-op when the stack imports.
#
# Environment:
#   TCJEPA_CACHE_DIR     cache root (default $HOME/.cache/tcjepa)
#   FORCE_CUDA=1         build the mmcv CUDA ops even where no GPU is visible (mmcv's own flag)
#   MAX_JOBS             parallel compile jobs (default 2)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
LOCK=$ROOT/requirements/lock.txt
MMCV_VERSION=2.1.0
# sha256 of mmcv-2.1.0.tar.gz as published on PyPI.
MMCV_SDIST_SHA256=d387bcab66b467479b6660310e23746cfc79c6e57acf04094680adb499a5cd3f

log() { printf '[install_mm %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() {
    log "ERROR: $*"
    log "see docs/INSTALL.md for the recipe this script follows"
    exit 1
}

[[ $# -eq 1 ]] || die "usage: bash scripts/install_mm.sh PYTHON   (e.g. .venv/bin/python)"
PYTHON=$1
[[ -x $PYTHON ]] || die "PYTHON '$PYTHON' is not an executable; create the venv first (make install)"
[[ -f $LOCK ]] || die "$LOCK is missing; run this script from a checkout of the project"
pip_() { "$PYTHON" -m pip --disable-pip-version-check "$@"; }
locked() { sed -n "s/^$1==\([^ ]*\).*/\1/p" "$LOCK"; }
MMENGINE_VERSION=$(locked mmengine)
MMSEG_VERSION=$(locked mmsegmentation)
MMDET_VERSION=$(locked mmdet)
[[ -n $MMENGINE_VERSION && -n $MMSEG_VERSION && -n $MMDET_VERSION ]] ||
    die "$LOCK does not pin mmengine, mmsegmentation and mmdet; regenerate it with make lock"

TORCH_VERSION=$("$PYTHON" -c 'import torch; print(torch.__version__.split("+")[0])' 2>/dev/null) ||
    die "torch is not importable from $PYTHON; install the locked set first (make install)"
PY_ABI=$("$PYTHON" -c 'import sys; print(f"cp{sys.version_info.major}{sys.version_info.minor}")')
FLAVOR=$("$PYTHON" -c 'import os, torch; print("cuda" if torch.cuda.is_available() or os.environ.get("FORCE_CUDA") == "1" else "cpu")')
log "python $PYTHON ($PY_ABI), torch $TORCH_VERSION, mmcv ops flavour: $FLAVOR"

stack_ok() {
    "$PYTHON" - "$MMCV_VERSION" "$MMSEG_VERSION" "$MMDET_VERSION" "$MMENGINE_VERSION" <<'EOF' 2>/dev/null
import sys
import mmcv, mmcv.ops, mmdet, mmengine, mmseg
want = dict(zip(["mmcv", "mmseg", "mmdet", "mmengine"], sys.argv[1:]))
got = {"mmcv": mmcv.__version__, "mmseg": mmseg.__version__, "mmdet": mmdet.__version__,
       "mmengine": mmengine.__version__}
sys.exit(0 if got == want else 1)
EOF
}

if stack_ok; then
    log "mmengine $MMENGINE_VERSION, mmcv $MMCV_VERSION (ops), mmseg $MMSEG_VERSION, mmdet $MMDET_VERSION already import: nothing to do"
    exit 0
fi

CACHE_ROOT=${TCJEPA_CACHE_DIR:-$HOME/.cache/tcjepa}
WHEEL_DIR=$CACHE_ROOT/wheels/mmcv-$MMCV_VERSION-src${MMCV_SDIST_SHA256:0:16}-torch$TORCH_VERSION-$PY_ABI-$FLAVOR
mkdir -p "$WHEEL_DIR" || die "cannot create the wheel cache $WHEEL_DIR; set TCJEPA_CACHE_DIR to a writable folder"

log "step 1/4: the locked set, mm packages and build tools included ($LOCK, hash-checked)"
pip_ install -q --require-hashes --only-binary :all: -r "$LOCK" ||
    die "pip could not install $LOCK (is PyPI reachable? a hash mismatch is named above)"

find_wheel() { compgen -G "$WHEEL_DIR/mmcv-$MMCV_VERSION-*.whl" | head -n 1 || true; }

# Two installs at once (e.g. parallel make) must not both spend 10 minutes building.
exec 9>"$WHEEL_DIR/.lock"
flock 9
WHEEL=$(find_wheel)
if [[ -n $WHEEL ]]; then
    log "step 2/4: cached mmcv wheel found: $WHEEL"
else
    log "step 2/4: building mmcv $MMCV_VERSION wheel with ops ($FLAVOR) - about 10 minutes on 2 cores, once"
    BUILD=$(mktemp -d -t mmcv-build.XXXXXX)
    trap 'rm -rf "$BUILD"' EXIT
    # pip checks the archive against the pinned hash as it downloads it (--require-hashes);
    # --no-build-isolation because mmcv's setup.py imports torch even to read its metadata.
    echo "mmcv==$MMCV_VERSION --hash=sha256:$MMCV_SDIST_SHA256" >"$BUILD/mmcv-source.txt"
    pip_ download -q --no-deps --no-binary :all: --no-build-isolation --require-hashes \
        -d "$BUILD" -r "$BUILD/mmcv-source.txt" ||
        die "could not download the mmcv $MMCV_VERSION source archive with sha256 $MMCV_SDIST_SHA256 from PyPI"
    SDIST=$BUILD/mmcv-$MMCV_VERSION.tar.gz
    echo "$MMCV_SDIST_SHA256  $SDIST" | sha256sum --check --quiet ||
        die "$SDIST does not have the pinned sha256 $MMCV_SDIST_SHA256: refusing to build it"
    tar -xzf "$SDIST" -C "$BUILD" || die "could not unpack the mmcv sdist in $BUILD"
    SRC=$BUILD/mmcv-$MMCV_VERSION
    sed -i -e 's/-std=c++14/-std=c++20/g' -e 's/-std=c++17/-std=c++20/g' "$SRC/setup.py"
    grep -q -- '-std=c++20' "$SRC/setup.py" ||
        die "patching $SRC/setup.py to -std=c++20 changed nothing: the mmcv sdist layout differs from $MMCV_VERSION"
    START=$SECONDS
    MMCV_WITH_OPS=1 MAX_JOBS=${MAX_JOBS:-2} CFLAGS="${CFLAGS:-} -g0" \
        pip_ wheel --no-build-isolation --no-deps -w "$BUILD/dist" "$SRC" >"$BUILD/build.log" 2>&1 || {
        tail -n 40 "$BUILD/build.log" >&2
        cp "$BUILD/build.log" "$WHEEL_DIR/failed-build.log" 2>/dev/null || true
        die "mmcv build failed (full log: $WHEEL_DIR/failed-build.log)"
    }
    BUILT=$(compgen -G "$BUILD/dist/mmcv-$MMCV_VERSION-*.whl" | head -n 1) || die "the mmcv build produced no wheel"
    # Copy then rename so an interrupted copy never looks like a cached wheel.
    cp "$BUILT" "$WHEEL_DIR/.partial" && mv "$WHEEL_DIR/.partial" "$WHEEL_DIR/$(basename "$BUILT")"
    WHEEL=$WHEEL_DIR/$(basename "$BUILT")
    log "built and cached $WHEEL in $((SECONDS - START)) s"
fi
flock -u 9

log "step 3/4: installing $(basename "$WHEEL") (its requirements came from the lock)"
pip_ install -q --force-reinstall --no-deps "$WHEEL" || die "pip could not install $WHEEL (delete it to rebuild)"

log "step 4/4: checking that mmcv.ops, mmseg and mmdet import"
"$PYTHON" -c 'import mmcv.ops, mmseg, mmdet' ||
    die "the stack installed but 'import mmcv.ops, mmseg, mmdet' fails (traceback above)"
stack_ok || die "installed versions differ from mmcv $MMCV_VERSION / mmseg $MMSEG_VERSION / mmdet $MMDET_VERSION / mmengine $MMENGINE_VERSION"
log "done: mmengine $MMENGINE_VERSION, mmcv $MMCV_VERSION with ops, mmseg $MMSEG_VERSION, mmdet $MMDET_VERSION"
