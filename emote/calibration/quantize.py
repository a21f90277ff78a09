"""`emote quantize --precision int8`: explicit Q/DQ step graphs from calibration data, float where it matters.

The precision policy (DESIGN.md, "Precision"), applied to the fp32 ONNX graph:
- int8 only on the inputs of Conv, MatMul and Gemm with a constant weight: activations
  symmetric int8 (zero point 0, per tensor), weights symmetric int8 per output channel
  (zero point 0), biases and outputs float; Q/DQ pairs as TensorRT's strongly typed
  networks and OpenVINO's low-precision passes read them (onnxruntime.quantization,
  QDQ format);
- always float (``RULES``): the time embedding and its projections, ``conv_in``,
  ``conv_out``, norms and softmax (not quantizable ops here), the attention products
  (both operands are activations: the softmax output stays float), and convolutions
  fed by a Concat (OpenVINO mis-quantizes a signed Q/DQ after a Concat: see
  "OpenVINO and int8" in ``bench/RESULTS.md``);
- then measured: each remaining layer is quantized alone and the SQNR of the step's
  outputs against fp32 is recorded (the sensitivity report); the most sensitive
  layers move to float until the whole graph meets ``INT8_TARGET_DB`` on the
  calibration samples.

Everything is judged against the fp32 graph in ONNX Runtime with graph optimisations
off, so Q/DQ pairs run as written (the exact semantics every backend should match).
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from onnxruntime.quantization import CalibrationDataReader

from ..bundle import Bundle, graph_entry
from ..errors import EmoteError
from .record import CalibrationSet

QUANT_OPS = ("Conv", "MatMul", "Gemm")
STEP_GRAPHS = ("denoise_step", "denoise_step_cond")
INT8_TARGET_DB = 30.0  # SQNR of the step's output the int8 graph must keep on calibration data (issue 9's floor)
# The step's output is the next state x_next: it is what the loop carries on, and at the last step it is x0.
# x0 = (x - sigma eps) / alpha at early steps divides the model's error by alpha (~0.07 at t = 900): its
# SQNR there is ~20 dB below x_next's for the same error, while the step uses x0 weighted by about alpha.
# Both are reported; the target is on x_next.
TARGET_OUTPUT = "x_next"
EVAL_SAMPLES = 8  # calibration samples the float search scores each trial graph on, spread over the timesteps
SWEEP_SAMPLES = 4  # fewer for the per-layer sweep (one ONNX Runtime session per layer): it ranks, the search decides
# layer-path fragments kept float, with the reason recorded in the report
RULES = (
    ("time_embedding.", "time embedding"),
    (".time_emb_proj", "time embedding projection"),
    ("conv_in", "conv_in"),
    ("conv_out", "conv_out"),
)


@dataclass(frozen=True)
class Layer:
    node: str  # ONNX node name
    op: str
    path: str  # module path where the weight kept its name, else the node name
    weight_shape: tuple[int, ...]


@dataclass
class Report:
    graph: str
    target_db: float
    samples: int  # calibration samples the ranges come from
    eval_samples: int = 0  # samples each trial of the float search is scored on
    sweep_samples: int = 0  # samples each single-layer graph of the sweep is scored on
    rule_float: dict[str, str] = field(default_factory=dict)  # node -> reason
    sensitivity: list[dict] = field(default_factory=list)  # per candidate: node, path, op, sqnr_db
    search: list[dict] = field(default_factory=list)  # (float layers, sqnr) tried
    measured_float: list[str] = field(default_factory=list)
    sqnr_db: dict[str, float] = field(default_factory=dict)  # final graph, per output
    seconds: float = 0.0


def load_onnx(path: Path):
    import onnx

    return onnx.load(str(path))


def layers(model) -> tuple[list[Layer], dict[str, str]]:
    """(candidate layers, rule-kept float layers {node: reason}) of a float graph."""
    inits = {i.name: tuple(i.dims) for i in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    out, kept = [], {}
    for n in model.graph.node:
        if n.op_type not in QUANT_OPS:
            continue
        if len(n.input) < 2 or n.input[1] not in inits:
            kept[n.name] = "activation x activation product (attention): the softmax output stays float"
            continue
        named = [i for i in n.input[1:] if i in inits and i.startswith("model.")]
        path = named[0].rsplit(".", 1)[0] if named else n.name
        src = producer.get(n.input[0])
        reason = next((why for frag, why in RULES if frag in path), None)
        if reason is None and src is not None and src.op_type == "Concat":
            reason = "input from a Concat (OpenVINO mis-quantizes signed Q/DQ there)"
        if reason:
            kept[n.name] = reason
        else:
            out.append(Layer(n.name, n.op_type, path, inits[n.input[1]]))
    return out, kept


class Feeds(CalibrationDataReader):
    """onnxruntime.quantization's data reader over a list of input dicts."""

    def __init__(self, items: list[dict[str, np.ndarray]]):
        self.items = items
        self.it = iter(items)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.it, None)

    def __len__(self) -> int:
        return len(self.items)

    def set_range(self, start_index: int, end_index: int) -> None:
        self.it = iter(self.items[start_index:end_index])


