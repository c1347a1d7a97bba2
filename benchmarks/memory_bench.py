"""Peak memory of ``socialfeat extract`` against recording length (it should stay flat).

Extracts a short and a long recording with the same settings, each in a fresh process, and
prints the peak resident memory of each run and their ratio. The default pair is the one the
docs quote: 10 minutes against 2 hours, 48 kHz stereo AAC (a camera's usual audio), small
frames at a low frame rate so that the files are quick to make and the audio dominates.
  python benchmarks/memory_bench.py                       # 600 s vs 7200 s, 48 kHz stereo
  python benchmarks/memory_bench.py --short 60 --long 240 --size 1280x720 --fps 25 --audio-rate 16000 --channels 1
Run it with another checkout on PYTHONPATH to measure that code on the same files (--cache keeps them).
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

from socialfeat.models import create_model, save_checkpoint


def peak_rss_mb(args: list[str]) -> float:
    """Peak RSS (MiB) of the largest process of a child process tree running ``args``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    subprocess.run(args, check=True, capture_output=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(before, after) / 1024


def make_recording(path: Path, seconds: float, size: str, fps: int, audio_rate: int, channels: int) -> Path:
    """H.264 test pattern + AAC audio (a tone over noise), made with ffmpeg; kept if already there."""
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    layout = "stereo" if channels == 2 else "mono"
    audio = (f"sine=frequency=220:sample_rate={audio_rate}:duration={seconds}[s];"
             f"anoisesrc=a=0.05:r={audio_rate}:d={seconds}:seed=3[n];[s][n]amix=inputs=2,"
             f"aformat=channel_layouts={layout}[a]")
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", f"testsrc2=size={size}:rate={fps}:d={seconds}",
                    "-filter_complex", audio, "-map", "0:v", "-map", "[a]", "-c:v", "libx264", "-preset", "ultrafast",
                    "-g", str(4 * fps), "-c:a", "aac", "-b:a", "128k", "-ar", str(audio_rate), "-ac", str(channels),
                    "-t", str(seconds), str(path)], check=True)
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--short", type=float, default=600.0, help="seconds of the short recording")
    p.add_argument("--long", type=float, default=7200.0, help="seconds of the long recording")
    p.add_argument("--size", default="160x120")
    p.add_argument("--fps", type=int, default=5)
    p.add_argument("--audio-rate", type=int, default=48000)
    p.add_argument("--channels", type=int, choices=(1, 2), default=2)
    p.add_argument("--workers", type=int, default=0, help="0: one process (decoding and model); the peak is its")
    p.add_argument("--cache", type=Path, default=None, help="folder keeping the generated recordings")
    args = p.parse_args()
    exe = str(Path(sys.executable).parent / "socialfeat")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cache = args.cache or tmp
        ckpt = save_checkpoint(create_model("social-mae-tiny"), tmp / "tiny.pt")
        figures = {}
        for label, seconds in (("short", args.short), ("long", args.long)):
            name = f"rec_{seconds:.0f}s_{args.size}_{args.fps}fps_{args.audio_rate}hz_{args.channels}ch.mp4"
            video = make_recording(cache / name, seconds, args.size, args.fps, args.audio_rate, args.channels)
            cmd = [exe, "-q", "extract", str(video), "-o", str(tmp / f"{label}.h5"), "--weights", str(ckpt),
                   "--workers", str(args.workers), "--no-progress"]
            # a fresh interpreter per measurement, so the two peaks do not mix
            figures[label] = float(subprocess.run(
                [sys.executable, "-c", f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
                                       f"from memory_bench import peak_rss_mb; print(peak_rss_mb({cmd!r}))"],
                check=True, capture_output=True, text=True).stdout.strip())
            print(f"{label:5s} {seconds:6.0f} s {args.size} {args.fps} fps, {args.audio_rate} Hz x{args.channels}: "
                  f"peak RSS {figures[label]:7.1f} MiB", flush=True)
    print(f"ratio long/short ({args.long / args.short:.0f}x the length): {figures['long'] / figures['short']:.2f}")


if __name__ == "__main__":
    main()
