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
