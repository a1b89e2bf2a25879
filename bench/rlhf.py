"""RLHF speed: rmcore's reward function inside GRPO against TRL's reward-model path, and sampling.

    nice -n 10 python bench/rlhf.py          # 2-core CPU, the embedded models: a few minutes
    python bench/rlhf.py --model tiny        # seconds, numbers meaningless (keeps the script working)

1. Reward scoring inside GRPO. G = 8 answers for each of P prompts, sampled once with the embedded
   policy; the same (prompt, answer) lists are scored, taking turns, by
   - TRL's own path: `GRPOTrainer(reward_funcs="<rmcore folder>")._calculate_rewards`, the code a
     GRPO step runs: each prompt + answer rendered with the chat template, padded, one sequence each;
   - rmcore's `RewardFunction`: the G answers of a prompt packed in one row, the prompt computed once.
   The speed-up is compared with the token ratio (tokens TRL computes / tokens rmcore computes).
2. Sampling: `rmcore.policy.sampling.sample` (prompts batched together, up to 128 sequences per generate call)
   against a plain `model.generate(..., num_return_sequences=n)` per prompt, same prompts, n,
   max_new_tokens, temperature, top-p/top-k and end tokens; tokens per second of generated answers.

Both are ratios from one run, alternating which side goes first. Results go to bench/results/
(`<date>_<commit>_<device>_rlhf_<model>.json` and `.md`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import run as bench_run  # noqa: E402  (bench/run.py: machine and git details, shared with the main benchmark)


def demo_prompts(count: int) -> list[str]:
    """The first `count` instructions of the project's demo set (written by us)."""
    from rmcore.data import demo_data_path
    from rmcore.data.prompts import read_prompts

    prompts = [p for p in read_prompts(demo_data_path()) if isinstance(p, str)]
    if len(prompts) < count:
        raise SystemExit(f"the demo set has only {len(prompts)} single-turn prompts")
    return prompts[:count]


def build_models(name: str, workdir: Path) -> tuple[str, Path]:
    """(policy folder, reward-model folder saved by rmcore) for "embedded" or "tiny"."""
    from rmcore.model.reward_model import RewardModel, resolve_model_path

    if name == "tiny":
        from rmcore.model.tiny import build_tiny_model

        policy = str(build_tiny_model(workdir / "tiny"))
    else:
        policy, _ = resolve_model_path(name)
    reward = RewardModel.load(policy, device="cpu").save(workdir / "rm")  # the base with a seeded head
    return policy, reward


def timed(fn, device: str) -> tuple[float, Any]:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, out


# ----------------------------------------------------------------------------- 1. sampling


def plain_generate(model, tokenizer, prompts, n: int, max_new_tokens: int, temperature: float, seed: int):
    """The baseline: one `generate` call per prompt with its n answers, otherwise rmcore's settings."""
    import torch

    from rmcore.policy.sampling import end_token_ids, prompt_token_ids

    ends = end_token_ids(tokenizer, model)
    device = next(model.parameters()).device
    answers = []
    with torch.inference_mode():
        for index, prompt in enumerate(prompts):
            torch.manual_seed(seed + index)
            ids = torch.tensor([prompt_token_ids(tokenizer, prompt)], device=device)
            output = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True,
                                    temperature=temperature, top_p=1.0, top_k=0, max_new_tokens=max_new_tokens,
                                    num_return_sequences=n, use_cache=True, pad_token_id=ends[0],
                                    eos_token_id=ends)
            for row in output[:, ids.shape[1]:].tolist():
                end = next((i for i, t in enumerate(row) if t in ends), None)
                answers.append(row if end is None else row[: end + 1])
    return answers


