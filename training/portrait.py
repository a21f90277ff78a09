"""A procedural portrait renderer: stylised frontal head-and-shoulders faces whose mouth follows a signal.

``random_params(rng)`` draws a person (``PortraitParams``: face shape, skin tone,
hair, eyes, brows, nose, lips, glasses, clothes, background, lighting);
``render_portrait(params, size, mouth_open, mouth_wide, eye_open, head_yaw,
head_pitch)`` draws one frame of that person, deterministic from its arguments.
``face_box`` and ``mouth_box`` give the ground-truth boxes.

How it is drawn: shapes (masks, eyes, lips, brows) with pillow at twice the size,
then downsampled with a Lanczos filter (anti-aliasing). Skin, hair, clothes and
background are coloured through smooth shading maps computed with numpy on a
coarse grid and upsampled bilinearly: a Lambert-lit ellipsoid head under a
directional light, darker eye sockets, a lighter nose bridge, shadows under the
nose, the lower lip and the chin. Those are the contrasts OpenCV's Haar cascades
look for, so the cascades find these faces as they find photographed ones.

This is the seed of the synthetic talking-portrait generator (training data):
keep it deterministic and fast (a few milliseconds per 256 px frame).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

Colour = tuple[int, int, int]

# light to dark, roughly along the Monk skin tone scale
SKIN_TONES: tuple[Colour, ...] = (
    (247, 226, 210),
    (240, 208, 184),
    (230, 188, 156),
    (214, 166, 128),
    (196, 142, 104),
    (172, 118, 82),
    (146, 96, 64),
    (118, 76, 50),
    (92, 58, 40),
    (70, 45, 32),
)
HAIR_COLOURS: tuple[Colour, ...] = (
    (18, 14, 12),
    (40, 28, 20),
    (70, 46, 28),
    (112, 74, 42),
    (160, 118, 70),
    (214, 180, 120),
    (132, 58, 28),
    (150, 150, 150),
    (225, 222, 215),
)
EYE_COLOURS: tuple[Colour, ...] = ((58, 36, 22), (92, 60, 30), (54, 96, 140), (70, 110, 80), (110, 100, 60), (40, 30, 28))
HAIR_STYLES = ("short", "long", "bald", "fringe", "afro")
COLLARS = ("crew", "v")
FRAME_COLOURS: tuple[Colour, ...] = ((20, 20, 22), (70, 40, 25), (150, 120, 60), (40, 40, 90), (120, 120, 125))

SS = 2  # supersampling factor: drawn at SS x size, downsampled with Lanczos


@dataclass(frozen=True)
class PortraitParams:
    skin: Colour
    hair: Colour
    hair_style: str  # one of HAIR_STYLES
    brow_colour: Colour
    eye_colour: Colour
    lip_colour: Colour
    shirt: Colour
    collar: str  # one of COLLARS
    background: tuple[Colour, Colour]  # gradient from .. to
    background_angle: float  # gradient direction, radians
    face_width: float  # cheek to cheek, fraction of the image side
    face_height: float  # crown to chin, fraction of the image side
    jaw: float  # 0 round .. 1 narrow, pointed chin
    centre_x: float  # head centre, fraction of the image side
    centre_y: float
    eye_spacing: float  # between the eye centres, fraction of the face width
    eye_size: float  # ~1
    eye_tilt: float  # outer corners up (+) or down (-), fraction of the eye width
    brow_thickness: float  # ~1
    brow_arch: float  # ~1
    brow_tilt: float  # outer ends up (+) or down (-)
    nose_width: float  # ~1
    nose_length: float  # ~1
    lip_width: float  # ~1
    lip_thickness: float  # ~1
    glasses: Colour | None  # frame colour, or no glasses
    light: float  # horizontal light direction: -1 from the left .. 1 from the right
    light_strength: float  # 0 flat .. 1 strong side light
    exposure: float  # overall brightness factor, ~1


def random_params(rng: np.random.Generator) -> PortraitParams:
    """A random person: every field drawn from ``rng`` (same generator state -> same person)."""

    def pick(options):
        return options[int(rng.integers(len(options)))]

    def jitter(c, amount=10):
        return tuple(int(np.clip(v + rng.integers(-amount, amount + 1), 0, 255)) for v in c)

    def uniform(lo, hi):
        return float(rng.uniform(lo, hi))

    # skin: interpolate between two neighbouring tones of the scale, then jitter
    t = uniform(0, len(SKIN_TONES) - 1)
    i = min(int(t), len(SKIN_TONES) - 2)
    f = t - i
    skin = jitter(tuple(int(round((1 - f) * a + f * b)) for a, b in zip(SKIN_TONES[i], SKIN_TONES[i + 1])), 6)
    hair = jitter(pick(HAIR_COLOURS))
    style = pick(HAIR_STYLES)
    # brows: the hair colour, darkened (light hair still has visible brows)
    brow = tuple(int(min(c * 0.6, 0.55 * s)) for c, s in zip(hair, skin))
    # lips: the skin, redder and darker
    red = uniform(0.0, 1.0)
    lip = tuple(int(np.clip(s * m, 0, 255)) for s, m in zip(skin, (0.80 + 0.06 * red, 0.52 - 0.06 * red, 0.52 - 0.04 * red)))
    # background: muted colours (a desaturated random hue), a gentle gradient
    base = rng.uniform(30, 225, 3)
    grey = base.mean()
    bg1 = np.clip(grey + (base - grey) * uniform(0.3, 0.9), 0, 255)
    bg2 = np.clip(bg1 + rng.uniform(-50, 50, 3), 0, 255)
    face_width = uniform(0.30, 0.38)
    face_height = face_width * uniform(1.22, 1.42)
    return PortraitParams(
        skin=skin,
        hair=hair,
        hair_style=style,
        brow_colour=brow,
        eye_colour=pick(EYE_COLOURS),
        lip_colour=lip,
        shirt=tuple(int(v) for v in rng.integers(20, 236, 3)),
        collar=pick(COLLARS),
        background=(tuple(int(v) for v in bg1), tuple(int(v) for v in bg2)),
        background_angle=uniform(0, 2 * np.pi),
        face_width=face_width,
        face_height=face_height,
        jaw=uniform(0.0, 1.0),
        centre_x=uniform(0.47, 0.53),
        centre_y=uniform(0.40, 0.44),
        eye_spacing=uniform(0.40, 0.48),
        eye_size=uniform(0.85, 1.15),
        eye_tilt=uniform(-0.08, 0.12),
        brow_thickness=uniform(0.75, 1.3),
        brow_arch=uniform(0.5, 1.4),
        brow_tilt=uniform(-0.15, 0.2),
        nose_width=uniform(0.8, 1.25),
        nose_length=uniform(0.85, 1.15),
        lip_width=uniform(0.85, 1.15),
        lip_thickness=uniform(0.75, 1.3),
        glasses=pick(FRAME_COLOURS) if rng.random() < 0.2 else None,
        light=uniform(-1.0, 1.0),
        light_strength=uniform(0.1, 0.8),
        exposure=uniform(0.9, 1.1),
    )


EXAMPLE = PortraitParams(
    skin=(222, 176, 140),
    hair=(58, 38, 24),
    hair_style="short",
    brow_colour=(48, 32, 22),
    eye_colour=(54, 96, 140),
    lip_colour=(184, 100, 88),
    shirt=(44, 62, 96),
    collar="crew",
    background=((92, 128, 160), (176, 196, 210)),
    background_angle=2.2,
    face_width=0.35,
    face_height=0.46,
    jaw=0.55,
    centre_x=0.5,
    centre_y=0.42,
    eye_spacing=0.44,
    eye_size=1.0,
    eye_tilt=0.04,
    brow_thickness=1.05,
    brow_arch=1.0,
    brow_tilt=0.05,
    nose_width=1.0,
    nose_length=1.0,
    lip_width=1.0,
    lip_thickness=1.0,
    glasses=None,
    light=-0.5,
    light_strength=0.45,
    exposure=1.0,
)


# -- geometry -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Geo:
    cx: float  # head outline centre
    cy: float
    fw: float  # face width (cheek to cheek)
    fh: float  # crown to chin
    fx: float  # features' centre line (moves with yaw)
    dy: float  # features' vertical shift (pitch)
    ey: float  # eye line
    ex: float  # eye centre offset from fx
    er: float  # eye half-width
    by: float  # brow line
    ny: float  # nose tip (nostrils)
    my: float  # mouth line
    chin: float
    hairline: float


def _geometry(p: PortraitParams, scale: float, yaw: float = 0.0, pitch: float = 0.0) -> _Geo:
    """Everything in pixels of an image of side ``scale``."""
    yaw, pitch = float(np.clip(yaw, -1, 1)), float(np.clip(pitch, -1, 1))
    fw = p.face_width * scale * (1 - 0.05 * abs(yaw))
    fh = p.face_height * scale
    cx = p.centre_x * scale + 0.02 * yaw * fw
    cy = p.centre_y * scale
    fx = cx + 0.09 * yaw * fw
    dy = 0.045 * pitch * fh
    ey = cy + 0.005 * fh + dy
    return _Geo(
        cx=cx,
        cy=cy,
        fw=fw,
        fh=fh,
        fx=fx,
        dy=dy,
        ey=ey,
        ex=p.eye_spacing * fw / 2,
        er=0.095 * fw * p.eye_size,
        by=ey - 0.095 * fh,
        ny=cy + (0.175 + 0.03 * (p.nose_length - 1)) * fh + dy,
        my=cy + 0.295 * fh + dy,
        chin=cy + 0.5 * fh,
        hairline=cy - 0.29 * fh + 0.5 * dy,
    )


def face_box(p: PortraitParams, size: int, yaw: float = 0.0, pitch: float = 0.0) -> tuple[int, int, int, int]:
    """Ground-truth (x, y, w, h) of the face: forehead to chin, cheek to cheek."""
    g = _geometry(p, size, yaw, pitch)
    left, right = g.cx - 0.47 * g.fw + 0.5 * (g.fx - g.cx), g.cx + 0.47 * g.fw + 0.5 * (g.fx - g.cx)
    top, bottom = g.cy - 0.21 * g.fh + g.dy, g.chin
    return int(round(left)), int(round(top)), int(round(right - left)), int(round(bottom - top))


def _mouth_extent(p: PortraitParams, g: _Geo):
    """Largest half-width, opening and lip thicknesses (mouth_wide = mouth_open = 1)."""
    mw = g.fw * 0.27 * p.lip_width
    gap = g.fh * 0.11
    ut, lt = g.fh * 0.030 * p.lip_thickness, g.fh * 0.040 * p.lip_thickness
    return mw, gap, ut, lt


def mouth_box(p: PortraitParams, size: int, yaw: float = 0.0, pitch: float = 0.0) -> tuple[int, int, int, int]:
    """(x, y, w, h) that holds the lips and the open mouth for any mouth_open, mouth_wide: the only pixels they change."""
    g = _geometry(p, size, yaw, pitch)
    mw, gap, ut, lt = _mouth_extent(p, g)
    pad = 0.02 * g.fw + 2
    x0, x1 = g.fx - mw - pad, g.fx + mw + pad
    y0, y1 = g.my - gap / 2 - ut - pad, g.my + gap / 2 + lt + pad
    x0, y0 = int(np.floor(x0)), int(np.floor(y0))
    return x0, y0, int(np.ceil(x1)) - x0, int(np.ceil(y1)) - y0


# -- shading maps ---------------------------------------------------------------------------------
def _gauss(t: np.ndarray, mu: float, sigma: float) -> np.ndarray:
    return np.exp(-0.5 * ((t - mu) / sigma) ** 2)


def _layer(colour, shade: np.ndarray, S: int, exposure: float) -> Image.Image:
    """colour x shade on the coarse grid -> an RGB image of side S (bilinear upsampling)."""
    rgb = np.clip(shade[..., None] * (np.asarray(colour, np.float32) * exposure), 0, 255).astype(np.uint8)
    return Image.fromarray(rgb).resize((S, S), Image.BILINEAR)


def _light_vector(p: PortraitParams) -> np.ndarray:
    v = np.array([1.2 * p.light * p.light_strength, -0.35, 1.0], np.float32)
    return v / np.linalg.norm(v)


# -- drawing ----------------------------------------------------------------------------------------
def _head_polygon(p: PortraitParams, g: _Geo, n: int = 72) -> list[tuple[float, float]]:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    s, c = np.sin(t), np.cos(t)
    width = 1 - 0.30 * p.jaw * np.clip(s, 0, 1) ** 2.2 - 0.06 * np.clip(-s, 0, 1) ** 2
    x = g.cx + 0.5 * g.fw * c * width
    y = g.cy + 0.5 * g.fh * s
    return list(zip(x.tolist(), y.tolist()))


def _curve(x0: float, x1: float, y: float, lift, n: int = 16):
    """Points (x, y - lift(t)) for t in [0, 1] from x0 to x1."""
    t = np.linspace(0, 1, n)
    return list(zip((x0 + (x1 - x0) * t).tolist(), (y - lift(t)).tolist()))


def _draw_eye(img: Image.Image, p: PortraitParams, x: float, y: float, er: float, side: int, eye_open: float) -> None:
    skin = np.asarray(p.skin, np.float32)
    d = ImageDraw.Draw(img)
    tilt = p.eye_tilt * er * 2
    lash = tuple(int(v) for v in np.minimum(skin * 0.25, 40))
    lw = max(1, int(round(0.16 * er)))
    x_in, x_out = x - side * er, x + side * er

    def corner_y(t):  # the inner corner sits lower than the outer one by `tilt`
        return y + tilt * (0.5 - t)

    eye_open = float(np.clip(eye_open, 0, 1))
    if eye_open < 0.08:  # closed: one lash line, curving down
        t = np.linspace(0, 1, 16)
        pts = list(zip((x_in + (x_out - x_in) * t).tolist(), (corner_y(t) + 0.12 * er * np.sin(np.pi * t)).tolist()))
        d.line(pts, fill=lash, width=lw, joint="curve")
        return
    up_h, lo_h = 0.58 * er * eye_open, 0.32 * er * eye_open
    t = np.linspace(0, 1, 20)
    xs = x_in + (x_out - x_in) * t
    upper = list(zip(xs.tolist(), (corner_y(t) - up_h * np.sin(np.pi * t) ** 0.75).tolist()))
    lower = list(zip(xs.tolist(), (corner_y(t) + lo_h * np.sin(np.pi * t) ** 0.9).tolist()))
    # the eye on a small tile: sclera, iris, pupil, catch-light, clipped by the lids
    x0, y0 = int(min(x_in, x_out) - 2), int(y - up_h - abs(tilt) - 2)
    x1, y1 = int(max(x_in, x_out) + 3), int(y + lo_h + abs(tilt) + 3)
    tile = img.crop((x0, y0, x1, y1))
    td = ImageDraw.Draw(tile)
    sclera = tuple(int(v) for v in np.clip(0.62 * np.array([238, 232, 226]) + 0.25 * skin, 0, 255))
    td.rectangle([0, 0, x1 - x0, y1 - y0], fill=sclera)
    ir = 0.5 * er
    ix, iy = x - x0, y - y0 - 0.1 * up_h
    td.ellipse([ix - ir, iy - ir, ix + ir, iy + ir], fill=p.eye_colour)
    ring = tuple(int(c * 0.55) for c in p.eye_colour)
    td.ellipse([ix - ir, iy - ir, ix + ir, iy + ir], outline=ring, width=max(1, int(0.08 * er)))
    pr = 0.22 * er
    td.ellipse([ix - pr, iy - pr, ix + pr, iy + pr], fill=(8, 8, 10))
    hr = 0.09 * er
    td.ellipse([ix + 0.2 * er - hr, iy - 0.25 * er - hr, ix + 0.2 * er + hr, iy - 0.25 * er + hr], fill=(245, 245, 245))
    # shadow of the upper lid on the eyeball (none left to draw on a nearly closed eye)
    if iy - 0.55 * ir > 0:
        td.rectangle([0, 0, x1 - x0, iy - 0.55 * ir], fill=tuple(int(c * 0.6) for c in sclera))
    mask = Image.new("L", tile.size, 0)
    ImageDraw.Draw(mask).polygon([(a - x0, b - y0) for a, b in upper + lower[::-1]], fill=255)
    img.paste(tile, (x0, y0), mask)
    # lids: a dark lash line on top, a faint line below, the crease above
    d.line(upper, fill=lash, width=lw + max(1, int(0.06 * er * eye_open)), joint="curve")
    lower_line = tuple(int(v) for v in skin * 0.62)
    d.line(lower, fill=lower_line, width=max(1, lw // 2), joint="curve")
    crease = [(a, b - 0.35 * er) for a, b in upper[3:-2]]
    d.line(crease, fill=tuple(int(v) for v in skin * 0.7), width=max(1, lw // 2), joint="curve")


def _draw_brow(d: ImageDraw.ImageDraw, p: PortraitParams, g: _Geo, side: int, scale: float) -> None:
    x_c = g.fx + side * g.ex * (1 - 0.08 * side * (g.fx - g.cx) / g.fw * 4)
    x_in, x_out = x_c - side * 1.0 * g.er, x_c + side * 1.35 * g.er
    t = np.linspace(0, 1, 18)
    xs = x_in + (x_out - x_in) * t
    yc = g.by - p.brow_arch * 0.35 * g.er * np.sin(np.pi * (0.15 + 0.8 * t)) - p.brow_tilt * g.er * t
    th = p.brow_thickness * g.er * (0.42 - 0.26 * t)
    top = list(zip(xs.tolist(), (yc - th / 2).tolist()))
    bottom = list(zip(xs.tolist(), (yc + th / 2).tolist()))
    d.polygon(top + bottom[::-1], fill=p.brow_colour)


def _draw_mouth(img: Image.Image, p: PortraitParams, g: _Geo, mouth_open: float, mouth_wide: float) -> None:
    mouth_open = float(np.clip(mouth_open, 0, 1))
    mouth_wide = float(np.clip(mouth_wide, 0, 1))
    mw_max, gap_max, ut, lt = _mouth_extent(p, g)
    mw = mw_max * (0.62 + 0.38 * mouth_wide) * (1 - 0.12 * mouth_open * (1 - mouth_wide))
    gap = gap_max * mouth_open
    x0, x1, y = g.fx - mw, g.fx + mw, g.my
    t = np.linspace(0, 1, 24)
    xs = (x0 + (x1 - x0) * t).tolist()
    s = np.sin(np.pi * t)
    inner_up = y - gap / 2 * s**0.7
    inner_lo = y + gap / 2 * s**0.7
    bow = s**0.55 * (1 - 0.28 * _gauss(t, 0.5, 0.07))
    outer_up = inner_up - ut * bow
    outer_lo = inner_lo + lt * s**0.6
    lip = np.asarray(p.lip_colour, np.float32)
    d = ImageDraw.Draw(img)
    up_poly = list(zip(xs, outer_up.tolist())) + list(zip(xs[::-1], inner_up[::-1].tolist()))
    lo_poly = list(zip(xs, inner_lo.tolist())) + list(zip(xs[::-1], outer_lo[::-1].tolist()))
    d.polygon(up_poly, fill=tuple(int(v) for v in lip * 0.82))
    d.polygon(lo_poly, fill=tuple(int(v) for v in lip))
    # a soft highlight on the lower lip
    hl = list(zip(xs[6:-6], (inner_lo + 0.45 * lt * s**0.6)[6:-6].tolist()))
    d.line(hl, fill=tuple(int(v) for v in np.minimum(lip * 1.12 + 8, 255)), width=max(1, int(0.25 * lt)), joint="curve")
    if gap < 1.0:  # closed: the line between the lips
        line = list(zip(xs, inner_up.tolist()))
        d.line(line, fill=tuple(int(v) for v in lip * 0.45), width=max(1, int(0.18 * ut)), joint="curve")
        return
    # open: a dark interior with the upper teeth and the tongue, clipped to the opening
    bx0, by0 = int(x0) - 1, int(y - gap / 2) - 1
    bx1, by1 = int(x1) + 2, int(y + gap / 2) + 2
    tile = Image.new("RGB", (bx1 - bx0, by1 - by0), (42, 14, 18))
    td = ImageDraw.Draw(tile)
    teeth_h = min(0.30 * gap, 0.035 * g.fh)
    td.rectangle([0.18 * (bx1 - bx0), 0, 0.82 * (bx1 - bx0), (y - gap / 2 - by0) + teeth_h], fill=(214, 208, 196))
    tw, th = 0.55 * mw, 0.35 * gap
    tcx, tcy = g.fx - bx0, (y + gap / 2 - by0)
    td.ellipse([tcx - tw, tcy - th, tcx + tw, tcy + th], fill=(120, 44, 52))
    mask = Image.new("L", tile.size, 0)
    inner = list(zip(xs, inner_up.tolist())) + list(zip(xs[::-1], inner_lo[::-1].tolist()))
    ImageDraw.Draw(mask).polygon([(a - bx0, b - by0) for a, b in inner], fill=255)
    img.paste(tile, (bx0, by0), mask)


def _draw_nose(d: ImageDraw.ImageDraw, p: PortraitParams, g: _Geo) -> None:
    skin = np.asarray(p.skin, np.float32)
    nw = 0.075 * g.fw * p.nose_width
    nostril = tuple(int(v) for v in skin * 0.38)
    for side in (-1, 1):
        nx = g.fx + side * 0.5 * nw
        d.ellipse([nx - 0.32 * nw, g.ny - 0.14 * nw, nx + 0.32 * nw, g.ny + 0.16 * nw], fill=nostril)
        # the wing of the nose: a soft arc
        box = [g.fx + side * 0.85 * nw - 0.45 * nw, g.ny - 0.55 * nw, g.fx + side * 0.85 * nw + 0.45 * nw, g.ny + 0.3 * nw]
        start, end = (100, 250) if side < 0 else (290, 80)
        d.arc(box, start, end, fill=tuple(int(v) for v in skin * 0.68), width=max(1, int(0.1 * nw)))


def _draw_glasses(d: ImageDraw.ImageDraw, p: PortraitParams, g: _Geo) -> None:
    w = max(2, int(0.16 * g.er))
    for side in (-1, 1):
        x = g.fx + side * g.ex
        d.rounded_rectangle(
            [x - 1.45 * g.er, g.ey - 0.95 * g.er, x + 1.45 * g.er, g.ey + 0.95 * g.er], radius=0.6 * g.er, outline=p.glasses, width=w
        )
        arm = g.cx + side * 0.5 * g.fw
        d.line([(x + side * 1.45 * g.er, g.ey - 0.4 * g.er), (arm, g.ey - 0.5 * g.er)], fill=p.glasses, width=w)
    d.line([(g.fx - g.ex + 1.45 * g.er, g.ey - 0.35 * g.er), (g.fx + g.ex - 1.45 * g.er, g.ey - 0.35 * g.er)], fill=p.glasses, width=w)


def render_portrait(
    p: PortraitParams,
    size: int = 256,
    mouth_open: float = 0.0,
    mouth_wide: float = 0.5,
    eye_open: float = 1.0,
    head_yaw: float = 0.0,
    head_pitch: float = 0.0,
) -> np.ndarray:
    """(size, size, 3) uint8: one frame of the portrait with the given controls.

    ``mouth_open`` 0 closed .. 1 wide open, ``mouth_wide`` 0 rounded ("oo") .. 1 stretched ("ee"),
    ``eye_open`` 0 closed (a blink) .. 1 open, ``head_yaw`` / ``head_pitch`` in [-1, 1]: small
    head turns (features shift and squash). Deterministic: same arguments, same bytes.
    """
    S = size * SS
    G = max(48, size // 2)  # coarse grid for the shading maps
    g = _geometry(p, S, head_yaw, head_pitch)
    cell = S / G
    xs = (np.arange(G, dtype=np.float32) + 0.5) * cell
    ys = xs
    X, Y = xs[None, :], ys[:, None]
    L = _light_vector(p)
    ex = p.exposure

    # background: a linear gradient along the given angle, a soft vignette, a glow behind the head
    ca, sa = np.cos(p.background_angle), np.sin(p.background_angle)
    tt = np.clip(0.5 + ((X / S - 0.5) * ca + (Y / S - 0.5) * sa), 0, 1)[..., None]
    c1, c2 = np.asarray(p.background[0], np.float32), np.asarray(p.background[1], np.float32)
    vign = 1.0 - 0.28 * (((X - S / 2) / S) ** 2 + ((Y - S / 2) / S) ** 2)[..., None] * 2
    bg = np.clip((c1 + (c2 - c1) * tt) * vign, 0, 255).astype(np.uint8)
    img = Image.fromarray(bg).resize((S, S), Image.BILINEAR)

    # head sphere: normals of an ellipsoid, Lambert shading
    u = (X - g.cx) / (0.5 * g.fw)
    v = (Y - g.cy) / (0.5 * g.fh)
    uu, vv = np.clip(u, -1.3, 1.3), np.clip(v, -1.3, 1.3)
    nz = np.sqrt(np.clip(1 - 0.82 * uu**2 - 0.45 * vv**2, 0.03, None))
    nx, ny = 0.9 * uu, 0.55 * vv
    lam = np.clip((nx * L[0] + ny * L[1] + nz * L[2]) / np.sqrt(nx**2 + ny**2 + nz**2), 0, 1)

    # hair: behind the head (long, afro), then later on top
    hair_shade = (0.55 + 0.55 * lam) * (
        1 + 0.25 * _gauss(Y, g.cy - 0.42 * g.fh, 0.05 * g.fh) * _gauss(X, g.cx - 0.12 * g.fw * p.light, 0.2 * g.fw)
    )
    hair_layer = _layer(p.hair, hair_shade, S, ex) if p.hair_style != "bald" else None
    if p.hair_style in ("long", "afro"):
        back = Image.new("L", (S, S), 0)
        bd = ImageDraw.Draw(back)
        if p.hair_style == "long":
            bd.rounded_rectangle(
                [g.cx - 0.64 * g.fw, g.cy - 0.56 * g.fh, g.cx + 0.64 * g.fw, g.cy + 0.82 * g.fh], radius=0.5 * g.fw, fill=255
            )
        else:
            bd.ellipse([g.cx - 0.82 * g.fw, g.cy - 0.80 * g.fh, g.cx + 0.82 * g.fw, g.cy + 0.25 * g.fh], fill=255)
        img.paste(hair_layer, (0, 0), back)

    # shoulders and shirt: a cylinder lit from the side
    sb = g.chin + 0.23 * g.fh  # top of the shoulders
    su = np.clip((X - g.cx) / (1.5 * g.fw), -1, 1)
    shirt_shade = (0.72 + 0.28 * np.sqrt(1 - su**2) + 0.22 * L[0] * su) * (1 - 0.15 * np.clip((Y - sb) / (0.6 * g.fh), 0, 1))
    shirt = Image.new("L", (S, S), 0)
    sd = ImageDraw.Draw(shirt)
    sd.ellipse([g.cx - 1.5 * g.fw, sb, g.cx + 1.5 * g.fw, sb + 1.5 * g.fh], fill=255)
    img.paste(_layer(p.shirt, np.broadcast_to(shirt_shade, (G, G)), S, ex), (0, 0), shirt)

    # neck: darker than the face, in the chin's shadow, with the neckline cut into the shirt
    skin = p.skin
    nu = np.clip((X - g.cx) / (0.24 * g.fw), -1, 1)
    neck_shade = (0.62 + 0.22 * np.sqrt(1 - nu**2) + 0.12 * L[0] * nu) * (
        1 - 0.35 * np.exp(-np.clip(Y - g.chin + 0.05 * g.fh, 0, None) / (0.07 * g.fh))
    )
    neck = Image.new("L", (S, S), 0)
    nd = ImageDraw.Draw(neck)
    nwid = 0.2 * g.fw
    nd.rectangle([g.cx - nwid, g.cy + 0.2 * g.fh, g.cx + nwid, sb + 0.1 * g.fh], fill=255)
    if p.collar == "v":
        nd.polygon([(g.cx - 1.3 * nwid, sb + 0.02 * g.fh), (g.cx + 1.3 * nwid, sb + 0.02 * g.fh), (g.cx, sb + 0.32 * g.fh)], fill=255)
    else:
        nd.ellipse([g.cx - 1.2 * nwid, sb - 0.1 * g.fh, g.cx + 1.2 * nwid, sb + 0.12 * g.fh], fill=255)
    img.paste(_layer(skin, neck_shade, S, ex), (0, 0), neck)
    # the collar's edge
    d = ImageDraw.Draw(img)
    edge = tuple(int(c * 0.6) for c in p.shirt)
    if p.collar == "v":
        d.line(
            [(g.cx - 1.3 * nwid, sb + 0.02 * g.fh), (g.cx, sb + 0.32 * g.fh), (g.cx + 1.3 * nwid, sb + 0.02 * g.fh)],
            fill=edge,
            width=max(2, int(0.012 * g.fw)),
        )
    else:
        d.arc([g.cx - 1.2 * nwid, sb - 0.1 * g.fh, g.cx + 1.2 * nwid, sb + 0.12 * g.fh], 0, 180, fill=edge, width=max(2, int(0.02 * g.fw)))

    # the face: Lambert shading times the features' shadows and highlights
    fx, er = g.fx, g.er
    feat = np.ones((G, G), np.float32)
    for side in (-1, 1):
        exs = fx + side * g.ex
        feat *= 1 - 0.42 * _gauss(X, exs, 1.35 * er) * _gauss(Y, g.ey - 0.25 * er, 0.95 * er)  # eye socket
        feat *= 1 - 0.10 * _gauss(X, fx + side * 0.085 * g.fw, 0.03 * g.fw) * _gauss(Y, (g.ey + g.ny) / 2, 0.06 * g.fh)  # nose sides
        feat *= 1 + 0.07 * _gauss(X, fx + side * 0.25 * g.fw, 0.09 * g.fw) * _gauss(Y, g.ey + 0.13 * g.fh, 0.06 * g.fh)  # cheekbones
    feat *= 1 + 0.13 * _gauss(X, fx, 0.045 * g.fw) * _gauss(Y, (g.ey + g.ny) / 2 - 0.02 * g.fh, 0.08 * g.fh)  # nose bridge
    feat *= 1 + 0.06 * _gauss(X, fx, 0.2 * g.fw) * _gauss(Y, g.cy - 0.24 * g.fh, 0.07 * g.fh)  # forehead
    feat *= 1 - 0.30 * _gauss(X, fx, 0.075 * g.fw) * _gauss(Y, g.ny + 0.035 * g.fh, 0.018 * g.fh)  # under the nose
    feat *= 1 - 0.16 * _gauss(X, fx, 0.11 * g.fw) * _gauss(Y, g.my + 0.085 * g.fh, 0.022 * g.fh)  # under the lower lip
    feat *= 1 - 0.10 * _gauss(X, fx, 0.09 * g.fw) * _gauss(Y, g.my - 0.05 * g.fh, 0.02 * g.fh)  # philtrum edge
    face_shade = (0.42 + 0.68 * lam) * feat
    head = Image.new("L", (S, S), 0)
    hd = ImageDraw.Draw(head)
    if p.hair_style not in ("long", "afro"):
        for side in (-1, 1):
            ax = g.cx + side * 0.49 * g.fw
            hd.ellipse([ax - 0.065 * g.fw, g.ey - 0.06 * g.fh, ax + 0.065 * g.fw, g.ny + 0.02 * g.fh], fill=255)
    hd.polygon(_head_polygon(p, g), fill=255)
    img.paste(_layer(skin, face_shade, S, ex), (0, 0), head)
    d = ImageDraw.Draw(img)

    # hair on top: a cap down to the hairline, sideburns to the ears; a fringe over the forehead
    if hair_layer is not None:
        top = Image.new("L", (S, S), 0)
        td = ImageDraw.Draw(top)
        grow = 0.06 if p.hair_style == "afro" else 0.0
        td.ellipse([g.cx - (0.535 + grow) * g.fw, g.cy - (0.545 + grow) * g.fh, g.cx + (0.535 + grow) * g.fw, g.cy + 0.3 * g.fh], fill=255)
        td.ellipse([g.cx - 0.45 * g.fw, g.hairline, g.cx + 0.45 * g.fw, g.hairline + 1.25 * g.fh], fill=0)
        td.rectangle([0, g.ey + 0.04 * g.fh, S, S], fill=0)
        if p.hair_style == "fringe":
            n = 9
            pts = [(g.cx - 0.47 * g.fw, g.hairline - 0.02 * g.fh)]
            for i in range(n + 1):
                x = g.cx - 0.44 * g.fw + 0.88 * g.fw * i / n
                pts.append((x, g.by - 0.07 * g.fh - (0.025 * g.fh if i % 2 else 0.0)))
            pts.append((g.cx + 0.47 * g.fw, g.hairline - 0.02 * g.fh))
            td.polygon(pts, fill=255)
        img.paste(hair_layer, (0, 0), top)
        d = ImageDraw.Draw(img)
        # a few strands for texture
        strand = tuple(int(c * 0.75 * ex) for c in p.hair)
        for i in range(5):
            ox = (i - 2) * 0.1 * g.fw
            d.arc(
                [g.cx + ox - 0.3 * g.fw, g.cy - 0.5 * g.fh, g.cx + ox + 0.3 * g.fw, g.hairline + 0.12 * g.fh],
                200,
                290,
                fill=strand,
                width=max(1, int(0.008 * g.fw)),
            )

    # features
    for side in (-1, 1):
        squash = 1 - 0.12 * side * (g.fx - g.cx) / (0.09 * g.fw) * 0.5  # the far eye narrows on a turn
        _draw_eye(img, p, fx + side * g.ex * squash, g.ey, er * squash, side, eye_open)
        _draw_brow(d, p, g, side, S)
    _draw_nose(d, p, g)
    if p.glasses is not None:
        _draw_glasses(d, p, g)
    _draw_mouth(img, p, g, mouth_open, mouth_wide)

    return np.asarray(img.resize((size, size), Image.LANCZOS))
