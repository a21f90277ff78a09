"""The precision policy: which graph files run for a (backend, precision), decided here only.

A bundle holds fp32 graphs, and may hold fp16 graphs (``emote export --precision
fp16``: backbone in fp16, norms, softmax and the solver update in fp32) and int8
graphs (``emote quantize``: symmetric Q/DQ, sensitive layers in float). A backend
runs a precision either from graphs of that precision, or from the fp32 graphs
with an inference-precision setting of its own (OpenVINO's bf16 and fp16: the
device converts). Graphs without a low-precision variant run in fp32; the step
graph must exist at the precision asked, or the precision is not that bundle's.
Pipeline, bench, verify, build and the CLI all ask this module; none decides for
itself. Standard library only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import EmoteError

if TYPE_CHECKING:
    from .bundle import Bundle, GraphSpec

PRECISIONS = ("fp32", "fp16", "bf16", "int8")
GRAPHS = "graphs"  # runs the bundle's graphs of that precision
HINTED = "hinted"  # runs the fp32 graphs with the backend's inference-precision setting
RUNS: dict[str, dict[str, str]] = {
    "onnxruntime": {"fp32": GRAPHS, "fp16": GRAPHS, "int8": GRAPHS},
    "openvino": {"fp32": GRAPHS, "bf16": HINTED, "fp16": HINTED, "int8": GRAPHS},
    "tensorrt": {"fp32": GRAPHS, "fp16": GRAPHS, "int8": GRAPHS},
}
BACKENDS = tuple(RUNS)
STEP = "denoise_step"  # the graph a low precision is for: it must exist at that precision
# The fidelity bars a setting cheaper than fp32 must keep against the fp32 graphs on the same inputs to be
# chosen as a default (`emote tune`, bench/precision.py): 30 dB SQNR is the int8 step graphs' calibration
# target (`emote quantize --target-db`); 30 dB PSNR of frames is an RMS error of 255 / 10^1.5 = 8 uint8 levels.
MIN_STEP_SQNR_DB = 30.0  # every output of the step graphs (x_next, x0)
MIN_FRAME_PSNR_DB = 30.0  # the frames end to end
HOW = {
    "fp16": "emote export --precision fp16 (or emote quantize --precision fp16)",
    "int8": "emote calibrate, then emote quantize --precision int8",
}


def check(backend: str, precision: str) -> None:
    """``backend`` exists and can run ``precision`` at all (whatever the bundle); else one EmoteError."""
    if backend not in RUNS:
        raise EmoteError(f"unknown backend {backend!r}: one of {', '.join(BACKENDS)}")
    if precision not in PRECISIONS:
        raise EmoteError(f"unknown precision {precision!r}: one of {', '.join(PRECISIONS)}")
    if precision not in RUNS[backend]:
        others = [b for b in BACKENDS if precision in RUNS[b]]
        raise EmoteError(
            f"{backend} cannot run {precision} (bundles hold no {precision} graphs; it runs "
            f"{', '.join(RUNS[backend])}): use --backend {' or '.join(others)} for {precision}"
        )


def graph_precision(backend: str, precision: str) -> str:
    """The precision of the graph files that run for ``precision`` on ``backend``."""
    check(backend, precision)
    return "fp32" if RUNS[backend][precision] == HINTED else precision


def hinted(backend: str, precision: str) -> bool:
    """Whether ``backend`` computes ``precision`` from the fp32 graphs by a setting of its own."""
    check(backend, precision)
    return RUNS[backend][precision] == HINTED


def graph_for(bundle: Bundle, name: str, backend: str, precision: str) -> GraphSpec:
    """The file of graph ``name`` that runs at ``precision`` on ``backend``: its variant, else fp32."""
    p = graph_precision(backend, precision)
    if p != "fp32" and not bundle.has(STEP, p):
        raise EmoteError(f"{bundle.describe()} has no {p} graphs (it has: {', '.join(bundle.precisions)}): make them with {HOW[p]}")
    return bundle.graph(name, p if bundle.has(name, p) else "fp32")


def graphs_for(bundle: Bundle, backend: str, precision: str, names=None) -> dict[str, GraphSpec]:
    """Every graph (or those of ``names``) as it runs at ``precision`` on ``backend``."""
    return {n: graph_for(bundle, n, backend, precision) for n in (names or bundle.names)}


def runnable(bundle: Bundle, backend: str, native: tuple[str, ...] | list[str] | None = None) -> list[str]:
    """The precisions ``backend`` can run of ``bundle``: graphs the bundle has; hinted ones where the
    device computes them natively (``native``: what the device reports; None: no hinted precision)."""
    out = []
    for p, how in RUNS[backend].items():
        if how == GRAPHS and (p == "fp32" or bundle.has(STEP, p)) or how == HINTED and native is not None and p in native:
            out.append(p)
    return out
