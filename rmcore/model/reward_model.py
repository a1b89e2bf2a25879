"""The reward model: a causal LM trunk plus one linear neuron, read at each response's true last token.

We use `AutoModelForSequenceClassification(num_labels=1)` so a saved model loads anywhere, but we
never rely on its "last token that is not padding" rule to find where to read: SmolLM2's pad token
is its end-of-turn token, which would move the reading one token early. rmcore reads at the true
last token, and saved models get a pad token that never appears in rendered text, so plain
transformers reads at the same place.
"""

from __future__ import annotations

import json
import math
import os
import stat
import threading
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rmcore.core.errors import ModelError
from rmcore.core.files import NOT_REGULAR
from rmcore.core.folders import METADATA_FILE, read_json_object, save_folder
from rmcore.data import Message, RankedGroup
from rmcore.data.encoding import DEFAULT_MAX_LENGTH, EncodedGroup, check_chat_template, encode_group, render_text
from rmcore.data.ranking import preference_probability
from rmcore.model.attention import PackedLayout, packed_attention, supports_prefix
from rmcore.model.batching import PackedBatch, pack_groups
from rmcore.model.card import CARD_FILE, render_card
from rmcore.model.device import autocast, autodetect_device, mixed_precision_for, scoring_precision
from rmcore.model.embedded import EMBEDDED_ALIASES, EMBEDDED_NAME, embedded_model_dir
from rmcore.model.feature_cache import FeatureCache
from rmcore.model.prompt_cache import PromptCache, weights_fingerprint
from rmcore.model.shared_trunk import share_trunk

SCORING_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


# ----------------------------------------------------------------------------- loading


def resolve_model_path(name: str | os.PathLike | None) -> tuple[str, str]:
    """Map a --model value to (what from_pretrained gets, a display name)."""
    if name is None or str(name).lower() in EMBEDDED_ALIASES:
        return str(embedded_model_dir()), EMBEDDED_NAME
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelError(f"{path}: a model must be a folder (config.json, *.safetensors, tokenizer)")
        check_model_folder(path)
        return str(path), str(path)
    raise ModelError(f"{name}: no such model folder (rmcore loads local folders, never from a hub; "
                     "'embedded' is the built-in SmolLM2-135M-Instruct)")


def check_model_folder(path: Path) -> None:
    """Refuse folders we cannot load safely: weights must be safetensors (pickle can run code), and every
    file the loaders read must be a regular file (a named pipe would hang them, a link to /dev/zero fill
    the memory)."""
    if not (path / "config.json").is_file():
        raise ModelError(f"{path}: not a model folder (no config.json)")
    _refuse_special_files(path)
    if not any(path.glob("*.safetensors")):
        pickled = sorted(p.name for p in path.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".pkl", ".ckpt"))
        if pickled:
            raise ModelError(
                f"{path}: weights are only in pickle files ({', '.join(pickled)}); rmcore loads safetensors only, "
                "because pickle files can run code. Convert them with a trusted tool first."
            )
        raise ModelError(f"{path}: no *.safetensors weights in the folder")
    config = read_json_file(path / "config.json")
    _check_labels(config, path / "config.json")
    stored = sum(_safetensors_parameters(file) for file in sorted(path.glob("*.safetensors")))
    described = _described_parameters(config)
    if described is not None and described > 4 * stored + 50_000_000:
        raise ModelError(f"{path / 'config.json'}: describes a model of about {described / 1e9:,.1f} billion "
                         f"parameters ({4 * described / 2**30:,.0f} GiB in float32) but the weights hold "
                         f"{stored / 1e6:,.1f} million; the config does not belong to these weights")


_READ_SUFFIXES = (".safetensors", ".json", ".jinja", ".txt", ".model")  # what transformers reads in a folder


def _refuse_special_files(path: Path) -> None:
    """A named pipe, device or socket in a model folder (under any name, or behind a link), or a link to
    nothing named like a file the loaders read, is refused before anything opens it."""
    for entry in sorted(path.iterdir()):
        try:
            mode = entry.stat().st_mode
        except OSError:  # a link to nothing
            if entry.name.endswith(_READ_SUFFIXES):
                raise ModelError(f"{entry}: a link to nothing; the model folder is incomplete") from None
            continue
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            raise ModelError(f"{entry}: {NOT_REGULAR}; a model folder holds only files and folders, so rmcore "
                             "reads none of it")
        if entry.name.endswith(".safetensors") and stat.S_ISDIR(mode):
            raise ModelError(f"{entry}: a folder named like a weights file; a model folder's *.safetensors are files")


