"""``socialfeat demo``: try the whole tool before any weights arrive, offline, in about a minute.

Makes a few short talking-head-like videos (a drawn face whose mouth opens with the voice, a
voiced "speech" track with syllables; written with PyAV alone, no other program needed) and a
tiny randomly initialised Social-MAE, then runs extract -> load -> report as a user would. The
numbers mean nothing (the model is untrained); every file, table and column is the real thing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# (background colour, voice pitch in Hz, syllables per second): three "participants"
SPEAKERS = [((51, 102, 153), 120.0, 3.0), ((153, 51, 51), 210.0, 4.0), ((51, 153, 51), 160.0, 2.5)]
SAMPLE_RATE = 16000


def synthetic_speech(seconds: float, pitch: float, rate: float, seed: int = 0) -> np.ndarray:
    """A voiced signal with syllables and pauses: harmonics of ``pitch`` under two vowel-like
    formants, switched on and off at ``rate`` syllables per second (float32, 16 kHz)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    f0 = pitch * (1 + 0.05 * np.sin(2 * np.pi * 0.7 * t))
    phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
    voice = sum(np.sin(k * phase) * (np.exp(-((k * pitch - 700) / 300) ** 2) +
                                     0.6 * np.exp(-((k * pitch - 1200) / 400) ** 2)) for k in range(1, 30))
    syllables = np.clip(np.sin(2 * np.pi * rate * t), 0, None) ** 2
    pauses = (np.sin(2 * np.pi * 0.25 * t + rng.uniform(0, 6)) > -0.6).astype(float)
    wave = voice * syllables * pauses + 0.003 * rng.standard_normal(t.size)
    return (0.25 * wave / np.abs(wave).max()).astype(np.float32)


def _face(frame: np.ndarray, cx: int, cy: int, r: int, mouth_open: float) -> None:
    """Draw a face (skin disc, eyes, a mouth opening with the voice) into ``frame`` in place.
    Everything lies inside the skin's ellipse, so only its bounding box is computed (5x faster
    at 640x480 than the whole frame, same pixels)."""
    h, w, _ = frame.shape
    y0 = min(h, max(0, cy - int(1.25 * r) - 2))
    y1 = max(y0, min(h, cy + int(1.25 * r) + 3))
    x0 = min(w, max(0, cx - r - 2))
    x1 = max(x0, min(w, cx + r + 3))
    box = frame[y0:y1, x0:x1]
    yy, xx = np.ogrid[y0:y1, x0:x1]
    box[(xx - cx) ** 2 + ((yy - cy) * 0.8) ** 2 < r ** 2] = (224, 172, 140)
    for ex in (cx - r // 3, cx + r // 3):
        box[(xx - ex) ** 2 + (yy - (cy - r // 4)) ** 2 < (r // 8) ** 2] = (40, 30, 30)
    mh = max(2, int(r * 0.3 * mouth_open))
    box[((xx - cx) / (r * 0.35)) ** 2 + ((yy - (cy + r // 3)) / mh) ** 2 < 1] = (120, 30, 40)


def synthetic_video(path: str | Path, seconds: float, size: str = "320x240", fps: int = 25,
                    background: tuple[int, int, int] = (51, 102, 153), pitch: float = 150.0,
                    rate: float = 3.0, seed: int = 0) -> Path:
    """An H.264 + AAC file of a talking face, written with PyAV alone."""
    import av

    w, h = (int(x) for x in size.split("x"))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    wave = synthetic_speech(seconds, pitch, rate, seed)
    edges = np.arange(int(seconds * fps) + 1) * SAMPLE_RATE // fps  # each frame's samples (any fps)
    loudness = np.array([np.abs(wave[a:b]).mean() for a, b in zip(edges[:-1], edges[1:])])
    loudness = loudness / max(loudness.max(), 1e-6)
    rng = np.random.default_rng(seed)
    texture = (rng.integers(-12, 12, (h // 8, w // 8, 1)).repeat(8, 0).repeat(8, 1)[:h, :w]
               + np.array(background)).clip(0, 255).astype(np.uint8)
    with av.open(str(path), "w") as out:
        vs = out.add_stream("libx264", rate=fps, options={"preset": "veryfast", "crf": "23", "g": str(2 * fps)})
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        aus = out.add_stream("aac", rate=SAMPLE_RATE, layout="mono")
        for i in range(int(seconds * fps)):
            frame = texture.copy()
            cx = int(w / 2 + w / 8 * np.sin(2 * np.pi * i / (6 * fps)))
            cy = int(h / 2 + h / 12 * np.cos(2 * np.pi * i / (4 * fps)))
            _face(frame, cx, cy, min(w, h) // 4, float(loudness[i]))
            out.mux(vs.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        out.mux(vs.encode())
        for start in range(0, wave.size, 1024):
            chunk = av.AudioFrame.from_ndarray(wave[None, start:start + 1024], format="fltp", layout="mono")
            chunk.sample_rate = SAMPLE_RATE
            out.mux(aus.encode(chunk))
        out.mux(aus.encode())
    return path


@dataclass
class DemoResult:
    folder: Path
    videos: list[Path]
    weights: Path
    features: Path
    report: Path
    n_clips: int
    seconds: float


def run_demo(folder: str | Path, seconds: float = 12.0, progress: bool = False) -> DemoResult:
    """Videos, a tiny model, features, a report; all under ``folder``."""
    import socialfeat
    from socialfeat.extract import extract
    from socialfeat.models import create_model, save_checkpoint
    from socialfeat.report import build_report

    started = time.perf_counter()
    folder = Path(folder)
    videos = [synthetic_video(folder / "videos" / f"P{i + 1:02d}" / "session1.mp4", seconds, background=bg,
                              pitch=pitch, rate=rate, seed=i) for i, (bg, pitch, rate) in enumerate(SPEAKERS)]
    weights = save_checkpoint(create_model("social-mae-tiny"), folder / "tiny-untrained.pt")
    features = folder / "feats.h5"
    extract([folder / "videos"], features, weights=weights, progress=progress, workers=0,
            command_line="socialfeat demo")
    clips = socialfeat.load_features(features)
    report = build_report(features, folder / "report.html")
    return DemoResult(folder, videos, weights, features, report, len(clips), time.perf_counter() - started)
