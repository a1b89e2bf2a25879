"""Reading the reward: packed shared-prompt rows equal plain rows, the true last token, saving."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from rmcore.data import RankedGroup
from rmcore.errors import ModelError
from rmcore.model import RewardModel, save_reward_model

PROMPT = "How do I keep bread fresh?"
CANDIDATES = ["Wrap it and keep it at room temperature.", "Freeze slices.", "No.", "Bread is made of flour."]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return RewardModel.load(tiny_model_dir, device="cpu")


def plain_rewards(model: RewardModel, prompt: str, responses: list[str]) -> list[float]:
    """One padded sequence per response through the stock classifier, read at the true last token."""
    enc = model.encode(prompt, responses)
    seqs = [enc.prompt_ids + r for r in enc.response_ids]
    length = max(len(s) for s in seqs)
    ids = torch.tensor([s + [model.tokenizer.pad_token_id] * (length - len(s)) for s in seqs])
    mask = torch.tensor([[1] * len(s) + [0] * (length - len(s)) for s in seqs])
    inner = model.model
    with torch.no_grad():
        hidden = inner.model(input_ids=ids, attention_mask=mask).last_hidden_state
        last = torch.tensor([len(s) - 1 for s in seqs])
        return inner.score(hidden[torch.arange(len(seqs)), last]).squeeze(-1).tolist()


def test_shared_prompt_packing_equals_one_sequence_per_response(tiny):
    assert tiny.rewards(PROMPT, CANDIDATES) == pytest.approx(plain_rewards(tiny, PROMPT, CANDIDATES), abs=1e-5)


def test_batched_groups_of_different_lengths_equal_single_groups(tiny):
    groups = [tiny.encode(PROMPT, CANDIDATES), tiny.encode("Hi", ["Hello", "Yo"]),
              tiny.encode("A much longer instruction " * 5, ["ok"] * 3)]
    together = tiny.rewards_for(groups, batch_size=3)
    alone = [tiny.rewards_for([g])[0] for g in groups]
    for a, b in zip(together, alone):
        assert a == pytest.approx(b, abs=1e-5)


def test_reward_is_read_at_the_true_last_token_even_when_it_is_the_pad_token(tiny):
    """SmolLM2 (and the tiny model) pad with the end-of-turn token: the stock rule would misread."""
    eos = tiny.tokenizer.eos_token_id
    enc = tiny.encode(PROMPT, CANDIDATES[:1])
    if enc.response_ids[0][-1] != eos:  # the ChatML template ends "<|im_end|>\n": end on <|im_end|> itself
        enc.response_ids[0] = enc.response_ids[0][:-1]
    assert enc.response_ids[0][-1] == eos
    ours = tiny.rewards_for([enc])[0][0]
    ids = torch.tensor([enc.prompt_ids + enc.response_ids[0]])
    config = tiny.model.config
    saved_pad = config.pad_token_id
    try:
        config.pad_token_id = eos  # what the base model's config says
        with torch.no_grad():
            misread = tiny.model(input_ids=ids).logits.item()
    finally:
        config.pad_token_id = saved_pad
    with torch.no_grad():
        stock_with_our_pad = tiny.model(input_ids=ids).logits.item()
        one_early = tiny.model.score(tiny.model.model(input_ids=ids).last_hidden_state[0, -2]).item()
    assert tiny.tokenizer.pad_token_id != eos
    assert stock_with_our_pad == pytest.approx(ours, abs=1e-5)
    assert misread == pytest.approx(one_early, abs=1e-5)
    assert misread != pytest.approx(ours, abs=1e-6)


def test_token_trace_ends_at_the_reward(tiny):
    trace = tiny.token_rewards(PROMPT, CANDIDATES[0])
    assert len(trace.tokens) == len(trace.rewards)
    assert trace.rewards[-1] == pytest.approx(tiny.rewards(PROMPT, CANDIDATES[:1])[0], abs=1e-5)


def test_saved_model_gives_the_same_rewards_through_transformers(tiny, tmp_path):
    from transformers import AutoModelForSequenceClassification, pipeline

    out = tiny.save(tmp_path / "rm", {"note": "test"})
    assert (out / "model.safetensors").is_file() and json.loads((out / "rmcore.json").read_text())["note"] == "test"
    expected = tiny.rewards(PROMPT, CANDIDATES)
    pipe = pipeline("text-classification", model=str(out), function_to_apply="none", device="cpu")
    got = [pipe(tiny.render(PROMPT, c))[0]["score"] for c in CANDIDATES]
    assert got == pytest.approx(expected, abs=1e-5)
    hf = AutoModelForSequenceClassification.from_pretrained(out)
    batch = tiny.tokenizer([tiny.render(PROMPT, c) for c in CANDIDATES], padding=True, return_tensors="pt")
    with torch.no_grad():
        assert hf(**batch).logits.squeeze(-1).tolist() == pytest.approx(expected, abs=1e-5)
    reloaded = RewardModel.load(out, device="cpu")
    assert reloaded.trained and reloaded.rewards(PROMPT, CANDIDATES) == pytest.approx(expected, abs=1e-6)


def test_untrained_head_is_flagged_and_reproducible(tiny_model_dir):
    a = RewardModel.load(tiny_model_dir, device="cpu")
    b = RewardModel.load(tiny_model_dir, device="cpu")
    assert not a.trained
    assert a.rewards(PROMPT, CANDIDATES) == b.rewards(PROMPT, CANDIDATES)


def test_score_returns_rewards_matrix_and_best(tiny):
    result = tiny.score(PROMPT, CANDIDATES)
    assert result.best == max(range(4), key=lambda i: result.rewards[i])
    p = torch.tensor(result.probabilities)
    r = torch.tensor(result.rewards)
    assert torch.allclose(p, torch.sigmoid(r[:, None] - r[None, :]), atol=1e-6)


def test_long_prompt_is_cut_from_the_left_and_reported(tiny):
    tiny_len = RewardModel(tiny.model, tiny.tokenizer, device="cpu", max_length=32)
    enc = tiny_len.encode("word " * 200 + "final question?", ["short answer"])
    assert enc.prompt_truncated and enc.responses_truncated == 0
    assert len(enc.prompt_ids) + len(enc.response_ids[0]) <= 32
    assert tiny.tokenizer.decode(enc.prompt_ids).endswith("assistant\n")
    enc = tiny_len.encode("q", ["word " * 200])
    assert enc.responses_truncated == 1 and len(enc.prompt_ids) + len(enc.response_ids[0]) <= 32


def test_pickle_only_folder_is_refused(tiny_model_dir, tmp_path):
    folder = tmp_path / "pickled"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(b"not really")
    with pytest.raises(ModelError, match="pickle"):
        RewardModel.load(folder)
    with pytest.raises(ModelError, match="no such model folder"):
        RewardModel.load(tmp_path / "missing")


def test_a_crash_while_saving_leaves_the_previous_model_intact(tiny, tmp_path, monkeypatch):
    out = tiny.save(tmp_path / "rm")
    before = (out / "model.safetensors").read_bytes()

    def crash(*args, **kwargs):
        raise RuntimeError("killed mid-save")

    monkeypatch.setattr(type(tiny.tokenizer), "save_pretrained", crash)
    with pytest.raises(RuntimeError):
        save_reward_model(tiny.model, tiny.tokenizer, out, {})
    assert (out / "model.safetensors").read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name != "rm"]  # no temp folder left behind


def test_conversation_prompts_render_with_the_chat_template(tiny):
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
                {"role": "user", "content": "Bye?"}]
    text = tiny.render(messages, "Bye!")
    assert text.index("Hi") < text.index("Hello") < text.index("Bye?") < text.index("Bye!")
    group = RankedGroup(messages, ["Bye!"], [1])
    enc = tiny.encode(group.prompt, group.responses)
    assert tiny.tokenizer.decode(enc.prompt_ids + enc.response_ids[0]) == text
