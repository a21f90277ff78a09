"""What `emote doctor` says about the GPU path: driver, CUDA, TensorRT, Jetson, and whether it will work.

Never raises for a missing piece: each check returns a line a user can act on.
Imports tensorrt and cuda-python only inside the checks (doctor runs without them).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from .probe import cuda_driver, gpu_extra, has_module

TEGRA_RELEASE = Path("/etc/nv_tegra_release")  # present on Jetson (L4T); JetPack 6 is L4T R36


def driver_version() -> str | None:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        out = subprocess.run([smi, "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = [x.strip() for x in out.stdout.splitlines() if x.strip()]
    return lines[0] if out.returncode == 0 and lines else None


def jetson_release() -> str | None:
    """'R36 (release), REVISION: 4.0' style first line of the L4T release file, on a Jetson."""
    try:
        first = TEGRA_RELEASE.read_text().splitlines()[0]
    except (OSError, IndexError):
        return None
    return first.lstrip("# ").strip() or None


def tensorrt_status() -> tuple[bool, str]:
    """(usable, version or what to install) for the TensorRT backend."""
    from ..errors import EmoteError
    from .trt_build import import_tensorrt

    if not has_module("tensorrt"):
        return False, "not installed"
    try:
        trt = import_tensorrt()
    except EmoteError as e:
        return False, str(e)
    except Exception as e:  # a broken install is reported, not crashed on
        return False, f"broken ({type(e).__name__}: {e})"
    return True, trt.__version__


def cuda_status() -> tuple[bool, str, str]:
    """(a GPU is usable through cuda-python, what it is, the CUDA versions) for the TensorRT backend."""
    from ..errors import EmoteError
    from .cuda import device_info, installed, versions

    if not installed():
        return False, "cuda-python not installed", ""
    try:
        info = device_info(0)
        driver, runtime = versions()
    except EmoteError as e:
        return False, str(e), ""
    except Exception as e:
        return False, f"cuda-python broken ({type(e).__name__}: {e})", ""
    kind = ", integrated (shares system memory)" if info.integrated else ""
    return (
        True,
        f"{info.name}, compute capability {info.compute_capability}, {info.total_bytes / 2**30:.1f} GiB{kind}",
        f"driver supports CUDA {driver}, cuda-python runtime {runtime}",
    )


def extra_line() -> str:
    """Which pip extra fits this machine's driver, as `emote doctor` says it."""
    if jetson_release():
        return "jetson: TensorRT comes with JetPack; pip install 'emote-edge[jetson]' in a venv over the system packages (docs/jetson.md)"
    return gpu_extra(cuda_driver())[1]


def gpu_rows() -> list[tuple[str, str]]:
    rows = []
    jetson = jetson_release()
    if jetson:
        rows.append(("jetson", f"L4T {jetson}"))
    drv = driver_version()
    rows.append(("nvidia driver", drv or ("built into L4T" if jetson else "unknown (no nvidia-smi)")))
    d = cuda_driver()
    rows.append(("cuda driver", f"supports CUDA {d.cuda}, {d.devices} device(s)" if d.devices else (d.error or "no device")))
    rows.append(("gpu extra", extra_line()))
    cuda_ok, gpu, versions = cuda_status()
    rows.append(("cuda (cuda-python)", f"{gpu}; {versions}" if cuda_ok else gpu))
    trt_ok, trt = tensorrt_status()
    rows.append(("tensorrt (usable)", trt if trt_ok else f"no: {trt}"))
    return rows


def tensorrt_usable() -> bool:
    """TensorRT imports and the CUDA runtime (cuda-python) sees a GPU: asked of CUDA, not of nvidia-smi."""
    return tensorrt_status()[0] and cuda_status()[0]
