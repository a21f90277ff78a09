"""Audio files cut short of what their own headers promise.

A partly copied or downloaded file still decodes: libsndfile clamps a WAV's or an
AIFF's frame count to the bytes there and reads an MP3 or an Ogg up to where it
stops, so a cut file would become a shorter video without a word. Here the lengths
a container declares (a WAV data chunk, an AIFF COMM chunk, an Ogg page, an MP4
box, an MP3's Xing or VBRI header, a FLAC STREAMINFO) are compared with what the
file holds, and a shortfall is one EmoteError naming the file and what is missing.
Lengths a streaming writer leaves unknown (0, 0xFFFFFFFF, SoX's 0x7FFFF000) and
formats that declare none are never an error: nothing is guessed.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import BinaryIO

from ..errors import EmoteError

UNKNOWN = {0, 0xFFFFFFFF, 0x7FFFF000}  # 32-bit sizes that writers use for "not known when written"
UNKNOWN_64 = {0, 0xFFFFFFFFFFFFFFFF}
PCM_TAGS = {1, 3, 6, 7, 0xFFFE}  # WAV format tags whose block_align is the bytes of one frame
AIFC_PCM = {b"NONE", b"sowt", b"twos", b"raw ", b"fl32", b"FL32", b"fl64", b"FL64"}


def truncated_frames(path: Path, promised: int, held: int, rate: float) -> EmoteError:
    return EmoteError(
        f"audio {path} is truncated: its header promises {promised / rate:.2f} s ({promised} frames) "
        f"but the file holds {held / rate:.2f} s ({held} frames): a partial copy or download?"
    )


def truncated_bytes(path: Path, what: str, declared: int, held: int) -> EmoteError:
    return EmoteError(f"audio {path} is truncated: it ends {held} bytes into {what} of {declared} bytes: a partial copy or download?")


def check_container(path: Path) -> None:
    """Raise if the container's declared sizes run past the end of the file (headers only, before decoding).

    An unreadable file is left to the decoder, which says why in its own words.
    """
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(12)
            if head[:4] in (b"RIFF", b"RIFX", b"RF64", b"BW64") and head[8:12] == b"WAVE":
                _check_wav(path, f, size, head[:4])
            elif head[:4] == b"FORM" and head[8:12] in (b"AIFF", b"AIFC"):
                _check_aiff(path, f, size)
            elif head[:4] == b"OggS":
                _check_ogg(path, f, size)
            elif head[4:8] == b"ftyp":
                _check_boxes(path, f, size)
            elif head[:3] == b"ID3" or (len(head) > 1 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0):  # MPEG sync
                _check_mp3(path, f, size)
    except OSError:
        return


def _chunks(f: BinaryIO, size: int, order: str):
    """(id, offset of its body, declared size) of each RIFF/IFF chunk whose header lies in the file."""
    pos = 12
    while pos + 8 <= size:
        f.seek(pos)
        cid, n = struct.unpack(order + "4sI", f.read(8))
        yield cid, pos + 8, n
        pos += 8 + n + (n & 1)


def _check_wav(path: Path, f: BinaryIO, size: int, kind: bytes) -> None:
    """The data chunk's declared length against the bytes after it (RF64/BW64: the ds64 chunk's 64-bit length)."""
    order = ">" if kind == b"RIFX" else "<"
    fmt = ds64 = b""
    for cid, at, n in _chunks(f, size, order):
        if cid == b"ds64":
            f.seek(at)
            ds64 = f.read(min(n, 16))
        elif cid == b"fmt ":
            f.seek(at)
            fmt = f.read(min(n, 16))
        elif cid == b"data":
            if kind in (b"RF64", b"BW64") and n == 0xFFFFFFFF:
                if len(ds64) < 16 or (n := struct.unpack("<Q", ds64[8:16])[0]) in UNKNOWN_64:
                    return
            elif n in UNKNOWN:
                return
            _wav_shortfall(path, fmt, order, n, size - at)
            return


def _wav_shortfall(path: Path, fmt: bytes, order: str, declared: int, held: int) -> None:
    """Raise in frames and seconds where the fmt chunk tells them, else in bytes."""
    if held >= declared:
        return
    if len(fmt) == 16:
        tag, _, rate, byte_rate, align, _ = struct.unpack(order + "HHIIHH", fmt)
        if rate and align and tag in PCM_TAGS:
            if held // align < declared // align:
                raise truncated_frames(path, declared // align, held // align, rate)
            return
        if rate and byte_rate:  # compressed WAV: frames from the average byte rate
            raise truncated_frames(path, declared * rate // byte_rate, held * rate // byte_rate, rate)
    raise truncated_bytes(path, "its data chunk", declared, held)


def _check_aiff(path: Path, f: BinaryIO, size: int) -> None:
    """The COMM chunk's frame count against the whole frames in the SSND chunk (uncompressed AIFF/AIFC only)."""
    comm = b""
    for cid, at, n in _chunks(f, size, ">"):
        if cid == b"COMM":
            f.seek(at)
            comm = f.read(min(n, 22))
        elif cid == b"SSND":
            if len(comm) < 18:
                return
            channels, frames, bits = struct.unpack(">hIh", comm[:8])
            exponent, mantissa = struct.unpack(">HQ", comm[8:18])
            rate = mantissa * 2.0 ** ((exponent & 0x7FFF) - 16383 - 63)  # 80-bit extended float
            compression = comm[18:22] if len(comm) == 22 else b"NONE"
            f.seek(at)
            offset = f.read(4)
            if frames in UNKNOWN or compression not in AIFC_PCM or channels <= 0 or bits <= 0 or rate <= 0 or len(offset) < 4:
                return
            held = max(0, size - at - 8 - struct.unpack(">I", offset)[0]) // (channels * ((bits + 7) // 8))
            if held < frames:
                raise truncated_frames(path, frames, held, rate)
            return


