"""Packed weights for the fused decoder on the CPU: float16 or int8, through PyTorch's FBGEMM kernels.

A one-row decode step reads every weight once and does little arithmetic with
each: on one core its linear layers run at the speed memory delivers the
weights, so fewer bytes per weight is the lever.  ``--quant`` chooses (``resolve_quant``):

- ``auto`` (the command line's default): ``fp16`` where it can run (the fused
  decoder on the CPU, a float32 model, FBGEMM's kernels, memory for the packed
  copy), else ``none``;
- ``none``: the float32 weights, the tuned kernels (``pastac.backend.linear``);
- ``fp16``: weights stored in float16, activations and sums in float32
  (FBGEMM's ``linear_dynamic_fp16``): half the bytes, results within float16's
  rounding of the weights (on the default model the greedy answer is the
  float32 one; see ``benchmarks/results/cpu-speed``);
- ``int8``: weights in int8 per output row, activations quantised per row on
  the fly (FBGEMM's ``linear_dynamic``): a quarter of the bytes, and an error
  that changes answers (measured there too).  FBGEMM quantises a whole batch
  with one scale and zero point, from the batch's smallest and largest value;
  here each row is divided by its own largest magnitude first and two columns
  holding +1 and -1 go along (against zero weights), so that the batch's range
  is always [-1, 1] and every row is quantised on its own, as it would be
  alone: a thread's logits do not depend on which other threads share its
  step.

Why FBGEMM and not torchao, or torch's weight-only int8/int4 kernels: on an
AVX2 CPU (no AVX-512, no AMX) the latter are 3 to 49 times slower than float32
at decode shapes, and torchao's CPU layouts without ``torch.compile`` slower
than float32 too (``benchmarks/results/cpu-step-profile``,
``benchmarks/results/cpu-speed``); FBGEMM's kernels, shipped inside PyTorch,
are the ones here that beat float32 at one row.  They are PyTorch's older
quantisation stack: ``check_quant`` probes them, so a PyTorch without them
gives a clear refusal rather than a crash.

Invariant: a packed layer computes its ``nn.Linear``'s product (bias included)
with the weights rounded as its ``quant`` says, nothing else; the modules'
float32 weights are left as they are (the head stays tied to the embedding).
"""

from __future__ import annotations

import functools
import warnings

import torch

from pastac.backend import QUANTS
from pastac.backend.attention import BackendError
from pastac.machine import available_memory


class QuantError(BackendError):
    """A ``--quant`` that cannot run for this model on this machine, and why."""


@functools.cache
def _probe(quant: str) -> str | None:
    """None when ``quant``'s kernels run here and agree with ``F.linear``; else why not."""
    weight = torch.linspace(-1, 1, 64 * 32).reshape(64, 32)
    x = torch.linspace(-2, 2, 3 * 32).reshape(3, 32)
    try:
        got = Packed(quant, [weight], [None])(x)
    # a torch built without FBGEMM (not x86, or without its quantized engine) has no kernel for these ops
    # (NotImplementedError: no kernel for the backend) or no op at all (AttributeError): refused, never a crash
    except (RuntimeError, NotImplementedError, AttributeError) as error:
        return f"PyTorch's FBGEMM {quant} kernels do not run here ({type(error).__name__}: {error})"
    want = x @ weight.T
    if not torch.allclose(got, want, atol=0.05 * float(want.abs().max()), rtol=0):
        return f"PyTorch's FBGEMM {quant} kernels give wrong results here"
    return None


def check_quant(quant: str, model: torch.nn.Module) -> None:
    """Raises ``QuantError`` unless ``quant`` (one of ``QUANTS`` but ``auto``) can pack ``model``'s weights
    here."""
    if quant not in QUANTS or quant == "auto":
        raise QuantError(f"quant must be one of {', '.join(q for q in QUANTS if q != 'auto')}, not {quant!r}")
    if quant == "none":
        return
    param = next(model.parameters())
    if param.device.type != "cpu":
        raise QuantError(f"--quant {quant} uses FBGEMM, a CPU library; the model is on {param.device}")
    if param.dtype != torch.float32:
        raise QuantError(f"--quant {quant} multiplies float32 activations; load the model with --dtype float32")
    reason = _probe(quant)
    if reason is not None:
        raise QuantError(f"--quant {quant} cannot run: {reason}")


