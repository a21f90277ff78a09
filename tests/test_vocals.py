"""Vocal separation (--vocal-model): MDX-Net's spectrograms against torch's, separation through
models with Kim_Vocal_2's input layout, and what the pipeline hears against what the MP4 keeps."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import soundfile as sf
import torch
from onnx import TensorProto, helper

from emote.cli import main
from emote.errors import EmoteError
from emote.runtime.audio import read_audio
from emote.runtime.vocals import HOP, N_FFT, RATE, VocalSeparator, istft, stft

DIM_F, DIM_T = 3072, 256  # Kim_Vocal_2's input: [batch, 4, 3072, 256]


def mdx_model(path, scale: np.ndarray | float, dim_f: int = DIM_F, dim_t: int = DIM_T) -> str:
    """A model with Kim_Vocal_2's input and output ('input' [1, 4, dim_f, dim_t]) that scales the spectrum per bin."""
    s = np.broadcast_to(np.asarray(scale, np.float32).reshape(-1, 1) if np.ndim(scale) else np.float32(scale), (dim_f, 1))
    init = helper.make_tensor("scale", TensorProto.FLOAT, [1, 1, dim_f, 1], np.ascontiguousarray(s).ravel())
    graph = helper.make_graph(
        [helper.make_node("Mul", ["input", "scale"], ["output"])],
        "mdx",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 4, dim_f, dim_t])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 4, dim_f, dim_t])],
        [init],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return str(path)


def sqnr(ref: np.ndarray, x: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(ref.astype(np.float64) ** 2) / np.sum((ref.astype(np.float64) - x) ** 2)))


def test_spectrograms_are_torchs():
    """stft/istft as torch.stft/istft with MDX-Net's settings (periodic Hann of n_fft, hop 1024, centred, reflect)."""
    x = np.random.default_rng(0).standard_normal((2, HOP * (DIM_T - 1))).astype(np.float32)
    window = torch.hann_window(N_FFT, periodic=True, dtype=torch.float64)
    ref = torch.stft(torch.from_numpy(x).double(), N_FFT, HOP, window=window, center=True, return_complex=True).numpy()
    ours = stft(x, N_FFT, HOP)
    assert ours.shape == ref.shape == (2, N_FFT // 2 + 1, DIM_T)
    assert np.abs(ours - ref).max() < 1e-4 * np.abs(ref).max()
    back = torch.istft(torch.from_numpy(ref), N_FFT, HOP, window=window, center=True).numpy()
    assert sqnr(back, istft(ours, N_FFT, HOP)) > 100
    assert sqnr(x, istft(ours, N_FFT, HOP)) > 100


def test_model_input_is_mdx_layout(tmp_path):
    """The model's input as UVR's STFT lays it out: per channel real then imaginary, dim_f bins, the lowest 3 zeroed."""
    sep = VocalSeparator(mdx_model(tmp_path / "id.onnx", 1.0))
    x = np.random.default_rng(1).standard_normal((2, sep.chunk)).astype(np.float32)
    window = torch.hann_window(N_FFT, periodic=True)
    spec = torch.stft(torch.from_numpy(x), N_FFT, HOP, window=window, center=True, return_complex=True)
    ref = torch.view_as_real(spec).permute(0, 3, 1, 2).reshape(1, 4, -1, DIM_T)[:, :, :DIM_F].clone()
    ref[:, :, :3] = 0
    got = sep._spectrum(x)
    assert got.shape == (1, 4, DIM_F, DIM_T)
    assert np.abs(got - ref.numpy()).max() < 1e-3 * float(ref.abs().max())


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("vocal-models")
    freqs = np.arange(DIM_F) * RATE / N_FFT
    return {
        "identity": mdx_model(d / "identity.onnx", 1.0),
        "high-pass": mdx_model(d / "highpass.onnx", (freqs > 400).astype(np.float32)),  # keeps the "voice", drops the hum
        "silence": mdx_model(d / "silence.onnx", 0.0),
        "small": mdx_model(d / "small.onnx", 1.0, dim_f=1024, dim_t=64),
    }


def test_identity_model_gives_back_the_track(models):
    """Chunking, overlap weighting and trimming lose nothing: through a model that changes nothing, 13 s of speech
    (3 chunks) come back at 16 kHz as they went in (only the 3 lowest bins, below 17 Hz, are zeroed)."""
    from emote.runtime.audio import resample, to_mono
    from emote.runtime.examples import SPEECH

    track, rate = read_audio(SPEECH)
    reps = int(np.ceil(13 * rate / len(track)))
    track = np.concatenate([track] * reps)[: 13 * rate]
    out = VocalSeparator(models["identity"])(track, rate)
    ref = resample(to_mono(track), rate)
    assert len(out) == len(ref)

    def above_20_hz(x: np.ndarray) -> np.ndarray:
        spectrum = np.fft.rfft(x.astype(np.float64))
        spectrum[np.fft.rfftfreq(len(x), 1 / 16000) < 20] = 0
        return np.fft.irfft(spectrum, len(x))

    assert sqnr(above_20_hz(ref), above_20_hz(out)) > 40  # the resampling round trip alone: 44 dB


def test_separation_keeps_the_voice_and_drops_the_rest(models):
    """A 44.1 kHz stereo mix of a 1 kHz "voice" and a 100 Hz hum through a model that keeps what is above 400 Hz:
    the hum goes (its level falls by more than 40 dB), the voice stays (SQNR against it alone)."""
    t = np.arange(9 * RATE) / RATE
    voice = 0.3 * np.sin(2 * np.pi * 1000 * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 1.5 * t))
    hum = 0.5 * np.sin(2 * np.pi * 100 * t)
    mix = np.stack([voice + hum, voice + 0.8 * hum], axis=1).astype(np.float32)
    out = VocalSeparator(models["high-pass"])(mix, RATE)
    from emote.runtime.audio import resample

    ref = resample(voice.astype(np.float32), RATE)
    assert len(out) == len(ref)
    # the mix's peak (0.3 + 0.5) is below audio-separator's 0.9 threshold: no gain change
    assert sqnr(ref[1600:-1600], out[1600:-1600]) > 30
    spectrum = np.abs(np.fft.rfft(out * np.hanning(len(out))))
    bin_of = lambda f: int(round(f * len(out) / 16000))  # noqa: E731
    assert 20 * np.log10(spectrum[bin_of(100)] / spectrum[bin_of(1000)]) < -40


