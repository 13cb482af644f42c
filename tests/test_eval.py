"""``pastac eval``: the quality proxies, the judge, and the evaluation loop on a tiny random model."""

from __future__ import annotations

import json
import random

import pytest
import torch
from test_cli import run
from test_cli_run import model_dir  # noqa: F401 (a fixture)
from transformers import LogitsProcessorList

from pastac.evaluation.metrics import log_likelihood, mean_redundancy, overlap, redundancy, sibling_groups
from pastac.evaluation.run import (
    LIST_LIKE,
    EvalOptions,
    JudgeError,
    evaluate,
    item_redundancy,
    judge_pair,
    result_problem,
    sampled_answer,
    summarize,
)
from pastac.models import random_model, tiny_tokenizer


def test_overlap_and_redundancy():
    assert overlap("the cat sat on the mat", "the cat sat on the mat") == 1.0
    assert overlap("the cat sat on the mat", "a dog ran in the park") == 0.0
    assert overlap("one two", "one two") == 0.0  # no trigram: nothing to compare
    assert 0 < overlap("drink water every day", "drink water every hour") < 1
    assert redundancy(["only one"]) is None
    assert redundancy(["a b c d", "a b c d", "w x y z"]) == pytest.approx((1 + 0 + 0) / 3)
    groups = sibling_groups({0: None, 1: 0, 2: 0, 3: 1}, {1: "x y z", 2: "x y z", 3: "alone"})
    assert groups == [["x y z", "x y z"]]  # t3 has no sibling
    assert mean_redundancy(groups) == 1.0 and mean_redundancy([]) is None


def test_items_of_a_sequential_answer():
    repeated = (
        "Tips:\n1. Drink water every day and keep a bottle near you.\n"
        "2. Drink water every day and keep a bottle near you.\n3. Sleep eight hours every night, "
        "in a dark room.\nThat is all."
    )
    distinct = (
        "Tips:\n1. Drink water every day and keep a bottle near you.\n2. Walk for twenty minutes after "
        "lunch in the park.\n3. Sleep eight hours every night, in a dark room.\nThat is all."
    )
    assert item_redundancy(repeated) > item_redundancy(distinct) >= 0
    assert item_redundancy("Paris is the capital of France.") is None  # nothing to fork, no items


def test_log_likelihood_prefers_what_the_model_would_write():
    tokenizer = tiny_tokenizer()
    model = random_model("tiny-llama", vocab_size=len(tokenizer), seed=4)
    prompt = tokenizer.encode("Give me tips.")
    greedy = model.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False)[0, len(prompt) :].tolist()
    rng = random.Random(0)
    noise = [rng.randrange(len(tokenizer)) for _ in greedy]
    assert log_likelihood(model, prompt, greedy) > log_likelihood(model, prompt, noise)
    assert log_likelihood(model, prompt, []) is None


def test_judge_sees_both_orders_and_reports_for_ours():
    def prefers_good(question: str) -> str:
        a = question.split("Answer A:\n")[1].split("\n\nAnswer B:")[0]
        return "A, it is better." if "good" in a else "B is better."

    rng = random.Random(1)
    verdicts = {judge_pair(prefers_good, "q", "a good answer", "a bad answer", rng) for _ in range(20)}
    assert verdicts == {"win"}
    assert {judge_pair(prefers_good, "q", "bad", "good", rng) for _ in range(20)} == {"loss"}
    assert judge_pair(lambda q: "Tie: both fine.", "q", "x", "y", rng) == "tie"

    def down(question: str) -> str:
        raise RuntimeError("cannot reach http://127.0.0.1:9")

    with pytest.raises(JudgeError, match=r"127\.0\.0\.1"):
        judge_pair(down, "q", "x", "y", rng)


