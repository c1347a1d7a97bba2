"""Benchmark media: talking-face videos made with ffmpeg + espeak-ng (same recipe as the tests)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from media_factory import require_tools, speech_wav, talking_video  # noqa: E402


def make_videos(folder: Path, n: int, seconds: float, size: str = "640x480") -> list[Path]:
    require_tools()
    folder.mkdir(parents=True, exist_ok=True)
    speech = speech_wav(folder / "speech.wav", seconds)
    return [talking_video(folder / f"bench_{i}.mp4", seconds=seconds, size=size, audio=speech) for i in range(n)]


def encoded_video(path: Path, seconds: float, size: str = "640x480", fps: int = 30, seed: int = 0) -> Path:
    """An H.264 + AAC file written with PyAV alone (for machines without the ffmpeg and
    espeak-ng programs, such as the lent GPU machine): a textured scene with a moving
    bright square, so the encoder has real work and the decoder real motion, and a
    chirp with noise as the audio track."""
    import av
    import numpy as np

    w, h = (int(x) for x in size.split("x"))
    rng = np.random.default_rng(seed)
    texture = rng.integers(0, 255, (h // 8, w // 8, 3), dtype=np.uint8).repeat(8, 0).repeat(8, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as out:
        vs = out.add_stream("libx264", rate=fps, options={"preset": "veryfast", "crf": "23", "g": str(2 * fps)})
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        vs.thread_count = 1
        sr = 16000
        aus = out.add_stream("aac", rate=sr, layout="mono")
        n_frames = int(seconds * fps)
        for i in range(n_frames):
            img = np.roll(texture, shift=(i * 2) % w, axis=1)
            x = int((w - 64) * (0.5 + 0.5 * np.sin(i / fps)))
            y = int((h - 64) * (0.5 + 0.5 * np.cos(i / (1.3 * fps))))
            img[y:y + 64, x:x + 64] = 255
            for packet in vs.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in vs.encode():
            out.mux(packet)
        t = np.arange(int(seconds * sr)) / sr
        wave = (0.3 * np.sin(2 * np.pi * (200 + 50 * t) * t) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)
        for start in range(0, wave.size, 1024):
            frame = av.AudioFrame.from_ndarray(wave[None, start:start + 1024], format="fltp", layout="mono")
            frame.sample_rate = sr
            for packet in aus.encode(frame):
                out.mux(packet)
        for packet in aus.encode():
            out.mux(packet)
    return path
