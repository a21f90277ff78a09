"""The bundle's manifest: what a bundle holds, read and checked before any graph is opened.

``manifest.json`` records the format version, the model config, every graph's
input/output names, shapes and dtypes, the sampler defaults and the sha256 of
every file. Opening a bundle checks the format and every hash; a mismatch is one
``EmoteError`` naming the file. The bundle hash (over the file hashes) keys
engine caches: a plan built for another bundle is never loaded.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import EmoteError
from ..folders import FolderKind, read_manifest

FORMAT = "emote-bundle/1"
MANIFEST = "manifest.json"
BUNDLE = FolderKind("bundle", MANIFEST, FORMAT, "make one with `emote export`")


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def bundle_hash(files: dict[str, str]) -> str:
    """A short stable id of the bundle's content: sha256 over the sorted file hashes."""
    text = "\n".join(f"{name} {sha}" for name, sha in sorted(files.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    manifest = dict(manifest, bundle_hash=bundle_hash(manifest["files"]))
    tmp = folder / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1, sort_keys=False))
    os.replace(tmp, folder / MANIFEST)


@dataclass(frozen=True)
class GraphSpec:
    name: str
    file: str
    precision: str
    inputs: tuple[tuple[str, tuple[int, ...], str], ...]
    outputs: tuple[tuple[str, tuple[int, ...], str], ...]

    def input(self, name: str) -> tuple[tuple[int, ...], str]:
        for n, shape, dtype in self.inputs:
            if n == name:
                return shape, dtype
        raise KeyError(f"graph {self.name} has no input {name!r}")


def _specs(items: list[dict]) -> tuple[tuple[str, tuple[int, ...], str], ...]:
    return tuple((d["name"], tuple(d["shape"]), d["dtype"]) for d in items)


@dataclass(frozen=True)
class Bundle:
    """An opened, checked bundle folder."""

    path: Path
    manifest: dict[str, Any]

    @classmethod
    def open(cls, path: str | Path, check_hashes: bool = True) -> "Bundle":
        path = Path(path)
        bundle = cls(path, read_manifest(path, BUNDLE))
        if check_hashes:
            bundle.check_files()
        return bundle

    def check_files(self) -> None:
        for name, sha in self.manifest["files"].items():
            f = self.path / name
            if not f.is_file():
                raise EmoteError(f"bundle {self.path} is incomplete: {name} is missing")
            if file_sha256(f) != sha:
                raise EmoteError(f"bundle {self.path}: {name} does not match its sha256 in {MANIFEST} (modified or corrupt)")

    @property
    def hash(self) -> str:
        return self.manifest["bundle_hash"]

    @property
    def config(self) -> dict[str, Any]:
        return self.manifest["model"]

    @property
    def sampler_defaults(self) -> dict[str, Any]:
        return self.manifest["sampler"]

    def graph(self, name: str, precision: str = "fp32") -> GraphSpec:
        """The graph ``name`` at ``precision`` (fp32 graphs are ``name``; others ``name.precision``)."""
        key = name if precision == "fp32" else f"{name}.{precision}"
        entry = self.manifest["graphs"].get(key)
        if entry is None:
            have = sorted({k.split(".", 1)[1] for k in self.manifest["graphs"] if "." in k} | {"fp32"})
            raise EmoteError(f"bundle {self.path} has no {precision} {name} graph (it has: {', '.join(have)})")
        return GraphSpec(key, entry["file"], entry["precision"], _specs(entry["inputs"]), _specs(entry["outputs"]))

    def graph_path(self, name: str, precision: str = "fp32") -> Path:
        return self.path / self.graph(name, precision).file
