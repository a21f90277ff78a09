"""The measured default: the backend, precision and options `emote tune` found fastest, keyed like an engine plan.

A tuned choice is valid only for the CPU it was measured on (its model name and usable
cores), the engine libraries that ran it (ONNX Runtime and OpenVINO versions) and the
exact bundle (its hash): ``TuneKey``. It lives as JSON beside the bundle's compiled-model
caches, ``<bundle>/engines/tuned-<cpu>-<cores>c-ort<version>-ov<version>-<bundle hash>.json``;
where the bundle folder is read-only, under the user's cache folder
(``$XDG_CACHE_HOME/emote/tuned/``, else ``~/.cache/emote/tuned/``). A choice whose key does
not match this machine and bundle is never used (``mismatch`` names the field). Written
whole (``folders.write_atomic``). Pure Python: no engine is imported here; the library
versions are read from the installed packages' metadata.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from ..folders import write_atomic
from .engine_key import slug

FORMAT = "emote-tuned/1"
# the engine libraries whose kernels a tuned choice was measured with: distribution names per library
LIBRARIES = {"onnxruntime": ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino"), "openvino": ("openvino",)}
LIBRARY_TAGS = {"onnxruntime": "ort", "openvino": "ov"}


@functools.cache
def library_versions() -> dict[str, str]:
    """The installed version of every engine library of ``LIBRARIES`` ('' where absent), from package metadata."""
    out = {}
    for lib, dists in LIBRARIES.items():
        out[lib] = ""
        for dist in dists:
            try:
                out[lib] = metadata.version(dist)
                break
            except metadata.PackageNotFoundError:
                continue
    return out


@dataclass(frozen=True)
class TuneKey:
    """What a tuned choice was measured for. ``mismatch`` names the first field that differs."""

    cpu: str  # probe.cpu_class().model
    cores: int  # usable cores: a thread count is only the best one for this many
    versions: dict[str, str]  # library -> version ('' where not installed)
    bundle_hash: str
    format: str = FORMAT

    @property
    def name(self) -> str:
        libs = "-".join(f"{LIBRARY_TAGS[lib]}{self.versions.get(lib) or 'none'}" for lib in LIBRARIES)
        return f"tuned-{slug(self.cpu)}-{self.cores}c-{libs}-{self.bundle_hash}.json"

    def mismatch(self, found: TuneKey | None) -> str | None:
        """Why a choice measured for ``found`` must not be used where ``self`` is expected; None if it may."""
        if found is None:
            return "not tuned yet"
        for name in ("format", "cpu", "cores", "bundle_hash"):
            if getattr(self, name) != getattr(found, name):
                return f"measured for {name} {getattr(found, name)!r}, this is {getattr(self, name)!r}"
        for lib in sorted(set(self.versions) | set(found.versions)):
            if self.versions.get(lib, "") != found.versions.get(lib, ""):
                return f"measured with {lib} {found.versions.get(lib) or 'absent'}, this is {self.versions.get(lib) or 'absent'}"
        return None


def tune_key(bundle_hash: str, cpu: str | None = None, cores: int | None = None, versions: dict[str, str] | None = None) -> TuneKey:
    """The key of this machine (or of the CPU, cores and library versions given) for a bundle."""
    if cpu is None:
        from .probe import cpu_class

        cpu = cpu_class().model
    return TuneKey(
        cpu,
        len(os.sched_getaffinity(0)) if cores is None else cores,
        dict(library_versions() if versions is None else versions),
        bundle_hash,
    )


@dataclass(frozen=True)
class Tuned:
    """A stored choice: the winner, how it was measured, and the key it holds for."""

    key: TuneKey
    backend: str
    precision: str
    options: dict[str, Any]
    candidate: str  # its name in `emote tune`: 'ov-fp32-t2'
    measured: dict[str, Any] = field(default_factory=dict)  # the run's figures (JSON), for `emote tune --json` and humans

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, default=float)

    @classmethod
    def from_json(cls, text: str) -> Tuned:
        d = json.loads(text)
        d["key"] = TuneKey(**d["key"])
        return cls(**d)


def user_cache() -> Path:
    """Where tuned choices of read-only bundles go: ``$XDG_CACHE_HOME/emote/tuned`` (default ``~/.cache``)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "emote" / "tuned"


def candidates_paths(bundle_path: Path, key: TuneKey) -> tuple[Path, Path]:
    """(beside the bundle, in the user's cache): where the choice for ``key`` is looked for, in that order."""
    return Path(bundle_path) / "engines" / key.name, user_cache() / key.name


def read_tuned(bundle_path: Path, key: TuneKey) -> tuple[Tuned | None, Path | None]:
    """The stored choice for ``key`` and its file; (None, None) when there is none that matches.

    A file under the key's name whose content is unreadable or holds another key is not used
    (as a plan with a mismatched key is not loaded): tune again to replace it.
    """
    for path in candidates_paths(bundle_path, key):
        try:
            tuned = Tuned.from_json(path.read_text())
        except (OSError, ValueError, TypeError, KeyError):
            continue
        if key.mismatch(tuned.key) is None:
            return tuned, path
    return None, None


def write_tuned(bundle_path: Path, tuned: Tuned) -> Path:
    """Write ``tuned`` beside the bundle, else (a read-only bundle) into the user's cache; the path written."""
    beside, cache = candidates_paths(bundle_path, tuned.key)
    data = (tuned.to_json() + "\n").encode()
    try:
        beside.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(beside, data)
        return beside
    except OSError:
        pass  # a read-only bundle: the user's cache, and the caller says where
    cache.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(cache, data)
    return cache
