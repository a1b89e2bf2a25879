"""Every data format rmcore reads, and what happens with files that are partly or wholly unusable."""

from __future__ import annotations

import gzip
import json

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rmcore.core.errors import DataError
from rmcore.data import (
    RankedGroup,
    read_preferences,
    read_preferences_bytes,
    split_groups,
    split_hh_dialogue,
    write_ranked_jsonl,
)


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


RANKED = [
    {"prompt": "Name a fruit.", "responses": ["Apple.", "A car.", "Banana!", "idk"], "ranks": [1, 3, 2, None]},
    {"prompt": "Say hi.", "responses": ["Hi!", "Hello.", "Go away."], "ranks": [1, 1, 2]},
]


# ----------------------------------------------------------------------------- formats


def test_ranked_lists_with_ties_and_unranked(tmp_path):
    data = read_preferences(write_jsonl(tmp_path / "r.jsonl", RANKED))
    assert data.report.format == "ranked"
    first, second = data.groups
    assert first.pairs() == [(0, 1), (0, 2), (2, 1)]  # the unranked "idk" is in no pair
    assert sorted(second.pairs()) == [(0, 2), (1, 2)]  # the tie (0, 1) gives no pair
    assert data.report.comparisons == 5
    assert data.report.ties == 1
    assert data.report.unranked == 1
    assert data.report.k_distribution == {3: 1, 4: 1}
    assert data.report.k_max == 4


