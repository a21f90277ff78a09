"""What accelerators and CPU features this machine has, asked without importing any GPU library at module load."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")


def nvidia_gpus() -> list[str]:
    """Names of the NVIDIA GPUs `nvidia-smi` reports (empty without a driver)."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        out = subprocess.run([smi, "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.strip()] if out.returncode == 0 else []


def has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def gpu_available() -> bool:
    """An NVIDIA GPU and the TensorRT Python package: what the GPU tests need."""
    return bool(nvidia_gpus()) and has_module("tensorrt")


def cpu_flags(cpuinfo: Path = CPUINFO) -> frozenset[str]:
    """The CPU's feature flags as Linux names them (``avx2``, ``avx512_vnni``, ``amx_int8``...); empty where unknown.

    Read from the first ``flags`` line of /proc/cpuinfo (every core of one machine has the
    same); another OS, or an ARM kernel that calls them ``Features``, gives an empty set.
    """
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == "flags":
            return frozenset(value.split())
    return frozenset()
