"""What users import stays where it was: the package's names, rmcore.data's, the console script, and the
library calls the README documents. And the one prompt key every part of rmcore uses."""

from __future__ import annotations

import importlib
import subprocess
import sys
import textwrap
from importlib.metadata import entry_points

import rmcore
import rmcore.data

PACKAGE_NAMES = [
    "DataError", "EvalResult", "ModelError", "PreferenceData", "RankedGroup", "RewardModel", "RmcoreError",
    "ScoreResult", "TrainConfig", "TrainResult", "TrainingError", "bradley_terry_loss", "evaluate",
    "preference_matrix", "read_preferences", "split_groups", "train",
]
DATA_NAMES = [
    "FORMATS", "MAX_K", "MAX_MARGIN", "MAX_RANK", "RANKED_FORMATS", "ROLES", "DataReport", "Message",
    "PreferenceData", "RankedGroup", "RowError", "SkippedRow", "demo_data_path", "detect_format",
    "groups_fingerprint", "ordered_pairs", "read_preferences", "read_preferences_bytes", "records_to_preferences",
    "split_groups", "split_hh_dialogue", "summarize", "write_ranked_jsonl",
]
README_CALLS = {  # module -> names the README shows users importing from it
    "rmcore.scoring": ["scored_records"],
    "rmcore.ensemble": ["Ensemble"],
    "rmcore.reward_function": ["RewardFunction"],
}


def test_the_package_exports_what_it_always_did():
    assert sorted(rmcore.__all__) == sorted(PACKAGE_NAMES)
    for name in PACKAGE_NAMES:
        assert getattr(rmcore, name) is not None, name
    assert callable(rmcore.train) and callable(rmcore.evaluate)  # the functions, not their modules


def test_rmcore_data_keeps_its_names():
    assert sorted(rmcore.data.__all__) == sorted(DATA_NAMES)
    for name in DATA_NAMES:
        assert getattr(rmcore.data, name) is not None, name


def test_the_library_calls_the_readme_documents_import():
    for module, names in README_CALLS.items():
        loaded = importlib.import_module(module)
        for name in names:
            assert callable(getattr(loaded, name)), f"{module}.{name}"


def test_the_console_script_is_rmcore_cli_main():
    [script] = [e for e in entry_points(group="console_scripts") if e.name == "rmcore"]
    assert script.value == "rmcore.cli:main"
    from rmcore.cli import main

    assert script.load() is main


def test_the_parser_and_rmcore_data_need_no_torch():
    code = textwrap.dedent("""
        import sys
        import rmcore.data, rmcore.data.prompts, rmcore.core.folders, rmcore.core.progress
        from rmcore.cli.parser import build_parser
        build_parser().parse_args(["train", "x.jsonl", "--out", "o"])
        heavy = sorted(m for m in ("torch", "transformers", "numpy") if m in sys.modules)
        print("heavy:", " ".join(heavy))
    """)
    ran = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip() == "heavy:", ran.stdout


def test_one_prompt_key_for_both_forms_of_a_prompt_everywhere():
    """A plain instruction and the same one-user-turn conversation are one prompt: the samples file
    (rmcore.policy.sampling), the GRPO reward's grouping (rmcore.policy.reward_function) and the
    prompt reader all use rmcore.data.prompts.prompt_key (two keys for one string once split a cache)."""
    from rmcore.data import prompts
    from rmcore.policy import reward_function, sampling

    text = "Name a prime."
    assert prompts.prompt_key(text) == prompts.prompt_key([{"role": "user", "content": text}])
    assert prompts.prompt_key(text) != prompts.prompt_key([{"role": "system", "content": text}])
    assert sampling.prompt_key is prompts.prompt_key and reward_function.prompt_key is prompts.prompt_key
    assert prompts.unique_prompts([[{"role": "user", "content": text}]] * 2) == [text]