class _NoPreprocessAdvice(logging.Filter):
    """onnxruntime.quantization logs advice to run its pre-processing on every call; export already did
    (ONNX Runtime's constant folding, onnxslim, shape inference)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-process" not in record.getMessage()


def quantize_nodes(src: Path, dst: Path, feeds: list[dict], exclude: list[str], cache: Path) -> None:
    """The policy above through ``quantize_static``; ranges come from ``cache`` once it exists."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    quiet, root = _NoPreprocessAdvice(), logging.getLogger()
    root.addFilter(quiet)
    try:
        quantize_static(
            str(src),
            str(dst),
            Feeds(feeds) if not cache.is_file() else None,
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(QUANT_OPS),
            per_channel=True,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=exclude,
            calibrate_method=CalibrationMethod.MinMax,
            calibration_cache_path=str(cache),
            extra_options={
                "ActivationSymmetric": True,  # zero point 0: TensorRT requires it
                "WeightSymmetric": True,
                "MatMulConstBOnly": True,
                "QuantizeBias": False,  # biases stay float (TensorRT and OpenVINO fuse a float bias add)
                "OpTypesToExcludeOutputQuantization": list(QUANT_OPS),  # Q/DQ on inputs only, outputs float
            },
        )
    finally:
        root.removeFilter(quiet)
    keep_float_readers(dst)


def keep_float_readers(path: Path) -> None:
    """Ops other than Conv/MatMul/Gemm read the float tensor again, not its Q/DQ copy.

    ``quantize_static`` gives a quantized tensor one Q/DQ pair and routes every consumer
    through it, so a GroupNorm or a skip Concat reading the same tensor as a quantized
    conv would compute on int8-rounded values. The policy quantizes the inputs of the
    heavy ops only: every other reader is wired back to the tensor the Q reads.
    """
    import onnx

    model = onnx.load(str(path))
    producer = {o: n for n in model.graph.node for o in n.output}
    changed = False
    for n in model.graph.node:
        if n.op_type in QUANT_OPS or n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        for k, name in enumerate(n.input):
            dq = producer.get(name)
            q = producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
            if q is not None and q.op_type == "QuantizeLinear":
                n.input[k] = q.input[0]
                changed = True
    if changed:
        onnx.save(model, str(path))


def single_layer(fp32, full, node: str):
    """The fp32 graph with only ``node``'s inputs quantized, Q/DQ nodes copied from the fully quantized graph."""
    import copy

    m = copy.deepcopy(fp32)
    producer = {o: n for n in full.graph.node for o in n.output}
    inits = {i.name: i for i in full.graph.initializer}
    target = next(n for n in full.graph.node if n.name == node)
    mine = next(n for n in m.graph.node if n.name == node)
    new_nodes, needed = [], set()
    for k in (0, 1):
        dq = producer.get(target.input[k])
        if dq is None or dq.op_type != "DequantizeLinear":
            continue
        chain = [dq]
        q = producer.get(dq.input[0])
        if q is not None and q.op_type == "QuantizeLinear":
            chain.insert(0, q)
        for c in chain:
            c2 = copy.deepcopy(c)
            c2.name = f"{c.name}__{node}"
            c2.output[0] = f"{c.output[0]}__{node}"
            if c is dq and q is not None:
                c2.input[0] = f"{q.output[0]}__{node}"
            new_nodes.append(c2)
            needed.update(i for i in c.input if i in inits)
        mine.input[k] = new_nodes[-1].output[0]
    have = {i.name for i in m.graph.initializer}
    m.graph.initializer.extend(copy.deepcopy(inits[i]) for i in sorted(needed - have))
    # insert before the consumer so that the graph stays topologically sorted
    at = list(m.graph.node).index(mine)
    nodes = list(m.graph.node)
    del m.graph.node[:]
    m.graph.node.extend(nodes[:at] + new_nodes + nodes[at:])
    return m


