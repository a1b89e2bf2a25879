"""Ensembles of reward models: several members trained on resamples of the data, read together.

One reward model gives one number and no hint of how sure it is. N members that differ only by
their seed and a bootstrap resample of the training prompts agree where the data pinned the reward
down and disagree where it did not; the spread across members is that uncertainty. Best-of-n can
then pick conservatively, by mean - k * spread, so an answer that only one lucky member loves does
not win (the research on reward over-optimisation finds this resists reward hacking).

Layout: `out_dir/members/<i>/` is each member, a standard HF folder plain transformers loads,
`out_dir/ensemble.json` says how they were made, and `out_dir/held_out.jsonl` holds the held-out
prompts every member was measured on. In head mode every member shares the base model's trunk, so
one `SharedTrunk` loads the base model and computes the trunk features once for all members, and
each member after the first is saved as its head shard beside links to the first member's files:
a member costs a few epochs of head training. Scoring runs the trunk once for all of them. In lora
and full mode an ensemble costs N full trainings and N models in memory.
"""

from __future__ import annotations

import copy
import json
import os
import random
import shutil
import statistics
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from rmcore.analysis.evaluate import result_from_rewards
from rmcore.core.errors import ModelError
from rmcore.core.folders import HELD_OUT_FILE, METADATA_FILE, read_metadata, save_folder
from rmcore.core.outputs import atomic_write_text
from rmcore.data import RankedGroup, write_ranked_jsonl
from rmcore.data.encoding import encode_groups
from rmcore.model.batching import pack_groups
from rmcore.model.card import CARD_FILE, render_card
from rmcore.model.feature_cache import group_key
from rmcore.model.reward_model import (
    RewardModel,
    load_sequence_classifier,
    preference_matrix,
    save_reward_model,
    unwrap_classifier,
)
from rmcore.model.shared_trunk import HEAD_SHARD, TRUNK_SHARD
from rmcore.training.features import trunk_features
from rmcore.training.train import train

ENSEMBLE_FILE = "ensemble.json"
MEMBERS_DIR = "members"


def is_ensemble(path: str | os.PathLike) -> bool:
    return (Path(path) / ENSEMBLE_FILE).is_file()


def read_info(path: str | os.PathLike) -> dict[str, Any]:
    """An ensemble's ensemble.json (members, mode, seeds), or one line naming what is wrong with it."""
    info = read_metadata(path, ENSEMBLE_FILE)
    members = info.get("members")
    if not isinstance(members, list) or not members or not all(
            isinstance(m, dict) and isinstance(m.get("path"), str) for m in members):
        raise ModelError(f"{Path(path) / ENSEMBLE_FILE}: no list of members with their paths; the file is damaged")
    root = Path(path).resolve()
    for member in members:
        if not (root / member["path"]).resolve().is_relative_to(root):
            raise ModelError(f"{Path(path) / ENSEMBLE_FILE}: member {member['path']!r} is outside the ensemble's "
                             "folder; rmcore reads members only inside it")
    return info


def member_folders(path: str | os.PathLike) -> list[Path]:
    """Each member's model folder, in order."""
    return [Path(path) / member["path"] for member in read_info(path)["members"]]


