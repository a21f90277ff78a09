"""Adding low-precision graphs to an existing bundle: files beside the fp32 graphs, then the manifest.

New files are written under temporary names inside the bundle, hashed, renamed to
their final names, and only then does the manifest (written atomically, by rename)
name them with their sha256 and the new bundle hash. An interruption before the
manifest write leaves the old manifest: a replaced file then fails its sha256 check
when the bundle is opened (a clear error, never a silent mix), and running the
command again repairs it. Engine caches are keyed by the bundle hash, so compiled
engines of the old bundle are not reused for the new one.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .. import bundle as bundle_format
from ..bundle import Bundle, file_sha256
from ..errors import EmoteError


@contextmanager
def staging(bundle: Bundle) -> Iterator[Path]:
    """A temporary folder inside the bundle (same filesystem: renames are atomic), removed afterwards.

    Files are written there under their final names, so that an ONNX file's external
    data (``<graph>.onnx.data``, named inside the graph) stays valid once moved.
    """
    folder = Path(tempfile.mkdtemp(prefix=".staging-", dir=bundle.path))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def staged_files(folder: Path) -> dict[str, Path]:
    """Every file in a staging folder, by the name it will have in the bundle."""
    return {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*")) if p.is_file()}


def add_graphs(bundle: Bundle, graphs: dict[str, dict], files: dict[str, Path]) -> Bundle:
    """Record ``graphs`` (manifest key -> entry) and move ``files`` (final name -> staged path) into the bundle."""
    hashes = {}
    for name, staged in files.items():
        if not staged.is_file():
            raise EmoteError(f"internal: staged file for {name} is missing")
        hashes[name] = file_sha256(staged)
    for name, staged in files.items():
        (bundle.path / name).parent.mkdir(parents=True, exist_ok=True)
        os.replace(staged, bundle.path / name)
    bundle_format.add_graphs(bundle, graphs, hashes)
    return Bundle.open(bundle.path)
