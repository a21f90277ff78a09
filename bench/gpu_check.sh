#!/usr/bin/env bash
# The GPU path, proven on a machine with an NVIDIA GPU: one command (`make gpu-check`).
#
#  0. asks the CUDA driver (libcuda, no package needed) for a GPU: without one, one line and exit 0
#     (exit 2 with REQUIRE_GPU=1)
#  1. installs what is needed, in one of two modes:
#     - default (online): .venv by `make install`, then the GPU extra that fits the driver
#       (gpu-cu12 or gpu-cu13, as `emote doctor` names it), onnxruntime-gpu in place of onnxruntime
#     - PYTHON=/path/to/python (offline, on an image that already has CUDA and perhaps PyTorch):
#       that interpreter as it is, no venv; the project with `pip install --no-deps --no-build-isolation`
#       (editable) where it is not importable, and, with WHEELHOUSE=DIR, what is missing from that
#       folder of wheels (--no-index --no-deps); nothing is fetched
#     then `emote doctor`, and bench/gpu_smoke.py (the CUDA layer alone) where cuda-python is there
#  2. exports the tiny and demo bundles with fp16 step graphs (+ int8 Q/DQ step graphs through
#     `emote calibrate` and `emote quantize`)
#  3. checks that ONNX Runtime's CUDA and TensorRT providers load (no quiet fall back to the CPU)
#  4. builds TensorRT plans: fp16, and int8 where the bundle has int8 graphs
#  5. runs the GPU tests (tests/test_tensorrt.py -m gpu): fails when they all skip (bench/gpu_tests_gate.py)
#  6. compares every plan against ONNX Runtime on the same ONNX with polygraphy, at stated tolerances
#  7. runs the pipeline with and without the CUDA graph: latency per component, per step and per clip
# A step whose packages are absent is skipped with a line saying which; the skipped steps are listed
# at the end. Exit status: 0 when every step that ran passed, 1 when any failed.
#
# Results go to build/gpu-check/ (override with OUT=...); PRESETS="tiny" checks the tiny bundle only.
# Tolerances (polygraphy, elementwise, on random inputs; every failure is printed and counted):
#   fp32 plans: atol 1e-3, rtol 1e-2   (TensorRT may use TF32 tensor cores for fp32 convolutions and GEMMs)
#   fp16 plans: atol 2e-2, rtol 5e-2   (fp16 backbone; the solver update stays fp32 in the graph)
#   int8 plans: mean abs error <= 5e-2 (Q/DQ rounding moves single elements; the mean must stay small)
#   uint8 frames outputs: atol 2 (one rounding step either side, doubled for fp16)
set -euo pipefail
cd "$(dirname "$0")/.."

# 0. a GPU, asked of the CUDA driver before anything is installed or written (emote/engines/probe.py
# runs on the standard library alone)
probe_py=${PYTHON:-python3}
command -v "$probe_py" >/dev/null || { echo "gpu-check: no Python interpreter $probe_py (set PYTHON=...)"; exit 2; }
IFS=$'\t' read -r gpus driver_cuda extra why < <("$probe_py" emote/engines/probe.py)
if [ "${gpus:-0}" = 0 ] && [ ! -f /etc/nv_tegra_release ]; then
    echo "gpu-check: no NVIDIA GPU here ($why): nothing to check, run it on a machine with one"
    [ "${REQUIRE_GPU:-0}" = 1 ] && exit 2
    exit 0
fi

OUT=${OUT:-build/gpu-check}
mkdir -p "$OUT"
LOG="$OUT/gpu_check.log"
exec > >(tee "$LOG") 2>&1

say() { printf '\n== %s\n' "$*"; }
failures=0
fail() { echo "FAILED: $*"; failures=$((failures + 1)); }
skipped=()
skip() { echo "SKIPPED: $*"; skipped+=("$*"); }

say "machine"
echo "CUDA driver: $gpus device(s), supports CUDA $driver_cuda; the extra that fits: $extra"
if [ -f /etc/nv_tegra_release ]; then
    head -n 1 /etc/nv_tegra_release
elif command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv || true
fi

