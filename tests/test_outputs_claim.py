"""An output claimed by one run of this process cannot be claimed by another of its threads (POSIX
locks belong to the process, so two ``extract`` calls from threads of one notebook both got it)."""

from __future__ import annotations

import threading

import pytest

from socialfeat.errors import OutputBusyError
from socialfeat.outputs import claim_output


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
