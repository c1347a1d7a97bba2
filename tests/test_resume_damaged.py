"""A damaged or truncated long recording journalled in parts gives the output of decoding it whole:
the same clips, the same count of damaged packets, the same verdict and error rows (each part
decodes a little before its start and past its end, so damage there must be counted once)."""

from __future__ import annotations

import subprocess

import av
import numpy as np
import pytest

import socialfeat.pipeline as pipeline
import socialfeat.workers as workers_module
from socialfeat.demo import synthetic_video
from socialfeat.extract import extract
from socialfeat.store import load_errors, load_features, load_videos

SPAN = 4.0  # s: the tests' grid (30 s in use)
CHECKPOINT = 2  # spans per part (20 in use): parts of 8 s


def _video_packet(path, at: float) -> tuple[int, int]:
    """(byte offset, size) of the video packet shown at ``at`` s."""
    with av.open(str(path)) as c:
        for packet in c.demux(c.streams.video[0]):
            if packet.pts is not None and abs(float(packet.pts * packet.time_base) - at) < 1e-3:
                return packet.pos, packet.size
    raise AssertionError(f"no video packet at {at} s")


@pytest.fixture(scope="module")
def damaged(tmp_path_factory):
    """A 20-s recording (index first, so that a cut file still opens) three times: cut inside its last
    packet before the parts' boundary at 16 s, cut inside the packet at 16.52 s (just after it: that
    part's first clip is too short to keep), and with the packet at 15.6 s damaged. The part from 16 s
    decodes from the keyframe at 14 s: it meets the damage before the boundary too."""
    root = tmp_path_factory.mktemp("damaged")
    synthetic_video(root / "src.mp4", 20.0, size="160x120", fps=25)
    source = root / "whole.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(root / "src.mp4"), "-c", "copy", "-movflags",
                    "+faststart", str(source)], check=True)
    data = source.read_bytes()
    folder = root / "videos"
    folder.mkdir()
    for name, at in (("cut_before_boundary.mp4", 15.96), ("cut_after_boundary.mp4", 16.52)):
        pos, size = _video_packet(source, at)
        (folder / name).write_bytes(data[:pos + size // 2])
    pos, size = _video_packet(source, 15.6)
    (folder / "damaged_before_boundary.mp4").write_bytes(data[:pos + 16] + b"\xff" * (size - 32) + data[pos + size - 16:])
    return folder


def _run(folder, out, ckpt, workers):
    extract([folder], out, weights=ckpt, device="cpu", workers=workers, batch_size=2, progress=False)
    return load_features(out, embeddings="all"), load_videos(out), load_errors(out)


@pytest.fixture(scope="module")
def whole(damaged, tiny_ckpt, tmp_path_factory):
    with pytest.MonkeyPatch.context() as m:
        m.setattr(pipeline, "SPAN_SECONDS", SPAN)
        return _run(damaged, tmp_path_factory.mktemp("whole") / "whole.h5", tiny_ckpt, workers=0)  # one part


# (two workers also share the recordings, at cuts that depend on timing: a truncated recording may then
# end in a part past the data; merge_parts writes the verdict of the whole video whichever part that is)
@pytest.fixture(scope="module", params=[0, 1, 2], ids=["workers0", "workers1", "workers2"])
def parts(damaged, tiny_ckpt, tmp_path_factory, request):
    with pytest.MonkeyPatch.context() as m:
        m.setattr(pipeline, "SPAN_SECONDS", SPAN)
        m.setattr(workers_module, "CHECKPOINT_SPANS", CHECKPOINT)
        return _run(damaged, tmp_path_factory.mktemp("parts") / "parts.h5", tiny_ckpt, workers=request.param)


def _of(tables, path: str):
    return [t[t["path"] == path].reset_index(drop=True) for t in tables]


FACTS = ["path", "status", "error", "n_clips", "decoded_duration_s", "audio_duration_s", "audio_gap_s",
         "decode_errors", "has_audio", "duration_s"]


def _assert_same(got, expected, error_rows: bool = True) -> None:
    """The same clips (embeddings to the bit), video row and (``error_rows``) error rows."""
    assert got[0]["clip_index"].tolist() == expected[0]["clip_index"].tolist()
    embeddings = [c for c in expected[0].columns if c.startswith(("joint_", "audio_", "visual_"))]
    np.testing.assert_array_equal(got[0][embeddings].to_numpy(), expected[0][embeddings].to_numpy())
    assert got[1][FACTS].to_dict("records") == expected[1][FACTS].to_dict("records")
    if error_rows:
        assert got[2][["stage", "message"]].to_dict("records") == \
            expected[2][["stage", "message"]].to_dict("records")


def test_a_recording_cut_just_after_a_parts_boundary_has_the_clips_of_decoding_it_whole(whole, parts):
    """The part after the boundary holds only a clip too short to keep (the video's first clip is kept
    however short, a part's first clip is not)."""
    expected = _of(whole, "cut_after_boundary.mp4")
    assert expected[1].loc[0, "status"] == "truncated"
    _assert_same(_of(parts, "cut_after_boundary.mp4"), expected)


@pytest.mark.parametrize("name", ["cut_before_boundary.mp4", "damaged_before_boundary.mp4"])
def test_damage_near_a_parts_boundary_is_counted_once(whole, parts, name):
    """Both parts decode the damaged packet (the earlier one on to its first frame at or after its end,
    the later one from a keyframe before its start): one damaged packet, one verdict, as decoded whole."""
    expected = _of(whole, name)
    assert expected[1].loc[0, "decode_errors"] == 1
    assert expected[1].loc[0, "status"] == ("truncated" if name.startswith("cut") else "damaged")
    # (cut: the part before the boundary also tells of its damaged packet, which decoding whole tells by
    # its truncated verdict alone: the merged record drops that row)
    _assert_same(_of(parts, name), expected)