def test_evaluate_on_a_tiny_model(tiny_engine):
    engine = tiny_engine("tiny-llama", 5)
    records = [
        {"id": "a", "category": "list", "prompt": "Give me three tips."},
        {"id": "b", "category": "factual", "prompt": "What is the capital of France?"},
    ]
    report = evaluate(records, engine, engine, EvalOptions(max_new_tokens=8, judge=lambda q: "A"))
    assert [r["id"] for r in report["results"]] == ["a", "b"]
    for r in report["results"]:
        assert r["threads"] >= 1 and isinstance(r["valid"], bool) and r["speedup_vs_hf_generate"] > 0
        assert r["loglik_pasta"] is not None and r["judge"] in ("win", "loss", "tie")
        assert r["valid"] == (r["problems"] == [])  # an answer that is not valid says why
        # one budget for both answers: 8 new tokens for generate, 8 for all the threads together
        assert r["baseline_tokens"] <= 8 and r["baseline_cut"] == (r["baseline_tokens"] == 8)
        assert 0 < r["written"] <= 8
    summary = report["summary"]
    assert summary["prompts"] == 2 and summary["fork_rate_by_category"].keys() == {"list", "factual"}
    assert 0 <= summary["valid_rate"] <= 1 and sum(summary["judge"].values()) == pytest.approx(1.0)
    json.dumps(report)


def test_a_sampled_reference_answer_is_seeded_and_scored(tiny_engine):
    engine = tiny_engine("tiny-llama", 5)
    ids = engine.prompt_ids("Give me three tips.")
    state = torch.random.get_rng_state()
    draws = [sampled_answer(engine, ids, LogitsProcessorList(), 12, 1.0, seed) for seed in (1, 1, 2)]
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's random state is left alone
    assert draws[0] == draws[1] != draws[2] and all(0 < len(d) <= 12 for d in draws)
    greedy = engine.model.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False)[0, len(ids) :].tolist()
    assert draws[0] != [t for t in greedy if t not in engine.eos]  # drawn, not the argmax

    records = [
        {"id": "a", "category": "list", "prompt": "Give me three tips."},
        {"id": "b", "category": "factual", "prompt": "What is the capital of France?"},
    ]
    options = EvalOptions(max_new_tokens=8, sampled_reference=1.0)
    report = evaluate(records, engine, engine, options)
    for r in report["results"]:
        assert isinstance(r["loglik_sampled"], float) and isinstance(r["sampled_cut"], bool)
    assert report["summary"]["sampled_reference"] == 1.0
    # each prompt's draw is seeded by the prompt: the same alone as among others
    alone = evaluate(records[1:], engine, engine, options)["results"][0]
    assert alone["loglik_sampled"] == report["results"][1]["loglik_sampled"]
    assert "loglik_sampled" not in evaluate(records[:1], engine, engine, EvalOptions(max_new_tokens=8))["summary"]


def test_the_sampled_reference_is_summarised_where_the_sampled_answer_ended():
    def result(greedy: float, sampled: float, cut: bool) -> dict:
        return {
            "category": "list",
            "threads": 2,
            "valid": True,
            "speedup_vs_sequential": 1.0,
            "speedup_vs_hf_generate": 1.0,
            "theoretical_speedup": 1.0,
            "loglik_pasta": -1.5,
            "loglik_sequential": greedy,
            "redundancy_threads": 0.0,
            "redundancy_sequential": 0.0,
            "baseline_cut": False,
            "written": 100,
            "baseline_tokens": 100,
            "loglik_sampled": sampled,
            "sampled_cut": cut,
        }

    summary = summarize([result(-1.0, -1.2, False), result(-2.0, -2.6, False), result(-1.0, -0.1, True)])
    # the loop the budget cut is left out, and the two that ended are set against their own greedy answers
    assert summary["loglik_sampled"] == pytest.approx(-1.9)
    assert summary["loglik_sampled_relative_change"] == pytest.approx((-1.9 + 1.5) / 1.5)
    assert summary["loglik_sequential"] == pytest.approx(-4 / 3)  # over every prompt, as before
    assert "loglik_sampled" not in summarize([result(-1.0, -0.1, True)])


