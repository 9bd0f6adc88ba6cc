#!/bin/sh
# The image's build steps, in one place: docker/Dockerfile runs them, and
# tests/test_deploy.py runs this same script in a plain venv, so the test proves what the
# image does rather than a copy of it.
#
#   build.sh wheel SRC DIST [PIP-OPTION...]    build edge's wheel from the source tree SRC into
#                                              DIST, compiling edge/_fastpath.pyx; fails if the
#                                              wheel came out without the compiled module
#   build.sh install DIST [PIP-OPTION...]      install the wheel found in DIST with the extras
#                                              named in $EDGE_EXTRAS (default "tracing", so
#                                              ENABLE_TRACING=true works in the image; "" for
#                                              none), dependencies from the package index
#                                              unless PIP-OPTIONs say otherwise
#
# `python` is whatever interpreter comes first on PATH.
set -eu

usage() {
    echo "usage: build.sh wheel SRC DIST [PIP-OPTION...] | build.sh install DIST [PIP-OPTION...]" >&2
    exit 2
}

[ $# -ge 1 ] || usage
step=$1
shift
case "$step" in
wheel)
    [ $# -ge 2 ] || usage
    src=$1
    dist=$2
    shift 2
    # A relative SRC would be read as a package name by pip; anchor it.
    case "$src" in /*) ;; *) src="./$src" ;; esac
    python -m pip wheel --no-deps --no-cache-dir --wheel-dir "$dist" "$@" "$src"
    # Without a C compiler setuptools would still produce a pure-Python wheel, and edge
    # would silently run its slower twin; an image must never ship that way.
    python - "$dist" <<'PY'
import pathlib, sys, zipfile

wheels = sorted(pathlib.Path(sys.argv[1]).glob("edge-*.whl"))
if len(wheels) != 1:
    sys.exit(f"expected one edge wheel in {sys.argv[1]}, found {len(wheels)}")
names = zipfile.ZipFile(wheels[0]).namelist()
if not any(n.startswith("edge/_fastpath.") and n.endswith(".so") for n in names):
    sys.exit(f"{wheels[0].name} lacks the compiled edge/_fastpath module")
print(f"built {wheels[0].name}")
PY
    ;;
install)
    [ $# -ge 1 ] || usage
    dist=$1
    shift
    extras=${EDGE_EXTRAS-tracing}
    wheel=$(python - "$dist" "$extras" <<'PY'
import pathlib, sys, zipfile

wheels = sorted(pathlib.Path(sys.argv[1]).glob("edge-*.whl"))
if len(wheels) != 1:
    sys.exit(f"expected one edge wheel in {sys.argv[1]}, found {len(wheels)}")
with zipfile.ZipFile(wheels[0]) as zf:
    metadata = zf.read(next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA")))
provided = {line.split(":", 1)[1].strip() for line in metadata.decode().splitlines()
            if line.startswith("Provides-Extra:")}
# pip only warns about an extra the wheel lacks; the image would then fail at start-up.
missing = [e for e in sys.argv[2].split(",") if e.strip() and e.strip() not in provided]
if missing:
    sys.exit(f"{wheels[0].name} does not provide the extra(s) {', '.join(missing)}")
print(wheels[0])
PY
)
    if [ -n "$extras" ]; then
        wheel="$wheel[$extras]"
    fi
    python -m pip install --no-cache-dir "$wheel" "$@"
    ;;
*)
    usage
    ;;
esac
