"""What this machine has: its CPU class, its accelerators, its libraries; asked without importing any GPU library.

``cpu_class()`` is the one probe of CPU features: the runtime, the bench (which labels
every figure with it), ``emote doctor`` and the tests that need a feature all ask it.
``cuda_driver()`` asks the CUDA driver itself (libcuda, through ctypes: no package needed)
which CUDA version it supports and how many devices it sees: what decides the GPU extra
to install. ``gpu_available()`` asks the CUDA runtime through cuda-python, as the
TensorRT backend will: what the GPU tests need. Neither trusts ``nvidia-smi``, which a
Jetson may not have and a container may have without a usable device.
"""

from __future__ import annotations

import ctypes
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


# The CUDA driver's library: Linux (with the driver's user-space part), then Windows
CUDA_DRIVER_LIBS = ("libcuda.so.1", "libcuda.so", "nvcuda.dll")
# CUDA major -> the pip extra whose packages (TensorRT, ONNX Runtime GPU, cuda-python) are built
# for it (pyproject.toml; a test checks the two agree). A driver runs packages built for its own
# CUDA major or an older one: CUDA 12 needs r525 or newer, CUDA 13 r580 or newer.
GPU_EXTRAS = {12: "gpu-cu12", 13: "gpu-cu13"}
DRIVER_FOR = {12: "r525", 13: "r580"}


@dataclass(frozen=True)
class CudaDriver:
    """What the CUDA driver says: the CUDA version it supports (1000 * major + 10 * minor, 0 when
    there is no driver), the devices it sees, and why there are none ('' when it sees some)."""

    version: int
    devices: int
    error: str

    @property
    def major(self) -> int:
        return self.version // 1000

    @property
    def cuda(self) -> str:
        return f"{self.version // 1000}.{(self.version % 1000) // 10}"


@functools.cache
def cuda_driver() -> CudaDriver:
    """The CUDA driver API (cuDriverGetVersion, cuInit, cuDeviceGetCount) through ctypes."""
    lib = None
    for name in CUDA_DRIVER_LIBS:
        try:
            lib = ctypes.CDLL(name)
            break
        except OSError:
            continue
    if lib is None:
        return CudaDriver(0, 0, "no CUDA driver: libcuda not found")

    def failed(call: str, code: int) -> str:
        text = ctypes.c_char_p()
        named = lib.cuGetErrorName(code, ctypes.byref(text)) == 0 and text.value
        return f"{call} failed: {text.value.decode() if named else f'error {code}'}"

    version, count = ctypes.c_int(0), ctypes.c_int(0)
    code = lib.cuDriverGetVersion(ctypes.byref(version))  # needs no cuInit
    if code:
        return CudaDriver(0, 0, failed("cuDriverGetVersion", code))
    code = lib.cuInit(0)
    if code:  # CUDA_ERROR_NO_DEVICE (100) where the driver is there but no GPU is visible
        return CudaDriver(version.value, 0, failed("cuInit", code))
    code = lib.cuDeviceGetCount(ctypes.byref(count))
    if code:
        return CudaDriver(version.value, 0, failed("cuDeviceGetCount", code))
    return CudaDriver(version.value, count.value, "" if count.value else "the CUDA driver sees no device")


def gpu_extra(driver: CudaDriver) -> tuple[str | None, str]:
    """(the pip extra that fits this driver, the line that says why): the newest CUDA major it runs."""
    if not driver.version:
        return None, f"none fits: {driver.error}"
    fits = [major for major in GPU_EXTRAS if major <= driver.major]
    if not fits:
        need = ", ".join(f"CUDA {m} ({DRIVER_FOR[m]}+)" for m in GPU_EXTRAS)
        return None, f"none fits: the driver supports CUDA {driver.cuda}, the GPU extras need {need}"
    extra = GPU_EXTRAS[max(fits)]
    older = [GPU_EXTRAS[m] for m in sorted(fits)[:-1]]
    also = f"; {', '.join(older)} also runs on it" if older else ""
    return extra, f"{extra}: pip install 'emote-edge[{extra}]' (the driver supports CUDA {driver.cuda}{also})"


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
    """A GPU the CUDA runtime counts (through cuda-python, as the TensorRT backend will see it) and the
    TensorRT package: what the GPU tests need."""
    if not has_module("tensorrt"):
        return False
    from .cuda import device_count, installed

    return installed() and device_count() > 0


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


if __name__ == "__main__":
    # `python emote/engines/probe.py`: the driver's answer with nothing installed (bench/gpu_check.sh asks
    # it first): devices, the CUDA version the driver supports, the GPU extra that fits, why none
    _d = cuda_driver()
    print(_d.devices, _d.cuda if _d.version else "-", gpu_extra(_d)[0] or "-", _d.error or "ok", sep="\t")
