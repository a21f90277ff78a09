"""OpenVINO int8 on CPUs without VNNI: which kernels run, what they lose against ONNX Runtime, and why.

    nice -n 10 .venv/bin/python bench/ov_int8_isa.py [--root build/ov-int8-isa] [--skip-bundle]

1. builds once, under ``--root``, the tests' tiny int8 bundle (the ``tiny_int8_bundle`` fixture's
   code path: tiny model seed 0, procedural portraits and synthetic voices, 24 calibration steps,
   ``quantize_bundle`` with the sensitivity sweep on ``denoise_step``);
2. ``verify_bundle`` on the int8 step graphs, real inputs, against PyTorch (what
   ``test_int8_matches_the_qdq_semantics`` compares): OpenVINO, ONNX Runtime with its default
   optimisations (what the test uses: Q/DQ fused into integer kernels where it can) and ONNX
   Runtime with optimisations off (Q/DQ executed as written in float: the exact semantics);
3. the precision and kernel of every Convolution / FullyConnected / MatMul OpenVINO executes
   (``get_runtime_model()`` rt_info), and the ops ONNX Runtime runs after its fusions
   (``MatMulIntegerToFloat``: its u8 x s8 kernel; a DequantizeLinear before a float op: exact);
4. one-op Q/DQ graphs (a 1x1 Conv and a MatMul) with controlled weights and activations, run
   in OpenVINO and ONNX Runtime, against the exact integer result and against a numpy model of
   a u8 x s8 multiply whose pairwise sums saturate to int16 (``vpmaddubsw``, then ``vpmaddwd``),
   signed activations shifted by +128 and the shift compensated exactly;
5. the same int8 step graphs with every weight requantized to 7 bits (|w| <= 63, so that
   2 * 255 * 63 = 32130 fits int16): the remedy inference engines use on such CPUs, measured.

Prints markdown tables (bench/RESULTS.md, "OpenVINO int8 on AVX2 without VNNI").
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from emote.engines.probe import cpu_flags  # noqa: E402

STEP_GRAPHS = ("denoise_step", "denoise_step_cond")
INT16 = (-32768, 32767)


# -- 1. the tests' tiny int8 bundle ---------------------------------------------------------------


def calibration_inputs(root: Path) -> tuple[Path, Path]:
    """The ``calibration_inputs`` fixture: two procedural portraits, one noise image, two synthetic voices."""
    import soundfile as sf
    from PIL import Image

    from training.portrait import random_params, render_portrait

    images, audio = root / "images", root / "audio"
    images.mkdir(parents=True, exist_ok=True)
    audio.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(5)
    for i in range(2):
        Image.fromarray(render_portrait(random_params(rng), 128, mouth_open=0.3 * i)).save(images / f"face{i}.png")
    Image.fromarray((rng.random((96, 96, 3)) * 255).astype(np.uint8)).save(images / "noise.png")
    t = np.arange(int(0.8 * 16000)) / 16000
    for i, f0 in enumerate((140.0, 220.0)):
        voice = 0.3 * np.sin(2 * np.pi * f0 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * (3 + i) * t))
        sf.write(audio / f"voice{i}.wav", voice.astype(np.float32), 16000)
    return images, audio


def tiny_int8_bundle(root: Path, model) -> tuple[Path, Path]:
    """(bundle, calibration folder): built as the fixtures build them, or reused when already there."""
    from emote.bundle import Bundle
    from emote.calibration.quantize import quantize_bundle
    from emote.calibration.record import calibrate
    from emote.export.bundle import export_bundle

    bundle, calib = root / "tiny", root / "calib"
    if bundle.is_dir() and all(Bundle.open(bundle).has(g, "int8") for g in STEP_GRAPHS):
        return bundle, calib
    shutil.rmtree(root, ignore_errors=True)
    export_bundle(model, bundle, weights={"source": "random", "seed": 0}, precisions=("fp32", "fp16"), progress=False)
    images, audio = calibration_inputs(root / "calib-inputs")
    calibrate(bundle, images, audio, calib, samples=24, steps=6, shard_bytes=256 << 10, progress=False)
    quantize_bundle(bundle, calib, ("denoise_step",), eval_samples=2)
    quantize_bundle(bundle, calib, ("denoise_step_cond",), eval_samples=2, sensitivity=False)
    return bundle, calib


# -- 2. parity against PyTorch ------------------------------------------------------------------


def parity(bundle: Path, model, backends: dict[str, object]) -> dict[str, dict[tuple[str, str], float]]:
    """{backend label: {(graph, output): SQNR dB against PyTorch}} on the int8 graphs, real inputs."""
    from emote.export.parity import verify_bundle

    return {
        label: {(r.graph, r.output): r.sqnr_db for r in verify_bundle(bundle, model, b, precision="int8", inputs=("real",))}
        for label, b in backends.items()
    }


def table(results: dict[str, dict[tuple[str, str], float]]) -> list[str]:
    labels = list(results)
    keys = list(next(iter(results.values())))
    out = ["| graph | output | " + " | ".join(labels) + " |", "| --- | --- |" + " --- |" * len(labels)]
    out += [f"| {g} | {o} | " + " | ".join(f"{results[lb][g, o]:.1f}" for lb in labels) + " |" for g, o in keys]
    return out


# -- 3. what OpenVINO executes ------------------------------------------------------------------


def runtime_kernels(path: Path) -> Counter:
    """(layer type, runtime precision, kernel) -> count, over OpenVINO's executed Convolution/FullyConnected/MatMul nodes."""
    import openvino as ov

    core = ov.Core()
    compiled = core.compile_model(core.read_model(str(path)), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    seen: Counter = Counter()
    for node in compiled.get_runtime_model().get_ordered_ops():
        rt = {k: v.astype(str) for k, v in node.get_rt_info().items()}
        if rt.get("layerType") in ("Convolution", "FullyConnected", "MatMul"):
            seen[rt["layerType"], rt.get("runtimePrecision", "?"), rt.get("primitiveType", "?")] += 1
    return seen


def ort_fused(path: Path) -> Counter:
    """Op types of the graph as ONNX Runtime runs it with its default optimisations (which Q/DQ it fuses into integer ops)."""
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        so = ort.SessionOptions()
        so.log_severity_level = 3
        so.optimized_model_filepath = str(Path(tmp) / "opt.onnx")
        ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        ops = Counter(n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node)
    return Counter(
        {
            k: v
            for k, v in ops.items()
            if k not in ("QuantizeLinear", "DequantizeLinear") and any(t in k for t in ("Conv", "MatMul", "Gemm", "Integer"))
        }
    )


# -- 4. one-op graphs: the saturation itself ------------------------------------------------------


def one_op_graph(path: Path, op: str, w: np.ndarray, x_shape: list[int]) -> None:
    """Q(x) -> DQ -> Conv 1x1 / MatMul with int8 weights ``w`` [cout, cin] per output channel; scales 1/127, zero points 0."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    cout, cin = w.shape
    scale = np.float32(1 / 127)
    if op == "Conv":
        wq, axis, tail = w.reshape(cout, cin, 1, 1), 0, [helper.make_node("Conv", ["d", "wd"], ["y"], kernel_shape=[1, 1])]
    else:
        wq, axis, tail = np.ascontiguousarray(w.T), 1, [helper.make_node("MatMul", ["d", "wd"], ["y"])]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["q"]),
        helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["d"]),
        helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wd"], axis=axis),
        *tail,
    ]
    inits = {
        "s": np.array(scale),
        "zp": np.array(0, np.int8),
        "w": wq,
        "ws": np.full(cout, scale, np.float32),
        "wz": np.zeros(cout, np.int8),
    }
    g = helper.make_graph(
        nodes,
        "one_op",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]), str(path))


def saturating_u8s8(q: np.ndarray, w: np.ndarray) -> np.ndarray:
    """q [n, cin] int8 activations, w [cout, cin] int8 -> [n, cout] int32 as a u8 x s8 kernel without VNNI computes it.

    The signed activations are shifted to u8 (q + 128), multiplied by the s8 weights in pairs of
    adjacent input channels with the pair sums saturated to int16 (vpmaddubsw), the pairs added in
    int32 (vpmaddwd, vpaddd), and the shift taken off exactly (128 * sum of the weights).
    """
    u = q.astype(np.int64) + 128
    prods = u[:, None, :] * w.astype(np.int64)[None]  # [n, cout, cin]
    pairs = prods.reshape(*prods.shape[:2], -1, 2).sum(-1)
    return np.clip(pairs, *INT16).sum(-1) - 128 * w.astype(np.int64).sum(-1)[None]


def one_op_rows(tmp: Path) -> list[str]:
    import onnxruntime as ort
    import openvino as ov

    core = ov.Core()
    so_exact = ort.SessionOptions()
    so_exact.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so_exact.log_severity_level = 3
    so_fused = ort.SessionOptions()
    so_fused.log_severity_level = 3
    rng = np.random.default_rng(0)
    cin, cout, n = 64, 16, 16
    cases = []
    w = rng.integers(-127, 128, (cout, cin)).astype(np.int8)
    w[:, 0], w[:, 1] = 127, 127  # one pair per channel at full range: 2 * 255 * 127 = 64770 > 32767
    cases.append(("full-range weights, small activations (|x| <= 0.05)", w, lambda: rng.uniform(-0.05, 0.05, (n, cin))))
    cases.append(("full-range weights, activations over the range", w, lambda: rng.uniform(-1, 1, (n, cin))))
    w7 = np.clip(np.round(w.astype(np.float64) / 2), -63, 63).astype(np.int8)
    cases.append(("the same weights at 7 bits (|w| <= 63), activations over the range", w7, lambda: rng.uniform(-1, 1, (n, cin))))
    out = [
        (
            "| case | op | OpenVINO kernel | pairs over int16 | OpenVINO max err | OpenVINO vs saturating model | "
            "ORT (default opts) max err | ORT as written max err |"
        ),
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for what, weights, draw in cases:
        x = draw().astype(np.float32)
        q = np.clip(np.round(x * 127), -127, 127).astype(np.int8)
        exact = (q.astype(np.int64) @ weights.astype(np.int64).T) / 127.0**2
        sat = saturating_u8s8(q, weights) / 127.0**2
        u = q.astype(np.int64) + 128
        pair_sums = (u[:, None, :] * weights.astype(np.int64)[None]).reshape(n, cout, -1, 2).sum(-1)
        over = float(np.mean((pair_sums > INT16[1]) | (pair_sums < INT16[0])))
        for op in ("Conv", "MatMul"):
            shape = [1, cin, 1, n] if op == "Conv" else [n, cin]
            feed = np.ascontiguousarray(x.T.reshape(shape)) if op == "Conv" else x
            path = tmp / f"{op}.onnx"
            one_op_graph(path, op, weights, shape)
            compiled = core.compile_model(core.read_model(str(path)), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
            kernel = next(
                f"{rt['runtimePrecision'].astype(str)} {rt['primitiveType'].astype(str)}"
                for node in compiled.get_runtime_model().get_ordered_ops()
                if (rt := node.get_rt_info())["layerType"].astype(str) in ("Convolution", "FullyConnected")
            )
            got = [compiled({"x": feed})[0]] + [
                ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"]).run(None, {"x": feed})[0]
                for so in (so_fused, so_exact)
            ]
            ov_y, fused_y, exact_y = (y.reshape(cout, n).T if op == "Conv" else y for y in got)  # rows x outputs
            err = [f"{np.abs(y - exact).max():.3g}" for y in (ov_y, fused_y, exact_y)]
            out.append(f"| {what} | {op} | {kernel} | {over:.1%} | {err[0]} | {np.abs(ov_y - sat).max():.2g} | {err[1]} | {err[2]} |")
        out.append(f"| (output range) | | | | max abs {np.abs(exact).max():.3g} | | | |")
    return out


# -- 5. remedy: weights at 7 bits -----------------------------------------------------------------


def seven_bit_weights(src: Path, dst: Path, ops: tuple[str, ...] = ("Conv", "MatMul", "Gemm")) -> int:
    """Copy of a Q/DQ graph whose int8 weights read by ``ops`` are requantized to [-63, 63] (scale doubled); count changed.

    From the 8-bit values (w / 2 rounded): the double rounding adds at most a quarter of the
    7-bit step to what requantizing the fp32 weights would give.
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(src))
    inits = {i.name: i for i in model.graph.initializer}
    readers = {i: n.op_type for n in model.graph.node for i in n.input}
    changed = 0
    for n in model.graph.node:
        if n.op_type != "DequantizeLinear" or n.input[0] not in inits or readers.get(n.output[0]) not in ops:
            continue
        w = numpy_helper.to_array(inits[n.input[0]])
        if w.dtype != np.int8 or w.ndim < 2:
            continue
        s = numpy_helper.to_array(inits[n.input[1]]).astype(np.float32)
        w7 = np.clip(np.round(w.astype(np.float32) / 2), -63, 63).astype(np.int8)
        inits[n.input[0]].CopyFrom(numpy_helper.from_array(w7, n.input[0]))
        inits[n.input[1]].CopyFrom(numpy_helper.from_array((2 * s).astype(np.float32), n.input[1]))
        changed += 1
    onnx.save(model, str(dst))
    return changed


