"""Samplers as tables: per-step coefficients computed once in numpy, fed to the step graph as rows.

The step graph (``denoise_step.onnx``) does, for a row (t, a_x, a_o, c_x, c_0, c_p, c_n, g):

    out    = out_u + g (out_c - out_u)                  guidance (guided rows only)
    x0     = a_x x + a_o out                            eps- or v-prediction -> x0
    x_prev = c_x x + c_0 x0 + c_p x0_prev + c_n noise   the solver update, in fp32

so every sampler is a table of rows and the loop is K calls of one graph. The
state x lives in VP space (x_t = alpha_t x0 + sigma_t eps) for every family;
Euler's VE-space update (diffusers works on x / alpha_t) is rewritten in VP
terms. Each family matches diffusers' scheduler ``step()`` (tests use it as the
oracle), including its timestep spacing rules, which differ per scheduler.

Imports numpy only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

ROW = ("t", "a_x", "a_o", "c_x", "c_0", "c_p", "c_n", "g")
FAMILIES = ("ddim", "dpmpp_2m", "euler", "lcm")
SPACINGS = ("leading", "trailing", "linspace")
PREDICTIONS = ("epsilon", "v_prediction")


@dataclass(frozen=True, eq=False)
class SamplerTable:
    """One sampler's rows. Initial x = init_scale x standard normal noise (VP space)."""

    family: str
    prediction_type: str
    timesteps: np.ndarray  # (K,) the model's timestep per step
    rows: np.ndarray  # (K, 8) float32, columns ROW
    guided: np.ndarray  # (K,) bool: run the guided graph (else the conditional branch only)
    init_scale: float = 1.0

    @property
    def steps(self) -> int:
        return len(self.rows)

    @property
    def is_multistep(self) -> bool:
        return bool(np.any(self.rows[:, ROW.index("c_p")] != 0))

    @property
    def is_stochastic(self) -> bool:
        return bool(np.any(self.rows[:, ROW.index("c_n")] != 0))


# -- the training noise schedule ---------------------------------------------------------------
def alphas_cumprod(n: int, schedule: str, beta_start: float, beta_end: float, zero_snr: bool) -> np.ndarray:
    """alpha-bar_t for t = 0..n-1, in float32 as diffusers computes it."""
    if schedule == "scaled_linear":  # SD: linear in sqrt(beta)
        betas = linspace32(beta_start**0.5, beta_end**0.5, n) ** 2
    elif schedule == "linear":
        betas = linspace32(beta_start, beta_end, n)
    else:
        raise ValueError(f"unknown beta schedule {schedule!r}: one of scaled_linear, linear")
    if zero_snr:
        betas = rescale_zero_terminal_snr(betas)
    return cumprod32(1.0 - betas)


def cumprod32(x: np.ndarray) -> np.ndarray:
    """float32 cumulative product accumulated in float64, as torch's CPU kernel does (bit for bit)."""
    return np.cumprod(x.astype(np.float64)).astype(np.float32)