def test_pairs_with_explicit_prompt_and_margin_from_csv(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text('prompt,chosen,rejected,margin\n"Add 2+2","4","5",1.5\n"Capital of France?","Paris","Rome",\n')
    data = read_preferences(path)
    assert data.report.format == "pairs"
    assert [g.margin for g in data.groups] == [1.5, 0.0]
    assert data.groups[0].responses == ["4", "5"] and data.groups[0].pairs() == [(0, 1)]


def test_implicit_prompt_pairs_split_at_last_assistant_turn(tmp_path):
    shared = "\n\nHuman: Hi\n\nAssistant: Hello! How can I help?\n\nHuman: Name a color."
    record = {"chosen": shared + "\n\nAssistant: Blue.", "rejected": shared + "\n\nAssistant: No."}
    data = read_preferences(write_jsonl(tmp_path / "hh.jsonl", [record]))
    group = data.groups[0]
    assert data.report.format == "implicit_pairs"
    assert group.prompt == [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Name a color."},
    ]
    assert group.responses == ["Blue.", "No."]


def test_hh_split_when_replies_share_their_first_words():
    prompt, chosen, rejected = split_hh_dialogue(
        "\n\nHuman: Q\n\nAssistant: Sure, here it is", "\n\nHuman: Q\n\nAssistant: Sure, no"
    )
    assert prompt == [{"role": "user", "content": "Q"}] and (chosen, rejected) == ("Sure, here it is", "Sure, no")


def test_conversational_pairs_explicit_and_implicit_prompt(tmp_path):
    explicit = {
        "prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}],
        "chosen": [{"role": "assistant", "content": "4"}],
        "rejected": [{"role": "assistant", "content": "22"}],
    }
    data = read_preferences(write_jsonl(tmp_path / "c.jsonl", [explicit]))
    assert data.report.format == "conversational"
    assert data.groups[0].prompt[0]["role"] == "system" and data.groups[0].responses == ["4", "22"]
    user = {"role": "user", "content": "2+2?"}
    implicit = {"chosen": [user, {"role": "assistant", "content": "4"}],
                "rejected": [user, {"role": "assistant", "content": "5"}]}
    data = read_preferences(write_jsonl(tmp_path / "ci.jsonl", [implicit]))
    assert data.groups[0].prompt == [user] and data.groups[0].responses == ["4", "5"]


def test_tidy_table_groups_rows_by_prompt(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("prompt,response,rank\nQ1,a,1\nQ1,b,2\nQ2,c,2\nQ1,d,\nQ2,e,1\n")
    data = read_preferences(path)
    assert data.report.format == "tidy"
    q1, q2 = data.groups
    assert q1.responses == ["a", "b", "d"] and q1.ranks == [1, 2, None]
    assert q2.pairs() == [(1, 0)]


def oasst_tree():
    return {
        "message_tree_id": "t1",
        "prompt": {
            "role": "prompter", "text": "What is rain?", "message_id": "m0",
            "replies": [
                {"role": "assistant", "text": "Water falling from clouds.", "rank": 0, "replies": [
                    {"role": "prompter", "text": "Why does it fall?", "message_id": "m2", "replies": [
                        {"role": "assistant", "text": "Gravity.", "rank": 1},
                        {"role": "assistant", "text": "Because drops get heavy enough to fall.", "rank": 0},
                    ]},
                ]},
                {"role": "assistant", "text": "A kind of weather.", "rank": 1},
                {"role": "assistant", "text": "No idea."},
            ],
        },
    }


def test_oasst_trees_give_one_group_per_ranked_sibling_set(tmp_path):
    data = read_preferences(write_jsonl(tmp_path / "o.jsonl", [oasst_tree()]))
    assert data.report.format == "oasst"
    top, follow_up = data.groups
    assert top.prompt == [{"role": "user", "content": "What is rain?"}]
    assert top.ranks == [1, 2, None]  # OASST rank 0 = best becomes 1; the unranked reply stays
    assert [m["role"] for m in follow_up.prompt] == ["user", "assistant", "user"]
    assert follow_up.pairs() == [(1, 0)]


def test_parquet_gzip_and_json_array(tmp_path):
    pd.DataFrame(RANKED).to_parquet(tmp_path / "r.parquet")
    assert read_preferences(tmp_path / "r.parquet").report.comparisons == 5
    (tmp_path / "r.jsonl.gz").write_bytes(gzip.compress(json.dumps(RANKED[0]).encode() + b"\n"))
    assert read_preferences(tmp_path / "r.jsonl.gz").report.comparisons == 3
    (tmp_path / "r.json").write_text(json.dumps(RANKED))
    assert len(read_preferences(tmp_path / "r.json").groups) == 2


def test_json_array_in_jsonl_file_and_json_lines_in_json_file(tmp_path):
    (tmp_path / "a.jsonl").write_text(json.dumps(RANKED, indent=2))
    assert len(read_preferences(tmp_path / "a.jsonl").groups) == 2
    write_jsonl(tmp_path / "b.json", RANKED)
    assert len(read_preferences(tmp_path / "b.json").groups) == 2


def test_byte_order_mark_is_accepted(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(RANKED[0]).encode() + b"\n")
    assert len(read_preferences(path).groups) == 1


def test_written_jsonl_reads_back_identically(tmp_path, demo_path):
    groups = read_preferences(demo_path).groups
    path = tmp_path / "round.jsonl"
    write_ranked_jsonl(groups, path)
    again = read_preferences(path).groups
    assert [(g.prompt, g.responses, g.ranks) for g in again] == [(g.prompt, g.responses, g.ranks) for g in groups]


def test_demo_set_has_a_learnable_shape(demo_path):
    report = read_preferences(demo_path).report
    assert report.prompts >= 40
    assert min(report.k_distribution) >= 3 and max(report.k_distribution) <= 6
    assert report.ties > 0 and report.unranked > 0


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("content", "name", "expected"),
    [
        (b"", "e.jsonl", "empty"),
        (b"   \n\n", "e.jsonl", "empty"),
        (b"\x00\x01\x02binary", "b.jsonl", "binary"),
        (b'{"prompt": "caf\xe9"}\n', "latin1.jsonl", "not UTF-8"),
        (b"this is not json\n", "x.jsonl", "not JSON"),
        (b'{"prompt": "a", "respones": ["x", "y"], "ranks": [1, 2]}\n', "m.jsonl", "misspelling of 'responses'"),
        (b'{"question": "a", "answer": "b"}\n', "q.jsonl", "cannot tell the format"),
        (b"[1, 2,\n", "a.json", "not valid JSON"),
    ],
)
def test_unusable_files_raise_one_clear_message(tmp_path, content, name, expected):
    with pytest.raises(DataError) as info:
        read_preferences_bytes(content, name)
    assert expected in str(info.value)
    assert str(info.value).startswith(name)


def test_bad_encoding_names_the_line(tmp_path):
    with pytest.raises(DataError, match=r"x.jsonl:2: not UTF-8"):
        read_preferences_bytes(json.dumps(RANKED[0]).encode() + b'\n{"prompt": "caf\xe9"}\n', "x.jsonl")


def test_truncated_last_line_is_skipped_and_reported(tmp_path):
    text = json.dumps(RANKED[0]) + "\n" + json.dumps(RANKED[1])[:25] + "\n"
    data = read_preferences_bytes(text.encode(), "cut.jsonl")
    assert len(data.groups) == 1
    assert data.report.skipped[0].where == "cut.jsonl:2"
    assert "truncated JSON" in data.report.skipped[0].reason


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        ({"prompt": "q", "responses": ["a", "b"], "ranks": [1]}, "1 ranks for 2 responses"),
        ({"prompt": "q", "responses": ["a", "b"], "ranks": [1, -2]}, "ranks start at 1"),
        ({"prompt": "q", "responses": ["a", "b"], "ranks": [1, 1.5]}, "whole number"),
        ({"prompt": "q", "responses": ["a", "b"], "ranks": [1, "two"]}, "whole number"),
        ({"prompt": "q", "responses": ["a", "b"], "ranks": [1, float("inf")]}, "whole number"),
        ({"prompt": "q", "chosen": "a", "rejected": "b"}, "'responses' is missing (the file was read as 'ranked'"),
        ({"prompt": "q", "responses": "a, b", "ranks": [1, 2]}, "must be a list"),
        ({"prompt": 42, "responses": ["a", "b"], "ranks": [1, 2]}, "'prompt' must be text, found a number"),
        ({"prompt": "q", "responses": ["a", "b"], "ranks": [2, 2]}, "every ranked response is tied"),
        ({"prompt": "q", "responses": ["a"], "ranks": [1]}, "only one response"),
        ({"prompt": "q", "responses": ["a", "  "], "ranks": [1, 2]}, "only one response"),
        ({"prompt": "q", "responses": ["a", "b"], "ranks": [None, 1]}, "fewer than two ranked"),
    ],
)
def test_unusable_rows_are_skipped_with_their_reason(record, reason):
    good = json.dumps(RANKED[0])
    data = read_preferences_bytes(f"{good}\n{json.dumps(record)}\n".encode(), "d.jsonl")
    assert len(data.groups) == 1
    assert [s.where for s in data.report.skipped] == ["d.jsonl:2"]
    assert reason in data.report.skipped[0].reason


