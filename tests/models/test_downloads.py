"""Downloads of named weights against a real HTTP server on 127.0.0.1 (no mocks of the network):
whole or refused, HTML pages refused, Drive's confirmation page followed, retries, resume, lock,
checksum recorded once, offline switch."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from weights_server import WeightsServer, serialise

from socialfeat.models import (
    WeightsUnavailableError,
    create_model,
    digest,
    download,
    hub,
    load_model,
    registry,
)
from socialfeat.models.hub import ChecksumError, fetch
from socialfeat.models.registry import PretrainedCfg

TESTS = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def blobs() -> dict[str, bytes]:
    torch.manual_seed(0)
    return {"tiny.pth": serialise(create_model("social-mae-tiny").state_dict()),  # an official-style state dict
            "cav.pth": serialise(create_model("cav-mae-tiny").state_dict()),
            "junk.pth": bytes(range(256)) * 64}


@pytest.fixture
def server(blobs):
    with WeightsServer() as srv:
        srv.files.update(blobs)
        yield srv


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("SOCIALFEAT_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("SOCIALFEAT_OFFLINE", raising=False)
    monkeypatch.setattr(download, "BACKOFF_S", 0.01)
    return tmp_path / "cache"


@pytest.fixture
def entry(server, cache, monkeypatch):
    """Register 'served-tiny' (tiny Social-MAE architecture) at a route of the test server."""
    def make(route: str, **kw) -> PretrainedCfg:
        cfg = PretrainedCfg(name="served-tiny", arch="social-mae-tiny", kind="pretrain", url=server.url + route,
                            filename="served-tiny.pth", description="test entry", origin="test server",
                            license="none", **kw)
        monkeypatch.setitem(registry._PRETRAINED, cfg.name, cfg)
        return cfg
    return make


def cached_files(cache: Path) -> list[str]:
    """What the cache holds, apart from the (empty) lock files that stay by design."""
    return sorted(p.name for p in cache.iterdir() if not p.name.endswith(".lock")) if cache.exists() else []


def refusal(name: str = "served-tiny") -> str:
    with pytest.raises(WeightsUnavailableError) as e:
        fetch(name, progress=False)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{name}: ")
    return msg


def test_good_download_is_recorded_and_loads(entry, server, blobs, cache):
    entry("/good/tiny.pth")
    path = fetch("served-tiny", progress=False)
    assert path.read_bytes() == blobs["tiny.pth"]
    sha = hashlib.sha256(blobs["tiny.pth"]).hexdigest()
    assert cached_files(cache) == ["served-tiny.pth", "served-tiny.pth.sha256.json"]
    rec = json.loads((cache / "served-tiny.pth.sha256.json").read_text())
    assert rec["sha256"] == sha and rec["size"] == len(blobs["tiny.pth"])
    model = load_model("served-tiny")  # the cached file now; no second request
    assert model.info.sha256 == sha and model.info.name == "served-tiny"
    assert len(server.hits("/good/")) == 1


def test_connection_closed_halfway_is_refused(entry, server, cache):
    entry("/cut/tiny.pth")
    msg = refusal()
    assert "connection closed after" in msg and "gave up after" in msg
    assert cached_files(cache) == []
    assert len(server.hits("/cut/")) == download.RETRIES + 1  # bounded: no new bytes, no endless retries


@pytest.mark.parametrize("route", ["/html", "/html-as-binary"])
def test_html_page_is_refused(entry, server, cache, route):
    entry(route)
    msg = refusal()
    assert "HTML page" in msg and "Quota exceeded" in msg
    assert cached_files(cache) == []


@pytest.mark.parametrize("route", ["/drive/uc?id=tiny.pth&export=download",
                                   "/drive-old/uc?id=tiny.pth&export=download"])
def test_drive_confirmation_page_is_followed(entry, server, blobs, cache, route):
    entry(route)
    assert fetch("served-tiny", progress=False).read_bytes() == blobs["tiny.pth"]
    assert len(server.log) == 2  # the page, then the file


def test_transient_503_is_retried(entry, server, blobs, cache):
    entry("/flaky/tiny.pth")
    assert fetch("served-tiny", progress=False).read_bytes() == blobs["tiny.pth"]
    assert len(server.hits("/flaky/")) == 3


def test_interrupted_download_resumes_with_range(entry, server, blobs, cache):
    entry("/resume/tiny.pth")
    assert fetch("served-tiny", progress=False).read_bytes() == blobs["tiny.pth"]
    assert [r for _, r in server.hits("/resume/")] == [None, f"bytes={len(blobs['tiny.pth']) // 2}-"]


def test_a_file_replaced_behind_its_url_is_not_joined_from_two_versions(entry, server, blobs, cache):
    """The first request is cut at half; before the retry the server's file becomes another checkpoint of
    the same shapes (nothing but a checksum, which released weights lack, would tell a mix): the resume
    asks If-Range with the first version's ETag and gets the whole new file, never half of each."""
    torch.manual_seed(1)
    new = serialise(create_model("social-mae-tiny").state_dict())
    assert len(new) == len(blobs["tiny.pth"]) and new != blobs["tiny.pth"]
    server.replacement["tiny.pth"] = new
    entry("/replaced/tiny.pth")
    assert fetch("served-tiny", progress=False).read_bytes() == new
    assert [r for _, r in server.hits("/replaced/")] == [None, f"bytes={len(new) // 2}-"]
    assert not any(name.endswith((".part", ".validator")) for name in cached_files(cache))  # nothing left over


