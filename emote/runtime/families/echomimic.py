"""EchoMimic v1 (the `echomimic`, `echomimic-acc` and `echomimic-tiny` presets): whisper windows per frame.

EchoMimic's audio tokens for video frame i are whisper frames centre-4 .. centre+5 of the
whole track, centre = int(i * 50 / fps), clamped to the track (src/utils/audio2feature.py).
The audio-encoder graph computes whisper's states of one clip's window and gathers each
frame's ten rows by ``whisper_index``: the clamping depends on where the clip sits in the
track, so the runtime computes it, per clip, in integers.
"""

from __future__ import annotations

import numpy as np

WHISPER_RATE = 50  # whisper encoder states per second (16 kHz, hop 160, conv stride 2)
FRAME_WINDOW = (-4, 6)  # EchoMimic's rows centre-4 .. centre+5 of each frame


def whisper_index(start: int, frames: int, fps: int, window_first: int, track_states: int) -> np.ndarray:
    """(frames, 10) int64: for video frames start .. start+frames-1, each one's whisper rows in the window.

    ``window_first``: the whisper frame of the track where the window's states begin (may be
    negative: the window starts before the track); ``track_states``: whisper frames of the track.
    A row clamped to the track is taken where the track has it; the window must hold it.
    """
    if track_states < 1:
        raise ValueError("the track is shorter than one whisper frame (20 ms)")
    i = np.arange(start, start + frames, dtype=np.int64)
    centre = i * WHISPER_RATE // fps  # int(i * 50 / fps) for i >= 0, in integers
    rows = np.clip(centre[:, None] + np.arange(*FRAME_WINDOW, dtype=np.int64), 0, track_states - 1)
    return rows - window_first
