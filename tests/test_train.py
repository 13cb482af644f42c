"""``pastac train`` on tiny random models (CPU, float32): the training forward is the runtime's, the labels
follow the rule of ``pastac.train.data``, training lowers the loss, resumes exactly, and the adapter loads."""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_cli import run
from test_runtime import DOC, PROMPT, runtime_logits

from pastac import PositionOptions, lower, parse, render, training_layout
from pastac.adapters.settings import AdapterSettings
from pastac.ir.graph import SyncTag
from pastac.ir.lengths import tokenizer_length
from pastac.models import load_model, prompt_ids, random_model, tiny_tokenizer
from pastac.runtime.engine import Engine
from pastac.runtime.options import RunOptions
from pastac.train.data import CHILD_HEAD, IGNORE, collate, encode_example
from pastac.train.trainer import TrainError, TrainOptions, train

ATOL = 1e-4
SHAPES = ("tiny-llama", "tiny-qwen2", "tiny-gpt2")
POSITIONS = PositionOptions(policy="predicted", unit=1)
# LoRA on the output head too: a tiny random model's projections alone barely move its near-uniform outputs
LEARNABLE = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head")
RECORDS = [
    {
        "prompt": "Give me tips.",
        "text": 'Tips: <promise topic="sleep" tokens="2"/><async>Sleep 8 hours.</async>'
        '<promise topic="water" tokens="1"/><async>Drink water.</async><sync/> Done.',
    },
    {
        "prompt": "Cook pasta.",
        "text": 'To cook: <promise topic="boil" tokens="3"/><async>Boil salted water.</async><sync/> Serve.',
    },
    {"prompt": "bad", "text": "<async>orphan</async>"},
    {"prompt": "Paris?", "text": "Paris is the capital of France."},
]


