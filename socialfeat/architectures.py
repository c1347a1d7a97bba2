"""Architectures as data: ``model_configs/*.json``, the one place where a model's
sizes and its preprocessing recipe are written down.

Each file holds ``family`` ('cav-mae' or 'social-mae'), ``model`` (constructor
arguments of the pretraining class) and ``preprocess`` (a ``PreprocessSpec``).
The preprocessing specs, the registry of released weights and the model builders
all read from here. This module imports nothing else of socialfeat, so that any
of them can use it.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from socialfeat.errors import UnknownModelError

CONFIG_DIR = Path(__file__).parent / "model_configs"
_ARCHS: dict[str, dict[str, Any]] = {}


def _known() -> dict[str, dict[str, Any]]:
    if not _ARCHS:
        for path in sorted(CONFIG_DIR.glob("*.json")):
            _ARCHS[path.stem] = json.loads(path.read_text())
    return _ARCHS


def list_architectures() -> list[str]:
    return sorted(_known())


def get_arch_config(name: str) -> dict[str, Any]:
    """A deep copy (safe to modify) of an architecture: {'family', 'model', 'preprocess'}."""
    if name not in _known():
        raise UnknownModelError(f"unknown architecture {name!r}; known: {', '.join(list_architectures())}")
    return copy.deepcopy(_ARCHS[name])


def add_arch_config(path: str | Path) -> str:
    """Register an architecture JSON (same schema as model_configs/*.json); returns its name."""
    path = Path(path)
    _known()[path.stem] = json.loads(path.read_text())
    return path.stem
