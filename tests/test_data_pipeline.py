"""``pastac data``: batched responses, resuming, import, annotate + filter, splits, the card, usage errors, build.

Models are tiny random ones with the tiny tokenizer; the CLI is driven through a parser built with the
command's own ``add_parser`` (the ``data`` command may not be registered in ``pastac.cli`` yet).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch

from pastac.cli.common import UsageError
from pastac.data import assign_split
from pastac.data.annotate import annotate_file
from pastac.data.card import card_file
from pastac.data.command import add_parser
from pastac.data.filtering import filter_file
from pastac.data.importing import import_pairs
from pastac.data.responses import HFResponder, round_robin, write_responses
from pastac.data.step import RESPONSE_RECORDS, PipelineError
from pastac.ir.lengths import tokenizer_length
from pastac.jsonl import read_records, resume
from pastac.models import random_model, tiny_tokenizer

PROMPTS = [
    "Hi",
    "Write a short poem about the sea, the wind and the morning light.",
    "What is the capital of France?",
    "Give me three tips for better sleep and more energy during the day, please.",
    "Thanks!",
]

LIST_RESPONSE = (
    "Here are three tips for better sleep:\n"
    "1. Keep a regular schedule, going to bed and waking up at the same time every day of the week.\n"
    "2. Avoid screens for an hour before bed, since their light keeps your brain alert and awake.\n"
    "3. Keep the bedroom cool, dark and quiet so that your body can rest deeply through the night.\n"
    "\nTogether these make a big difference."
)


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run ``pastac data ...`` as ``pastac.cli.main`` would: usage errors print and exit 2."""
    parser = argparse.ArgumentParser(prog="pastac")
    add_parser(parser.add_subparsers(dest="command", required=True))
    try:
        args = parser.parse_args(list(argv))
        code = args.run(args, sys.stdout)
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    except UsageError as error:
        print(f"pastac: error: {error}", file=sys.stderr)
        code = 2
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def tok() -> Any:
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def model(tok: Any) -> Any:
    return random_model("tiny-llama", vocab_size=len(tok), seed=5, eos_token_id=tok.eos_token_id)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory, tok: Any) -> str:
    folder = tmp_path_factory.mktemp("tiny-llama")
    random_model("tiny-llama", vocab_size=len(tok), seed=3, eos_token_id=tok.eos_token_id).save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


