"""Engine backends behind one contract (``base.py``): ONNX Runtime, OpenVINO, TensorRT.

``open_backend(name, precision, **options)`` imports only the backend asked for (the
package works without OpenVINO or TensorRT installed). Each backend's options are
declared once in ``OPTIONS`` with their types and checked before anything is built:
an unknown option or a wrong type is one ``EmoteError`` naming it, never a
``TypeError`` from a constructor. Engines know bundles (``emote.bundle``), never the
runtime, and nothing of diffusion.
"""

from __future__ import annotations

from pathlib import Path

from .. import precision as policy
from ..errors import EmoteError

_PATH = (str, Path)
_NUMBER = (int, float)
# name -> type(s); None is always accepted (the backend's default)
OPTIONS: dict[str, dict[str, type | tuple[type, ...]]] = {
    "onnxruntime": {
        "providers": (list, tuple),
        "threads": int,
        "optimization": str,
        "spinning": bool,
        "device_id": int,
        "fp16": bool,
        "int8": bool,
        "cuda_graph": bool,
        "engines": _PATH,
        "workspace_gb": _NUMBER,
        "opt_level": int,
        "buffer_device": str,
        "cache_dir": _PATH,
        "cache": bool,
    },
    "openvino": {
        "device": str,
        "threads": int,
        "streams": int,
        "cache_dir": _PATH,
        "cache": bool,
        "inference_precision": str,
        "allow_inexact_int8": bool,
    },
    "tensorrt": {
        "engines": _PATH,
        "build": bool,
        "cuda_graph": bool,
        "opt_level": int,
        "workspace_gb": _NUMBER,
        "device_id": int,
        "threads": int,
        "verbose": bool,
    },
}


def check_options(backend: str, options: dict) -> None:
    """Every option is one ``backend`` takes, of its type; else one EmoteError naming the option."""
    known = OPTIONS[backend]
    for name, value in options.items():
        if name not in known:
            raise EmoteError(f"{backend} has no option {name!r} (it takes: {', '.join(known)})")
        kind = known[name]
        if value is not None and (not isinstance(value, kind) or (isinstance(value, bool) and kind in (int, _NUMBER))):
            names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            raise EmoteError(f"{backend} option {name!r} is {value!r}: expected {names}")


def backends_taking(names) -> list[str]:
    """The backends that take every option in ``names``."""
    return [b for b in policy.BACKENDS if set(names) <= set(OPTIONS[b])]


def open_backend(name: str, precision: str = "fp32", **options):
    """A backend by name at ``precision``, imported only now; its options checked first."""
    policy.check(name, precision)
    check_options(name, options)
    options = {k: v for k, v in options.items() if v is not None}
    if name == "onnxruntime":
        from .onnxruntime import OnnxRuntimeBackend

        return OnnxRuntimeBackend(**options)
    if name == "openvino":
        from .openvino import OpenVINOBackend

        return OpenVINOBackend(precision=precision, **options)
    from .tensorrt import TensorRTBackend

    return TensorRTBackend(**options)