def ensemble_folders(root: str | os.PathLike) -> list[Path]:
    """The ensembles directly inside `root` (a models folder), newest first; hidden folders left out."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [child for child in root.iterdir()
             if not child.name.startswith(".") and child.is_dir() and is_ensemble(child)]
    return sorted(found, key=lambda child: (child / ENSEMBLE_FILE).stat().st_mtime, reverse=True)


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
    `eval_groups` (saved as out_dir/held_out.jsonl), and write ensemble.json. Returns its content.

    Head mode lends every member's train() one SharedTrunk: the base model is loaded and the trunk
    features are computed (or read from the cache) once, and members after the first are saved cheaply.
    """

    if members < 2:
        raise ValueError(f"an ensemble needs at least 2 members, got {members}")
    config = config.head_first()  # --mode auto: an ensemble's members share one trunk, in head mode
    if not train_groups:
        raise ValueError("no training prompts")
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ModelError(f"{out}: an ensemble goes into a new or empty folder; choose another --out")
    trunk = SharedTrunk(train_groups + list(eval_groups or [])) if config.mode == "head" else None
    info: dict[str, Any] = {"members": [], "mode": config.mode, "bootstrap": bootstrap, "seconds": [],
                            "shared_trunk": trunk is not None}
    for i in range(members):
        seed = config.seed + i
        groups = bootstrap_sample(train_groups, seed) if bootstrap else train_groups
        started = time.perf_counter()
        if on_step is not None:
            on_step({"event": "phase", "phase": f"ensemble member {i + 1} of {members} (seed {seed})",
                     "progress": None})
        result = train(replace(config, seed=seed), groups, out / MEMBERS_DIR / str(i), eval_groups=eval_groups,
                       on_step=on_step, stop_event=stop_event, trunk=trunk,
                       data_summary={**(data_summary or {}), "ensemble_member": i, "bootstrap": bootstrap})
        info["seconds"].append(round(time.perf_counter() - started, 3))
        info["members"].append({"path": f"{MEMBERS_DIR}/{i}", "seed": seed,
                                "held_out": (result.final.get("eval") or {}).get("eval_accuracy")})
        if result.stopped:
            info["stopped"] = True
            break
    if eval_groups:
        atomic_write_text(out / HELD_OUT_FILE, write_ranked_jsonl(eval_groups))
    atomic_write_text(out / ENSEMBLE_FILE, json.dumps(info, indent=2))
    return info


class SharedTrunk:
    """One base model and its trunk features, lent to the train() call of every head-mode member.

    In head mode the trunk is frozen, so the members differ only in their reward neuron: this loads
    the base model once (each member gets a fresh head, initialised from its seed exactly as a model
    loaded alone would be), computes the trunk features of every prompt any member may draw once,
    and saves members after the first as their head shard beside copies and links of the first
    member's other files (a full save writes and hashes the whole trunk again).
    """

    def __init__(self, groups: list[RankedGroup]):
        self.groups = groups  # every prompt a member can train or be measured on
        self.classifier = self.tokenizer = None
        self.by_group: dict[int, torch.Tensor] = {}  # rmcore.model.feature_cache.group_key -> (K, H) features
        self.first_folder: Path | None = None  # the first member's folder, once saved

    def model_for(self, model_path: str, seed: int):
        """(classifier, tokenizer): the base model, loaded on the first call, with a head fresh from `seed`."""
        if self.classifier is None:
            self.classifier, self.tokenizer, _ = load_sequence_classifier(model_path, seed=seed)
        else:
            fresh_head(self.classifier, seed)
        return self.classifier, self.tokenizer

    def features(self, config, model_path: str, packed, encoded: list, encoded_eval: list, pad_id: int,
                 accelerator, phase, should_stop) -> tuple[torch.Tensor, torch.Tensor | None]:
        """rmcore.training.features.trunk_features for these groups, computed for every group on the first call."""

        def add(groups: list) -> None:
            if groups:
                stacked, _ = trunk_features(config, model_path, packed, groups, [], pad_id, accelerator, phase,
                                            should_stop)
                sizes = [len(g.response_ids) for g in groups]
                self.by_group.update({group_key(g): part for g, part in zip(groups, stacked.split(sizes))})

        if not self.by_group:
            add(encode_groups(self.tokenizer, self.groups, config.max_length))
        else:
            phase("trunk features shared with the first member")
        # dialogues a member's plan cut to their last turns (--max-turns) are other token rows
        missing = {group_key(g): g for g in encoded + encoded_eval if group_key(g) not in self.by_group}
        add(list(missing.values()))

        def stack(groups: list) -> torch.Tensor:
            return torch.cat([self.by_group[group_key(g)] for g in groups])

        return stack(encoded), (stack(encoded_eval) if encoded_eval else None)

    def save(self, classifier, tokenizer, out_dir: Path, metadata: dict[str, Any], *,
             extra_files: dict[str, str], keep: tuple[str, ...] = (), on_note=None) -> Path:
        """rmcore.model.reward_model.save_reward_model for the first member; its head beside the first's files after."""

        first = self.first_folder
        # the usual save for the first member, for a stopped one (it keeps its checkpoint), and whenever the
        # first member's trunk is not a shard of its own (a single model.safetensors holds its head too)
        if first is None or keep or not (first / TRUNK_SHARD).is_file():
            folder = save_reward_model(classifier, tokenizer, out_dir, metadata, extra_files=extra_files, keep=keep,
                                       on_note=on_note)
            self.first_folder = first or folder
            return folder
        return save_head_beside(first, classifier, out_dir, metadata, extra_files, on_note)