@pytest.fixture(autouse=True)
def _one_thread_quietly():
    """Tiny models gain nothing from threads, and lose much when the cores are busy with other work."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Setting `save_embedding_layers`")  # LEARNABLE adapts lm_head
        # load_model(adapter=...) merges with peft, which reads an attribute that transformers 5 deprecates
        warnings.filterwarnings("ignore", "`is_gradient_checkpointing` is deprecated", FutureWarning)
        yield
    torch.set_num_threads(threads)


def tiny(shape: str = "tiny-llama", seed: int = 1) -> torch.nn.Module:
    tok = tiny_tokenizer()
    return random_model(shape, vocab_size=len(tok), seed=seed, eos_token_id=tok.eos_token_id)


@pytest.fixture
def data(tmp_path: Path) -> Path:
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in RECORDS) + "\nnot json\n\n")
    return path


@pytest.mark.parametrize("shape", SHAPES)
def test_training_forward_equals_the_runtime_replaying_the_document(shape, tiny_engine):
    e = tiny_engine(shape, 1)  # the model tiny(shape) makes
    tok, model = e.tokenizer, e.model
    # every token sampled, even those a tag forces (jump-forward feeds them unsampled, with the same logits)
    result = e.generate(PROMPT, RunOptions(positions=POSITIONS, jump_forward=False), replay=DOC, keep_logits=True)
    assert result.stats.threads == 4 and not result.warnings
    example = encode_example(tok, PROMPT, DOC, POSITIONS)
    with torch.inference_mode():
        logits = model(
            input_ids=example.input_ids[None],
            position_ids=example.position_ids[None],
            attention_mask=example.additive_mask(),
        ).logits[0]
    order: dict[int, list[int]] = {}
    for index, thread in enumerate(example.thread_ids.tolist()):
        order.setdefault(thread, []).append(index)
    ir_of = {t: th.ir_thread for t, th in e.last_run.sched.threads.items()}
    sampled = set()
    for thread, index, got in runtime_logits(e):
        i = order[ir_of[thread]][index]
        torch.testing.assert_close(got, logits[i], atol=ATOL, rtol=0)
        sampled.add(i)
    assert len(sampled) >= result.stats.generated - result.stats.threads
    # The runtime chooses a token exactly where a label stands, but after a <sync/>: there a replay takes
    # the next token once the children are joined, without sampling (free decoding samples it while blocked,
    # from the same context: the children's text is not visible yet).
    labelled = set((example.labels != IGNORE).nonzero().squeeze(-1).tolist())
    graph = lower(parse(DOC), tokenizer_length(tok))
    layout = training_layout(graph, POSITIONS)
    nodes = layout.node_ids.tolist()
    sync_ends = {
        example.prompt_length + k
        for k, n in enumerate(nodes)
        if isinstance(graph.op(n), SyncTag) and (k + 1 == len(nodes) or nodes[k + 1] != n)
    }
    assert sampled <= labelled
    assert labelled - sampled == sync_ends and len(sync_ends) == 2


def test_labels_follow_the_rule():
    tok = tiny_tokenizer()

    def enc(text: str) -> list[int]:
        return tok.encode(text, add_special_tokens=False)

    doc = 'A <promise topic="x" tokens="1"/><async>b c</async><sync/> d'
    a, promise, opening, body, closing, sync, d = (
        enc(s) for s in ("A ", '<promise topic="x" tokens="1"/>', "<async>", "b c", "</async>", "<sync/>", " d")
    )
    assert len(opening) > 1 and len(closing) > 1 and len(promise) > 1  # so that every rule is exercised
    example = encode_example(tok, "Hi", doc, POSITIONS)
    p = example.prompt_length
    assert example.input_ids.tolist()[p:] == a + promise + opening + body + closing + sync + d
    eos = tok.eos_token_id
    expected = (
        [IGNORE] * (p - 1)
        + [a[0]]  # the prompt: only its last position, which predicts the answer's first token
        + a[1:]
        + [promise[0]]  # main text
        + promise[1:]
        + [sync[0]]  # the promise's last token predicts the parent's next token
        + [IGNORE] * (len(opening) - 1)
        + [body[0]]  # the force-fed <async>; its last predicts the child's first
        + body[1:]
        + [closing[0]]  # the child writes its text and </async>
        + closing[1:]
        + [IGNORE]  # the last token of </async> predicts nothing
        + sync[1:]
        + [d[0]]  # after <sync/>, the parent goes on
        + d[1:]
        + [eos]  # the main thread's last token predicts the end of sequence
    )
    assert example.labels.tolist() == expected
    threads = example.thread_ids.tolist()[p:]
    child = len(a) + len(promise), len(a) + len(promise) + len(opening) + len(body) + len(closing)
    assert set(threads[child[0] : child[1]]) == {1} and set(threads[: child[0]] + threads[child[1] :]) == {0}
    # plain text: a token of text whose label is the next token of text (what the KL term compares), but for
    # a child's first CHILD_HEAD tokens (its topic decides them)
    assert len(body) <= CHILD_HEAD
    text = (
        [False] * p
        + [True] * (len(a) - 1)
        + [False]  # the prompt; "A " but for its last (a promise follows)
        + [False] * (len(promise) + len(opening) + len(body) + len(closing) + len(sync))
        + [True] * (len(d) - 1)
        + [False]  # the last token's label is the end of sequence
    )
    assert example.text.tolist() == text
    words = " ".join(f"w{i}" for i in range(20))
    long = encode_example(tok, "Hi", doc.replace("b c", words), POSITIONS)
    child = (long.thread_ids == 1).nonzero().flatten().tolist()
    body = child[len(opening) : -len(closing)]
    assert long.text[body].tolist() == [False] * CHILD_HEAD + [True] * (len(body) - CHILD_HEAD - 1) + [False]
    # a repeated topic on <async> is dropped: the runtime force-feeds a bare <async>
    same = encode_example(tok, "Hi", doc.replace("<async>", '<async topic="x">'), POSITIONS)
    assert torch.equal(same.input_ids, example.input_ids) and torch.equal(same.labels, example.labels)


def test_padding_keeps_each_example_as_it_was():
    tok = tiny_tokenizer()
    model = tiny("tiny-qwen2")
    short = encode_example(tok, "Hi", "Short.", POSITIONS)
    long = encode_example(tok, PROMPT, DOC, POSITIONS)
    batch = collate([short, long], pad_id=tok.pad_token_id)
    assert batch.mask.shape == (2, len(long), len(long)) and batch.tokens == len(short) + len(long)
    assert batch.mask.any(-1).all()  # every row sees something: a pad sees itself
    with torch.inference_mode():
        both = model(
            input_ids=batch.input_ids, position_ids=batch.position_ids, attention_mask=batch.additive_mask()
        ).logits
        alone = model(
            input_ids=short.input_ids[None], position_ids=short.position_ids[None], attention_mask=short.additive_mask()
        ).logits[0]
    torch.testing.assert_close(both[0, : len(short)], alone, atol=ATOL, rtol=0)
    assert (batch.labels[0, len(short) :] == IGNORE).all()


def test_training_lowers_the_loss_and_writes_its_outputs(tmp_path, data):
    tok = tiny_tokenizer()
    options = TrainOptions(
        lr=1e-2,
        schedule="constant",
        epochs=20,
        batch_size=3,
        target_modules=LEARNABLE,
        seed=0,
        dropout=0.0,
        log_every=5,
    )
    result = train(tiny(), tok, data, tmp_path / "out", options, progress=False)
    assert result.steps == 20 and result.examples == 3 and result.invalid == 2 and result.too_long == 0
    assert result.losses[-1] < 0.5 * result.losses[0], result.losses
    out = tmp_path / "out"
    for name in (
        "adapter_config.json",
        "adapter_model.safetensors",
        "pastac.json",
        "loss.csv",
        "loss.png",
        "train_log.json",
        "checkpoint/state.json",
        "checkpoint/optimizer.pt",
    ):
        assert (out / name).is_file(), name
    rows = list(csv.DictReader((out / "loss.csv").open()))
    assert [int(r["step"]) for r in rows] == [5, 10, 15, 20] and list(rows[0]) == [
        "step",
        "loss",
        "lr",
        "tokens",
        "seconds",
    ]
    log = json.loads((out / "train_log.json").read_text())
    assert log["data"]["invalid"] == 2 and log["steps"] == 20 and "torch" in log["hardware"]
    again = train(tiny(), tok, data, out, options, progress=False)  # finished: nothing left to do
    assert again.resumed_from == 20 and again.losses == result.losses


def _kl_to_base(peft_model, examples) -> float:
    """Mean KL(base || adapted) over the plain-text positions of ``examples``, the base model reading the
    answer as plain text (``Example.teacher_ids``)."""
    total, count = 0.0, 0
    with torch.inference_mode():
        for example in examples:
            adapted = (
                peft_model(
                    input_ids=example.input_ids[None],
                    position_ids=example.position_ids[None],
                    attention_mask=example.additive_mask(),
                )
                .logits[0, example.text]
                .log_softmax(-1)
            )
            with peft_model.disable_adapter():
                plain = peft_model(input_ids=example.teacher_ids[None]).logits[0]
            base = plain[example.teacher[example.text]].log_softmax(-1)
            total += float(torch.nn.functional.kl_div(adapted, base, log_target=True, reduction="sum"))
            count += int(example.text.sum())
    return total / count


def test_the_plain_text_of_an_example_is_what_the_base_model_reads():
    tok = tiny_tokenizer()
    example = encode_example(tok, "Hi", DOC, POSITIONS)
    p = example.prompt_length
    plain = tok.decode(example.teacher_ids[p:].tolist())
    assert plain == render(parse(DOC)) and example.teacher_ids[:p].tolist() == example.input_ids[:p].tolist()
    at = example.text.nonzero().flatten().tolist()
    assert at and (example.teacher[~example.text] == -1).all()
    for i in at:  # the same token, and the next token in the plain text is the label
        j = int(example.teacher[i])
        assert example.teacher_ids[j] == example.input_ids[i] and example.teacher_ids[j + 1] == example.labels[i]


def test_a_kl_term_keeps_the_text_close_to_the_base_model(tmp_path, data):
    tok = tiny_tokenizer()
    base = dict(lr=1e-2, schedule="constant", epochs=10, batch_size=3, target_modules=LEARNABLE, seed=0, dropout=0.0)
    plain = train(tiny(), tok, data, tmp_path / "plain", TrainOptions(**base), progress=False)
    kept = train(tiny(), tok, data, tmp_path / "kl", TrainOptions(**base, kl_weight=5.0), progress=False)
    examples = [kept.data.example(i) for i in range(len(kept.data))]
    assert all(bool(e.text.any()) for e in examples)
    drift, held = _kl_to_base(plain.model, examples), _kl_to_base(kept.model, examples)
    assert held < 0.5 * drift, (held, drift)
    assert kept.losses[-1] < 0.7 * kept.losses[0]  # it still learns the data (the tags among it)
    rows = list(csv.DictReader((tmp_path / "kl" / "loss.csv").open()))
    assert list(rows[0]) == ["step", "loss", "lr", "tokens", "seconds", "kl"]
    assert all(float(r["kl"]) > 0 for r in rows)
    assert "KL(base || adapted)" in (tmp_path / "kl" / "README.md").read_text()
    with pytest.raises(TrainError, match="kl_weight"):
        TrainOptions(kl_weight=-1)


def test_examples_that_fork_can_be_repeated_each_epoch(tmp_path, data):
    options = TrainOptions(epochs=2, repeat_forking=3, target_modules=LEARNABLE, save_every=100)
    result = train(tiny(), tiny_tokenizer(), data, tmp_path / "out", options, progress=False)
    lengths = [item.length for item in result.data.items]
    forks = [result.data.forks(i) for i in range(len(lengths))]
    assert forks == [True, True, False]  # the two tip lists fork, "Paris?" does not
    assert result.steps == result.planned_steps == 2 * (3 + 3 + 1)
    log = json.loads((tmp_path / "out" / "train_log.json").read_text())
    assert log["tokens"] == 2 * sum(n * (3 if fork else 1) for n, fork in zip(lengths, forks, strict=True))
    assert "each example with a promise 3 time(s) per epoch" in (tmp_path / "out" / "README.md").read_text()
    with pytest.raises(TrainError, match="repeat_forking"):
        TrainOptions(repeat_forking=0)


def test_resume_continues_as_one_run(tmp_path, data):
    tok = tiny_tokenizer()
    options = TrainOptions(lr=5e-3, epochs=12, batch_size=2, seed=3, save_every=4, target_modules=LEARNABLE)

    def run_to(steps: int, folder: str):
        return train(
            tiny(),
            tok,
            data,
            tmp_path / folder,
            TrainOptions(**{**options.__dict__, "max_steps": steps}),
            progress=False,
        )

    first = run_to(10, "resumed")
    assert first.steps == 10 and first.planned_steps == 24
    resumed = run_to(20, "resumed")
    straight = run_to(20, "straight")
    assert resumed.resumed_from == 10 and resumed.steps == straight.steps == 20
    assert resumed.losses[:10] == first.losses
    torch.testing.assert_close(torch.tensor(resumed.losses), torch.tensor(straight.losses), atol=1e-5, rtol=0)
    got = load_file(tmp_path / "resumed" / "adapter_model.safetensors")
    want = load_file(tmp_path / "straight" / "adapter_model.safetensors")
    assert got.keys() == want.keys() and got
    for key in want:
        torch.testing.assert_close(got[key], want[key], atol=1e-5, rtol=0)
    rows = list(csv.DictReader((tmp_path / "resumed" / "loss.csv").open()))
    assert [int(r["step"]) for r in rows] == list(range(1, 21))
    with pytest.raises(TrainError, match="other options"):
        train(
            tiny(), tok, data, tmp_path / "straight", TrainOptions(**{**options.__dict__, "lr": 1e-3}), progress=False
        )


def test_gpt2_in_bfloat16_with_accumulation_and_a_length_cap(tmp_path, data):
    tok = tiny_tokenizer()
    cap = len(encode_example(tok, "Paris?", "Paris is the capital of France.", POSITIONS))
    options = TrainOptions(dtype="bfloat16", batch_size=2, grad_accum=2, max_steps=2, max_length=cap, epochs=4)
    result = train(tiny("tiny-gpt2"), tok, data, tmp_path / "out", options, progress=False)
    assert result.examples == 1 and result.too_long == 2 and result.invalid == 2 and result.steps == 2
    assert all(torch.isfinite(torch.tensor(result.losses)))
    config = json.loads((tmp_path / "out" / "adapter_config.json").read_text())
    assert config["fan_in_fan_out"] and set(config["target_modules"]) == {"c_attn", "c_proj", "c_fc"}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    folder = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = tiny_tokenizer()
    tiny(seed=3).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def test_the_adapter_loads_with_its_position_settings(tmp_path, data, model_dir):
    base = load_model(model_dir, progress=False)
    options = TrainOptions(lr=1e-2, max_steps=3, unit=3, dropout=0.0, base_model=model_dir, repetition_penalty=1.15)
    result = train(base.model, base.tokenizer, data, tmp_path / "out", options, progress=False)
    settings = json.loads((tmp_path / "out" / "pastac.json").read_text())
    assert settings == {
        "policy": "predicted",
        "unit": 3,
        "max_depth": 2,
        "chat": True,
        "repetition_penalty": 1.15,
        "base_model": model_dir,
        "eos_token_id": base.tokenizer.eos_token_id,
    }
    adapter_config = json.loads((tmp_path / "out" / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == model_dir
    card = (tmp_path / "out" / "README.md").read_text()
    assert card.startswith("# out\n") and f"Base model: {model_dir}" in card and "More Information Needed" not in card
    log = json.loads((tmp_path / "out" / "train_log.json").read_text())
    assert f"{log['trainable_parameters']:,} trainable parameters" in card and "3 of " in card
    loaded = load_model(model_dir, adapter=tmp_path / "out", progress=False)
    assert loaded.settings == AdapterSettings.from_json(settings)
    ids = torch.tensor([base.tokenizer.encode("Tips: sleep well.")])
    result.model.eval()
    with torch.inference_mode():
        trained = result.model(input_ids=ids).logits
        merged = loaded.model(input_ids=ids).logits
        plain = load_model(model_dir, progress=False).model(input_ids=ids).logits
    torch.testing.assert_close(merged, trained, atol=ATOL, rtol=0)
    assert (merged - plain).abs().max() > 1e-3  # the adapter changed something
    engine = Engine.from_pretrained(model_dir, adapter=str(tmp_path / "out"), progress=False)
    assert engine.positions == PositionOptions(policy="predicted", unit=3)


DEEP = (
    'A <promise topic="x"/><async>b <promise topic="y"/><async>c <promise topic="z"/><async>d</async>'
    "<sync/> e</async><sync/> f</async><sync/> g"
)


def test_an_adapter_decodes_with_the_depth_and_the_prompt_layout_it_was_trained_with(
    capsys, monkeypatch, tmp_path, data, model_dir
):
    adapter = tmp_path / "deep"
    argv = (str(data), "--out", str(adapter), "--model", model_dir, "--max-depth", "3", "--no-chat", "--max-steps", "1")
    code, _, err = run_train(capsys, monkeypatch, *argv, "-q")
    assert code == 0, err
    settings = AdapterSettings.read(adapter)
    assert settings is not None and settings.max_depth == 3 and settings.chat is False
    engine = Engine.from_pretrained(model_dir, adapter=str(adapter), kernels="stock", progress=False)
    result = engine.generate("Hi", replay=DEEP)
    assert result.annotated == DEEP and not result.warnings
    assert len(result.threads) == 4  # the third level forks too, as the adapter learnt
    run = engine.last_run
    assert run is not None and run.sched.max_nesting == 3  # and the guard allows a block that deep
    assert run.prompt_tokens == len(prompt_ids(engine.tokenizer, "Hi", chat=False))  # no chat template
    # the base model alone: the language's default depth (a third-level promise decoded inline), the template
    base = Engine.from_pretrained(model_dir, adapter=None, kernels="stock", progress=False)
    plain = base.generate("Hi", replay=DEEP)
    assert len(plain.threads) == 3 and base.last_run.prompt_tokens == len(prompt_ids(base.tokenizer, "Hi"))
    # an option that says otherwise wins, and says which setting it overrides
    overridden = engine.generate("Hi", replay=DEEP, max_depth=2, chat=True)
    assert len(overridden.threads) == 3
    assert {w.split("=")[0].split()[-1] for w in overridden.warnings} == {"max_depth", "chat"}


def run_train(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, *argv: str) -> tuple[int, str, str]:
    """``pastac train ...`` through the command line's entry point."""
    return run(capsys, "train", *argv)


