"""EchoMimic v1 (the `echomimic`, `echomimic-acc` and `echomimic-tiny` presets): whisper windows per frame.

EchoMimic's audio tokens for video frame i are whisper frames centre-4 .. centre+5 of the
whole track, centre = int(i * 50 / fps), clamped to the track (src/utils/audio2feature.py).
The audio-encoder graph computes whisper's states of one clip's window and gathers each
frame's ten rows by ``whisper_index``: the clamping depends on where the clip sits in the
track, so the runtime computes it, per clip, in integers.

Each window state takes the positional-table row it has in EchoMimic's 30 s segments of the
track (``window_positions``: track state s at row s mod 1500), not the row of its place in the
window: the encoder's states then match EchoMimic's far closer (bench/whisper_windows.py).

Rows are clamped at the track's end once it is known (a file, a stream that has ended);
while a stream goes on they are not: a row past the audio a clip hears (a hop's dropped
frames) is then the window's silence, as in the file, whose track goes on. So a stream's
frames are the file's, with a hop too.
"""

from __future__ import annotations

import numpy as np

from ...bundle import SAMPLE_RATE
from . import Family

WHISPER_RATE = 50  # whisper encoder states per second (16 kHz, hop 160, conv stride 2)
SAMPLES_PER_STATE = SAMPLE_RATE // WHISPER_RATE  # 320
FRAME_WINDOW = (-4, 6)  # EchoMimic's rows centre-4 .. centre+5 of each frame
UNKNOWN_END = 1 << 40  # the whisper states of a stream still going: no clamp at its end


class EchoMimic(Family):
    """EchoMimic v1: the face locator's mask per video (as EMO), whisper rows per clip, no motion frames."""

    name = "echomimic"
    framing = "echomimic"  # its mask (box + 10%) and square crop (box + 50%): runtime/face.py

    def file_tokens(self, samples: np.ndarray, frames: int, run) -> np.ndarray | None:
        """EchoMimic's file path (runtime/whisper_mel.py): the whole track's log-mel in 30 s segments through
        ``audio_segment``, each frame's ten rows of the states clamped to the track; None for bundles without it."""
        if not self.bundle.has("audio_segment"):
            return None
        from ..whisper_mel import segments, track_log_mel

        n_mels = self.bundle.graph("audio_segment").inputs[0].shape[1]
        kept = [
            run("audio_segment", {"mel": part})["segment_states"][:keep]
            for part, keep in segments(track_log_mel(samples, n_mels), self.geometry.whisper_positions)
        ]
        states = np.concatenate(kept)
        rows = whisper_index(0, frames, self.geometry.fps, 0, len(states))
        return states[rows.reshape(-1)].reshape(frames, -1, states.shape[2])

    def clip_inputs(self, windows, clip: int, source) -> dict[str, np.ndarray]:
        return {
            "audio_index": clip_index(windows, clip, source.length if source.ended else None),
            "audio_positions": window_positions(windows, clip, self.geometry.whisper_positions),
        }


def whisper_states(samples: int) -> int:
    """Whisper encoder states of ``samples`` samples: 10 ms mel frames, halved by the stride-2 conv."""
    return -(-(samples // (SAMPLE_RATE // 100)) // 2)


def clip_index(windows, clip: int, track_samples: int | None) -> np.ndarray:
    """(f, 10) int64: the whisper rows of clip ``clip``'s frames in its audio window (runtime.clips),
    clamped to a track of ``track_samples`` samples (None: a stream still going, clamped at the start only)."""
    window_first = windows.window_range(clip)[0] // SAMPLES_PER_STATE
    total = UNKNOWN_END if track_samples is None else whisper_states(track_samples)
    return whisper_index(windows.start(clip), windows.clip_frames, windows.fps, window_first, total)


def window_positions(windows, clip: int, table: int) -> np.ndarray:
    """(T,) int64: the positional-table row of each whisper state of clip ``clip``'s audio window, the row
    that state has in EchoMimic's file path (track state s sits at s mod ``table`` in its 30 s segment);
    states of the window before the track (the first clip's left context) take row 0."""
    first = windows.window_range(clip)[0] // SAMPLES_PER_STATE
    return np.maximum(first + np.arange(whisper_states(windows.window_samples), dtype=np.int64), 0) % table


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