_MAX_JSON_BYTES = 64 << 20  # config.json and rmcore.json are a few kilobytes
_DTYPE_BYTES = {"F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2, "I16": 2,
                "U16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "I8": 1, "U8": 1, "BOOL": 1}


read_json_file = read_json_object  # config.json and rmcore.json: rmcore.core.folders reads them (no torch)


def _label_count(config: dict[str, Any]) -> int:
    """Outputs of a sequence classifier as transformers counts them (2 when the config says nothing)."""
    if isinstance(config.get("num_labels"), int):
        return config["num_labels"]
    id2label = config.get("id2label")
    return len(id2label) if isinstance(id2label, dict) and id2label else 2


def _check_labels(config: dict[str, Any], file: Path) -> None:
    archs = config.get("architectures") or []
    if isinstance(archs, list) and any(str(a).endswith("ForSequenceClassification") for a in archs):
        labels = _label_count(config)
        if labels != 1:
            raise ModelError(f"{file}: a classifier with {labels} labels, not a reward model (one output); "
                             "rmcore cannot tell which label would be the reward")


def _safetensors_parameters(file: Path) -> int:
    """Parameters a safetensors file holds, after checking its header and that no byte is missing."""
    size = file.stat().st_size
    damaged = f"{file}: not a valid safetensors file ({size:,} bytes)"
    with file.open("rb") as stream:
        head = stream.read(8)
        if len(head) < 8:
            raise ModelError(f"{damaged}: empty or cut short; save or copy the model again")
        header_size = int.from_bytes(head, "little")
        if header_size > min(size - 8, _MAX_JSON_BYTES):
            raise ModelError(f"{damaged}: its header says {header_size:,} bytes; the file is damaged or cut short")
        try:
            header = json.loads(stream.read(header_size))
            tensors = [t for name, t in header.items() if name != "__metadata__"]
            end = max((int(t["data_offsets"][1]) for t in tensors), default=0)
            counts = [math.prod(int(n) for n in t["shape"]) for t in tensors]
            if any(t["dtype"] in _DTYPE_BYTES and count * _DTYPE_BYTES[t["dtype"]] !=
                   int(t["data_offsets"][1]) - int(t["data_offsets"][0]) for count, t in zip(counts, tensors)):
                raise ValueError("a tensor's shape does not match its bytes")
        except (ValueError, TypeError, KeyError, IndexError, AttributeError, RecursionError):
            raise ModelError(f"{damaged}: its header is unreadable or inconsistent") from None
        parameters = sum(counts)
    if 8 + header_size + end > size:
        raise ModelError(f"{file}: cut short: {size:,} bytes where its header describes {8 + header_size + end:,}; "
                         "save or copy the model again")
    return parameters


def _described_parameters(config: dict[str, Any]) -> int | None:
    """Roughly how many parameters a decoder config asks for (to refuse one that asks for terabytes)."""
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else config
    hidden = text.get("hidden_size") or text.get("n_embd") or text.get("d_model")
    layers = text.get("num_hidden_layers") or text.get("n_layer")
    vocab = text.get("vocab_size")
    inner = text.get("intermediate_size") or text.get("n_inner") or (4 * hidden if isinstance(hidden, int) else None)
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (hidden, layers, vocab, inner)):
        return None
    return vocab * hidden + layers * (4 * hidden * hidden + 3 * hidden * inner)


def load_tokenizer(path: str):
    from transformers import AutoTokenizer  # transformers' auto classes: 0.8 s, only when a model loads

    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    except Exception as exc:
        raise ModelError(f"{path}: cannot load the tokenizer ({type(exc).__name__}: {exc})") from None
    check_chat_template(tokenizer)  # a template that raises is refused now, in one line naming the folder
    return tokenizer


def choose_pad_token(tokenizer) -> None:
    """Give the tokenizer a pad token distinct from EOS, so the stock head reads the true last token.

    Prefer an existing special token that chat templates never emit (unk, e.g. <|endoftext|>);
    otherwise add one. Either way padding never equals a token the reward is read at. Returns True
    when a token was added (its embedding row is then new: padding is never read).
    """
    pad = tokenizer.pad_token_id
    eos = tokenizer.eos_token_id
    if pad is not None and pad != eos:
        return False
    for candidate in (tokenizer.unk_token, "<|endoftext|>"):
        if candidate and candidate in tokenizer.get_vocab() and tokenizer.convert_tokens_to_ids(candidate) != eos:
            tokenizer.pad_token = candidate
            return False
    tokenizer.add_special_tokens({"pad_token": "<|pad|>"})
    return True