def test_empty_response_is_dropped_with_a_warning():
    record = {"prompt": "q", "responses": ["a", "", "b"], "ranks": [1, 2, 3]}
    data = read_preferences_bytes(json.dumps(record).encode(), "w.jsonl")
    assert data.groups[0].responses == ["a", "b"]
    assert "response 2 is empty" in data.report.warnings[0]


def test_file_with_no_usable_row_names_the_reason():
    record = {"prompt": "q", "chosen": "same", "rejected": "same"}
    with pytest.raises(DataError, match="chosen and rejected are identical"):
        read_preferences_bytes(json.dumps(record).encode(), "same.jsonl")


def test_unranked_candidates_are_read_for_scoring_and_refused_for_training():
    rows = [{"prompt": "q1", "responses": ["a", "b"]},
            {"prompt": [{"role": "user", "content": "q2"}], "responses": ["c"]}]
    raw = "".join(json.dumps(r) + "\n" for r in rows).encode()
    data = read_preferences_bytes(raw, "c.jsonl", for_scoring=True)
    assert data.report.format == "candidates"
    assert [(g.prompt_text, g.responses, g.ranks) for g in data.groups] == [("q1", ["a", "b"], [None, None]),
                                                                             ("q2", ["c"], [None])]
    with pytest.raises(DataError, match=r"c.jsonl:1: no usable comparison.*no response is ranked.*rmcore score"):
        read_preferences_bytes(raw, "c.jsonl")
    table = read_preferences_bytes(b"prompt,response\nq1,a\nq1,b\nq2,c\n", "c.csv", for_scoring=True)
    assert [(g.prompt_text, g.responses) for g in table.groups] == [("q1", ["a", "b"]), ("q2", ["c"])]


def test_scoring_keeps_ranks_and_single_responses_training_would_skip():
    raw = f"{json.dumps(RANKED[0])}\n{json.dumps({'prompt': 'q', 'responses': ['a'], 'ranks': [1]})}\n".encode()
    assert len(read_preferences_bytes(raw, "r.jsonl").groups) == 1
    data = read_preferences_bytes(raw, "r.jsonl", for_scoring=True)
    assert [g.ranks for g in data.groups] == [[1, 3, 2, None], [1]]


def test_a_misspelled_rank_column_is_named_not_read_as_unranked():
    with pytest.raises(DataError, match="'rnak' looks like a misspelling of 'rank'"):
        read_preferences_bytes(b"prompt,response,rnak\nq,a,1\nq,b,2\n", "t.csv", for_scoring=True)


