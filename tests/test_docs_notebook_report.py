"""The researcher-facing material: the docs site builds strictly, the analysis notebook runs top to
bottom on a file the real pipeline produced, and the HTML report renders in headless Chromium."""

from __future__ import annotations

import base64
import io
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import numpy as np
import pytest
from annotation_files import write_eaf, write_textgrid
from conftest import run_cli
from nbclient import NotebookClient
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def analysed(corpus, tiny_ft_ckpt, tmp_path_factory) -> Path:
    """Features with predictions, a speaker column (segments CSV) and a gaze tier (ELAN and Praat files
    given to --annotate), made by the real CLI."""
    tmp = tmp_path_factory.mktemp("analysis")
    seg = tmp / "segments.csv"
    rows = ["video,start,end,speaker"]
    names = ("talk.mp4", "interview two.mkv", "vfr.mp4", "corrupt_mid.mp4")
    for name in names:
        rows += [f"{name},0,5,interviewer", f"{name},5,10,participant"]
    seg.write_text("\n".join(rows) + "\n")
    annotations = tmp / "annotations"
    annotations.mkdir()
    gaze = [("gaze", [(0.0, 3.0, "partner"), (3.0, 6.0, "away"), (6.0, 10.0, "partner")])]
    for k, name in enumerate(names):  # one file per recording, matched by name; both formats
        stem = name.rsplit(".", 1)[0]
        if k % 2:
            write_textgrid(annotations / f"{stem}.TextGrid", gaze, 10.0, fmt="short" if k == 3 else "long")
        else:
            write_eaf(annotations / f"{stem}.eaf", gaze, media=[(f"file:///lab/{name}", f"./{name}", 0)])
    out = tmp / "feats.h5"
    run_cli("extract", corpus["root"], "-o", out, "--weights", tiny_ft_ckpt, "--segments", seg, "--annotate",
            annotations, "--no-progress", "--workers", "0")
    return out


def test_docs_site_builds_in_strict_mode(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"),
                           "-d", str(tmp_path / "site")], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    cli_page = (tmp_path / "site" / "cli" / "index.html").read_text()
    for option in ("--missing-audio", "--tasks", "--resume", "--probe", "--retry-failed"):  # from the click commands
        assert option in cli_page
    assert "retry-failed" in (tmp_path / "site" / "what-happens-when" / "index.html").read_text()


def test_notebook_runs_top_to_bottom(analysed, monkeypatch):
    nb = nbformat.read(ROOT / "notebooks" / "analysis.ipynb", as_version=4)
    monkeypatch.setenv("SOCIALFEAT_FEATURES", str(analysed))
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "Mixed Linear Model Regression Results" in text and "speaker" in text
    assert "annotation tiers: ['gaze']" in text and 'C(Q("gaze"))[T.partner]' in text  # the tier as a predictor
    images = [o for o in outputs if o.output_type == "display_data" and "image/png" in o.data]
    assert len(images) >= 2


def _nonblank_png(data: bytes, min_side: int = 100) -> None:
    img = np.asarray(Image.open(io.BytesIO(data)).convert("L"), dtype=float)
    assert min(img.shape) >= min_side and img.std() > 5, (img.shape, img.std())


def test_report_renders_in_headless_chromium(analysed, tmp_path):
    report = tmp_path / "report.html"
    run_cli("report", analysed, "-o", report)
    html = report.read_text()
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    assert len(images) >= 2  # embedding overview + at least one timeline
    for b64 in images:
        _nonblank_png(base64.b64decode(b64))
    for needle in ("Provenance", "social-mae-tiny", "notes.mp4", "not a readable media file", "QC flags"):
        assert needle in html
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "Chromium is installed by install.sh"
    profile = tmp_path / "profile"
    dom = subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--dump-dom", report.as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert "Embedding overview" in dom.stdout
    shot = tmp_path / "shot.png"
    subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--window-size=1200,2400",
                    f"--screenshot={shot}", report.as_uri()], capture_output=True, timeout=120, check=True)
    _nonblank_png(shot.read_bytes(), min_side=1000)


def test_cli_reference_is_current_and_equals_help():
    """docs/cli.md is plain markdown (readable on GitHub) written from the commands; each section is
    exactly what `socialfeat COMMAND --help` prints."""
    from socialfeat.cli_reference import render

    text = (ROOT / "docs" / "cli.md").read_text()
    assert text == render(), "docs/cli.md is stale: python -m socialfeat.cli_reference > docs/cli.md"
    for command in ("extract", "models", "info"):
        shown = run_cli(command, "--help", env={"COLUMNS": "80"}).stdout
        assert f"## socialfeat {command}\n\n```text\n{shown}```" in text


@pytest.fixture(scope="module")
def silent_visual_only(corpus, tiny_ckpt, tmp_path_factory) -> Path:
    """A run that computed only the visual embedding, of recordings without audio (no joint)."""
    out = tmp_path_factory.mktemp("visual_only") / "visual.h5"
    run_cli("extract", corpus["noaudio"], corpus["vfr"], corpus["talk"], corpus["rotated"], "-o", out, "--weights",
            tiny_ckpt, "--embeddings", "visual", "--no-progress")
    return out


def test_notebook_and_report_use_the_visual_embedding_when_there_is_no_joint(silent_visual_only, monkeypatch,
                                                                             tmp_path):
    nb = nbformat.read(ROOT / "notebooks" / "analysis.ipynb", as_version=4)
    monkeypatch.setenv("SOCIALFEAT_FEATURES", str(silent_visual_only))
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert "embedding analysed: visual" in "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    page = tmp_path / "report.html"
    run_cli("report", silent_visual_only, "-o", page)
    assert 'alt="embedding overview"' in page.read_text()  # the PCA of the visual embeddings
