"""The held-out evaluation during training: loss, accuracy and margin on prompts the run does not train on.

It scores in batches, and between two batches it asks whether to stop: a stop request (Ctrl-C,
the app's Stop) or the evaluation's deadline under a time budget ends it early. A partial result
is kept and says so (`eval_partial`, the prompts and comparisons it scored and left out), with the
binomial standard error of its accuracy, so a short evaluation is read for what it is.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from rmcore.data.encoding import EncodedGroup
from rmcore.model.batching import ROW_TOKENS, pack_groups
from rmcore.training.budget import Deadline
from rmcore.training.features import response_offsets
from rmcore.training.loss import bradley_terry_loss, pair_index


@torch.no_grad()
def held_out_metrics(accelerator, module, encoded_eval: list[EncodedGroup], eval_features, pad_id: int,
                     batch_size: int, deadline: Deadline | None = None,
                     should_stop: Callable[[], bool] = lambda: False, lower=None) -> dict[str, Any]:
    """Held-out metrics over `encoded_eval` (trunk features `eval_features` in head mode), batch by batch
    until done, the deadline or a stop request. `lower` (rmcore.training.lower_blocks): frozen lower
    blocks kept from the first evaluation."""
    model = accelerator.unwrap_model(module)
    model.eval()
    totals = {"loss": 0.0, "accuracy": 0.0, "margin": 0.0}
    comparisons = prompts = scored = 0
    offsets = response_offsets(encoded_eval)
    for start in range(0, len(encoded_eval), batch_size):
        if start and ((deadline is not None and deadline.passed()) or should_stop()):
            break
        groups = encoded_eval[start : start + batch_size]
        rewards = _rewards(accelerator, model, groups, eval_features, offsets[start], pad_id, lower)
        scored += len(groups)
        pairs = pair_index(groups).to(accelerator.device)
        if len(pairs.winner) == 0:
            continue
        _, stats = bradley_terry_loss(rewards.float(), pairs)
        totals["loss"] += stats["loss"] * pairs.prompts
        totals["accuracy"] += stats["accuracy"] * stats["comparisons"]
        totals["margin"] += stats["margin"] * stats["comparisons"]
        comparisons += stats["comparisons"]
        prompts += pairs.prompts
    return _summary(totals, comparisons, prompts, scored, encoded_eval)


def _rewards(accelerator, model, groups: list[EncodedGroup], eval_features, first_row: int, pad_id: int, lower):
    if eval_features is not None:
        n = sum(len(g.response_ids) for g in groups)
        return model(eval_features[first_row : first_row + n]).squeeze(-1).float()
    row_tokens = ROW_TOKENS if lower is None else None  # kept hidden states are a row per group
    batch = pack_groups(groups, pad_id, row_tokens=row_tokens).to(accelerator.device)
    with accelerator.autocast():
        return lower.forward(model, batch, groups) if lower is not None else model(batch)


def _summary(totals: dict[str, float], comparisons: int, prompts: int, scored: int,
             encoded_eval: list[EncodedGroup]) -> dict[str, Any]:
    accuracy = totals["accuracy"] / max(1, comparisons)
    all_comparisons = sum(len(g.pairs()) for g in encoded_eval)
    metrics = {
        "eval_loss": totals["loss"] / max(1, prompts),
        "eval_accuracy": accuracy,
        "eval_accuracy_se": math.sqrt(accuracy * (1 - accuracy) / comparisons) if comparisons else None,
        "eval_margin": totals["margin"] / max(1, comparisons),
        "eval_comparisons": comparisons,
    }
    if scored < len(encoded_eval):  # ended early: a stop request or the deadline
        metrics.update(eval_partial=True, eval_prompts_scored=scored, eval_prompts_planned=len(encoded_eval),
                       eval_comparisons_left_out=all_comparisons - comparisons)
    return metrics
