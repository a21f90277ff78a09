"""Images as users have them -> RGB uint8 arrays.

Any size and mode (RGB, RGBA, LA, greyscale, palette, 16-bit, CMYK), EXIF
orientation applied. Transparent pixels are composited on white (a cut-out
portrait on a transparent background should not become a black silhouette).
Every failure is one EmoteError naming the file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import EmoteError

MIN_SIDE = 32  # pixels: smaller images hold no usable face
SIGNATURES = {b"\x89PNG\r\n\x1a\n": "PNG", b"\xff\xd8\xff": "JPEG", b"GIF8": "GIF"}


def to_rgb(img: Image.Image) -> np.ndarray:
    """A PIL image of any mode -> (H, W, 3) uint8 RGB."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        a = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if img.mode.startswith("I;16") or a.max() > 255 else 255.0
        g = np.clip(np.round(a * (255.0 / peak)), 0, 255).astype(np.uint8)
        return np.repeat(g[..., None], 3, axis=2)
    if img.mode == "F":
        g = np.clip(np.round(np.asarray(img) * 255.0), 0, 255).astype(np.uint8)
        return np.repeat(g[..., None], 3, axis=2)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"))
    return np.asarray(img.convert("RGB"))


def truncated(path: Path, size: tuple[int, int] | None) -> EmoteError:
    """PIL's "truncated" errors: the file ends early (a partial copy or download), said as such.

    PIL's own LOAD_TRUNCATED_IMAGES stays off: it would fill the missing rows with grey.
    """
    where = f"before the {size[0]}x{size[1]} pixels its header promises" if size else "inside its header"
    return EmoteError(f"image {path} is truncated: it ends {where}: a partial copy or download?")


def unidentified(path: Path) -> EmoteError:
    """A file PIL cannot identify; one that starts like an image format is that image cut short (or damaged)."""
    with open(path, "rb") as f:
        head = f.read(8)
    kind = next((name for magic, name in SIGNATURES.items() if head.startswith(magic)), None)
    if kind:
        return EmoteError(f"image {path} is truncated or corrupt: it starts as a {kind} file but its header cannot be read")
    return EmoteError(f"{path} is not an image (PNG, JPEG, WebP, BMP, TIFF...)")


def decode_image(data: bytes, name: str = "the uploaded image", max_pixels: int = 40_000_000) -> np.ndarray:
    """(H, W, 3) uint8 RGB of an image file's bytes (an upload), upright; errors name ``name``."""
    import io

    if not data:
        raise EmoteError(f"{name} is empty (0 bytes)")
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.size[0] * img.size[1] > max_pixels:
                raise EmoteError(f"{name} is {img.size[0]}x{img.size[1]} pixels: at most {max_pixels // 1_000_000} megapixels")
            img.load()
            rgb = to_rgb(ImageOps.exif_transpose(img))
    except UnidentifiedImageError:
        raise EmoteError(f"{name} is not an image (PNG, JPEG, WebP, BMP, TIFF...)") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise EmoteError(f"{name} is unreadable ({e}): truncated or corrupt?") from None
    h, w = rgb.shape[:2]
    if min(h, w) < MIN_SIDE:
        raise EmoteError(f"{name} is {w}x{h} pixels: at least {MIN_SIDE} pixels a side are needed")
    return np.ascontiguousarray(rgb)


def load_image(path: str | Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB of an image file, upright."""
    path = Path(path)
    if not path.exists():
        raise EmoteError(f"image {path} not found")
    if path.is_dir():
        raise EmoteError(f"image {path} is a directory, not an image file")
    size = None
    try:
        with Image.open(path) as img:
            size = img.size
            img.load()
            img = ImageOps.exif_transpose(img)
            rgb = to_rgb(img)
    except UnidentifiedImageError:
        raise unidentified(path) from None
    except (OSError, ValueError, SyntaxError) as e:
        if "truncated" in str(e).lower():
            raise truncated(path, size) from None
        raise EmoteError(f"image {path} is unreadable ({e}): truncated or corrupt?") from None
    h, w = rgb.shape[:2]
    if h == 0 or w == 0:
        raise EmoteError(f"image {path} is empty ({w}x{h} pixels)")
    if min(h, w) < MIN_SIDE:
        raise EmoteError(f"image {path} is {w}x{h} pixels: at least {MIN_SIDE} pixels a side are needed")
    return np.ascontiguousarray(rgb)