def write_jsonl(path: Path, records: Sequence[object]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def prompt_records(n: int) -> list[dict[str, Any]]:
    categories = ("list", "factual", "code")
    return [
        {
            "id": f"p-{i:02d}",
            "prompt": f"{PROMPTS[i % len(PROMPTS)]} (question {i})",
            "category": categories[i % 3],
            "forkable": i % 3 == 0,
            "split": "train",
        }
        for i in range(n)
    ]


class Counting:
    """A responder that counts the prompts it is asked, around a real one."""

    def __init__(self, inner: HFResponder) -> None:
        self.inner = inner
        self.asked: list[str] = []
        self.length = inner.length

    def __call__(self, prompts: Sequence[str]) -> list[tuple[str, bool]]:
        self.asked += prompts
        return self.inner(prompts)


# ------------------------------------------------------------------------------------------------- responses


def test_batched_greedy_generation_equals_one_prompt_at_a_time(model, tok):
    responder = HFResponder(model, tok, max_new_tokens=10)
    lengths = {responder.length(p) for p in PROMPTS}
    assert len(lengths) == len(PROMPTS)  # every prompt is padded to a different extent
    batched = responder(PROMPTS)
    alone = [responder([p])[0] for p in PROMPTS]
    assert batched == alone
    assert all(text and finished is False for text, finished in batched)  # random weights: no EOS in 10 tokens


def test_repetition_penalty_is_hugging_faces(model, tok):
    responder = HFResponder(model, tok, max_new_tokens=12, repetition_penalty=1.5, eos_token_ids=[tok.eos_token_id])
    ids = responder.encode(PROMPTS[0])
    direct = model.generate(
        input_ids=torch.tensor([ids]),
        max_new_tokens=12,
        do_sample=False,
        repetition_penalty=1.5,
        pad_token_id=tok.eos_token_id,
        eos_token_id=tok.eos_token_id,
    )[0, len(ids) :].tolist()
    [(text, _)] = responder([PROMPTS[0]])
    assert text == tok.decode(direct, skip_special_tokens=True).strip()
    [(plain, _)] = HFResponder(model, tok, max_new_tokens=12, eos_token_ids=[tok.eos_token_id])([PROMPTS[0]])
    assert plain != text  # random weights repeat themselves; the penalty changes that
    with pytest.raises(ValueError, match="repetition_penalty"):
        HFResponder(model, tok, repetition_penalty=0.5)


def test_generation_stops_at_the_end_of_sequence_token(model, tok):
    tokens = HFResponder(model, tok, max_new_tokens=6, eos_token_ids=[tok.eos_token_id])
    ids = model.generate(
        input_ids=torch.tensor([tokens.encode(PROMPTS[1])]),
        max_new_tokens=6,
        do_sample=False,
        pad_token_id=tok.eos_token_id,
    )[0].tolist()
    generated = ids[len(tokens.encode(PROMPTS[1])) :]
    stop = generated[3]  # pretend the fourth token is the end of sequence
    first = generated.index(stop)
    responder = HFResponder(model, tok, max_new_tokens=6, eos_token_ids=[stop])
    [(text, finished)] = responder([PROMPTS[1]])
    assert finished is True
    assert text == tok.decode(generated[:first], skip_special_tokens=True).strip()


def test_responses_resume_without_regenerating(tmp_path, model, tok):
    out = tmp_path / "responses.jsonl"
    counting = Counting(HFResponder(model, tok, max_new_tokens=4))
    prompts = prompt_records(9)
    first = write_responses(prompts, out, counting, model_name="tiny", batch_size=2, limit=3, progress=False)
    assert (first.written, first.already) == (3, 0)
    before = out.read_text()
    assert len(counting.asked) == 3
    # The first three are taken in turn from each category.
    assert {r["category"] for r in read_records(out)} == {"list", "factual", "code"}
    second = write_responses(prompts, out, counting, model_name="tiny", batch_size=2, limit=6, progress=False)
    assert (second.written, second.already) == (3, 3)
    assert len(counting.asked) == 6 and len(set(counting.asked)) == 6  # nothing asked twice
    assert out.read_text().startswith(before)
    records = read_records(out)
    assert [r["id"] for r in records[:3]] == [r["id"] for r in read_records_text(before)]
    assert {r["id"] for r in records} == {r["id"] for r in round_robin(prompts)[:6]}
    assert set(records[0]) == {"id", "prompt", "category", "forkable", "split", "response", "model", "finished"}
    # Another model may not be mixed into the same file.
    with pytest.raises(PipelineError, match="made with model 'tiny'"):
        write_responses(prompts, out, counting, model_name="other", limit=7, progress=False)


def test_a_batch_holds_one_category_where_it_can(tmp_path):
    batches: list[list[str]] = []

    def responder(prompts: Sequence[str]) -> list[tuple[str, bool]]:
        batches.append(list(prompts))
        return [("answer", True) for _ in prompts]

    prompts = prompt_records(12)  # three categories, four prompts each, interleaved
    category = {r["prompt"]: r["category"] for r in prompts}
    write_responses(prompts, tmp_path / "r.jsonl", responder, model_name="m", batch_size=4, progress=False)
    assert sorted(len(b) for b in batches) == [4, 4, 4]
    assert all(len({category[p] for p in batch}) == 1 for batch in batches)


def read_records_text(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_resume_drops_a_line_cut_short_by_a_crash(tmp_path):
    out = tmp_path / "r.jsonl"
    a = '{"id": "a", "prompt": "p", "response": "x", "finished": true}\n'
    out.write_text(a + '{"id": "b", "resp')
    assert list(resume(out, RESPONSE_RECORDS)) == ["a"]
    assert out.read_text() == a
    out.write_text(a + a.replace('"a"', '"b"').rstrip("\n"))  # whole, only the line feed is missing
    assert list(resume(out, RESPONSE_RECORDS)) == ["a", "b"] and out.read_text().endswith("}\n")


NOTES = b"Notes for Monday:\n- call Ana\n- fix the bike!"  # 44 bytes, the last line unterminated


@pytest.mark.parametrize("step", ["prompts", "responses", "import", "annotate"])
def test_a_step_never_truncates_a_file_that_is_not_its_own(capsys, tmp_path, model_dir, step):
    prompts = write_jsonl(tmp_path / "prompts.jsonl", prompt_records(2))
    responses = write_jsonl(
        tmp_path / "responses.jsonl",
        [{"id": "a", "prompt": "p", "response": LIST_RESPONSE, "model": "m", "finished": True}],
    )
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [{"instruction": "Say hi.", "output": "Hi."}])
    argv = {
        "prompts": [],
        "responses": ["--prompts", str(prompts), "--model", model_dir, "--max-new-tokens", "2"],
        "import": [str(pairs)],
        "annotate": ["--responses", str(responses), "--tokenizer-model", model_dir],
    }[step]
    notes = tmp_path / "notes.txt"
    notes.write_bytes(NOTES)
    code, stdout, err = cli(capsys, "data", step, *argv, "--out", str(notes), "-q")
    assert notes.read_bytes() == NOTES
    assert (code, stdout) == (2, ""), err
    assert f"{notes}:1: invalid JSON" in err and "name another file (it is left as it was)" in err
    notes.write_bytes(NOTES.replace(b"\n", b" "))  # one unterminated line: no record cut short either
    code, _, err = cli(capsys, "data", step, *argv, "--out", str(notes), "-q")
    assert notes.read_bytes() == NOTES.replace(b"\n", b" ")
    assert code == 2 and f"{notes}:1: not a JSON record" in err


def test_a_step_goes_on_only_with_records_of_its_kind(capsys, tmp_path, model_dir):
    responses = write_jsonl(
        tmp_path / "responses.jsonl",
        [{"id": "a", "prompt": "p", "response": LIST_RESPONSE, "model": "m", "finished": True}],
    )
    other = tmp_path / "other-responses.jsonl"
    other.write_bytes(responses.read_bytes())
    before = other.read_bytes()
    code, _, err = cli(
        capsys, "data", "annotate", "--responses", str(responses), "--out", str(other), "--tokenizer-model", model_dir
    )
    assert code == 2 and f"{other}:1: the record has no field 'text', 'annotator'" in err
    assert "is not a file of annotated records" in err and other.read_bytes() == before
    prompts = write_jsonl(tmp_path / "prompts.jsonl", prompt_records(2))
    before = prompts.read_bytes()
    code, _, err = cli(capsys, "data", "responses", "--prompts", str(prompts), "--out", str(prompts), "-q")
    assert code == 2 and f"--out '{prompts}' is --prompts '{prompts}', which this command reads" in err
    assert prompts.read_bytes() == before


def test_responses_command_resumes(capsys, tmp_path, model_dir):
    prompts = write_jsonl(tmp_path / "prompts.jsonl", prompt_records(4))
    out = tmp_path / "responses.jsonl"
    base = [
        "data",
        "responses",
        "--prompts",
        str(prompts),
        "--out",
        str(out),
        "--model",
        model_dir,
        "--max-new-tokens",
        "3",
        "--batch-size",
        "2",
        "-q",
    ]
    code, stdout, err = cli(capsys, *base, "--limit", "2")
    assert code == 0, err
    assert "2 written" in stdout
    before = out.read_text()
    code, stdout, err = cli(capsys, *base, "--limit", "3")
    assert code == 0, err
    assert "1 written, 2 already done" in stdout and "hit the token limit" in stdout
    assert out.read_text().startswith(before) and len(read_records(out)) == 3
    assert read_records(out)[0]["model"] == Path(model_dir).name


# ---------------------------------------------------------------------------------------------------- import


def test_import_alpaca_and_sharegpt_records(capsys, tmp_path):
    source = write_jsonl(
        tmp_path / "pairs.jsonl",
        [
            {"instruction": "Summarise the text.", "input": "Cats sleep a lot.", "output": "Cats sleep much."},
            {"instruction": "Name a colour.", "input": "", "output": "Blue."},
            {
                "conversations": [
                    {"from": "system", "value": "You are helpful."},
                    {"from": "human", "value": "What is 2 + 2?"},
                    {"from": "gpt", "value": "4."},
                ]
            },
            {"conversations": [{"from": "human", "value": "Only a question."}]},
            {"something": "else"},
        ],
    )
    with source.open("a") as f:
        f.write("not json\n")
    out = tmp_path / "responses.jsonl"
    code, stdout, err = cli(capsys, "data", "import", str(source), "--out", str(out))
    assert code == 0, err
    assert "3 written" in stdout
    assert "2 dropped (not a prompt/response pair)" in stdout and "1 dropped (invalid JSON)" in stdout
    records = read_records(out)
    assert [r["id"] for r in records] == ["import-00001", "import-00002", "import-00003"]
    assert records[0]["prompt"] == "Summarise the text.\n\nCats sleep a lot."
    assert records[1]["prompt"] == "Name a colour." and records[1]["response"] == "Blue."
    assert records[2]["prompt"] == "What is 2 + 2?" and records[2]["response"] == "4."
    assert records[2]["system"] == "You are helpful."
    for r in records:
        assert r["category"] == "imported" and r["forkable"] is None and r["finished"] is True
        assert r["split"] == assign_split(r["prompt"])
    # Again: nothing new.
    code, stdout, _ = cli(capsys, "data", "import", str(source), "--out", str(out))
    assert code == 0 and "0 written, 3 already done" in stdout
    assert len(read_records(out)) == 3


def test_imported_text_with_line_separators_reads_back(tmp_path):
    source = tmp_path / "pairs.jsonl"
    pair = {"instruction": "Say\u2028hi.", "output": "Hi\x85there\u2029."}
    source.write_text(json.dumps(pair, ensure_ascii=False) + "\n", encoding="utf-8")  # raw separators
    out = tmp_path / "r.jsonl"
    assert import_pairs(source, out).written == 1
    assert len(out.read_text(encoding="utf-8").splitlines()) == 1  # escaped: one line for any reader
    [record] = read_records(out)
    assert (record["prompt"], record["response"]) == ("Say\u2028hi.", "Hi\x85there\u2029.")


def test_import_with_named_fields(tmp_path):
    source = write_jsonl(
        tmp_path / "pairs.jsonl",
        [{"q": "Why?", "ctx": "Because.", "a": "So."}, {"conversations": [{"from": "human", "value": "x"}]}],
    )
    result = import_pairs(source, tmp_path / "out.jsonl", prompt_field="q", input_field="ctx", response_field="a")
    assert result.written == 1 and result.dropped == {"not a prompt/response pair": 1}
    assert read_records(tmp_path / "out.jsonl")[0]["prompt"] == "Why?\n\nBecause."


# ------------------------------------------------------------------------------------------ annotate + filter


@pytest.fixture
def annotated(tmp_path, tok) -> Path:
    responses = write_jsonl(
        tmp_path / "responses.jsonl",
        [
            {
                "id": "list",
                "prompt": "Tips for sleep?",
                "category": "list",
                "forkable": True,
                "split": "train",
                "response": LIST_RESPONSE,
                "model": "m",
                "finished": True,
            },
            {
                "id": "fact",
                "prompt": "Capital of France?",
                "category": "factual",
                "forkable": False,
                "split": "validation",
                "response": "The capital of France is Paris.",
                "model": "m",
                "finished": True,
            },
            {
                "id": "tag",
                "prompt": "How do I close a block?",
                "category": "howto",
                "forkable": True,
                "split": "test",
                "response": "Close the block with </async> when you are done.",
                "model": "m",
                "finished": True,
            },
            {
                "id": "cut",
                "prompt": "Write a long essay.",
                "category": "explanation",
                "forkable": True,
                "split": "train",
                "response": "It all began",
                "model": "m",
                "finished": False,
            },
            {
                "id": "empty",
                "prompt": "Say nothing.",
                "category": "sentence",
                "forkable": False,
                "split": "train",
                "response": "  ",
                "model": "m",
                "finished": True,
            },
            {
                "id": "fact2",
                "prompt": "Capital of Peru?",
                "category": "factual",
                "forkable": False,
                "split": "test",
                "response": "Lima.",
                "model": "m",
                "finished": True,
            },
        ],
    )
    out = tmp_path / "annotated.jsonl"
    result = annotate_file(responses, out, count_tokens=tokenizer_length(tok), progress=False)
    assert result.written == 6
    return out


def test_annotate_then_filter(annotated, tmp_path, tok):
    records = {r["id"]: r for r in read_records(annotated)}
    assert records["list"]["forks"] == 3 and "<promise" in records["list"]["text"]
    assert records["list"]["annotator"] == "structural"
    assert records["fact"]["forks"] == 0 and records["fact"]["text"] == "The capital of France is Paris."
    assert records["tag"]["text"] is None and "</async>" in records["tag"]["reason"]
    assert records["cut"]["text"] is None and "token limit" in records["cut"]["reason"]
    # Resuming annotates nothing again.
    again = annotate_file(tmp_path / "responses.jsonl", annotated, count_tokens=tokenizer_length(tok), progress=False)
    assert (again.written, again.already) == (0, 6)

    data = tmp_path / "data.jsonl"
    result = filter_file(annotated, data, split_dir=tmp_path / "splits")
    kept = read_records(data)
    assert [r["id"] for r in kept] == ["list", "fact", "fact2"]
    assert list(kept[0]) == ["id", "prompt", "text", "response", "category", "forkable", "split", "forks"]
    assert result.log["dropped"] == {"empty response": 1, "unfinished response": 1, "no annotation": 1}
    log = json.loads((tmp_path / "data.filter.json").read_text())
    assert log["records"] == 6 and log["kept"] == 3
    tag = next(d for d in log["dropped_records"] if d["id"] == "tag")
    assert tag["reason"] == "no annotation" and "reads as a tag" in tag["detail"]

    # The split files partition the kept records.
    parts = {split: read_records(tmp_path / "splits" / f"{split}.jsonl") for split in ("train", "validation", "test")}
    assert {split: [r["id"] for r in rs] for split, rs in parts.items()} == {
        "train": ["list"],
        "validation": ["fact"],
        "test": ["fact2"],
    }
    assert sorted(r["id"] for rs in parts.values() for r in rs) == sorted(r["id"] for r in kept)
    for split, rs in parts.items():
        assert all(r["split"] == split for r in rs)


def test_filter_rejects_an_annotation_that_does_not_render_to_the_response(tmp_path):
    source = write_jsonl(
        tmp_path / "a.jsonl",
        [
            {
                "id": "x",
                "prompt": "p",
                "response": "One two.",
                "finished": True,
                "forks": 1,
                "text": 'One <promise topic="t"/><async>three</async><sync/>.',
            },
            {"id": "y", "prompt": "p", "response": "One two.", "finished": True, "forks": 0, "text": "One <async>"},
        ],
    )
    result = filter_file(source, tmp_path / "d.jsonl")
    assert result.kept == [] and result.log["dropped"] == {"invalid annotation": 2}
    details = [d["detail"] for d in result.log["dropped_records"]]
    assert "differs from the response" in details[0] and details[1].startswith("E")


def test_filter_and_card_commands(capsys, annotated, tmp_path):
    data = tmp_path / "data.jsonl"
    code, stdout, err = cli(
        capsys, "data", "filter", "--annotated", str(annotated), "--out", str(data), "--split-dir", str(tmp_path)
    )
    assert code == 0, err
    assert "kept 3 of 6 records" in stdout
    assert "unfinished response" in stdout and "no annotation" in stdout and "empty response" in stdout
    card_path = tmp_path / "CARD.md"
    code, stdout, err = cli(capsys, "data", "card", "--data", str(data), "--out", str(card_path))
    assert code == 0, err
    card = card_path.read_text()
    assert "| **all** |  | 1 | 1 | 1 | 3 |" in card  # sizes per split
    assert "| list | yes | 1 | 0 | 0 | 1 |" in card and "| factual | no | 0 | 1 | 1 | 2 |" in card
    assert "kept 3 of 6 annotated records (50.0%)" in card
    assert "| unfinished response | 1 |" in card
    assert "theoretical_speedup" in card and "promises_per_response" in card and "async_token_share" in card
    assert "| list | 1 | 1 | 100.0% |" in card  # fork rate
    code, stdout, _ = cli(capsys, "data", "card", "--data", str(data))  # to standard output
    assert code == 0 and stdout == card


def test_filter_never_writes_over_its_input(capsys, annotated, tmp_path):
    splits = tmp_path / "splits"
    splits.mkdir()
    train = splits / "train.jsonl"
    train.write_bytes(annotated.read_bytes())  # the annotated file, kept where its split will go
    before = train.read_bytes()
    code, stdout, err = cli(
        capsys,
        "data",
        "filter",
        "--annotated",
        str(train),
        "--out",
        str(tmp_path / "d.jsonl"),
        "--split-dir",
        str(splits),
    )
    assert train.read_bytes() == before and not (tmp_path / "d.jsonl").exists()  # refused before writing anything
    assert (code, stdout) == (2, "")
    assert f"--split-dir's train.jsonl '{train}' is --annotated '{train}', which this command reads" in err
    code, _, err = cli(capsys, "data", "filter", "--annotated", str(annotated), "--out", str(annotated))
    assert code == 2 and "which this command reads" in err
    code, _, err = cli(
        capsys,
        "data",
        "filter",
        "--annotated",
        str(annotated),
        "--out",
        str(splits / "test.jsonl"),
        "--split-dir",
        str(splits),
    )
    assert code == 2 and "are one file" in err


def test_filter_and_card_replace_their_own_outputs_only(capsys, annotated, tmp_path):
    data, notes = tmp_path / "data.jsonl", tmp_path / "notes.jsonl"
    notes.write_text('{"my": "notes"}\n')
    filter_ = ["data", "filter", "--annotated", str(annotated), "--split-dir", str(tmp_path)]
    assert cli(capsys, *filter_, "--out", str(data))[0] == 0
    assert cli(capsys, *filter_, "--out", str(data))[0] == 0  # its own outputs: replaced
    code, _, err = cli(capsys, *filter_, "--out", str(notes))
    assert code == 2 and f"--out '{notes}' exists and is not a dataset of pastac data filter" in err
    assert "--force" in err and notes.read_text() == '{"my": "notes"}\n'
    assert cli(capsys, *filter_, "--out", str(notes), "--force")[0] == 0
    assert len(read_records(notes)) == 3
    readme = tmp_path / "README.md"
    readme.write_text("# My dataset\n\nNotes I wrote by hand.\n")
    code, _, err = cli(capsys, "data", "card", "--data", str(data), "--out", str(readme))
    assert code == 2 and f"--out '{readme}' exists and is not a data card" in err and "--force" in err
    assert readme.read_text().startswith("# My dataset")
    assert cli(capsys, "data", "card", "--data", str(data), "--out", str(readme), "--force")[0] == 0
    assert readme.read_text().startswith("# Data card: ")
    assert cli(capsys, "data", "card", "--data", str(data), "--out", str(readme))[0] == 0  # now a card: replaced
    code, _, err = cli(capsys, "data", "card", "--data", str(data), "--out", str(data))
    assert code == 2 and "which this command reads" in err and len(read_records(data)) == 3


def test_structural_annotator_counts_tokens_with_the_callable(tmp_path):
    responses = write_jsonl(tmp_path / "r.jsonl", [{"id": "a", "prompt": "p", "response": LIST_RESPONSE}])
    calls: list[str] = []

    def count(text: str) -> int:
        calls.append(text)
        return 100

    annotate_file(responses, tmp_path / "a.jsonl", count_tokens=count, progress=False)
    [record] = read_records(tmp_path / "a.jsonl")
    assert calls and 'tokens="100"' in record["text"]


# ---------------------------------------------------------------------------------------------- usage errors


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["annotate", "--responses", "{tmp}/missing.jsonl", "--out", "{tmp}/a.jsonl"], "no such file"),
        (["responses", "--prompts", "{tmp}/missing.jsonl", "--out", "{tmp}/r.jsonl"], "no such file"),
        (["filter", "--annotated", "{tmp}/missing.jsonl", "--out", "{tmp}/d.jsonl"], "no such file"),
        (["card", "--data", "{tmp}/missing.jsonl"], "no such file"),
        (["import", "{tmp}/missing.jsonl", "--out", "{tmp}/r.jsonl"], "no such file"),
        (
            ["annotate", "--responses", "{tmp}/r.jsonl", "--out", "{tmp}/a.jsonl", "--annotator", "magic"],
            "invalid choice",
        ),
        (
            ["annotate", "--responses", "{tmp}/r.jsonl", "--out", "{tmp}/a.jsonl", "--annotator", "llm"],
            "--annotator llm needs --url",
        ),
        (
            [
                "annotate",
                "--responses",
                "{tmp}/r.jsonl",
                "--out",
                "{tmp}/a.jsonl",
                "--annotator",
                "llm",
                "--url",
                "http://localhost:1/v1",
            ],
            "--url needs --llm-model",
        ),
        (
            ["annotate", "--responses", "{tmp}/r.jsonl", "--out", "{tmp}/a.jsonl", "--url", "http://x"],
            "applies to --annotator llm",
        ),
        (["build", "--out", "{tmp}/d", "--annotator", "llm"], "--annotator llm needs --url"),
        (["responses", "--prompts", "{tmp}/bad.jsonl", "--out", "{tmp}/r.jsonl"], "invalid JSON"),
        (["filter", "--annotated", "{tmp}/r.jsonl", "--out", "{tmp}/r.jsonl"], "which this command reads"),
        (["import", "{tmp}/r.jsonl", "--out", "{tmp}/./r.jsonl"], "which this command reads"),
        (["annotate", "--responses", "{tmp}/r.jsonl", "--out", "{tmp}/r.jsonl"], "which this command reads"),
        (["responses", "--prompts", "{tmp}/r.jsonl", "--out", "{tmp}/x.jsonl", "--batch-size", "0"], "must be"),
    ],
)
def test_usage_errors_exit_2(capsys, tmp_path, argv, message):
    write_jsonl(tmp_path / "r.jsonl", [{"id": "a", "prompt": "p", "response": "r"}])
    (tmp_path / "bad.jsonl").write_text('{"id": "a", "prompt": "p"}\n{oops\n')
    code, stdout, err = cli(capsys, "data", *[a.format(tmp=tmp_path) for a in argv])
    assert code == 2 and message in err and stdout == ""


