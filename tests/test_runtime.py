"""The lean runtime against the PyTorch reference: frames, streaming, imports, files a user opens."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from emote.errors import EmoteError
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
    with Pipeline(
        tiny_bundle, backend="onnxruntime", sampler=family, steps=steps, guidance_scale=2.0, guidance_steps=None, unmarked_research=True
    ) as pipe:
        got = pipe.generate(portrait, audio, seed=3)
    assert got.shape == ref.shape == (30, 64, 64, 3)  # 1.2 s at 25 fps
    assert psnr_db(ref, got) >= 40.0


def test_guidance_on_first_steps_only(tiny_bundle, tiny_model, tiny_inputs, portrait):
    image, mask, audio = tiny_inputs
    spec = SamplerSpec(family="dpmpp_2m", steps=6, guidance_scale=2.5, guidance_steps=2)
    ref = ReferencePipeline(tiny_model, spec)(image, mask, audio[:8000], seed=1)
    with Pipeline(
        tiny_bundle, backend="onnxruntime", sampler="dpmpp_2m", steps=6, guidance_scale=2.5, guidance_steps=2, unmarked_research=True
    ) as pipe:
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


def test_a_hop_matches_the_reference_and_streams_after_its_own_audio(tiny_bundle, tiny_model, tiny_inputs, portrait):
    """hop = 2 (half the tiny clip): the runtime cuts the clips the PyTorch reference cuts, and a stream's
    first frames come once 2 + 2 look-ahead frames of audio have arrived, not a whole clip's."""
    image, mask, audio = tiny_inputs
    spec = SamplerSpec(family="dpmpp_2m", steps=4, guidance_scale=2.0)
    ref = ReferencePipeline(tiny_model, spec)(image, mask, audio, seed=3, hop=2)
    read = []

    def chunks():
        for i in range(0, len(audio), 320):
            read.append(i + 320)
            yield audio[i : i + 320]

    with Pipeline(
        tiny_bundle, backend="onnxruntime", sampler="dpmpp_2m", steps=4, guidance_scale=2.0, guidance_steps=None, unmarked_research=True
    ) as pipe:
        whole = pipe.generate(portrait, audio, seed=3, hop=2)
        clips, first_after = [], None
        for frames in pipe.stream(portrait, chunks(), seed=3, hop=2):
            first_after = first_after or read[-1]
            clips.append(frames)
        plain = pipe.generate(portrait, audio, seed=3)
        with pytest.raises(EmoteError, match="a hop of 5 frames: give 2..4"):
            pipe.generate(portrait, audio, hop=5)
    assert whole.shape == ref.shape == plain.shape == (30, 64, 64, 3)
    assert [len(c) for c in clips] == [2] * 15
    assert np.array_equal(np.concatenate(clips), whole)  # a file and a stream cut it alike
    assert psnr_db(ref, whole) >= 40.0
    assert first_after <= 4 * 640  # 2 frames + 2 of look-ahead
    assert psnr_db(plain, whole) < 40.0  # the clips really are cut otherwise


def test_runtime_imports_no_torch(tiny_bundle, tmp_path):
    """A whole generation from files (face detection, audio decoding, MP4 out) in a fresh interpreter."""
    import soundfile as sf

    speech, rate = sf.read("emote/assets/speech.wav", dtype="float32")
    sf.write(tmp_path / "speech.flac", speech[: rate // 2], rate)
    code = textwrap.dedent(
        f"""
        import sys
        from emote.runtime import Pipeline
        from emote.runtime.generate import generate_video
        with Pipeline({str(tiny_bundle)!r}) as pipe:
            summary = generate_video(pipe, "emote/assets/portrait.png", {str(tmp_path / "speech.flac")!r},
                                     {str(tmp_path / "out.mp4")!r}, progress=False)
        assert summary.frames == 13, summary  # 0.5 s at 25 fps = 12.5 -> 13
        heavy = [m for m in ("torch", "diffusers", "transformers") if m in sys.modules]
        print("heavy:", heavy)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "heavy: []" in out.stdout
    assert (tmp_path / "out.mp4").stat().st_size > 0


def test_generate_writes_a_video_a_user_can_open(tiny_bundle, tmp_path, capsys):
    import av
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
    rc = main(
        [
            "generate",
            "--bundle",
            str(tiny_bundle),
            "--image",
            str(img),
            "--audio",
            str(wav),
            "-o",
            str(out),
            "--face-box",
            "10,10,60,60",
            "--npy",
            str(tmp_path / "f.npy"),
        ]
    )
    assert rc == 0
    printed = capsys.readouterr()
    # progress: steps of all clips (9 clips of 4 frames x 4 steps), the clip being denoised
    assert "36/36" in printed.err and "clip 9/9" in printed.err
    summary = printed.out.strip().splitlines()[-1]
    assert re.fullmatch(
        rf"wrote {re.escape(str(out))}: 33 frames for 1\.30 s of audio in [0-9.]+ s: [0-9.]+ frames/s, "
        r"real-time factor [0-9.]+, first frame after [0-9.]+ s",
        summary,
    ), summary
    # opened with PyAV directly, as a player would (not through our own probe)
    with av.open(str(out)) as c:
        assert len(c.streams.video) == 1 and len(c.streams.audio) == 1
        v, a = c.streams.video[0], c.streams.audio[0]
        assert v.codec_context.name == "h264" and a.codec_context.name == "aac"
        assert a.codec_context.channels == 2  # the user's stereo track, not the model's mono
        assert v.average_rate == 25 and (v.codec_context.width, v.codec_context.height) == (64, 64)
        frames = sum(1 for _ in c.decode(v))
    with av.open(str(out)) as c:
        a = c.streams.audio[0]
        audio_seconds = sum(fr.samples for fr in c.decode(a)) / a.codec_context.sample_rate
        container_seconds = float(a.duration * a.time_base)
    assert frames == 33  # round(1.3 x 25) = 32.5 -> 33
    one_frame = 1 / 25
    assert abs(audio_seconds - 1.3) <= one_frame and abs(container_seconds - 1.3) <= one_frame
    assert probe_video(out)["frames"] == 33
    assert np.load(tmp_path / "f.npy").shape == (33, 64, 64, 3)
    assert [p.name for p in tmp_path.iterdir() if p.suffix == ".mp4"] == ["out.mp4"]  # no temp files left


def test_a_model_with_motion_frames_runs_clips_only(tiny_bundle, portrait, tiny_inputs):
    """EMO's clips continue from motion frames: context windows are refused in one line, clips are the default."""
    with Pipeline(tiny_bundle, backend="onnxruntime", unmarked_research=True) as pipe:
        assert pipe.schedule_for(None) == "clips"
        with pytest.raises(EmoteError, match="has no context windows .* run clips"):
            pipe.generate(portrait, tiny_inputs[2], schedule="windows")
