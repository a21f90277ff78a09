"""Engine keys: what a TensorRT plan was built for, saved as JSON beside the plan.

A plan is valid only for the GPU (name and compute capability), the TensorRT
version and the exact ONNX file it was built from. Plans live in
``<bundle>/engines/<gpu>-cc<major.minor>-trt<version>-<bundle hash>/`` as
``<graph>.plan`` with ``<graph>.json`` beside it; a plan whose key does not match
what this machine and bundle expect is rebuilt, never loaded. Pure Python: no
TensorRT, no CUDA (the tests check keys on machines without a GPU).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from ..errors import EmoteError

FORMAT = "emote-engine/1"
PLAN_SUFFIX, KEY_SUFFIX = ".plan", ".json"
TIMING_CACHE = "timing.cache"  # one per engine folder: the same GPU and TensorRT version


def slug(text: str) -> str:
    """A GPU name as a folder-name part: 'NVIDIA GeForce RTX 4090' -> 'NVIDIA-GeForce-RTX-4090'."""
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-") or "gpu"


def engine_dir_name(gpu: str, compute_capability: str, trt_version: str, bundle_hash: str) -> str:
    return f"{slug(gpu)}-cc{compute_capability}-trt{trt_version}-{bundle_hash}"


def default_engine_dir(bundle_path: Path, gpu: str, compute_capability: str, trt_version: str, bundle_hash: str) -> Path:
    return Path(bundle_path) / "engines" / engine_dir_name(gpu, compute_capability, trt_version, bundle_hash)


@dataclass(frozen=True)
class BuildOptions:
    """Builder settings that change the plan but not what it computes."""

    opt_level: int = 3  # TensorRT's default builder optimization level (0-5)
    workspace_gb: float | None = None  # None: TensorRT's default (the device's memory)

    def __post_init__(self):
        if not 0 <= self.opt_level <= 5:
            raise EmoteError(f"--opt-level {self.opt_level}: TensorRT's builder optimization levels are 0 to 5")
        if self.workspace_gb is not None and self.workspace_gb <= 0:
            raise EmoteError(f"--workspace {self.workspace_gb}: give a positive number of GB")


@dataclass(frozen=True)
class EngineKey:
    """Identity of one plan. ``mismatch`` names the first field that differs."""

    graph: str  # manifest key: 'denoise_step', 'denoise_step.fp16', ...
    onnx: str  # the bundle file it was built from
    onnx_sha256: str
    bundle_hash: str
    gpu: str
    compute_capability: str
    tensorrt: str
    build: BuildOptions = field(default_factory=BuildOptions)
    plan_sha256: str = ""  # filled in once the plan is written
    format: str = FORMAT

    IDENTITY = ("format", "graph", "onnx", "onnx_sha256", "bundle_hash", "gpu", "compute_capability", "tensorrt")

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> EngineKey:
        d = json.loads(text)
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown field(s) {', '.join(sorted(unknown))}")
        d["build"] = BuildOptions(**d.get("build", {}))
        return cls(**d)

    def mismatch(self, found: EngineKey | None, *, check_build: bool = False) -> str | None:
        """Why a plan with key ``found`` must not be used where ``self`` is expected; None if it may."""
        if found is None:
            return "no plan yet"
        for name in self.IDENTITY:
            want, have = getattr(self, name), getattr(found, name)
            if want != have:
                return f"built for {name} {have!r}, this is {want!r}"
        if check_build and self.build != found.build:
            return f"built with {found.build}, asked for {self.build}"
        return None


def plan_paths(engine_dir: Path, graph: str) -> tuple[Path, Path]:
    """(plan, key) file paths of a manifest graph key inside an engine folder."""
    return Path(engine_dir) / f"{graph}{PLAN_SUFFIX}", Path(engine_dir) / f"{graph}{KEY_SUFFIX}"


def read_key(path: Path) -> EngineKey | None:
    """The key at ``path``; None when missing or unreadable (an unreadable key means: rebuild)."""
    try:
        return EngineKey.from_json(Path(path).read_text())
    except (OSError, ValueError, TypeError):
        return None


def sha256_bytes(data) -> str:
    return hashlib.sha256(memoryview(data)).hexdigest()


def check_plan(key_path: Path, plan_bytes: bytes, expected: EngineKey, *, check_build: bool = False) -> str | None:
    """Why the plan (already read) and the key beside it must not be loaded; None when they may."""
    found = read_key(key_path)
    reason = expected.mismatch(found, check_build=check_build)
    if reason is None and found.plan_sha256 != sha256_bytes(plan_bytes):
        reason = "the plan does not match the sha256 in its key (modified or truncated)"
    return reason
