"""Face detector accuracy and speed on generated frames (the tests' astronaut composite).

Prints the detection rate, the mean and max error of the face centre against the true
composited position, and milliseconds per frame, at two frame sizes.
  python benchmarks/face_bench.py
"""

from __future__ import annotations

import math
import time

import _media  # noqa: F401  (puts tests/ on the import path for media_factory)
import numpy as np
from media_factory import ASTRONAUT
from PIL import Image

from socialfeat.faces import FaceDetector


def main() -> None:
    det = FaceDetector()
    patch = np.asarray(Image.open(ASTRONAUT).convert("RGB"))
    for w, h in ((480, 360), (1280, 720)):
        scale = h / 360
        face = np.asarray(Image.fromarray(patch).resize((int(patch.shape[1] * scale), int(patch.shape[0] * scale))))
        ref = np.full((h, w, 3), (0x44, 0x55, 0x66), np.uint8)
        ref[h // 4:h // 4 + face.shape[0], w // 3:w // 3 + face.shape[1]] = face
        (b0,) = det(ref)
        off = (b0.center[0] - w // 3, b0.center[1] - h // 4)
        errors, found, times = [], 0, []
        for k in range(50):
            x = int(w * 0.1 + (w * 0.6) * (0.5 + 0.5 * math.sin(k / 7)))
            y = int(h * 0.1 + (h * 0.3) * (0.5 + 0.5 * math.cos(k / 5)))
            frame = np.full((h, w, 3), (0x44, 0x55, 0x66), np.uint8)
            frame[y:y + face.shape[0], x:x + face.shape[1]] = face
            t = time.perf_counter()
            boxes = det(frame)
            times.append(time.perf_counter() - t)
            if boxes:
                found += 1
                cx, cy = boxes[0].center
                errors.append(math.hypot(cx - (x + off[0]), cy - (y + off[1])))
        print(f"{w}x{h}: detected {found}/50, centre error mean {np.mean(errors):.1f} px, "
              f"max {np.max(errors):.1f} px, {1000 * np.mean(times):.1f} ms/frame")


if __name__ == "__main__":
    main()
