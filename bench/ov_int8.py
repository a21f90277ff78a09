"""Why OpenVINO lost accuracy on symmetric int8 Q/DQ graphs: the same graphs in ONNX Runtime and OpenVINO.

    .venv/bin/python bench/ov_int8.py BUNDLE CALIB_DIR [--graph denoise_step] [--samples 8]

Quantizes the bundle's fp32 step graph several ways from the same calibration ranges
and runs each in ONNX Runtime with graph optimisations off (Q/DQ executed as written:
the semantics) and in OpenVINO (CPU, f32 float parts). SQNR of every output against
the fp32 graph on recorded inputs. A backend that reads the Q/DQ correctly matches
ONNX Runtime's column; the gap is what the backend itself loses.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from emote.bundle import Bundle, GraphSpec  # noqa: E402
from emote.calibration import quantize as q  # noqa: E402
from emote.calibration.record import CalibrationSet  # noqa: E402
from emote.export.parity import sqnr_db  # noqa: E402


def quantize(src: Path, dst: Path, feeds, exclude, *, ops=q.QUANT_OPS, signed=True, inputs_only=True) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    extra = {"ActivationSymmetric": signed, "WeightSymmetric": True, "MatMulConstBOnly": inputs_only}
    if inputs_only:
        extra.update(QuantizeBias=False, OpTypesToExcludeOutputQuantization=list(ops))
    quantize_static(
        str(src),
        str(dst),
        q.Feeds(feeds),
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=list(ops) if ops else None,
        per_channel=True,
        activation_type=QuantType.QInt8 if signed else QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        nodes_to_exclude=exclude,
        calibrate_method=CalibrationMethod.MinMax,
        extra_options=extra,
    )


def openvino_outputs(path: Path, feeds) -> dict[str, np.ndarray]:
    from emote.engines.openvino import OpenVINOBackend

    graph = OpenVINOBackend(precision="int8", cache=False, allow_inexact_int8=True).load(GraphSpec.standalone(path, "g"))  # any CPU
    got = [graph.run({n: f[n] for n in graph.inputs}) for f in feeds]
    return {o: np.stack([g[o] for g in got]) for o in graph.outputs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle")
    ap.add_argument("calib")
    ap.add_argument("--graph", default="denoise_step")
    ap.add_argument("--samples", type=int, default=8)
    args = ap.parse_args()
    bundle = Bundle.open(args.bundle)
    src = bundle.graph(args.graph).path
    fp32 = q.load_onnx(src)
    _, kept = q.layers(fp32)
    concat_fed = [n for n, why in kept.items() if "Concat" in why]
    rules = [n for n in kept if n not in concat_fed]
    with CalibrationSet.open(args.calib) as calib:
        feeds = calib.feeds(args.graph)
        scorer = q.Scorer(src, calib.feeds(args.graph, limit=args.samples))
        ways = [
            (
                "every op ONNX Runtime quantizes (its default op set), int8 symmetric, Q/DQ on outputs too",
                dict(ops=None, inputs_only=False),
                [],
            ),
            ("Conv/MatMul/Gemm inputs, int8 symmetric, Concat-fed convs int8", {}, rules),
            ("Conv/MatMul/Gemm inputs, uint8 zero point 128, Concat-fed convs int8", dict(signed=False), rules),
            ("Conv/MatMul/Gemm inputs, int8 symmetric, Concat-fed convs float (emote quantize)", {}, list(kept)),
        ]
        print(f"{args.graph}: {len(concat_fed)} convolution(s) read a Concat; SQNR dB against fp32 on {args.samples} recorded inputs\n")
        print("| quantization | ONNX Runtime (Q/DQ as written) | OpenVINO |")
        print("| --- | --- | --- |")
        with tempfile.TemporaryDirectory() as tmp:
            for i, (what, kw, exclude) in enumerate(ways):
                path = Path(tmp) / f"{i}.onnx"
                quantize(src, path, feeds, exclude, **kw)
                ort = scorer.sqnr(path)
                ov = openvino_outputs(path, scorer.feeds)
                ovs = {k: sqnr_db(scorer.ref[k], ov[k]) for k in scorer.ref}
                fmt = lambda d: ", ".join(f"{k} {v:.1f}" for k, v in d.items())  # noqa: E731
                print(f"| {what} | {fmt(ort)} | {fmt(ovs)} |", flush=True)


if __name__ == "__main__":
    main()
