"""MediaPipe's face mesh (shipped as ONNX) and Hallo's face and lip boxes from it, on two real images.

The example portrait and Grace Hopper's official portrait (public domain, shipped in matplotlib's
sample data). The boxes are drawn into build/test-output/face_regions_*.png, kept for a person to look at.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from emote.runtime.examples import PORTRAIT
from emote.runtime.face_mesh import LIPS, SILHOUETTE, face_mesh

OUT = Path(__file__).resolve().parents[1] / "build" / "test-output"


def grace_hopper() -> Path:
    import matplotlib.cbook

    return Path(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))


IMAGES = {"portrait": PORTRAIT, "grace_hopper": None}


def load(name: str) -> np.ndarray:
    from emote.runtime.image import load_image

    return load_image(IMAGES[name] or grace_hopper())


@pytest.mark.parametrize("name", list(IMAGES))
def test_face_and_lip_boxes_come_from_their_landmarks(name):
    import cv2
    from PIL import Image

    from emote.runtime.face import prepare_portrait
    from emote.runtime.regions import FACE_EXPAND, LIP_EXPAND, expand_box, mask_box

    rgb = load(name)
    mesh = face_mesh(rgb)
    assert mesh is not None and mesh.points.shape == (468, 3) and mesh.score > 0.8
    pts = mesh.points[:, :2]
    face, lips = np.array(mesh.face_box), np.array(mesh.lip_box)
    # each box is exactly its points' box (Hallo: 36 silhouette points, 20 outer lip points)
    for box, ids in ((face, SILHOUETTE), (lips, LIPS)):
        p = pts[list(ids)]
        assert np.allclose(box, [*p.min(0), *p.max(0)])
    # and the points are where a face's are: the whole mesh inside the silhouette's box (2 px),
    # the lips between the mouth corners, below the eyes and the nose tip, above the chin
    assert np.all(pts >= face[:2] - 2) and np.all(pts <= face[2:] + 2)
    eyes, nose, corners = mesh.five()[:2], mesh.five()[2], mesh.five()[3:]
    assert np.allclose(lips[[0, 2]], corners[:, 0], atol=3)
    assert eyes[:, 1].max() < nose[1] < lips[1] and lips[3] < pts[152, 1]  # 152: the chin
    assert 0.25 < (lips[2] - lips[0]) / (face[2] - face[0]) < 0.6
    assert abs((eyes[0, 1] - eyes[1, 1]) / (eyes[1, 0] - eyes[0, 0])) < 0.1  # both portraits are upright

    # Hallo's framing: the whole image resized; the boxes scale with it and become Hallo's regions
    size = 512
    portrait = prepare_portrait(rgb, size, framing="whole")
    assert portrait.detector == "face mesh" and portrait.image.shape == (size, size, 3)
    sx, sy = size / rgb.shape[1], size / rgb.shape[0]
    assert np.allclose(portrait.lips, lips * [sx, sy, sx, sy])
    assert np.allclose(mask_box(portrait.mask), face * [sx, sy, sx, sy], atol=1)
    face_r = expand_box(mask_box(portrait.mask), FACE_EXPAND, size)
    lip_r = expand_box(portrait.lips, LIP_EXPAND, size)

    OUT.mkdir(parents=True, exist_ok=True)
    img = np.ascontiguousarray(portrait.image)
    for x, y in pts * [sx, sy]:
        cv2.circle(img, (round(x), round(y)), 1, (0, 255, 0), -1)
    cv2.rectangle(img, face_r[:2], face_r[2:], (255, 0, 0), 2)  # Hallo's face region: silhouette box x1.2
    cv2.rectangle(img, lip_r[:2], lip_r[2:], (0, 0, 255), 2)  # Hallo's lip region: lip box x2
    Image.fromarray(img).save(OUT / f"face_regions_{name}.png")


def test_region_masks_follow_the_landmark_boxes():
    from emote.runtime.face import prepare_portrait
    from emote.runtime.regions import region_masks

    portrait = prepare_portrait(load("grace_hopper"), 512, framing="whole")
    face_mask, levels = region_masks(portrait.mask, 64, 1, portrait.lips)
    lip = levels[0][2].reshape(64, 64)
    y, x = np.unravel_index(np.argmax(lip), lip.shape)
    x0, y0, x1, y1 = (v / 8 for v in portrait.lips)  # 512 px -> the 64 grid
    assert x0 - 1 <= x <= x1 + 1 and y0 - 2 <= y <= y1 + 2  # the lip region peaks on the lips
    without, _ = region_masks(portrait.mask, 64, 1)  # the same face box; lips by proportions
    assert np.array_equal(without, face_mask)


def test_given_box_and_no_face():
    from emote.errors import EmoteError
    from emote.runtime.face import prepare_portrait

    rgb = load("grace_hopper")
    p = prepare_portrait(rgb, 64, face_box=(160, 130, 200, 200), framing="whole")
    assert p.detector == "given" and p.lips is None and p.five is None
    noise = (np.random.default_rng(0).random((200, 200, 3)) * 255).astype(np.uint8)
    with pytest.raises(EmoteError, match="no face found"):
        prepare_portrait(noise, 64, framing="whole")


def test_five_point_alignment_lands_on_arcface_template():
    from emote.runtime.face_embedding import ARCFACE_DST, aligned_crop, similarity

    rng = np.random.default_rng(0)
    src = rng.random((5, 2)) * 100
    angle, scale, shift = 0.3, 1.7, np.array([5.0, -3.0])
    rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    m = similarity(src, src @ rot.T + shift)
    assert np.allclose(m[:, :2], rot) and np.allclose(m[:, 2], shift)  # an exact similarity is recovered

    rgb = load("grace_hopper")
    five = face_mesh(rgb).five()
    m = similarity(five, ARCFACE_DST)
    moved = five @ m[:, :2].T + m[:, 2]
    assert np.abs(moved - ARCFACE_DST).max() < 6  # a real face's five points fit the template to a few pixels
    crop = aligned_crop(rgb, five, 112)
    assert crop.shape == (112, 112, 3) and crop.std() > 20