def test_an_unreachable_annotation_server_stops_with_exit_2(capsys, tmp_path):
    write_jsonl(tmp_path / "r.jsonl", [{"id": "a", "prompt": "p", "response": LIST_RESPONSE, "finished": True}])
    code, _, err = cli(
        capsys,
        "data",
        "annotate",
        "--responses",
        str(tmp_path / "r.jsonl"),
        "--out",
        str(tmp_path / "a.jsonl"),
        "--annotator",
        "llm",
        "--url",
        "http://127.0.0.1:9/v1",
        "--llm-model",
        "m",
        "-q",
    )
    assert code == 2 and "annotating 'a' failed" in err and "run again to resume" in err


# ----------------------------------------------------------------------------------------------------- build


def test_build_runs_every_step_and_resumes(capsys, tmp_path, model_dir):
    folder = tmp_path / "dataset"
    argv = [
        "data",
        "build",
        "--out",
        str(folder),
        "--model",
        model_dir,
        "--limit",
        "4",
        "--max-new-tokens",
        "3",
        "--batch-size",
        "4",
        "-q",
    ]
    code, stdout, err = cli(capsys, *argv)
    assert code == 0, err
    for name in (
        "prompts.jsonl",
        "responses.jsonl",
        "annotated.jsonl",
        "data.jsonl",
        "data.filter.json",
        "train.jsonl",
        "validation.jsonl",
        "test.jsonl",
        "CARD.md",
        "build.json",
    ):
        assert (folder / name).is_file(), name
    assert len(read_records(folder / "prompts.jsonl")) == 2400
    assert len(read_records(folder / "responses.jsonl")) == 4
    # Three random tokens never end a response: every record is dropped as unfinished, and the card says so.
    log = json.loads((folder / "data.filter.json").read_text())
    assert log["records"] == 4 and log["dropped"] == {"unfinished response": 4}
    card = (folder / "CARD.md").read_text()
    assert "kept 0 of 4 annotated records" in card and "--limit 4" in card
    responses = (folder / "responses.jsonl").read_text()
    code, stdout, err = cli(capsys, *argv)
    assert code == 0, err
    assert "responses: 0 written, 4 already done" in stdout and "annotate: 0 written, 4 already done" in stdout
    assert (folder / "responses.jsonl").read_text() == responses