if [ -n "${PYTHON:-}" ]; then
    PY=$PYTHON
    say "install (PYTHON=$PY as it is: nothing fetched)"
    if ! (cd / && "$PY" -c "import emote" 2>/dev/null); then
        if "$PY" -c "import setuptools" 2>/dev/null; then
            "$PY" -m pip install --quiet --no-deps --no-build-isolation --no-index -e . \
                || { echo "gpu-check: pip could not install the project into $PY (see above)"; exit 1; }
        else
            echo "gpu-check: $PY has no setuptools: the project cannot be installed offline into it"; exit 1
        fi
    fi
    if [ -n "${WHEELHOUSE:-}" ]; then
        # what is missing, by import name and distribution name (the GPU extra's and the export extra's)
        missing=$("$PY" - "$extra" <<'PYEOF'
import sys
from emote.engines.probe import has_module
cu = {"gpu-cu12": "12", "gpu-cu13": "13"}.get(sys.argv[1], "12")
need = {"numpy": "numpy", "onnxruntime": "onnxruntime-gpu", "soundfile": "soundfile", "soxr": "soxr", "PIL": "pillow",
        "av": "av", "tqdm": "tqdm", "cv2": "opencv-python-headless", "torch": "torch", "diffusers": "diffusers",
        "transformers": "transformers", "onnx": "onnx", "onnxscript": "onnxscript", "onnxslim": "onnxslim",
        "safetensors": "safetensors", "polygraphy": "polygraphy", "pytest": "pytest", "tensorrt": f"tensorrt-cu{cu}"}
out = [dist for mod, dist in need.items() if not has_module(mod)]
if not (has_module("cuda.bindings") or has_module("cuda.cudart")):
    out.append("cuda-python")
print(" ".join(out))
PYEOF
)
        for dist in $missing; do
            if "$PY" -m pip install --quiet --no-index --find-links "$WHEELHOUSE" --no-deps --no-build-isolation "$dist" >>"$OUT/pip.log" 2>&1; then
                echo "installed $dist from $WHEELHOUSE"
            else
                echo "not in $WHEELHOUSE: $dist (see $OUT/pip.log)"
            fi
        done
    fi
    EMOTE=("$PY" -m emote.cli)
    POLYGRAPHY=("$PY" -m polygraphy)
elif [ -f /etc/nv_tegra_release ]; then
    BIN=.venv/bin
    # Jetson: TensorRT comes with JetPack for the system Python; the venv must see it (docs/jetson.md)
    say "install (Jetson: .venv over the system site packages, the jetson extra)"
    [ -x "$BIN/python" ] || python3 -m venv --system-site-packages .venv
    # a .venv made earlier without the system site packages cannot see JetPack's TensorRT
    grep -q "include-system-site-packages = true" .venv/pyvenv.cfg \
        || { echo ".venv was made without --system-site-packages: JetPack's TensorRT is invisible to it (docs/jetson.md); remove .venv and rerun"; exit 2; }
    "$BIN/pip" install --quiet torch==2.13.0
    "$BIN/pip" install --quiet -e ".[export,test,jetson]"
    PY=$BIN/python EMOTE=("$BIN/emote") POLYGRAPHY=("$BIN/polygraphy")
else
    BIN=.venv/bin
    [ "$extra" != - ] || { echo "gpu-check: no GPU extra fits this driver (CUDA $driver_cuda): update the driver (docs/gpu.md)"; exit 2; }
    say "install (.venv with the $extra extra; needs internet: offline, use PYTHON=... WHEELHOUSE=...)"
    make install
    "$BIN/pip" install --quiet -e ".[$extra]"
    # onnxruntime (a base dependency, so the line above keeps or reinstalls it) and onnxruntime-gpu
    # write the same 'onnxruntime' module: whichever came last owns the files. Remove the CPU build,
    # which takes the shared files with it, then put the GPU build's files back.
    ort_gpu=$("$BIN/python" -c "import importlib.metadata as m; print(m.version('onnxruntime-gpu'))")
    "$BIN/pip" uninstall --yes --quiet onnxruntime || true
    "$BIN/pip" install --quiet --force-reinstall --no-deps "onnxruntime-gpu==$ort_gpu"
    PY=$BIN/python EMOTE=("$BIN/emote") POLYGRAPHY=("$BIN/polygraphy")
