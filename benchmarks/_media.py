"""Benchmark media: talking-face videos made with ffmpeg + espeak-ng (same recipe as the tests)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from media_factory import require_tools, speech_wav, talking_video  # noqa: E402

X264 = ("-c:v", "libx264", "-preset", "veryfast", "-crf", "23", "-g", "50")  # the tests' encoding
# x264 as it comes (3 B-frames, B-pyramid), and without B-frames (as phones mostly record)
ENCODINGS = {"bframes": X264, "ippp": X264 + ("-bf", "0")}


def make_videos(folder: Path, n: int, seconds: float, size: str = "640x480", fps: int = 25,
                encoding: str = "bframes") -> list[Path]:
    require_tools()
    folder.mkdir(parents=True, exist_ok=True)
    speech = speech_wav(folder / "speech.wav", seconds)
    return [talking_video(folder / f"bench_{i}.mp4", seconds=seconds, size=size, fps=fps, audio=speech,
                          vcodec=ENCODINGS[encoding]) for i in range(n)]


def encoded_video(path: Path, seconds: float, size: str = "640x480", fps: int = 30, seed: int = 0) -> Path:
    """An H.264 + AAC file written with PyAV alone (for machines without the ffmpeg and
    espeak-ng programs, such as the lent GPU machine): the demo's talking face over a
    textured background, with a voiced track."""
    from socialfeat.demo import synthetic_video

    return synthetic_video(path, seconds, size=size, fps=fps, seed=seed)


def decode_all_streams(path: str) -> float:
    """Decode every stream of a file with PyAV, one thread: the decode limit per core. Returns the
    seconds it took (in the process that decoded it)."""
    import time

    import av

    t0 = time.perf_counter()
    with av.open(path) as c:
        for stream in c.streams:
            stream.thread_count = 1
        for _ in c.decode(*c.streams):
            pass
    return time.perf_counter() - t0


def concatenated(src: Path, repeats: int, out: Path) -> Path:
    """``src`` played ``repeats`` times in one file, remuxed without re-encoding: a long recording in
    seconds, for runs whose corpus is a few long files. Every stream is shifted by the same time per
    repeat, the longest stream's span from its first decoding time to its last packet's end (an AAC
    track's priming packet starts before 0, so the streams' durations would overlap the repeats)."""
    import math
    from fractions import Fraction

    import av

    first: dict[int, int] = {}
    end: dict[int, int] = {}
    with av.open(str(src)) as c0:
        time_bases = {s.index: s.time_base for s in c0.streams}
        for packet in c0.demux():
            if packet.dts is None:
                continue
            i = packet.stream.index
            first[i] = min(first.get(i, packet.dts), packet.dts)
            end[i] = max(end.get(i, 0), max(packet.pts or packet.dts, packet.dts) + (packet.duration or 0))
    span = max(Fraction(end[i] - first[i]) * time_bases[i] for i in first)
    shifts = {i: math.ceil(span / tb) for i, tb in time_bases.items()}
    with av.open(str(out), "w") as dst:
        with av.open(str(src)) as c0:
            streams = {s.index: dst.add_stream_from_template(s) for s in c0.streams}
        for k in range(repeats):
            with av.open(str(src)) as c:
                for packet in c.demux():
                    if packet.dts is None:
                        continue
                    shift = k * shifts[packet.stream.index]
                    packet.pts = None if packet.pts is None else packet.pts + shift
                    packet.dts += shift
                    packet.stream = streams[packet.stream.index]
                    dst.mux(packet)
    return out
