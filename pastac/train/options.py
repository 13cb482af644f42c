"""``TrainOptions``: the settings of a training run (no torch here: the command line reads the defaults)."""

from __future__ import annotations

from dataclasses import dataclass

from pastac.adapters.settings import AdapterSettings
from pastac.grammar import DEFAULT_MAX_DEPTH
from pastac.passes.positions import Policy, PositionOptions

__all__ = ["STAGES", "TrainError", "TrainOptions"]

#: ``sft``: supervised fine-tuning on annotated responses; ``preference``: BoNBoN on pairs of the model's own.
STAGES = ("sft", "preference")


class TrainError(ValueError):
    """Training cannot start: bad options, an unusable dataset or output folder, an incompatible checkpoint."""


@dataclass(frozen=True)
class TrainOptions:
    """The settings of a training run: the adapter, the optimisation, the data and the layout; checked when made."""

    # the adapter
    rank: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: tuple[str, ...] | None = None  # None: the known projections the model has
    # optimisation
    lr: float = 2e-4
    schedule: str = "linear"  # "linear" (to 0 over the planned steps) or "constant"
    warmup_steps: int = 0
    weight_decay: float = 0.0
    max_grad_norm: float | None = 1.0
    epochs: int = 1
    repeat_forking: int = 1  # an example with a promise is seen this many times per epoch (forks are rare)
    # weight of KL(base || adapted) over the next-token distributions at plain-text positions (0: off): keeps
    # the adapted model's text close to what its base model would write there while it learns the tags
    kl_weight: float = 0.0
    max_steps: int | None = None
    batch_size: int = 1  # examples per micro-batch
    grad_accum: int = 1  # micro-batches per optimizer step
    max_length: int = 2048  # longer examples (prompt included) are skipped
    shuffle: bool = True
    seed: int = 0
    dtype: str = "float32"
    device: str = "cpu"
    log_every: int = 1  # a loss.csv row every N steps
    save_every: int = 50  # a checkpoint every N steps (and at the end)
    # the data and its layout
    policy: str = "predicted"
    unit: int = 1  # tokens="N" predicts N x unit tokens; the dataset's values are token counts
    max_depth: int = DEFAULT_MAX_DEPTH
    field: str = "text"
    prompt_field: str = "prompt"
    chat: bool = True
    base_model: str | None = None  # recorded in pastac.json (default: the model's name_or_path)
    # a decode setting recorded in pastac.json: the repetition penalty the runtime uses when a run sets none
    repetition_penalty: float | None = None
    # the stage: "sft" trains on annotated responses; "preference" on pairs of them (``pastac.train.data.Pairs``)
    # with the BoNBoN loss: sft_weight x the chosen answers' cross-entropy + (1 - sft_weight) x the contrastive
    # term at the target ``margin`` (``pastac.train.loss.pair_losses``)
    stage: str = "sft"
    # an adapter folder to start from, trained further (its rank, alpha, dropout and layers); None: a new one
    init_adapter: str | None = None
    sft_weight: float = 0.5
    margin: float = 5.5  # bonbon_margin(4)

    def __post_init__(self) -> None:
        for name in (
            "rank",
            "alpha",
            "epochs",
            "repeat_forking",
            "batch_size",
            "grad_accum",
            "max_length",
            "log_every",
            "save_every",
        ):
            if getattr(self, name) < 1:
                raise TrainError(f"{name} must be >= 1, not {getattr(self, name)}")
        if self.max_steps is not None and self.max_steps < 1:
            raise TrainError(f"max_steps must be >= 1, not {self.max_steps}")
        if not 0 <= self.dropout < 1:
            raise TrainError(f"dropout must be in [0, 1), not {self.dropout}")
        if not self.lr > 0:
            raise TrainError(f"lr must be > 0, not {self.lr}")
        if self.schedule not in ("linear", "constant"):
            raise TrainError(f"schedule must be linear or constant, not {self.schedule!r}")
        if not self.kl_weight >= 0:
            raise TrainError(f"kl_weight must be >= 0, not {self.kl_weight}")
        if self.warmup_steps < 0 or self.weight_decay < 0 or self.unit < 0 or self.max_depth < 0:
            raise TrainError("warmup_steps, weight_decay, unit and max_depth must be >= 0")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise TrainError(f"max_grad_norm must be > 0, not {self.max_grad_norm}")
        if self.repetition_penalty is not None and not self.repetition_penalty > 0:
            raise TrainError(f"repetition_penalty must be > 0, not {self.repetition_penalty}")
        if self.stage not in STAGES:
            raise TrainError(f"stage must be one of {', '.join(STAGES)}, not {self.stage!r}")
        if not 0 <= self.sft_weight <= 1:
            raise TrainError(f"sft_weight must be in [0, 1], not {self.sft_weight}")
        if not self.margin > 0:
            raise TrainError(f"margin must be > 0, not {self.margin}")
        if self.stage == "preference" and self.kl_weight:
            raise TrainError("the KL term is the first stage's; the preference stage's reference is its pairs'")
        if self.dtype not in ("float32", "bfloat16"):
            raise TrainError(f"dtype must be float32 or bfloat16, not {self.dtype!r}")
        if self.policy not in (Policy.PREDICTED, Policy.RESTART, Policy.LOCKSTEP):
            raise TrainError(
                f"policy must be one the runtime decodes with (predicted, restart, lockstep), not {self.policy!r}"
            )
        if self.target_modules is not None:
            object.__setattr__(self, "target_modules", tuple(self.target_modules))
            if not self.target_modules:
                raise TrainError("target_modules is empty")

    @property
    def positions(self) -> PositionOptions:
        """The position options of the training layout, which the runtime must decode with."""
        return PositionOptions(policy=self.policy, unit=self.unit)

    def settings(self, *, base_model: str | None, eos: int | list[int] | None) -> AdapterSettings:
        """The adapter's settings this run trains it with, for ``pastac.json`` (the runtime decodes with them)."""
        return AdapterSettings(
            policy=self.policy,
            unit=self.unit,
            max_depth=self.max_depth,
            chat=self.chat,
            repetition_penalty=self.repetition_penalty,
            base_model=base_model,
            eos_token_id=eos,
        )
