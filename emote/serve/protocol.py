"""The WebSocket stream's wire format (docs/serving.md), shared by the server and ``emote client``.

Server -> client, binary: one message per video frame, the frame's image and the audio that
plays with it, on the session's clock:

    b"EMF1" | u32 LE header length | header (UTF-8 JSON) | JPEG (header["jpeg_bytes"]) | audio (s16le, 16 kHz mono)

header: {"type": "frame", "index", "pts" (samples at 16 kHz), "speech", "underrun", "jpeg_bytes"};
jpeg_bytes 0 means the image was dropped under load (show the previous one; its audio is there all
the same); "underrun": speech was due and not generated yet (a stall: previous image, silence).
Server -> client, text: JSON events. Client -> server: binary audio (the session's PCM format),
text JSON commands {"type": "clear"} and {"type": "end"}.

Why JPEG and not H.264: every frame stands alone, so a frame dropped under load or by a barge-in
never corrupts the ones after it (no reference frames, no wait for a keyframe), a browser decodes
it with ``createImageBitmap`` (no WebCodecs, no build step), and the server keeps no encoder
state per session. At the demo's 128 px it costs about 4-6 KB a frame (1 Mbit/s at 25 fps):
nothing on a LAN. WebRTC (compressed video, congestion control) is the path for thin links.
"""

from __future__ import annotations

import io
import json
import struct

import numpy as np

MAGIC = b"EMF1"
JPEG_QUALITY = 90
# The stream's close code when the session is not on the server it reached (servers behind one
# address, emote/serve/ray_app.py): the router has not learnt the session yet, or its server is gone.
NOT_HERE = 4409


def encode_jpeg(image: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=quality, subsampling=0)  # 4:4:4: small faces keep their colour edges
    return buf.getvalue()


def decode_jpeg(data: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB"))


def to_s16(audio: np.ndarray) -> bytes:
    return (np.clip(audio, -1.0, 32767 / 32768) * 32768.0).round().astype("<i2").tobytes()


def pack_frame(index: int, pts: int, speech: bool, jpeg: bytes | None, audio: np.ndarray, underrun: bool = False) -> bytes:
    fields = {"type": "frame", "index": index, "pts": pts, "speech": speech, "underrun": underrun, "jpeg_bytes": len(jpeg or b"")}
    header = json.dumps(fields).encode()
    return b"".join((MAGIC, struct.pack("<I", len(header)), header, jpeg or b"", to_s16(audio)))


def unpack_frame(message: bytes) -> tuple[dict, bytes, np.ndarray]:
    """(header, JPEG bytes (b"" if dropped), float32 audio) of a frame message."""
    if message[:4] != MAGIC:
        raise ValueError("not a frame message (no EMF1 magic)")
    (n,) = struct.unpack_from("<I", message, 4)
    header = json.loads(message[8 : 8 + n])
    j = 8 + n + header["jpeg_bytes"]
    audio = np.frombuffer(message[j:], "<i2").astype(np.float32) / 32768.0
    return header, bytes(message[8 + n : j]), audio
