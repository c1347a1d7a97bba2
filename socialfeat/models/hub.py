"""Download released weights into a local cache, atomically and checksummed.

The cache is ``$SOCIALFEAT_HOME`` (read at call time) or ``~/.cache/socialfeat``.
A file is downloaded to a temporary name and renamed only when complete, so an
interrupted download never leaves a half file under the final name.
"""

from __future__ import annotations

import hashlib
import logging
import os
import urllib.request
from pathlib import Path

from socialfeat.atomic import atomic_path
from socialfeat.errors import SocialfeatError
from socialfeat.models.registry import PretrainedCfg, get_pretrained_cfg

log = logging.getLogger(__name__)


class WeightsUnavailableError(SocialfeatError, RuntimeError):
    """Released weights are not in the cache and cannot be downloaded."""


class ChecksumError(SocialfeatError, RuntimeError):
    """A weights file does not match its recorded SHA-256."""


def cache_dir(override: str | Path | None = None) -> Path:
    if override is not None:
        return Path(override)
    env = os.environ.get("SOCIALFEAT_HOME")
    return Path(env) if env else Path.home() / ".cache" / "socialfeat"


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def cached_path(name: str, cache: str | Path | None = None) -> Path:
    cfg = get_pretrained_cfg(name)
    return cache_dir(cache) / cfg.filename


def is_cached(name: str, cache: str | Path | None = None) -> bool:
    return cached_path(name, cache).is_file()


def _expected_sha256(cfg: PretrainedCfg, path: Path) -> str | None:
    if cfg.sha256:
        return cfg.sha256
    sidecar = path.with_name(path.name + ".sha256")
    return sidecar.read_text().split()[0] if sidecar.is_file() else None


def _check(cfg: PretrainedCfg, path: Path, digest: str, expected: str | None) -> None:
    """Raise on a mismatch; without any expected value, record ``digest`` beside ``path``."""
    if expected is None:
        path.with_name(path.name + ".sha256").write_text(f"{digest}  {path.name}\n")
        log.warning("%s: no published checksum; recorded sha256 %s for later verification", cfg.name, digest)
    elif digest != expected:
        raise ChecksumError(f"{path}: sha256 {digest} does not match the expected {expected}; "
                            f"delete the file to download it again")


def verify(cfg: PretrainedCfg, path: Path) -> str:
    """Check ``path`` against the published or first-recorded checksum; returns the digest."""
    digest = sha256_file(path)
    _check(cfg, path, digest, _expected_sha256(cfg, path))
    return digest


def fetch(name: str, cache: str | Path | None = None, progress: bool = True) -> Path:
    """Path of the cached weights of a registry entry, downloading them if needed."""
    cfg = get_pretrained_cfg(name)
    path = cached_path(name, cache)
    if path.is_file():
        verify(cfg, path)
        return path
    how = (f"download it yourself from {cfg.url} " if cfg.url else f"obtain it from {cfg.origin} ")
    hint = f"{how}and pass --weights PATH, or place it at {path}"
    if not cfg.url:
        raise WeightsUnavailableError(f"{name}: weights file {path} is missing and has no public "
                                      f"download address; {hint}")
    try:
        with atomic_path(path) as tmp:  # a bad or interrupted download never lands under the final name
            with open(tmp, "wb") as out, urllib.request.urlopen(cfg.url, timeout=60) as resp:
                total = int(resp.headers.get("Content-Length") or 0) or None
                from tqdm import tqdm
                with tqdm(total=total, unit="B", unit_scale=True, desc=name, disable=not progress) as bar:
                    while block := resp.read(1 << 20):
                        out.write(block)
                        bar.update(len(block))
            digest = sha256_file(tmp)
            if cfg.sha256:
                _check(cfg, path, digest, cfg.sha256)
    except OSError as e:
        raise WeightsUnavailableError(f"{name}: could not download {cfg.url} ({e}); {hint}") from e
    if not cfg.sha256:
        _check(cfg, path, digest, None)
    return path
