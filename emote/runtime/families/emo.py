"""EMO (the `tiny`, `demo` and `emo-sd15` presets): the face mask, and the head speed where the model has speed layers."""

from __future__ import annotations

from typing import Any

import numpy as np

from . import Family


class EMO(Family):
    name = "emo"
    inputs = ("speed",)

    def video_inputs(self, portrait, *, speed: float | None = None, **inputs: Any) -> dict[str, np.ndarray]:
        """``speed``: the head-rotation speed every frame is generated at (default: the model's)."""
        out = super().video_inputs(portrait, **inputs)
        if any(t.name == "speed" for t in self.bundle.graph("clip_condition").inputs):
            value = self.geometry.speed_default if speed is None else speed
            out["speed"] = np.full((self.geometry.frames,), value, np.float32)
        return out
