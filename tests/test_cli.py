"""The command line: help, doctor, and what importing the package loads."""

from __future__ import annotations

import subprocess
import sys

from emote.cli import build_parser, main


def test_help_lists_every_command():
    text = build_parser().format_help()
    for cmd in ("doctor", "export", "verify", "generate", "demo", "bench", "serve", "client"):
        assert cmd in text


def test_export_help_names_every_preset():
    import re

    from emote.models.config import PRESETS

    commands = build_parser()._subparsers._group_actions[0].choices
    listed = re.search(r"model preset:(.*?)--checkpoint", commands["export"].format_help(), re.S).group(1)
    assert set(PRESETS) <= {word.strip(",") for word in listed.split()}


def test_doctor_reports_versions_and_backends(capsys):
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    for key in ("python", "numpy", "onnxruntime providers", "cpu", "nvidia gpus", "backends that will work"):
        assert key in out
    assert "onnxruntime-cpu" in out


HEAVY = ("torch", "tensorrt", "pycuda", "cuda", "openvino", "diffusers", "transformers")


def _heavy_modules(imports: str) -> set[str]:
    """Every module of the HEAVY packages (submodules included) loaded after ``imports`` in a fresh interpreter."""
    code = f"import sys{', ' + imports if imports else ''}; print('\\n'.join(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_importing_emote_loads_no_gpu_or_torch_library():
    # Compared with a bare interpreter: an installed cuda-python may import the 'cuda' namespace
    # at start-up (a .pth file); that is not emote's doing, anything beyond it is.
    baseline = _heavy_modules("")
    assert not {m for m in baseline if m.split(".")[0] != "cuda"}, baseline  # only that namespace may come for free
    loaded = _heavy_modules("emote, emote.cli, emote.runtime, emote.engines.onnxruntime")
    assert loaded - baseline == set()


def test_readme_options_exist_in_the_cli():
    """Every `--option` the README gives a subcommand (in its examples and its "options:" lines) exists."""
    import re
    from pathlib import Path

    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "command").choices
    text = Path(__file__).resolve().parents[1].joinpath("README.md").read_text()
    checked = 0
    examples = re.findall(r"^(?:\.venv/bin/)?emote ([a-z][a-z-]*)((?:[^\n\\]|\\\n)*)", text, re.M)  # + continuations
    paragraphs = re.findall(r"`emote ([a-z][a-z-]*)` options:((?:[^\n]|\n(?!\n))*)", text)  # up to a blank line
    for command, rest in [(c, r.split("#")[0]) for c, r in examples] + paragraphs:
        if command not in subparsers:
            continue
        known = {s for a in subparsers[command]._actions for s in a.option_strings}
        for option in re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", rest):
            assert option in known, f"README: `emote {command} {option}` is not an option of emote {command}"
            checked += 1
    assert checked >= 15


def test_verify_refuses_unknown_input_kinds(capsys):
    assert main(["verify", "no-bundle", "--inputs", "random,photos"]) == 2
    assert "--inputs 'random,photos': give random, real or random,real" in capsys.readouterr().err
