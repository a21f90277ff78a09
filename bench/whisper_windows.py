"""EchoMimic's whisper on 30 s segments (its file path) against the runtime's per-clip windows.

EchoMimic encodes a file in 30 s segments of the whole track's log-mel, normalised once
(``WhisperAudioEncoder.segment_states``, what the runtime runs for a file under the window
schedule); under the clip schedule (a live stream) the runtime encodes, per clip, the clip's
window with 2 frames of left context and 3 of look-ahead (normalised on its own, attending
within the window), each state at the positional row it has in
EchoMimic's segments (``window_positions``). This prints the SQNR of the runtime's per-frame
audio tokens (what attn2 attends to) against EchoMimic's file path's, over the track, per
state (the conv stem + positions, then blocks 1-4) and at the worst frame, and the same with
the rows counted from the window's start (the runtime before), for whisper-tiny's size with
random weights (transformers' init, seed 0), on the example speech repeated to ``--seconds``:

    python bench/whisper_windows.py [--seconds 40]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from emote.engines.probe import cpu_class
from emote.models.config import WHISPER_TINY
from emote.models.whisper import WhisperAudioEncoder
from emote.runtime.audio import load_audio
from emote.runtime.clips import ClipWindows, audio_window
from emote.runtime.examples import SPEECH
from emote.runtime.families.echomimic import clip_index, whisper_index, window_positions

FRAMES, FPS = 12, 25  # EchoMimic's clips as the runtime cuts them


def sqnr(ref: np.ndarray, got: np.ndarray, axis=None) -> np.ndarray:
    ref, got = ref.astype(np.float64), got.astype(np.float64)
    return 10 * np.log10(np.sum(ref**2, axis=axis) / np.maximum(np.sum((ref - got) ** 2, axis=axis), 1e-30))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=40.0)
    args = ap.parse_args()
    torch.manual_seed(0)
    encoder = WhisperAudioEncoder(WHISPER_TINY, FRAMES).eval()
    speech = load_audio(SPEECH)
    audio = np.resize(speech, int(args.seconds * 16000)).astype(np.float32)
    windows = ClipWindows(FRAMES, 0, FPS, WHISPER_TINY.left_context, WHISPER_TINY.right_context)
    plan = windows.plan(len(audio))
    with torch.no_grad():
        states = encoder.segment_states(torch.from_numpy(audio[None])).numpy()  # (T, 5, 384)
        rows = whisper_index(0, plan.frames, FPS, 0, len(states))
        file_tokens = states[rows.reshape(-1)].reshape(plan.frames, 10, 5, -1)
        tokens = {}
        for name, aligned in (("segment rows", True), ("window rows", False)):
            clips = []
            for c in range(plan.clips):
                rows_c = torch.from_numpy(clip_index(plan, c, len(audio)))
                positions = torch.from_numpy(window_positions(plan, c, WHISPER_TINY.max_source_positions)) if aligned else None
                clips.append(encoder(torch.from_numpy(audio_window(audio, plan, c)), rows_c, positions).numpy())
            tokens[name] = np.concatenate(clips)[: plan.frames].reshape(plan.frames, 10, 5, -1)
    print(f"CPU: {cpu_class().label()}; {args.seconds:.0f} s of the example speech ({plan.frames} frames, {plan.clips} clips of {FRAMES})")
    for name, clip_tokens in tokens.items():
        per_state = [float(sqnr(file_tokens[:, :, s], clip_tokens[:, :, s])) for s in range(5)]
        per_frame = sqnr(file_tokens, clip_tokens, axis=(1, 2, 3))
        print(f"{name}: per-clip tokens against EchoMimic's 30 s segments {float(sqnr(file_tokens, clip_tokens)):.1f} dB over the track")
        print("  per state (stem + positions, blocks 1-4): " + ", ".join(f"{v:.1f}" for v in per_state) + " dB")
        print(
            f"  worst frame {int(np.argmin(per_frame))}: {float(per_frame.min()):.1f} dB; median frame {float(np.median(per_frame)):.1f} dB"
        )
        if args.seconds > 30:
            seam = 30 * FPS
            print(
                f"  frames by the 30 s seam ({seam - 2}..{seam + 2}): "
                + ", ".join(f"{v:.1f}" for v in per_frame[seam - 2 : seam + 3])
                + " dB"
            )


if __name__ == "__main__":
    main()