def _check_ogg(path: Path, f: BinaryIO, size: int) -> None:
    """Each Ogg page's declared length (header, segment table, body) against the bytes left."""
    pos = 0
    while pos < size:
        f.seek(pos)
        header = f.read(27)
        if len(header) < 27:
            if b"OggS".startswith(header[:4]):
                raise truncated_bytes(path, "an Ogg page header", 27, len(header))
            return
        if header[:4] != b"OggS":
            return  # not a clean Ogg stream from here: not ours to judge
        lacing = f.read(header[26])
        if len(lacing) < header[26]:
            raise truncated_bytes(path, "an Ogg page header", 27 + header[26], size - pos)
        page = 27 + header[26] + sum(lacing)
        if pos + page > size:
            raise truncated_bytes(path, "an Ogg page", page, size - pos)
        pos += page


def _check_boxes(path: Path, f: BinaryIO, size: int) -> None:
    """Each top-level MP4/M4A box's declared size against the bytes left (a box of size 0 runs to the end)."""
    pos = 0
    while pos + 8 <= size:
        f.seek(pos)
        n, kind = struct.unpack(">I4s", f.read(8))
        name = "".join(c if c.isalnum() else "?" for c in kind.decode("latin-1"))
        header = 8
        if n == 1:
            large = f.read(8)
            if len(large) < 8:
                raise truncated_bytes(path, f"its '{name}' box header", 16, size - pos)
            n, header = struct.unpack(">Q", large)[0], 16
        if n == 0 or n < header:
            return
        if pos + n > size:
            raise truncated_bytes(path, f"its '{name}' box", n, size - pos)
        pos += n


def _check_mp3(path: Path, f: BinaryIO, size: int) -> None:
    """The stream size in the first frame's Xing/Info or VBRI header against the file's size.

    Some encoders count the ID3v2 tag in that size and some do not, so only a file
    shorter than the declared stream itself is cut.
    """
    f.seek(0)
    tag = f.read(10)
    start = 0
    if tag[:3] == b"ID3" and len(tag) == 10:
        start = 10 + sum((b & 0x7F) << (7 * (3 - i)) for i, b in enumerate(tag[6:10])) + (10 if tag[5] & 0x10 else 0)
    f.seek(start)
    frame = f.read(64)
    if len(frame) < 4 or frame[0] != 0xFF or frame[1] & 0xE0 != 0xE0:
        return
    declared = None
    at = max(frame.find(b"Xing", 4, 48), frame.find(b"Info", 4, 48))
    if at > 0 and len(frame) >= at + 16:
        flags = struct.unpack(">I", frame[at + 4 : at + 8])[0]
        if flags & 2:
            declared = struct.unpack(">I", frame[at + 8 + 4 * (flags & 1) : at + 12 + 4 * (flags & 1)])[0]
    elif frame[36:40] == b"VBRI" and len(frame) >= 50:
        declared = struct.unpack(">I", frame[46:50])[0]
    if declared is not None and declared not in UNKNOWN and declared > size:
        raise truncated_bytes(path, "its MP3 stream", declared, size - start)


def flac_shortfall(path: Path) -> EmoteError | None:
    """After libsndfile gave up on a file: the error if it is a FLAC whose decodable samples fall short of STREAMINFO's.

    libsndfile fails alike on a cut FLAC and a corrupt one; FFmpeg's decoder skips a
    bad frame and goes on, so a file that decodes to within one frame of its total is
    corrupt, not cut short, and keeps the decoder's own message.
    """
    import soundfile as sf

    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError):
        return None
    if info.format != "FLAC" or info.frames <= 0:
        return None
    decoded = _decodable(path)
    if decoded is None or decoded[0] + decoded[1] >= info.frames:
        return None
    return truncated_frames(path, info.frames, decoded[0], info.samplerate)


def _decodable(path: Path) -> tuple[int, int] | None:
    """(samples FFmpeg decodes before the file gives out, the longest frame), or None if it cannot open it."""
    import av

    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, UnicodeDecodeError):
        return None
    held = longest = 0
    with container:
        if not container.streams.audio:
            return None
        try:
            for frame in container.decode(container.streams.audio[0]):
                held, longest = held + frame.samples, max(longest, frame.samples)
        except av.error.FFmpegError:
            pass
    return held, longest
