"""A procedural portrait renderer: stylised frontal head-and-shoulders faces whose mouth follows a signal.

Deterministic from ``PortraitParams`` (drawn by ``random_params(rng)``) and the
per-frame controls (mouth opening and width, eye opening, small head motion).
Drawn at twice the size with pillow and downsampled (anti-aliasing), with a
directional light across the face and soft shadows in the eye sockets, so that
OpenCV's Haar cascades find the face as they find a photographed one. It is the
source of the example portrait and of the synthetic talking-portrait data.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SKIN_TONES = [(255, 224, 196), (241, 194, 160), (224, 172, 130), (198, 134, 96), (161, 102, 68), (120, 74, 48), (88, 54, 36)]
HAIR_COLOURS = [(20, 16, 14), (60, 40, 25), (110, 72, 40), (170, 130, 80), (220, 190, 130), (140, 60, 30), (120, 120, 120)]
EYE_COLOURS = [(60, 40, 25), (40, 90, 140), (60, 110, 70), (110, 90, 50), (30, 30, 30)]
HAIR_STYLES = ("short", "long", "bald", "fringe")


@dataclass(frozen=True)
class PortraitParams:
    skin: tuple[int, int, int]
    hair: tuple[int, int, int]
    hair_style: str
    eye_colour: tuple[int, int, int]
    background: tuple[tuple[int, int, int], tuple[int, int, int]]
    shirt: tuple[int, int, int]
    face_width: float  # fraction of the image
    face_height: float
    jaw: float  # 0 round .. 1 narrow chin
    eye_spacing: float  # fraction of face width
    eye_size: float
    brow_tilt: float
    lip_colour: tuple[int, int, int]
    glasses: bool
    light: float  # light direction: -1 left .. 1 right
    light_strength: float


def random_params(rng: np.random.Generator) -> PortraitParams:
    def pick(options):
        return options[rng.integers(len(options))]

    def jitter(c, amount=12):
        return tuple(int(np.clip(v + rng.integers(-amount, amount + 1), 0, 255)) for v in c)

    skin = jitter(pick(SKIN_TONES), 8)
    bg1 = tuple(int(v) for v in rng.integers(40, 230, 3))
    bg2 = tuple(int(np.clip(v + rng.integers(-60, 61), 0, 255)) for v in bg1)
    lip = tuple(int(np.clip(s * f, 0, 255)) for s, f in zip(skin, (0.78, 0.52, 0.52)))
    return PortraitParams(
        skin=skin,
        hair=jitter(pick(HAIR_COLOURS)),
        hair_style=pick(HAIR_STYLES),
        eye_colour=pick(EYE_COLOURS),
        background=(bg1, bg2),
        shirt=tuple(int(v) for v in rng.integers(20, 235, 3)),
        face_width=float(rng.uniform(0.30, 0.38)),
        face_height=float(rng.uniform(0.42, 0.50)),
        jaw=float(rng.uniform(0.0, 1.0)),
        eye_spacing=float(rng.uniform(0.40, 0.48)),
        eye_size=float(rng.uniform(0.85, 1.15)),
        brow_tilt=float(rng.uniform(-0.04, 0.04)),
        lip_colour=lip,
        glasses=bool(rng.random() < 0.2),
        light=float(rng.uniform(-1, 1)),
        light_strength=float(rng.uniform(0.05, 0.25)),
    )


EXAMPLE = PortraitParams(
    skin=(224, 172, 130), hair=(60, 40, 25), hair_style="short", eye_colour=(40, 90, 140),
    background=((70, 110, 150), (150, 180, 200)), shirt=(40, 60, 90), face_width=0.34, face_height=0.46,
    jaw=0.5, eye_spacing=0.44, eye_size=1.0, brow_tilt=0.01, lip_colour=(175, 90, 68), glasses=False,
    light=-0.4, light_strength=0.15,
)


def _geometry(p: PortraitParams, size: int, yaw: float, pitch: float):
    s = float(size)
    cx = s * (0.5 + 0.05 * yaw)
    cy = s * (0.45 + 0.03 * pitch)
    fw, fh = p.face_width * s * (1 - 0.08 * abs(yaw)), p.face_height * s
    return cx, cy, fw, fh


def face_box(p: PortraitParams, size: int, yaw: float = 0.0, pitch: float = 0.0) -> tuple[int, int, int, int]:
    """Ground-truth (x, y, w, h) of the face: brows to chin, cheek to cheek."""
    cx, cy, fw, fh = _geometry(p, size, yaw, pitch)
    top = cy - 0.30 * fh
    return int(round(cx - fw / 2)), int(round(top)), int(round(fw)), int(round(cy + fh / 2 - top))


def mouth_box(p: PortraitParams, size: int, yaw: float = 0.0, pitch: float = 0.0) -> tuple[int, int, int, int]:
    cx, cy, fw, fh = _geometry(p, size, yaw, pitch)
    mw, my = 0.42 * fw, cy + 0.28 * fh
    return int(round(cx - mw / 2)), int(round(my - 0.08 * fh)), int(round(mw)), int(round(0.2 * fh))


def render_portrait(
    p: PortraitParams,
    size: int = 256,
    mouth_open: float = 0.0,
    mouth_wide: float = 0.5,
    eye_open: float = 1.0,
    head_yaw: float = 0.0,
    head_pitch: float = 0.0,
) -> np.ndarray:
    """(size, size, 3) uint8: one frame of the portrait with the given controls."""
    k = 2  # supersampling
    S = size * k
    yy, xx = np.mgrid[0:S, 0:S].astype(np.float32) / S
    bg1, bg2 = np.array(p.background[0], np.float32), np.array(p.background[1], np.float32)
    canvas = bg1 + (bg2 - bg1) * (0.6 * yy + 0.4 * xx)[..., None]
    img = Image.fromarray(canvas.astype(np.uint8))
    d = ImageDraw.Draw(img)
    cx, cy, fw, fh = (v * k for v in _geometry(p, size, head_yaw, head_pitch))
    skin = p.skin
    dark = tuple(int(c * 0.72) for c in skin)

    # shoulders, neck
    d.ellipse([cx - 1.4 * fw, cy + 0.78 * fh, cx + 1.4 * fw, cy + 2.2 * fh], fill=p.shirt)
    d.rectangle([cx - 0.24 * fw, cy + 0.2 * fh, cx + 0.24 * fw, cy + 0.95 * fh], fill=dark)
    # hair behind the head
    if p.hair_style == "long":
        d.rounded_rectangle([cx - 0.66 * fw, cy - 0.62 * fh, cx + 0.66 * fw, cy + 0.75 * fh], radius=int(0.5 * fw), fill=p.hair)
    # head: an ellipse with a narrower chin
    d.ellipse([cx - fw / 2, cy - fh / 2, cx + fw / 2, cy + fh / 2 - p.jaw * 0.05 * fh], fill=skin)
    chin = 0.5 - 0.22 * p.jaw
    d.polygon([(cx - fw / 2 + 2, cy), (cx + fw / 2 - 2, cy), (cx + chin * fw, cy + 0.36 * fh), (cx, cy + fh / 2), (cx - chin * fw, cy + 0.36 * fh)], fill=skin)
    # ears
    for side in (-1, 1):
        ex = cx + side * 0.5 * fw
        d.ellipse([ex - 0.07 * fw, cy - 0.08 * fh, ex + 0.07 * fw, cy + 0.1 * fh], fill=dark)
    # hair on top
    if p.hair_style != "bald":
        d.chord([cx - 0.54 * fw, cy - 0.62 * fh, cx + 0.54 * fw, cy + 0.05 * fh], 180, 360, fill=p.hair)
        if p.hair_style == "fringe":
            d.rectangle([cx - 0.45 * fw, cy - 0.3 * fh, cx + 0.45 * fw, cy - 0.2 * fh], fill=p.hair)

    # eye sockets: soft shadows (the darker band Haar features look for)
    ey = cy - 0.06 * fh
    ex = p.eye_spacing * fw / 2
    er = 0.11 * fw * p.eye_size
    shadow = Image.new("L", img.size, 0)
    sd = ImageDraw.Draw(shadow)
    for side in (-1, 1):
        sd.ellipse([cx + side * ex - 1.7 * er, ey - 1.2 * er, cx + side * ex + 1.7 * er, ey + 1.0 * er], fill=120)
    sd.ellipse([cx - 0.12 * fw, cy + 0.1 * fh, cx + 0.12 * fw, cy + 0.2 * fh], fill=60)  # under the nose
    shadow = shadow.filter(ImageFilter.GaussianBlur(0.06 * fw))
    img = Image.composite(Image.new("RGB", img.size, tuple(int(c * 0.45) for c in skin)), img, shadow)
    d = ImageDraw.Draw(img)

    # eyes
    for side in (-1, 1):
        x = cx + side * ex
        h = er * 0.62 * max(eye_open, 0.05)
        d.ellipse([x - er, ey - h, x + er, ey + h], fill=(245, 245, 240))
        if eye_open > 0.15:
            ir = min(0.55 * er, h)
            d.ellipse([x - ir, ey - ir, x + ir, ey + ir], fill=p.eye_colour)
            d.ellipse([x - ir * 0.45, ey - ir * 0.45, x + ir * 0.45, ey + ir * 0.45], fill=(10, 10, 10))
        d.line([x - er, ey - h * 0.9, x + er, ey - h * 0.9], fill=(40, 30, 25), width=max(2, int(0.012 * fw)))
        # brows
        by = ey - 1.35 * er
        t = p.brow_tilt * fw * side
        d.line([x - 1.2 * er, by + t, x, by - 0.25 * er, x + 1.2 * er, by - t], fill=tuple(int(c * 0.8) for c in p.hair) if p.hair_style != "bald" else (60, 45, 35), width=max(3, int(0.035 * fw)), joint="curve")
        if p.glasses:
            d.ellipse([x - 1.5 * er, ey - 1.3 * er, x + 1.5 * er, ey + 1.3 * er], outline=(25, 25, 25), width=max(2, int(0.015 * fw)))
    if p.glasses:
        d.line([cx - ex + 1.5 * er, ey, cx + ex - 1.5 * er, ey], fill=(25, 25, 25), width=max(2, int(0.015 * fw)))

    # nose: a light bridge, darker nostrils
    light = tuple(min(255, int(c * 1.08)) for c in skin)
    d.polygon([(cx - 0.03 * fw, ey), (cx + 0.03 * fw, ey), (cx + 0.07 * fw, cy + 0.13 * fh), (cx - 0.07 * fw, cy + 0.13 * fh)], fill=light)
    for side in (-1, 1):
        nx = cx + side * 0.05 * fw
        d.ellipse([nx - 0.025 * fw, cy + 0.12 * fh, nx + 0.025 * fw, cy + 0.15 * fh], fill=tuple(int(c * 0.5) for c in skin))

    # mouth: lips whose opening and width follow the controls
    my = cy + 0.28 * fh
    mw = (0.28 + 0.14 * mouth_wide) * fw / 2
    mh = 0.012 * fh + 0.13 * fh * float(np.clip(mouth_open, 0, 1))
    d.ellipse([cx - mw, my - mh - 0.025 * fh, cx + mw, my + mh + 0.03 * fh], fill=p.lip_colour)
    if mouth_open > 0.02:
        d.ellipse([cx - 0.85 * mw, my - mh, cx + 0.85 * mw, my + mh], fill=(45, 15, 20))
        d.rectangle([cx - 0.6 * mw, my - mh, cx + 0.6 * mw, my - mh + 0.25 * mh], fill=(235, 230, 220))
    else:
        d.line([cx - 0.9 * mw, my, cx + 0.9 * mw, my], fill=(90, 35, 35), width=max(2, int(0.012 * fw)))

    # directional light across the face region
    a = np.asarray(img.filter(ImageFilter.GaussianBlur(0.6 * k)), np.float32)
    shade = 1.0 + p.light_strength * p.light * np.clip((xx * S - cx) / (fw / 2), -1.5, 1.5)
    a = np.clip(a * shade[..., None], 0, 255)
    out = Image.fromarray(a.astype(np.uint8)).resize((size, size), Image.LANCZOS)
    return np.asarray(out)
