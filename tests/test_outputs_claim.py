"""An output claimed by one run of this process cannot be claimed by another of its threads (POSIX
locks belong to the process, so two ``extract`` calls from threads of one notebook both got it)."""

from __future__ import annotations

import subprocess
import sys
import threading

import pytest

from socialfeat.errors import OutputBusyError
from socialfeat.outputs import claim_output, lock_path


def test_a_second_thread_of_the_process_is_refused_and_may_claim_once_released(tmp_path):
    out = tmp_path / "feats.h5"
    inside, release, refused = threading.Event(), threading.Event(), []

    def first_run():
        with claim_output(out):
            inside.set()
            release.wait(10)

    holder = threading.Thread(target=first_run)
    holder.start()
    assert inside.wait(10)
    try:
        with pytest.raises(OutputBusyError, match="another run in this process is writing it"):
            with claim_output(out):
                pass
        other = threading.Thread(target=lambda: refused.append(_try_claim(out)))
        other.start()
        other.join(10)
        assert refused == [False]
    finally:
        release.set()
        holder.join(10)
    assert _try_claim(out)  # released: claimed again (and given back)


def _try_claim(out) -> bool:
    try:
        with claim_output(out):
            return True
    except OutputBusyError:
        return False


def test_a_run_that_finds_the_lock_just_taken_names_its_holder(tmp_path):
    """The holder writes its line just after it locks: a run that comes in between waits for the line
    instead of reporting 'pid unknown' (this made two simultaneous runs' message depend on timing)."""
    out = tmp_path / "feats.h5"
    holder = subprocess.Popen([sys.executable, "-c", f"""
import fcntl, os, sys, time
fd = os.open({str(lock_path(out))!r}, os.O_RDWR | os.O_CREAT, 0o666)
fcntl.lockf(fd, fcntl.LOCK_EX)
print("locked", flush=True)
time.sleep(0.2)
os.pwrite(fd, b"pid 4242 on elsewhere\\n", 0)
time.sleep(5)
"""], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(OutputBusyError, match=r"another run is writing it \(pid 4242 on elsewhere\)"):
            with claim_output(out):
                pass
    finally:
        holder.kill()
        holder.wait()