fi

has() { "$PY" -c "import sys; from emote.engines.probe import has_module; sys.exit(0 if all(has_module(m) for m in sys.argv[1:]) else 1)" "$@"; }
has_cuda_python() { "$PY" -c "import sys; from emote.engines.cuda import installed; sys.exit(0 if installed() else 1)"; }
export_ok=1; has torch diffusers transformers onnx onnxscript onnxslim || export_ok=0
trt_ok=1; { has tensorrt && has_cuda_python; } || trt_ok=0
poly_ok=1; has polygraphy || poly_ok=0
"${EMOTE[@]}" doctor
say "the CUDA layer alone (bench/gpu_smoke.py: pinned copies, events, a captured graph, capture refusal)"
if has_cuda_python; then
    "$PY" bench/gpu_smoke.py || fail "gpu_smoke (the lines above say which check)"
else
    skip "gpu_smoke: cuda-python is not installed"
fi
if [ "$trt_ok" = 1 ]; then
    "$PY" -c "from emote.engines.gpu_report import tensorrt_usable; raise SystemExit(0 if tensorrt_usable() else 'TensorRT is not usable here: see emote doctor')" \
        || { fail "TensorRT is installed but not usable (emote doctor says why)"; trt_ok=0; }
else
    skip "TensorRT steps (plans, GPU tests, polygraphy, latency): tensorrt and cuda-python are not both installed"
fi

has_int8() { "$PY" -c "import json,sys; g=json.load(open(sys.argv[1] + '/manifest.json'))['graphs']; raise SystemExit(0 if any(k.endswith('.int8') for k in g) else 1)" "$1"; }

presets=()
if [ "$export_ok" = 1 ]; then
    read -r -a presets <<<"${PRESETS:-tiny demo}"
else
    skip "export, and every step on its bundles: the export extra (torch, diffusers, transformers, onnx, onnxscript, onnxslim) is not installed"
fi
for preset in "${presets[@]}"; do
    bundle="$OUT/$preset"
    say "export $preset"
    "${EMOTE[@]}" export --preset "$preset" --out "$bundle" --precision fp16 --force --quiet
    say "calibrate and quantize $preset (int8 Q/DQ step graphs)"
    calib_in="$OUT/calib-inputs"
    mkdir -p "$calib_in/images" "$calib_in/audio"
    cp emote/assets/portrait.png "$calib_in/images/" && cp emote/assets/speech.wav "$calib_in/audio/"
    if "${EMOTE[@]}" calibrate "$bundle" --images "$calib_in/images" --audio "$calib_in/audio" -o "$OUT/$preset-calib" --force --quiet; then
        "${EMOTE[@]}" quantize "$bundle" --precision int8 --calib "$OUT/$preset-calib" --quiet \
            || fail "emote quantize $bundle --precision int8"
    else
        fail "emote calibrate $bundle"
    fi
done

say "ONNX Runtime GPU providers load (a provider that does not is an error, never a run on the CPU)"
if [ "${#presets[@]}" = 0 ]; then
    skip "ONNX Runtime provider check: no bundle was exported"
else
    for provider in cuda tensorrt; do
        if "$PY" - "$OUT/tiny" "$provider" <<'PYEOF'
import sys
from emote.bundle import Bundle
from emote.engines.onnxruntime import OnnxRuntimeBackend
from emote.errors import EmoteError
try:
    be = OnnxRuntimeBackend(providers=[sys.argv[2]])
    session = be.load(Bundle.open(sys.argv[1]).graph("vae_decoder")).session
except EmoteError as e:
    raise SystemExit(str(e))
print(f"{sys.argv[2]}: the session runs on {', '.join(session.get_providers())}")
PYEOF
        then :; else fail "ONNX Runtime provider $provider does not load (the line above says why)"; fi
    done
fi

