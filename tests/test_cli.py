"""The command line: help, doctor, and what importing the package loads."""

from __future__ import annotations

import subprocess
import sys

from emote.cli import build_parser, main


def test_help_lists_every_command():
    text = build_parser().format_help()
    for cmd in ("doctor", "export", "verify", "generate", "demo", "bench"):
        assert cmd in text


def test_doctor_reports_versions_and_backends(capsys):
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    for key in ("python", "numpy", "onnxruntime providers", "cpu", "nvidia gpus", "backends that will work"):
        assert key in out
    assert "onnxruntime-cpu" in out


def test_importing_emote_loads_no_gpu_or_torch_library():
    code = (
        "import sys, emote, emote.cli, emote.runtime, emote.engines.onnxruntime;"
        "print(sorted(m for m in ('torch','tensorrt','pycuda','cuda','openvino','diffusers','transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
