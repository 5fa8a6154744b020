#!/usr/bin/env bash
# Every GPU figure docs/performance.md lists, in one bounded run (no new point starts after 480 s,
# so it ends within 10 minutes): the CUDA-graph == eager test, the 7B random bf16 step at batch 1-64
# with graphs and at batch 1 eager, int8 memory and step time, and `assistant bench server` at 1-64
# sessions. Writes OUT/gpu-bench.json and OUT/gpu-bench.md (see docs/performance.md). A graph
# capture or int8 kernel that fails is recorded under "errors" and the point is measured eagerly.
#
#   bench/gpu.sh [--out DIR]       # one NVIDIA GPU, about 120 GB free for 64 slots (default DIR bench/out)
#   bench/gpu.sh --dry-run         # the same script on CPU: tiny model, 3 steps a point, exits 0
#
# Python: $PYTHON, else .venv/bin/python, else python3; it needs a CUDA build of torch. On a host
# without network, carry the wheels of bench/gpu-wheels.txt, with their dependencies, in .whl/
# beside this checkout (docs/performance.md has the download command): they are installed into a
# temporary folder put first on PYTHONPATH, so the host's own packages stay as they are. Before
# anything is measured, every package of the list is checked, and what is missing is named.
set -uo pipefail
cd "$(dirname "$0")/.."

mode=gpu
out=bench/out
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) mode=dry-run ;;
        --out) out=${2:?--out needs a folder}; shift ;;
        -h | --help) sed -n '2,17p' "$0"; exit 0 ;;
        *) echo "bench/gpu.sh: unknown option $1 (try --help)" >&2; exit 2 ;;
    esac
    shift
done

python=${PYTHON:-}
if [ -z "$python" ]; then
    if [ -x .venv/bin/python ]; then python=.venv/bin/python; else python=python3; fi
fi

site=""
if [ "$mode" = gpu ] && compgen -G ".whl/*.whl" >/dev/null; then
    site=$(mktemp -d)
    "$python" -m pip install -q --no-index --find-links .whl --no-compile --no-cache-dir --no-warn-conflicts \
        --target "$site" -r bench/gpu-wheels.txt ||
        { echo "bench/gpu.sh: installing .whl/ failed (were the wheels downloaded for this Python and platform?)" >&2; exit 2; }
fi
export PYTHONPATH="$PWD${site:+:$site}${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
exec "$python" -m bench.gpu --mode "$mode" --out "$out"
