"""The training loss: cross-entropy over the labelled positions, plus (optionally) a KL term at plain text.

Both terms are sums divided by the labelled positions of the whole optimizer step, all its micro-batches
together, so that the micro-batches' gradients add up to those of the step's mean whatever the batching. The
KL term is taken at the plain-text positions only, against the distribution the base model (the adapter
switched off) gives reading the answer as plain text, without the tags it never learnt.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from pastac.train.data import IGNORE, Batch


def micro_batch_losses(
    peft_model: Any, batch: Batch, dtype: torch.dtype, labelled: int, kl: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """The micro-batch's share of the step's mean cross-entropy per labelled position, and (with ``kl``) of
    the mean KL(base || adapted) over those positions, summed over the plain-text ones (``Batch.text``).
    The base model's distribution there is the one it gives reading the answer as plain text (the adapter
    switched off, no tags, every part where its promise stands: ``Example.teacher_ids``): what it would
    write next, seeing what a reader sees, rather than what it makes of tags it never learnt."""
    logits = peft_model(
        input_ids=batch.input_ids,
        position_ids=batch.position_ids,
        attention_mask=batch.additive_mask(dtype).to(batch.input_ids.device),
        use_cache=False,
    ).logits  # [B, N, V]
    cross_entropy = (
        F.cross_entropy(logits.float().flatten(0, 1), batch.labels.flatten(), ignore_index=IGNORE, reduction="sum")
        / labelled
    )
    if not kl or not bool(batch.text.any()):
        return cross_entropy, torch.zeros((), device=logits.device)
    rows, _ = batch.text.nonzero(as_tuple=True)
    with torch.no_grad(), peft_model.disable_adapter():
        plain = peft_model(input_ids=batch.teacher_ids, attention_mask=batch.teacher_mask, use_cache=False).logits
        reference = plain[rows, batch.teacher[batch.text]].float()  # [K, V]
    divergence = (
        F.kl_div(
            F.log_softmax(logits[batch.text].float(), dim=-1),
            F.log_softmax(reference, dim=-1),
            log_target=True,
            reduction="sum",
        )
        / labelled
    )
    return cross_entropy, divergence


def bonbon_margin(n: int) -> float:
    """The log-likelihood-ratio gap between the best and the worst of ``n`` samples under the best-of-n
    distribution, relative to the model sampled (Gui et al., BoNBoN alignment): ``(n - 1) * H(n - 1)``, H the
    harmonic number.  It is the target of the contrastive term: the gap a policy that samples the best of n
    would put between them, no more (IPO's ``1 / (2 beta)`` at the best-of-n ``beta``)."""
    if n < 2:
        raise ValueError(f"best and worst need at least 2 samples, not {n}")
    return (n - 1) * sum(1 / k for k in range(1, n))


def sequence_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """float32 [B]: each row's log-probability of its labels (summed over its labelled positions)."""
    labelled = labels != IGNORE
    logp = torch.log_softmax(logits.float(), dim=-1).gather(-1, labels.clamp(min=0)[..., None])[..., 0]
    return (logp * labelled).sum(dim=-1)


def pair_losses(
    peft_model: Any,
    batch: Batch,
    dtype: torch.dtype,
    references: torch.Tensor,
    labelled: int,
    pairs: int,
    margin: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The micro-batch's share of the step's two BoNBoN terms, its rows being the chosen and the rejected
    answer of each pair in turn (``pastac.train.data.Pairs``) and ``references`` [K, 2] their
    log-probabilities under the reference model:

    - the supervised term: the chosen answers' cross-entropy per labelled position (``labelled``: the chosen
      answers' labelled positions of the whole step), as the first stage's loss;
    - the contrastive term (IPO's, at BoNBoN's target): the squared distance of ``h`` from ``margin``, ``h``
      being how much more the model than the reference favours the chosen answer over the rejected one
      (log-ratios summed over each answer's labelled positions), divided by ``margin ** 2`` so that it starts
      near 1 as the supervised term does, and averaged over the step's ``pairs``."""
    logits = peft_model(
        input_ids=batch.input_ids,
        position_ids=batch.position_ids,
        attention_mask=batch.additive_mask(dtype).to(batch.input_ids.device),
        use_cache=False,
    ).logits  # [2K, N, V]
    logp = sequence_logprobs(logits, batch.labels)
    chosen, rejected = logp[0::2], logp[1::2]
    supervised = -chosen.sum() / labelled
    reference = references.to(device=logp.device, dtype=logp.dtype)
    h = (chosen - reference[:, 0]) - (rejected - reference[:, 1])
    contrastive = ((h - margin) ** 2).sum() / (margin**2) / pairs
    return supervised, contrastive