def judged(sqnr: dict[str, float]) -> float:
    """The SQNR a graph is judged by: its ``TARGET_OUTPUT`` (any other graph: its worst output)."""
    return sqnr.get(TARGET_OUTPUT, min(sqnr.values()))


class Scorer:
    """Runs graphs on fixed calibration samples; SQNR of each float output against the fp32 graph's."""

    def __init__(self, fp32_path: Path, feeds: list[dict]):
        self.feeds = feeds
        self.ref = self.run(fp32_path)

    @staticmethod
    def session(model_or_path):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # Q/DQ executed as written
        so.log_severity_level = 3
        data = model_or_path.SerializeToString() if hasattr(model_or_path, "SerializeToString") else str(model_or_path)
        return ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])

    def run(self, model_or_path) -> dict[str, np.ndarray]:
        s = self.session(model_or_path)
        names = [i.name for i in s.get_inputs()]
        outs = [o.name for o in s.get_outputs()]
        got = [s.run(None, {n: f[n] for n in names}) for f in self.feeds]
        return {o: np.stack([g[i] for g in got]) for i, o in enumerate(outs) if got[0][i].dtype.kind == "f"}

    def sqnr(self, model_or_path) -> dict[str, float]:
        from ..export.parity import sqnr_db

        got = self.run(model_or_path)
        return {k: round(sqnr_db(self.ref[k], got[k]), 2) for k in self.ref}


def quantize_int8(
    bundle: Bundle,
    calib: CalibrationSet,
    graph: str,
    out: Path,
    *,
    target_db: float = INT8_TARGET_DB,
    eval_samples: int = EVAL_SAMPLES,
    sensitivity: bool = True,
    progress=None,
) -> Report:
    """Write ``graph``'s int8 Q/DQ graph to ``out``; return the report that chose its float layers."""
    started = time.perf_counter()
    calib.check_graph(bundle, graph)
    src = bundle.graph(graph).path
    fp32 = load_onnx(src)
    candidates, kept = layers(fp32)
    if not candidates:
        raise EmoteError(f"{graph}: no layer left to quantize after the float rules")
    feeds = calib.feeds(graph)
    scorer = Scorer(src, calib.feeds(graph, limit=eval_samples))
    sweep = Scorer(src, calib.feeds(graph, limit=min(eval_samples, SWEEP_SAMPLES)))
    report = Report(graph, target_db, len(feeds), len(scorer.feeds), len(sweep.feeds), rule_float=kept)
    say = progress or (lambda msg: None)
    with tempfile.TemporaryDirectory(prefix="emote-quant-") as tmp:
        cache, full_path = Path(tmp) / "ranges.json", Path(tmp) / "full.onnx"
        say(f"{graph}: calibrating ranges on {len(feeds)} samples")
        quantize_nodes(src, full_path, feeds, list(kept), cache)
        order: list[str] = []
        if sensitivity:
            full = load_onnx(full_path)
            for i, c in enumerate(candidates):
                s = sweep.sqnr(single_layer(fp32, full, c.node))
                report.sensitivity.append({**asdict(c), "sqnr_db": judged(s), "per_output": s})
                say(f"{graph}: sensitivity {i + 1}/{len(candidates)} {c.path} {judged(s):.1f} dB")
            order = [r["node"] for r in sorted(report.sensitivity, key=lambda r: r["sqnr_db"])]
        # the fewest most-sensitive layers in float that meet the target: 0, 1, 2, 4, ... of them
        n, trial = 0, Path(tmp) / "trial.onnx"
        while True:
            floats = order[:n]
            quantize_nodes(src, trial, feeds, list(kept) + floats, cache)
            s = scorer.sqnr(trial)
            report.search.append({"float_layers": n, "sqnr_db": judged(s), "per_output": s})
            say(f"{graph}: {len(order) - n} layers int8, {n} measured float: " + ", ".join(f"{k} {v:.1f} dB" for k, v in s.items()))
            if judged(s) >= target_db:
                break
            if not sensitivity:
                raise EmoteError(
                    f"{graph}: int8 with the float rules only reaches {judged(s):.1f} dB < {target_db} dB: "
                    "drop --no-sensitivity so that measured layers can stay float"
                )
            if n >= len(order):
                raise EmoteError(
                    f"{graph}: int8 cannot reach {target_db} dB even with every layer in float; "
                    "calibrate on more or other data, or lower --target-db"
                )
            n = min(len(order), max(1, 2 * n))
        report.measured_float, report.sqnr_db = floats, s
        trial.replace(out)
    report.seconds = round(time.perf_counter() - started, 1)
    return report