def test_partial_file_of_a_killed_run_is_resumed(entry, server, blobs, cache):
    entry("/good/tiny.pth")
    half = len(blobs["tiny.pth"]) // 3
    cache.mkdir()
    (cache / ".served-tiny.pth.part").write_bytes(blobs["tiny.pth"][:half])
    assert fetch("served-tiny", progress=False).read_bytes() == blobs["tiny.pth"]
    assert server.hits("/good/") == [("/good/tiny.pth", f"bytes={half}-")]


@pytest.mark.parametrize("blob, reason", [("cav.pth", "does not fit SocialMAE"),
                                          ("junk.pth", "not a readable PyTorch checkpoint")])
def test_file_that_does_not_fit_the_architecture_is_refused(entry, cache, blob, reason):
    cfg = entry(f"/good/{blob}")
    msg = refusal()
    assert reason in msg and cfg.url in msg and "nothing was cached" in msg
    assert cached_files(cache) == []


def test_published_checksum_is_enforced(entry, blobs, cache):
    entry("/good/tiny.pth", sha256="0" * 64)
    assert "differs from the published" in refusal()
    assert cached_files(cache) == []
    entry("/good/tiny.pth", sha256=hashlib.sha256(blobs["tiny.pth"]).hexdigest())
    assert fetch("served-tiny", progress=False).is_file()


def test_checksum_is_computed_once_while_size_and_mtime_hold(entry, cache, monkeypatch):
    entry("/good/tiny.pth")
    path = fetch("served-tiny", progress=False)
    calls = []

    def counting(p, *a):
        calls.append(Path(p).name)
        return hashlib.sha256(Path(p).read_bytes()).hexdigest()
    monkeypatch.setattr(digest, "sha256_file", counting)
    monkeypatch.setattr(hub, "sha256_file", counting)
    fetch("served-tiny", progress=False)
    load_model("served-tiny")
    assert calls == []
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # e.g. copied with a new mtime
    fetch("served-tiny", progress=False)
    assert calls == ["served-tiny.pth"]
    assert digest.read_record(path)["mtime_ns"] == st.st_mtime_ns + 10**9
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF  # same size, other content
    path.write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match="does not match"):
        fetch("served-tiny", progress=False)


