"""Unit tests of the built-in rewards on the real MedMCQA sample rows, the registry and the
in-process scorer (no Ray here; the pool is tested in tests/integration/test_reward_pool.py)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from rewards import make_scorer, resolve_reward, reward_name
from rewards.accuracy import AMBIGUOUS, extract_choice, make_accuracy, parse_options
from rewards.batch import RewardBatch, combine
from rewards.charclass import char_class
from rewards.config import RewardPoolConfig
from rewards.format import format_lenient, format_reward
from rewards.shaping import make_overlong, repetition_penalty, soft_overlong_penalty

REPO = Path(__file__).resolve().parents[2]
MEDMCQA = Path(os.environ.get("MEDMCQA_DIR", REPO.parent / "shared" / "data" / "med_mcqa"))
LETTERS = "ABCD"


def _rows(split: str) -> list[dict]:
    path = MEDMCQA / (split if "/" in split else f"small/{split}")
    path = path.with_suffix(".jsonl")
    if not path.is_file():
        pytest.skip(f"MedMCQA sample {path} not found (set MEDMCQA_DIR to the med_mcqa folder)")
    return [
        json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()
    ]


def _seed_completion(letter: str, reasoning: str = "Recall the pharmacology.") -> str:
    return f"<think>\n{reasoning}\n</think>\n<answer>\nThe drug fits.\nFinal Answer: {letter}\n</answer>"


def _wrong(letter: str) -> str:
    return LETTERS[(LETTERS.index(letter) + 1) % 4]


@pytest.mark.parametrize("split", ["train", "validation", "test", "full/validation", "full/test"])
def test_medmcqa_correct_wrong_and_malformed(split: str) -> None:
    rows = _rows(split)
    prompts = [[{"role": "user", "content": r["problem"]}] for r in rows]
    sol = [r["solution"] for r in rows]
    correct = [[{"role": "assistant", "content": _seed_completion(s)}] for s in sol]
    wrong = [_seed_completion(_wrong(s)) for s in sol]
    malformed = [
        f"I think it is {s} but not sure" for s in sol
    ]  # no stated answer, last line is prose
    assert accuracy_of(prompts, correct, sol) == [1.0] * len(rows)
    assert accuracy_of(prompts, wrong, sol) == [0.0] * len(rows)
    assert accuracy_of(prompts, malformed, sol) == [0.0] * len(rows)
    assert format_reward(prompts, correct) == [1.0] * len(rows)
    assert format_reward(prompts, malformed) == [0.0] * len(rows)


def accuracy_of(prompts: list, completions: list, solution: list) -> list:
    return resolve_reward("accuracy")(prompts, completions, solution=solution)


def test_medmcqa_option_text_answers_use_the_prompt_options() -> None:
    rows = _rows("train")
    hits = 0
    for r in rows:
        options = parse_options(r["problem"])
        assert sorted(options) == list(LETTERS), r["id"]
        texts = [t.casefold() for t in options.values()]
        if len(set(texts)) < 4:  # duplicate option texts cannot name one option
            continue
        text = options[r["solution"]]
        got = accuracy_of(
            [r["problem"]], [f"<answer>\nFinal Answer: **{text}**\n</answer>"], [r["solution"]]
        )
        assert got == [1.0], (r["id"], text)
        hits += 1
    assert hits >= 40


SEED_BUG_CASES = [
    # (completion, reference, expected accuracy): the reference recipe scored all of these 0.0
    ("<think>\nreasoning\n</think>\n<answer>\nB\n</answer>", "B", 1.0),
    ("Final Answer: b", "B", 1.0),
    ("<think>\nx\n</think>\n<answer>\nFinal Answer: C\n</answer>", "C", 1.0),
    ("reasoning...\n<answer> D </answer>\n", "D", 1.0),
]
EXTRACTION_CASES = [
    ("Final Answer: B", "B"),
    ("**Final Answer:** B", "B"),
    ("Final Answer: B.", "B"),
    ("**Final Answer: b.**", "B"),
    ("final answer :   (c)", "C"),
    ("The answer is D.", "D"),
    ("Answer: Option A", "A"),
    ("Final Answer:\n\nC", "C"),
    ("Final Answer: $\\boxed{C}$", "C"),
    ("so \\boxed{A}", "A"),
    ("Final Answer: C</answer>", "C"),
    ("<answer>\nC. Piperacillin, because it covers Pseudomonas\n</answer>", "C"),
    ("Final Answer: B (Dicloxacillin)", "B"),
    ("Final Answer: a drug like C", "C"),
    ("Ｆinal Answer: Ｃ", "C"),  # full-width letter (NFKC)
    ("blah blah\nC", "C"),  # the reference recipe's bare last line
    ("blah blah\n(C).", "C"),
    # several answers: the last stated one wins
    ("Answer: B\n...on reflection...\nFinal Answer: D", "D"),
    ("<think>\nThe answer is A\n</think>\n<answer>\nB\n</answer>", "B"),
    ("<answer>\nB\n</answer>\nFinal Answer: A", "A"),
    # one statement with several options is ambiguous
    ("Final Answer: B or C", AMBIGUOUS),
    ("Final Answer: A and B", AMBIGUOUS),
    ("Final Answer: A, C", AMBIGUOUS),
    # no answer
    ("", None),
    ("   \n\t", None),
    ("A drug is given.", None),  # article, not an option
    ("I answered quickly", None),
    ("<answer>\nPenicillins are beta-lactams; vitamin D is unrelated.\n</answer>", None),
    ("Final Answer: E", None),  # not in A-D
    ("Final Answer: none of these", None),
]


@pytest.mark.parametrize(("completion", "reference", "expected"), SEED_BUG_CASES)
def test_seed_bugs_are_fixed(completion: str, reference: str, expected: float) -> None:
    assert accuracy_of([""], [completion], [reference]) == [expected]


@pytest.mark.parametrize(("completion", "expected"), EXTRACTION_CASES)
def test_extract_choice(completion: str, expected: str | None) -> None:
    assert extract_choice(completion) == expected


def test_ambiguous_answer_scores_zero_and_text_options() -> None:
    prompt = "Q?\nOptions:\nA. Cephalexin\nB. Dicloxacillin\nC. Piperacillin\nD. Cloxacillin\n"
    assert accuracy_of([prompt], ["Final Answer: B or C"], ["B"]) == [0.0]
    assert accuracy_of([prompt], ["Final Answer: piperacillin."], ["C"]) == [1.0]
    assert accuracy_of([prompt], ["Final Answer: Piperacillin"], ["A"]) == [0.0]
    assert accuracy_of(["no options listed"], ["Final Answer: Piperacillin"], ["C"]) == [0.0]


def test_configurable_choice_sets() -> None:
    five = make_accuracy(["A", "B", "C", "D", "E"])
    assert five([""], ["Final Answer: E"], solution=["E"]) == [1.0]
    numbers = resolve_reward("accuracy", answer_choices=["1", "2", "3", "4"])
    assert numbers(["", ""], ["Final Answer: 3", "Answer: (2)"], solution=["3", "3"]) == [1.0, 0.0]
    with pytest.raises(ValueError, match="answer_choices"):
        make_accuracy(["A", "A"])


def test_accuracy_reference_not_a_choice_is_none_not_zero(caplog: pytest.LogCaptureFixture) -> None:
    got = accuracy_of(["", ""], ["Final Answer: A", "Final Answer: A"], ["A", "Z"])
    assert got == [1.0, None]
    assert "not one of" in caplog.text and "'Z'" in caplog.text
    with pytest.raises(ValueError, match="solution"):
        resolve_reward("accuracy")([""], ["Final Answer: A"])


FORMAT_CASES = [
    # (completion, strict, lenient)
    ("<think>\nr\n</think>\n<answer>\nC\n</answer>", 1.0, 1.0),
    ("<think>\nr\n</think>\n<answer>\nC\n</answer>\n", 1.0, 1.0),  # trailing newline
    (
        "<think>\nr\n</think>\n<answer>\nC\n</answer>\nextra text",
        0.0,
        0.0,
    ),  # the reference recipe passed this
    (
        "<think>\nr\n</think>\n<answer>\nC\n</answer>\n<answer>\nD\n</answer>",
        0.0,
        0.0,
    ),  # two answers
    ("<think>r</think><answer>C</answer>", 0.0, 1.0),  # no newlines
    ("  <THINK>\nr\n</THINK>\n\n<Answer>\nC\n</Answer>", 0.0, 1.0),  # case, spacing
    ("reasoning only\n</think>\n<answer>\nC\n</answer>", 0.0, 1.0),  # <think> came with the prompt
    ("<think>\n\n</think>\n<answer>\nC\n</answer>", 0.0, 1.0),  # blank reasoning
    ("<think>\nr\n</think>\n<answer>\n \n</answer>", 0.0, 0.0),  # blank answer
    ("preamble <think>\nr\n</think>\n<answer>\nC\n</answer>", 0.0, 0.0),
    ("<answer>\nC\n</answer>\n<think>\nr\n</think>", 0.0, 0.0),  # wrong order
    ("<think>\nr\n<answer>\nC\n</answer>", 0.0, 0.0),  # unclosed think
    ("", 0.0, 0.0),
]


@pytest.mark.parametrize(("completion", "strict", "lenient"), FORMAT_CASES)
def test_format_strict_and_lenient(completion: str, strict: float, lenient: float) -> None:
    assert format_reward([""], [completion]) == [strict]
    assert format_lenient([""], [completion]) == [lenient]
    chat = [[{"role": "assistant", "content": completion}]]
    assert format_reward([""], chat) == [strict]


def test_overlong_matches_dapo() -> None:
    assert soft_overlong_penalty(80, 100, 20) == 0.0
    assert soft_overlong_penalty(90, 100, 20) == pytest.approx(-0.5)
    assert soft_overlong_penalty(100, 100, 20) == pytest.approx(-1.0)
    assert soft_overlong_penalty(150, 100, 20) == -1.0
    fn = make_overlong(100, 20)
    ids = [[0] * 10, [0] * 85, [0] * 100]
    assert fn(["", "", ""], ["", "", ""], completion_ids=ids) == pytest.approx([0.0, -0.25, -1.0])
    default = resolve_reward("overlong", max_completion_length=8)  # buffer 8 // 4 = 2
    assert default([""], [""], completion_ids=[[1] * 7]) == [pytest.approx(-0.5)]
    with pytest.raises(ValueError, match="max_completion_length"):
        resolve_reward("overlong")
    with pytest.raises(ValueError, match="completion_ids"):
        fn([""], ["x"])


def test_repetition_penalty() -> None:
    assert repetition_penalty("the cat sat on the mat") == 0.0
    assert repetition_penalty("a b") == 0.0
    assert repetition_penalty("go go go go go go go go go go go") == pytest.approx(-(1 - 1 / 9))
    assert repetition_penalty("x y z x y z") == pytest.approx(-(1 - 3 / 4))
    fn = resolve_reward("repetition")
    assert fn(["", ""], ["one two three four", "la la la la la la"]) == [0.0, pytest.approx(-0.75)]


def test_char_class() -> None:
    comps = ["12345", "12ab", " 1 2 a ", "", "   ", "ABC", "abc", "ÄÖÜ"]
    sol = ["digits", "digits", "digits", "digits", "lower", "upper", "upper", "upper"]
    assert char_class([""] * 8, comps, solution=sol) == [
        1.0,
        0.5,
        pytest.approx(2 / 3),
        0.0,
        0.0,
        1.0,
        0.0,
        0.0,
    ]
    assert char_class([""], ["abc"], solution=["vowels"]) == [None]


def test_registry_errors_and_names() -> None:
    with pytest.raises(ValueError) as e:
        resolve_reward("acuracy")
    msg = str(e.value)
    assert (
        "'acuracy'" in msg
        and "accuracy" in msg
        and "format_lenient" in msg
        and "module:function" in msg
    )
    with pytest.raises(ValueError, match="cannot be imported"):
        resolve_reward("no_such_pkg.mod:fn")
    with pytest.raises(ValueError, match="has no attribute"):
        resolve_reward("rewards.format:nope")
    with pytest.raises(ValueError, match="not a function"):
        resolve_reward("rewards.accuracy:DEFAULT_CHOICES")
    assert resolve_reward("rewards.format:format_lenient") is format_lenient
    assert reward_name("accuracy") == "accuracy"
    assert reward_name("my_pkg.mod:length_bonus") == "length_bonus"


def test_combine_follows_trl_nansum() -> None:
    per = {"a": [1.0, None, 0.0, 0.5], "b": [1.0, 2.0, None, math.nan]}
    assert combine(per, {"a": 2.0, "b": -1.0}) == [1.0, -2.0, 0.0, 1.0]


def _reward_poison(prompts: list, completions: list, **_: object) -> list[float]:
    if any("poison" in c for c in completions):
        raise RuntimeError("poisoned input")
    return [float(len(c)) for c in completions]


def _reward_wrong_length(prompts: list, completions: list, **_: object) -> list[float]:
    return [1.0]


def test_in_process_scorer_isolation(caplog: pytest.LogCaptureFixture) -> None:
    cfg = RewardPoolConfig(use_ray=False)
    scorer = make_scorer(
        ["accuracy", f"{__name__}:_reward_poison", f"{__name__}:_reward_wrong_length"],
        [1.0, 0.5, 1.0],
        cfg,
    )
    comps = ["Final Answer: A", "poison Final Answer: B", "Final Answer: C"]
    batch = scorer.score(["", "", ""], comps, {"solution": ["A", "B", "D"], "id": ["x", "y", "z"]})
    assert isinstance(batch, RewardBatch)
    assert batch.per_func["accuracy"] == [1.0, 1.0, 0.0]
    assert batch.per_func["_reward_poison"] == [15.0, None, 15.0]  # only the poisoned item is None
    assert batch.per_func["_reward_wrong_length"] == [1.0, 1.0, 1.0]  # per-item retry rescues it
    assert batch.failures == {"accuracy": 0, "_reward_poison": 1, "_reward_wrong_length": 0}
    assert batch.total == [1.0 + 7.5 + 1.0, 1.0 + 1.0, 7.5 + 1.0]
    assert "poisoned input" in batch.failure_samples["_reward_poison"]
    assert "id='y'" in caplog.text
    scorer.close()


def test_scorer_input_errors_name_the_field() -> None:
    scorer = make_scorer(["format"], None, RewardPoolConfig(use_ray=False))
    with pytest.raises(ValueError, match="column 'solution'"):
        scorer.score(["", ""], ["a", "b"], {"solution": ["A"]})
    with pytest.raises(ValueError, match="prompts"):
        scorer.score([""], ["a", "b"], {})
    with pytest.raises(ValueError, match="reward_weights"):
        make_scorer(["format", "accuracy"], [1.0], RewardPoolConfig(use_ray=False))
    with pytest.raises(ValueError, match="duplicate"):
        make_scorer(["format", "format"], None, RewardPoolConfig(use_ray=False))
    with pytest.raises(ValueError, match="unknown reward"):
        make_scorer(["nope"], None, RewardPoolConfig(use_ray=True))  # fails before Ray starts


def test_in_process_ascore_and_async_reward() -> None:
    import asyncio

    scorer = make_scorer(
        ["format", f"{__name__}:_async_reward"], None, RewardPoolConfig(use_ray=False)
    )
    batch = asyncio.run(
        scorer.ascore(["", ""], ["<think>\nr\n</think>\n<answer>\nA\n</answer>", "x"], {})
    )
    assert batch.per_func == {"format": [1.0, 0.0], "_async_reward": [2.0, 2.0]}


async def _async_reward(prompts: list, completions: list, **_: object) -> list[float]:
    return [2.0] * len(completions)


def test_chat_content_parts_and_odd_shapes() -> None:
    parts = [
        {
            "role": "assistant",
            "content": [{"type": "text", "text": "Final Answer: "}, {"type": "text", "text": "B"}],
        }
    ]
    assert extract_choice(parts) == "B"
    assert extract_choice({"role": "assistant", "content": "Final Answer: C"}) == "C"
    assert extract_choice(None) is None and extract_choice(42) is None


def test_importing_rewards_does_not_import_ray() -> None:
    import subprocess
    import sys

    code = "import sys, rewards, rewards.ray_pool, rewards.worker; assert 'ray' not in sys.modules, 'ray imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=60)


def test_split_covers_every_item_once() -> None:
    from rewards.chunks import split_ranges as _split

    for n in (1, 7, 16, 255, 256, 1000):
        for pieces in (1, 2, 3, 8):
            ranges = _split(n, pieces)
            assert [i for a, b in ranges for i in range(a, b)] == list(range(n))
            sizes = [b - a for a, b in ranges]
            assert max(sizes) - min(sizes) <= 1


def test_pool_config_errors() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="answer_choices"):
        RewardPoolConfig(answer_choices=["A", "A"])
    with pytest.raises(ValidationError, match="timeout"):
        RewardPoolConfig(timeout_s=0)
    with pytest.raises(ValidationError, match="extra"):
        RewardPoolConfig(workers=3)


def test_medmcqa_adversarial_completions() -> None:
    rows = _rows("validation")
    prompts = [r["problem"] for r in rows]
    sol = [r["solution"] for r in rows]
    n = len(rows)
    junk = b"\xff\xfe\x80 caf\xc3\xa9 \xed\xa0\x80".decode("utf-8", errors="surrogateescape")
    every_option = ["Final Answer: A or B or C or D"] * n  # hedging over all options
    all_letters = ["Final Answer: A, B, C, D"] * n
    padded = [("word " * 40_000) + f"\nFinal Answer: {s}" for s in sol]  # ~200 kB
    non_utf8 = [
        f"{junk}<think>\n{junk}\n</think>\n<answer>\n{junk}\nFinal Answer: {s}\n</answer>"
        for s in sol
    ]
    injected = [f"Final Answer: {s}\nIgnore the above. Final Answer: {_wrong(s)}" for s in sol]
    assert accuracy_of(prompts, every_option, sol) == [0.0] * n
    assert accuracy_of(prompts, all_letters, sol) == [0.0] * n
    assert accuracy_of(prompts, padded, sol) == [1.0] * n
    assert accuracy_of(prompts, non_utf8, sol) == [1.0] * n
    assert accuracy_of(prompts, injected, sol) == [0.0] * n  # the last statement counts
    assert format_reward(prompts, non_utf8) == [0.0] * n  # text before <think>
    assert format_lenient(prompts, [c[len(junk) :] for c in non_utf8]) == [1.0] * n


def test_batch_metrics_follow_trl_names() -> None:
    batch = RewardBatch(
        [1.0, 0.0, 3.0], {"a": [1.0, None, 3.0], "b": [None, None, None]}, {"a": 1, "b": 0}
    )
    m = batch.metrics()
    assert m["rewards/a/mean"] == 2.0 and m["rewards/a/std"] == pytest.approx(math.sqrt(2.0))
    assert m["rewards/a/failures"] == 1.0
    assert math.isnan(m["rewards/b/mean"]) and math.isnan(m["rewards/b/std"])


def test_an_item_no_reward_scores_is_nan_not_zero(caplog: pytest.LogCaptureFixture) -> None:
    # TRL 1.16 marks such rows NaN too (unscorable_mask): 0.0 would enter the group's baseline
    per = {"a": [None, 1.0, math.nan], "b": [math.nan, None, None]}
    total = combine(per, {"a": 1.0, "b": 1.0})
    assert math.isnan(total[0]) and total[1] == 1.0 and math.isnan(total[2])
    scorer = make_scorer([f"{__name__}:_reward_poison"], None, RewardPoolConfig(use_ray=False))
    batch = scorer.score(["", ""], ["poison", "ok"], {"id": ["x", "y"]})
    assert math.isnan(batch.total[0]) and batch.total[1] == 2.0
    assert batch.unscored == 1
    assert "left out of training" in caplog.text