def test_the_adapted_model_answers_by_one_thread_too(tiny_engine):
    engine = tiny_engine("tiny-llama", 5)
    records = [
        {"id": "a", "category": "list", "prompt": "Give me three tips."},
        {"id": "b", "category": "factual", "prompt": "What is the capital of France?"},
    ]
    report = evaluate(records, engine, engine, EvalOptions(max_new_tokens=8, sequential_answer=True))
    for r in report["results"]:
        assert isinstance(r["loglik_adapted_sequential"], float) and isinstance(r["adapted_sequential_cut"], bool)
        assert 0 < r["adapted_sequential_tokens"] <= 8
        assert r["adapted_sequential_cut"] == (r["adapted_sequential_tokens"] == 8)
        assert result_problem(r) is None
    summary = report["summary"]
    assert summary["sequential_answer"] is True
    assert summary["q_async_rows"] == sum(
        not r["baseline_cut"] and not r["adapted_sequential_cut"] for r in report["results"]
    )
    alone = evaluate(records[:1], engine, engine, EvalOptions(max_new_tokens=8))
    assert "loglik_adapted_sequential" not in alone["results"][0] and alone["summary"]["q_async_gap"] is None


def _row(category: str = "list", greedy: float = -1.0, pasta: float = -1.3, **more: object) -> dict:
    """A result row with the given log-likelihoods, every answer ended."""
    return {
        "category": category,
        "threads": 2,
        "valid": True,
        "speedup_vs_sequential": 1.0,
        "speedup_vs_hf_generate": 1.0,
        "theoretical_speedup": 1.0,
        "loglik_pasta": pasta,
        "loglik_sequential": greedy,
        "redundancy_threads": 0.0,
        "redundancy_sequential": 0.0,
        "baseline_cut": False,
        **more,
    }


def test_quality_gaps_in_points_over_the_rows_whose_answers_ended():
    sampled = {"loglik_sampled": -1.1, "sampled_cut": False}
    own = {"loglik_adapted_sequential": -1.2, "adapted_sequential_cut": False}
    summary = summarize([_row(**sampled, **own)])
    # rel(sampled) = -0.1 and rel(pasta) = -0.3 of the greedy answer's -1.0: 20 points; rel(own) = -0.2: 10
    assert summary["q_ref_gap_list_like"] == pytest.approx(20.0) and summary["q_ref_rows_list_like"] == 1
    assert summary["q_async_gap_list_like"] == pytest.approx(10.0) and summary["q_async_rows_list_like"] == 1
    assert summary["q_ref_gap"] == pytest.approx(20.0) and summary["q_async_gap"] == pytest.approx(10.0)

    rows = [
        _row(**sampled, **own),
        # means over the rows kept: greedy -1.5, sampled -1.6, pasta -2.0, own -1.55
        _row(
            greedy=-2.0, pasta=-2.7, **sampled | {"loglik_sampled": -2.1}, **own | {"loglik_adapted_sequential": -1.9}
        ),
        _row(greedy=-0.1, pasta=-5.0, **sampled, **own) | {"baseline_cut": True},  # a looping greedy answer
        _row(pasta=-5.0, loglik_sampled=-0.1, sampled_cut=True),  # a looping sample, and no sequential answer
        _row("factual", greedy=-1.0, pasta=-1.0, **sampled, **own),  # not list-like
    ]
    summary = summarize(rows)
    assert summary["q_ref_rows_list_like"] == 2 and summary["q_async_rows_list_like"] == 2
    assert summary["q_ref_gap_list_like"] == pytest.approx(100 * ((-1.6 + 1.5) - (-2.0 + 1.5)) / 1.5)
    assert summary["q_async_gap_list_like"] == pytest.approx(100 * ((-1.55 + 1.5) - (-2.0 + 1.5)) / 1.5)
    assert summary["q_ref_rows"] == 3 and summary["q_async_rows"] == 3
    # greedy -4/3, sampled -4.3/3, pasta -5/3: over all prompts
    assert summary["q_ref_gap"] == pytest.approx(100 * (5 - 4.3) / 4)
    assert summary["loglik_sequential"] == pytest.approx(-5.1 / 5)  # the other figures: every row, as before

    # no reference answer, or none that ended: nothing to measure
    bare = summarize([_row(), _row(loglik_sampled=-1.1, sampled_cut=True)])
    for key in ("q_ref_gap", "q_ref_gap_list_like", "q_async_gap", "q_async_gap_list_like"):
        assert bare[key] is None, key
    assert bare["q_ref_rows_list_like"] == 0 and bare["q_async_rows"] == 0
    assert summarize([_row(category="code", **sampled)])["q_ref_gap_list_like"] is None  # no list-like row


