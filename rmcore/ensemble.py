"""Ensembles of reward models: several members trained on resamples of the data, read together.

One reward model gives one number and no hint of how sure it is. N members that differ only by
their seed and a bootstrap resample of the training prompts agree where the data pinned the reward
down and disagree where it did not; the spread across members is that uncertainty. Best-of-n can
then pick conservatively, by mean - k * spread, so an answer that only one lucky member loves does
not win (the research on reward over-optimisation finds this resists reward hacking).

Layout: `out_dir/members/<i>/` is each member, a standard HF folder plain transformers loads, and
`out_dir/ensemble.json` says how they were made. In head mode every member shares the base model's
trunk, so training the members reuses one set of cached trunk features (each costs about as much as
a few epochs of head training) and scoring runs the trunk once for all of them. In lora and full
mode an ensemble costs N full trainings and N models in memory.
"""

from __future__ import annotations

import copy
import json
import os
import random
import statistics
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from rmcore.data import RankedGroup
from rmcore.errors import ModelError
from rmcore.model import RewardModel, preference_matrix, unwrap_classifier

ENSEMBLE_FILE = "ensemble.json"
MEMBERS_DIR = "members"


def is_ensemble(path: str | os.PathLike) -> bool:
    return (Path(path) / ENSEMBLE_FILE).is_file()


def bootstrap_sample(groups: list[RankedGroup], seed: int) -> list[RankedGroup]:
    """As many prompts as there are, drawn with replacement: each member sees a slightly different data set
    (a prompt's comparisons stay together, since its answers share one loss term)."""
    rng = random.Random(seed)
    return [groups[rng.randrange(len(groups))] for _ in groups]