def test_csv_nan_cells_and_quoted_newlines(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text('prompt,response,rank\n"Write\na poem","Roses\nare red",1\n"Write\na poem",meh,NaN\n'
                    '"Write\na poem",bad,2\n')
    data = read_preferences(path)
    assert data.groups[0].prompt_text == "Write\na poem"
    assert data.groups[0].ranks == [1, None, 2]


def test_csv_row_errors_name_the_starting_line(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text('prompt,response,rank\n"multi\nline",a,1\nx,b,oops\n"multi\nline",c,2\n')
    data = read_preferences(path)
    assert data.report.skipped[0].where.endswith("t.csv:4")


def test_an_unclosed_csv_quote_is_named_with_its_line(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text('prompt,chosen,rejected\n"ok\nmulti",y,z\n"hello,a,b\nx,y,z\n')
    data = read_preferences(path)
    assert len(data.groups) == 1
    skipped = data.report.skipped[0]
    assert skipped.where.endswith("t.csv:4")
    assert "quote opened on line 4 is never closed" in skipped.reason


def test_messages_without_role_or_content_are_reported():
    record = {"prompt": [{"content": "hi"}], "chosen": "a", "rejected": "b"}
    good = {"prompt": [{"role": "user", "content": "hi"}], "chosen": "a", "rejected": "b"}
    data = read_preferences_bytes(f"{json.dumps(good)}\n{json.dumps(record)}\n".encode(), "m.jsonl")
    assert "message 1 has no 'role'" in data.report.skipped[0].reason


def test_oasst_tree_without_ranks_is_reported():
    tree = oasst_tree()
    bare = {"message_tree_id": "t2", "prompt": {"role": "prompter", "text": "x", "replies": [
        {"role": "assistant", "text": "y"}, {"role": "assistant", "text": "z"}]}}
    data = read_preferences_bytes(f"{json.dumps(tree)}\n{json.dumps(bare)}\n".encode(), "o.jsonl")
    assert data.report.skipped[0].reason == "message tree has no ranked assistant replies"


def test_split_keeps_whole_prompts_apart(demo_path):
    groups = read_preferences(demo_path).groups
    train, held = split_groups(groups, 0.2, seed=1)
    assert len(held) == round(len(groups) * 0.2) and len(train) + len(held) == len(groups)
    assert not {id(g) for g in train} & {id(g) for g in held}
    assert split_groups(groups, 0.2, seed=1)[1] == held  # reproducible


# ----------------------------------------------------------------------------- real files


def test_real_hh_and_oasst_files(shared_data):
    hh = read_preferences(shared_data / "hh-rlhf" / "helpful-base-test.jsonl.gz")
    assert hh.report.format == "implicit_pairs"
    assert hh.report.prompts + len(hh.report.skipped) == 2354
    assert all(g.prompt[-1]["role"] == "user" for g in hh.groups)
    oasst = read_preferences(shared_data / "oasst" / "en_100_tree.jsonl")
    assert oasst.report.format == "oasst"
    assert oasst.report.k_max == 9 and oasst.report.prompts > 200
    assert oasst.report.comparisons == sum(len(g.pairs()) for g in oasst.groups)


# ----------------------------------------------------------------------------- properties

rank_lists = st.lists(st.one_of(st.none(), st.integers(1, 5)), min_size=2, max_size=9)


@given(rank_lists)
def test_pairs_are_exactly_the_strictly_ordered_ranked_pairs(ranks):
    group = RankedGroup([{"role": "user", "content": "q"}], [f"r{i}" for i in range(len(ranks))], ranks)
    pairs = group.pairs()
    expected = sum(1 for a in ranks for b in ranks if a is not None and b is not None and a < b)
    assert len(pairs) == expected
    assert all(ranks[w] < ranks[l] for w, l in pairs)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.dictionaries(st.sampled_from(["prompt", "responses", "ranks", "chosen", "rejected",
                                                 "response", "rank", "margin"]), json_values), max_size=4))
def test_reader_never_fails_with_anything_but_a_data_error(records):
    text = "".join(json.dumps(r) + "\n" for r in records)
    try:
        data = read_preferences_bytes(text.encode(), "fuzz.jsonl")
    except DataError:
        return
    assert data.groups and all(g.pairs() for g in data.groups)


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=200))
def test_reader_survives_arbitrary_bytes(raw):
    for name in ("x.jsonl", "x.csv", "x.json", "x.parquet"):
        try:
            read_preferences_bytes(raw, name)
        except DataError:
            pass


