"""The console script itself: version, model list, help."""

from __future__ import annotations

import signal
import threading

from conftest import run_cli

from socialfeat import __version__
from socialfeat.cli import Terminated, _sigterm_as_interrupt
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


def test_sigterm_becomes_an_interrupt_only_around_the_run_and_only_in_the_main_thread():
    """The handler is the run's and goes with it; a command called from another thread (a program
    driving the CLI) cannot set one, and must still run."""
    before = signal.getsignal(signal.SIGTERM)
    with _sigterm_as_interrupt():
        handler = signal.getsignal(signal.SIGTERM)
        assert handler is not before
        try:
            handler(signal.SIGTERM, None)
            raise AssertionError("no Terminated raised")
        except Terminated:
            assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN  # a second SIGTERM: ignored
    assert signal.getsignal(signal.SIGTERM) is before

    errors = []

    def in_a_thread():
        try:
            with _sigterm_as_interrupt():
                pass
        except Exception as e:  # signal.signal outside the main thread raises ValueError
            errors.append(e)
    thread = threading.Thread(target=in_a_thread)
    thread.start()
    thread.join()
    assert errors == []
