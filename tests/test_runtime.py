"""The lean runtime against the PyTorch reference: frames, streaming, imports, files a user opens."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from emote.export.parity import psnr_db
from emote.models.pipeline import ReferencePipeline, SamplerSpec
from emote.runtime import Pipeline


@pytest.fixture(scope="module")
def portrait(tiny_inputs):
    from emote.runtime.face import Portrait

    image, mask, _ = tiny_inputs
    return Portrait(image=image, mask=mask, box=(0, 0, image.shape[1], image.shape[0]))


@pytest.mark.parametrize("family, steps", [("ddim", 40), ("dpmpp_2m", 8)])
def test_runtime_reproduces_reference_pipeline(tiny_bundle, tiny_model, tiny_inputs, portrait, family, steps):
    image, mask, audio = tiny_inputs
    spec = SamplerSpec(family=family, steps=steps, guidance_scale=2.0)
    ref = ReferencePipeline(tiny_model, spec)(image, mask, audio, seed=3)
    with Pipeline(tiny_bundle, sampler=family, steps=steps, guidance_scale=2.0, guidance_steps=None) as pipe:
        got = pipe.generate(portrait, audio, seed=3)
    assert got.shape == ref.shape == (30, 64, 64, 3)  # 1.2 s at 25 fps
    assert psnr_db(ref, got) >= 40.0


def test_guidance_on_first_steps_only(tiny_bundle, tiny_model, tiny_inputs, portrait):
    image, mask, audio = tiny_inputs
    spec = SamplerSpec(family="dpmpp_2m", steps=6, guidance_scale=2.5, guidance_steps=2)
    ref = ReferencePipeline(tiny_model, spec)(image, mask, audio[:8000], seed=1)
    with Pipeline(tiny_bundle, sampler="dpmpp_2m", steps=6, guidance_scale=2.5, guidance_steps=2) as pipe:
        assert pipe.sampler.guided.tolist() == [True, True, False, False, False, False]
        got = pipe.generate(portrait, audio[:8000], seed=1)
    assert psnr_db(ref, got) >= 40.0


def test_streaming_in_20ms_chunks_equals_whole_file(tiny_bundle, tiny_inputs, portrait):
    _, _, audio = tiny_inputs
    chunk = 320  # 20 ms at 16 kHz
    read = []

    def chunks():
        for i in range(0, len(audio), chunk):
            read.append(i + chunk)
            yield audio[i : i + chunk]

    with Pipeline(tiny_bundle) as pipe:
        whole = pipe.generate(portrait, audio, seed=5)
        clips = []
        first_after = None
        for frames in pipe.stream(portrait, chunks(), seed=5):
            if first_after is None:
                first_after = min(read[-1], len(audio))
            clips.append(frames)
    streamed = np.concatenate(clips)
    assert np.array_equal(streamed, whole)
    # the first clip (4 frames) needs its frames + 2 look-ahead frames: 6 x 640 samples, not the whole track
    assert first_after <= 6 * 640 < len(audio)


def test_runtime_imports_no_torch(tiny_bundle, tmp_path):
    code = textwrap.dedent(
        f"""
        import sys
        import numpy as np
        from emote.runtime import Pipeline
        from emote.runtime.face import Portrait
        img = np.full((64, 64, 3), 128, np.uint8)
        mask = np.ones((64, 64), np.float32)
        with Pipeline({str(tiny_bundle)!r}) as pipe:
            frames = pipe.generate(Portrait(image=img, mask=mask, box=(0, 0, 64, 64)), np.zeros(8000, np.float32))
        assert frames.shape == (13, 64, 64, 3), frames.shape
        heavy = [m for m in ("torch", "diffusers", "transformers") if m in sys.modules]
        print("heavy:", heavy)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "heavy: []" in out.stdout


def test_generate_writes_a_video_a_user_can_open(tiny_bundle, tmp_path):
    import soundfile as sf
    from PIL import Image

    from emote.cli import main
    from emote.runtime.video import probe_video

    img = tmp_path / "face.png"
    Image.fromarray((np.random.default_rng(0).random((96, 80, 3)) * 255).astype(np.uint8)).save(img)
    wav = tmp_path / "speech.wav"
    t = np.arange(int(1.3 * 44100)) / 44100
    sf.write(wav, np.stack([np.sin(2 * np.pi * 220 * t)] * 2, axis=1) * 0.3, 44100)
    out = tmp_path / "out.mp4"
    rc = main(["generate", "--bundle", str(tiny_bundle), "--image", str(img), "--audio", str(wav), "-o", str(out),
               "--face-box", "10,10,60,60", "--quiet", "--npy", str(tmp_path / "f.npy")])
    assert rc == 0
    info = probe_video(out)
    assert info["frames"] == 33  # round(1.3 x 25) = 32.5 -> 33
    assert info["fps"] == 25
    assert info["width"] == info["height"] == 64
    assert info["video_codec"] in ("h264", "libx264")
    assert abs(info["audio_seconds"] - 1.3) <= 0.04
    assert np.load(tmp_path / "f.npy").shape == (33, 64, 64, 3)
    assert [p.name for p in tmp_path.iterdir() if p.suffix == ".mp4"] == ["out.mp4"]  # no temp files left