def check_tokenizer_file(path: str | os.PathLike) -> None:
    """Before the tokenizer loads: refuse a `tokenizer.json` with token ids past the model's `vocab_size`
    (200,000 added tokens take seconds to load and would need new, random embedding rows)."""
    folder = Path(path)
    config_file, tokenizer_file = folder / "config.json", folder / "tokenizer.json"
    if not (config_file.is_file() and tokenizer_file.is_file()) or tokenizer_file.stat().st_size > _MAX_JSON_BYTES:
        return  # too large to read twice: the check after loading (check_vocabulary) still applies
    config = read_json_file(config_file)
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else config
    rows = text.get("vocab_size")
    if not isinstance(rows, int) or isinstance(rows, bool) or rows <= 0:
        return
    tokens = read_json_file(tokenizer_file)
    vocab = tokens.get("model", {}).get("vocab") if isinstance(tokens.get("model"), dict) else None
    ids = [v for v in (vocab.values() if isinstance(vocab, dict) else []) if isinstance(v, int)]
    added = tokens.get("added_tokens") if isinstance(tokens.get("added_tokens"), list) else []
    ids += [t["id"] for t in added if isinstance(t, dict) and isinstance(t.get("id"), int)]
    size = max(ids, default=-1) + 1
    if size > rows:
        raise ModelError(_vocabulary_mismatch(tokenizer_file, size, rows, len(added)))


def _vocabulary_mismatch(file: Path | str, size: int, rows: int, added: int | None = None) -> str:
    extra = f", {added:,} of them added tokens" if added else ""
    return (f"{file}: the tokenizer has {size:,} token ids{extra}, but the model's embedding matrix has {rows:,} rows; "
            "the tokenizer does not belong to these weights, and rmcore never changes a trained model: use the "
            "tokenizer saved with the model")


def check_vocabulary(model, tokenizer, path: str, *, trained: bool, added_pad: bool = False) -> None:
    """A trained model's tokenizer must fit its embedding matrix, or be refused (never resized). A base
    model gets new rows as before (its head is trained from scratch), and a trained one only the row of
    the padding token `choose_pad_token` added, which no reward is read at."""
    rows = model.get_input_embeddings().weight.shape[0]
    size = len(tokenizer)
    if size <= rows:
        return
    if trained and size - int(added_pad) > rows:
        raise ModelError(_vocabulary_mismatch(Path(path) / "tokenizer.json", size - int(added_pad), rows))
    model.resize_token_embeddings(size)


def check_finite_weights(model, path: str) -> None:
    """Refuse weights holding NaN or infinity (a damaged file, a diverged save): every reward would be NaN.
    One sum per tensor (a NaN or inf anywhere makes it non-finite): 0.04 s for SmolLM2-135M."""
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if not torch.isfinite(parameter.detach().float().sum()):
                raise ModelError(f"{path}: the weights hold NaN or infinite values ({name}); the model is damaged: "
                                 "save or train it again")


def is_reward_model_folder(path: str) -> bool:
    config_file = Path(path) / "config.json"
    if not config_file.is_file():
        return False
    config = read_json_file(config_file)
    archs = config.get("architectures") or []
    return any(str(a).endswith("ForSequenceClassification") for a in archs) and _label_count(config) == 1


def from_pretrained_safely(cls, path: str, **kwargs):
    """`cls.from_pretrained` with safetensors only, no remote code, SDPA attention, errors as ModelError."""
    try:
        return cls.from_pretrained(
            path, trust_remote_code=False, use_safetensors=True, attn_implementation="sdpa", **kwargs
        )
    except OSError as exc:
        raise ModelError(
            f"{path}: cannot load the model ({exc}). Use a local folder, or 'embedded' for the built-in model"
        ) from None
    except ValueError as exc:
        raise ModelError(f"{path}: cannot load the model ({exc})") from None
    except Exception as exc:  # a damaged folder fails in many ways inside transformers and safetensors
        raise ModelError(f"{path}: cannot load the model ({type(exc).__name__}: {exc})") from None


