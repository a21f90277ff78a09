"""What this machine has: its CPU class, its accelerators, its libraries; asked without importing any GPU library.

``cpu_class()`` is the one probe of CPU features: the runtime, the bench (which labels
every figure with it), ``emote doctor`` and the tests that need a feature all ask it.
"""

from __future__ import annotations

import functools
import importlib.util
import platform
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")
VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})  # int8 dot products summed straight into int32
# /proc/cpuinfo flags that decide which kernels run: AVX2/FMA (every x86 kiosk CPU since 2013),
# AVX-512, its bf16 and int8 dot products (VNNI), Intel's AVX-VNNI on AVX2 cores, AMX tiles.
CPU_FLAGS = ("avx2", "fma", "f16c", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "avx_vnni", "amx_tile", "amx_bf16", "amx_int8")


@dataclass(frozen=True)
class CpuClass:
    """The CPU a figure was measured on: its model name and the flags above that it has."""

    model: str
    flags: tuple[str, ...]

    @property
    def bf16(self) -> bool:
        """bf16 dot products in hardware (AVX-512 BF16 or AMX)."""
        return "avx512_bf16" in self.flags or "amx_bf16" in self.flags

    @property
    def vnni(self) -> bool:
        """int8 dot products with 32-bit sums (VNNI): without them u8 x s8 pairs are summed in 16 bits."""
        return bool(VNNI_FLAGS & set(self.flags))

    @property
    def label(self) -> str:
        """'AMD EPYC (AVX2, FMA; no AVX-512, no BF16, no VNNI, no AMX)': how figures are labelled."""
        has = [name for flag, name in (("avx2", "AVX2"), ("fma", "FMA"), ("avx512f", "AVX-512")) if flag in self.flags]
        has += [name for ok, name in ((self.bf16, "BF16"), (self.vnni, "VNNI"), ("amx_tile" in self.flags, "AMX")) if ok]
        lacks = [name for name in ("AVX-512", "BF16", "VNNI", "AMX") if name not in has]
        return f"{self.model} ({', '.join(has) or 'no AVX2'}{'; ' if lacks else ''}{', '.join('no ' + n for n in lacks)})"


@functools.cache
def cpu_class() -> CpuClass:
    """This machine's CPU class, from /proc/cpuinfo (Linux); elsewhere the platform's name and no flags."""
    model = platform.processor() or platform.machine()
    try:
        for line in CPUINFO.read_text(errors="replace").splitlines():
            key, sep, value = line.partition(":")
            if sep and key.strip() == "model name":
                model = value.strip()
                break
    except OSError:
        pass  # not Linux: the platform's name
    flags = cpu_flags()
    return CpuClass(model, tuple(f for f in CPU_FLAGS if f in flags))


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


def module_version(module: str) -> str | None:
    """The installed version of ``module``; None when absent; 'broken (...)' when it fails to import."""
    if not has_module(module):
        return None
    try:
        return getattr(importlib.import_module(module), "__version__", "installed")
    except Exception as e:  # noqa: BLE001 - a broken install is worth reporting, not crashing on
        return f"broken ({type(e).__name__}: {e})"


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
