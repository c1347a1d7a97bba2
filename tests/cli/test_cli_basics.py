"""The console script itself: version, model list, help."""

from __future__ import annotations

from conftest import run_cli

from socialfeat import __version__
from socialfeat.models import list_pretrained


def test_version():
    proc = run_cli("--version")
    assert proc.returncode == 0 and __version__ in proc.stdout


def test_models_lists_every_entry_and_cache_state(tmp_path):
    proc = run_cli("models", env={"SOCIALFEAT_HOME": str(tmp_path)})
    assert proc.returncode == 0
    for name in list_pretrained():
        assert name in proc.stdout
    assert "cached (" not in proc.stdout
    (tmp_path / "social-mae.pth").write_bytes(b"x" * (3 << 20))
    proc = run_cli("models", env={"SOCIALFEAT_HOME": str(tmp_path)})
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("social-mae "))
    assert "cached (3 MiB, not verified yet)" in line  # a file placed by hand is hashed at its first use


def test_extract_requires_inputs(tmp_path):
    proc = run_cli("extract", "-o", tmp_path / "x.h5", check=False)
    assert proc.returncode == 2 and "input" in proc.stderr
