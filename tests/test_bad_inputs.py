"""Bad inputs a user will give: each is one line on stderr, exit status 2, and no output file."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from emote.cli import main

ASSETS = "emote/assets"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("inputs")
    Image.fromarray((np.random.default_rng(0).random((96, 96, 3)) * 255).astype(np.uint8)).save(d / "noise.png")
    Image.new("RGB", (200, 200), (128, 128, 128)).save(d / "grey.png")
    Image.new("RGB", (16, 16), (128, 128, 128)).save(d / "small.png")
    (d / "notes.txt").write_text("this is not a picture or a sound\n" * 20)
    (d / "empty.png").write_bytes(b"")
    (d / "empty.wav").write_bytes(b"")
    png = (d / "noise.png").read_bytes()
    (d / "truncated.png").write_bytes(png[: len(png) // 3])
    sf.write(d / "speech.wav", (0.2 * np.sin(np.arange(16000) / 16000 * 2 * np.pi * 200)).astype(np.float32), 16000)
    sf.write(d / "zero.wav", np.zeros(0, np.float32), 16000)
    sf.write(d / "blip.wav", np.zeros(80, np.float32), 16000)  # 5 ms: less than one frame
    sf.write(d / "nan.wav", np.full(1600, np.nan, np.float32), 16000, subtype="FLOAT")
    # a WAV whose header claims 12-bit samples in an unknown format tag: no decoder takes it
    body = b"\x00\x01" * 800
    fmt = struct.pack("<HHIIHH", 0x1234, 1, 16000, 32000, 2, 12)
    riff = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(body)) + body
    (d / "odd.wav").write_bytes(b"RIFF" + struct.pack("<I", len(riff)) + riff)
    wav = (d / "speech.wav").read_bytes()
    (d / "cut.wav").write_bytes(wav[:30])  # the header itself cut short
    (d / "afile").write_text("x")
    return d


CASES = {
    "missing image": (["--image", "{d}/nope.png"], "image {d}/nope.png not found"),
    "image is a folder": (["--image", "{d}"], "is a directory"),
    "text file as image": (["--image", "{d}/notes.txt"], "is not an image"),
    "zero-size image": (["--image", "{d}/empty.png"], "is not an image"),
    "truncated image": (["--image", "{d}/truncated.png"], "truncated or corrupt"),
    "tiny image": (["--image", "{d}/small.png"], "16x16 pixels: at least 32"),
    "no face": (["--image", "{d}/grey.png", "--face-box", None], "no face found in {d}/grey.png: pass --face-box"),
    "malformed face box": (["--face-box", "1,2,3"], "expected X,Y,W,H"),
    "face box outside": (["--face-box", "500,500,20,20"], "lies outside"),
    "missing audio": (["--audio", "{d}/nope.wav"], "audio {d}/nope.wav not found"),
    "empty audio file": (["--audio", "{d}/empty.wav"], "is empty (0 bytes)"),
    "text file as audio": (["--audio", "{d}/notes.txt"], "is not an audio file"),
    "truncated audio": (["--audio", "{d}/cut.wav"], "unreadable"),
    "unsupported sample format": (["--audio", "{d}/odd.wav"], "unreadable"),
    "audio without samples": (["--audio", "{d}/zero.wav"], "holds no samples"),
    "audio shorter than a frame": (["--audio", "{d}/blip.wav"], "shorter than one video frame"),
    "NaN audio": (["--audio", "{d}/nan.wav"], "NaN or infinite"),
    "output folder missing": (["-o", "{d}/no/such/dir/out.mp4"], "does not exist"),
    "output is a folder": (["-o", "{d}"], "is a directory"),
    "output under a file": (["-o", "{d}/afile/out.mp4"], "does not exist"),
    "missing bundle": (["--bundle", "{d}/nobundle"], "is not a bundle"),
    "zero steps": (["--steps", "0"], "steps must be between 1 and 1000"),
    "unknown precision": (["--precision", "int4"], "has no int4"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_line_and_no_file(case, inputs, tiny_bundle, tmp_path, capsys):
    d = inputs
    extra, message = CASES[case]
    out = tmp_path / "out" / "video.mp4"
    out.parent.mkdir()
    args = {
        "--bundle": str(tiny_bundle),
        "--image": str(d / "noise.png"),
        "--audio": str(d / "speech.wav"),
        "-o": str(out),
        "--face-box": "10,10,70,70",
    }
    for key, value in zip(extra[::2], extra[1::2]):
        if value is None:
            args.pop(key)
        else:
            args[key] = value.format(d=d)
    argv = ["generate", "--quiet"] + [x for kv in args.items() for x in kv]
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("emote: error: "), err
    assert message.format(d=d) in lines[0]
    assert list(out.parent.iterdir()) == []  # no output, no temp file


def test_silence_is_valid_input(inputs, tiny_bundle, tmp_path, capsys):
    """The control case of the harness above: a silent track is a valid input and makes a video."""
    sf.write(tmp_path / "silence.wav", np.zeros(8000, np.int16), 16000)
    out = tmp_path / "video.mp4"
    rc = main(["generate", "--quiet", "--bundle", str(tiny_bundle), "--image", str(inputs / "noise.png"),
               "--audio", str(tmp_path / "silence.wav"), "-o", str(out), "--face-box", "10,10,70,70"])
    assert rc == 0, capsys.readouterr().err
    assert out.stat().st_size > 0 and "13 frames for 0.50 s of audio" in capsys.readouterr().out
