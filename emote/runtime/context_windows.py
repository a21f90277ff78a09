"""EchoMimic's context windows: every step denoises the whole video's latents, window by window.

EchoMimic has no motion frames. Its pipeline (src/pipelines/pipeline_echo_mimic_acc.py) keeps the
latents of every frame of the video and, at each step, runs the UNet on windows of ``size``
frames that start ``size - overlap`` frames apart and wrap around the video's end (the
"uniform" context schedule, closed loop, stride 1, as EchoMimic calls it); at step ``k`` every
window is moved by ``shift * k`` frames (2 k in EchoMimic v1, 3 k in v2), so no seam stays put.
A frame's prediction is the mean over the windows that hold it, and the scheduler steps the
whole video with those means.

The runtime's step graph takes x_t and returns x_{t-1} and x_0 for one window. DDIM's update is
linear in the model's prediction for a fixed x_t, and a frame has the same x_t in every window
that holds it, so the mean of the windows' x_{t-1} is EchoMimic's x_{t-1}: the runtime averages
the step graph's outputs (``WindowMean``) and the step graph stays "x_t in, x_{t-1} out".

A video shorter than one window runs as one window of ``size`` frames (a clip padded with
silence, as clips are): the graphs are static, where EchoMimic runs the short video's frames.
"""

from __future__ import annotations

import numpy as np


def context_windows(frames: int, size: int, overlap: int, shift: int, step: int) -> list[np.ndarray]:
    """The windows of step ``step`` over ``frames`` latent frames: each ``size`` frame indices, in order.

    Windows start at 0, size - overlap, 2 (size - overlap), ... while before ``frames``, each
    taking ``size`` frames modulo ``frames`` (the last ones wrap to the start), all moved by
    ``shift * step``. A video of exactly ``size`` frames is one window, rotated by the shift.
    """
    if frames < size:
        raise ValueError(f"a video of {frames} latent frames is shorter than one {size}-frame window")
    if not 0 <= overlap < size:
        raise ValueError(f"a window overlap of {overlap} frames: give 0 .. {size - 1}")
    starts = [0] if frames == size else range(0, frames, size - overlap)
    return [(np.arange(s, s + size) + shift * step) % frames for s in starts]


class WindowMean:
    """Per-frame means of what the windows of one step give (x_{t-1}, x_0): ``add`` each window, then ``mean``."""

    def __init__(self, shape: tuple[int, ...]):
        self.sum = np.zeros(shape, np.float64)  # float64: the mean of up to a few windows, exactly rounded once
        self.count = np.zeros(shape[0], np.int64)

    def add(self, index: np.ndarray, values: np.ndarray) -> None:
        self.sum[index] += values  # a window holds each frame once (frames >= size)
        self.count[index] += 1

    def mean(self) -> np.ndarray:
        if not self.count.all():
            raise ValueError(f"frames {np.flatnonzero(self.count == 0).tolist()} are in no window")
        return (self.sum / self.count.reshape(-1, *([1] * (self.sum.ndim - 1)))).astype(np.float32)
