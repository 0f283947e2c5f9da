"""A structural check of an MP4/MOV file in Python, so a result need not cost an ffprobe process.

Every downloaded result is verified before it is renamed into place. ffprobe is an exec of a
large static binary (~6 ms of CPU for a small clip, plus a thread and pipes on our side): at
thousands of results it was the runner's biggest cost of its own. Results are MP4 in practice,
and what the runner checks about them (a video track, its codec, dimensions, duration, frame
rate) is all in the ``moov`` box, so this module reads that box itself.

It answers only when it understands the whole file: the top-level boxes tile the file exactly
(a truncated or padded download is not understood), there is one ``moov``, a video track with a
known codec, and that track's chunks lie inside the file. Anything else returns None and the
caller asks ffprobe, so nothing is accepted that the ffprobe path would refuse for lack of
structure. Reads at most :data:`MAX_MOOV` bytes (the ``moov``), never the media data.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from pipeline.media.probe import MediaInfo

#: A moov larger than this is not a clip we generated; let ffprobe have it.
MAX_MOOV = 32 * 1024 * 1024
FORMAT_NAME = "mov,mp4,m4a,3gp,3g2,mj2"  # ffprobe's name for the demuxer, as MediaInfo keeps it
VIDEO_CODECS = {b"avc1": "h264", b"avc3": "h264", b"hvc1": "hevc", b"hev1": "hevc",
                b"av01": "av1", b"vp09": "vp9", b"mp4v": "mpeg4"}  # fmt: skip
AUDIO_CODECS = {b"mp4a": "aac", b"Opus": "opus", b"ac-3": "ac3", b"ec-3": "eac3"}
_CONTAINERS = {b"moov", b"trak", b"mdia", b"minf", b"stbl"}


class _Unknown(Exception):
    """The file is not one this module understands: the caller falls back to ffprobe."""


@dataclass
class _Track:
    handler: bytes = b""
    timescale: int = 0
    duration: int = 0
    width: int = 0  # from the sample entry (coded size)
    height: int = 0
    rotated: bool = False  # the tkhd matrix turns the picture by 90 or 270 degrees
    codec: bytes = b""
    samples: int = 0
    sample_bytes: int = 0
    chunk_offsets: list[int] = field(default_factory=list)


def mp4_info(path: Path, *, source: str | None = None) -> MediaInfo | None:
    """MediaInfo of an MP4/MOV file from its boxes, or None when ffprobe should decide."""
    try:
        with Path(path).open("rb") as fh:
            size = fh.seek(0, 2)
            brand, moov = _top_level(fh, size)
        return _info(brand, moov, size, source or str(path))
    except (_Unknown, struct.error, ValueError, OverflowError, OSError):
        return None  # OSError too: ffprobe's path words a missing or unreadable file


def _top_level(fh: BinaryIO, size: int) -> tuple[bytes, bytes]:
    """The ftyp major brand and the moov payload; the boxes must tile the file exactly."""
    pos, brand, seen_mdat = 0, b"", False
    moov: bytes | None = None
    while pos < size:
        fh.seek(pos)
        head = fh.read(16)
        if len(head) < 8:
            raise _Unknown("truncated box header")
        length, kind = struct.unpack(">I4s", head[:8])
        header = 8
        if length == 1:
            if len(head) < 16:
                raise _Unknown("truncated large box header")
            (length,) = struct.unpack(">Q", head[8:16])
            header = 16
        elif length == 0:  # "to the end of the file": only the media data may say so
            if kind != b"mdat":
                raise _Unknown("a box of size 0 that is not mdat")
            length = size - pos
        if length < header or pos + length > size:
            raise _Unknown("a box runs past the end of the file")
        if pos == 0:
            if kind != b"ftyp":
                raise _Unknown("no ftyp first")
            fh.seek(pos + header)
            brand = fh.read(4)
        elif kind == b"moov":
            if moov is not None or length - header > MAX_MOOV:
                raise _Unknown("two moov boxes, or a huge one")
            fh.seek(pos + header)
            moov = fh.read(length - header)
            if len(moov) != length - header:
                raise _Unknown("short moov")
        elif kind == b"mdat":
            seen_mdat = True
        pos += length
    if moov is None or not seen_mdat:
        raise _Unknown("no moov or no mdat")
    return brand, moov


def _boxes(data: bytes, start: int = 0, end: int | None = None) -> list[tuple[bytes, int, int]]:
    """(type, payload start, payload end) of each box in ``data[start:end]``; they must tile it."""
    end = len(data) if end is None else end
    out, pos = [], start
    while pos < end:
        length, kind = struct.unpack_from(">I4s", data, pos)
        header = 8
        if length == 1:
            (length,) = struct.unpack_from(">Q", data, pos + 8)
            header = 16
        elif length == 0:
            length = end - pos
        if length < header or pos + length > end:
            raise _Unknown("a box runs past its parent")
        out.append((kind, pos + header, pos + length))
        pos += length
    return out


def _info(brand: bytes, moov: bytes, size: int, source: str) -> MediaInfo:
    timescale = duration = 0
    tracks: list[_Track] = []
    for kind, start, end in _boxes(moov):
        if kind == b"mvhd":
            timescale, duration = _time_fields(moov, start)
        elif kind == b"trak":
            tracks.append(_track(moov, start, end))
    videos = [t for t in tracks if t.handler == b"vide"]
    if timescale <= 0 or duration <= 0 or not videos:
        raise _Unknown("no movie duration or no video track")
    video = videos[0]
    codec = VIDEO_CODECS.get(video.codec)
    if codec is None or video.width <= 0 or video.height <= 0 or video.samples <= 0:
        raise _Unknown("a video track this module does not know")
    if video.timescale <= 0 or video.duration <= 0 or video.sample_bytes > size:
        raise _Unknown("a video track without time, or with more bytes than the file")
    if not video.chunk_offsets or any(not 0 < o < size for o in video.chunk_offsets):
        raise _Unknown("chunks outside the file")
    audio = [t for t in tracks if t.handler == b"soun"]
    audio_codec = AUDIO_CODECS.get(audio[0].codec) if audio else None
    if audio and audio_codec is None:
        raise _Unknown("an audio codec this module does not name")
    width, height = video.width, video.height
    if video.rotated:
        width, height = height, width
    return MediaInfo(
        source=source,
        kind="video",
        format="mov" if brand == b"qt  " else "mp4",
        format_name=FORMAT_NAME,
        size_bytes=size,
        width=width,
        height=height,
        duration=round(duration / timescale, 6),
        fps=round(video.samples * video.timescale / video.duration, 3),
        video_codec=codec,
        has_audio=bool(audio),
        audio_codec=audio_codec,
        frame_count=video.samples,
    )


def _time_fields(data: bytes, start: int) -> tuple[int, int]:
    """(timescale, duration) of an mvhd or mdhd payload (version 0 or 1)."""
    if data[start] == 1:
        return struct.unpack_from(">IQ", data, start + 20)
    return struct.unpack_from(">II", data, start + 12)


def _track(data: bytes, start: int, end: int) -> _Track:
    track = _Track()
    stack = [(start, end)]
    while stack:
        lo, hi = stack.pop()
        for kind, s, e in _boxes(data, lo, hi):
            if kind in _CONTAINERS:
                stack.append((s, e))
            elif kind == b"tkhd":
                matrix = s + (52 if data[s] == 1 else 40)
                a, b = struct.unpack_from(">ii", data, matrix)
                track.rotated = a == 0 and b != 0
            elif kind == b"mdhd":
                track.timescale, track.duration = _time_fields(data, s)
            elif kind == b"hdlr" and not track.handler:
                # mdia's handler comes first; QuickTime's minf has a data handler ("alis") too
                track.handler = data[s + 8 : s + 12]
            elif kind == b"stsd":
                (count,) = struct.unpack_from(">I", data, s + 4)
                if count < 1:
                    raise _Unknown("empty sample description")
                entry = s + 8
                track.codec = data[entry + 4 : entry + 8]
                if track.handler == b"vide" or track.codec in VIDEO_CODECS:
                    track.width, track.height = struct.unpack_from(">HH", data, entry + 32)
            elif kind == b"stsz":
                sample_size, count = struct.unpack_from(">II", data, s + 4)
                track.samples = count
                if sample_size:
                    track.sample_bytes = sample_size * count
                else:
                    track.sample_bytes = sum(struct.unpack_from(f">{count}I", data, s + 12))
            elif kind in (b"stco", b"co64"):
                (count,) = struct.unpack_from(">I", data, s + 4)
                fmt = f">{count}{'I' if kind == b'stco' else 'Q'}"
                track.chunk_offsets = list(struct.unpack_from(fmt, data, s + 8))
    return track
