"""The runtime's default CPU backend and precision, chosen from measured figures, not by habit.

``bench/precision.py`` runs every precision of both CPU backends in one interleaved
run and picks the fastest end to end whose step output keeps SQNR >= 30 dB against
fp32 and whose frames keep PSNR >= 30 dB (bench/RESULTS.md, "Precision and CPU
backends"). On the project's CPU (AMD EPYC, AVX-512 BF16 and VNNI) that is OpenVINO
with a bf16 inference precision on the fp32 graphs: on the demo model 1.6-2.0x OpenVINO
fp32 and 2.0x ONNX Runtime fp32 per denoise_step, 2.4x end to end, step SQNR 49.0 dB
(x_next) and 31.3 dB (x0), frames 45.9 dB PSNR against fp32. ONNX Runtime has no bf16
path for these graphs, its int8 is slower than its fp32 and its fp16 graphs gain nothing;
OpenVINO fp32 is 1.04-1.23x ONNX Runtime fp32 at 71 dB. So:

- OpenVINO installed and the device computes bf16 natively: ``openvino`` at ``bf16``;
- OpenVINO installed, no native bf16 (an AVX2-only CPU, where OpenVINO would emulate
  it): ``openvino`` at ``fp32`` (the 1.04-1.23x above);
- no OpenVINO: ``onnxruntime`` at ``fp32``.

Resolving the default imports OpenVINO (to ask the device what it computes) only
when OpenVINO is installed and no backend was named. Knows nothing of diffusion.
"""

from __future__ import annotations

FALLBACK = ("onnxruntime", "fp32")


def openvino_native_precisions(device: str = "CPU") -> list[str]:
    """Precisions the OpenVINO device computes natively (fp32 always; bf16/fp16 where it has them)."""
    from ..engines.openvino import devices

    return next((p for d, _, p in devices() if d == device.split(".")[0]), ["fp32"])


def default_precision(backend: str, device: str = "CPU") -> str:
    """The precision a named backend runs at when none is asked for."""
    if backend == "openvino":
        return "bf16" if "bf16" in openvino_native_precisions(device) else "fp32"
    return "fp32"


def default_backend(precision: str | None = None) -> tuple[str, str]:
    """(backend, precision) of the runtime when no backend is named: see the module docstring.

    A precision named without a backend runs on OpenVINO where its CPU device computes it
    (int8 from the Q/DQ graphs included, where the CPU has VNNI: ``int8_exact``), else on ONNX
    Runtime (fp16: the bundle's fp16 graphs).
    """
    from ..engines.probe import cpu_flags, has_module

    if not has_module("openvino"):
        return FALLBACK[0], precision or FALLBACK[1]
    from ..engines.openvino import int8_exact

    try:
        native = openvino_native_precisions()
    except Exception:  # noqa: BLE001 - an OpenVINO that cannot list its devices: the portable path, not a crash
        return FALLBACK[0], precision or FALLBACK[1]
    if precision is None:
        return "openvino", "bf16" if "bf16" in native else "fp32"
    if precision == "int8" and not int8_exact(cpu_flags()):
        return "onnxruntime", precision  # OpenVINO's int8 saturates without VNNI: it refuses to run there
    return ("openvino" if precision in native else "onnxruntime"), precision


def resolve(backend: str | None, precision: str | None, backend_options: dict | None = None) -> tuple[str, str]:
    """The (backend, precision) to run: the named ones, the chosen default for what is not named.

    Options given without a backend name are ONNX Runtime's (``providers``, ``buffer_device``:
    what they were before the default was chosen), so they keep that backend.
    """
    if backend is None:
        if not backend_options:
            return default_backend(precision)
        backend = "onnxruntime"
    device = (backend_options or {}).get("device", "CPU")
    return backend, precision or default_precision(backend, device)