def test_a_row_with_a_reference_answer_says_whether_it_was_cut():
    own = {"loglik_adapted_sequential": -1.2, "adapted_sequential_cut": True, "adapted_sequential_tokens": 8}
    assert result_problem(_row(**own)) is None
    assert result_problem(_row(loglik_adapted_sequential=None)) is None  # an empty answer: no figure, no flag
    assert result_problem(_row(loglik_adapted_sequential=-1.2)) == 'no "adapted_sequential_cut" field'
    assert (
        result_problem(_row(**own | {"adapted_sequential_cut": 0}))
        == '"adapted_sequential_cut" is 0, not true or false'
    )
    assert (
        result_problem(_row(**own | {"loglik_adapted_sequential": "x"}))
        == "\"loglik_adapted_sequential\" is 'x', not a number or null"
    )
    assert result_problem(_row(loglik_sampled=-1.1)) == 'no "sampled_cut" field'


def test_list_like_and_short_figures_take_only_their_categories():
    def result(category: str, threads: int, speedup: float) -> dict:
        cut = category == "list"  # a base answer the budget cut: a loop, which the base model finds likely
        return {
            "category": category,
            "threads": threads,
            "valid": True,
            "speedup_vs_sequential": speedup,
            "speedup_vs_hf_generate": speedup,
            "theoretical_speedup": speedup,
            "loglik_pasta": -1.0,
            "loglik_sequential": -0.2 if cut else -1.0,
            "redundancy_threads": 0.0,
            "redundancy_sequential": 0.0,
            "baseline_cut": cut,
            "written": 100 * threads,
            "baseline_tokens": 100,
        }

    summary = summarize(
        [result("list", 4, 2.0), result("plan", 1, 1.0), result("factual", 1, 1.0), result("code", 1, 0.5)]
    )
    assert LIST_LIKE == ("comparison", "explanation", "howto", "list", "plan")
    assert summary["fork_rate"] == 0.25 and summary["fork_rate_list_like"] == 0.5
    assert summary["fork_rate_short"] == 0.0
    assert summary["speedup_vs_sequential_list_like"] == pytest.approx(2**0.5)
    assert summary["speedup_vs_sequential"] == pytest.approx(1.0)  # (2 x 1 x 1 x 0.5) ** (1/4)
    assert summary["baseline_cut_rate"] == 0.25
    # list 4 threads, 400 tokens (4x the base answer) at 2x generate's time; plan 100 tokens, as fast
    assert summary["length_vs_base_list_like"] == pytest.approx(2.0)  # (4 x 1) ** (1/2)
    assert summary["rate_vs_hf_generate_list_like"] == pytest.approx((8 * 1) ** 0.5)
    assert summary["rate_vs_hf_generate_list_like"] / summary["length_vs_base_list_like"] == pytest.approx(
        summary["speedup_vs_hf_generate_list_like"]
    )
    assert summary["loglik_sequential"] == pytest.approx(-0.8) and summary["loglik_relative_change"] < -0.2
    assert summary["loglik_sequential_finished"] == -1.0 and summary["loglik_relative_change_finished"] == 0.0


