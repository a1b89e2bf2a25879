"""`rmcore serve` against the reward service a user would write, over loopback, in one run.

The baseline is transformers' text-classification pipeline behind the same ASGI stack (Starlette
under uvicorn) that takes one request at a time: each request's candidates are rendered with the
model's chat template (`RewardModel.render`, the text the pipeline needs for the same reward) and
scored by `pipe(texts)`. Both servers run in their own process, started by this script, with the
same model; the clients are threads here sending `POST /score` over loopback.

Workloads (each request: one prompt and its candidates):
- new4: a new instruction every request (OASST, cut to ~128 tokens) with 4 candidates (~64 tokens);
- grpo8: 8 new candidates for an instruction the server has scored before (GRPO's G samples, or
  best-of-n in a loop), which rmcore's prompt cache holds.
For 1, 4 and 16 concurrent clients (closed loop: each sends its next request when answered) it
reports items (candidates) per second and the median and 95th-percentile request latency; the
two servers take turns on each level. It also times, with one client, rmcore serve against
`RewardModel.score` called in this process on the same requests.

    python bench/serve.py                                # the embedded model
    python bench/serve.py --model /tmp/serve-demo        # a trained model (repeat --model for several)
    python bench/serve.py --model tiny --scale 0.25      # seconds: a smoke run on a tiny random model

Results go to bench/results/ as `DATE-TIME_COMMIT_DEVICE_serve.json` and `.md`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as bench_run  # noqa: E402  (bench/run.py: machine and git info, the OASST scoring calls)
from trials import resolve_model  # noqa: E402  (bench/trials.py: the model folder for --model)

LEVELS = (1, 4, 16)
REQUESTS = {1: 8, 4: 16, 16: 32}  # requests per level and workload, before --scale
TARGETS = {"throughput_16_clients": 3.0, "latency_1_client_vs_in_process": 1.10}


# ----------------------------------------------------------------------------- the baseline server


def baseline_app(model_dir: str):
    """POST /score {"prompt", "responses"} -> {"rewards"}: the pipeline, one request at a time."""
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.responses import JSONResponse
    from starlette.routing import Route
    from transformers import pipeline

    from rmcore.model.reward_model import RewardModel

    renderer = RewardModel.load(model_dir)  # for its chat template only
    pipe = pipeline("text-classification", model=model_dir, function_to_apply="none", device="cpu")
    one_at_a_time = threading.Lock()

    def rewards(prompt, responses) -> list[float]:
        with one_at_a_time:
            return [out["score"] for out in pipe([renderer.render(prompt, r) for r in responses])]

    async def score(request):
        body = await request.json()
        return JSONResponse({"rewards": await run_in_threadpool(rewards, body["prompt"], body["responses"])})

    return Starlette(routes=[Route("/score", score, methods=["POST"])])


def serve_baseline(model_dir: str) -> int:
    import uvicorn

    from rmcore.serving.service import bind, url_of

    sock = bind("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(baseline_app(model_dir), log_level="warning", access_log=False))
    print(f"baseline on {url_of(sock)}", flush=True)
    server.run(sockets=[sock])
    return 0


# ----------------------------------------------------------------------------- running servers and clients


def torch_threads() -> int:
    """This process's torch threads; every server started here gets as many (OMP_NUM_THREADS)."""
    import torch

    return torch.get_num_threads()


class Launched:
    """A server in a subprocess; `url` comes from the line it prints once it listens."""

    def __init__(self, command: list[str]):
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
               "OMP_NUM_THREADS": str(torch_threads())}
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=None, text=True, env=env)
        for line in self.process.stdout:
            if match := re.search(r" on (http://\S+)$", line.strip()):
                self.url = match.group(1)
                break
        else:
            raise SystemExit(f"{' '.join(command)} did not start")
        threading.Thread(target=self.process.stdout.read, daemon=True).start()  # keep its pipe drained

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


def post(client: httpx.Client, url: str, prompt: str, responses: list[str]) -> tuple[float, list[float]]:
    start = time.perf_counter()
    answer = client.post(f"{url}/score", json={"prompt": prompt, "responses": responses})
    elapsed = time.perf_counter() - start
    if answer.status_code != 200:
        raise SystemExit(f"{url}/score answered {answer.status_code}: {answer.text}")
    return elapsed, answer.json()["rewards"]


