"""`emote doctor`: what this machine has, and which backends will work on it.

Imports each optional library only to read its version; never fails for a missing one.
"""

from __future__ import annotations

import os
import platform
import sys

from .engines.probe import cpu_class, cuda_driver, has_module, module_version, nvidia_gpus
from .errors import EmoteError


def report() -> list[tuple[str, str]]:
    rows = [("python", sys.version.split()[0]), ("platform", platform.platform())]
    cpu = cpu_class()
    rows.append(("cpu", f"{cpu.model}; {len(os.sched_getaffinity(0))} cores usable; {' '.join(cpu.flags) or 'no AVX2'}"))
    rows.append(("cpu class", f"{cpu.label} (bench/RESULTS.md labels its figures with it)"))
    for mod in ("numpy", "onnxruntime", "onnx", "torch", "diffusers", "transformers", "openvino", "tensorrt"):
        rows.append((mod, module_version(mod) or "not installed"))
    if has_module("onnxruntime"):
        import onnxruntime as ort

        rows.append(("onnxruntime providers", ", ".join(ort.get_available_providers())))
    gpus = nvidia_gpus()
    rows.append(("nvidia gpus", ", ".join(gpus) if gpus else "none"))
    from .engines.gpu_report import extra_line, gpu_rows, jetson_release, tensorrt_usable

    rows += gpu_rows()
    # a GPU is what the CUDA driver counts (Jetson has no nvidia-smi before JetPack 6; a container may
    # have nvidia-smi and no device)
    gpu = cuda_driver().devices > 0 or bool(jetson_release())
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
    if gpu and has_module("onnxruntime"):
        import onnxruntime as ort

        backends += [p for p in ("CUDAExecutionProvider", "TensorrtExecutionProvider") if p in ort.get_available_providers()]
    if tensorrt_usable():
        backends.append("tensorrt")
    elif gpu:
        rows.append(("to use tensorrt", f"install TensorRT >= 10.3 and cuda-python, the extra {extra_line()}"))
    rows.append(("backends that will work", ", ".join(backends) or "none"))
    from .runtime.backend_choice import default_backend

    try:
        backend, precision, reason = default_backend()
        rows.append(("default cpu backend", f"{backend} {precision} ({reason}; emote generate without --backend)"))
    except EmoteError as e:
        rows.append(("default cpu backend", f"unavailable ({e})"))
    return rows


def main() -> int:
    rows = report()
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    return 0