def train_ensemble(config, members: int, train_groups: list[RankedGroup], out_dir: str | os.PathLike, *,
                   eval_groups: list[RankedGroup] | None = None, bootstrap: bool = True, on_step=None,
                   stop_event=None, data_summary: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train `members` reward models (seeds config.seed, +1, ...; each on a bootstrap resample of the
    prompts unless `bootstrap` is False) into out_dir/members/<i>, all held out on the same
    `eval_groups`, and write ensemble.json. Returns its content."""
    from rmcore.train import train

    if members < 2:
        raise ValueError(f"an ensemble needs at least 2 members, got {members}")
    if not train_groups:
        raise ValueError("no training prompts")
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ModelError(f"{out}: an ensemble goes into a new or empty folder; choose another --out")
    info: dict[str, Any] = {"members": [], "mode": config.mode, "bootstrap": bootstrap, "seconds": []}
    for i in range(members):
        seed = config.seed + i
        groups = bootstrap_sample(train_groups, seed) if bootstrap else train_groups
        started = time.perf_counter()
        if on_step is not None:
            on_step({"event": "phase", "phase": f"ensemble member {i + 1} of {members} (seed {seed})",
                     "progress": None})
        result = train(replace(config, seed=seed), groups, out / MEMBERS_DIR / str(i), eval_groups=eval_groups,
                       on_step=on_step, stop_event=stop_event,
                       data_summary={**(data_summary or {}), "ensemble_member": i, "bootstrap": bootstrap})
        info["seconds"].append(round(time.perf_counter() - started, 3))
        info["members"].append({"path": f"{MEMBERS_DIR}/{i}", "seed": seed,
                                "held_out": (result.final.get("eval") or {}).get("eval_accuracy")})
        if result.stopped:
            info["stopped"] = True
            break
    (out / ENSEMBLE_FILE).write_text(json.dumps(info, indent=2))
    return info


@dataclass
class EnsembleScore:
    mean: list[float]  # the ensemble's reward of each candidate: the members' mean
    spread: list[float]  # the members' standard deviation per candidate: how unsure they are
    members: list[list[float]]  # (members, candidates) each member's rewards
    probabilities: list[list[float]]  # P[i][j] = sigma(mean_i - mean_j)
    best: int  # highest mean
    conservative_best: int  # highest mean - k * spread
    k: float

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class Ensemble:
    """Members read together: `Ensemble.load(dir).score(prompt, candidates, k=1.0)`."""

    def __init__(self, members: list[RewardModel], heads: list[torch.nn.Module] | None = None):
        self.members = members  # one loaded model, or one per member
        self.heads = heads  # head mode: every member's reward neuron, all on members[0]'s trunk
        self.root: Path | None = None  # the ensemble's folder, once loaded from one

    @classmethod
    def load(cls, path: str | os.PathLike, *, device: str | None = None) -> Ensemble:
        root = Path(path)
        if not is_ensemble(root):
            raise ModelError(f"{root}: no {ENSEMBLE_FILE}; not an rmcore ensemble")
        info = json.loads((root / ENSEMBLE_FILE).read_text())
        folders = [root / m["path"] for m in info["members"]]
        first = RewardModel.load(folders[0], device=device)
        if info.get("mode") == "head":
            ensemble = cls([first], [_load_head(first, folder) for folder in folders])
        else:
            ensemble = cls([first] + [RewardModel.load(folder, device=device) for folder in folders[1:]])
        ensemble.root = root
        return ensemble

    def __len__(self) -> int:
        return len(self.heads) if self.heads is not None else len(self.members)

    def member_rewards(self, prompt, candidates: list[str]) -> list[list[float]]:
        """(members, candidates): every member's rewards of the candidates."""
        if self.heads is None:
            return [m.rewards(prompt, candidates) for m in self.members]
        base = self.members[0]
        features = _features(base, base.encode(prompt, candidates))  # (K, H), one trunk pass for all heads
        with torch.inference_mode():
            return [head(features.to(next(head.parameters()).dtype)).squeeze(-1).float().tolist()
                    for head in self.heads]

    @property
    def name(self) -> str:
        return str(self.root) if self.root is not None else self.members[0].name

    def member_rewards_for(self, encoded: list, batch_size: int = 8, on_progress=None) -> list[list[list[float]]]:
        """Per group, (members, responses) rewards; in head mode one trunk pass per batch serves every head."""
        if self.heads is None:
            per_member = [m.rewards_for(encoded, batch_size=batch_size, on_progress=on_progress)
                          for m in self.members]
            return [[rewards[g] for rewards in per_member] for g in range(len(encoded))]
        from rmcore.batching import pack_groups

        base = self.members[0]
        order = sorted(range(len(encoded)), key=lambda i: encoded[i].num_tokens)  # similar lengths batch well
        by_index: dict[int, list[list[float]]] = {}
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            batch = pack_groups([encoded[i] for i in idx], base.tokenizer.pad_token_id).to(base.device)
            with torch.inference_mode(), base._lock, base._autocast():
                features = base.packed(batch, features_only=True).float()  # (responses in batch, H)
                flat = [head(features.to(next(head.parameters()).dtype)).squeeze(-1).float().tolist()
                        for head in self.heads]  # (members, responses in batch)
            first = 0
            for i, size in zip(idx, batch.group_sizes):
                by_index[i] = [member[first : first + size] for member in flat]
                first += size
            if on_progress is not None:
                on_progress(min(1.0, (start + len(idx)) / len(order)))
        return [by_index[i] for i in range(len(encoded))]

    def score(self, prompt, candidates: list[str], k: float = 1.0) -> EnsembleScore:
        """Mean reward, spread and picks. A Bradley-Terry reward is defined only up to a constant, and
        each member settles on its own, so the spread is taken over each member's rewards minus its
        mean over these candidates: members that rank and space the candidates alike agree, whatever
        their offsets. (One candidate alone therefore has no spread.)"""
        rewards = self.member_rewards(prompt, candidates)
        centred = [[r - statistics.fmean(member) for r in member] for member in rewards]
        mean = [statistics.fmean(c) for c in zip(*rewards)]
        spread = [statistics.pstdev(c) for c in zip(*centred)]
        best = max(range(len(mean)), key=mean.__getitem__)
        careful = max(range(len(mean)), key=lambda i: mean[i] - k * spread[i])
        return EnsembleScore(mean, spread, rewards, preference_matrix(mean), best, careful, k)


def _load_head(base: RewardModel, folder: Path) -> torch.nn.Module:
    """A member's reward neuron (its only trained weights in head mode), checked to sit on the same trunk."""
    from safetensors import safe_open

    meta = json.loads((folder / "rmcore.json").read_text())
    if meta.get("base_model") != base.metadata.get("base_model"):
        raise ModelError(f"{folder}: trained on {meta.get('base_model')}, not {base.metadata.get('base_model')}")
    head = copy.deepcopy(unwrap_classifier(base.model).score)
    files = sorted(folder.glob("*.safetensors"))
    state = {}
    for file in files:
        with safe_open(str(file), framework="pt") as weights:
            for name in weights.keys():
                if name.startswith("score."):
                    state[name.removeprefix("score.")] = weights.get_tensor(name)
    if not state:
        raise ModelError(f"{folder}: no reward head (score.*) in its weights")
    head.load_state_dict(state)
    return head.to(base.device).eval()


def _features(model: RewardModel, encoded) -> torch.Tensor:
    """The trunk's hidden state at each response's last token, (K, H): what every head reads."""
    from rmcore.batching import pack_groups

    batch = pack_groups([encoded], model.tokenizer.pad_token_id).to(model.device)
    with torch.inference_mode(), model._lock, model._autocast():
        return model.packed(batch, features_only=True).float()


def evaluate_ensemble(ensemble: Ensemble, groups: list[RankedGroup], batch_size: int = 8, on_progress=None,
                      categories: list[str | None] | None = None):
    """`rmcore.evaluate.evaluate` of the members' mean reward, plus how accuracy falls as the members
    disagree: each pair's disagreement is the spread of the members' margins r_w - r_l (pairs where
    they disagree are the ones to distrust, and to label next)."""
    from rmcore.evaluate import result_from_rewards

    base = ensemble.members[0]
    encoded = [base.encode(g.prompt, g.responses) for g in groups]
    per_group = ensemble.member_rewards_for(encoded, batch_size=batch_size, on_progress=on_progress)
    mean = [[statistics.fmean(column) for column in zip(*members)] for members in per_group]
    tokens = [[len(ids) for ids in enc.response_ids] for enc in encoded]
    result = result_from_rewards(groups, mean, tokens, ensemble.name, True, categories)
    where = [(gi, w, l) for gi, g in enumerate(groups) for w, l in g.pairs()]
    member_hits = [[0, 0] for _ in range(len(ensemble))]
    for pair, (gi, w, l) in zip(result.pairs, where, strict=True):
        margins = [member[w] - member[l] for member in per_group[gi]]
        pair["disagreement"] = statistics.pstdev(margins)
        for m, margin in enumerate(margins):
            member_hits[m][0] += margin > 0
            member_hits[m][1] += 1
    result.summary["ensemble"] = {
        "members": len(ensemble),
        "member_accuracies": [h / n if n else None for h, n in member_hits],
        "accuracy_by_disagreement": accuracy_by_disagreement(result.pairs),
    }
    return result


def accuracy_by_disagreement(pairs: list[dict[str, Any]], bins: int = 4) -> list[dict[str, Any]]:
    """Accuracy of the ensemble in equal-count bins of member disagreement, least disputed first."""
    ordered = sorted(pairs, key=lambda p: p["disagreement"])
    out = []
    for b in range(bins):
        part = ordered[b * len(ordered) // bins : (b + 1) * len(ordered) // bins]
        if part:
            out.append({"low": part[0]["disagreement"], "high": part[-1]["disagreement"], "comparisons": len(part),
                        "accuracy": sum(p["correct"] for p in part) / len(part)})
    return out
