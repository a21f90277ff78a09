"""`emote doctor`: what this machine has, and which backends will work on it.

Imports each optional library only to read its version; never fails for a missing one.
"""

from __future__ import annotations

import importlib
import platform
import sys
from pathlib import Path

from .engines.probe import has_module, nvidia_gpus

CPU_FLAGS = ("avx2", "fma", "f16c", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8")


def version(module: str) -> str | None:
    if not has_module(module):
        return None
    try:
        return getattr(importlib.import_module(module), "__version__", "installed")
    except Exception as e:  # a broken install is worth reporting, not crashing on
        return f"broken ({type(e).__name__}: {e})"


def cpu_features() -> tuple[str, list[str]]:
    name, flags = platform.processor() or platform.machine(), set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name") and name in ("", platform.machine(), platform.processor()):
                name = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    return name, [f for f in CPU_FLAGS if f in flags]


def report() -> list[tuple[str, str]]:
    rows = [("python", sys.version.split()[0]), ("platform", platform.platform())]
    cpu, flags = cpu_features()
    rows.append(("cpu", f"{cpu}; {len(__import__('os').sched_getaffinity(0))} cores usable; {' '.join(flags) or 'no AVX2'}"))
    for mod in ("numpy", "onnxruntime", "onnx", "torch", "diffusers", "transformers", "openvino", "tensorrt"):
        rows.append((mod, version(mod) or "not installed"))
    if has_module("onnxruntime"):
        import onnxruntime as ort

        rows.append(("onnxruntime providers", ", ".join(ort.get_available_providers())))
    gpus = nvidia_gpus()
    rows.append(("nvidia gpus", ", ".join(gpus) if gpus else "none"))
    from .engines.gpu_report import gpu_rows, jetson_release, tensorrt_usable

    rows += gpu_rows()
    gpus = gpus or ([f"Jetson ({jetson_release()})"] if jetson_release() else [])  # Jetson has no nvidia-smi before JetPack 6
    if has_module("openvino"):
        try:
            from .engines.openvino import devices

            devs = [f"{d} ({name}): {' '.join(precisions)}" for d, name, precisions in devices()]
            rows.append(("openvino devices", "; ".join(devs) or "none"))
        except Exception as e:
            rows.append(("openvino devices", f"unavailable ({e})"))
    backends = ["onnxruntime-cpu"] if has_module("onnxruntime") else []
    if has_module("openvino"):
        backends.append("openvino")
    if gpus and has_module("onnxruntime"):
        import onnxruntime as ort

        backends += [p for p in ("CUDAExecutionProvider", "TensorrtExecutionProvider") if p in ort.get_available_providers()]
    if tensorrt_usable():
        backends.append("tensorrt")
    elif gpus:
        rows.append(("to use tensorrt", "install TensorRT >= 10.3 and cuda-python: pip install 'emote-edge[gpu]' (Jetson: see docs/jetson.md)"))
    rows.append(("backends that will work", ", ".join(backends) or "none"))
    from .runtime.backend_choice import default_backend

    rows.append(("default cpu backend", "{} {} (emote generate without --backend; bench/RESULTS.md)".format(*default_backend())))
    return rows


def main() -> int:
    rows = report()
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    return 0
