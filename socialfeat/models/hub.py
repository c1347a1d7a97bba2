"""Named weights in a local cache: downloaded once, accepted only whole and loadable.

The cache is ``$SOCIALFEAT_HOME`` (read at call time) or ``~/.cache/socialfeat``.
A download goes to ``.<file>.part`` and is moved under its final name only when it
is whole (download.py), loads with ``weights_only=True`` with the keys and shapes of
its architecture, and matches the published SHA-256 if there is one; only then is
its digest recorded (digest.py). A refused download leaves nothing behind. One
process downloads a file while the others wait on ``.<file>.lock`` (50 SLURM
array tasks starting together fetch it once). ``SOCIALFEAT_OFFLINE=1`` forbids
the network: a missing file is an error naming it.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from socialfeat.errors import SocialfeatError
from socialfeat.models.checkpoint import CheckpointError, check_fits
from socialfeat.models.digest import is_fresh, read_record, sha256_file, write_record
from socialfeat.models.download import DownloadError, download, validator_path
from socialfeat.models.registry import PretrainedCfg, get_pretrained_cfg

log = logging.getLogger(__name__)

OFFLINE_ENV = "SOCIALFEAT_OFFLINE"


class WeightsUnavailableError(SocialfeatError, RuntimeError):
    """Released weights are not in the cache and cannot be downloaded."""


class ChecksumError(SocialfeatError, RuntimeError):
    """A weights file does not match its published or recorded SHA-256."""


def cache_dir(override: str | Path | None = None) -> Path:
    if override is not None:
        return Path(override)
    env = os.environ.get("SOCIALFEAT_HOME")
    return Path(env) if env else Path.home() / ".cache" / "socialfeat"


def offline() -> bool:
    return os.environ.get(OFFLINE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def cached_path(name: str, cache: str | Path | None = None) -> Path:
    return cache_dir(cache) / get_pretrained_cfg(name).filename


def is_cached(name: str, cache: str | Path | None = None) -> bool:
    return cached_path(name, cache).is_file()


@dataclass(frozen=True)
class CacheState:
    """What the cache holds for an entry, read without hashing (for ``socialfeat models``)."""

    path: Path
    size: int | None  # None: not cached
    sha256: str | None  # the recorded digest, None until the file has been verified once


def cache_state(name: str, cache: str | Path | None = None) -> CacheState:
    path = cached_path(name, cache)
    if not path.is_file():
        return CacheState(path, None, None)
    rec = read_record(path)
    return CacheState(path, path.stat().st_size, rec["sha256"] if is_fresh(path, rec) else None)


def verify(cfg: PretrainedCfg, path: Path) -> str:
    """The SHA-256 of a cached file, checked against the published or recorded one.

    The file is hashed only when its record is missing or its size or mtime changed. A file
    without a record matching it (placed in the cache by hand, e.g. on a cluster without internet)
    must also load with its entry's keys and shapes, as a download must: another checkpoint copied
    under the entry's name would otherwise give other numbers under that name.
    """
    rec = read_record(path)
    if is_fresh(path, rec) and cfg.sha256 in (None, rec["sha256"]):
        return rec["sha256"]
    digest = sha256_file(path)
    expected = cfg.sha256 or (rec or {}).get("sha256")
    if expected is not None and digest != expected:
        raise ChecksumError(f"{path}: sha256 {digest} does not match the expected {expected}; "
                            f"delete the file to download it again")
    if expected is None:
        try:
            check_fits(cfg, path)
        except CheckpointError as e:
            raise ChecksumError(f"{path}: placed in the cache as {cfg.name}, but it is not that model's "
                                f"checkpoint ({e}); replace or delete it") from None
    try:
        write_record(path, digest, url=cfg.url)
    except OSError as e:  # a shared, read-only cache: verified now, hashed again next time
        log.info("%s: could not record its sha256 (%s)", path, e)
    return digest


def fetch(name: str, cache: str | Path | None = None, progress: bool = True,
          supply: str = "--weights PATH") -> Path:
    """Path of the cached, verified weights of a registry entry, downloading them if needed.

    ``supply`` is the option through which a user could give the file instead (said in errors)."""
    cfg = get_pretrained_cfg(name)
    path = cached_path(name, cache)
    if not path.is_file():
        _check_can_download(cfg, path, supply)
        with _locked(cfg, path, supply):
            if not path.is_file():  # else another process finished it while this one waited
                _download(cfg, path, progress, supply)
    verify(cfg, path)
    return path


def _reason(e: OSError) -> str:
    """An OSError in words without its traceback: 'Read-only file system: /cache/x.lock'."""
    return f"{e.strerror}: {e.filename}" if e.strerror and e.filename else (e.strerror or str(e))


def _hint(cfg: PretrainedCfg, path: Path, supply: str) -> str:
    return (f"run `socialfeat models --download {cfg.name}` on a machine with internet (same cache), "
            f"or pass {supply}, or place the file at {path}")


def _check_can_download(cfg: PretrainedCfg, path: Path, supply: str) -> None:
    if not cfg.url:
        raise WeightsUnavailableError(f"{cfg.name}: weights file {path} is missing and has no public download "
                                      f"address; obtain it from {cfg.origin} and pass {supply}, "
                                      f"or place it at {path}")
    if offline():
        raise WeightsUnavailableError(f"{cfg.name}: weights file {path} is missing and {OFFLINE_ENV} forbids "
                                      f"downloading it; {_hint(cfg, path, supply)}")


@contextlib.contextmanager
def _locked(cfg: PretrainedCfg, path: Path, supply: str) -> Iterator[None]:
    """Hold an exclusive flock on ``.<file>.lock`` beside ``path`` (the lock file stays, empty).
    A cache that cannot take the lock file (a shared read-only cache without this entry) cannot
    take the download either: one line says so, naming the file, instead of an OSError."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(path.with_name(f".{path.name}.lock"), "a")
    except OSError as e:
        raise WeightsUnavailableError(f"{cfg.name}: weights file {path} is missing and the cache cannot take it "
                                      f"({_reason(e)}); {_hint(cfg, path, supply)}, or set SOCIALFEAT_HOME to a "
                                      f"writable folder") from None
    with fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.warning("%s: another process is downloading it; waiting", path.name)
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _download(cfg: PretrainedCfg, path: Path, progress: bool, supply: str) -> None:
    """Download, check and move into place, or refuse with one line and leave nothing.

    ``.<file>.part`` survives only an interruption (Ctrl-C, a killed job), to be resumed.
    """
    part = path.with_name(f".{path.name}.part")
    try:
        download(cfg.url, part, desc=cfg.name, progress=progress)
        check_fits(cfg, part, label=cfg.url)
        digest = sha256_file(part)
        if cfg.sha256 and digest != cfg.sha256:
            raise ChecksumError(f"sha256 {digest} differs from the published {cfg.sha256}")
    except DownloadError as e:
        _discard(part)
        raise WeightsUnavailableError(f"{cfg.name}: could not download {path.name}: {e}; "
                                      f"{_hint(cfg, path, supply)}") from e
    except (CheckpointError, ChecksumError) as e:
        _discard(part)
        raise WeightsUnavailableError(f"{cfg.name}: refused the download of {path.name}, nothing was cached: "
                                      f"{e}") from e
    except OSError as e:  # writing the partial file: a full disk or quota (a 0.7 GB file in a home folder)
        _discard(part)  # frees the space it took; a resumable partial is kept only after an interruption
        raise WeightsUnavailableError(f"{cfg.name}: could not write {path} ({_reason(e)}), "
                                      f"nothing was cached; free space there or set SOCIALFEAT_HOME to a folder "
                                      f"with room") from None
    try:
        write_record(path, digest, stat_of=part, url=cfg.url)  # first, so whoever sees the file sees its record
        os.replace(part, path)
        validator_path(part).unlink(missing_ok=True)
    except OSError as e:
        _discard(part)
        raise WeightsUnavailableError(f"{cfg.name}: could not put {path} in place ({_reason(e)}), "
                                      f"nothing was cached") from None
    log.info("%s: downloaded %s (sha256 %s)", cfg.name, path, digest)


def _discard(part: Path) -> None:
    """A partial file and the validator of its version (download.validator_path)."""
    with contextlib.suppress(OSError):
        part.unlink(missing_ok=True)
        validator_path(part).unlink(missing_ok=True)
