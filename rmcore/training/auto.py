"""--mode auto: head mode first, then the top blocks from the head's solution, kept only if they do better.

Head mode sees the most comparisons per CPU-minute (the trunk runs once per prompt), so it gets the
budget first: every training prompt's features, then the neuron. When that leaves time for at least
one pass of the top N blocks over the training prompts and an evaluation, the run goes on in full
mode on those blocks, starting from the head's solution: at step 0 the model is exactly the trained
head, and the hidden state entering the first trained block was kept during the features pass
(rmcore.training.lower_blocks), so a pass costs N of the trunk's blocks. The two are then compared on
the same held-out sample and the better is saved; a tie, a cut-short evaluation or a stop keeps
the head. Measured on the instruction task (bench/README.md): the top 4 blocks from the head's
solution beat the head on both held-out sets, and the same blocks from a random neuron lost to it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from rmcore.data.encoding import EncodedGroup

BACKWARD_FORWARDS = 2.0  # a backward pass costs about two forward passes


def top_blocks_seconds(groups: list[EncodedGroup], forward_s_per_token: float, block_share: float, kept,
                       training: bool) -> float:
    """Seconds of one pass of the top blocks (`block_share` of the trunk) over `groups`: a group whose
    hidden state was kept (`kept(group)`) runs only those blocks, another the whole trunk first."""
    top = block_share * (1 + BACKWARD_FORWARDS if training else 1)
    return sum(g.num_tokens * forward_s_per_token * (top if kept(g) else 1 + top) for g in groups)


@dataclass
class HeadStage:
    """What the head stage left: its held-out result, its last step, its schedule and the weights the top
    blocks will change (to put back when the head is kept)."""

    eval: dict[str, Any]
    train: dict[str, Any]
    steps: int
    schedule: Any
    weights: dict[str, torch.Tensor]

    @classmethod
    def of(cls, model: torch.nn.Module, last_eval, last_train, steps: int, schedule) -> HeadStage:
        weights = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        return cls(dict(last_eval), dict(last_train), steps, schedule, weights)

    @torch.no_grad()
    def restore(self, model: torch.nn.Module) -> None:
        for name, parameter in model.named_parameters():
            if name in self.weights:
                parameter.copy_(self.weights[name])


def top_blocks_won(head_eval: dict[str, Any], top_eval: dict[str, Any] | None, stopped: bool) -> tuple[bool, str]:
    """Whether the top blocks are kept, and why, in words for the run's log."""
    head = head_eval["eval_accuracy"]
    if stopped:
        return False, "stopped while training the top blocks: the head's model is saved"
    if not top_eval or top_eval.get("eval_partial"):
        return False, "the top blocks' evaluation was cut short, so the head (evaluated in full) is kept"
    top = top_eval["eval_accuracy"]
    if top > head:
        return True, f"the top blocks are kept: held-out {top:.3f} against the head's {head:.3f}"
    return False, f"the head is kept: held-out {head:.3f} against the top blocks' {top:.3f}"
