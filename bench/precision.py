"""float32 against bfloat16 autocast on this machine's CPU: seconds per token of the trunk, one run, ratios.

    .venv/bin/python bench/precision.py                 # the embedded model, the demo set
    .venv/bin/python bench/precision.py --repeats 5 --batch-size 4

Times, in turns (float32, bfloat16, float32, ...) so that a change in the machine's load hits both:
- forward: a batch of trunk features (head mode's cost, and every held-out evaluation's);
- train: one full-mode step (forward, backward, AdamW step) on a copy of the model.
Prints the median seconds per token of each and the ratio, and whether this CPU has the bfloat16
instructions that `--precision auto` looks for (rmcore.model.device.cpu_has_fast_bf16).
"""

from __future__ import annotations

import argparse
import copy
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
from rmcore.model.device import cpu_has_fast_bf16  # noqa: E402
from rmcore.model.reward_model import PackedRewardModel, load_sequence_classifier, resolve_model_path  # noqa: E402


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def forward_s(packed, batch, dtype) -> float:
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
        return timed(lambda: packed(batch, features_only=True))


def train_s(packed, batch, dtype) -> float:
    params = [p for p in packed.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5, fused=True)

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
            rewards = packed(batch)
        rewards.float().sum().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return timed(step)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--batch-size", type=int, default=4, help="prompts per batch (each with all its answers)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    path, name = resolve_model_path(args.model)
    classifier, tokenizer, _ = load_sequence_classifier(path)
    groups = read_preferences(demo_data_path()).groups[: args.batch_size]
    batch = pack_groups(encode_groups(tokenizer, groups, 512), tokenizer.pad_token_id)
    tokens = batch.real_tokens
    frozen = PackedRewardModel(classifier).eval()
    trainable = PackedRewardModel(copy.deepcopy(classifier)).train()
    times: dict[str, list[float]] = {f"{kind} {dtype}": [] for kind in ("forward", "train")
                                     for dtype in ("float32", "bfloat16")}
    for dtype in ("float32", "bfloat16"):  # warm-up: kernels are picked on the first calls
        forward_s(frozen, batch, dtype)
        train_s(trainable, batch, dtype)
    for _ in range(args.repeats):
        for dtype in ("float32", "bfloat16"):
            times[f"forward {dtype}"].append(forward_s(frozen, batch, dtype) / tokens)
            times[f"train {dtype}"].append(train_s(trainable, batch, dtype) / tokens)
    medians = {k: statistics.median(v) for k, v in times.items()}
    result = {"model": name, "tokens_per_batch": tokens, "threads": torch.get_num_threads(),
              "cpu_has_fast_bf16": cpu_has_fast_bf16(), "seconds_per_token": medians,
              "forward_speedup": medians["forward float32"] / medians["forward bfloat16"],
              "train_speedup": medians["train float32"] / medians["train bfloat16"]}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{name}, {tokens} tokens per batch, {result['threads']} threads, fast bfloat16 instructions: "
              f"{result['cpu_has_fast_bf16']}")
        for key, value in medians.items():
            print(f"  {key:17} {value * 1e3:.3f} ms/token")
        print(f"bfloat16 / float32 speed-up: forward {result['forward_speedup']:.2f}x, "
              f"train step {result['train_speedup']:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
