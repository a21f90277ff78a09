"""Sampler tables against diffusers' schedulers (the oracle): whole trajectories, same model outputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from emote.models.pipeline import SamplerSpec, diffusers_scheduler
from emote.runtime.sampler import ROW, apply_row, make_sampler

SHAPE = (2, 4, 8, 8)


X0 = np.random.default_rng(5).standard_normal(SHAPE, dtype=np.float32)


def model_output(sched, family: str, prediction: str, step: int, t, x_vp: np.ndarray) -> np.ndarray:
    """A stand-in denoiser: aims at a fixed clean latent X0, with a small deterministic error.

    States then stay O(1) as in real sampling (a random 'prediction' inconsistent with x
    blows eps-prediction states up to ~1e2, where float32 rounding alone exceeds 1e-5).
    The same function is applied to each sampler's own state.
    """
    if family == "euler":
        sig = float(sched.sigmas[step])
        alpha, sigma = 1 / np.sqrt(sig**2 + 1), sig / np.sqrt(sig**2 + 1)
    else:
        ab = float(sched.alphas_cumprod[int(t)])
        alpha, sigma = np.sqrt(ab), np.sqrt(1 - ab)
    err = 0.05 * np.random.default_rng(1000 + step).standard_normal(SHAPE, dtype=np.float32)
    x0 = X0 + err
    eps = (x_vp - alpha * x0) / max(sigma, 1e-3)
    out = eps if prediction == "epsilon" else alpha * eps - sigma * x0
    return out.astype(np.float32)


def run_both(family, steps, prediction, spacing, zero_snr=False):
    spec = SamplerSpec(family=family, steps=steps, prediction_type=prediction, spacing=spacing, zero_snr=zero_snr)
    sched = diffusers_scheduler(spec)
    sched.set_timesteps(steps)
    table = make_sampler(family, steps, prediction_type=prediction, spacing=spacing, zero_snr=zero_snr)
    assert table.steps == len(sched.timesteps)
    np.testing.assert_allclose(table.timesteps.astype(np.float64), sched.timesteps.numpy().astype(np.float64))
    np.testing.assert_allclose(table.rows[:, 0], sched.timesteps.numpy().astype(np.float32))

    noise0 = np.random.default_rng(0).standard_normal(SHAPE, dtype=np.float32)
    # diffusers runs in float64 (its float32 coefficients, exact arithmetic): at zero-SNR Euler's
    # VE state starts near 1e4, where float32 alone loses 1.5e-5 once mapped back to VP
    ref = torch.from_numpy(noise0).double() * sched.init_noise_sigma
    x = noise0 * np.float32(table.init_scale)  # ours, VP space
    x0_prev = np.zeros(SHAPE, np.float32)
    worst = 0.0
    for i, t in enumerate(sched.timesteps):
        # like a real UNet, the stand-in reads each sampler's own state
        their_vp = ref.numpy() / np.sqrt(float(sched.sigmas[i]) ** 2 + 1) if family == "euler" else ref.numpy()
        their_out = model_output(sched, family, prediction, i, t, their_vp)
        out = model_output(sched, family, prediction, i, t, x)
        noise = np.random.default_rng(77 + i).standard_normal(SHAPE, dtype=np.float32)
        kw = {}
        if family == "lcm":
            g = torch.Generator().manual_seed(0)
            kw["generator"] = g
            noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0), dtype=torch.float64).numpy().astype(np.float32)
        ref = sched.step(torch.from_numpy(their_out).double(), t, ref, **kw).prev_sample
        x, x0_prev = apply_row(table.rows[i], x, out, x0_prev, noise)
        theirs = ref.numpy()
        if family == "euler":  # diffusers' Euler state is VE: x_ve = x_vp / alpha
            sig = float(sched.sigmas[i + 1])
            theirs = theirs / np.sqrt(sig**2 + 1)
        worst = max(worst, float(np.abs(theirs - x).max()))
    return worst


@pytest.mark.parametrize("steps", [4, 8, 25, 40])
@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("family", ["ddim", "dpmpp_2m", "euler"])
def test_matches_diffusers(family, steps, prediction, spacing):
    assert run_both(family, steps, prediction, spacing) <= 1e-5


@pytest.mark.parametrize("steps", [4, 8, 25, 40])
@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_lcm_matches_diffusers(steps, prediction):
    # LCMScheduler ignores timestep_spacing: its steps come from the 50-step distillation schedule
    assert run_both("lcm", steps, prediction, "leading") <= 1e-5


@pytest.mark.parametrize("steps", [4, 8, 25, 40])
@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("family", ["ddim", "dpmpp_2m", "euler", "lcm"])
def test_zero_snr_v_prediction(family, steps, spacing):
    """Zero terminal SNR (Hallo's defaults: v-prediction, trailing, 40 steps), every family and length.

    The rescaled schedule is ill-conditioned near t = T (a difference of nearly equal numbers): the
    table's alphas_cumprod must be rounded exactly as diffusers' (float64-accumulated cumprod) to stay
    within 1e-5, which this test would catch.
    """
    if family == "lcm" and spacing != "leading":
        pytest.skip("LCMScheduler ignores timestep_spacing")
    assert run_both(family, steps, "v_prediction", spacing, zero_snr=True) <= 1e-5
    table = make_sampler(family, steps, prediction_type="v_prediction", spacing=spacing, zero_snr=True)
    if spacing != "leading" or family == "lcm":
        assert table.timesteps[0] == 999  # the first step starts from pure noise, where the SNR is zero


def test_noise_schedule_equals_diffusers():
    from emote.runtime.sampler import alphas_cumprod

    for zero_snr in (False, True):
        spec = SamplerSpec(family="ddim", steps=4, prediction_type="v_prediction", zero_snr=zero_snr)
        theirs = diffusers_scheduler(spec).alphas_cumprod.numpy()
        ours = alphas_cumprod(1000, "scaled_linear", 0.00085, 0.012, zero_snr)
        rel = np.abs(ours - theirs)[:-1] / theirs[:-1]  # t = T: zero (DDIM) or diffusers' 2**-24 (Euler, DPM)
        # a few float32 ulps from the betas' linspace (torch rounds some values the other way);
        # the zero-SNR rescale amplifies them near t = T (a difference of nearly equal numbers)
        assert rel.max() <= (1e-5 if zero_snr else 3e-7), rel.max()


def test_guidance_rows():
    table = make_sampler("dpmpp_2m", 8, guidance_scale=3.5, guidance_steps=2)
    assert table.guided.tolist() == [True, True] + [False] * 6
    assert table.rows[:, ROW.index("g")].tolist() == [3.5, 3.5] + [1.0] * 6
    assert not make_sampler("ddim", 4, guidance_scale=1.0).guided.any()
    assert make_sampler("ddim", 4, guidance_scale=2.0).guided.all()
    assert make_sampler("dpmpp_2m", 8).is_multistep and not make_sampler("ddim", 8).is_multistep
    assert make_sampler("lcm", 4).is_stochastic and not make_sampler("euler", 4).is_stochastic


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(family="heun", steps=4), "unknown sampler 'heun': one of ddim, dpmpp_2m, euler, lcm"),
        (dict(family="ddim", steps=0), "steps must be between 1 and 1000, got 0"),
        (dict(family="ddim", steps=4, spacing="karras"), "unknown timestep spacing 'karras'"),
        (dict(family="ddim", steps=4, prediction_type="sample"), "unknown prediction type 'sample'"),
        (dict(family="ddim", steps=4, zero_snr=True), "zero terminal SNR needs v_prediction"),
        (dict(family="lcm", steps=60), "LCM takes at most 50 steps"),
    ],
)
def test_argument_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_sampler(**kwargs)
