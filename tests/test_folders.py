"""Folders written whole (bundles, checkpoints, calibration sets): never half-written, never the wrong one replaced."""

import json

import pytest

from emote.errors import EmoteError
from emote.folders import FolderKind, read_manifest, staged_folder

KIND = FolderKind("widget folder", "widget.json", "emote-widget/2", "make one with `emote widget`")


def write(folder, fmt="emote-widget/2", **files):
    (folder / "widget.json").write_text(json.dumps({"format": fmt}))
    for name, text in files.items():
        (folder / name).write_text(text)


def test_written_whole_then_renamed(tmp_path):
    out = tmp_path / "sub" / "w"
    with staged_folder(out, KIND) as tmp:
        assert tmp.parent == out.parent and not out.exists()  # a sibling: the rename is atomic
        write(tmp, a="1")
    assert json.loads((out / "widget.json").read_text())["format"] == "emote-widget/2"
    assert [p.name for p in out.parent.iterdir()] == ["w"]  # no temporary left beside it
    assert out.stat().st_mode & 0o777 == 0o755


def test_failure_leaves_the_old_folder_and_no_temporary(tmp_path):
    out = tmp_path / "w"
    out.mkdir()
    write(out, a="old")
    with pytest.raises(RuntimeError), staged_folder(out, KIND, force=True) as tmp:
        write(tmp, a="new")
        raise RuntimeError("interrupted")
    assert (out / "a").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["w"]


def test_replaces_only_with_force_and_only_its_own_kind(tmp_path):
    out = tmp_path / "w"
    out.mkdir()
    write(out, fmt="emote-widget/1")  # an older version of the kind: replaceable
    with pytest.raises(EmoteError, match="widget folder .* exists: pass --force"), staged_folder(out, KIND):
        pass
    with staged_folder(out, KIND, force=True) as tmp:
        write(tmp, b="new")
    assert (out / "b").is_file()

    other = tmp_path / "photos"
    other.mkdir()
    (other / "me.jpg").write_bytes(b"\xff\xd8")
    for force in (False, True):
        with pytest.raises(EmoteError, match="is not a widget folder: refusing to replace it, choose another --out"):
            with staged_folder(other, KIND, force=force):
                pass
    assert (other / "me.jpg").is_file()
    empty = tmp_path / "empty"
    empty.mkdir()
    with staged_folder(empty, KIND, force=True) as tmp:  # an empty folder is nobody's
        write(tmp)


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda f: None, r"is not a widget folder: no widget.json \(make one with `emote widget`\)"),
        (lambda f: (f / "widget.json").write_text("{oops"), "widget.json is unreadable"),
        (lambda f: write(f, fmt="emote-widget/1"), r"has format 'emote-widget/1'; this version of emote reads 'emote-widget/2'"),
        (lambda f: (f / "widget.json").write_text("[1, 2]"), "has format None"),
    ],
)
def test_read_manifest_errors(tmp_path, setup, message):
    setup(tmp_path)
    with pytest.raises(EmoteError, match=message) as e:
        read_manifest(tmp_path, KIND)
    assert "\n" not in str(e.value)
