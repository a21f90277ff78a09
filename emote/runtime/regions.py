"""Hallo's region masks: where the audio acts (whole frame, face, lips), blurred, at every UNet depth.

Hallo (``hallo/utils/util.py`` ``get_mask``, ``hallo/datasets/image_processor.py``) draws a
face box (MediaPipe landmarks, expanded 1.2x) and a lip box (expanded 2x), resizes each
to the 64x64 latent grid, blurs them (Gaussian, 51 and 31 pixels), min-max normalises
to 0..255, and derives

    full = 255 - face_blur    face = face_blur - lip_blur (saturating)    lip = lip_blur

then resizes each to every depth's grid (PIL bilinear) and scales to [0, 1]. The face
locator reads the expanded face box itself. The boxes are Hallo's where the portrait has
MediaPipe's landmarks (``runtime/face_mesh.py``: the silhouette's box, the lips' box); for a
face box without landmarks (OpenCV's, or given) the lip box sits inside it by a frontal
face's proportions, an approximation of Hallo's.

Imports numpy, OpenCV and Pillow only.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

FACE_EXPAND = 1.2  # Hallo's face_expand_ratio (configs/inference/default.yaml)
LIP_EXPAND = 2.0  # Hallo's get_lip_mask expansion of the lip landmarks' box
# The lips within a detected frontal-face box (OpenCV's boxes run from the brows to the chin):
# centred, about 78% of the way down, about 40% of the box wide and 14% high.
LIP_CENTRE = (0.5, 0.78)
LIP_SIZE = (0.40, 0.14)
HALLO_GRID = 64  # Hallo blurs on 64x64: the latent grid of its 512 px model
BLUR_FACE, BLUR_LIP = 51, 31  # Hallo's Gaussian kernels on that grid, in grid pixels


def mask_box(mask: np.ndarray) -> tuple[float, float, float, float]:
    """(x0, y0, x1, y1) of the nonzero part of a mask (the whole mask when it is empty)."""
    ys, xs = np.nonzero(mask)
    if not len(xs):
        return 0.0, 0.0, float(mask.shape[1]), float(mask.shape[0])
    return float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)


def expand_box(box: tuple[float, float, float, float], ratio: float, size: int) -> tuple[int, int, int, int]:
    """Hallo's expand_region: scale about the centre, then shift (not clip) back inside the image."""
    x0, x1, y0, y1 = box[0], box[2], box[1], box[3]
    cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
    w, h = (x1 - x0) * ratio, (y1 - y0) * ratio
    x0, x1, y0, y1 = cx - w // 2, cx + w // 2, cy - h // 2, cy + h // 2
    if x0 < 0:
        x1, x0 = x1 - x0, 0
    if x1 > size:
        x0, x1 = x0 - (x1 - size), size
    if y0 < 0:
        y1, y0 = y1 - y0, 0
    if y1 > size:
        y0, y1 = y0 - (y1 - size), size
    return round(x0), round(y0), round(x1), round(y1)


def box_image(box: tuple[int, int, int, int], size: int) -> np.ndarray:
    """A uint8 mask of ``size`` squared: 255 inside the box."""
    img = np.zeros((size, size), np.uint8)
    x0, y0, x1, y1 = (max(v, 0) for v in box)
    img[y0:y1, x0:x1] = 255
    return img


def blurred(img: np.ndarray, grid: int, kernel: int) -> np.ndarray:
    """Hallo's get_blur_mask on a grid of ``grid`` (its kernels scaled from its 64x64 grid)."""
    import cv2

    k = max(1, round(kernel * grid / HALLO_GRID)) | 1  # odd, as OpenCV wants
    small = cv2.GaussianBlur(cv2.resize(img, (grid, grid)), (k, k), 0)
    return cv2.normalize(small, None, 0, 255, cv2.NORM_MINMAX)


def lip_box_of(face: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
    """The lips inside a frontal face box without landmarks (x0, y0, x1, y1), by a frontal face's proportions."""
    (bx0, by0, bx1, by1), (cx, cy), (lw, lh) = face, LIP_CENTRE, LIP_SIZE
    w, h = bx1 - bx0, by1 - by0
    return bx0 + (cx - lw / 2) * w, by0 + (cy - lh / 2) * h, bx0 + (cx + lw / 2) * w, by0 + (cy + lh / 2) * h


def region_masks(
    face_mask: np.ndarray, latent: int, depths: int, lip_box: tuple[float, float, float, float] | None = None
) -> tuple[np.ndarray, list[np.ndarray]]:
    """The face locator's mask (R, R) and the full/face/lip masks of every depth, (3, s*s) with s = latent / 2^d.

    ``face_mask``: the face box in the portrait (1 inside), as ``Portrait.mask``; ``lip_box``: the
    lips' landmark box (x0, y0, x1, y1), as ``Portrait.lips`` (None: placed by proportions).
    """
    import cv2

    size = face_mask.shape[0]
    box = mask_box(face_mask)
    face = box_image(expand_box(box, FACE_EXPAND, size), size)
    lip = box_image(expand_box(lip_box or lip_box_of(box), LIP_EXPAND, size), size)

    face_blur = blurred(face, latent, BLUR_FACE)
    lip_blur = blurred(lip, latent, BLUR_LIP)
    full = ((1.0 - face_blur / 255.0) * 255).astype(np.uint8)  # Hallo's get_background_mask, truncation included
    only_face = cv2.subtract(face_blur, lip_blur)
    levels = []
    for d in range(depths):
        s = latent >> d
        per = [np.asarray(Image.fromarray(m).resize((s, s), Image.BILINEAR), np.float32) / 255.0 for m in (full, only_face, lip_blur)]
        levels.append(np.stack([p.reshape(-1) for p in per]))
    return (face / 255.0).astype(np.float32), levels