def fresh_head(classifier, seed: int) -> None:
    """Re-initialise the reward neuron as loading the base model with `seed` does (rmcore.model.reward_model)."""
    head = unwrap_classifier(classifier).score
    torch.manual_seed(seed)
    unwrap_classifier(classifier)._init_weights(head)


def save_head_beside(first: Path, classifier, out_dir: str | os.PathLike, metadata: dict[str, Any],
                     extra_files: dict[str, str], on_note=None) -> Path:
    """Save a head-mode model whose trunk, config and tokenizer are those of the saved model `first`.

    The folder is what rmcore.model.reward_model.save_reward_model would write: the same files (the trunk shard a
    hard link to the same bytes, config and tokenizer copied), its own head shard, card and
    rmcore.json. It is built in a hidden temporary folder and renamed into place.
    """
    written = read_metadata(first)["files"]  # our own file, written a moment ago by the first member
    head = unwrap_classifier(classifier).score

    def write(tmp: Path) -> None:
        for name in written:
            if name == TRUNK_SHARD:
                try:
                    os.link(first / name, tmp / name)
                except OSError:  # another filesystem: a copy, as save_reward_model falls back to
                    shutil.copyfile(first / name, tmp / name)
            elif name not in (METADATA_FILE, CARD_FILE, HEAD_SHARD, *extra_files):
                shutil.copyfile(first / name, tmp / name)
        save_file({f"score.{n}": p.detach().float().cpu().contiguous() for n, p in head.named_parameters()},
                  str(tmp / HEAD_SHARD), metadata={"format": "pt"})
        for name, text in extra_files.items():
            (tmp / name).write_text(text)
        (tmp / CARD_FILE).write_text(render_card(metadata, Path(out_dir).resolve().name))

    return save_folder(out_dir, write, metadata, on_note=on_note)


