"""The one GPU script (benchmarks/gpu_all.py) runs whole on a CPU: a lent GPU slot is short and
has no network, so a script that breaks there wastes it. Its figures also carry checks of their own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_gpu_script_runs_every_section_on_a_cpu(tmp_path):
    args = [sys.executable, str(ROOT / "benchmarks" / "gpu_all.py"), "--device", "cpu", "--arch", "social-mae-tiny",
            "--seconds", "0.2", "--e2e-videos", "2", "--e2e-seconds", "8", "--piece-seconds", "4", "--sweep-videos", "1",
            "--e2e-sizes", "320x240", "--skip-compile", "--long-videos", "1", "--long-repeats", "3",
            "--sections", "e2e,encode,pretrain,profile"]
    proc = subprocess.run(args, cwd=tmp_path, env={**os.environ, "OUT": str(tmp_path)}, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    figures = json.loads((tmp_path / "gpu_figures.json").read_text())
    assert not [k for k in figures if k.endswith("_error")], figures

    size = figures["end_to_end"]["sizes"][0]
    runs = size["runs"] + size["long_recordings"]["runs"] + size["sweep"]["runs"]
    assert {r["run"] for r in runs} >= {"defaults", "descriptor_handover", "noop_encoder", "long_shared",
                                        "long_not_shared", "sweep1"}
    assert all(r["clips"] == r["clips_expected"] > 0 for r in runs), runs
    assert all(r["start_to_first_batch_s"] is not None for r in size["runs"])
    assert size["same_numbers_both_handovers"] == {**size["same_numbers_both_handovers"], "same_rows": True,
                                                   "max_abs_diff": 0.0}

    encode = {r["variant"]: r for r in figures["encode"] if r["batch"] == 64}
    for variant in ("fp32", "bf16_weights", "fp8 fc1+fc2", "fp8 qkv+proj+fc1+fc2", "bf16_weights fused_gelu"):
        assert "error" not in encode[variant], encode[variant]
    assert min(encode["bf16_weights"]["cosine_min_to_fp32"].values()) > 0.9999
    assert min(encode["bf16_weights fused_gelu"]["cosine_min_to_fp32"].values()) > 0.9999  # (tanh GELU)
    # fp8 (simulated on the CPU) is close to fp32, and the MLPs alone closer than every layer
    mlp, every = (min(encode[v]["cosine_min_to_fp32"].values()) for v in ("fp8 fc1+fc2", "fp8 qkv+proj+fc1+fc2"))
    assert 0.99 < every < mlp < 1.0
    assert figures["pretrain"]["clips_per_s"] > 0
    assert [r["variant"] for r in figures["profile"]] == ["bf16_weights"]  # (no CUDA kernels on a CPU)
