#!/usr/bin/env bash
# Install the OpenMMLab stack (mmengine, mmcv with compiled ops, mmsegmentation, mmdet)
# into the virtual environment that owns PYTHON.
#
#   bash scripts/install_mm.sh .venv/bin/python
#
# Follows /work/shared/MM_STACK.md. PyPI has no mmcv 2.1.0 wheel for torch 2.14, and
# its setup.py asks for C++14/17 while the torch 2.14 headers need C++20, so mmcv is
# built from the sdist with the standard patched. The build takes ~10 minutes on 2 cores,
# so the wheel is built once and cached under
#   ${TCJEPA_CACHE_DIR:-$HOME/.cache/tcjepa}/wheels/<torch>-<python ABI>-<cpu|cuda>/
# and every later install takes seconds. Running the script again is a no-op when the
# stack already imports.
#
# Environment:
#   TCJEPA_CACHE_DIR     cache root (default $HOME/.cache/tcjepa)
#   FORCE_CUDA=1         build the mmcv CUDA ops even where no GPU is visible (mmcv's own flag)
#   MAX_JOBS             parallel compile jobs (default 2)
set -euo pipefail

MMENGINE_VERSION=0.10.7
MMCV_VERSION=2.1.0
MMSEG_VERSION=1.2.2
MMDET_VERSION=3.3.0
# setuptools >= 81 drops pkg_resources, which mmcv's setup.py and mm code still import.
SETUPTOOLS_VERSION=80.9.0

log() { printf '[install_mm %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() {
    log "ERROR: $*"
    log "see /work/shared/MM_STACK.md for the measured recipe this script follows"
    exit 1
}

[[ $# -eq 1 ]] || die "usage: bash scripts/install_mm.sh PYTHON   (e.g. .venv/bin/python)"
PYTHON=$1
[[ -x $PYTHON ]] || die "PYTHON '$PYTHON' is not an executable; create the venv first (make install)"
pip_() { "$PYTHON" -m pip --disable-pip-version-check "$@"; }

TORCH_VERSION=$("$PYTHON" -c 'import torch; print(torch.__version__.split("+")[0])' 2>/dev/null) ||
    die "torch is not importable from $PYTHON; install torch==2.14.1 torchvision==0.29.1 first (make install)"
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
WHEEL_DIR=$CACHE_ROOT/wheels/mmcv-$MMCV_VERSION-torch$TORCH_VERSION-$PY_ABI-$FLAVOR
mkdir -p "$WHEEL_DIR" || die "cannot create the wheel cache $WHEEL_DIR; set TCJEPA_CACHE_DIR to a writable folder"

log "step 1/4: build tools + mmengine $MMENGINE_VERSION"
pip_ install -q "setuptools==$SETUPTOOLS_VERSION" wheel ninja "mmengine==$MMENGINE_VERSION" ||
    die "pip could not install setuptools/wheel/ninja/mmengine (is PyPI reachable?)"

find_wheel() { compgen -G "$WHEEL_DIR/mmcv-$MMCV_VERSION-*.whl" | head -n 1 || true; }

# Two installs at once (e.g. parallel make) must not both spend 10 minutes building.
exec 9>"$WHEEL_DIR/.lock"
flock 9
WHEEL=$(find_wheel)
if [[ -n $WHEEL ]]; then
    log "step 2/4: cached mmcv wheel found: $WHEEL"
else
    log "step 2/4: building mmcv $MMCV_VERSION wheel with ops ($FLAVOR) - about 10 minutes on 2 cores, once"
    BUILD=$(mktemp -d "${TMPDIR:-/tmp}/mmcv-build.XXXXXX")
    trap 'rm -rf "$BUILD"' EXIT
    # --no-build-isolation: mmcv's setup.py imports torch even to read its metadata.
    pip_ download -q --no-deps --no-binary :all: --no-build-isolation -d "$BUILD" "mmcv==$MMCV_VERSION" ||
        die "could not download the mmcv $MMCV_VERSION sdist from PyPI"
    tar -xzf "$BUILD"/mmcv-"$MMCV_VERSION".tar.gz -C "$BUILD" || die "could not unpack the mmcv sdist in $BUILD"
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

log "step 3/4: installing $(basename "$WHEEL") and its dependencies"
pip_ install -q --force-reinstall --no-deps "$WHEEL" || die "pip could not install $WHEEL (delete it to rebuild)"
pip_ install -q "$WHEEL" || die "pip could not install the dependencies of $WHEEL"

log "step 4/4: mmsegmentation $MMSEG_VERSION, mmdet $MMDET_VERSION, ftfy, regex, pycocotools"
pip_ install -q "mmsegmentation==$MMSEG_VERSION" "mmdet==$MMDET_VERSION" ftfy regex pycocotools ||
    die "pip could not install mmsegmentation/mmdet"

"$PYTHON" -c 'import mmcv.ops, mmseg, mmdet' ||
    die "the stack installed but 'import mmcv.ops, mmseg, mmdet' fails (traceback above)"
stack_ok || die "installed versions differ from mmcv $MMCV_VERSION / mmseg $MMSEG_VERSION / mmdet $MMDET_VERSION / mmengine $MMENGINE_VERSION"
log "done: mmengine $MMENGINE_VERSION, mmcv $MMCV_VERSION with ops, mmseg $MMSEG_VERSION, mmdet $MMDET_VERSION"
