"""Reading the reward: packed shared-prompt rows equal plain rows, the true last token, saving."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch

from rmcore.core.errors import ModelError
from rmcore.data import RankedGroup
from rmcore.model.reward_model import RewardModel, save_reward_model

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


def test_a_prompt_with_thousands_of_candidates_is_scored_in_bounded_rows_with_the_same_rewards(tiny, monkeypatch):
    """A file to score may hold 20,000 candidates for one prompt: one packed row of them all would take
    gigabytes. Rows of at most MAX_RESPONSES_PER_ROW give each candidate the reward it gets alone."""
    from rmcore.model import reward_model

    candidates = [f"answer number {i}" + "!" * (i % 7) for i in range(150)]
    wide = [tiny.encode(PROMPT, candidates), tiny.encode("Hi", ["Hello", "Yo"])]
    rows = []
    real_pack = reward_model.pack_groups
    monkeypatch.setattr(reward_model, "pack_groups", lambda groups, pad: rows.append(groups) or real_pack(groups, pad))
    split = tiny.rewards_for(wide, batch_size=2)
    assert max(len(g.response_ids) for batch in rows for g in batch) == reward_model.MAX_RESPONSES_PER_ROW
    assert [len(r) for r in split] == [150, 2]
    assert split[0] == pytest.approx(plain_rewards(tiny, PROMPT, candidates), abs=1e-5)
    assert split[1] == pytest.approx(tiny.rewards_for([wide[1]])[0], abs=1e-5)


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
    result = tiny_len.score("q", ["fine", "word " * 200, "also fine"])
    assert result.truncated_prompt and result.truncated_responses == [1]  # the prompt keeps max_length // 4
    assert result.to_dict()["truncated_responses"] == [1]
    assert tiny.score("q", ["fine", "word " * 20]).truncated_responses == []  # within the default length


def test_batched_rewards_report_progress_by_tokens(tiny):
    groups = [tiny.encode("q" * n, ["a" * n, "b"]) for n in (1, 40, 5, 80, 20)]
    shares: list[float] = []
    tiny.rewards_for(groups, batch_size=2, on_progress=shares.append)
    assert len(shares) == 3 and shares == sorted(shares) and shares[-1] == pytest.approx(1.0)
    assert shares[0] < 2 / 5  # the two shortest groups hold less than their share of the tokens


def test_score_refuses_arguments_of_the_wrong_shape(tiny):
    with pytest.raises(TypeError, match="list of strings"):
        tiny.score("Name a prime", "seven")  # a string would be scored letter by letter
    with pytest.raises(TypeError, match="prompt must be"):
        tiny.score(None, ["7"])
    with pytest.raises(TypeError, match="prompt must be"):
        tiny.score([{"role": "user"}], ["7"])


def test_a_saved_folder_is_readable_as_the_umask_allows(tiny, tmp_path):
    import stat

    umask = os.umask(0o022)
    os.umask(umask)
    out = tiny.save(tmp_path / "rm")
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~umask
    assert stat.S_IMODE((out / "model.safetensors").stat().st_mode) == 0o666 & ~umask


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


# ----------------------------------------------------------------------------- the prompt cache (rmcore.model)


@pytest.fixture()
def fresh(tiny_model_dir):
    """A model of its own: these tests look at its prompt cache, or change its weights."""
    return RewardModel.load(tiny_model_dir, device="cpu")


def test_a_prompt_scored_again_is_served_from_the_cache_with_the_same_rewards(fresh):
    first = fresh.rewards(PROMPT, CANDIDATES)
    assert fresh.prompt_cache.hits_tokens == 0 and len(fresh.prompt_cache) == 1
    again = fresh.rewards(PROMPT, CANDIDATES[::-1])
    assert fresh.prompt_cache.hits_tokens == len(fresh.encode(PROMPT, CANDIDATES).prompt_ids)
    assert again[::-1] == pytest.approx(first, abs=1e-6)
    assert again == pytest.approx(plain_rewards(fresh, PROMPT, CANDIDATES[::-1]), abs=1e-5)


def test_a_new_prompt_reuses_the_shared_start_and_computes_the_rest(fresh):
    fresh.rewards("Something else entirely", ["ok"])
    prompt_ids = fresh.encode(PROMPT, CANDIDATES).prompt_ids
    got = fresh.rewards(PROMPT, CANDIDATES)
    reused = fresh.prompt_cache.hits_tokens
    assert 0 < reused < len(prompt_ids)  # the chat template's opening, not the instruction
    assert got == pytest.approx(plain_rewards(fresh, PROMPT, CANDIDATES), abs=1e-5)


def test_a_conversation_that_grows_by_a_turn_reuses_the_earlier_turns(fresh):
    turns = [{"role": "user", "content": "Hi there, I need help with my bread."},
             {"role": "assistant", "content": "Happy to help. What is wrong with it?"}]
    fresh.rewards(turns[:1], ["a", "b"])
    longer = turns + [{"role": "user", "content": PROMPT}]
    got = fresh.rewards(longer, CANDIDATES)
    assert fresh.prompt_cache.hits_tokens > len(fresh.encode(turns[:1], ["a"]).prompt_ids) // 2
    assert got == pytest.approx(plain_rewards(fresh, longer, CANDIDATES), abs=1e-5)


def test_changed_weights_never_reuse_stale_keys(fresh):
    before = fresh.rewards(PROMPT, CANDIDATES)
    optimizer = torch.optim.SGD(fresh.model.parameters(), lr=0.5)
    fresh.model.train()
    fresh.model(**fresh.tokenizer(["x y z"], return_tensors="pt")).logits.sum().backward()
    optimizer.step()
    fresh.model.eval()
    after = fresh.rewards(PROMPT, CANDIDATES)
    assert after != pytest.approx(before, abs=1e-3)
    assert after == pytest.approx(plain_rewards(fresh, PROMPT, CANDIDATES), abs=1e-5)


def test_the_cache_stays_within_its_byte_budget(fresh):
    fresh.rewards(PROMPT, CANDIDATES)
    one_prompt = fresh.prompt_cache.nbytes
    fresh.prompt_cache.max_bytes = int(2.5 * one_prompt)
    for i in range(6):
        fresh.rewards(f"{PROMPT} ({i})", CANDIDATES[:2])
        assert fresh.prompt_cache.nbytes <= fresh.prompt_cache.max_bytes
    assert 1 <= len(fresh.prompt_cache) <= 2
    fresh.prompt_cache.max_bytes = 0  # off: every call computes its whole prompt
    hits = fresh.prompt_cache.hits_tokens
    assert fresh.rewards(PROMPT, CANDIDATES) == pytest.approx(plain_rewards(fresh, PROMPT, CANDIDATES), abs=1e-5)
    assert fresh.prompt_cache.hits_tokens == hits


def test_sessions_scoring_at_once_get_what_they_would_alone(fresh):
    from concurrent.futures import ThreadPoolExecutor

    prompts = [f"{PROMPT} Question {i}." for i in range(6)]
    alone = [plain_rewards(fresh, p, CANDIDATES) for p in prompts]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda p: fresh.rewards(p, CANDIDATES), prompts * 2))
    for got, want in zip(together, alone * 2):
        assert got == pytest.approx(want, abs=1e-5)


def test_models_with_sliding_window_layers_do_not_use_a_cached_prefix():
    from transformers import LlamaConfig

    from rmcore.model.attention import supports_prefix

    config = LlamaConfig(num_hidden_layers=2)
    config._attn_implementation = "sdpa"
    assert supports_prefix(config)
    config.layer_types = ["full_attention", "sliding_attention"]
    assert not supports_prefix(config)
    config.layer_types = None
    config._attn_implementation = "eager"
    assert not supports_prefix(config)


def test_token_trace_after_scoring_reuses_the_prompt_and_matches_a_full_run(fresh):
    fresh.score(PROMPT, CANDIDATES)
    hits = fresh.prompt_cache.hits_tokens
    traced = fresh.token_rewards(PROMPT, CANDIDATES[1])
    assert fresh.prompt_cache.hits_tokens - hits == traced.prompt_tokens
    fresh.prompt_cache.max_bytes = 0
    full = fresh.token_rewards(PROMPT, CANDIDATES[1])
    assert traced.tokens == full.tokens
    assert traced.rewards == pytest.approx(full.rewards, abs=1e-5)


# ----------------------------------------------------------------------------- scoring in bfloat16


def test_bfloat16_scoring_keeps_a_float32_head_and_stays_close_to_float32(tiny, tiny_model_dir, tmp_path):
    half = RewardModel.load(tiny_model_dir, device="cpu", dtype="bfloat16")
    assert half.model.model.embed_tokens.weight.dtype == torch.bfloat16
    assert half.model.score.weight.dtype == torch.float32
    exact = tiny.rewards(PROMPT, CANDIDATES)
    first = half.rewards(PROMPT, CANDIDATES)
    again = half.rewards(PROMPT, CANDIDATES)  # the prompt now comes from the cache, in bfloat16
    tolerance = 0.1 * max(map(abs, exact))  # bfloat16 keeps ~3 significant digits; 2 layers lose a few more
    assert first == pytest.approx(exact, abs=tolerance) and again == pytest.approx(first, abs=tolerance)
    assert half.token_rewards(PROMPT, CANDIDATES[0]).rewards[-1] == pytest.approx(first[0], abs=tolerance)
    with pytest.raises(ModelError, match="bfloat16"):
        half.save(tmp_path / "lossy")
    assert not (tmp_path / "lossy").exists()
    with pytest.raises(ValueError, match="dtype"):
        RewardModel.load(tiny_model_dir, device="cpu", dtype="float16")
