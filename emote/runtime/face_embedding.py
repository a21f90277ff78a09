"""The face embedding Hallo conditions on: read from a ``.npy`` file or computed by a user's ONNX model.

Hallo feeds InsightFace's face-recognition embedding of the portrait (the ``antelopev2``
pack's ``glintr100.onnx``, an ArcFace ResNet-100: a 112x112 face aligned on five
landmarks -> 512 floats) to its image projection, raw (``face.embedding``, not the
L2-normalised ``normed_embedding``). Nothing is downloaded, ever: the user brings either

- the embedding itself, ``--face-embedding face.npy`` (any float dtype, ``(512,)`` or
  ``(1, 512)``): the exact input Hallo uses when made with InsightFace (see the README);
- a face-recognition model, ``--face-model glintr100.onnx``: run here with ONNX Runtime
  on the face aligned as InsightFace aligns it (``face_align.norm_crop``): the similarity
  transform (Umeyama's least squares) taking five landmarks (eye centres, nose tip, mouth
  corners; from MediaPipe's face mesh, ``runtime/face_mesh.py``) onto ArcFace's 112x112
  template. InsightFace's own five points come from its SCRFD detector, so the embedding
  is close to Hallo's, not identical. A portrait without landmarks (a given or Haar face
  box) gets a crop placed from the box by the template's proportions, a rougher match.

Imports numpy, Pillow and ONNX Runtime only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import EmoteError
from .regions import mask_box

ARCFACE_SIZE = 112  # InsightFace's recognition input side
# ArcFace's 112x112 template puts the eyes 35.2 px apart at y = 51.6, centred at x = 56 (insightface
# utils/face_align.py arcface_dst); in an OpenCV frontal-face box the eyes sit ~38% down, ~42% of the
# box width apart. So the crop is 112 / 35.2 x 0.42 = 1.34 box widths, its top 0.62 widths above the eyes.
EYES_DOWN, EYE_SPAN = 0.38, 0.42
TEMPLATE_EYE_SPAN, TEMPLATE_EYE_Y = 35.2, 51.6
# insightface utils/face_align.py arcface_dst: the five points' places in the 112x112 crop
ARCFACE_DST = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]], np.float64)


def similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """(2, 3): the similarity transform (rotation, uniform scale, shift) taking ``src`` to ``dst`` in least squares
    (Umeyama 1991, as scikit-image's SimilarityTransform.estimate that InsightFace calls)."""
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    ms, md = src.mean(0), dst.mean(0)
    s, d = src - ms, dst - md
    u, sig, vt = np.linalg.svd(d.T @ s / len(src))
    sign = np.diag([1.0, np.sign(np.linalg.det(u) * np.linalg.det(vt))])
    r = u @ sign @ vt
    scale = np.trace(np.diag(sig) @ sign) / s.var(0).sum()
    return np.hstack([scale * r, (md - scale * r @ ms)[:, None]])


def aligned_crop(image: np.ndarray, five: np.ndarray, size: int) -> np.ndarray:
    """InsightFace's norm_crop: ``image`` warped so that its five points land on ArcFace's template (scaled to ``size``)."""
    import cv2

    m = similarity(five, ARCFACE_DST * size / ARCFACE_SIZE)
    return cv2.warpAffine(image, m, (size, size), borderValue=0.0)


def check_face_embedding(value: np.ndarray, dim: int, source: str) -> np.ndarray:
    """A face embedding as the bundle takes it, (1, dim) float32; one clear error for anything else."""
    value = np.asarray(value)
    if value.dtype.kind != "f":
        raise EmoteError(f"{source}: the face embedding must hold floats, not {value.dtype}")
    if value.size != dim or value.squeeze().ndim > 1:
        raise EmoteError(f"{source}: the face embedding must be {dim} floats, (1, {dim}) or ({dim},), not {value.shape}")
    if not np.all(np.isfinite(value)):
        raise EmoteError(f"{source}: the face embedding holds NaN or infinite values")
    return value.reshape(1, dim).astype(np.float32)


def load_face_embedding(path: str | Path) -> np.ndarray:
    """``--face-embedding FILE.npy`` -> the float array in it (its size is checked against the bundle's)."""
    path = Path(path)
    if not path.is_file():
        raise EmoteError(f"--face-embedding {path}: no such file")
    try:
        value = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise EmoteError(f"--face-embedding {path} is not a .npy array ({e})") from None
    if value.dtype.kind != "f":
        raise EmoteError(f"--face-embedding {path}: the face embedding must hold floats, not {value.dtype}")
    return value


def arcface_crop(image: np.ndarray, box: tuple[float, float, float, float], size: int) -> np.ndarray:
    """A square crop placing the face of ``box`` (x0, y0, x1, y1) where ArcFace's template has it, resized to ``size``."""
    x0, y0, x1, y1 = box
    side = ARCFACE_SIZE * EYE_SPAN * (x1 - x0) / TEMPLATE_EYE_SPAN
    left = (x0 + x1) / 2 - side / 2
    top = y0 + EYES_DOWN * (y1 - y0) - TEMPLATE_EYE_Y / ARCFACE_SIZE * side
    pad = int(np.ceil(max(0.0, -left, -top, left + side - image.shape[1], top + side - image.shape[0])))
    src = np.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode="edge") if pad else image  # a crop leaving the image
    box = (left + pad, top + pad, left + pad + side, top + pad + side)
    return np.asarray(Image.fromarray(src).resize((size, size), Image.BILINEAR, box=box))


class FaceEmbedder:
    """``--face-model MODEL.onnx``: (N, 3, H, W) RGB in (x - 127.5) / 127.5, as InsightFace's ArcFace -> (N, D)."""

    def __init__(self, path: str | Path):
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise EmoteError(f"--face-model {self.path}: no such file")
        try:
            self.session = ort.InferenceSession(str(self.path), providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types for unreadable models
            raise EmoteError(f"--face-model {self.path}: ONNX Runtime cannot load it ({type(e).__name__}: {e})") from None
        inp = self.session.get_inputs()[0]
        shape = inp.shape
        if len(shape) != 4 or shape[1] != 3:
            raise EmoteError(f"--face-model {self.path}: input {inp.name!r} has shape {shape}, expected (N, 3, H, W) RGB")
        self.input = inp.name
        self.size = shape[2] if isinstance(shape[2], int) else ARCFACE_SIZE

    def __call__(self, portrait) -> np.ndarray:
        """The embedding of the portrait's face (a ``runtime.face.Portrait``), aligned on its landmarks where it has them; (1, D) float32."""
        if portrait.five is not None and portrait.source is not None:
            crop = aligned_crop(portrait.source, portrait.five, self.size)
        else:
            crop = arcface_crop(portrait.image, mask_box(portrait.mask), self.size)
        x = ((crop.astype(np.float32) - 127.5) / 127.5).transpose(2, 0, 1)[None]
        try:
            out = self.session.run(None, {self.input: x})[0]
        except Exception as e:
            raise EmoteError(f"--face-model {self.path} failed on the face crop ({type(e).__name__}: {e})") from None
        return np.asarray(out).reshape(1, -1)