def test_cli_trains_and_resumes(capsys, monkeypatch, tmp_path, data, model_dir):
    common = (str(data), "--out", str(tmp_path / "out"), "--model", model_dir)
    code, stdout, err = run_train(capsys, monkeypatch, *common, "--max-steps", "2", "--save-every", "1", "-q")
    assert code == 0, err
    assert "trained 2 of 3 planned steps on 3 examples (2 invalid and 0 too long skipped)" in stdout
    assert err == ""
    code, stdout, err = run_train(capsys, monkeypatch, *common)  # not quiet: the skipped records are listed
    assert code == 0, err
    assert "trained 3 of 3" in stdout and "resumed from step 2" in stdout
    assert f"skipped {data}, line 3: E303" in err and f"skipped {data}, line 5: invalid JSON" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["{tmp}/missing.jsonl", "--out", "{tmp}/o"], "no such file"),
        (["{tmp}/empty.jsonl", "--out", "{tmp}/o", "--model", "{model}"], "no usable examples"),
        (["{tmp}/bad.jsonl", "--out", "{tmp}/o", "--model", "{model}"], "2 records, 2 invalid"),
        (["{data}", "--out", "{data}", "--model", "{model}"], "is a file"),
        (["{data}", "--out", "{tmp}/o", "--model", "{tmp}/nope"], "nope"),
    ],
)
def test_cli_errors(capsys, monkeypatch, tmp_path, data, model_dir, argv, message):
    (tmp_path / "empty.jsonl").write_text("\n")
    (tmp_path / "bad.jsonl").write_text('{"prompt": "p", "text": "<sync/>"}\n{"text": "x"}\n')
    args = [a.format(tmp=tmp_path, model=model_dir, data=data) for a in argv]
    code, out, err = run_train(capsys, monkeypatch, *args, "-q")
    assert code == 2 and out == ""
    assert err.startswith("pastac: error: ") and message in err, err
    assert not (tmp_path / "o").exists()