def linspace32(start: float, end: float, n: int) -> np.ndarray:
    """float32 linspace stepping from both ends, as torch computes it (numpy rounds differently)."""
    a, b = np.float32(start), np.float32(end)
    step = (b - a) / np.float32(n - 1)
    i = np.arange(n, dtype=np.float32)
    return np.where(np.arange(n) < n // 2, a + step * i, b - step * (np.float32(n - 1) - i)).astype(np.float32)


def rescale_zero_terminal_snr(betas: np.ndarray) -> np.ndarray:
    """Lin et al. 2023, "Common Diffusion Noise Schedules and Sample Steps are Flawed", Algorithm 1."""
    sqrt_ab = np.sqrt(cumprod32(1.0 - betas))
    a0, a_t = sqrt_ab[0], sqrt_ab[-1]
    sqrt_ab = (sqrt_ab - a_t) * (a0 / (a0 - a_t))  # shift so the last is 0, scale so the first is unchanged
    ab = sqrt_ab**2
    alphas = np.concatenate([ab[:1], ab[1:] / ab[:-1]])
    return (1.0 - alphas).astype(np.float32)


# -- timestep selection (each diffusers scheduler has its own rules) --------------------------
def ddim_timesteps(n: int, k: int, spacing: str, offset: int) -> np.ndarray:
    """DDIMScheduler (and EulerDiscreteScheduler, in float) spacing: Lin et al. 2023, Table 2."""
    if spacing == "linspace":
        return np.linspace(0, n - 1, k).round()[::-1].astype(np.int64)
    if spacing == "leading":
        return (np.arange(k) * (n // k)).round()[::-1].astype(np.int64) + offset
    return np.round(np.arange(n, 0, -n / k)).astype(np.int64) - 1


def dpm_timesteps(n: int, k: int, spacing: str, offset: int) -> np.ndarray:
    """DPMSolverMultistepScheduler spacing: k+1 points with the last dropped for linspace/leading."""
    if spacing == "linspace":
        return np.linspace(0, n - 1, k + 1).round()[::-1][:-1].astype(np.int64)
    if spacing == "leading":
        return (np.arange(k + 1) * (n // (k + 1))).round()[::-1][:-1].astype(np.int64) + offset
    return np.arange(n, 0, -n / k).round().astype(np.int64) - 1


def lcm_timesteps(n: int, k: int, original_steps: int = 50) -> np.ndarray:
    """LCMScheduler: k steps skipped evenly through the distillation schedule of ``original_steps``."""
    if k > original_steps:
        raise ValueError(f"LCM takes at most {original_steps} steps (its distillation schedule), got {k}")
    origin = (np.arange(1, original_steps + 1) * (n // original_steps) - 1)[::-1]
    return origin[np.floor(np.linspace(0, len(origin), num=k, endpoint=False)).astype(np.int64)]


# -- x0 from the model output --------------------------------------------------------------------
def x0_coefficients(prediction: str, alpha: float, sigma: float) -> tuple[float, float]:
    """(a_x, a_o) with x0 = a_x x + a_o out, for x = alpha x0 + sigma eps."""
    if prediction == "epsilon":
        return 1.0 / alpha, -sigma / alpha
    return alpha, -sigma  # v = alpha eps - sigma x0  =>  x0 = alpha x - sigma v


# -- families: each returns (timesteps, rows without the guidance column, init_scale) --------
def ddim(ac: np.ndarray, k: int, prediction: str, spacing: str, offset: int, alpha_to_one: bool = False):
    """DDIM, eta = 0 (Song et al. 2021): x_prev = alpha_prev x0 + sigma_prev eps.

    Past t = 0 alpha-bar is alpha-bar_0 (SD's set_alpha_to_one=False) or 1 (diffusers' default, Hallo's).
    """
    n = len(ac)
    ts = ddim_timesteps(n, k, spacing, offset)
    final = 1.0 if alpha_to_one else float(ac[0])
    rows = []
    for t in ts:
        prev = t - n // k
        ab, ab_prev = float(ac[t]), float(ac[prev]) if prev >= 0 else final
        alpha, sigma = math.sqrt(ab), math.sqrt(1 - ab)
        alpha_p, sigma_p = math.sqrt(ab_prev), math.sqrt(1 - ab_prev)
        # eps = (x - alpha x0) / sigma, so x_prev = (sigma_p / sigma) x + (alpha_p - sigma_p alpha / sigma) x0
        rows.append((t, *x0_coefficients(prediction, alpha, sigma), sigma_p / sigma, alpha_p - sigma_p * alpha / sigma, 0.0, 0.0))
    return ts, rows, 1.0


def dpmpp_2m(ac: np.ndarray, k: int, prediction: str, spacing: str, offset: int, zero_snr: bool):
    """DPM-Solver++(2M) (Lu et al. 2022), data prediction, midpoint; first order on the first and last step."""
    ac = ac.copy()
    if zero_snr:
        ac[-1] = 2.0**-24  # diffusers keeps sigma finite at t = T
    n = len(ac)
    ts = dpm_timesteps(n, k, spacing, offset)
    sig_all = np.sqrt((1 - ac) / ac).astype(np.float32)
    sig = np.concatenate([np.interp(ts, np.arange(n), sig_all), [0.0]]).astype(np.float32)  # final sigma: zero
    alpha = 1.0 / np.sqrt(sig.astype(np.float64) ** 2 + 1)
    s = sig * alpha
    with np.errstate(divide="ignore"):
        lam = np.log(alpha) - np.log(s)  # lambda = log(alpha / sigma); +inf at the final sigma 0
    rows = []
    for i, t in enumerate(ts):
        a_x, a_o = x0_coefficients(prediction, alpha[i], s[i])
        if sig[i + 1] == 0:  # the last step lands on x0 exactly
            rows.append((t, a_x, a_o, 0.0, 1.0, 0.0, 0.0))
            continue
        h = lam[i + 1] - lam[i]
        d = -alpha[i + 1] * math.expm1(-h)  # -alpha_t (e^{-h} - 1)
        c_x = s[i + 1] / s[i]
        last = i == k - 1  # lower_order_final: final step first order (always with a zero final sigma)
        if i == 0 or last:
            rows.append((t, a_x, a_o, c_x, d, 0.0, 0.0))
        else:
            r0 = (lam[i] - lam[i - 1]) / h
            # D = (1 + 1/(2 r0)) x0 - 1/(2 r0) x0_prev
            rows.append((t, a_x, a_o, c_x, d * (1 + 0.5 / r0), -d * 0.5 / r0, 0.0))
    return ts, rows, 1.0


def euler(ac: np.ndarray, k: int, prediction: str, spacing: str, offset: int, zero_snr: bool):
    """Euler (Karras et al. 2022, Algorithm 2 without churn) in VE sigmas, rewritten for the VP state."""
    ac = ac.copy()
    if zero_snr:
        ac[-1] = 2.0**-24
    n = len(ac)
    if spacing == "linspace":
        ts = np.linspace(0, n - 1, k, dtype=np.float32)[::-1].copy()
    else:
        ts = ddim_timesteps(n, k, spacing, offset).astype(np.float32)
    sig_all = np.sqrt((1 - ac) / ac).astype(np.float32)
    sig = np.concatenate([np.interp(ts, np.arange(n), sig_all), [0.0]]).astype(np.float32)
    sig64 = sig.astype(np.float64)
    alpha = 1.0 / np.sqrt(sig64**2 + 1)  # x_vp = alpha x_ve
    rows = []
    for i, t in enumerate(ts):
        sg = sig64[i]
        # diffusers takes dt = sigma_next - sigma in float32: at zero terminal SNR (sigma 4096, float32's
        # step there is 4.9e-4) that rounding alone moves the state by ~4e-5, so it is reproduced here
        dt = float(sig[i + 1] - sig[i])
        a_x, a_o = x0_coefficients(prediction, alpha[i], sg * alpha[i])
        # VE: s_prev = s + (s - x0) / sg * dt;  s = x / alpha
        rows.append((t, a_x, a_o, alpha[i + 1] * (1 + dt / sg) / alpha[i], -alpha[i + 1] * dt / sg, 0.0, 0.0))
    sig_max = float(sig.max())
    init_sigma = sig_max if spacing in ("linspace", "trailing") else math.sqrt(sig_max**2 + 1)
    return ts, rows, init_sigma * float(alpha[0])  # diffusers' init_noise_sigma, seen in VP space


def lcm(ac: np.ndarray, k: int, prediction: str):
    """Latent Consistency Models (Luo et al. 2023): boundary-condition scalings, fresh noise between steps."""
    ts = lcm_timesteps(len(ac), k)
    sigma_data, scaling = 0.5, 10.0  # diffusers' LCMScheduler defaults
    rows = []
    for i, t in enumerate(ts):
        ab = float(ac[t])
        a_x, a_o = x0_coefficients(prediction, math.sqrt(ab), math.sqrt(1 - ab))
        st = t * scaling
        c_skip = sigma_data**2 / (st**2 + sigma_data**2)
        c_out = st / math.sqrt(st**2 + sigma_data**2)
        if i == k - 1:  # the last step returns the consistency output itself
            rows.append((t, a_x, a_o, c_skip, c_out, 0.0, 0.0))
        else:
            ab_p = float(ac[ts[i + 1]])
            rows.append((t, a_x, a_o, math.sqrt(ab_p) * c_skip, math.sqrt(ab_p) * c_out, 0.0, math.sqrt(1 - ab_p)))
    return ts, rows, 1.0


def make_sampler(
    family: str,
    steps: int,
    *,
    prediction_type: str = "epsilon",
    spacing: str = "leading",
    zero_snr: bool = False,
    guidance_scale: float = 1.0,
    guidance_steps: int | None = None,
    num_train_timesteps: int = 1000,
    beta_schedule: str = "scaled_linear",
    beta_start: float = 0.00085,
    beta_end: float = 0.012,
    steps_offset: int = 1,
    set_alpha_to_one: bool = False,
) -> SamplerTable:
    """The table of one sampler configuration; arguments are validated here, once."""
    if family not in FAMILIES:
        raise ValueError(f"unknown sampler {family!r}: one of {', '.join(FAMILIES)}")
    if spacing not in SPACINGS:
        raise ValueError(f"unknown timestep spacing {spacing!r}: one of {', '.join(SPACINGS)}")
    if prediction_type not in PREDICTIONS:
        raise ValueError(f"unknown prediction type {prediction_type!r}: one of {', '.join(PREDICTIONS)}")
    if not 1 <= steps <= num_train_timesteps:
        raise ValueError(f"steps must be between 1 and {num_train_timesteps}, got {steps}")
    if guidance_steps is not None and guidance_steps < 0:
        raise ValueError(f"guidance steps must be >= 0, got {guidance_steps}")
    if zero_snr and prediction_type == "epsilon":
        raise ValueError("zero terminal SNR needs v_prediction: eps-prediction cannot recover x0 at t = T")
    ac = alphas_cumprod(num_train_timesteps, beta_schedule, beta_start, beta_end, zero_snr)
    if family == "ddim":
        ts, rows, init = ddim(ac, steps, prediction_type, spacing, steps_offset, set_alpha_to_one)
    elif family == "dpmpp_2m":
        ts, rows, init = dpmpp_2m(ac, steps, prediction_type, spacing, steps_offset, zero_snr)
    elif family == "euler":
        ts, rows, init = euler(ac, steps, prediction_type, spacing, steps_offset, zero_snr)
    else:
        ts, rows, init = lcm(ac, steps, prediction_type)
    k = len(rows)
    guided = np.array([guidance_scale > 1.0 and (guidance_steps is None or i < guidance_steps) for i in range(k)])
    g = np.where(guided, guidance_scale, 1.0)
    table = np.concatenate([np.asarray(rows, dtype=np.float64), g[:, None]], axis=1).astype(np.float32)
    return SamplerTable(family, prediction_type, np.asarray(ts), table, guided, init)


def apply_row(row: np.ndarray, x: np.ndarray, out: np.ndarray, x0_prev: np.ndarray, noise: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The step graph's solver update in numpy (float32, the graph's arithmetic): -> (x_prev, x0).

    ``out`` is the already guided model output.
    """
    _, a_x, a_o, c_x, c_0, c_p, c_n, _ = (np.float32(v) for v in row)
    x0 = a_x * x + a_o * out
    return c_x * x + c_0 * x0 + c_p * x0_prev + c_n * noise, x0
