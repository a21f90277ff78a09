"""The face: found or given, framed, masked.

Two framings, by model family. "crop" (EMO's presets, the demo model): the face found by
OpenCV's bundled Haar cascades (no downloads) or given, and the portrait cropped around it.
"whole" (Hallo, ``hallo/datasets/image_processor.py:56-61``): the whole image resized to the
model's square, the face found by MediaPipe's face mesh (``runtime/face_mesh.py``), whose
silhouette and lip points give Hallo's face and lip boxes; where the mesh finds no face the
Haar box stands in (a warning says so) and the lip box comes from a frontal face's proportions.
"echomimic" (EchoMimic, ``infer_audio2vid_acc.py`` and ``src/utils/util.py`` ``crop_and_pad``):
the largest face (EchoMimic's MTCNN boxes at probability > 0.8; here OpenCV's Haar box, brows to
chin, or the one given); the mask is the box grown by 10% of its height and width each side, the
crop the box grown by 50% (its bottom by 50% of the width, as EchoMimic writes it), clipped to the
image, then the centred square of the shorter side, resized (bilinear) to the model's size with the
mask. No face: the whole image resized, the mask all ones, as EchoMimic does (a warning says so).

EMO crops around the face with a generous margin so that head, hair and neck
show: the crop is a square of side ``margin`` x the face box's larger side,
centred a little below the box centre (faces sit in the upper half of a
portrait), padded by edge replication where it leaves the image, and resized to
the model's resolution. The face-region mask (the face box in the crop: 1 inside,
0 outside) is the face locator's input.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import EmoteError

MARGIN = 2.0  # crop side / face side: head, hair and shoulders show
CENTRE_SHIFT = 0.1  # crop centre moved down by this fraction of the face height
CASCADES = ("haarcascade_frontalface_default.xml", "haarcascade_frontalface_alt2.xml")


FRAMINGS = ("crop", "whole", "echomimic")
MASK_GROWTH, CROP_GROWTH = 0.1, 0.5  # EchoMimic's facemask_dilation_ratio, facecrop_dilation_ratio


@dataclass(frozen=True)
class Portrait:
    image: np.ndarray  # (R, R, 3) uint8, the model's input
    mask: np.ndarray  # (R, R) float32 in [0, 1]: the face region (1 inside; EchoMimic's resized edges between)
    box: tuple[int, int, int, int]  # x, y, w, h of the face in the source image
    lips: tuple[float, float, float, float] | None = None  # x0, y0, x1, y1 of the lips in ``image`` (from landmarks)
    five: np.ndarray | None = None  # (5, 2) eyes, nose tip, mouth corners in ``source`` (from landmarks)
    source: np.ndarray | None = None  # the user's image, where ``five`` lies
    detector: str = "given"  # where the face box came from: "face mesh", "haar", "given" or "none" (EchoMimic: no face)


def parse_face_box(text: str) -> tuple[int, int, int, int]:
    """'X,Y,W,H' (pixels) -> a box; a clear error for anything else."""
    parts = text.replace(" ", "").split(",")
    try:
        x, y, w, h = (int(round(float(p))) for p in parts)
    except ValueError:
        raise EmoteError(f"--face-box {text!r}: expected X,Y,W,H in pixels, e.g. 120,80,200,220") from None
    if w <= 0 or h <= 0 or x < 0 or y < 0:
        raise EmoteError(f"--face-box {text!r}: width and height must be positive and X, Y not negative")
    return x, y, w, h


def detect_face(rgb: np.ndarray) -> tuple[int, int, int, int] | None:
    """The largest frontal face (x, y, w, h), or None."""
    import cv2

    grey = cv2.equalizeHist(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))
    side = min(grey.shape)
    for name in CASCADES:
        cascade = cv2.CascadeClassifier(cv2.data.haarcascades + name)
        faces = cascade.detectMultiScale(grey, scaleFactor=1.1, minNeighbors=5, minSize=(max(24, side // 8),) * 2)
        if len(faces):
            x, y, w, h = max(faces, key=lambda f: f[2] * f[3])
            return int(x), int(y), int(w), int(h)
    return None


def crop_portrait(rgb: np.ndarray, box: tuple[int, int, int, int], size: int, margin: float = MARGIN) -> tuple[np.ndarray, np.ndarray]:
    """A square crop around ``box`` resized to ``size``, and the face mask in it."""
    x, y, w, h = box
    side = int(round(margin * max(w, h)))
    cx, cy = x + w / 2, y + h / 2 + CENTRE_SHIFT * h
    x0, y0 = int(round(cx - side / 2)), int(round(cy - side / 2))
    H, W = rgb.shape[:2]
    pad = max(0, -x0, -y0, x0 + side - W, y0 + side - H)
    src = np.pad(rgb, ((pad, pad), (pad, pad), (0, 0)), mode="edge") if pad else rgb
    crop = src[y0 + pad : y0 + pad + side, x0 + pad : x0 + pad + side]
    image = np.asarray(Image.fromarray(crop).resize((size, size), Image.LANCZOS if side > size else Image.BICUBIC))
    scale = size / side
    mask = np.zeros((size, size), np.float32)
    mx0, my0 = int(round((x - x0) * scale)), int(round((y - y0) * scale))
    mx1, my1 = int(round((x + w - x0) * scale)), int(round((y + h - y0) * scale))
    mask[max(my0, 0) : max(my1, 0), max(mx0, 0) : max(mx1, 0)] = 1.0
    return np.array(image, dtype=np.uint8), mask  # a writable copy, not PIL's read-only buffer


def whole_portrait(rgb: np.ndarray, size: int, name: str, face_box: tuple[int, int, int, int] | None) -> Portrait:
    """Hallo's framing: the whole image resized to ``size`` squared; face and lip boxes from the face mesh."""
    from .face_mesh import face_mesh

    H, W = rgb.shape[:2]
    sx, sy = size / W, size / H
    image = np.array(Image.fromarray(rgb).resize((size, size), Image.BILINEAR), dtype=np.uint8)  # Hallo's transforms.Resize
    mesh = face_mesh(rgb) if face_box is None else None
    lips = five = None
    if mesh is not None:
        x0, y0, x1, y1 = mesh.face_box
        face = (x0, y0, x1 - x0, y1 - y0)
        lx0, ly0, lx1, ly1 = mesh.lip_box
        lips, five, detector = (lx0 * sx, ly0 * sy, lx1 * sx, ly1 * sy), mesh.five(), "face mesh"
    elif face_box is None:
        found = detect_face(rgb)
        if found is None:
            raise EmoteError(f"no face found in {name}: pass --face-box X,Y,W,H (the face in pixels)")
        face, detector = found, "haar"
        logging.getLogger("emote").warning(
            "MediaPipe's face mesh found no face in %s: the face box is OpenCV's (brows to chin) and the lip box "
            "a frontal face's proportions, not Hallo's landmark boxes",
            name,
        )
    else:
        face, detector = face_box, "given"
    x, y, w, h = face
    mask = np.zeros((size, size), np.float32)
    mask[max(0, round(y * sy)) : round((y + h) * sy), max(0, round(x * sx)) : round((x + w) * sx)] = 1.0
    box = (int(round(x)), int(round(y)), int(round(w)), int(round(h)))
    return Portrait(image, mask, box, lips=lips, five=five, source=rgb, detector=detector)