def write_report(report: Report, folder: Path) -> list[Path]:
    """``<graph>.int8.sensitivity.json`` and ``.md``: what was kept float and why, with the numbers."""
    folder.mkdir(parents=True, exist_ok=True)
    js, md = (folder / f"{report.graph}.int8.sensitivity.{ext}" for ext in ("json", "md"))
    js.write_text(json.dumps(asdict(report), indent=1))
    lines = [
        f"# {report.graph}: int8 sensitivity",
        "",
        f"SQNR of {TARGET_OUTPUT} unless said otherwise. Ranges from {report.samples} calibration samples. Target: SQNR >= {report.target_db} dB "
        f"(against fp32, Q/DQ executed as written, on {report.eval_samples} recorded inputs; the per-layer sweep "
        f"on {report.sweep_samples}). Final graph: "
        + ", ".join(f"{k} {v:.1f} dB" for k, v in report.sqnr_db.items())
        + f"; {len(report.measured_float)} layer(s) moved to float by measurement, {len(report.rule_float)} float by rule.",
        "",
        "## Float search",
        "",
        "| most-sensitive layers in float | SQNR dB |",
        "| --- | --- |",
        *[f"| {r['float_layers']} | {r['sqnr_db']:.1f} |" for r in report.search],
        "",
        "## Per layer: SQNR when only that layer is int8 (lowest first)",
        "",
        "| layer | op | weight | SQNR dB | kept float |",
        "| --- | --- | --- | --- | --- |",
    ]
    floats = set(report.measured_float)
    for r in sorted(report.sensitivity, key=lambda r: r["sqnr_db"]):
        shape = "x".join(str(d) for d in r["weight_shape"])
        sq = "inf" if math.isinf(r["sqnr_db"]) else f"{r['sqnr_db']:.1f}"
        lines.append(f"| {r['path']} | {r['op']} | {shape} | {sq} | {'yes' if r['node'] in floats else ''} |")
    lines += ["", "## Float by rule", "", "| node | reason |", "| --- | --- |"]
    lines += [f"| {n} | {why} |" for n, why in report.rule_float.items()]
    md.write_text("\n".join(lines) + "\n")
    return [js, md]


SCHEME = (
    "Q/DQ (onnxruntime.quantization, QDQ): activations int8 symmetric per tensor, weights int8 symmetric "
    "per output channel, zero points 0; inputs of Conv/MatMul/Gemm only; biases, outputs, norms, softmax float"
)


def quantize_bundle(
    bundle_path: str | Path,
    calib_path: str | Path,
    graphs: tuple[str, ...] = STEP_GRAPHS,
    *,
    target_db: float = INT8_TARGET_DB,
    sensitivity: bool = True,
    eval_samples: int = EVAL_SAMPLES,
    progress=None,
) -> Bundle:
    """Write ``<graph>.int8.onnx`` and its sensitivity report for each of ``graphs``; record them in the manifest."""
    from .install import add_graphs, staged_files, staging

    bundle = Bundle.open(bundle_path)
    unknown = [g for g in graphs if g not in bundle.names]
    if unknown:
        raise EmoteError(f"bundle {bundle.path} has no fp32 graph {', '.join(unknown)} (it has: {', '.join(bundle.names)})")
    entries = {}
    with CalibrationSet.open(calib_path) as calib, staging(bundle) as folder:
        for g in graphs:
            report = quantize_int8(
                bundle,
                calib,
                g,
                folder / f"{g}.int8.onnx",
                target_db=target_db,
                eval_samples=eval_samples,
                sensitivity=sensitivity,
                progress=progress,
            )
            reports = write_report(report, folder / "reports") if sensitivity else []
            fp32 = bundle.graph(g)
            entries[f"{g}.int8"] = graph_entry(
                "int8",
                f"{g}.int8.onnx",
                fp32.inputs,
                fp32.outputs,
                quantization={
                    "scheme": SCHEME,
                    "calibration": {
                        "samples": report.samples,
                        "bundle_hash": calib.manifest["bundle_hash"],
                        "timesteps": calib.manifest["sampler"]["timesteps"],
                    },
                    "target_sqnr_db": target_db,
                    "sqnr_db": report.sqnr_db,
                    "float_by_rule": len(report.rule_float),
                    "float_by_measurement": report.measured_float,
                    "reports": [f"reports/{p.name}" for p in reports],
                },
            )
        return add_graphs(bundle, entries, staged_files(folder))
