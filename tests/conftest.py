"""Shared fixtures: tiny models and inputs made at test time (no downloads)."""

from __future__ import annotations

import os

import numpy as np
import pytest


def pin_xdist_worker() -> None:
    """Under `pytest -n N` (make test runs 2 workers), each worker owns its share of the cores, so no
    library in one (PyTorch, ONNX Runtime, OpenVINO: all size their threads by the affinity) spins on
    the other's core."""
    worker, count = os.environ.get("PYTEST_XDIST_WORKER"), int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    cores = sorted(os.sched_getaffinity(0))
    if worker and len(cores) >= count > 1:
        share = cores[int(worker.removeprefix("gw")) :: count]
        os.sched_setaffinity(0, share)
        os.environ["OMP_NUM_THREADS"] = str(len(share))


pin_xdist_worker()
os.environ.setdefault("OMP_NUM_THREADS", "2")
# One generation minute for every watermark payload the tests make (emote/provenance/payload.py), in this
# process and the servers it starts: two runs compared frame for frame never straddle a minute's turn.
os.environ["SOURCE_DATE_EPOCH"] = "1790000000"


def pytest_collection_modifyitems(config, items):
    """GPU tests skip cleanly on machines without an NVIDIA GPU and TensorRT."""
    from emote.engines.probe import gpu_available

    if gpu_available():
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU with TensorRT (run bench/gpu_check.sh on one)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def c2pa_config(tmp_path_factory):
    """Every MP4 the tests write is signed: the signing certificate is made in a test folder, not the user's ~/.config."""
    folder = tmp_path_factory.mktemp("config")
    previous = os.environ.get("XDG_CONFIG_HOME")
    os.environ["XDG_CONFIG_HOME"] = str(folder)
    yield folder
    if previous is None:
        os.environ.pop("XDG_CONFIG_HOME", None)
    else:
        os.environ["XDG_CONFIG_HOME"] = previous


@pytest.fixture(scope="session")
def tiny_config():
    from emote.models.config import preset

    return preset("tiny")


@pytest.fixture(scope="session")
def tiny_model(tiny_config):
    from emote.models.emo import build_model

    return build_model(tiny_config, seed=0)


def synthetic_inputs(resolution: int, seconds: float = 1.2) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A random portrait, a centred face mask and ``seconds`` of speech-like noise (a 180 Hz tone, 3 Hz syllables)."""
    r = resolution
    rng = np.random.default_rng(0)
    image = (rng.random((r, r, 3)) * 255).astype(np.uint8)
    mask = np.zeros((r, r), np.float32)
    mask[r // 4 : 3 * r // 4, r // 4 : 3 * r // 4] = 1.0
    t = np.arange(int(seconds * 16000)) / 16000
    audio = (0.3 * np.sin(2 * np.pi * 180 * t) * (1 + np.sin(2 * np.pi * 3 * t)) / 2).astype(np.float32)
    return image, mask, audio


@pytest.fixture(scope="session")
def tiny_inputs(tiny_config):
    """The tiny model's portrait, mask and 1.2 s of audio."""
    return synthetic_inputs(tiny_config.resolution)


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory, tiny_model):
    """The tiny model (seed 0) exported once for the whole session, with fp16 step graphs."""
    from emote.export.bundle import export_bundle

    path = tmp_path_factory.mktemp("bundles") / "tiny"
    return export_bundle(tiny_model, path, weights={"source": "random", "seed": 0}, precisions=("fp32", "fp16"), progress=False)


@pytest.fixture(scope="session")
def calibration_inputs(tmp_path_factory):
    """Two procedural portraits, one image without a face, two short synthetic voices (WAV)."""
    import soundfile as sf
    from PIL import Image

    from training.portrait import random_params, render_portrait

    root = tmp_path_factory.mktemp("calib-inputs")
    images, audio = root / "images", root / "audio"
    images.mkdir()
    audio.mkdir()
    rng = np.random.default_rng(5)
    for i in range(2):
        Image.fromarray(render_portrait(random_params(rng), 128, mouth_open=0.3 * i)).save(images / f"face{i}.png")
    Image.fromarray((rng.random((96, 96, 3)) * 255).astype(np.uint8)).save(images / "noise.png")
    t = np.arange(int(0.8 * 16000)) / 16000
    for i, f0 in enumerate((140.0, 220.0)):
        voice = 0.3 * np.sin(2 * np.pi * f0 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * (3 + i) * t))
        sf.write(audio / f"voice{i}.wav", voice.astype(np.float32), 16000)
    return images, audio


