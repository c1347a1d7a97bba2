"""Peak memory of assembling the output from a journal of many videos (extract's last step).

    python benchmarks/assemble_memory.py gen DIR --videos 2000 --clips 100
    python benchmarks/assemble_memory.py whole DIR    # every part read whole first, as runs did before
    python benchmarks/assemble_memory.py stream DIR   # read back one part at a time (JournalledVideo)

Each step is a process of its own: the figure is the rise of the peak RSS (ru_maxrss) over the
RSS before assembling, so imports and the interpreter do not count. ``whole`` uses only
Journal.read and assemble_output, so it also runs against code older than the streaming assembly.
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

import numpy as np

from socialfeat.store import EMBEDDING_KINDS, Journal, VideoResult, assemble_output

DIM = 768
LABELS = {"emotion": {"label_names": ["calm", "happy", "angry"], "task": "classification", "values": "probability"}}


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def generate(folder: Path, videos: int, clips: int) -> None:
    journal, rng = Journal(folder / "out.h5"), np.random.default_rng(0)
    for v in range(videos):
        vid = f"{v:016x}"
        rows = [{"video_id": vid, "path": f"v{v}.mp4", "clip_index": i, "start_s": 4.0 * i, "end_s": 4.0 * i + 4,
                 "window_s": 4.0, "coverage": 1.0, "n_frames": 16, "n_frames_padded": 0, "has_audio": True,
                 "coverage_audio": 1.0, "qc_flags": ""} for i in range(clips)]
        arrays = {k: rng.standard_normal((clips, DIM), dtype=np.float32) for k in EMBEDDING_KINDS}
        journal.write(VideoResult(video={"video_id": vid, "path": f"v{v}.mp4", "status": "ok", "n_clips": clips},
                                  clips=rows, embeddings=arrays,
                                  predictions={"emotion": rng.random((clips, 3), dtype=np.float32)}), "fp")


def assemble(folder: Path, mode: str) -> None:
    journal = Journal(folder / "out.h5")
    ids = sorted(p.stem for p in journal.dir.glob("*.h5"))
    before, t0 = rss_mib(), time.perf_counter()
    if mode == "whole":
        results = [journal.read(i)[0] for i in ids]
    else:
        from socialfeat.store import JournalledVideo
        results = []
        for i in ids:
            res = journal.read(i, arrays=False)[0]
            results.append(JournalledVideo(res.video, res.errors, len(res.clips), journal.part_path(i)))
    out = assemble_output(results, folder / f"{mode}.h5", {"socialfeat_version": "bench"}, DIM, LABELS)
    print(f"{mode}: {len(ids)} videos, {out.stat().st_size / 2**30:.2f} GiB written in "
          f"{time.perf_counter() - t0:.1f} s; peak RSS {peak_mib() - before:.0f} MiB above the "
          f"{before:.0f} MiB before assembly")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("step", choices=["gen", "whole", "stream"])
    ap.add_argument("folder", type=Path)
    ap.add_argument("--videos", type=int, default=2000)
    ap.add_argument("--clips", type=int, default=100)
    args = ap.parse_args()
    args.folder.mkdir(parents=True, exist_ok=True)
    if args.step == "gen":
        generate(args.folder, args.videos, args.clips)
    else:
        assemble(args.folder, args.step)


if __name__ == "__main__":
    main()