def echomimic_portrait(rgb: np.ndarray, size: int, name: str, face_box: tuple[int, int, int, int] | None) -> Portrait:
    """EchoMimic's framing (module docstring): its mask and square crop around the largest face."""
    import cv2

    H, W = rgb.shape[:2]
    box, detector = (face_box, "given") if face_box is not None else (detect_face(rgb), "haar")
    if box is None:
        logging.getLogger("emote").warning(
            "no face found in %s: the whole image is the portrait and the mask all of it, as EchoMimic does", name
        )
        image = cv2.resize(np.ascontiguousarray(rgb), (size, size), interpolation=cv2.INTER_LINEAR)
        return Portrait(image, np.ones((size, size), np.float32), (0, 0, W, H), detector="none")
    cb, rb = box[0], box[1]
    ce, re = cb + box[2], rb + box[3]
    mask = np.zeros((H, W), np.uint8)
    r_pad, c_pad = int((re - rb) * MASK_GROWTH), int((ce - cb) * MASK_GROWTH)
    mask[max(rb - r_pad, 0) : re + r_pad, max(cb - c_pad, 0) : ce + c_pad] = 255
    r_crop, c_crop = int((re - rb) * CROP_GROWTH), int((ce - cb) * CROP_GROWTH)
    x0, y0, x1, y1 = max(0, cb - c_crop), max(0, rb - r_crop), min(ce + c_crop, W), min(re + c_crop, H)
    side = min(x1 - x0, y1 - y0)  # the centred square of the shorter side, kept in the image
    sx0, sy0 = max(0, (x0 + x1) // 2 - side // 2), max(0, (y0 + y1) // 2 - side // 2)
    side = min(side, W - sx0, H - sy0)

    def square(a: np.ndarray) -> np.ndarray:
        return cv2.resize(np.ascontiguousarray(a[sy0 : sy0 + side, sx0 : sx0 + side]), (size, size), interpolation=cv2.INTER_LINEAR)

    return Portrait(square(rgb), square(mask).astype(np.float32) / 255.0, tuple(int(v) for v in box), detector=detector)


def prepare_portrait(
    image: str | Path | np.ndarray, size: int, face_box: tuple[int, int, int, int] | None = None, framing: str = "crop"
) -> Portrait:
    """Load (if a path), find or take the face, frame and mask for a model of resolution ``size``.

    ``framing``: "crop" around the face (EMO's presets), the "whole" image (Hallo's) or "echomimic" (EchoMimic's).
    """
    from .image import load_image

    if framing not in FRAMINGS:
        raise EmoteError(f"framing {framing!r}: one of {', '.join(FRAMINGS)}")
    name = str(image) if isinstance(image, (str, Path)) else "the image"
    rgb = load_image(image) if isinstance(image, (str, Path)) else np.ascontiguousarray(image, dtype=np.uint8)
    if face_box is not None:
        x, y, w, h = face_box
        H, W = rgb.shape[:2]
        if x >= W or y >= H or x + w <= 0 or y + h <= 0:
            raise EmoteError(f"--face-box {x},{y},{w},{h} lies outside {name} ({W}x{H} pixels)")
    if framing == "whole":
        return whole_portrait(rgb, size, name, face_box)
    if framing == "echomimic":
        return echomimic_portrait(rgb, size, name, face_box)
    if face_box is None:
        face_box = detect_face(rgb)
        if face_box is None:
            raise EmoteError(f"no face found in {name}: pass --face-box X,Y,W,H (the face in pixels)")
        detector = "haar"
    else:
        detector = "given"
    crop, mask = crop_portrait(rgb, face_box, size)
    return Portrait(crop, mask, tuple(int(v) for v in face_box), detector=detector)
