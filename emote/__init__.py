"""Emote Edge: edge inference for EMO-style audio-driven portrait video diffusion."""

__version__ = "0.1.0"
