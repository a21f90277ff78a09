"""The lean runtime: numpy and one engine backend; never torch, diffusers or transformers."""

from .pipeline import Pipeline

__all__ = ["Pipeline"]