@pytest.fixture(scope="session")
def tiny_int8_bundle(tmp_path_factory, tiny_bundle, calibration_inputs):
    """A copy of the tiny bundle calibrated (24 steps) and quantized to int8 (sensitivity swept on denoise_step)."""
    import shutil

    from emote.calibration.quantize import quantize_bundle
    from emote.calibration.record import calibrate

    root = tmp_path_factory.mktemp("int8")
    bundle = root / "tiny"
    shutil.copytree(tiny_bundle, bundle, ignore=shutil.ignore_patterns("engines"))
    images, audio = calibration_inputs
    calib = calibrate(bundle, images, audio, root / "calib", samples=24, steps=6, shard_bytes=256 << 10, progress=False)
    quantize_bundle(bundle, calib, ("denoise_step",), eval_samples=2)
    quantize_bundle(bundle, calib, ("denoise_step_cond",), eval_samples=2, sensitivity=False)
    return bundle, calib


@pytest.fixture(scope="session")
def hallo_audio_pass():
    """Hallo's audio features as its own code makes them, the oracle of the "track" windowing.

    ``AudioProcessor.preprocess`` (hallo/datasets/audio_processor.py:107-119): the track normalised
    once (Wav2Vec2FeatureExtractor), padded with zeros to whole clips, one pass of wav2vec2 with its
    conv features interpolated to the frame count (its Wav2VecModel's linear_interpolation), the
    12 layers' outputs (hidden_states[1:]); then ``process_audio_emb`` (scripts/inference.py):
    each frame's neighbours j-2..j+2, indices clamped to the (padded) track.
    Returns (features (rows, layers, hidden), windows (rows, 5, layers, hidden)).
    """
    import torch
    import torch.nn.functional as F

    def run(wav2vec2, samples: np.ndarray, clip: int, spf: int = 640):
        x = samples.astype(np.float32)
        x = (x - x.mean()) / np.sqrt(x.var() + 1e-7)  # zero_mean_unit_var_norm, as transformers computes it
        seq = -(-len(x) // spf)
        pad = (clip - seq % clip) % clip
        x = np.concatenate([x, np.zeros(pad * spf, np.float32)])
        rows = seq + pad
        outs = []
        hooks = [
            layer.register_forward_hook(lambda m, i, o: outs.append(o[0] if isinstance(o, tuple) else o))
            for layer in wav2vec2.encoder.layers
        ]
        try:
            with torch.no_grad():
                feats = wav2vec2.feature_extractor(torch.from_numpy(x)[None])
                feats = F.interpolate(feats, size=rows, mode="linear", align_corners=True).transpose(1, 2)
                h, _ = wav2vec2.feature_projection(feats)
                wav2vec2.encoder(h)  # transformers' own encoder; the hooks keep every layer's output
        finally:
            for hook in hooks:
                hook.remove()
        features = torch.stack(outs, dim=2)[0]
        windows = torch.stack([torch.stack([features[max(min(i + j, rows - 1), 0)] for j in range(-2, 3)]) for i in range(rows)])
        return features.numpy(), windows.numpy()

    return run


SERVE_KEY = "test-key"
SERVE_ORIGIN = "http://kiosk.test"  # the one origin the test server allows


@pytest.fixture(scope="session")
def server(tiny_bundle):
    """`emote serve` on the tiny bundle, a subprocess on 127.0.0.1 at an ephemeral port: (url, its /readyz)."""
    import json
    import subprocess
    import sys
    import time
    import urllib.request

    cmd = [sys.executable, "-m", "emote.cli", "serve", "--bundle", str(tiny_bundle), "--port", "0", "--api-key", SERVE_KEY]
    cmd += ["--max-sessions", "2", "--max-upload-mb", "0.5", "--backend", "onnxruntime", "--cors-origin", SERVE_ORIGIN, "--warm"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("emote serve: http://127.0.0.1:"), line
        url = line.split()[2]
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                with urllib.request.urlopen(url + "/readyz", timeout=5) as r:
                    ready = json.loads(r.read())
                    break
            except OSError:
                assert time.monotonic() < deadline, "the server never got ready"
                time.sleep(0.5)
        yield url, ready
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