def test_eval_command(capsys, tmp_path, model_dir):  # noqa: F811
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        '{"id": "a", "prompt": "Hello", "category": "factual", "split": "test"}\n'
        '{"id": "c", "prompt": "Hi", "category": "factual", "split": "train"}\n'
        '{"id": "b", "prompt": "Tips?", "category": "list", "split": "train"}\n'
    )
    code, out, err = run(
        capsys,
        "eval",
        "--prompts",
        str(prompts),
        "--model",
        model_dir,
        "--no-adapter",
        "--split",
        "test",
        "--max-new-tokens",
        "4",
        "--json",
        "-q",
    )
    assert code == 0, err
    report = json.loads(out)
    assert [r["id"] for r in report["results"]] == ["a"] and report["summary"]["prompts"] == 1
    code, out, _ = run(
        capsys,
        "eval",
        "--prompts",
        str(prompts),
        "--model",
        model_dir,
        "--no-adapter",
        "--limit",
        "1",
        "--max-new-tokens",
        "4",
        "-q",
    )
    assert code == 0 and "valid_rate" in out
    code, out, _ = run(
        capsys,
        "eval",
        "--prompts",
        str(prompts),
        "--model",
        model_dir,
        "--no-adapter",
        "--limit",
        "2",
        "--max-new-tokens",
        "4",
        "--json",
        "-q",
    )
    assert [r["id"] for r in json.loads(out)["results"]] == ["a", "b"]  # one of each category first
    assert run(capsys, "eval", "--prompts", str(tmp_path / "none.jsonl"))[0] == 2
    code, _, err = run(capsys, "eval", "--prompts", str(prompts), "--judge-url", "http://127.0.0.1:9")
    assert code == 2 and "go together" in err
    code, _, err = run(capsys, "eval", "--prompts", str(prompts), "--split", "validation")
    assert code == 2 and "no prompts" in err
    code, _, err = run(capsys, "eval", "--prompts", str(prompts), "--sampled-reference", "0")
    assert code == 2 and "must be > 0" in err
    code, out, err = run(
        capsys,
        "eval",
        "--prompts",
        str(prompts),
        "--model",
        model_dir,
        "--no-adapter",
        "--split",
        "test",
        "--max-new-tokens",
        "4",
        "--sampled-reference",
        "0.7",
        "--json",
        "-q",
    )
    assert code == 0, err
    report = json.loads(out)
    assert report["summary"]["sampled_reference"] == 0.7 and "loglik_sampled" in report["results"][0]


def test_shards_of_an_evaluation_merge_into_one_report(capsys, tmp_path, model_dir):  # noqa: F811
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        "".join(
            json.dumps({"id": f"p{i}", "prompt": f"Tip {i}?", "category": c}) + "\n"
            for i, c in enumerate(["list", "factual", "list", "code", "plan"])
        )
    )
    common = (
        "eval",
        "--prompts",
        str(prompts),
        "--model",
        model_dir,
        "--no-adapter",
        "--max-new-tokens",
        "3",
        "--json",
        "-q",
    )
    whole = json.loads(run(capsys, *common)[1])
    reports = []
    for k in (1, 2):
        code, out, err = run(capsys, *common, "--shard", f"{k}/2")
        assert code == 0, err
        reports.append(tmp_path / f"shard{k}.json")
        reports[-1].write_text(out)
    ids = [[r["id"] for r in json.loads(p.read_text())["results"]] for p in reports]
    order = [r["id"] for r in whole["results"]]  # every other prompt of the same selection
    assert ids == [order[0::2], order[1::2]]
    code, out, err = run(capsys, "eval", "--merge", *map(str, reports), "--json")
    assert code == 0, err
    merged = json.loads(out)
    assert sorted(r["id"] for r in merged["results"]) == sorted(order)
    for key in ("prompts", "valid_rate", "fork_rate", "fork_rate_by_category", "jump_forward", "tag_guard"):
        assert merged["summary"][key] == whole["summary"][key], key
    # errors: a shard out of range, a file that is not a report, nothing to evaluate
    code, _, err = run(capsys, *common, "--shard", "3/2")
    assert code == 2 and "not K/N" in err
    (tmp_path / "bad.json").write_text("[1, 2]")
    code, _, err = run(capsys, "eval", "--merge", str(tmp_path / "bad.json"))
    assert code == 2 and "not a pastac eval --json report" in err
    code, _, err = run(capsys, "eval")
    assert code == 2 and "--prompts" in err


def test_eval_command_with_the_sequential_answer(capsys, tmp_path, model_dir):  # noqa: F811
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"id": "a", "prompt": "Tips?", "category": "list"}\n')
    results = tmp_path / "rows.jsonl"
    common = ("eval", "--prompts", str(prompts), "--model", model_dir, "--no-adapter", "--max-new-tokens", "4")
    code, out, err = run(capsys, *common, "--sequential-answer", "--results", str(results), "--json", "-q")
    assert code == 0, err
    report = json.loads(out)
    assert report["summary"]["sequential_answer"] is True and "q_async_gap_list_like" in report["summary"]
    assert isinstance(report["results"][0]["adapted_sequential_cut"], bool)
    # rows made with the sequential answer are not continued without it
    code, _, err = run(capsys, *common, "--results", str(results), "-q")
    assert code == 2 and "other settings" in err and "sequential_answer" in err


