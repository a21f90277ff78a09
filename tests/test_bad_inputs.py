"""Bad inputs a user will give: each is one line on stderr, exit status 2, and no output file."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from emote.cli import main
from emote.errors import EmoteError
from emote.runtime.audio import read_audio

ASSETS = "emote/assets"


def stereo_tone(seconds: float = 2.0, rate: int = 44100) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.2 * np.stack([np.sin(2 * np.pi * 220 * t), np.sin(2 * np.pi * 330 * t)], axis=1)).astype(np.float32)


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
    # partial copies: the headers promise 2 s of 44.1 kHz stereo, the files hold less
    sf.write(d / "stereo.wav", stereo_tone(), 44100, subtype="PCM_16")
    (d / "partial.wav").write_bytes((d / "stereo.wav").read_bytes()[:4000])
    sf.write(d / "stereo.flac", stereo_tone(), 44100)
    flac = (d / "stereo.flac").read_bytes()
    (d / "partial.flac").write_bytes(flac[: len(flac) // 2])
    Image.open(d / "noise.png").save(d / "noise.jpg", quality=90)
    jpeg = (d / "noise.jpg").read_bytes()
    (d / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (d / "afile").write_text("x")
    return d


CASES = {
    "missing image": (["--image", "{d}/nope.png"], "image {d}/nope.png not found"),
    "image is a folder": (["--image", "{d}"], "is a directory"),
    "text file as image": (["--image", "{d}/notes.txt"], "is not an image"),
    "zero-size image": (["--image", "{d}/empty.png"], "is not an image"),
    "truncated image": (["--image", "{d}/truncated.png"], "image {d}/truncated.png is truncated: it ends before the 96x96 pixels"),
    "truncated JPEG": (["--image", "{d}/truncated.jpg"], "image {d}/truncated.jpg is truncated: it ends before the 96x96 pixels"),
    "tiny image": (["--image", "{d}/small.png"], "16x16 pixels: at least 32"),
    "no face": (["--image", "{d}/grey.png", "--face-box", None], "no face found in {d}/grey.png: pass --face-box"),
    "malformed face box": (["--face-box", "1,2,3"], "expected X,Y,W,H"),
    "face box outside": (["--face-box", "500,500,20,20"], "lies outside"),
    "missing audio": (["--audio", "{d}/nope.wav"], "audio {d}/nope.wav not found"),
    "empty audio file": (["--audio", "{d}/empty.wav"], "is empty (0 bytes)"),
    "text file as audio": (["--audio", "{d}/notes.txt"], "is not an audio file"),
    "truncated audio": (["--audio", "{d}/cut.wav"], "unreadable"),
    "partial WAV": (
        ["--audio", "{d}/partial.wav"],
        "audio {d}/partial.wav is truncated: its header promises 2.00 s (88200 frames) but the file holds 0.02 s",
    ),
    "partial FLAC": (["--audio", "{d}/partial.flac"], "audio {d}/partial.flac is truncated: its header promises 2.00 s (88200 frames)"),
    "unsupported sample format": (["--audio", "{d}/odd.wav"], "unreadable"),
    "audio without samples": (["--audio", "{d}/zero.wav"], "holds no samples"),
    "audio shorter than a frame": (["--audio", "{d}/blip.wav"], "shorter than one video frame"),
    "NaN audio": (["--audio", "{d}/nan.wav"], "NaN or infinite"),
    "output folder missing": (["-o", "{d}/no/such/dir/out.mp4"], "does not exist"),
    "output is a folder": (["-o", "{d}"], "is a directory"),
    "output under a file": (["-o", "{d}/afile/out.mp4"], "does not exist"),
    "missing bundle": (["--bundle", "{d}/nobundle"], "is not a bundle"),
    "zero steps": (["--steps", "0"], "steps must be between 1 and 1000"),
    "hop past a clip": (["--hop", "9"], "a hop of 9 frames: give 2..4 (at least the motion frames"),
    "unknown precision": (["--precision", "int4"], "unknown precision 'int4': one of fp32, fp16, bf16, int8"),
    "missing vocal model": (["--vocal-model", "{d}/Kim_Vocal_2.onnx"], "--vocal-model {d}/Kim_Vocal_2.onnx: no such file"),
    "text file as vocal model": (["--vocal-model", "{d}/notes.txt"], "--vocal-model {d}/notes.txt: not an ONNX model"),
    "vocal FFT size alone": (["--vocal-n-fft", "6144"], "--vocal-n-fft needs --vocal-model"),
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
    # besides the error, at most the note that the bundle is not tuned here (said once per process, before any input is read)
    lines = [ln for ln in err.strip().splitlines() if "is not tuned on this machine" not in ln]
    assert len(lines) == 1 and lines[0].startswith("emote: error: "), err
    assert message.format(d=d) in lines[0]
    assert list(out.parent.iterdir()) == []  # no output, no temp file


def test_silence_is_valid_input(inputs, tiny_bundle, tmp_path, capsys):
    """The control case of the harness above: a silent track is a valid input and makes a video."""
    sf.write(tmp_path / "silence.wav", np.zeros(8000, np.int16), 16000)
    out = tmp_path / "video.mp4"
    rc = main(
        [
            "generate",
            "--quiet",
            "--bundle",
            str(tiny_bundle),
            "--image",
            str(inputs / "noise.png"),
            "--audio",
            str(tmp_path / "silence.wav"),
            "-o",
            str(out),
            "--face-box",
            "10,10,70,70",
        ]
    )
    assert rc == 0, capsys.readouterr().err
    assert out.stat().st_size > 0 and "13 frames for 0.50 s of audio" in capsys.readouterr().out


@pytest.mark.parametrize("size", [0xFFFFFFFF, 0x7FFFF000])
def test_wav_of_unknown_length_loads(inputs, tmp_path, size):
    """Streaming writers (a pipe, a live recorder) cannot go back to fill in the sizes: 0xFFFFFFFF, SoX's 0x7FFFF000."""
    wav = bytearray((inputs / "stereo.wav").read_bytes())
    assert wav[36:40] == b"data"
    wav[4:8] = struct.pack("<I", size)
    wav[40:44] = struct.pack("<I", size)
    (tmp_path / "stream.wav").write_bytes(bytes(wav))
    data, rate = read_audio(tmp_path / "stream.wav")
    assert rate == 44100 and data.shape == (88200, 2)


