"""Folders emote writes whole and reads by their manifest: bundles, checkpoints, calibration sets.

Each kind is a folder with one JSON file naming its format (``manifest.json`` of
``emote-bundle/1``, ``config.json`` of ``emote-checkpoint/1``, ``calibration.json`` of
``emote-calibration/1``). Writing one goes through ``staged_folder``: the content is
written into a temporary sibling and renamed onto the target only when complete, so
an interrupted or failed write leaves the old folder as it was and nothing half-written.
A target that exists is replaced only with ``force``, and never when it is not a folder
of that kind. Reading one goes through ``read_manifest``: one-line errors that say
which command makes the folder. Single files are written the same way (``atomic_path``,
``write_atomic``): into a temporary sibling, renamed when complete. Only the standard
library: every layer imports it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .errors import EmoteError


@dataclass(frozen=True)
class FolderKind:
    """What makes a folder one of ours: ``manifest`` holds ``{"format": format, ...}``."""

    noun: str  # "bundle", "checkpoint", "calibration folder"
    manifest: str
    format: str  # "emote-bundle/1": family and version
    hint: str  # how to make one, for errors: "make one with `emote export`"

    def holds(self, folder: Path) -> bool:
        """``folder`` is of this kind, whatever its version (an older one may be replaced)."""
        try:
            found = json.loads((folder / self.manifest).read_text()).get("format", "")
        except (OSError, ValueError, AttributeError):
            return False
        return isinstance(found, str) and found.split("/")[0] == self.format.split("/")[0]


def read_manifest(folder: str | Path, kind: FolderKind, reads: tuple[str, ...] = ()) -> dict:
    """``folder``'s manifest, its format checked (``kind.format``, or one of the older ``reads``);
    else one ``EmoteError`` saying what to run."""
    folder = Path(folder)
    path = folder / kind.manifest
    if not path.is_file():
        raise EmoteError(f"{folder} is not a {kind.noun}: no {kind.manifest} ({kind.hint})")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise EmoteError(f"{path} is unreadable: {e}") from None
    found = manifest.get("format") if isinstance(manifest, dict) else None
    if found != kind.format and found not in reads:
        raise EmoteError(f"{kind.noun} {folder} has format {found!r}; this version of emote reads {kind.format!r} ({kind.hint})")
    return manifest


def check_target(out: str | Path, kind: FolderKind, force: bool, option: str) -> None:
    """Refuse, before any work, to write where a folder must not be replaced.

    ``out`` exists and ``force`` is not given; or ``out`` is a file, or a folder holding
    anything that is not a ``kind`` (never deleted, even with ``force``).
    """
    out = Path(out)
    if not out.exists():
        return
    if not out.is_dir() or (any(out.iterdir()) and not kind.holds(out)):
        raise EmoteError(f"{out} exists and is not a {kind.noun}: refusing to replace it, choose another {option}")
    if not force:
        raise EmoteError(f"{kind.noun} {out} exists: pass --force to replace it")


@contextmanager
def staged_folder(out: str | Path, kind: FolderKind, *, force: bool = False, option: str = "--out") -> Iterator[Path]:
    """A temporary sibling of ``out`` to write into; renamed onto ``out`` when the block ends without error.

    On any error (or interrupt) the temporary folder is removed and ``out`` is untouched.
    """
    check_target(out, kind, force, option)
    with staged_dir(out) as tmp:
        yield tmp


@contextmanager
def staged_dir(out: str | Path) -> Iterator[Path]:
    """A temporary sibling folder of ``out``, renamed onto it (replacing it) when the block ends without error.

    On any error (or interrupt) the temporary folder is removed and ``out`` is untouched.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        yield tmp
        tmp.chmod(0o755)  # mkdtemp makes it private; what we write is an ordinary folder
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary file beside ``path`` to write; renamed onto ``path`` when the block ends without error.

    On any error (or interrupt) the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    fd, name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix or ".tmp", dir=parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        tmp.chmod(0o644)  # mkstemp makes it private; what we write is an ordinary file
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(path: str | Path, data: bytes) -> None:
    """``path`` holds ``data`` whole or is as it was: never half a file under the real name."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
