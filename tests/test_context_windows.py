"""EchoMimic's context-window schedule (runtime/context_windows.py) against a plain numpy transcription of its loop."""

from __future__ import annotations

import numpy as np
import pytest

from emote.runtime.context_windows import WindowMean, context_windows
from emote.runtime.sampler import alphas_cumprod, make_sampler


def uniform_step0(num_frames: int, context_size: int, context_overlap: int) -> list[list[int]]:
    """The "uniform" context schedule at step 0 with stride 1 and a closed loop, written out as the
    AnimateDiff-derived scheduler EchoMimic calls runs it: ordered_halving(0) = 0, so no pad."""
    if num_frames <= context_size:
        return [list(range(num_frames))]
    out, j = [], 0
    while j < num_frames:
        out.append([e % num_frames for e in range(j, j + context_size)])
        j += context_size - context_overlap
    return out


@pytest.mark.parametrize("frames", [12, 13, 33, 100, 240])
def test_windows_are_echomimics_moved_by_twice_the_step(frames):
    for step in range(6):
        expected = [[(c + 2 * step) % frames for c in w] for w in uniform_step0(frames, 12, 3)]
        got = context_windows(frames, 12, 3, 2, step)
        assert [w.tolist() for w in got] == expected
    first = context_windows(33, 12, 3, 2, 0)
    assert [int(w[0]) for w in first] == [0, 9, 18, 27] and first[-1].tolist() == [*range(27, 33), *range(6)]  # the last wraps


def test_averaged_window_steps_equal_one_step_on_averaged_predictions():
    """EchoMimic averages the model's v per frame over the windows, then DDIM steps the whole video; the
    runtime steps each window (the step graph: x_t in, x_{t-1} out) and averages the results. DDIM is
    linear in v for a fixed x_t, so the two agree: here with a model that mixes a window's frames."""
    rng = np.random.default_rng(0)
    frames, size, shape = 33, 12, (4, 3, 3)
    table = make_sampler(
        "ddim", 6, prediction_type="v_prediction", spacing="trailing", zero_snr=True, beta_schedule="linear", set_alpha_to_one=True
    )
    mix = rng.normal(size=(size, size)) / size  # frame k's v depends on every frame of its window
    ac = alphas_cumprod(1000, "linear", 0.00085, 0.012, True).astype(np.float64)

    def model(x: np.ndarray) -> np.ndarray:
        return np.tanh(np.einsum("kj,j...->k...", mix, x))

    def ddim(x: np.ndarray, v: np.ndarray, t: int, prev: int) -> np.ndarray:
        a, b = np.sqrt(ac[t]), np.sqrt(1 - ac[t])
        x0, eps = a * x - b * v, b * x + a * v
        ap = ac[prev] if prev >= 0 else 1.0  # set_alpha_to_one: the last step lands on alpha-bar 1
        return np.sqrt(ap) * x0 + np.sqrt(1 - ap) * eps

    timesteps = [int(t) for t in table.timesteps]
    x_theirs = x_ours = rng.normal(size=(frames, *shape))
    for i, t in enumerate(timesteps):
        prev = timesteps[i + 1] if i + 1 < len(timesteps) else -1
        v_sum, counter = np.zeros_like(x_theirs), np.zeros(frames)
        for w in uniform_step0(frames, size, 3):
            c = [(k + 2 * i) % frames for k in w]
            v_sum[c] += model(x_theirs[c])
            counter[c] += 1
        x_theirs = ddim(x_theirs, v_sum / counter[:, None, None, None], t, prev)
        mean = WindowMean(x_ours.shape)
        for index in context_windows(frames, size, 3, 2, i):
            mean.add(index, ddim(x_ours[index], model(x_ours[index]), t, prev))
        x_ours = mean.mean().astype(np.float64)
    np.testing.assert_allclose(x_ours, x_theirs, rtol=1e-5, atol=1e-5)


def test_bad_windows_are_refused():
    with pytest.raises(ValueError, match="shorter than one 12-frame window"):
        context_windows(11, 12, 3, 2, 0)
    with pytest.raises(ValueError, match="overlap of 12 frames: give 0 .. 11"):
        context_windows(30, 12, 12, 2, 0)
    mean = WindowMean((5, 2))
    mean.add(np.arange(3), np.ones((3, 2)))
    with pytest.raises(ValueError, match=r"frames \[3, 4\] are in no window"):
        mean.mean()
