#!/usr/bin/env bash
# The GPU benchmark runs behind docs/performance.md, on a Linux machine with an NVIDIA GPU and no network.
#
#   bench/gpu.sh install WHEEL_DIR...   install every *.whl found (and a wheel split into *.part.* pieces,
#                                       joined first) into $SITE with --no-deps, link CUDA's libraries
#   bench/gpu.sh kernels|engine|qwen-engine|first-token|autorouter|batching|qwen-batching [LOG_DIR]   one step (logs in
#                                       LOG_DIR); PROFILE=1 adds py-spy to engine and batching (slows higgs)
#
# What to bring (pip download --only-binary=:all: --python-version 3.12 ... on a machine with network):
# mlx, mlx-cuda-13 and mlx-lm; higgs and every plugin built as wheels (`uv build --wheel`); and the
# runtime dependencies the machine's Python may lack (aiohttp and its helpers, pydantic, pydantic-settings,
# cyclopts, pluggy, tomlkit, gguf, outlines-core). The CUDA runtime libraries come from the machine's
# `nvidia` Python package (nvidia-cublas, -cudnn, -nvrtc, ...), linked beside mlx (see the GPU notes).
#
# On a lent machine whose calls carry at most 64 MiB: split the CUDA wheel (`split -b 45M W W.part.`),
# carry mlx, mlx-lm, the runtime wheels and the first part in one call that copies them out of the work
# tree (e.g. to /root/w), then at once (an idle machine is given back within ~30 s) a second call carrying
# the second part, the higgs wheels and the test wheels that runs `install` on all those folders and the
# steps. The steps fit one 600 s call only cut down (`kernels` ~180 s cold; `batching.py --levels 1,8
# --prefix-reps 1 --long 0` ~175 s for three servers); carry MLX's kernel cache (MLX_PTX_CACHE_DIR) back
# and forth as a tarball to skip the cold compiles.
set -euo pipefail
cd "$(dirname "$0")/.."
SITE=${SITE:-/tmp/site}
PY=${PYTHON:-python3}
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export MLX_PTX_CACHE_DIR=${MLX_PTX_CACHE_DIR:-$HOME/.cache/mlx-ptx}

step=${1:-}; shift || true
case "$step" in
  install)
    mkdir -p "$SITE" /tmp/wheels
    for dir in "$@"; do
      cp "$dir"/*.whl /tmp/wheels/ 2>/dev/null || true
    done
    # a wheel too large to carry in one piece: NAME.whl.part.aa, NAME.whl.part.ab, ... (in any of the dirs)
    parts=$(for dir in "$@"; do ls "$dir"/*.whl.part.* 2>/dev/null || true; done | awk -F/ '{print $NF, $0}' | sort | cut -d' ' -f2)
    for name in $(for part in $parts; do basename "${part%.part.*}"; done | sort -u); do
      cat $(for part in $parts; do [ "$(basename "${part%.part.*}")" = "$name" ] && echo "$part"; done) > "/tmp/wheels/$name"
    done
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" /tmp/wheels/*.whl
    nvidia=$("$PY" -c 'import nvidia, os; print(list(nvidia.__path__)[0])')
    ln -sfn "$nvidia" "$SITE/nvidia"
    "$PY" -c 'import mlx.core as mx, mlx_lm, higgs_mlx; print("mlx", mx.__version__, mx.default_device(), "cuda", mx.cuda.is_available())'
    "$PY" -m higgs plugins list > /tmp/plugins.txt && head -3 /tmp/plugins.txt
    ;;
  kernels)  # the decode-attention kernel's CUDA tests, then the kernel and row folding against MLX's ways
    "$PY" -m pytest -q -p no:cacheprovider plugins/higgs-mlx/tests/test_mlx_decode_attention.py \
      plugins/higgs-mlx/tests/test_mlx_row_folding.py
    "$PY" bench/decode_attention.py
    "$PY" bench/row_folding.py --rows 1,2,4,8,16,32
    ;;
  engine)  # single-stream prefill/decode vs mlx-lm's generate_step: compiled steps (the default: with the
    # decode-attention kernel on CUDA), the same with MLX's masked attention, and eager steps
    run=("$PY" bench/engine.py --preset llama-3.2-1b-instruct --prompt 512 --gen 128 --repeats 9 --masked --eager)
    # PROFILE=1: and where the threads spend the time (py-spy slows the two-thread engine path more than
    # mlx-lm's loop: 0.79x / 0.70x under it against 0.92x / 0.89x without, so no numbers from such a run)
    if [ "${PROFILE:-0}" = 1 ] && command -v py-spy >/dev/null; then
      py-spy record --nonblocking --threads --rate 250 --format raw -o "${1:-/tmp}/engine-profile.txt" -- "${run[@]}"
      "$PY" bench/profile_summary.py "${1:-/tmp}/engine-profile.txt" --top 10 | head -40
    else
      "${run[@]}"
    fi
    ;;
  qwen-engine)
    "$PY" bench/engine.py --preset qwen3-1.7b --prompt 512 --gen 128 --repeats 5 --masked
    ;;
  autorouter)  # classification latency for a ~1k-token conversation on the Qwen3-1.7B shape
    "$PY" bench/autorouter.py --preset qwen3-1.7b --repeats 20 --warmup 3
    ;;
  batching)  # higgs vs mlx_lm server over HTTP (SERVERS: e.g. higgs,higgs-masked,higgs-eager,mlx_lm)
    profile=(); [ "${PROFILE:-0}" = 1 ] && profile=(--profile)
    "$PY" bench/batching.py --preset llama-3.2-1b-instruct --servers "${SERVERS:-higgs,higgs-masked,mlx_lm}" \
      --levels "${LEVELS:-1,2,4,8,16,32}" --rounds 2 --prefix-reps 2 --max-seconds 200 \
      --json "${1:-/tmp}/batching.json" "${profile[@]}"
    for f in /tmp/higgs-bench-batching/*-profile.txt; do
      [ -f "$f" ] || continue
      echo "-- $f"; "$PY" bench/profile_summary.py "$f" --top 8; cp "$f" "${1:-/tmp}/" || true
    done
    ;;
  first-token)  # time to the first token taken apart (MLX's model calls, mlx-lm, the higgs engine), both shapes;
    # the Qwen3 shape again with MLX's cuDNN attention off (MLX builds a cuDNN graph per new prefill shape)
    for preset in qwen3-1.7b llama-3.2-1b-instruct; do
      "$PY" bench/first_token.py --preset "$preset" --repeats 7
    done
    MLX_CUDA_USE_CUDNN_SDPA=0 "$PY" bench/first_token.py --preset qwen3-1.7b --repeats 7
    ;;
  qwen-batching)  # SERVERS=higgs,higgs-padded,higgs-nocudnn,mlx_lm: padded prefill shapes; cuDNN prefill off
    "$PY" bench/batching.py --preset qwen3-1.7b --servers "${SERVERS:-higgs,higgs-eager,mlx_lm}" \
      --levels "${LEVELS:-1,4,8,16}" --rounds 2 \
      --prefix-reps 1 --long 0 --max-seconds 150 --json "${1:-/tmp}/qwen-batching.json"
    ;;
  *)
    echo "usage: bench/gpu.sh install WHEEL_DIR... | kernels | engine | qwen-engine | first-token | autorouter | batching | qwen-batching" >&2
    exit 2
    ;;
esac