if [ "$trt_ok" = 1 ]; then
    for preset in "${presets[@]}"; do
        bundle="$OUT/$preset"
        precisions="fp32 fp16"
        if has_int8 "$bundle"; then precisions="$precisions int8"; fi
        for p in $precisions; do
            say "build $preset $p"
            "${EMOTE[@]}" build "$bundle" --precision "$p" || fail "emote build $bundle --precision $p"
        done
        say "build $preset fp16 again: every plan must be up to date"
        if "${EMOTE[@]}" build "$bundle" --precision fp16 | tee "$OUT/$preset-rebuild.txt"; then
            grep -q "^0 built" "$OUT/$preset-rebuild.txt" || fail "second build of $preset rebuilt plans whose keys match"
        else
            fail "second emote build $bundle --precision fp16"
        fi
    done
fi

say "GPU tests"
if [ "$trt_ok" = 1 ] && has pytest; then
    # pytest exits 0 when every selected test skipped: the gate counts what ran
    "$PY" -m pytest tests/test_tensorrt.py -m gpu -q -rs --junitxml="$OUT/gpu-tests.xml" || true
    "$PY" bench/gpu_tests_gate.py "$OUT/gpu-tests.xml" || fail "GPU tests (the line above says what ran)"
else
    skip "GPU tests: TensorRT, cuda-python or pytest is missing"
fi

say "TensorRT plans vs ONNX Runtime (polygraphy)"
if [ "$trt_ok" = 1 ] && [ "$poly_ok" = 1 ]; then
    for preset in "${presets[@]}"; do
        bundle="$OUT/$preset"
        engines=$(ls -d "$bundle"/engines/*-trt*/ 2>/dev/null | head -n 1 || true)
        [ -n "$engines" ] || { fail "no engine folder in $bundle/engines"; continue; }
        for plan in "$engines"*.plan; do
            graph=$(basename "$plan" .plan)              # denoise_step, denoise_step.fp16, ...
            onnx="$bundle/$graph.onnx"
            case "$graph" in
                *.int8) tol=(--check-error-stat mean --atol 5e-2 --rtol 0) ;;
                *.fp16) tol=(--atol 2e-2 frames:2 --rtol 5e-2 frames:0) ;;
                *)      tol=(--atol 1e-3 frames:2 --rtol 1e-2 frames:0) ;;
            esac
            work="$OUT/polygraphy/$preset/$graph"
            mkdir -p "$work"
            # ONNX Runtime (CPU) on the ONNX: the reference outputs, on inputs saved for the plan
            "${POLYGRAPHY[@]}" run "$onnx" --onnxrt --seed 0 --val-range "[-1,1]" "reference:[0,255]" "frames:[0,255]" \
                --save-inputs "$work/inputs.json" --save-outputs "$work/onnxruntime.json" >"$work/onnxruntime.log" 2>&1 \
                || { fail "polygraphy onnxrt $preset $graph (see $work/onnxruntime.log)"; continue; }
            if "${POLYGRAPHY[@]}" run "$plan" --model-type engine --trt --load-inputs "$work/inputs.json" \
                --load-outputs "$work/onnxruntime.json" "${tol[@]}" >"$work/compare.log" 2>&1; then
                echo "PASSED  $preset $graph (${tol[*]})"
            else
                fail "$preset $graph differs from ONNX Runtime beyond ${tol[*]} (see $work/compare.log)"
            fi
        done
    done
else
    skip "polygraphy comparison: TensorRT or polygraphy is missing"
fi

say "pipeline latency: with and without the CUDA graph"
if [ "$trt_ok" = 1 ]; then
    for preset in "${presets[@]}"; do
        for p in fp16 int8; do
            if [ "$p" = int8 ] && ! has_int8 "$OUT/$preset"; then continue; fi
            "$PY" bench/gpu_latency.py "$OUT/$preset" --precision "$p" --steps 4 --repeat 5 \
                --json "$OUT/latency-$preset-$p.json" || fail "latency $preset $p"
        done
    done
else
    skip "latency: TensorRT is missing"
fi

say "done: $failures failure(s), ${#skipped[@]} step(s) skipped; log in $LOG"
for s in "${skipped[@]}"; do echo "  skipped: $s"; done
[ "$failures" -eq 0 ]
