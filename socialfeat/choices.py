"""The values of extract's choice options, in one place: the CLI builds its option types from them
and ``extract()`` checks a call from Python against the same lists (extract.check_arguments), so
that a new choice cannot reach one and not the other. Imports nothing."""

from __future__ import annotations

EXTRACT_CHOICES: dict[str, tuple[str, ...]] = {
    "missing_audio": ("nan", "silence"),
    "crop": ("none", "face"),
    "faces": ("main", "all"),
    "engine": ("local", "ray"),
    "device": ("auto", "cpu", "cuda"),
    "precision": ("auto", "fp32", "bf16", "int8", "fast"),
}
