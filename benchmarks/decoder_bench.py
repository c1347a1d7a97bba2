"""PyAV (socialfeat's decoder) against decord on the same file, single thread.

Prints seconds for (a) decoding every frame to RGB, (b) the frames a Social-MAE
extraction samples (8 per 4 s), and their ratios. decord is optional
(`pip install -e .[bench]`).  Usage: python benchmarks/decoder_bench.py [--seconds 30]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import av
import numpy as np
from _media import make_videos

from socialfeat.media import FrameStream, probe


def pyav_all(path: Path) -> int:
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        s.thread_count = 1
        return sum(1 for f in c.decode(s) if f.to_ndarray(format="rgb24") is not None)


def pyav_sampled(path: Path, times: np.ndarray) -> int:
    return sum(1 for _ in FrameStream(probe(path), threads=1).at_times(times))


def decord_all(path: Path) -> int:
    import decord
    vr = decord.VideoReader(str(path), num_threads=1)
    n = len(vr)
    for i in range(0, n, 100):
        vr.get_batch(list(range(i, min(n, i + 100)))).asnumpy()
    return n


def decord_sampled(path: Path, times: np.ndarray) -> int:
    import decord
    vr = decord.VideoReader(str(path), num_threads=1)
    idx = np.minimum((times * vr.get_avg_fps()).astype(int), len(vr) - 1)
    vr.get_batch(list(idx)).asnumpy()
    return len(idx)


def timed(fn, *a) -> float:
    t = time.perf_counter()
    fn(*a)
    return time.perf_counter() - t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--size", default="1280x720")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        (path,) = make_videos(Path(tmp), 1, args.seconds, args.size)
        times = np.arange(0, args.seconds - 0.5, 0.5)
        res = {"pyav all frames": timed(pyav_all, path), "pyav sampled (2 fps)": timed(pyav_sampled, path, times)}
        try:
            res["decord all frames"] = timed(decord_all, path)
            res["decord sampled (2 fps)"] = timed(decord_sampled, path, times)
        except ImportError:
            print("decord not installed: pip install -e .[bench]")
    print(f"# {args.seconds:.0f} s {args.size} H.264, 1 thread")
    for k, v in res.items():
        print(f"{k:24s} {v:7.2f} s")
    if "decord all frames" in res:
        print(f"ratio decord/pyav: all frames {res['decord all frames'] / res['pyav all frames']:.2f}, "
              f"sampled {res['decord sampled (2 fps)'] / res['pyav sampled (2 fps)']:.2f}")


if __name__ == "__main__":
    main()
