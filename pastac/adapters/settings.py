"""An adapter's settings: the layout it was trained on, which the runtime must decode with.

``pastac train`` writes them next to the adapter, as ``pastac.json``; the engine
reads them when it merges the adapter (``Engine.from_pretrained``) and decodes
with every one of them: the position policy and unit (where a parent goes on
after a promise), the deepest nesting the adapter learnt (deeper promises are
decoded inline, and the tag guard allows no deeper block), whether prompts were
laid out with the chat template, and the repetition penalty its data was
generated with.  A run that overrides one of them with another value gets a
warning that says so.  This dataclass is the one definition of the file's
fields: the trainer writes it and the engine reads it, nothing else parses it.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from pastac.grammar.parser import DEFAULT_MAX_DEPTH
from pastac.output import write_text
from pastac.passes.positions import Policy, PositionOptions

SETTINGS_FILE = "pastac.json"
# the policies the runtime can decode with (the others need a child's length before it is written)
DECODABLE = (Policy.PREDICTED, Policy.RESTART, Policy.LOCKSTEP)


class SettingsError(ValueError):
    """A settings file that cannot be read or holds a value the runtime cannot use; the message says which."""


@dataclass(frozen=True)
class AdapterSettings:
    """How an adapter was trained (see the module's docstring); the defaults are a model's without one."""

    policy: Policy = Policy.PREDICTED
    unit: int = PositionOptions().unit  # tokens="K" predicts K x unit tokens
    max_depth: int = DEFAULT_MAX_DEPTH  # the deepest <async> nesting of its training data
    chat: bool = True  # its prompts were laid out with the chat template
    repetition_penalty: float | None = None  # the penalty to decode with when a run sets none
    base_model: str | None = None  # what it was trained on (informative)
    eos_token_id: int | list[int] | None = None  # the base model's end of sequence (informative)

    def __post_init__(self) -> None:
        try:
            policy = Policy(self.policy)
        except ValueError:
            raise SettingsError(f"policy must be one of {', '.join(DECODABLE)}, not {self.policy!r}") from None
        if policy not in DECODABLE:
            raise SettingsError(f"policy must be one of {', '.join(DECODABLE)}, not {self.policy!r}")
        object.__setattr__(self, "policy", policy)
        for name in ("unit", "max_depth"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise SettingsError(f"{name} must be an integer >= 0, not {value!r}")
        if not isinstance(self.chat, bool):
            raise SettingsError(f"chat must be true or false, not {self.chat!r}")
        penalty = self.repetition_penalty
        if penalty is not None and (
            not isinstance(penalty, int | float)
            or isinstance(penalty, bool)
            or not math.isfinite(penalty)
            or penalty <= 0
        ):
            raise SettingsError(f"repetition_penalty must be a number > 0, not {penalty!r}")

    @property
    def positions(self) -> PositionOptions:
        """The position options to decode with."""
        return PositionOptions(policy=self.policy, unit=self.unit)

    def to_json(self) -> dict[str, Any]:
        """The settings as the file holds them."""
        out = asdict(self)
        out["policy"] = str(self.policy)
        return out

    @classmethod
    def from_json(cls, data: object) -> AdapterSettings:
        """Settings from the file's JSON object.  Unknown fields are an error (a newer pastac's file, or a
        typo); ``generation.repetition_penalty``, where files of pastac 0.1 kept the penalty, is read too."""
        if not isinstance(data, dict):
            raise SettingsError("the settings must be a JSON object")
        data = dict(data)
        generation = data.pop("generation", None)
        if isinstance(generation, dict) and "repetition_penalty" in generation:
            data.setdefault("repetition_penalty", generation["repetition_penalty"])
        elif generation is not None:
            raise SettingsError(f"generation must be an object with repetition_penalty, not {generation!r}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SettingsError(f"unknown setting {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        return cls(**data)

    @classmethod
    def read(cls, folder: str | os.PathLike[str]) -> AdapterSettings | None:
        """The settings of the adapter in ``folder``; None when it has no settings file."""
        path = Path(folder) / SETTINGS_FILE
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as error:
            raise SettingsError(f"cannot read {path}: {error}") from None
        try:
            return cls.from_json(data)
        except SettingsError as error:
            raise SettingsError(f"{path}: {error}") from None

    def write(self, folder: str | os.PathLike[str]) -> Path:
        """Write the settings file into ``folder`` (atomically: a reader never sees half of it; ``pastac.output``'s
        ``OutputError`` when it cannot be written)."""
        path = Path(folder) / SETTINGS_FILE
        write_text(path, json.dumps(self.to_json(), indent=2) + "\n")
        return path