def test_training_writes_only_into_an_adapter_folder(capsys, monkeypatch, tmp_path, data):
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    (checkout / "README.md").write_text("# project\n")
    options = TrainOptions(max_steps=1, target_modules=LEARNABLE)
    with pytest.raises(TrainError, match=f"--out '{checkout}' holds files and is not an adapter folder.*--force"):
        train(tiny(), tiny_tokenizer(), data, checkout, options, progress=False)
    assert [p.name for p in checkout.iterdir()] == ["README.md"] and (
        checkout / "README.md"
    ).read_text() == "# project\n"
    argv = [str(data), "--out", str(checkout), "--model", str(tmp_path / "no-model"), "-q"]
    code, out, err = run_train(capsys, monkeypatch, *argv)  # refused before the model loads
    assert (code, out) == (2, "") and "holds files and is not an adapter folder" in err and "--force" in err
    code, _, err = run_train(capsys, monkeypatch, *argv, "--force")  # accepted: the model is the next problem
    assert code == 2 and "no-model" in err and "holds files" not in err
    train(tiny(), tiny_tokenizer(), data, checkout, options, progress=False, force=True)
    assert (checkout / "pastac.json").is_file() and (checkout / "README.md").read_text().startswith("# checkout")
    again = train(tiny(), tiny_tokenizer(), data, checkout, options, progress=False)  # its own folder now
    assert again.resumed_from == 1


def test_a_final_file_that_cannot_be_written_is_an_error_and_the_checkpoint_stays(tmp_path, data):
    out = tmp_path / "out"
    out.mkdir()
    (out / "pastac.json").write_text("{}")  # the folder of an earlier run
    (out / "README.md").mkdir()  # in the way of the model card
    options = TrainOptions(max_steps=1, target_modules=LEARNABLE)
    with pytest.raises(TrainError, match=r"cannot write '.*README\.md': it is a folder \(the checkpoint is kept"):
        train(tiny(), tiny_tokenizer(), data, out, options, progress=False)
    assert (out / "checkpoint" / "state.json").is_file() and (out / "adapter_model.safetensors").is_file()
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no temporary file is left
    (out / "README.md").rmdir()
    assert train(tiny(), tiny_tokenizer(), data, out, options, progress=False).resumed_from == 1
    assert (out / "README.md").read_text().startswith("# out")
