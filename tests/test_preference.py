"""The preference stage on tiny random models: scoring and pairing, the pairs' layout and BoNBoN loss, the
rounds of ``pastac train --stage preference`` (sampling seeded and resumable, pairs, training, the adapter)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from test_cli import run

from pastac.models import load_model, random_model, tiny_tokenizer
from pastac.train.data import collate, encode_example, load_pairs
from pastac.train.loss import bonbon_margin, micro_batch_losses, pair_losses, sequence_logprobs
from pastac.train.options import TrainError, TrainOptions
from pastac.train.preference import (
    PREFERENCE_FILE,
    PreferenceOptions,
    layout_logprob,
    make_pairs,
    pair_of,
    prompt_records,
    run_stage,
    speedup,
)
from pastac.train.trainer import train

POSITIONS_OPTIONS = TrainOptions().positions
FAST = (
    'Tips: <promise topic="sleep" tokens="2"/><async>Sleep well.</async>'
    '<promise topic="water" tokens="2"/><async>Drink water.</async><sync/> Done.'
)
SLOW = "Tips: sleep well, and drink water. Done."
RECORDS = [
    {"id": "a", "prompt": "Give me tips.", "category": "list", "response": "Sleep and drink water."},
    {"id": "b", "prompt": "Cook pasta.", "category": "howto"},
    {"id": "c", "prompt": "Paris?", "category": "factual", "response": "Paris is the capital of France."},
]


@pytest.fixture(autouse=True)
def _one_thread_quietly():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "`is_gradient_checkpointing` is deprecated", FutureWarning)
        yield
    torch.set_num_threads(threads)


def _sample(usable: bool, speedup: float, quality: float | None, text: str = "x") -> dict:
    return {
        "usable": usable,
        "theoretical_speedup": speedup,
        "quality": quality,
        "annotated": text,
        "reference_logprob": -1.0 if usable else None,
        "k": 0,
        "tokens": 100,
    }


def test_the_bonbon_margin_is_the_best_of_n_log_ratio_gap():
    assert bonbon_margin(2) == 1.0
    assert bonbon_margin(4) == pytest.approx(3 * (1 + 1 / 2 + 1 / 3))
    assert TrainOptions().margin == pytest.approx(bonbon_margin(PreferenceOptions().samples))
    with pytest.raises(ValueError, match="at least 2"):
        bonbon_margin(1)


def test_the_pair_is_the_best_and_the_worst_usable_sample_by_speedup_plus_weighted_quality():
    samples = [
        _sample(True, 2.0, -0.6),  # fast, poor
        _sample(True, 1.0, -0.1),  # slow, good
        _sample(False, 3.0, 0.0),  # the best on both, but cut or invalid: never paired
        _sample(True, 1.5, -0.3),
    ]
    assert pair_of(samples, 0.0) == (0, 1)  # speed alone
    assert pair_of(samples, 4.0) == (1, 0)  # 1 - 0.4 = 0.6 beats 2 - 2.4 = -0.4
    assert pair_of(samples, 2.0) == (3, 0)  # 0.9 against 0.8 and 0.8: the first of the worst equals
    assert pair_of([samples[0], samples[2]], 1.0) is None  # one usable sample
    assert pair_of([_sample(True, 1.0, -0.2), _sample(True, 1.0, -0.2)], 1.0) is None  # nothing to prefer
    assert pair_of([_sample(True, 1.0, None), _sample(True, 2.0, -0.2)], 1.0) is None  # no quality: unscored
    lines = [{"id": "p", "prompt": "q", "category": "list", "reference": {"tokens": 80}, "samples": samples}]
    (pair,) = make_pairs(lines, 0.0)
    assert pair["chosen_speedup"] == 2.0 and pair["rejected_quality"] == -0.1
    assert pair["chosen_score"] == 2.0 and pair["rejected_score"] == 1.0


def test_the_reference_speedup_counts_the_base_answers_tokens_over_the_critical_path():
    # 300 tokens at a theoretical speedup of 3: a critical path of 100 steps; the base answer has 150 tokens
    long = _sample(True, 3.0, -0.2) | {"tokens": 300}
    short = _sample(True, 1.0, -0.2) | {"tokens": 60}  # one thread, 60 steps
    assert speedup(long, "theoretical", 150) == 3.0 and speedup(long, "reference", 150) == pytest.approx(1.5)
    assert speedup(short, "reference", 150) == pytest.approx(2.5)
    assert speedup(short, "reference", None) is None  # no reference length: not scored
    assert pair_of([long, short], 0.0) == (0, 1)  # more parallel
    assert pair_of([long, short], 0.0, "reference", 150) == (1, 0)  # done sooner than the base answer
    assert pair_of([long, short], 0.0, "reference", None) is None
    lines = [{"id": "p", "prompt": "q", "reference": {"tokens": 150}, "samples": [long, short]}]
    (pair,) = make_pairs(lines, 0.0, "reference")
    assert pair["chosen_speedup"] == pytest.approx(2.5) and (pair["chosen_tokens"], pair["rejected_tokens"]) == (
        60,
        300,
    )
    with pytest.raises(TrainError, match="speedup must be one of theoretical, reference"):
        PreferenceOptions(speedup="wall")


def test_prompts_come_in_a_seeded_order_and_a_limit_takes_its_first(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in RECORDS) + json.dumps({"prompt": "no id"}) + "\n")
    every = prompt_records(path, limit=None, seed=0)
    assert sorted(r["id"] for r in every) == ["a", "b", "c", "line-4"]
    assert prompt_records(path, limit=2, seed=0) == every[:2]
    assert {r["id"]: r["response"] for r in every}["b"] is None
    path.write_text(json.dumps(RECORDS[0]) + "\n" + json.dumps(RECORDS[0]) + "\n")
    with pytest.raises(TrainError, match="used twice"):
        prompt_records(path, limit=None, seed=0)
    path.write_text('{"text": "no prompt"}\n')
    with pytest.raises(TrainError, match="no field 'prompt'"):
        prompt_records(path, limit=None, seed=0)


def test_pairs_are_read_both_answers_usable_or_not_at_all(tmp_path):
    tok = tiny_tokenizer()
    good = {"prompt": "p", "chosen": FAST, "rejected": SLOW, "chosen_reference": -3.0, "rejected_reference": -4.5}
    lines = [good, good | {"rejected": "<async>orphan</async>"}, good | {"chosen_reference": None}, "not json"]
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    pairs = load_pairs(path, tok, POSITIONS_OPTIONS)
    assert (len(pairs), pairs.records, pairs.invalid) == (1, 4, 3)
    assert pairs.forks(0) and pairs.references([0]).tolist() == [[-3.0, -4.5]]
    chosen, rejected = pairs.examples(0)
    assert torch.equal(chosen.input_ids, encode_example(tok, "p", FAST, POSITIONS_OPTIONS).input_ids)
    assert pairs.targets == chosen.targets and pairs.tokens == len(chosen) + len(rejected)
    assert "line 2: E" in pairs.problems[0] and "not a pair" in pairs.problems[1]


def test_the_loss_terms_start_at_the_supervised_loss_and_one():
    tok = tiny_tokenizer()
    model = random_model("tiny-llama", vocab_size=len(tok), seed=2, eos_token_id=tok.eos_token_id)
    model.eval()
    chosen, rejected = (
        encode_example(tok, "p", FAST, POSITIONS_OPTIONS),
        encode_example(tok, "p", SLOW, POSITIONS_OPTIONS),
    )
    batch = collate([chosen, rejected], tok.pad_token_id or 0)
    with torch.no_grad():
        logits = model(
            input_ids=batch.input_ids, position_ids=batch.position_ids, attention_mask=batch.additive_mask()
        ).logits
        logp = sequence_logprobs(logits, batch.labels)
        references = logp.double().reshape(1, 2)  # the model is its own reference: h = 0
        supervised, contrastive = pair_losses(model, batch, torch.float32, references, chosen.targets, 1, 5.5)
        alone, _ = micro_batch_losses(model, collate([chosen], 0), torch.float32, chosen.targets, kl=False)
    assert supervised.item() == pytest.approx(alone.item(), rel=1e-5)
    assert contrastive.item() == pytest.approx(1.0, abs=1e-4)
    # the layout log-probability is that sum for one answer
    assert layout_logprob(model, tok, "p", FAST, TrainOptions(), tok.eos_token_id) == pytest.approx(
        float(logp[0]), rel=1e-5
    )


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-llama")
    tok = tiny_tokenizer()
    random_model("tiny-llama", vocab_size=len(tok), seed=3, eos_token_id=tok.eos_token_id).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def start_adapter(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Path:
    """A first-stage adapter of the tiny model: the preference stage trains it further."""
    folder = tmp_path_factory.mktemp("sft")
    data = folder / "data.jsonl"
    data.write_text(json.dumps({"prompt": "Give me tips.", "text": FAST}) + "\n")
    base = load_model(str(model_dir), progress=False)
    options = TrainOptions(max_steps=1, dropout=0.0, repetition_penalty=1.1, base_model=str(model_dir))
    train(base.model, base.tokenizer, data, folder / "adapter", options, progress=False)
    return folder / "adapter"


def test_training_on_pairs_moves_the_model_towards_the_chosen_answers(tmp_path, model_dir, start_adapter):
    reference = load_model(str(model_dir), adapter=start_adapter, progress=False)
    eos = reference.tokenizer.eos_token_id
    settings = TrainOptions()
    logp = {t: layout_logprob(reference.model, reference.tokenizer, "p", t, settings, eos) for t in (FAST, SLOW)}
    path = tmp_path / "pairs.jsonl"
    pair = {"prompt": "p", "chosen": FAST, "rejected": SLOW, "chosen_reference": logp[FAST]}
    path.write_text(json.dumps(pair | {"rejected_reference": logp[SLOW]}) + "\n")
    base = load_model(str(model_dir), progress=False)
    options = TrainOptions(
        stage="preference", init_adapter=str(start_adapter), lr=1e-3, epochs=6, sft_weight=0.2, margin=1.0
    )
    result = train(base.model, base.tokenizer, path, tmp_path / "out", options, progress=False)
    result.model.eval()
    with torch.no_grad():
        after = {t: layout_logprob(result.model, base.tokenizer, "p", t, settings, eos) for t in (FAST, SLOW)}
    h = (after[FAST] - logp[FAST]) - (after[SLOW] - logp[SLOW])
    assert 0.3 < h < 3.0  # towards the margin of 1, not without bound
    rows = (tmp_path / "out" / "loss.csv").read_text().splitlines()
    assert rows[0] == "step,loss,lr,tokens,seconds,sft,ipo" and len(rows) == 7
    assert float(rows[-1].split(",")[-1]) < float(rows[1].split(",")[-1])  # the contrastive term fell
    config = json.loads((tmp_path / "out" / "adapter_config.json").read_text())
    assert config["r"] == json.loads((start_adapter / "adapter_config.json").read_text())["r"]
    with pytest.raises(TrainError, match="KL term"):
        TrainOptions(stage="preference", kl_weight=0.5)


def _eos_likely(loaded):
    """The tiny model made to end its answers within a few tokens: usable samples, of different lengths."""
    eos = loaded.tokenizer.eos_token_id

    def hook(_module, _inputs, output):
        output[..., eos] += 4.0
        return output

    loaded.model.lm_head.register_forward_hook(hook)
    return loaded


def test_the_stage_samples_pairs_trains_and_resumes(tmp_path, model_dir, start_adapter, capsys):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    loads: list[str | None] = []

    def load(adapter):
        loads.append(adapter)
        return _eos_likely(load_model(str(model_dir), adapter=adapter, progress=False))

    options = PreferenceOptions(samples=4, temperature=1.0, max_new_tokens=12, quality_weight=1.0, concurrent=5)
    train_options = TrainOptions(lr=1e-3, dropout=0.0, base_model=str(model_dir))
    out = tmp_path / "stage"
    result = run_stage(load, prompts, out, str(start_adapter), options, train_options, progress=False)
    lines = [json.loads(x) for x in (out / "round-1" / "samples.jsonl").read_text().splitlines()]
    assert sorted(x["id"] for x in lines) == ["a", "b", "c"]
    assert {x["reference"]["source"] for x in lines} == {"response", "greedy"}  # b has no response
    for line in lines:
        assert [s["k"] for s in line["samples"]] == [0, 1, 2, 3]
        assert len({s["seed"] for s in line["samples"]}) == 4
        for s in line["samples"]:
            assert s["usable"] == (s["valid"] and s["ended"] and bool(s["text"]))
            assert (s["reference_logprob"] is not None) == s["usable"]
    pairs = [json.loads(x) for x in (out / "round-1" / "pairs.jsonl").read_text().splitlines()]
    assert pairs and all(p["chosen_score"] > p["rejected_score"] for p in pairs)
    assert result.rounds[0]["pairs"] == len(pairs) and result.rounds[0]["samples"] == 12
    # the stage's folder is an adapter with the start adapter's settings, the pairs' card beside its rounds
    settings = json.loads((out / "pastac.json").read_text())
    assert settings["repetition_penalty"] == 1.1 and (out / "adapter_model.safetensors").is_file()
    assert "## Scored" in (out / "round-1" / "CARD.md").read_text()
    state = json.loads((out / PREFERENCE_FILE).read_text())
    assert state["done"] and state["rounds"][0]["pairs"] == len(pairs)
    assert "preference" in (out / "README.md").read_text()
    # a rerun finds every round done: nothing is loaded, sampled or trained again
    loads.clear()
    again = run_stage(load, prompts, out, str(start_adapter), options, train_options, progress=False)
    assert loads == [] and again.rounds == result.rounds
    # the same samples drawn again elsewhere are the same (seeded), and a reused file is not sampled again
    other = tmp_path / "other"
    redo = run_stage(load, prompts, other, str(start_adapter), options, train_options, progress=False)
    assert (other / "round-1" / "samples.jsonl").read_text() == (out / "round-1" / "samples.jsonl").read_text()
    assert redo.rounds == result.rounds
    loads.clear()
    reuse = PreferenceOptions(
        samples=4,
        temperature=1.0,
        max_new_tokens=12,
        quality_weight=0.0,
        concurrent=5,
        reuse_samples=str(out / "round-1" / "samples.jsonl"),
    )
    with pytest.raises(TrainError, match="no pairs"):  # speed alone: no sample forks, every score is 1
        run_stage(load, prompts, tmp_path / "speed", str(start_adapter), reuse, train_options, progress=False)
    assert loads == []
    # another setting into the same folder is refused
    with pytest.raises(TrainError, match="other options"):
        run_stage(load, prompts, out, str(start_adapter), reuse, train_options, progress=False)


def test_an_interrupted_round_resumes_after_its_last_prompt(tmp_path, model_dir, start_adapter):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))

    def load(adapter):
        return _eos_likely(load_model(str(model_dir), adapter=adapter, progress=False))

    options = PreferenceOptions(samples=4, temperature=1.0, max_new_tokens=12, concurrent=4)
    train_options = TrainOptions(lr=1e-3, dropout=0.0, max_steps=1)
    whole = run_stage(load, prompts, tmp_path / "whole", str(start_adapter), options, train_options, progress=False)
    samples = (tmp_path / "whole" / "round-1" / "samples.jsonl").read_text()
    cut = tmp_path / "cut" / "round-1"
    cut.mkdir(parents=True)
    first = samples.splitlines()[0]
    (cut / "samples.jsonl").write_text(first + "\n" + samples.splitlines()[1][:40])  # killed while writing
    (tmp_path / "cut" / PREFERENCE_FILE).write_text("{}")
    with pytest.raises(TrainError, match="other"):  # a record of another run
        run_stage(load, prompts, tmp_path / "cut", str(start_adapter), options, train_options, progress=False)
    # the record the run wrote when it started (the same command's)
    (tmp_path / "cut" / PREFERENCE_FILE).write_text((tmp_path / "whole" / PREFERENCE_FILE).read_text())
    resumed = run_stage(load, prompts, tmp_path / "cut", str(start_adapter), options, train_options, progress=False)
    assert (cut / "samples.jsonl").read_text() == samples
    assert resumed.rounds[0]["pairs"] == whole.rounds[0]["pairs"]


def test_the_command_line_runs_the_stage_and_says_what_is_wrong(capsys, tmp_path, model_dir, start_adapter):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    common = [str(prompts), "--stage", "preference", "--model", str(model_dir), "--adapter", str(start_adapter)]
    code, out, err = run(capsys, "train", *common, "--out", str(tmp_path / "o"), "--samples", "1", "-q")
    assert code == 2 and "--samples: must be >= 2" in err
    code, out, err = run(capsys, "train", *common, "--out", str(tmp_path / "o"), "--kl-weight", "1", "-q")
    assert code == 2 and "KL term" in err
    code, out, err = run(
        capsys, "train", str(prompts), "--stage", "preference", "--model", str(model_dir), "--out", str(tmp_path / "o")
    )
    assert code == 2 and "name one with --adapter" in err
    argv = [*common, "--out", str(tmp_path / "o"), "--limit", "1", "--samples", "2", "--max-new-tokens", "6", "-q"]
    code, out, err = run(capsys, "train", *argv)
    # the random model does not end an answer in 6 tokens: nothing to pair, said, and the samples kept
    assert (code, out) == (2, "") and "no prompt has two usable samples" in err
    samples = tmp_path / "o" / "round-1" / "samples.jsonl"
    drawn = samples.read_text()
    assert len(drawn.splitlines()) == 1 and not any(s["ended"] for s in json.loads(drawn)["samples"])
    code, out, err = run(capsys, "train", *argv)  # a rerun reads them back, and says the same
    assert code == 2 and "no pairs" in err and samples.read_text() == drawn
    stage = json.loads((tmp_path / "o" / PREFERENCE_FILE).read_text())
    assert stage["train_options"]["lr"] == 1e-4 and stage["options"]["samples"] == 2  # the stage's own default
