"""Frozen lower blocks run once (`--trainable-layers N`): a pass that starts at the first trained block
against a whole pass, on this machine's CPU, one run, ratios.

    .venv/bin/python bench/lower_blocks.py                       # the embedded model, top 4 of 30 blocks
    .venv/bin/python bench/lower_blocks.py --trainable-layers 8 --precision bfloat16

Times, in turns (whole, kept, whole, ...) so that a change in the machine's load hits both:
- train: one full-mode step on the top N blocks (forward, backward, AdamW), as every epoch after the
  first runs it with the kept hidden states, against the first epoch's whole pass;
- forward: a held-out evaluation's pass, after the first evaluation against the first.
Prints the median seconds per token of each and the speed-ups.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rmcore.data import demo_data_path, read_preferences  # noqa: E402
from rmcore.data.encoding import encode_groups  # noqa: E402
from rmcore.model.batching import pack_groups  # noqa: E402
from rmcore.model.reward_model import load_sequence_classifier, resolve_model_path  # noqa: E402
from rmcore.training.config import TrainConfig  # noqa: E402
from rmcore.training.lower_blocks import LowerBlocks  # noqa: E402
from rmcore.training.modes import setup_mode  # noqa: E402


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def step(run, optimizer, bf16: bool) -> None:
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        rewards = run()
    rewards.float().sum().backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def forward(run, bf16: bool) -> None:
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        run()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--trainable-layers", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=4, help="prompts per batch (each with all its answers)")
    parser.add_argument("--precision", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    path, name = resolve_model_path(args.model)
    classifier, tokenizer, _ = load_sequence_classifier(path)
    config = TrainConfig(model=str(path), mode="full", trainable_layers=args.trainable_layers)
    packed, _ = setup_mode(config, classifier)
    lower = LowerBlocks.for_run(config, packed)
    if lower is None:
        raise SystemExit(f"{name}: frozen lower blocks are not kept for this model or setting")
    groups = encode_groups(tokenizer, read_preferences(demo_data_path()).groups[: args.batch_size], 512)
    batch = pack_groups(groups, tokenizer.pad_token_id)
    optimizer = torch.optim.AdamW([p for p in packed.parameters() if p.requires_grad], lr=1e-6)
    bf16 = args.precision == "bfloat16"
    whole, kept = (lambda: packed(batch)), (lambda: lower.forward(packed, batch, groups))
    forward(kept, bf16)  # the first pass keeps the hidden states (and warms the kernels up)
    step(whole, optimizer, bf16)
    times: dict[str, list[float]] = {key: [] for key in ("train whole", "train kept", "forward whole",
                                                         "forward kept")}
    for _ in range(args.repeats):
        for kind, run in (("whole", whole), ("kept", kept)):
            times[f"train {kind}"].append(timed(lambda run=run: step(run, optimizer, bf16)) / batch.real_tokens)
            times[f"forward {kind}"].append(timed(lambda run=run: forward(run, bf16)) / batch.real_tokens)
    medians = {k: statistics.median(v) for k, v in times.items()}
    result = {"model": name, "trainable_layers": args.trainable_layers, "precision": args.precision,
              "tokens_per_batch": batch.real_tokens, "threads": torch.get_num_threads(),
              "kept_mb": lower.bytes / 2**20, "seconds_per_token": medians,
              "train_speedup": medians["train whole"] / medians["train kept"],
              "forward_speedup": medians["forward whole"] / medians["forward kept"]}
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{name}, top {args.trainable_layers} blocks, {args.precision}, {batch.real_tokens} tokens per batch, "
          f"{result['threads']} threads, {result['kept_mb']:.1f} MB kept")
    for key, value in medians.items():
        print(f"  {key:14} {value * 1e3:.3f} ms/token")
    print(f"kept lower blocks / whole pass speed-up: train step {result['train_speedup']:.2f}x, "
          f"forward {result['forward_speedup']:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