def run_level(url: str, calls: list[tuple[str, list[str]]], clients: int) -> dict[str, Any]:
    """`clients` threads send `calls` (client i takes calls i, i + clients, ...), each as soon as its
    previous one is answered. Items per second over the wall time of the whole level."""
    from rmcore.serving.batcher import percentile

    latencies: list[float] = [0.0] * len(calls)
    rewards: list[list[float]] = [[] for _ in calls]
    barrier = threading.Barrier(clients + 1)

    def client(first: int) -> None:
        with httpx.Client(timeout=600) as http:
            barrier.wait()
            for i in range(first, len(calls), clients):
                latencies[i], rewards[i] = post(http, url, *calls[i])

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    barrier.wait()
    start = time.perf_counter()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    items = sum(len(responses) for _, responses in calls)
    return {"clients": clients, "requests": len(calls), "items": items, "wall_s": wall, "items_per_s": items / wall,
            "p50_s": percentile(latencies, 0.5), "p95_s": percentile(latencies, 0.95), "latencies_s": latencies,
            "rewards": rewards}


def metric(url: str, name: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    found = re.search(rf"^{name} (\S+)$", text, re.M)
    return float(found.group(1)) if found else float("nan")


# ----------------------------------------------------------------------------- workloads


def request_counts(scale: float) -> dict[int, int]:
    """Requests per level: REQUESTS times `scale`, a multiple of the clients (each sends as many)."""
    return {c: c * max(1, round(n * scale / c)) for c, n in REQUESTS.items()}


def workloads(tokenizer, scale: float) -> dict[str, Any]:
    """New-instruction calls (4 candidates) for every level, the in-process comparison and warm-up;
    GRPO calls (8 fresh candidates for one of 16 instructions warmed up beforehand)."""
    counts = request_counts(scale)
    in_process = max(2, round(8 * scale))
    pool = bench_run.scoring_calls(tokenizer, 100)  # 100 instructions, 4 candidates each
    replies = [r for _, candidates in pool for r in candidates]
    new_prompts = [p for p, _ in pool[16:]]
    tagged = (f"Request {n}: {p}" for n in range(10**6) for p in new_prompts)  # a new prompt whenever wanted
    taken = iter(range(10**9))

    def fresh(k: int) -> list[str]:  # the next k replies of the pool, round and round
        return [replies[next(taken) % len(replies)] for _ in range(k)]

    grpo_prompts = [p for p, _ in pool[:16]]
    new4 = {c: [(next(tagged), fresh(4)) for _ in range(counts[c])] for c in LEVELS}
    grpo8 = {c: [(grpo_prompts[i % len(grpo_prompts)], fresh(8)) for i in range(counts[c])] for c in LEVELS}
    latency = [(next(tagged), pool[i % len(pool)][1]) for i in range(in_process)]
    return {"new4": new4, "grpo8": grpo8, "grpo_warmup": [(p, replies[:4]) for p in grpo_prompts],
            "latency": latency, "warmup": (next(tagged), replies[:4]), "counts": counts}


# ----------------------------------------------------------------------------- one model


def bench_model(name: str, model_dir: str, args, workdir: Path) -> dict[str, Any]:
    from rmcore.model.reward_model import RewardModel

    print(f"[serve bench] {name}: loading", file=sys.stderr, flush=True)
    in_process = RewardModel.load(model_dir, dtype=args.dtype)
    if not in_process.trained:  # a base model: save rmcore's seeded head, so the pipeline reads the same one
        model_dir = str(RewardModel.load(model_dir).save(workdir / f"rm-{len(list(workdir.iterdir()))}"))
        in_process = RewardModel.load(model_dir, dtype=args.dtype)
    work = workloads(in_process.tokenizer, args.scale)
    python = sys.executable
    ours = Launched([python, "-m", "rmcore", "serve", "--model", model_dir, "--port", "0", "--dtype", args.dtype])
    theirs = Launched([python, str(Path(__file__).resolve()), "--baseline-server", model_dir])
    try:
        with httpx.Client(timeout=600) as http:
            for url in (ours.url, theirs.url):
                post(http, url, *work["warmup"])
            for call in work["grpo_warmup"]:  # the instructions GRPO requests come back to
                post(http, ours.url, *call)
        levels: dict[str, dict[str, list]] = {}
        passes: dict[str, dict[str, float]] = {}
        for workload in ("new4", "grpo8"):
            levels[workload] = {"rmcore": [], "baseline": []}
            passes[workload] = {}
            for n, clients in enumerate(LEVELS):
                calls = work[workload][clients]
                order = [("rmcore", ours.url), ("baseline", theirs.url)]
                for impl, url in (order if n % 2 == 0 else order[::-1]):
                    before = metric(ours.url, "rmcore_forward_passes_total") if impl == "rmcore" else 0.0
                    result = run_level(url, calls, clients)
                    if impl == "rmcore":
                        passes[workload][str(clients)] = metric(ours.url, "rmcore_forward_passes_total") - before
                    levels[workload][impl].append(result)
                    print(f"[serve bench] {name} {workload} {impl:8} {clients:2} clients: "
                          f"{result['items_per_s']:.2f} items/s, p50 {result['p50_s']:.3f} s, "
                          f"p95 {result['p95_s']:.3f} s", file=sys.stderr, flush=True)
        single = latency_vs_in_process(ours.url, in_process, work["latency"])
        agreement = max(abs(a - b) for ours_level, base_level in zip(levels["new4"]["rmcore"],
                                                                      levels["new4"]["baseline"])
                        for x, y in zip(ours_level["rewards"], base_level["rewards"]) for a, b in zip(x, y))
        cache_hits = metric(ours.url, "rmcore_prompt_cache_hit_tokens_total")
    finally:
        code, _ = ours.stop(), theirs.stop()
    for workload in levels.values():
        for runs in workload.values():
            for result in runs:
                del result["rewards"]
    return {"model": name, "model_path": model_dir, "dtype": args.dtype, "trained": in_process.trained,
            "levels": levels, "forward_passes": passes, "in_process": single, "prompt_cache_hit_tokens": cache_hits,
            "max_abs_reward_difference_vs_baseline": agreement, "exit_code": code,
            "ratios": ratios(levels, single)}


def latency_vs_in_process(url: str, model, calls) -> dict[str, Any]:
    """One client: the server's request latency and `model.score` in this process, taking turns."""
    served, local, differences = [], [], []
    with httpx.Client(timeout=600) as http:
        for n, call in enumerate(calls):
            for side in (("served", "local") if n % 2 == 0 else ("local", "served")):
                if side == "served":
                    elapsed, remote = post(http, url, *call)
                    served.append(elapsed)
                else:
                    start = time.perf_counter()
                    rewards = model.score(*call).rewards
                    local.append(time.perf_counter() - start)
            differences += [abs(a - b) for a, b in zip(remote, rewards)]
    return {"calls": len(calls), "served_p50_s": statistics.median(served),
            "in_process_p50_s": statistics.median(local), "served_s": served, "in_process_s": local,
            "max_abs_reward_difference": max(differences)}


def ratios(levels, single) -> dict[str, float]:
    out = {}
    for workload, impls in levels.items():
        for ours, theirs in zip(impls["rmcore"], impls["baseline"]):
            c = ours["clients"]
            out[f"{workload} {c} clients throughput"] = ours["items_per_s"] / theirs["items_per_s"]
            out[f"{workload} {c} clients p95 (rmcore/baseline)"] = ours["p95_s"] / theirs["p95_s"]
    out["1 client latency served/in-process"] = single["served_p50_s"] / single["in_process_p50_s"]
    return out


# ----------------------------------------------------------------------------- report


def markdown(summary: dict[str, Any]) -> str:
    meta = summary["meta"]
    lines = [f"# rmcore serve benchmark, {meta['date']} ({meta['git']['commit']}"
             f"{', uncommitted changes' if meta['git']['dirty'] else ''})", "",
             f"{meta['machine'].get('cpu', '')}, {meta['machine']['cpu_count']} cores, torch "
             f"{meta['machine']['torch']} ({meta['machine']['torch_threads']} threads); load average at start "
             f"{meta['load_average_start']}, at end {meta['load_average_end']}. Loopback HTTP; closed-loop clients; "
             f"requests per level {summary['counts']}.", ""]
    for block in summary["models"]:
        lines += [f"## {block['model']} ({block['dtype']}{'' if block['trained'] else ', untrained head'})", "",
                  "| workload | clients | rmcore items/s | baseline items/s | throughput ratio | rmcore p50 / p95 s | "
                  "baseline p50 / p95 s | rmcore forward passes / requests |", "|---|---|---|---|---|---|---|---|"]
        for workload, impls in block["levels"].items():
            for ours, theirs in zip(impls["rmcore"], impls["baseline"]):
                c = ours["clients"]
                lines.append(f"| {workload} | {c} | {ours['items_per_s']:.2f} | {theirs['items_per_s']:.2f} | "
                             f"{ours['items_per_s'] / theirs['items_per_s']:.2f}x | {ours['p50_s']:.2f} / "
                             f"{ours['p95_s']:.2f} | {theirs['p50_s']:.2f} / {theirs['p95_s']:.2f} | "
                             f"{block['forward_passes'][workload][str(c)]:.0f} / {ours['requests']} |")
        single = block["in_process"]
        lines += ["", f"One client, new instruction, 4 candidates: served {single['served_p50_s']:.3f} s against "
                      f"`RewardModel.score` in process {single['in_process_p50_s']:.3f} s (median of "
                      f"{single['calls']}; ratio {block['ratios']['1 client latency served/in-process']:.3f}); "
                      f"rewards agree to {single['max_abs_reward_difference']:.1e} (served vs in process) and "
                      f"{block['max_abs_reward_difference_vs_baseline']:.1e} (vs the pipeline). Prompt-cache tokens "
                      f"reused by the server: {block['prompt_cache_hit_tokens']:.0f}. rmcore serve's exit status "
                      f"after SIGTERM: {block['exit_code']}.", ""]
        lines += ["| target | value | wanted | met |", "|---|---|---|---|"]
        for check in block["targets"]:
            met = "yes" if check["met"] else "no"
            lines.append(f"| {check['name']} | {check['value']} | {check['wanted']} | {met} |")
        lines.append("")
    return "\n".join(lines) + "\n"


def check_targets(block: dict[str, Any]) -> list[dict[str, Any]]:
    r = block["ratios"]
    checks = []
    for workload in block["levels"]:
        throughput = r[f"{workload} 16 clients throughput"]
        p95 = r[f"{workload} 16 clients p95 (rmcore/baseline)"]
        checks.append({"name": f"{workload}, 16 clients: throughput vs baseline, p95 vs baseline",
                       "value": f"{throughput:.2f}x, p95 {p95:.2f}x",
                       "wanted": f">= {TARGETS['throughput_16_clients']:.0f}x, p95 <= 1x",
                       "met": throughput >= TARGETS["throughput_16_clients"] and p95 <= 1.0})
    latency = r["1 client latency served/in-process"]
    checks.append({"name": "1 client: served latency / in-process RewardModel.score", "value": f"{latency:.3f}",
                   "wanted": f"<= {TARGETS['latency_1_client_vs_in_process']:.2f}",
                   "met": latency <= TARGETS["latency_1_client_vs_in_process"]})
    return checks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", help="'embedded' (default), 'tiny' or a model folder; repeat")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                        help="rmcore serve's precision (the baseline always runs float32)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the request counts (default 1)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"), help="results folder; '' writes nothing")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads of every process (default 1: on a CPU shared with other work, two "
                             "threads per process can run ten times slower, waiting for each other)")
    parser.add_argument("--baseline-server", metavar="DIR", help=argparse.SUPPRESS)  # the baseline's own process
    args = parser.parse_args(argv)
    if args.baseline_server:
        return serve_baseline(args.baseline_server)
    import torch

    torch.set_num_threads(args.threads)

    meta = {"date": time.strftime("%Y-%m-%d %H:%M"), "git": bench_run.git_info(),
            "machine": bench_run.machine_info("cpu"), "load_average_start": bench_run.load_average()}
    blocks = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.model or ["embedded"]:
            block = bench_model(name, resolve_model(name, Path(tmp)), args, Path(tmp))
            block["targets"] = check_targets(block)
            blocks.append(block)
    meta["load_average_end"] = bench_run.load_average()
    summary = {"meta": meta, "counts": {str(c): n for c, n in request_counts(args.scale).items()},
               "models": blocks, "torch_threads": torch.get_num_threads()}
    report = markdown(summary)
    print(report)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        stem = f"{time.strftime('%Y%m%d-%H%M')}_{meta['git']['commit'] or 'nogit'}_cpu_serve"
        (out / f"{stem}.json").write_text(json.dumps(summary, indent=2))
        (out / f"{stem}.md").write_text(report)
        print(f"wrote {out / stem}.json and .md", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
