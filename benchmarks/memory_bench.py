"""Peak memory of ``socialfeat extract`` against recording length (it should stay flat).

Extracts a short and a 4x longer recording with the same settings, each in a fresh
process, and prints the peak resident memory of each run and their ratio.
  python benchmarks/memory_bench.py --seconds 60
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

from _media import make_videos
from socialfeat.models import create_model, save_checkpoint


def peak_rss_mb(args: list[str]) -> float:
    """Peak RSS (MiB) of a child process tree running ``args``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    subprocess.run(args, check=True, capture_output=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(before, after) / 1024


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--size", default="1280x720")
    args = p.parse_args()
    exe = str(Path(sys.executable).parent / "socialfeat")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ckpt = save_checkpoint(create_model("social-mae-tiny"), tmp / "tiny.pt")
        figures = {}
        for label, seconds in (("short", args.seconds), ("long", 4 * args.seconds)):
            (video,) = make_videos(tmp / label, 1, seconds, args.size)
            cmd = [exe, "-q", "extract", str(video), "-o", str(tmp / f"{label}.h5"), "--weights", str(ckpt),
                   "--workers", "0", "--no-progress"]
            # a fresh interpreter per measurement, so the two peaks do not mix
            figures[label] = float(subprocess.run(
                [sys.executable, "-c", f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
                                       f"from memory_bench import peak_rss_mb; print(peak_rss_mb({cmd!r}))"],
                check=True, capture_output=True, text=True).stdout.strip())
            print(f"{label:5s} {seconds:6.0f} s {args.size}: peak RSS {figures[label]:7.1f} MiB")
    print(f"ratio long/short (4x the length): {figures['long'] / figures['short']:.2f}")


if __name__ == "__main__":
    main()
