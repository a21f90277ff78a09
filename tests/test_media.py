"""Media in and out: images of every mode, the face crop, audio of every format and rate, video files."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from emote.errors import EmoteError
from emote.runtime.audio import load_audio
from emote.runtime.face import crop_portrait, detect_face, prepare_portrait
from emote.runtime.image import load_image
from emote.runtime.video import VideoWriter, probe_video, write_npy, write_png_frames

PORTRAIT = "emote/assets/portrait.png"


# -- images ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "mode, value, expected",
    [
        ("RGB", (10, 200, 30), (10, 200, 30)),
        ("L", 77, (77, 77, 77)),
        ("RGBA", (255, 0, 0, 0), (255, 255, 255)),  # fully transparent -> white
        ("RGBA", (255, 0, 0, 255), (255, 0, 0)),
        ("LA", (50, 255), (50, 50, 50)),
        ("CMYK", (0, 0, 0, 0), (255, 255, 255)),
        ("I;16", 65535, (255, 255, 255)),
        ("I;16", 32896, (128, 128, 128)),
    ],
)
def test_image_modes(tmp_path, mode, value, expected):
    ext = "jpg" if mode == "CMYK" else "png"
    path = tmp_path / f"img.{ext}"
    Image.new(mode, (40, 36), value).save(path)
    rgb = load_image(path)
    assert rgb.shape == (36, 40, 3) and rgb.dtype == np.uint8
    assert np.abs(rgb[18, 20].astype(int) - expected).max() <= 2


def test_palette_image(tmp_path):
    Image.new("RGB", (40, 40), (0, 0, 255)).convert("P").save(tmp_path / "p.png")
    assert load_image(tmp_path / "p.png")[5, 5].tolist() == [0, 0, 255]


def test_exif_rotated_jpeg_comes_out_upright(tmp_path):
    img = Image.new("RGB", (60, 40), (0, 0, 0))
    img.paste((255, 255, 255), (0, 0, 30, 40))  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    img.save(tmp_path / "r.jpg", exif=exif, quality=95)
    rgb = load_image(tmp_path / "r.jpg")
    assert rgb.shape == (60, 40, 3)  # portrait after rotation
    assert rgb[5, 20].mean() > 200 and rgb[55, 20].mean() < 50  # the white half is now on top


# -- the example inputs ------------------------------------------------------------------------
def test_example_inputs_are_what_their_recipe_makes():
    """emote/assets/README.md says how the example inputs were made; the recipe must still make them
    (after a change of the portrait renderer: `python -m training.make_examples`, then commit)."""
    import shutil
    import sys

    sys.path.insert(0, ".")
    from training.make_examples import speech
    from training.portrait import EXAMPLE, render_portrait

    committed = np.asarray(Image.open(PORTRAIT).convert("RGB")).astype(int)
    diff = np.abs(render_portrait(EXAMPLE, 512).astype(int) - committed)
    assert diff.max() <= 2 and diff.mean() < 0.05, "emote/assets/portrait.png is stale: run python -m training.make_examples"
    info = sf.info("emote/assets/speech.wav")
    assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16") and 4 < info.duration < 8
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed: the speech recipe cannot be rerun here")
    import subprocess

    version = subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True).stdout
    if "text-to-speech: 1.51 " not in version:  # other versions speak a little differently
        pytest.skip(f"the speech was made with espeak-ng 1.51, this machine has: {version.strip()}")
    made = speech()
    committed_speech, _ = sf.read("emote/assets/speech.wav", dtype="float32")
    assert len(made) == len(committed_speech) and np.abs(made - committed_speech).max() < 2 / 32768


# -- face -------------------------------------------------------------------------------------
def test_haar_finds_the_example_face():
    import sys

    sys.path.insert(0, ".")
    from training.portrait import EXAMPLE, face_box

    rgb = load_image(PORTRAIT)
    box = detect_face(rgb)
    assert box is not None
    truth = face_box(EXAMPLE, 512)
    ix = max(0, min(box[0] + box[2], truth[0] + truth[2]) - max(box[0], truth[0]))
    iy = max(0, min(box[1] + box[3], truth[1] + truth[3]) - max(box[1], truth[1]))
    union = box[2] * box[3] + truth[2] * truth[3] - ix * iy
    assert ix * iy / union >= 0.5


def test_crop_geometry_and_mask():
    rgb = np.zeros((100, 200, 3), np.uint8)
    rgb[:, :, 0] = np.arange(200)[None, :]
    crop, mask = crop_portrait(rgb, (80, 30, 40, 40), size=64)
    assert crop.shape == (64, 64, 3) and mask.shape == (64, 64)
    # the box is 40 px in an 80 px crop: the mask covers half the side, centred horizontally
    cols = np.where(mask.any(axis=0))[0]
    assert cols[0] == 16 and cols[-1] == 47
    assert mask.sum() == pytest.approx(32 * 32, abs=64)
    # near the border the crop is padded by replication, not black
    _, _ = crop_portrait(rgb, (0, 0, 40, 40), size=64)
    edge, _ = crop_portrait(rgb, (0, 0, 40, 40), size=64)
    assert edge[:, 0, 0].max() <= 5 and edge.min() >= 0


def test_no_face_names_the_option():
    with pytest.raises(EmoteError, match="no face found in the image: pass --face-box"):
        prepare_portrait(np.full((120, 120, 3), 128, np.uint8), 64)


def test_echomimic_framing_is_its_mask_and_square_crop(caplog):
    """EchoMimic's rules on a 400x300 image, face box x 150, y 100, w 80, h 100 (worked by hand): mask rows
    90:210, cols 142:238 (10% of h and w); crop rect x 110..270, y 50..240 (50% each side, the bottom by 50%
    of w), so the square of side 160 centred at (190, 145): x 110..270, y 65..225; both resized bilinear."""
    import cv2

    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (300, 400, 3), dtype=np.uint8)
    p = prepare_portrait(rgb, 32, face_box=(150, 100, 80, 100), framing="echomimic")
    np.testing.assert_array_equal(p.image, cv2.resize(rgb[65:225, 110:270], (32, 32), interpolation=cv2.INTER_LINEAR))
    mask = np.zeros((300, 400), np.uint8)
    mask[90:210, 142:238] = 255
    np.testing.assert_allclose(p.mask, cv2.resize(mask[65:225, 110:270], (32, 32), interpolation=cv2.INTER_LINEAR) / 255.0)
    assert p.mask[15, 15] == 1.0 and p.mask[0, 0] == 0.0 and p.box == (150, 100, 80, 100)
    found = prepare_portrait(PORTRAIT, 64, framing="echomimic")  # the example's face, by the Haar detector
    assert found.detector == "haar" and 0.2 < found.mask.mean() < 0.8
    blank = prepare_portrait(np.full((90, 120, 3), 128, np.uint8), 32, framing="echomimic")  # no face: EchoMimic's whole image
    assert blank.detector == "none" and blank.mask.min() == 1.0 and blank.image.shape == (32, 32, 3)
    assert "no face found in the image" in caplog.text


def test_prepare_portrait_of_the_example():
    p = prepare_portrait(PORTRAIT, 128)
    assert p.image.shape == (128, 128, 3) and p.mask.max() == 1.0
    assert 0.1 < p.mask.mean() < 0.5  # the face fills a good part of the crop


# -- audio ------------------------------------------------------------------------------------
def tone(rate: int, seconds: float = 1.0, freq: float = 440.0, channels: int = 1) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    x = 0.5 * np.sin(2 * np.pi * freq * t)
    return np.stack([x] * channels, axis=1) if channels > 1 else x


def peak_hz(x: np.ndarray) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spec) * 16000 / len(x))


@pytest.mark.parametrize(
    "ext, subtype, rate, channels",
    [
        ("wav", "PCM_16", 16000, 1),
        ("wav", "PCM_32", 44100, 2),
        ("wav", "FLOAT", 48000, 1),
        ("wav", "PCM_U8", 8000, 1),
        ("flac", "PCM_16", 44100, 2),
        ("ogg", "VORBIS", 48000, 1),
        ("mp3", "MPEG_LAYER_III", 44100, 2),
    ],
)
def test_audio_formats(tmp_path, ext, subtype, rate, channels):
    path = tmp_path / f"a.{ext}"
    sf.write(path, tone(rate, channels=channels), rate, subtype=subtype)
    x = load_audio(path)
    assert x.dtype == np.float32 and x.ndim == 1
    assert abs(len(x) / 16000 - 1.0) <= (0.06 if ext == "mp3" else 0.001)  # MP3 pads frames
    assert abs(peak_hz(x) - 440) < 3
    assert 0.3 < np.abs(x).max() <= 0.6


def test_m4a_through_pyav(tmp_path):
    import av

    path = tmp_path / "a.m4a"
    with av.open(str(path), "w") as c:
        s = c.add_stream("aac", rate=22050, layout="mono")
        samples = tone(22050).astype(np.float32)[None]
        frame = av.AudioFrame.from_ndarray(samples, format="flt", layout="mono")
        frame.sample_rate = 22050
        for p in s.encode(frame):
            c.mux(p)
        for p in s.encode(None):
            c.mux(p)
    x = load_audio(path)
    assert abs(len(x) / 16000 - 1.0) < 0.1 and abs(peak_hz(x) - 440) < 3


def test_silence_is_valid(tmp_path):
    sf.write(tmp_path / "s.wav", np.zeros(8000, np.int16), 16000)
    assert np.all(load_audio(tmp_path / "s.wav") == 0)


# -- video ------------------------------------------------------------------------------------
def test_video_two_clips_with_audio(tmp_path):
    out = tmp_path / "v.mp4"
    audio = tone(16000).astype(np.float32)
    with VideoWriter(out, 25, 64, audio=audio) as v:
        v.write(np.zeros((13, 64, 64, 3), np.uint8))
        v.write(np.full((12, 64, 64, 3), 200, np.uint8))
    info = probe_video(out)
    assert (info["frames"], info["fps"], info["video_streams"], info["audio_streams"]) == (25, 25.0, 1, 1)
    assert info["video_codec"] == "h264" and info["audio_codec"] == "aac"
    assert abs(info["audio_seconds"] - 1.0) <= 0.04


def test_video_keeps_the_users_audio_track(tmp_path):
    """The muxed track is the user's own (44.1 kHz stereo here), not the model's 16 kHz mono:
    a 10 kHz tone (above 16 kHz audio's 8 kHz limit) in the left channel only survives."""
    import av

    rate = 44100
    t = np.arange(rate) / rate
    track = np.stack([0.3 * np.sin(2 * np.pi * 10000 * t), 0.3 * np.sin(2 * np.pi * 440 * t)], axis=1).astype(np.float32)
    out = tmp_path / "v.mp4"
    with VideoWriter(out, 25, 64, audio=track, audio_rate=rate) as v:
        v.write(np.zeros((25, 64, 64, 3), np.uint8))
    with av.open(str(out)) as c:
        a = c.streams.audio[0]
        assert a.codec_context.channels == 2
        decoded = np.concatenate([f.to_ndarray() for f in c.decode(a)], axis=1)  # (2, n) planar
        sr = a.codec_context.sample_rate
    mid = decoded[:, sr // 4 : 3 * sr // 4]
    peak = lambda x: np.argmax(np.abs(np.fft.rfft(x * np.hanning(len(x))))) * sr / len(x)  # noqa: E731
    assert abs(peak(mid[0]) - 10000) < 20 and abs(peak(mid[1]) - 440) < 20
    assert abs(decoded.shape[1] / sr - 1.0) <= 1 / 25


def test_interrupted_video_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with VideoWriter(tmp_path / "v.mp4", 25, 64) as v:
            v.write(np.zeros((5, 64, 64, 3), np.uint8))
            raise RuntimeError("stopped")
    assert list(tmp_path.iterdir()) == []


def test_unwritable_output_is_refused_before_work(tmp_path):
    with pytest.raises(EmoteError, match="does not exist"):
        VideoWriter(tmp_path / "missing" / "v.mp4", 25, 64)


def test_png_and_npy(tmp_path):
    frames = np.random.default_rng(0).integers(0, 255, (3, 16, 16, 3), dtype=np.uint8)
    write_png_frames(frames, tmp_path / "png")
    names = sorted(p.name for p in (tmp_path / "png").iterdir())
    assert names == ["frame_000000.png", "frame_000001.png", "frame_000002.png"]
    assert np.array_equal(np.asarray(Image.open(tmp_path / "png" / names[1])), frames[1])
    write_npy(frames, tmp_path / "f.npy")
    assert np.array_equal(np.load(tmp_path / "f.npy"), frames)