def test_split_hh_dialogue_raises_a_public_error():
    from rmcore.data import RowError, split_hh_dialogue  # one import: both from the module as loaded now

    with pytest.raises(RowError, match="share no dialogue"):
        split_hh_dialogue("\n\nHuman: a\n\nAssistant: b", "something else")
    assert issubclass(RowError, ValueError)


def test_the_data_limit_is_read_from_the_environment(monkeypatch):
    raw = "".join(json.dumps(r) + "\n" for r in RANKED).encode()
    monkeypatch.setenv("RMCORE_MAX_DATA_MB", "0.0001")
    with pytest.raises(DataError, match=r"r.jsonl: the file is 0 MB; rmcore reads up to 0 MB and 1 records; "
                                        "set RMCORE_MAX_DATA_MB to raise the limit"):
        read_preferences_bytes(raw, "r.jsonl")
    monkeypatch.setenv("RMCORE_MAX_DATA_MB", "lots")
    with pytest.raises(DataError, match="RMCORE_MAX_DATA_MB: must be a number of megabytes, found 'lots'"):
        read_preferences_bytes(raw, "r.jsonl")
    monkeypatch.delenv("RMCORE_MAX_DATA_MB")
    assert len(read_preferences_bytes(raw, "r.jsonl").groups) == 2


def test_one_bad_line_costs_that_line_whatever_it_holds():
    good = json.dumps(RANKED[0])
    lines = [good, "[" * 50_000 + "]" * 50_000, '{"prompt": ' + "1" * 5000 + "}", '{"a": "\u2028 inside"}', good]
    data = read_preferences_bytes("\n".join(lines).encode(), "mixed.jsonl")
    assert len(data.groups) == 2
    assert [s.where for s in data.report.skipped] == ["mixed.jsonl:2", "mixed.jsonl:3", "mixed.jsonl:4"]


def test_excel_sep_line_and_semicolons_are_read_with_their_delimiter():
    data = read_preferences_bytes(b"sep=;\r\nprompt;chosen;rejected\r\nq;a,b;c\r\nr;x;y\r\n", "x.csv")
    assert [g.responses for g in data.groups] == [["a,b", "c"], ["x", "y"]]
    assert [g.source for g in data.groups] == ["x.csv:3", "x.csv:4"]
    semi = read_preferences_bytes(b"prompt;chosen;rejected\nq;a;c\n", "s.csv")
    assert semi.groups[0].responses == ["a", "c"] and "semicolons" in semi.report.warnings[0]


def test_a_csv_cell_over_the_csv_module_limit_is_read():
    long = "word " * 60_000
    data = read_preferences_bytes(f"prompt,chosen,rejected\nq,{long},b\n".encode(), "long.csv")
    assert data.groups[0].responses[0] == long


def test_pairs_are_counted_as_ordered_pairs_would_build_them():
    import random

    from rmcore.data.formats import count_pairs, ordered_pairs

    rng = random.Random(0)
    for _ in range(200):
        k = rng.randint(0, 12)
        ranks = [rng.choice([None, 1, 2, 3, 4, 5]) for _ in range(k)]
        ties = sum(1 for i, a in enumerate(ranks) for b in ranks[i + 1:] if a is not None and a == b)
        assert count_pairs(ranks) == (len(ordered_pairs(ranks)), ties), ranks
    assert count_pairs(list(range(1, 20_001))) == (20_000 * 19_999 // 2, 0)  # at once, never built


def test_more_than_sixty_four_responses_to_a_prompt_is_skipped_with_the_reason():
    from rmcore.data import records_to_preferences
    from rmcore.data.formats import MAX_RESPONSES

    def record(k):
        return {"prompt": f"p{k}", "responses": [f"r{i}" for i in range(k)], "ranks": list(range(1, k + 1))}

    data = records_to_preferences([("f:1", record(MAX_RESPONSES)), ("f:2", record(MAX_RESPONSES + 1))], "f")
    assert [len(g.responses) for g in data.groups] == [MAX_RESPONSES]
    [skipped] = data.report.skipped
    assert skipped.where == "f:2" and "65 responses to one prompt; rmcore compares at most 64" in skipped.reason
    assert any(f"more than 9 responses (up to K = {MAX_RESPONSES})" in w for w in data.report.warnings)
    # candidates to score have no pairs: any number of them is read
    scored = records_to_preferences([("f:1", {"prompt": "p", "responses": [f"r{i}" for i in range(500)]})], "f",
                                    for_scoring=True)
    assert len(scored.groups[0].responses) == 500
