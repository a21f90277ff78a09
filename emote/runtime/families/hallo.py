"""Hallo (the `hallo` and `hallo-tiny` presets): a face embedding, three region masks and their weights.

Per video Hallo conditions on InsightFace's embedding of the portrait (given, or made by
the user's face-recognition model: ``runtime/face_embedding.py``), the face, lip and
full-frame regions its audio modules attend within (``runtime/regions.py``, at every
UNet depth; boxes from MediaPipe's face mesh on the whole image, as Hallo frames it) with the
pose/face/lip weights of the audio; its face locator sees the expanded face box. The first clip's motion frames are the portrait itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ...errors import EmoteError
from ..face_embedding import FaceEmbedder, check_face_embedding, load_face_embedding
from ..regions import region_masks
from . import Family


class Hallo(Family):
    name = "hallo"
    framing = "whole"  # Hallo resizes the whole image (runtime/face.py)
    options = ("face_embedding", "face_model", "region_weights")
    inputs = ("face_embedding",)

    def __init__(
        self,
        bundle,
        *,
        face_embedding=None,
        face_model: str | Path | None = None,
        region_weights: tuple[float, float, float] = (1.0, 1.0, 1.0),
    ):
        super().__init__(bundle)
        dim = self.geometry.face_embedding_dim
        if face_embedding is not None and face_model is not None:
            raise EmoteError("give a face embedding or a face model (--face-embedding or --face-model), not both")
        if isinstance(face_embedding, (str, Path)):
            face_embedding = check_face_embedding(load_face_embedding(face_embedding), dim, f"--face-embedding {face_embedding}")
        elif face_embedding is not None:
            face_embedding = check_face_embedding(face_embedding, dim, "the face embedding")
        weights = tuple(float(w) for w in region_weights)
        if len(weights) != 3:
            raise EmoteError(f"region weights {region_weights!r}: expected POSE,FACE,LIP, e.g. 1,1,1")
        self.face_embedding, self.region_weights = face_embedding, weights
        self.face_embedder = FaceEmbedder(face_model) if face_model is not None else None
        inputs = {t.name for name in bundle.names for t in bundle.graph(name).inputs}  # the masks feed the audio modules
        self.depths = sum(1 for n in inputs if n.startswith("region_mask_"))
        self.latent = next(t.shape[-1] for t in bundle.graph("vae_encoder").outputs if t.name == "latents")

    def video_inputs(self, portrait, *, face_embedding: np.ndarray | None = None, **inputs: Any) -> dict[str, np.ndarray]:
        self.check("input", inputs, self.inputs)
        dim = self.geometry.face_embedding_dim
        source = "the face embedding"
        if face_embedding is None:
            face_embedding = self.face_embedding
        if face_embedding is None and self.face_embedder is not None:
            face_embedding = self.face_embedder(portrait)
            source = f"--face-model {self.face_embedder.path} output"
        if face_embedding is None:
            raise EmoteError(
                f"{self.bundle.describe()} conditions on a face embedding ({dim} floats, InsightFace's for "
                "Hallo): pass --face-embedding FILE.npy or --face-model MODEL.onnx"
            )
        face_mask, levels = region_masks(portrait.mask, self.latent, self.depths, portrait.lips)
        out = {f"region_mask_{d}": mask for d, mask in enumerate(levels)}
        out["region_scales"] = np.asarray(self.region_weights, np.float32)
        out["face_embedding"] = check_face_embedding(face_embedding, dim, source)
        out["face_mask"] = face_mask[None, None].astype(np.float32)
        return out

    def first_motion(self, portrait) -> np.ndarray:
        """Hallo's first clip continues the portrait: its motion frames are the reference image."""
        return np.repeat(portrait.image[None], self.geometry.motion_frames, axis=0)
