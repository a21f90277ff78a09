"""Shared fixtures: tiny models and inputs made at test time (no downloads)."""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("OMP_NUM_THREADS", "2")


def pytest_collection_modifyitems(config, items):
    """GPU tests skip cleanly on machines without an NVIDIA GPU and TensorRT."""
    from emote.engines.probe import gpu_available

    if gpu_available():
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU with TensorRT (run bench/gpu_check.sh on one)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_config():
    from emote.models.config import preset

    return preset("tiny")


@pytest.fixture(scope="session")
def tiny_model(tiny_config):
    from emote.models.emo import build_model

    return build_model(tiny_config, seed=0)


@pytest.fixture(scope="session")
def tiny_inputs(tiny_config):
    """A random portrait, a centred face mask and 1.2 s of speech-like noise."""
    r = tiny_config.resolution
    rng = np.random.default_rng(0)
    image = (rng.random((r, r, 3)) * 255).astype(np.uint8)
    mask = np.zeros((r, r), np.float32)
    mask[r // 4 : 3 * r // 4, r // 4 : 3 * r // 4] = 1.0
    t = np.arange(int(1.2 * 16000)) / 16000
    audio = (0.3 * np.sin(2 * np.pi * 180 * t) * (1 + np.sin(2 * np.pi * 3 * t)) / 2).astype(np.float32)
    return image, mask, audio


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
    cmd += ["--max-sessions", "2", "--max-upload-mb", "0.5", "--backend", "onnxruntime", "--cors-origin", SERVE_ORIGIN]
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