def seven_bit_bundle(bundle: Path, out: Path, ops: tuple[str, ...]) -> Path:
    """A copy of the bundle whose int8 step graphs carry 7-bit weights on ``ops``; manifest hashes updated."""
    from emote.bundle import Bundle, add_graphs, file_sha256

    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(bundle, out, ignore=shutil.ignore_patterns("engines"))
    hashes = {}
    for g in STEP_GRAPHS:
        name = f"{g}.int8.onnx"
        n = seven_bit_weights(out / name, out / name, ops)
        print(f"{g}.int8: {n} weight tensors of {'/'.join(ops)} requantized to 7 bits")
        hashes[name] = file_sha256(out / name)
    add_graphs(Bundle.open(out, check_hashes=False), {}, hashes)  # the same graphs, their new sha256
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default="build/ov-int8-isa", help="where the tiny int8 bundle is built (once)")
    ap.add_argument("--skip-bundle", action="store_true", help="only the one-op graphs")
    args = ap.parse_args()
    import onnxruntime as ort
    import openvino as ov

    from emote.bundle import Bundle
    from emote.engines.onnxruntime import OnnxRuntimeBackend
    from emote.engines.openvino import OpenVINOBackend
    from emote.models.config import preset
    from emote.models.emo import build_model

    flags = cpu_flags()
    name = ov.Core().get_property("CPU", "FULL_DEVICE_NAME")
    isa = [f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_int8") if f in flags]
    print(f"CPU: {name}; flags: {', '.join(isa)}; OpenVINO {ov.__version__.split('-')[0]}, ONNX Runtime {ort.__version__}\n")
    with tempfile.TemporaryDirectory() as tmp:
        print("One-op Q/DQ graphs (64 input channels, 16 outputs, 16 rows; int8 symmetric activations and weights, scales 1/127):\n")
        print("\n".join(one_op_rows(Path(tmp))), "\n", flush=True)
    if args.skip_bundle:
        return
    model = build_model(preset("tiny"), seed=0)
    bundle, _ = tiny_int8_bundle(Path(args.root), model)
    b = Bundle.open(bundle)
    for g in STEP_GRAPHS:
        print(f"OpenVINO's executed nodes, {g}.int8 (layer type, runtime precision, kernel: count):")
        for (lt, prec, kern), c in sorted(runtime_kernels(b.graph(g, "int8").path).items()):
            print(f"- {lt} {prec} {kern}: {c}")
        fused = ort_fused(b.graph(g, "int8").path)
        print("ONNX Runtime (default optimisations) runs it as: " + ", ".join(f"{k} {v}" for k, v in sorted(fused.items())))
        print()
    backends = {
        "OpenVINO": OpenVINOBackend(precision="int8", cache=False, allow_inexact_int8=True),
        "ONNX Runtime (default opts)": OnnxRuntimeBackend(),
        "ONNX Runtime (as written)": OnnxRuntimeBackend(optimization="none"),
    }
    print("int8 step graphs, SQNR dB against PyTorch on real inputs (verify_bundle):\n")
    print("\n".join(table(parity(bundle, model, backends))), "\n", flush=True)
    print("\n7-bit weights on every int8 layer (|w| <= 63: 2 x 255 x 63 = 32130 fits int16):\n")
    seven = seven_bit_bundle(bundle, Path(args.root) / "tiny-7bit", ("Conv", "MatMul", "Gemm"))
    print("\n" + "\n".join(table(parity(seven, model, backends))), "\n", flush=True)
    ov_only = {"OpenVINO": backends["OpenVINO"]}
    for ops in (("Conv",), ("MatMul", "Gemm")):
        print(f"7-bit weights on {'/'.join(ops)} only, OpenVINO:\n")
        part = seven_bit_bundle(bundle, Path(args.root) / f"tiny-7bit-{ops[0].lower()}", ops)
        print("\n" + "\n".join(table(parity(part, model, ov_only))), "\n", flush=True)


if __name__ == "__main__":
    main()