@dataclass
class EnsembleScore:
    mean: list[float]  # the ensemble's reward of each candidate: the members' mean
    spread: list[float]  # the members' standard deviation per candidate: how unsure they are
    members: list[list[float]]  # (members, candidates) each member's rewards
    probabilities: list[list[float]]  # P[i][j] = sigma(mean_i - mean_j)
    best: int  # highest mean
    conservative_best: int  # highest mean - k * spread
    k: float
    trained: bool = True  # every member a trained model
    truncated_prompt: bool = False  # the prompt lost tokens from the left to fit the max length
    truncated_responses: list[int] = field(default_factory=list)  # candidates whose end was cut

    @property
    def rewards(self) -> list[float]:
        """The mean, under the name a single model's ScoreResult uses."""
        return self.mean

    def pick(self, k: float) -> int:
        """The conservative pick for another k: the highest mean - k * spread (k = 0: the highest mean)."""
        return max(range(len(self.mean)), key=lambda i: self.mean[i] - k * self.spread[i])

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class Ensemble:
    """Members read together: `Ensemble.load(dir).score(prompt, candidates, k=1.0)`.

    It also answers `encode`, `rewards_for` and `rewards` as a RewardModel does, with the members'
    mean reward, so what takes a model (rmcore.analysis.probes, rmcore.analysis.scoring) takes an ensemble.
    """

    def __init__(self, members: list[RewardModel], heads: list[torch.nn.Module] | None = None):
        self.members = members  # one loaded model, or one per member
        self.heads = heads  # head mode: every member's reward neuron, all on members[0]'s trunk
        self.root: Path | None = None  # the ensemble's folder, once loaded from one

    @classmethod
    def load(cls, path: str | os.PathLike, *, device: str | None = None) -> Ensemble:
        root = Path(path)
        if not is_ensemble(root):
            raise ModelError(f"{root}: no {ENSEMBLE_FILE}; not an rmcore ensemble")
        info = read_info(root)
        folders = member_folders(root)
        first = RewardModel.load(folders[0], device=device)
        if info.get("mode") == "head":
            ensemble = cls([first], [_load_head(first, folder) for folder in folders])
        else:
            ensemble = cls([first] + [RewardModel.load(folder, device=device) for folder in folders[1:]])
        ensemble.root = root
        return ensemble

    def __len__(self) -> int:
        return len(self.heads) if self.heads is not None else len(self.members)

    @property
    def trained(self) -> bool:
        return all(m.trained for m in self.members)

    @property
    def max_length(self) -> int:
        return self.members[0].max_length

    def encode(self, prompt, responses: list[str]):
        return self.members[0].encode(prompt, responses)

    def rewards_for(self, encoded: list, batch_size: int = 8, on_progress=None) -> list[list[float]]:
        """The members' mean reward of every response of every group."""
        per_group = self.member_rewards_for(encoded, batch_size=batch_size, on_progress=on_progress)
        return [[statistics.fmean(column) for column in zip(*members)] for members in per_group]

    def rewards(self, prompt, responses: list[str]) -> list[float]:
        return self.rewards_for([self.encode(prompt, responses)])[0]

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
        encoded = self.encode(prompt, candidates)
        rewards = self.member_rewards(prompt, candidates)
        centred = [[r - statistics.fmean(member) for r in member] for member in rewards]
        mean = [statistics.fmean(c) for c in zip(*rewards)]
        spread = [statistics.pstdev(c) for c in zip(*centred)]
        best = max(range(len(mean)), key=mean.__getitem__)
        score = EnsembleScore(mean, spread, rewards, preference_matrix(mean), best, best, k, self.trained,
                              encoded.prompt_truncated, list(encoded.truncated))
        score.conservative_best = score.pick(k)
        return score


def reading(score: EnsembleScore) -> dict[str, Any]:
    """What an ensemble's score says about its own certainty, for plain-words display.

    `most_disputed`: the candidate whose reward the members agree on least; `top_two_close`: the gap
    between the two highest means is smaller than their larger spread, so the order of the best two is
    not settled; `picks_differ`: the conservative pick (mean - k * spread) is not the highest mean.
    """
    order = sorted(range(len(score.mean)), key=score.mean.__getitem__, reverse=True)
    gap = score.mean[order[0]] - score.mean[order[1]] if len(order) > 1 else None
    top_spread = max(score.spread[i] for i in order[:2])
    return {
        "most_disputed": max(range(len(score.spread)), key=score.spread.__getitem__),
        "largest_spread": max(score.spread),
        "top_gap": gap,
        "top_two_close": gap is not None and gap < top_spread,
        "picks_differ": score.conservative_best != score.best,
    }


def _load_head(base: RewardModel, folder: Path) -> torch.nn.Module:
    """A member's reward neuron (its only trained weights in head mode), checked to sit on the same trunk."""
    meta = read_metadata(folder)  # a damaged or hostile rmcore.json: one line naming it
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
    batch = pack_groups([encoded], model.tokenizer.pad_token_id).to(model.device)
    with torch.inference_mode(), model._lock, model._autocast():
        return model.packed(batch, features_only=True).float()


def evaluate_ensemble(ensemble: Ensemble, groups: list[RankedGroup], batch_size: int = 8, on_progress=None,
                      categories: list[str | None] | None = None):
    """`rmcore.analysis.evaluate.evaluate` of the members' mean reward, plus how accuracy falls as the members
    disagree: each pair's disagreement is the spread of the members' margins r_w - r_l (pairs where
    they disagree are the ones to distrust, and to label next)."""
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