def bench_sampling(policy_path: str, prompts: list[str], n: int, max_new_tokens: int, repeats: int,
                   device: str) -> dict[str, Any]:
    from rmcore.policy.models import load_policy
    from rmcore.policy.sampling import sample

    model, tokenizer, _ = load_policy(policy_path, device=device)
    sample(model, tokenizer, prompts[:1], 2, 4, 1.0, 0)  # warm-up
    runs: dict[str, list[dict[str, float]]] = {"rmcore": [], "plain_generate": []}
    kept = None
    for repeat in range(repeats):
        order = ["rmcore", "plain_generate"] if repeat % 2 == 0 else ["plain_generate", "rmcore"]
        for name in order:
            if name == "rmcore":
                def call(seed=repeat):
                    return sample(model, tokenizer, prompts, n, max_new_tokens, 1.0, seed)
            else:
                def call(seed=repeat):
                    return plain_generate(model, tokenizer, prompts, n, max_new_tokens, 1.0, seed)
            seconds, out = timed(call, device)
            if name == "rmcore":
                tokens = sum(s.num_tokens for g in out for s in g)
                kept = kept or out
            else:
                tokens = sum(len(a) for a in out)
            runs[name].append({"seconds": seconds, "tokens": tokens, "tokens_per_s": tokens / seconds})
    rates = {name: statistics.median(r["tokens_per_s"] for r in rs) for name, rs in runs.items()}
    return {"prompts": len(prompts), "n": n, "max_new_tokens": max_new_tokens, "runs": runs,
            "tokens_per_s": rates, "speedup": rates["rmcore"] / rates["plain_generate"],
            "samples": [[s.text for s in g] for g in kept]}


# ----------------------------------------------------------------------------- 2. scoring inside GRPO