def test_other_model_sizes_follow_the_models_input(models):
    sep = VocalSeparator(models["small"], n_fft=2048)
    assert (sep.dim_f, sep.dim_t, sep.chunk) == (1024, 64, HOP * 63)
    x = (0.1 * np.random.default_rng(2).standard_normal(3 * 16000)).astype(np.float32)
    assert len(sep(x, 16000)) == len(x)


def test_bad_vocal_models_are_one_line_errors(tmp_path, models):
    (tmp_path / "notes.onnx").write_text("not a model")
    with pytest.raises(EmoteError, match="not an ONNX model ONNX Runtime can load"):
        VocalSeparator(tmp_path / "notes.onnx")
    with pytest.raises(EmoteError, match="no such file"):
        VocalSeparator(tmp_path / "nope.onnx")
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "other",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 224, 224])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 224, 224])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "resnet.onnx"))
    with pytest.raises(EmoteError, match=r"expected an MDX-Net separation model .*got inputs x \[1, 3, 224, 224\]"):
        VocalSeparator(tmp_path / "resnet.onnx")
    with pytest.raises(EmoteError, match="its 3072 frequency bins need an FFT of at least 6142"):
        VocalSeparator(models["identity"], n_fft=4096)


def test_the_model_hears_the_vocals_and_the_mp4_keeps_the_track(tiny_bundle, models, tmp_path, capsys):
    """With a model that separates nothing (silence), the pipeline's frames are those of a silent track of the same
    length, while `emote generate --vocal-model` still muxes the user's audio, and live streams are refused."""
    from emote.runtime.examples import PORTRAIT
    from emote.runtime.live import LiveSession
    from emote.runtime.pipeline import Pipeline

    rng = np.random.default_rng(3)
    track = (0.2 * rng.standard_normal((int(1.3 * 44100), 2))).astype(np.float32)
    sf.write(tmp_path / "noisy.wav", track, 44100, subtype="FLOAT")
    n16 = int(round(len(track) * 16000 / 44100))
    with Pipeline(tiny_bundle, unmarked_research=True, vocal_model=models["silence"]) as pipe:
        heard = pipe.model_audio(track, 44100)
        assert heard.shape == (n16,) and np.abs(heard).max() < 1e-6
        separated = pipe.generate(PORTRAIT, str(tmp_path / "noisy.wav"), seed=4)
        with pytest.raises(EmoteError, match="runs on whole tracks, not on live streams"):
            list(pipe.stream(PORTRAIT, iter([heard[:1600]])))
        with pytest.raises(EmoteError, match="runs on whole tracks, not on live streams"):
            LiveSession(pipe, PORTRAIT)
    with Pipeline(tiny_bundle, unmarked_research=True) as pipe:
        silent = pipe.generate(PORTRAIT, np.zeros(n16, np.float32), seed=4)
        noisy = pipe.generate(PORTRAIT, str(tmp_path / "noisy.wav"), seed=4)
    assert separated.shape == silent.shape and np.array_equal(separated, silent)
    assert not np.array_equal(noisy, silent)  # the noise itself moves the frames: the model did hear nothing else

    out = tmp_path / "video.mp4"
    rc = main(
        ["generate", "--quiet", "--bundle", str(tiny_bundle), "--image", str(PORTRAIT), "--audio", str(tmp_path / "noisy.wav")]
        + ["-o", str(out), "--vocal-model", models["silence"]]
    )
    assert rc == 0, capsys.readouterr().err
    muxed, rate = read_audio(out)
    assert abs(len(muxed) / rate - len(track) / 44100) < 0.05
    assert float(np.sqrt(np.mean(muxed.astype(np.float64) ** 2))) > 0.1  # the user's track, not the separated silence