def write_m4a(path, faststart: bool):
    import av

    with av.open(str(path), "w", format="ipod", options={"movflags": "faststart"} if faststart else {}) as c:
        s = c.add_stream("aac", rate=44100, layout="stereo")
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(stereo_tone().T), format="fltp", layout="stereo")
        frame.sample_rate = 44100
        for p in list(s.encode(frame)) + list(s.encode(None)):
            c.mux(p)


WRITERS = {
    "AIFF": lambda p: sf.write(p.with_suffix(".aiff"), stereo_tone(), 44100, subtype="PCM_16"),
    "RF64": lambda p: sf.write(p.with_suffix(".wav"), stereo_tone(), 44100, format="RF64", subtype="PCM_16"),
    "Ogg Vorbis": lambda p: sf.write(p.with_suffix(".ogg"), stereo_tone(), 44100),
    "Ogg Opus": lambda p: sf.write(p.with_suffix(".opus"), stereo_tone(), 48000, format="OGG", subtype="OPUS"),
    "MP3 (Xing header)": lambda p: sf.write(p.with_suffix(".mp3"), stereo_tone(), 44100),
    "M4A": lambda p: write_m4a(p.with_suffix(".m4a"), faststart=False),
    "M4A (faststart)": lambda p: write_m4a(p.with_suffix(".m4a"), faststart=True),
}


@pytest.mark.parametrize("kind", sorted(WRITERS))
def test_whole_file_loads_and_half_is_truncated(kind, tmp_path):
    """Each container's declared sizes against what is there: no false alarm on the whole file, one line on half of it."""
    WRITERS[kind](tmp_path / "whole")
    (whole,) = tmp_path.iterdir()
    assert read_audio(whole)[0].shape[0] >= 88000
    data = whole.read_bytes()
    half = tmp_path / f"half{whole.suffix}"
    half.write_bytes(data[: len(data) // 2])
    with pytest.raises(EmoteError, match=r"is truncated: .*: a partial copy or download\?$") as e:
        read_audio(half)
    assert str(half) in str(e.value) and "\n" not in str(e.value)


def test_corrupt_flac_is_not_called_truncated(inputs, tmp_path):
    """A FLAC damaged in the middle still decodes to its end in FFmpeg: it is corrupt, and keeps the decoder's message."""
    flac = bytearray((inputs / "stereo.flac").read_bytes())
    flac[len(flac) // 2 : len(flac) // 2 + 50] = bytes(50)
    (tmp_path / "corrupt.flac").write_bytes(bytes(flac))
    with pytest.raises(EmoteError, match="is unreadable"):
        read_audio(tmp_path / "corrupt.flac")