def test_offline_switch_never_touches_the_network(entry, server, cache, monkeypatch):
    entry("/good/tiny.pth")
    monkeypatch.setenv("SOCIALFEAT_OFFLINE", "1")
    msg = refusal()
    assert str(cache / "served-tiny.pth") in msg and "SOCIALFEAT_OFFLINE" in msg and "--weights PATH" in msg
    assert server.log == []


def test_two_processes_download_once(entry, server, blobs, cache):
    cfg = entry("/slow/tiny.pth")
    entries = json.dumps([{k: v for k, v in vars(cfg).items() if k not in ("label_names", "model_overrides")}])
    cmd = [sys.executable, str(TESTS / "registered.py"), entries, "--wait-for-go",
           "models", "--download", "served-tiny", "--no-progress"]
    procs = [subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "SOCIALFEAT_HOME": str(cache)}) for _ in range(2)]
    try:
        for p in procs:
            assert p.stdout.readline().strip() == "ready"
        for p in procs:
            p.stdin.write("go\n")
            p.stdin.flush()
        outs = [p.communicate(timeout=60) for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [0, 0], [err for _, err in outs]
    assert len(server.hits("/slow/")) == 1
    assert any("another process is downloading it; waiting" in err for _, err in outs)
    sha = hashlib.sha256(blobs["tiny.pth"]).hexdigest()
    assert all(f"sha256 {sha}" in out for out, _ in outs)


def test_a_file_placed_by_hand_must_be_the_entrys_model(entry, blobs, cache, monkeypatch):
    """A cluster without internet: an admin copies weights into the shared cache. Another model's
    checkpoint under the entry's name is refused (it would give other numbers under that name);
    the right one is accepted and recorded, without any download."""
    monkeypatch.setenv("SOCIALFEAT_OFFLINE", "1")
    entry("/good/tiny.pth")
    placed = cache / "served-tiny.pth"
    cache.mkdir(parents=True)
    placed.write_bytes(blobs["cav.pth"])  # a CAV-MAE checkpoint, not the entry's Social-MAE
    with pytest.raises(ChecksumError, match="placed in the cache as served-tiny, but it is not that model's"):
        fetch("served-tiny", progress=False)
    assert digest.read_record(placed) is None
    placed.write_bytes(blobs["tiny.pth"])
    assert fetch("served-tiny", progress=False) == placed
    assert digest.read_record(placed)["sha256"] == hashlib.sha256(blobs["tiny.pth"]).hexdigest()


def test_a_read_only_cache_without_the_file_gives_one_line(entry, server, cache, monkeypatch):
    """A shared cache an admin filled read-only, on nodes with internet, lacking one entry (a --tasks
    model not fetched ahead): one line naming the file and the cause, not an OSError traceback."""
    import errno

    entry("/good/tiny.pth")
    cache.mkdir()
    real_open = open

    def read_only(file, mode="r", *a, **kw):
        if str(file).startswith(str(cache)) and mode != "r":
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(file))
        return real_open(file, mode, *a, **kw)
    monkeypatch.setattr(hub, "open", read_only, raising=False)
    msg = refusal()
    assert str(cache / "served-tiny.pth") in msg and "Read-only file system" in msg and "--weights PATH" in msg
    assert server.log == []


def test_a_full_disk_during_the_download_gives_one_line_and_frees_the_partial_file(entry, server, cache,
                                                                                    monkeypatch):
    """A home folder's quota filled by a 0.7 GB download: one line saying so; the partial file, which
    holds the space, is removed (it was left behind, with an OSError traceback)."""
    import errno

    entry("/good/tiny.pth")
    real_open = open

    class Full:
        def __init__(self, fh):
            self.fh = fh

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

        def write(self, block):
            self.fh.write(block[:1000])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(download, "open", lambda f, mode="r", *a, **kw: Full(real_open(f, mode, *a, **kw)),
                        raising=False)
    msg = refusal()
    assert "served-tiny.pth" in msg and "No space left on device" in msg and "nothing was cached" in msg
    assert cached_files(cache) == []