def test_build_writes_only_into_a_folder_of_its_own(capsys, tmp_path):
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    (checkout / "README.md").write_text("# project\n")
    argv = ["data", "build", "--out", str(checkout), "--model", str(tmp_path / "no-model"), "-q"]
    code, _, err = cli(capsys, *argv)  # refused before the model loads
    assert code == 2 and f"--out '{checkout}' holds files and is not a dataset folder of pastac data build" in err
    assert "--force" in err and [p.name for p in checkout.iterdir()] == ["README.md"]
    code, _, err = cli(capsys, *argv, "--force")  # accepted: the model is the next problem
    assert code == 2 and "no-model" in err and "holds files" not in err


def test_card_without_a_filter_log(tmp_path):
    data = write_jsonl(
        tmp_path / "d.jsonl",
        [
            {
                "id": "a",
                "prompt": "p",
                "text": 'A <promise topic="t" tokens="10"/><async>b c d</async><sync/> e',
                "response": "A b c d e",
                "category": "imported",
                "forkable": None,
                "split": "train",
                "forks": 1,
            },
        ],
    )
    card = card_file(data)
    assert "Responses: not recorded" in card and "Validity and filtering" not in card
    assert "| imported | - | 1 | 0 | 0 | 1 |" in card and "imported with `pastac data import`" in card
