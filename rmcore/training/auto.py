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
# The plan promises the top blocks (and the head's features pass keeps hidden states for them) only when a
# pass would fit on a machine this many times faster than the probe measured: a probe of a few seconds
# can read a busy moment, and a promise missed costs only memory, a promise not made costs the stage.
HOPE = 1.5


def top_blocks_seconds(groups: list[EncodedGroup], forward_s_per_token: float, block_share: float, kept,
                       training: bool) -> float:
    """Seconds of one pass of the top blocks (`block_share` of the trunk) over `groups`: a group whose
    hidden state was kept (`kept(group)`) runs only those blocks, another the whole trunk first."""
    top = block_share * (1 + BACKWARD_FORWARDS if training else 1)
    return sum(g.num_tokens * forward_s_per_token * (top if kept(g) else 1 + top) for g in groups)


def top_blocks_may_follow(plan, train_groups: list[EncodedGroup], eval_groups: list[EncodedGroup],
                          block_share: float, margin_s: float) -> bool:
    """Whether the head's plan (rmcore.training.budget.Plan) leaves time for a pass of the top blocks and an
    evaluation, at their most hopeful: every hidden state kept, a machine HOPE times faster than measured.
    If not, nothing is kept for them, since the kept states cost up to LowerBlocks.MAX_BYTES of memory."""
    forward = plan.rates_forward
    sample = [eval_groups[i] for i in plan.eval_indices] or eval_groups
    need = (top_blocks_seconds(train_groups, forward, block_share, _always, training=True)
            + top_blocks_seconds(sample, forward, block_share, _always, training=False))
    left = plan.budget_s - plan.spent_s - sum(plan.seconds.values()) - margin_s
    return need <= HOPE * left


def _always(group: EncodedGroup) -> bool:
    return True


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