def load_sequence_classifier(path: str, *, seed: int = 0):
    """(model, tokenizer, trained_head): a reward-model folder as is, or a base LM with a new head."""
    # transformers' auto classes: 0.8 s to import, only when a model loads (pages that show results skip it)
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    trained = is_reward_model_folder(path)
    if trained:
        check_tokenizer_file(path)  # before the tokenizer loads: a mismatch is refused at once
    tokenizer = load_tokenizer(path)
    if trained:
        model = from_pretrained_safely(AutoModelForSequenceClassification, path)
    else:
        # The new head starts random: seed it so an untrained model gives the same rewards every time.
        torch.manual_seed(seed)
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # "some weights were newly initialized" is expected here
        try:
            model = from_pretrained_safely(AutoModelForSequenceClassification, path, num_labels=1)
        finally:
            hf_logging.set_verbosity(verbosity)
    check_finite_weights(model, path)
    added_pad = choose_pad_token(tokenizer)
    check_vocabulary(model, tokenizer, path, trained=trained, added_pad=added_pad)
    tokenizer.padding_side = "right"
    config = model.config
    config.pad_token_id = tokenizer.pad_token_id
    config.problem_type = "regression"
    config.id2label = {0: "reward"}
    config.label2id = {"reward": 0}
    return model, tokenizer, trained


# ----------------------------------------------------------------------------- the forward pass


def unwrap_classifier(model: nn.Module) -> nn.Module:
    """The *ForSequenceClassification module, under any peft or DDP wrapper."""
    if hasattr(model, "module") and not hasattr(model, "score"):
        model = model.module
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return model


class PackedRewardModel(nn.Module):
    """Reads the reward head at each response's last token of packed rows (see rmcore.model.batching).

    One module so that DistributedDataParallel (accelerate) sees a single forward call.
    `features_only=True` returns the last-token hidden states instead (for head-only training).
    With `layout` (PackedBatch.layout), attention computes only the blocks the mask allows (see
    rmcore.model.attention); without it, SDPA applies the block mask densely. Both give the same values.
    """

    def __init__(self, classifier: nn.Module):
        super().__init__()
        self.classifier = classifier

    def forward(self, batch: PackedBatch, features_only: bool = False, structured: bool = True,
                start: tuple[torch.Tensor, int] | None = None):
        """Rewards (N,) of the batch's responses; `structured=False` applies the block mask densely.
        `start` = (hidden (B, L, H), k): the rows' hidden states entering block k, computed earlier (the
        blocks below are frozen, see rmcore.training.lower_blocks); only blocks k and above run."""
        layout = batch.layout if structured else None
        hidden = self.hidden_states(batch.input_ids, batch.position_ids, batch.attention_mask, layout,
                                    start=start)  # (B, L, H)
        last_hidden = hidden.reshape(-1, hidden.shape[-1])[batch.last_index]  # (N, H)
        if features_only:
            return last_hidden
        return read_head(self.classifier, last_hidden)  # (N,)

    def trunk(self) -> nn.Module:
        inner = unwrap_classifier(self.classifier)
        return getattr(inner, inner.base_model_prefix)

    def hidden_states(self, input_ids, position_ids, attention_mask, layout: PackedLayout | None = None,
                      start: tuple[torch.Tensor, int] | None = None):
        """The trunk's last hidden states of packed rows, (B, L, H); from block `start[1]` on, if given."""
        trunk = self.trunk()
        extra = {}
        with packed_attention(trunk.config) if layout is not None else nullcontext(False) as structured, \
                _from_block(trunk, start[1] if start is not None else 0):
            if structured:
                extra["rmcore_layout"] = layout
            inputs = {"inputs_embeds": start[0]} if start is not None else {"input_ids": input_ids}
            return trunk(
                **inputs, attention_mask=attention_mask, position_ids=position_ids, use_cache=False, **extra,
            ).last_hidden_state


@contextmanager
def _from_block(trunk: nn.Module, first: int):
    """The trunk runs only its blocks `first` and above for the call (its input then is the hidden state
    entering block `first`, passed as inputs_embeds: a Llama-style trunk applies no scaling to it)."""
    if not first:
        yield
        return
    blocks = trunk.layers
    trunk.layers = nn.ModuleList(list(blocks)[first:])
    try:
        yield
    finally:
        trunk.layers = blocks