def test_merged_reports_show_the_quality_gaps(capsys, tmp_path):
    sampled = {"loglik_sampled": -1.1, "sampled_cut": False}
    own = {"loglik_adapted_sequential": -1.2, "adapted_sequential_cut": False, "adapted_sequential_tokens": 9}
    settings = {"sampled_reference": 0.3, "sequential_answer": True}
    paths = []
    for k, row in enumerate([_row(**sampled, **own), _row(**sampled) | {"baseline_cut": True}]):
        paths.append(tmp_path / f"shard{k}.json")
        paths[-1].write_text(json.dumps({"results": [row], "summary": settings}))
    code, out, err = run(capsys, "eval", "--merge", *map(str, paths))
    assert code == 0, err
    assert "20.0 points (1 row)" in out and "10.0 points (1 row)" in out  # the table: each gap, its rows
    code, out, err = run(capsys, "eval", "--merge", *map(str, paths), "--json")
    summary = json.loads(out)["summary"]
    assert summary["q_ref_gap_list_like"] == pytest.approx(20.0) and summary["q_async_rows_list_like"] == 1
    # reports made with and without the sequential answer are not joined
    paths[1].write_text(json.dumps({"results": [_row()], "summary": settings | {"sequential_answer": False}}))
    code, _, err = run(capsys, "eval", "--merge", *map(str, paths))
    assert code == 2 and "sequential_answer" in err


GOOD_RESULT = {
    "id": "p0",
    "category": "list",
    "valid": True,
    "threads": 3,
    "baseline_cut": False,
    "speedup_vs_sequential": 1.5,
    "speedup_vs_hf_generate": None,
    "theoretical_speedup": 2.0,
    "loglik_pasta": -1.0,
    "loglik_sequential": -1.2,
    "redundancy_threads": 0.0,
    "redundancy_sequential": None,
}


@pytest.mark.parametrize(
    ("report", "message"),
    [
        ({"results": [1, 2]}, "result 1 is not a pastac eval result: not an object but int"),
        ({"results": [GOOD_RESULT, {"id": "p1"}]}, 'result 2 is not a pastac eval result: no "valid" field'),
        ({"results": [GOOD_RESULT | {"threads": "3"}]}, "\"threads\" is '3', not a number"),
        ({"results": [GOOD_RESULT | {"valid": 1}]}, '"valid" is 1, not true or false'),
        ({"results": [GOOD_RESULT | {"written": "x", "baseline_tokens": 3}]}, "\"written\" is 'x'"),
        ({"results": [GOOD_RESULT | {"loglik_sampled": -2.0}]}, 'no "sampled_cut" field'),
        ({"results": [GOOD_RESULT], "summary": [1]}, '"summary" is not an object'),
        ({"results": {"a": 1}}, 'no "results" list'),
    ],
)
def test_merge_of_a_malformed_report_is_a_usage_error(capsys, tmp_path, report, message):
    """Issue 23, item 6: valid JSON of the wrong shape made --merge print a traceback."""
    path = tmp_path / "report.json"
    path.write_text(json.dumps(report))
    code, out, err = run(capsys, "eval", "--merge", str(path))
    assert (code, out) == (2, "") and message in err and "Traceback" not in err
    assert err.startswith(f"pastac: error: {path}: ")


def test_merge_of_well_formed_reports_summarizes_them(capsys, tmp_path):
    paths = []
    for k, row in enumerate([GOOD_RESULT, GOOD_RESULT | {"id": "p1", "threads": 1, "redundancy_threads": None}]):
        paths.append(tmp_path / f"shard{k}.json")
        paths[-1].write_text(json.dumps({"results": [row], "summary": {"tag_guard": True}}))
    code, out, err = run(capsys, "eval", "--merge", *map(str, paths), "--json")
    assert code == 0, err
    merged = json.loads(out)
    assert merged["summary"]["prompts"] == 2 and merged["summary"]["fork_rate"] == 0.5
