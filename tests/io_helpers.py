"""Independent decoding through ffmpeg's command line, to check socialfeat's own decoder."""

from __future__ import annotations

import subprocess

import numpy as np


def ffprobe_frame_times(path) -> np.ndarray:
    out = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries",
                          "frame=pts_time", "-of", "csv=p=0", str(path)], capture_output=True, text=True, check=True)
    return np.array([float(x.strip(",")) for x in out.stdout.split() if x.strip(",")])


def ffmpeg_frame(path, index: int, w: int, h: int) -> np.ndarray:
    """Frame number ``index`` as ffmpeg's command line decodes it (autorotated), RGB uint8."""
    raw = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-vf", f"select=eq(n\\,{index})",
                          "-vsync", "0", "-frames:v", "1", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
                         capture_output=True, check=True).stdout
    return np.frombuffer(raw, np.uint8).reshape(h, w, 3)


def ffmpeg_audio(path, start: float, duration: float) -> np.ndarray:
    """Mono 16 kHz float32 samples of [start, start + duration)."""
    # output-side -ss: decode from the start and trim exactly (input seeking lands on AAC frame boundaries)
    raw = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-ss", str(start), "-t", str(duration),
                          "-vn", "-ac", "1", "-ar", "16000", "-f", "f32le", "-"], capture_output=True, check=True).stdout
    return np.frombuffer(raw, np.float32).copy()
