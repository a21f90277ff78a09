#!/usr/bin/env bash
# The GPU path, proven on a machine with an NVIDIA GPU: one command (`make gpu-check`).
#
#  1. installs the project with the gpu extra into .venv (onnxruntime-gpu in place of onnxruntime)
#  2. exports the tiny and demo bundles with fp16 step graphs (+ int8 Q/DQ step graphs through
#     `emote calibrate` and `emote quantize`, where this checkout has them)
#  3. builds TensorRT plans: fp16, and int8 where the bundle has int8 graphs
#  4. runs the GPU tests (tests/test_tensorrt.py -m gpu)
#  5. compares every plan against ONNX Runtime on the same ONNX with polygraphy, at stated tolerances
#  6. runs the pipeline with and without the CUDA graph: latency per component, per step and per clip
#
# Results go to build/gpu-check/ (override with OUT=...). Needs internet for step 1 only.
# Tolerances (polygraphy, elementwise, on random inputs; every failure is printed and counted):
#   fp32 plans: atol 1e-3, rtol 1e-2   (TensorRT may use TF32 tensor cores for fp32 convolutions and GEMMs)
#   fp16 plans: atol 2e-2, rtol 5e-2   (fp16 backbone; the solver update stays fp32 in the graph)
#   int8 plans: mean abs error <= 5e-2 (Q/DQ rounding moves single elements; the mean must stay small)
#   uint8 frames outputs: atol 2 (one rounding step either side, doubled for fp16)
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${OUT:-build/gpu-check}
BIN=.venv/bin
mkdir -p "$OUT"
LOG="$OUT/gpu_check.log"
exec > >(tee "$LOG") 2>&1

say() { printf '\n== %s\n' "$*"; }
failures=0
fail() { echo "FAILED: $*"; failures=$((failures + 1)); }

say "machine"
if [ -f /etc/nv_tegra_release ]; then
    head -n 1 /etc/nv_tegra_release
else
    nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv || { echo "no nvidia-smi: this script needs an NVIDIA GPU"; exit 2; }
fi

if [ -f /etc/nv_tegra_release ]; then
    # Jetson: TensorRT comes with JetPack for the system Python; the venv must see it (docs/jetson.md)
    say "install (Jetson: .venv over the system site packages, the jetson extra)"
    [ -x "$BIN/python" ] || python3 -m venv --system-site-packages .venv
    # a .venv made earlier without the system site packages cannot see JetPack's TensorRT
    grep -q "include-system-site-packages = true" .venv/pyvenv.cfg \
        || { echo ".venv was made without --system-site-packages: JetPack's TensorRT is invisible to it (docs/jetson.md); remove .venv and rerun"; exit 2; }
    "$BIN/pip" install --quiet torch==2.13.0
    "$BIN/pip" install --quiet -e ".[export,test,jetson]"
else
    say "install (.venv with the gpu extra)"
    make install
    "$BIN/pip" install --quiet -e ".[gpu]"
    # onnxruntime (a base dependency, so the line above keeps or reinstalls it) and onnxruntime-gpu
    # write the same 'onnxruntime' module: whichever came last owns the files. Remove the CPU build,
    # which takes the shared files with it, then put the GPU build's files back.
    ort_gpu=$("$BIN/python" -c "import importlib.metadata as m; print(m.version('onnxruntime-gpu'))")
    "$BIN/pip" uninstall --yes --quiet onnxruntime || true
    "$BIN/pip" install --quiet --force-reinstall --no-deps "onnxruntime-gpu==$ort_gpu"
    "$BIN/python" -c "import onnxruntime as o; p = o.get_available_providers(); print('onnxruntime providers:', p); assert 'CUDAExecutionProvider' in p"
fi
"$BIN/emote" doctor
"$BIN/python" -c "from emote.engines.gpu_report import tensorrt_usable; raise SystemExit(0 if tensorrt_usable() else 'TensorRT is not usable here: see emote doctor')"

has_int8() { "$BIN/python" -c "import json,sys; g=json.load(open(sys.argv[1] + '/manifest.json'))['graphs']; raise SystemExit(0 if any(k.endswith('.int8') for k in g) else 1)" "$1"; }

for preset in tiny demo; do
    bundle="$OUT/$preset"
    say "export $preset"
    "$BIN/emote" export --preset "$preset" --out "$bundle" --precision fp16 --force --quiet
    if "$BIN/emote" quantize --help >/dev/null 2>&1; then
        say "calibrate and quantize $preset (int8 Q/DQ step graphs)"
        calib_in="$OUT/calib-inputs"
        mkdir -p "$calib_in/images" "$calib_in/audio"
        cp emote/assets/portrait.png "$calib_in/images/" && cp emote/assets/speech.wav "$calib_in/audio/"
        if "$BIN/emote" calibrate "$bundle" --images "$calib_in/images" --audio "$calib_in/audio" -o "$OUT/$preset-calib" --force --quiet; then
            "$BIN/emote" quantize "$bundle" --precision int8 --calib "$OUT/$preset-calib" --quiet \
                || fail "emote quantize $bundle --precision int8 (check 'emote quantize --help' if its options changed)"
        else
            fail "emote calibrate $bundle (check 'emote calibrate --help' if its options changed)"
        fi
    else
        echo "note: this checkout has no 'emote quantize' yet: int8 plans are not built"
    fi

    precisions="fp32 fp16"
    if has_int8 "$bundle"; then precisions="$precisions int8"; fi
    for p in $precisions; do
        say "build $preset $p"
        "$BIN/emote" build "$bundle" --precision "$p" || fail "emote build $bundle --precision $p"
    done
    say "build $preset fp16 again: every plan must be up to date"
    if "$BIN/emote" build "$bundle" --precision fp16 | tee "$OUT/$preset-rebuild.txt"; then
        grep -q "^0 built" "$OUT/$preset-rebuild.txt" || fail "second build of $preset rebuilt plans whose keys match"
    else
        fail "second emote build $bundle --precision fp16"
    fi
done

say "GPU tests"
"$BIN/python" -m pytest tests/test_tensorrt.py -m gpu -q -rs || fail "GPU tests"

say "TensorRT plans vs ONNX Runtime (polygraphy)"
for preset in tiny demo; do
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
        "$BIN/polygraphy" run "$onnx" --onnxrt --seed 0 --val-range "[-1,1]" "reference:[0,255]" "frames:[0,255]" \
            --save-inputs "$work/inputs.json" --save-outputs "$work/onnxruntime.json" >"$work/onnxruntime.log" 2>&1 \
            || { fail "polygraphy onnxrt $preset $graph (see $work/onnxruntime.log)"; continue; }
        if "$BIN/polygraphy" run "$plan" --model-type engine --trt --load-inputs "$work/inputs.json" \
            --load-outputs "$work/onnxruntime.json" "${tol[@]}" >"$work/compare.log" 2>&1; then
            echo "PASSED  $preset $graph (${tol[*]})"
        else
            fail "$preset $graph differs from ONNX Runtime beyond ${tol[*]} (see $work/compare.log)"
        fi
    done
done

say "pipeline latency: with and without the CUDA graph"
for preset in tiny demo; do
    for p in fp16 int8; do
        if [ "$p" = int8 ] && ! has_int8 "$OUT/$preset"; then continue; fi
        "$BIN/python" bench/gpu_latency.py "$OUT/$preset" --precision "$p" --steps 4 --repeat 5 \
            --json "$OUT/latency-$preset-$p.json" || fail "latency $preset $p"
    done
done

say "done: $failures failure(s); log in $LOG"
[ "$failures" -eq 0 ]