def trl_trainer(policy_path: str, reward_path: str, workdir: Path, device: str):
    """A GRPOTrainer whose reward is the rmcore folder given BY PATH, as a TRL user would write it."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    args = GRPOConfig(output_dir=str(workdir / "trl"), per_device_train_batch_size=8, num_generations=8,
                      report_to="none", gradient_checkpointing=False, bf16=device == "cuda",
                      use_cpu=device == "cpu", disable_tqdm=True)
    dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": "hi"}]}])
    return GRPOTrainer(model=policy_path, reward_funcs=[reward_path], args=args, train_dataset=dataset)


def bench_scoring(policy_path: str, reward_path: Path, prompts: list[str], samples: list[list[str]],
                  repeats: int, workdir: Path, device: str) -> dict[str, Any]:
    from rmcore.model.reward_model import RewardModel
    from rmcore.policy.reward_function import RewardFunction

    trainer = trl_trainer(policy_path, str(reward_path), workdir, device)
    trl_model = trainer.reward_funcs[0]
    ours = RewardFunction(RewardModel.load(reward_path, device=device))
    ours.reward_model.prompt_cache.max_bytes = 0  # every GRPO step brings new prompts: no help from earlier calls
    # TRL's layout: each prompt repeated G times, conversational prompts and completions
    chat_prompts = [[{"role": "user", "content": p}] for p, group in zip(prompts, samples) for _ in group]
    completions = [[{"role": "assistant", "content": a}] for group in samples for a in group]
    inputs = [{"prompt": p} for p in chat_prompts]

    def trl_call():
        return trainer._calculate_rewards(inputs, chat_prompts, completions, [[0]] * len(completions))[:, 0].tolist()

    def rmcore_call():
        return ours(prompts=chat_prompts, completions=completions)

    trl_call(), rmcore_call()  # warm-up
    times: dict[str, list[float]] = {"trl_by_path": [], "rmcore": []}
    outputs = {}
    for repeat in range(repeats):
        for name in (["trl_by_path", "rmcore"] if repeat % 2 == 0 else ["rmcore", "trl_by_path"]):
            seconds, outputs[name] = timed(trl_call if name == "trl_by_path" else rmcore_call, device)
            times[name].append(seconds)
    # the tokens each side computes: TRL pads every sequence to the longest; rmcore packs a prompt's group
    tokenizer = ours.reward_model.tokenizer
    full = [len(tokenizer(ours.reward_model.render(p[0]["content"], c[0]["content"]),
                          add_special_tokens=False)["input_ids"]) for p, c in zip(chat_prompts, completions)]
    encoded = [ours.reward_model.encode(p, group) for p, group in zip(prompts, samples)]
    packed = sum(e.num_tokens for e in encoded)
    median = {k: statistics.median(v) for k, v in times.items()}
    return {"prompts": len(prompts), "G": len(samples[0]), "completions": len(completions),
            "seconds": median, "all_s": times, "speedup": median["trl_by_path"] / median["rmcore"],
            "tokens": {"trl_real": sum(full), "trl_padded": max(full) * len(full), "rmcore_packed": packed},
            "token_ratio": sum(full) / packed, "padded_token_ratio": max(full) * len(full) / packed,
            "trl_reward_dtype": str(next(trl_model.parameters()).dtype),
            "max_abs_reward_difference": max(abs(a - b) for a, b in zip(outputs["trl_by_path"], outputs["rmcore"]))}


# ----------------------------------------------------------------------------- report


def markdown(summary: dict[str, Any]) -> str:
    meta, scoring, sampling = summary["meta"], summary["scoring"], summary["sampling"]
    machine = meta["machine"]
    lines = [
        f"### {meta['date']} · commit {meta['git']['commit'] or '?'} · {machine['device']} ({machine['cpu']}, "
        f"{machine['cpu_count']} cores, {machine['torch_threads']} threads) · model {meta['model']} · "
        f"load average {meta['load_before']} -> {meta['load_after']}",
        "",
        f"Reward scoring inside GRPO: {scoring['prompts']} prompts x G = {scoring['G']} answers sampled by the policy "
        f"(up to {sampling['max_new_tokens']} new tokens), median of {len(scoring['all_s']['rmcore'])} alternating "
        f"calls; rewards agree to {scoring['max_abs_reward_difference']:.1e}. Tokens computed: TRL "
        f"{scoring['tokens']['trl_real']} real ({scoring['tokens']['trl_padded']} with padding), rmcore "
        f"{scoring['tokens']['rmcore_packed']}.",
        "",
        "| measure | rmcore | baseline | rmcore / baseline | token ratio |",
        "|---|---|---|---|---|",
        f"| reward scoring of {scoring['completions']} answers, s (baseline: TRL's reward-model path) | "
        f"{scoring['seconds']['rmcore']:.3f} | {scoring['seconds']['trl_by_path']:.3f} | "
        f"{scoring['speedup']:.2f}x | {scoring['token_ratio']:.2f}x real, {scoring['padded_token_ratio']:.2f}x "
        "padded |",
        f"| sampling, answer tokens/s (baseline: one generate call per prompt) | "
        f"{sampling['tokens_per_s']['rmcore']:.1f} | {sampling['tokens_per_s']['plain_generate']:.1f} | "
        f"{sampling['speedup']:.2f}x | |",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="embedded",
                        help="policy and reward-model base: 'embedded' (SmolLM2-135M-Instruct) or 'tiny' (smoke)")
    parser.add_argument("--prompts", type=int, default=4, help="demo instructions to sample and score")
    parser.add_argument("--group-size", type=int, default=8, help="answers per prompt (GRPO's G, best-of-n's n)")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="answer length limit when sampling")
    parser.add_argument("--repeats", type=int, default=3, help="alternating timed calls per side (medians)")
    parser.add_argument("--sample-repeats", type=int, default=2, help="alternating sampling runs per side")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"),
                        help="folder for the results (.json and .md); '' to write nothing")
    args = parser.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    device = bench_run.device_name()
    meta = {"date": time.strftime("%Y-%m-%d %H:%M"), "git": bench_run.git_info(), "model": args.model,
            "machine": bench_run.machine_info(device), "load_before": bench_run.load_average(), "args": vars(args)}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        policy_path, reward_path = build_models(args.model, workdir)
        prompts = demo_prompts(args.prompts)
        print(f"sampling {args.prompts} prompts x {args.group_size} ({device})", file=sys.stderr)
        sampling = bench_sampling(policy_path, prompts, args.group_size, args.max_new_tokens, args.sample_repeats,
                                  device)
        print("scoring inside GRPO: TRL's reward-model path against rmcore's RewardFunction", file=sys.stderr)
        scoring = bench_scoring(policy_path, reward_path, prompts, sampling.pop("samples"), args.repeats, workdir,
                                device)
    meta["load_after"] = bench_run.load_average()
    summary = {"meta": meta, "scoring": scoring, "sampling": sampling}
    table = markdown(summary)
    print(table)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        stem = f"{time.strftime('%Y%m%d-%H%M')}_{meta['git']['commit'] or 'nogit'}_{device}_rlhf_{args.model}"
        (out / f"{stem}.json").write_text(json.dumps(summary, indent=2, default=str))
        (out / f"{stem}.md").write_text(table)
        print(f"wrote {out / stem}.json and .md", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
