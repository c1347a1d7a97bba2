"""Face-centred visual input (``extract --crop face``): detect faces on the frames a clip
samples, link them into tracks, and crop a square around each face.

Social-MAE was pretrained on VoxCeleb2's face-centred crops; wide shots of interviews waste
that training. The detector is OpenCV's frontal-face Haar cascade, whose weights ship inside
the ``opencv-python-headless`` 4.x wheel (``pip install 'socialfeat[faces]'``): offline,
~40 ms per 640x480 frame on one core, and on the tests' composited faces within a few pixels
of the true face (docs/faces.md records the comparison). Tracking is IoU-based within a clip
and carried to the next clip by the same rule; no identity recognition is attempted.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from socialfeat.errors import MissingDependencyError

CROP_SCALE = 1.8  # square side / face size: roughly the framing of VoxCeleb2 crops
MIN_IOU = 0.2  # boxes in consecutive frames overlapping more than this belong to one track
MIN_TRACK_SHARE = 0.25  # tracks seen on fewer sampled frames are treated as false detections


@dataclass(frozen=True)
class Box:
    x: float
    y: float
    w: float
    h: float

    @property
    def center(self) -> tuple[float, float]:
        return self.x + self.w / 2, self.y + self.h / 2

    def iou(self, other: "Box") -> float:
        ix = max(0.0, min(self.x + self.w, other.x + other.w) - max(self.x, other.x))
        iy = max(0.0, min(self.y + self.h, other.y + other.h) - max(self.y, other.y))
        inter = ix * iy
        union = self.w * self.h + other.w * other.h - inter
        return inter / union if union > 0 else 0.0

    def square(self, scale: float = CROP_SCALE) -> "Box":
        side = max(self.w, self.h) * scale
        cx, cy = self.center
        return Box(cx - side / 2, cy - side / 2, side, side)

    def text(self) -> str:
        return f"{self.x:.0f},{self.y:.0f},{self.w:.0f},{self.h:.0f}"


class FaceDetector:
    def __init__(self, min_face_fraction: float = 0.06):
        try:
            import cv2
        except ImportError:
            raise MissingDependencyError("--crop face needs OpenCV 4: pip install 'socialfeat[faces]'") from None
        path = getattr(getattr(cv2, "data", None), "haarcascades", None)
        if not path:
            raise MissingDependencyError("this OpenCV ships no Haar cascades (OpenCV 5 dropped them): "
                               "pip install 'opencv-python-headless<5'")
        self._cv2 = cv2
        self.cascade = cv2.CascadeClassifier(path + "haarcascade_frontalface_default.xml")
        self.min_face_fraction = min_face_fraction

    def __call__(self, rgb: np.ndarray) -> list[Box]:
        gray = self._cv2.cvtColor(rgb, self._cv2.COLOR_RGB2GRAY)
        side = max(24, int(self.min_face_fraction * min(gray.shape)))
        found = self.cascade.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5, minSize=(side, side))
        return [Box(float(x), float(y), float(w), float(h)) for x, y, w, h in found]


def link_tracks(detections: list[list[Box]]) -> list[dict[int, Box]]:
    """Tracks ({frame index: box}) from per-frame detections by greedy IoU matching with
    each track's latest box; tracks on too few frames are dropped; ordered left to right."""
    tracks: list[dict[int, Box]] = []
    for fi, boxes in enumerate(detections):
        pairs = sorted(((tr[max(tr)].iou(b), ti, bi) for ti, tr in enumerate(tracks) for bi, b in enumerate(boxes)),
                       reverse=True)
        used_t, used_b = set(), set()
        for iou, ti, bi in pairs:
            if iou < MIN_IOU or ti in used_t or bi in used_b:
                continue
            tracks[ti][fi] = boxes[bi]
            used_t.add(ti)
            used_b.add(bi)
        tracks += [{fi: b} for bi, b in enumerate(boxes) if bi not in used_b]
    n = max(1, len(detections))
    kept = [t for t in tracks if len(t) / n >= MIN_TRACK_SHARE]
    return sorted(kept, key=lambda t: np.mean([b.center[0] for b in t.values()]))


def boxes_for_all_frames(track: dict[int, Box], n_frames: int) -> list[Box]:
    """A box for every sampled frame: frames without a detection take the nearest one."""
    known = sorted(track)
    return [track[min(known, key=lambda k: (abs(k - fi), k))] for fi in range(n_frames)]


def crop(rgb: np.ndarray, box: Box) -> np.ndarray:
    """Square crop (black outside the frame), as uint8 RGB."""
    img = Image.fromarray(rgb).crop((round(box.x), round(box.y), round(box.x + box.w), round(box.y + box.h)))
    return np.asarray(img)


class TrackIds:
    """Keeps track ids consistent across the clips of one video: a track whose first box
    overlaps the last box of a track of the previous clip inherits its id."""

    def __init__(self):
        self.previous: dict[int, Box] = {}
        self.next_id = 0

    def assign(self, tracks: list[dict[int, Box]]) -> list[int]:
        ids, taken, last = [], set(), {}
        for tr in tracks:
            first = tr[min(tr)]
            best = max(((first.iou(b), i) for i, b in self.previous.items() if i not in taken), default=(0.0, None))
            if best[0] >= MIN_IOU:
                tid = best[1]
            else:
                tid, self.next_id = self.next_id, self.next_id + 1
            taken.add(tid)
            ids.append(tid)
            last[tid] = tr[max(tr)]
        self.previous = last
        return ids