def packed_bytes(quant: str, model: torch.nn.Module) -> int:
    """Bytes the fused decoder's packed copy of ``model``'s linear layers takes under ``quant`` (about)."""
    per_weight = {"fp16": 2, "int8": 1}.get(quant, 0)
    layers = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    return per_weight * sum(m.weight.numel() for m in layers)


def resolve_quant(name: str, model: torch.nn.Module, forward: str) -> str:
    """The quantisation that runs for ``name`` (one of ``QUANTS``) with the resolved ``forward``: ``auto`` is
    ``fp16`` when the fused decoder runs a float32 model on the CPU, FBGEMM's kernels run here and the packed
    copy fits in half the memory available, else ``none``; another name is checked (``check_quant``) and
    returned.  Raises ``QuantError`` for a name that cannot run."""
    if name != "auto":
        check_quant(name, model)
        return name
    param = next(model.parameters())
    if forward != "fused" or param.device.type != "cpu" or param.dtype != torch.float32 or _probe("fp16"):
        return "none"
    free = available_memory(param.device)
    return "fp16" if free is None or packed_bytes("fp16", model) <= free // 2 else "none"


class Packed:
    """Several linear layers' weights packed as one matrix (their outputs side by side), float16 or int8."""

    def __init__(self, quant: str, weights: list[torch.Tensor], biases: list[torch.Tensor | None]) -> None:
        weight = torch.cat([w.detach().float() for w in weights]) if len(weights) > 1 else weights[0].detach().float()
        self.inputs, self.outputs, self.quant = weight.shape[1], weight.shape[0], quant
        if all(b is None for b in biases):
            self.bias = None
        else:
            self.bias = torch.cat(
                [
                    b.detach().float() if b is not None else w.new_zeros(w.shape[0])
                    for w, b in zip(weights, biases, strict=True)
                ]
            )
        if quant == "fp16":
            self.weight = torch.ops.quantized.linear_prepack_fp16(weight.contiguous(), self.bias)
        elif quant == "int8":
            scale = (weight.abs().amax(1) / 127).clamp_min(torch.finfo(torch.float32).tiny).double()
            weight = torch.cat((weight, weight.new_zeros(self.outputs, 2)), 1)  # the range columns weigh nothing
            with warnings.catch_warnings():  # quantised tensors are how FBGEMM takes weights; it warns of their age
                warnings.simplefilter("ignore")
                q = torch.quantize_per_channel(weight, scale, torch.zeros_like(scale, dtype=torch.long), 0, torch.qint8)
            self.weight = torch.ops.quantized.linear_prepack(q, None)
            self.range = torch.tensor([[1.0, -1.0]])  # every row's: the batch's range is [-1, 1]
        else:
            raise QuantError(f"nothing to pack for quant {quant!r}")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """``x @ W.T + b`` over the last axis, with the packed weights."""
        lead = x.shape[:-1]
        rows = x.reshape(-1, self.inputs)
        if self.quant == "fp16":
            y = torch.ops.quantized.linear_dynamic_fp16(rows, self.weight)
        else:
            top = torch.linalg.vector_norm(rows, float("inf"), -1, keepdim=True).clamp_min_(
                torch.finfo(torch.float32).tiny
            )
            scaled = torch.cat((rows / top, self.range.expand(rows.shape[0], 2)), 1)
            y = torch.ops.quantized.linear_dynamic(scaled, self.weight, True).mul_(top)
            if self.bias is not None:
                y = y.add_(self.bias)
        return y.reshape(*lead, self.outputs)


def packed(quant: str, *linears: torch.nn.Linear) -> Packed:
    """``linears`` (same input size) packed as one product under ``quant`` (``fp16`` or ``int8``)."""
    return Packed(quant, [m.weight for m in linears], [m.bias for m in linears])