def read_head(model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """The reward neuron applied to hidden states (..., H) -> (...,) float32, in the head's own dtype
    (a bfloat16 trunk keeps a float32 head: see RewardModel's `dtype`)."""
    head = unwrap_classifier(model).score
    return head(hidden.to(next(head.parameters()).dtype)).squeeze(-1).float()


def head_of(model: nn.Module) -> nn.Linear:
    """The reward neuron (a Linear(hidden, 1)), for head-only training on cached features."""
    head = unwrap_classifier(model).score
    if hasattr(head, "modules_to_save"):  # peft keeps the trained copy here
        head = head.modules_to_save["default"]
    return head


# ----------------------------------------------------------------------------- results


sigmoid = preference_probability  # the name the scoring code and notebooks know


def preference_matrix(rewards: list[float]) -> list[list[float]]:
    """P[i][j] = sigma(r_i - r_j): the Bradley-Terry probability that i is preferred over j."""
    return [[sigmoid(r_i - r_j) for r_j in rewards] for r_i in rewards]


@dataclass
class ScoreResult:
    rewards: list[float]
    probabilities: list[list[float]]  # P[i][j] = sigma(r_i - r_j)
    best: int  # index of the highest reward
    trained: bool  # False when the head is untrained (rewards are then meaningless)
    truncated_prompt: bool = False  # the prompt lost tokens from the left to fit max_length
    truncated_responses: list[int] = field(default_factory=list)  # candidates whose end was cut

    def to_dict(self) -> dict[str, Any]:
        return {"rewards": self.rewards, "probabilities": self.probabilities, "best": self.best,
                "trained": self.trained, "truncated_prompt": self.truncated_prompt,
                "truncated_responses": self.truncated_responses}


@dataclass
class TokenRewards:
    tokens: list[str]  # the response's tokens as text
    rewards: list[float]  # the head applied at each of those positions
    prompt_tokens: int


# ----------------------------------------------------------------------------- the user-facing class


MAX_RESPONSES_PER_ROW = 64  # candidates of one prompt packed in one row when scoring; more are split


def split_wide_groups(encoded: list[EncodedGroup], most: int) -> tuple[list[EncodedGroup], list[int]]:
    """Each group cut into parts of at most `most` responses (same prompt), and how many parts each became."""
    parts, sizes = [], []
    for group in encoded:
        chunks = range(0, max(1, len(group.response_ids)), most)
        parts += [group if len(group.response_ids) <= most else
                  EncodedGroup(group.prompt_ids, group.response_ids[i:i + most], group.ranks[i:i + most])
                  for i in chunks]
        sizes.append(len(chunks))
    return parts, sizes


class RewardModel:
    """A reward model ready to score: `RewardModel.load("runs/rm").score(prompt, candidates)`."""

    def __init__(self, model, tokenizer, *, device: str | None = None, trained: bool = True,
                 max_length: int = DEFAULT_MAX_LENGTH, name: str = "", metadata: dict | None = None,
                 dtype: str = "float32"):
        if dtype not in SCORING_DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(SCORING_DTYPES)}, not {dtype!r}")
        self.device = device or autodetect_device()
        self.model = model.to(self.device).eval()
        self.dtype = dtype
        if dtype != "float32":  # the trunk only: the reward neuron and its reading stay float32
            inner = unwrap_classifier(self.model)
            getattr(inner, inner.base_model_prefix).to(SCORING_DTYPES[dtype])
        self.tokenizer = tokenizer
        self.trained = trained
        self.max_length = max_length
        self.name = name
        self.metadata = metadata or {}
        self.autocast_precision = self._scoring_autocast()
        self.packed = PackedRewardModel(self.model)
        self.prompt_cache = PromptCache()  # see rmcore.model.prompt_cache; used by single-prompt calls
        self._lock = threading.RLock()  # one forward at a time: the app shares a model between sessions

    @classmethod
    def load(cls, name: str | os.PathLike | None = None, *, device: str | None = None,
             max_length: int | None = None, seed: int = 0, dtype: str = "float32") -> RewardModel:
        """Load a saved reward model, or a base model (embedded by default) with an untrained head.

        `dtype="bfloat16"` runs the trunk in bfloat16 for scoring: faster on CPUs with bfloat16
        instructions (AVX512-BF16, AMX) and on GPUs, with rewards a little off float32's (see the
        README); slower on CPUs without them. Training always loads float32 weights.
        """
        path, display = resolve_model_path(name)
        model, tokenizer, trained = load_sequence_classifier(path, seed=seed)
        metadata = {}
        meta_file = Path(path) / METADATA_FILE
        if meta_file.is_file():
            metadata = read_json_file(meta_file)
        if max_length is None:
            saved = metadata.get("config") if isinstance(metadata.get("config"), dict) else {}
            max_length = saved.get("max_length", DEFAULT_MAX_LENGTH)
            if isinstance(max_length, bool) or not isinstance(max_length, int) or not 16 <= max_length <= 1 << 20:
                raise ModelError(f"{meta_file}: config.max_length is {max_length!r}, not a number of tokens; "
                                 "the file is damaged (or pass --max-length)")
        return cls(model, tokenizer, device=device, trained=trained, max_length=max_length,
                   name=display, metadata=metadata, dtype=dtype)

    # -- scoring
    def encode(self, prompt: str | list[Message], responses: list[str]) -> EncodedGroup:
        if isinstance(responses, str) or not all(isinstance(r, str) for r in responses):
            raise TypeError("responses must be a list of strings (one per candidate)")
        if not isinstance(prompt, str) and not (
            isinstance(prompt, list) and all(isinstance(m, dict) and {"role", "content"} <= set(m) for m in prompt)
        ):
            raise TypeError("prompt must be a string or a list of {'role', 'content'} messages")
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        group = RankedGroup(messages, list(responses), [None] * len(responses))
        return encode_group(self.tokenizer, group, self.max_length)

    def rewards_for(self, encoded: list[EncodedGroup], batch_size: int = 8,
                    on_progress: Callable[[float], None] | None = None) -> list[list[float]]:
        """Rewards of every response of every group, batched by similar length.

        `on_progress(share)` after each batch gets the share of tokens done (shortest groups run
        first, so it tracks time where the share of groups would run ahead). A group with more than
        MAX_RESPONSES_PER_ROW candidates (a file to score may hold thousands for one prompt) is scored
        in parts that each repeat its prompt: a response attends only to the prompt and itself, so the
        rewards are the same, and one row's memory stays bounded.
        """
        parts, sizes = split_wide_groups(encoded, MAX_RESPONSES_PER_ROW)
        if len(parts) == len(encoded):
            return self._rewards_for(encoded, batch_size, on_progress)
        flat, out = self._rewards_for(parts, batch_size, on_progress), []
        for size in sizes:
            out.append([reward for part in flat[:size] for reward in part])
            flat = flat[size:]
        return out

    @torch.inference_mode()
    def _rewards_for(self, encoded: list[EncodedGroup], batch_size: int,
                     on_progress: Callable[[float], None] | None) -> list[list[float]]:
        if len(encoded) == 1 and self._reuses_prompts():
            return [self._rewards_reusing_prompt(encoded[0])]
        known = self._rewards_from_trunk_features(encoded)
        order = sorted((i for i, r in enumerate(known) if r is None), key=lambda i: encoded[i].num_tokens)
        out: list[list[float]] = [r if r is not None else [] for r in known]
        total = max(1, sum(e.num_tokens for e in encoded))
        done = sum(e.num_tokens for e, r in zip(encoded, known) if r is not None)
        if done and on_progress is not None:
            on_progress(done / total)
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            batch = pack_groups([encoded[i] for i in idx], self.tokenizer.pad_token_id).to(self.device)
            with self._lock, self._autocast():
                rewards = self.packed(batch)
            flat = rewards.float().cpu().tolist()
            for i, size in zip(idx, batch.group_sizes):
                out[i], flat = flat[:size], flat[size:]
            done += batch.real_tokens
            if on_progress is not None:
                on_progress(done / total)
        return out

    def _rewards_from_trunk_features(self, encoded: list[EncodedGroup]) -> list[list[float] | None]:
        """Rewards from the trunk features head-mode training cached, None where a group has none.

        A head-mode model's trunk is its base model's, so the features its training computed (held-out
        prompts and the data it came from, see rmcore.model.feature_cache) give its rewards with no forward
        pass. The group with the fewest tokens is computed as well and must agree, which guards
        against a trunk changed since (or another precision): then nothing cached is used.
        """
        key = self.metadata.get("feature_cache") if self.metadata.get("mode") == "head" else None
        nothing: list[list[float] | None] = [None] * len(encoded)
        if not isinstance(key, str) or len(encoded) < 2:
            return nothing
        features = FeatureCache.from_key(key).load(encoded)
        found = [i for i, f in enumerate(features) if f is not None]
        if len(found) < 2:
            return nothing
        with self._lock, torch.inference_mode():
            stacked = torch.cat([features[i] for i in found]).to(self.device)
            flat = read_head(self.model, stacked).cpu().tolist()
        out = list(nothing)
        for i in found:
            size = len(encoded[i].response_ids)
            out[i], flat = flat[:size], flat[size:]
        check = min(found, key=lambda i: encoded[i].num_tokens)
        computed = self._rewards_computed(encoded[check])
        if any(abs(a - b) > 1e-4 * (1 + abs(b)) for a, b in zip(out[check], computed)):
            return nothing
        out[check] = computed
        return out

    def _rewards_computed(self, group: EncodedGroup) -> list[float]:
        """One group's rewards from a forward pass (no prompt cache)."""
        batch = pack_groups([group], self.tokenizer.pad_token_id).to(self.device)
        with self._lock, torch.inference_mode(), self._autocast():
            rewards = self.packed(batch)
        return rewards.float().cpu().tolist()

    def _rewards_reusing_prompt(self, group: EncodedGroup) -> list[float]:
        """One group's rewards, taking the longest cached prefix of its prompt from the prompt cache."""
        hidden, last_index, _ = self._hidden_reusing_prompt(group)
        with self._autocast():
            rewards = read_head(self.model, hidden[last_index])
        return rewards.cpu().tolist()

    def _hidden_reusing_prompt(self, group: EncodedGroup) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Hidden states (L, H) of the group's packed row after its longest cached prompt prefix, the
        rows' index of each response's last token, and how many prompt tokens came from the cache."""
        with self._lock:
            fingerprint = weights_fingerprint(self.model)
            cached, prefix = self.prompt_cache.lookup(group.prompt_ids, fingerprint)
            rest = EncodedGroup(group.prompt_ids[cached:], group.response_ids, group.ranks)
            batch = pack_groups([rest], self.tokenizer.pad_token_id).to(self.device)
            layout = batch.layout
            layout.prefix, layout.record = prefix, {}
            with self._autocast():
                hidden = self.packed.hidden_states(batch.input_ids, batch.position_ids + cached,
                                                   batch.attention_mask, layout)[0]
            layers = [layout.record[i] for i in sorted(layout.record)]
            if len(layers) == self._config.num_hidden_layers:
                self.prompt_cache.store(group.prompt_ids, layers, fingerprint)
        return hidden, batch.last_index, cached

    @property
    def _config(self):
        return unwrap_classifier(self.model).config

    def _reuses_prompts(self) -> bool:
        """The prompt cache is on and the model's attention can start a row after a cached prefix."""
        return self.prompt_cache.max_bytes > 0 and supports_prefix(self._config)

    def rewards(self, prompt: str | list[Message], responses: list[str]) -> list[float]:
        return self.rewards_for([self.encode(prompt, responses)])[0]

    def score(self, prompt: str | list[Message], candidates: list[str]) -> ScoreResult:
        """Rewards of the candidates, the matrix sigma(r_i - r_j) and the best candidate."""
        if not candidates:
            raise ValueError("give at least one candidate")
        encoded = self.encode(prompt, candidates)
        rewards = self.rewards_for([encoded])[0]
        best = max(range(len(rewards)), key=rewards.__getitem__)
        return ScoreResult(rewards, preference_matrix(rewards), best, self.trained, encoded.prompt_truncated,
                           list(encoded.truncated))

    @torch.inference_mode()
    def token_rewards(self, prompt: str | list[Message], response: str) -> TokenRewards:
        """The head applied at every position of the response: which tokens move the reward."""
        encoded = self.encode(prompt, [response])
        inner = unwrap_classifier(self.model)
        p = len(encoded.prompt_ids)
        if self._reuses_prompts():
            hidden, _, cached = self._hidden_reusing_prompt(encoded)  # (p - cached + r, H)
            response_hidden = hidden[p - cached :]
        else:
            trunk = getattr(inner, inner.base_model_prefix)
            input_ids = torch.tensor([encoded.prompt_ids + encoded.response_ids[0]], device=self.device)
            with self._lock, self._autocast():
                response_hidden = trunk(input_ids=input_ids, use_cache=False).last_hidden_state[0, p:]
        with self._autocast():
            per_token = read_head(self.model, response_hidden).cpu()
        tokens = [self.tokenizer.decode([t]) for t in encoded.response_ids[0]]
        return TokenRewards(tokens, per_token.tolist(), p)

    def render(self, prompt: str | list[Message], response: str) -> str:
        """The exact text a pipeline must be given to reproduce this model's reward."""
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        return render_text(self.tokenizer, messages, response)

    def shares_trunk_with(self, other: RewardModel) -> bool:
        """Both are head-mode models of one base model at one precision, device and max length: the
        trunk's last-token features are the same for both, only the reward neurons differ."""
        key = self.metadata.get("feature_cache")
        return (self.metadata.get("mode") == other.metadata.get("mode") == "head" and isinstance(key, str)
                and key == other.metadata.get("feature_cache") and self.max_length == other.max_length
                and self.device == other.device and self.dtype == other.dtype)

    @torch.inference_mode()
    def rewards_with_heads(self, encoded: list[EncodedGroup], others: list[RewardModel], batch_size: int = 8
                           ) -> list[list[list[float]]]:
        """Rewards of this model and of each of `others` (which must `shares_trunk_with` it), from one
        trunk pass: a proxy and a gold judge trained in head mode on one base model cost one scoring."""
        if not all(self.shares_trunk_with(other) for other in others):
            raise ValueError("rewards_with_heads needs head-mode models of the same base model")
        models = [self, *others]
        out: list[list[list[float]]] = [[[] for _ in encoded] for _ in models]
        order = sorted(range(len(encoded)), key=lambda i: encoded[i].num_tokens)
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            batch = pack_groups([encoded[i] for i in idx], self.tokenizer.pad_token_id).to(self.device)
            with self._lock, self._autocast():
                hidden = self.packed(batch, features_only=True)
                per_model = [read_head(model.model, hidden).cpu().tolist() for model in models]
            for rewards, flat in zip(out, per_model):
                for i, size in zip(idx, batch.group_sizes):
                    rewards[i], flat = flat[:size], flat[size:]
        return out

    def _scoring_autocast(self) -> str:
        """float32 on a CPU (rewards equal transformers' pipeline), except for a head-mode model whose head
        was trained on bfloat16 trunk features: it is read as it was trained, with bfloat16 autocast, where
        this machine makes bfloat16 fast (its cached features are then reused too)."""
        head_on_bf16 = self.metadata.get("mode") == "head" and self.metadata.get("precision") == "bf16"
        if head_on_bf16 and self.dtype == "float32" and mixed_precision_for(self.device, "auto") == "bf16":
            return "bf16"
        return scoring_precision(self.device)

    def _autocast(self):
        return autocast(self.device, self.autocast_precision)

    # -- saving
    def save(self, out_dir: str | os.PathLike, metadata: dict | None = None) -> Path:
        """Write a standard HF folder (safetensors, tokenizer, config) plus rmcore.json, atomically."""
        if self.dtype != "float32":
            raise ModelError(f"this model was loaded in {self.dtype} for scoring; saving it would lose precision. "
                             "Load it with the default float32 to save it")
        meta = dict(self.metadata)
        meta.update(metadata or {})
        return save_reward_model(self.model, self.tokenizer, out_dir, meta)


def save_reward_model(model, tokenizer, out_dir: str | os.PathLike, metadata: dict,
                      extra_files: dict[str, str] | None = None, keep: tuple[str, ...] = (),
                      on_note: Callable[[str], None] | None = None) -> Path:
    """Save a standard HF folder (safetensors, tokenizer, config), the model card and rmcore.json,
    atomically (rmcore.core.folders.save_folder). A head-mode model's trunk is the base model's:
    one shared file, not a copy per model (rmcore.model.shared_trunk)."""
    classifier = unwrap_classifier(model)
    notes: list[str] = []

    def write(tmp: Path) -> None:
        classifier.config.pad_token_id = tokenizer.pad_token_id
        classifier.save_pretrained(tmp, safe_serialization=True)
        if metadata.get("mode") == "head":
            note = share_trunk(tmp, [f"score.{name}" for name, _ in classifier.score.named_parameters()])
            notes.extend([note] if note else [])
        tokenizer.save_pretrained(tmp)
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
        (tmp / CARD_FILE).write_text(render_card(metadata, Path(out_dir).resolve().name))

    out = save_folder(out_dir, write, metadata, keep=keep, on_note=on_note)
    for note in notes:
        if on_note is not None:
            on_note(note)
    return out
