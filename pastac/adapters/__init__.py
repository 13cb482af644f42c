"""Adapters shipped with pastac.

``smollm2-135m-pasta/`` is a LoRA adapter that teaches the default model, SmolLM2-135M-Instruct, to write
Pasta-Lang; its ``README.md`` is the model card (data, recipe, hardware, figures).  The runtime merges it into
the default model unless told otherwise (``pastac run --no-adapter``, ``Engine.from_pretrained(adapter=None)``).
"""

from __future__ import annotations

from pathlib import Path

#: ``adapter=DEFAULT_ADAPTER``: the adapter shipped here when the model is the default one, and no adapter for
#: any other model (it was trained for SmolLM2-135M-Instruct only).
DEFAULT_ADAPTER = "default"
PACKAGED_ADAPTER_NAME = "smollm2-135m-pasta"


def packaged_adapter() -> Path | None:
    """The default model's adapter folder, or None if this copy of pastac ships none."""
    folder = Path(__file__).resolve().parent / PACKAGED_ADAPTER_NAME
    return folder if (folder / "adapter_config.json").is_file() else None
