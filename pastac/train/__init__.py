"""``pastac train``: supervised fine-tuning with a PEFT LoRA adapter on the PASTA training layout.

- ``data``: one example = the prompt plus the training layout of an annotated response, with the mask,
  position ids and labels of exactly the forward the runtime computes (``encode_example``);
- ``options``: ``TrainOptions`` (no torch: the command line reads its defaults);
- ``trainer``: ``train`` (LoRA, AdamW, the adapter and its settings), with ``schedule`` (which examples each
  step takes, the learning rate), ``loss`` (cross-entropy and the KL term), ``checkpoint`` (saving and
  resuming), ``report`` (the loss log and plot, the model card) and ``distributed`` (several processes under
  ``torchrun`` or ``accelerate launch``: the process group and its collectives);
- ``command``: the ``pastac train`` command line.

The names below are imported on first use: they need torch and transformers, which the command line's
other commands do not load (``pastac.train.command`` imports them only when ``train`` runs).
"""

from __future__ import annotations

import importlib

_DATA = ("IGNORE", "Batch", "DataError", "Dataset", "Example", "collate", "encode_example", "load_examples")
_OPTIONS = ("TrainError", "TrainOptions")
_TRAINER = ("TrainResult", "train")

__all__ = [
    "IGNORE",
    "Batch",
    "DataError",
    "Dataset",
    "Example",
    "TrainError",
    "TrainOptions",
    "TrainResult",
    "collate",
    "encode_example",
    "load_examples",
    "train",
]


def __getattr__(name: str) -> object:
    if name in _DATA:
        return getattr(importlib.import_module("pastac.train.data"), name)
    if name in _OPTIONS:
        return getattr(importlib.import_module("pastac.train.options"), name)
    if name in _TRAINER:
        return getattr(importlib.import_module("pastac.train.trainer"), name)
    raise AttributeError(f"module 'pastac.train' has no attribute {name!r}")
