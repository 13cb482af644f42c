"""The error of ``pastac.models``, and the check on loaded weights that both ways of loading share.

Everything in the package that goes wrong with a model raises ``ModelError`` with a message that names the
path or the architecture and says why; nothing is downgraded to a warning.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


class ModelError(RuntimeError):
    """A model cannot be found, loaded, converted or driven by the runtime; the message says which and why."""


def require_all_weights(info: dict[str, Any], source: Path) -> None:
    """Refuse a checkpoint that lacks weights: transformers would initialise them at random and carry on."""
    missing = sorted(info.get("missing_keys") or ())
    if missing:
        shown = ", ".join(missing[:4]) + (f" and {len(missing) - 4} more" if len(missing) > 4 else "")
        raise ModelError(f"{source} lacks weights the model needs: {shown}")
