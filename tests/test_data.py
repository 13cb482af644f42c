"""The dataset tools: the prompt set (size, determinism, split) and the annotators (validity, round trip)."""

from __future__ import annotations

import collections
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from pastac import jsonl
from pastac.data import (
    CATEGORIES,
    DEFAULT_FEW_SHOT,
    FORKABLE,
    SPLITS,
    Annotation,
    Annotator,
    LLMAnnotator,
    PromptRecord,
    StructuralAnnotator,
    assign_split,
    build_prompts,
    normalise,
    openai_generate,
    read_jsonl,
    validate,
    write_jsonl,
)
from pastac.data.annotate import make_topic
from pastac.grammar import Async, Document, Node, Promise, parse, render

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def records() -> list[PromptRecord]:
    return build_prompts()


def _fingerprint(records: list[PromptRecord]) -> str:
    lines = (json.dumps(asdict(r), ensure_ascii=False, sort_keys=True) for r in records)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


# ------------------------------------------------------------------------------------------------ prompts


def test_at_least_2000_distinct_prompts(records: list[PromptRecord]) -> None:
    assert len(records) >= 2000
    assert len({normalise(r.prompt) for r in records}) == len(records)
    assert len({r.id for r in records}) == len(records)


def test_build_is_deterministic(records: list[PromptRecord]) -> None:
    assert build_prompts() == records
    assert build_prompts(seed=7) != records  # the seed matters


def test_build_does_not_depend_on_hash_randomisation(records: list[PromptRecord]) -> None:
    code = (
        "import hashlib, json, dataclasses; from pastac.data import build_prompts; "
        "lines = (json.dumps(dataclasses.asdict(r), ensure_ascii=False, sort_keys=True) for r in build_prompts()); "
        "print(hashlib.sha256(chr(10).join(lines).encode()).hexdigest())"
    )
    for seed in ("1", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, check=True
        )
        assert out.stdout.strip() == _fingerprint(records)


# The SHA-256 of the default build (records as sorted-key JSON lines).  It pins the set across machines and
# Python versions; update it only with a deliberate change to the prompt lists or templates.
FINGERPRINT = "af30d226a96be2b94d4ffb08aa24cd7b5b153739a19c7ddba67ad67bd5c7e83c"


def test_build_matches_the_pinned_fingerprint(records: list[PromptRecord]) -> None:
    assert _fingerprint(records) == FINGERPRINT, "the prompt set changed: if on purpose, update FINGERPRINT"


def test_records_are_well_formed(records: list[PromptRecord]) -> None:
    for r in records:
        assert r.id.startswith(f"{r.category}-") and r.id[-5:].isdigit()
        assert r.forkable == FORKABLE[r.category]
        assert r.split == assign_split(r.prompt)
        assert r.prompt == r.prompt.strip() and "  " not in r.prompt
    assert {r.category for r in records} == set(CATEGORIES)


def test_split_proportions_and_coverage(records: list[PromptRecord]) -> None:
    counts = collections.Counter(r.split for r in records)
    for split, share in (("train", 0.90), ("validation", 0.05), ("test", 0.05)):
        assert abs(counts[split] / len(records) - share) <= 0.02, (split, counts)
    for split in SPLITS:
        assert {r.category for r in records if r.split == split} == set(CATEGORIES), split


def test_split_is_stable_under_case_and_white_space() -> None:
    assert assign_split("Give me five tips for sleep.") == assign_split("  give me FIVE tips\tfor sleep. ")


def test_forkable_share(records: list[PromptRecord]) -> None:
    share = sum(r.forkable for r in records) / len(records)
    assert 0.6 <= share <= 0.8


def test_jsonl_round_trip(records: list[PromptRecord], tmp_path: Path) -> None:
    path = tmp_path / "prompts.jsonl"
    write_jsonl(records, path)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == len(records)
    assert set(json.loads(lines[0])) == {"id", "prompt", "category", "forkable", "split"}
    assert read_jsonl(path) == records


# ---------------------------------------------------------------------------------------------------- JSONL

# Characters str.splitlines (and so many readers) takes for line breaks, that JSON leaves as they are or escapes.
LINE_BREAKS = "\x85\u2028\u2029\r\n\x0b\x0c\x1c\x1d\x1e"


def test_jsonl_that_pastac_writes_reads_back_whatever_its_text_holds(tmp_path):
    records = [{"id": f"r{i}", "text": f"a{c}b", c: "key"} for i, c in enumerate(LINE_BREAKS)]
    written = "".join(jsonl.line(r) for r in records)
    assert len(written.splitlines()) == len(records)  # a reader that splits on any line break sees one per record
    assert [r for _, r in jsonl.parse(written)] == records
    path = tmp_path / "r.jsonl"
    jsonl.write_records(path, records)
    assert jsonl.read_records(path) == records
    with jsonl.appending(path) as write:
        write({"id": "last", "text": "\u2028"})
    assert list(jsonl.resume(path, jsonl.Kind("test", ("id", "text")))) == [*(r["id"] for r in records), "last"]


def test_jsonl_lines_end_at_line_feeds_only():
    # Written by another tool with raw separators inside strings: still one record a line.
    text = '{"a": "x\u2028y"}\r\n\n{"a": "\x85"}\n'
    assert list(jsonl.parse(text)) == [(1, {"a": "x\u2028y"}), (3, {"a": "\x85"})]


# Any text: every code point, lone surrogates (what json.loads makes of "\ud800") included, and often those
# that readers split lines on or that UTF-8 cannot encode.
ANY_TEXT = st.text(st.characters(exclude_categories=()) | st.sampled_from(LINE_BREAKS + "\ud800\udfff"), max_size=12)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | ANY_TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(ANY_TEXT, inner, max_size=3),
    max_leaves=8,
)


@given(records=st.lists(st.dictionaries(ANY_TEXT, JSON_VALUES, max_size=4), max_size=4))
@example(records=[{"\ud800": ["\udfff\u2028"], "id": "\x85"}, {}])  # every time, whatever is drawn
def test_jsonl_reads_back_what_it_writes_for_any_text(records):
    written = "".join(jsonl.line(record) for record in records)
    assert len(written.splitlines()) == written.count("\n") == len(records)  # one line a record, for any reader
    assert [record for _, record in jsonl.parse(written)] == records
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "r.jsonl"
        jsonl.write_records(path, records)  # UTF-8: a lone surrogate would not encode
        assert jsonl.read_records(path, required=()) == records


def test_resume_reads_back_only_records_of_its_kind(tmp_path):
    kind = jsonl.Kind("response", ("id", "response"), excluded=("text",))
    path = tmp_path / "out.jsonl"
    path.write_text(json.dumps({"id": "a", "response": "r", "text": "t"}) + "\n")
    with pytest.raises(jsonl.RecordsError, match=r"out\.jsonl:1: the record has field 'text', which response"):
        jsonl.resume(path, kind)
    path.write_text(json.dumps({"id": 1, "response": "r"}) + "\n")
    with pytest.raises(jsonl.RecordsError, match=r"out\.jsonl:1: the record's id is not a string"):
        jsonl.resume(path, kind)
    cut = json.dumps({"id": "a", "response": "r"}) + "\n" + '{"id": "b", "resp'
    path.write_text(cut)
    assert list(jsonl.resume(path, kind)) == ["a"] and path.read_text() == cut[: cut.index("\n") + 1]


def test_record_rejects_unknown_split() -> None:
    with pytest.raises(ValueError):
        PromptRecord("list-00000", "x", "list", True, "dev")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------ annotations


def _promises(document: Document) -> list[Promise]:
    out: list[Promise] = []
    stack: list[tuple[Node, ...]] = [document.body]
    while stack:
        for node in stack.pop():
            if isinstance(node, Promise):
                out.append(node)
            elif isinstance(node, Async):
                stack.append(node.body)
    return out


def _check_annotation(response: str, annotation: Annotation) -> list[Promise]:
    """Everything an annotation must satisfy; returns its promises."""
    assert annotation.text is not None, annotation.reason
    assert validate(response, annotation.text) == []
    document = parse(annotation.text)
    assert render(document) == response  # the structural annotator keeps every character
    promises = _promises(document)
    assert annotation.forks == len(promises)
    assert annotation.reason
    for promise in promises:
        assert promise.tokens is not None and promise.tokens >= 10 and promise.tokens % 10 == 0
        assert 2 <= len(promise.topic.split()) <= 6, promise.topic
    if not promises:
        assert annotation.text == response
    return promises


NUMBERED = """\
Here are five ways to sleep better:
1. Keep a regular schedule: go to bed and get up at the same time every day, weekends included.
2. Make the bedroom dark, quiet and cool, and keep phones and laptops out of it.
3. Avoid caffeine after noon and heavy meals or alcohol in the late evening.
4. Get some daylight in the morning, ideally with a short walk outside.
5. If you cannot sleep after twenty minutes, get up and read until you feel drowsy.

Start with one change at a time and give each a week before judging it.
"""

BULLETS = """\
Drinking enough water is mostly a matter of habit. A few tricks:
- Keep a refillable bottle on your desk or in your bag, where you can see it all day.
- Pair a glass of water with things you already do: waking up, each meal, brushing your teeth.
* If plain water bores you, add lemon, cucumber, mint or a splash of juice to it.
"""

HEADINGS = """\
# Remote work

Remote work has clear benefits and real costs.

## Advantages

No commute gives you back hours every week, and many people concentrate better at home,
away from open-plan noise and constant interruptions.

## Disadvantages

Isolation is the most common complaint: without casual conversations it is harder to build
relationships with colleagues, and learning from them takes longer.

## Summary

Whether it suits you depends on your personality, your home and your career stage.
"""

BOLD_BLOCKS = """\
TCP and UDP are the two main transport protocols of the internet.

**TCP (Transmission Control Protocol)** is connection-oriented. It guarantees that bytes arrive complete,
in order and without duplicates, at the price of extra latency.

**UDP** is connectionless. Each datagram is sent on its own, with no guarantee that it arrives, in exchange
for simplicity and speed.

In practice, use TCP when every byte matters and UDP when timeliness matters more.
"""

PARAGRAPHS = """\
It is a common belief that the seasons come from the Earth's distance to the sun, but distance is not the reason.

The real cause is the tilt of the Earth's axis, about 23.5 degrees relative to its orbit, which stays pointed
in the same direction in space all year.

When your hemisphere leans towards the sun, sunlight hits the ground at a steeper angle and the days are
longer, so the ground receives much more energy.

This also explains why the seasons are reversed between the two hemispheres.
"""

FACTUAL = "The capital of Australia is Canberra, not Sydney.\n"

# Plain paragraphs that build on each other: a derivation, and paragraphs that refer back.
CALCULATION = """\
To find the total cost, multiply the price of one notebook by the number of notebooks.

One notebook costs $9.92, and we need 10 of them, so the cost is 9.92 * 10 = 99.20 dollars.

We can check the answer by rounding: about $10 each, times 10 notebooks, is close to $100.

So the answer is $99.20.
"""
REFERS_BACK = """\
Sourdough bread is made with a starter, a culture of wild yeast and bacteria kept alive with flour and water.

The starter is mixed with flour, water and salt, and the dough rises slowly for many hours at room temperature.

This slow rise is what gives the bread its sour taste and its open, chewy crumb with large irregular holes.

In short, time and wild yeast do the work.
"""

CODE_WITH_TAG = """\
Here is a small parser for the `<async>` tag:

```python
def is_open(text: str) -> bool:
    # a < b is text, but <async> starts a block
    return text.startswith("<async>") and len(text) < 100
```

It returns True for "<async>hello".
"""

CODE_WITHOUT_TAG = """\
Use a loop that keeps the smaller value:

```python
# Smallest element
def smallest(items):
    best = items[0]
    for item in items[1:]:
        if item < best:
            best = item
    return best

# Usage
print(smallest([3, 1, 2]))  # 1
```

For a list of n items this makes n - 1 comparisons, and `min(items)` does the same.
"""

SHORT_PARTS = """\
Pantry staples:
- Rice
- Pasta
- Canned tomatoes
- Olive oil
"""

NESTED = """\
Prepare for the interview in three areas:
1. Research the company:
   - read its annual report and recent news,
   - look at the team on LinkedIn.
2. Practise your answers to common questions out loud, ideally with a friend who asks follow-ups.
3. Prepare the logistics the day before: route, documents, clothes, and a printed copy of your CV.

Good luck!
"""

STEPS = """\
Setting up a new laptop:
Step 1: Install all system updates before anything else, then restart once or twice.
Step 2: Set up a password manager and turn on two-factor authentication for your main accounts.
Step 3: Install a backup tool and run a first full backup to an external drive.
"""

SEQUENTIAL = """\
The discounts apply one after the other:
- First, take 25% off 120, which gives 120 × 0.75 = 90 for the price.
- Then take 10% off 90, which gives 90 × 0.90 = 81 as the final price.
"""

MIXED_LENGTHS = """\
Some packing advice:
1. Passport, visa, boarding pass and a printed copy of your hotel booking.
2. Socks.
3. A neck pillow, eye mask, earplugs or noise-cancelling headphones.
"""

QUOTES = """\
Phrases worth learning first:
- "Thank you" & "please" are the most useful words in any language, so learn them first.
- "Where is <the station>?" gets you around a city, and people are happy to help.
"""

CRLF = NUMBERED.replace("\n", "\r\n")


@pytest.mark.parametrize(
    ("response", "forks", "reason"),
    [
        (NUMBERED, 5, "numbered items"),
        (BULLETS, 3, "bullet items"),  # "-", "*" and "•" are one kind of list
        (HEADINGS, 2, "sections"),
        (BOLD_BLOCKS, 2, "titled blocks"),
        (PARAGRAPHS, 2, "paragraphs"),
        (STEPS, 3, "numbered items"),
        (NESTED, 3, "numbered items"),
        (MIXED_LENGTHS, 2, "numbered items"),
        (QUOTES, 2, "bullet items"),
        (CRLF, 5, "numbered items"),
    ],
    ids=["numbered", "bullets", "headings", "bold", "paragraphs", "steps", "nested", "mixed", "quotes", "crlf"],
)
def test_structural_forks(response: str, forks: int, reason: str) -> None:
    annotation = StructuralAnnotator().annotate("prompt", response)
    _check_annotation(response, annotation)
    assert annotation.forks == forks, annotation.reason
    assert reason in annotation.reason


@pytest.mark.parametrize(
    "response",
    [FACTUAL, CODE_WITHOUT_TAG, SHORT_PARTS, SEQUENTIAL, CALCULATION, REFERS_BACK, "", "Yes."],
    ids=["factual", "code", "short-parts", "sequential", "calculation", "refers-back", "empty", "one-word"],
)
def test_structural_does_not_fork(response: str) -> None:
    annotation = StructuralAnnotator().annotate("prompt", response)
    _check_annotation(response, annotation)
    assert annotation.forks == 0 and annotation.text == response
    assert annotation.reason.startswith("not forked")


def test_intro_and_conclusion_stay_in_the_main_thread() -> None:
    text = StructuralAnnotator().annotate("prompt", NUMBERED).text
    assert text is not None
    assert text.startswith("Here are five ways to sleep better:\n1. <promise ")
    assert text.endswith("</async><sync/>\nStart with one change at a time and give each a week before judging it.\n")
    # the list marker stays with the parent: a child does not have to count its siblings to number itself
    assert (
        '1. <promise topic="Keep a regular schedule" tokens="20"/><async>Keep a regular schedule: go to bed and '
        "get up at the same time every day, weekends included.\n</async>2. <promise " in text
    )


def test_nested_items_stay_in_their_item() -> None:
    text = StructuralAnnotator().annotate("prompt", NESTED).text
    assert text is not None
    assert (
        '1. <promise topic="Research the company" tokens="20"/><async>Research the company:\n'
        "   - read its annual report and recent news,\n"
        "   - look at the team on LinkedIn.\n</async>" in text
    )


def test_conclusion_heading_is_not_forked() -> None:
    text = StructuralAnnotator().annotate("prompt", HEADINGS).text
    assert text is not None
    assert text.index("<sync/>") < text.index("## Summary")
    assert text.index("Remote work has clear benefits") < text.index("<promise")


def test_short_parts_stay_in_the_main_thread() -> None:
    text = StructuralAnnotator().annotate("prompt", MIXED_LENGTHS).text
    assert text is not None
    assert "</async>2. Socks.\n3. <promise " in text


def test_topics_are_escaped() -> None:
    annotation = StructuralAnnotator().annotate("prompt", QUOTES)
    promises = _check_annotation(QUOTES, annotation)
    assert annotation.text is not None and "&quot;" in annotation.text
    assert [p.topic for p in promises] == ['"Thank you" & "please"', '"Where is <the station>']


def test_text_that_reads_as_a_tag_gives_none() -> None:
    annotation = StructuralAnnotator().annotate("prompt", CODE_WITH_TAG)
    assert annotation.text is None and annotation.forks == 0
    assert "<async>" in annotation.reason and "tag" in annotation.reason
    for response in ('Write <promise topic="a"/> here.', "Done.<sync/>", "a\n</async>\n"):
        assert StructuralAnnotator().annotate("prompt", response).text is None


def test_lookalike_tags_are_plain_text() -> None:
    response = "Use <asyncio>, <div> and a < b; <promises> are text too, and so is <SYNC/>.\n"
    annotation = StructuralAnnotator().annotate("prompt", response)
    assert annotation.text == response and annotation.forks == 0


def test_options() -> None:
    assert StructuralAnnotator(min_parts=6).annotate("prompt", NUMBERED).forks == 0
    assert StructuralAnnotator(min_part_tokens=1).annotate("prompt", SHORT_PARTS).forks == 4
    annotator = StructuralAnnotator(count_tokens=lambda s: 4 * len(s.split()), round_to=50)
    promises = _promises(parse(annotator.annotate("prompt", NUMBERED).text or ""))
    assert promises and all(p.tokens is not None and p.tokens % 50 == 0 for p in promises)
    assert StructuralAnnotator().tokens("one two three") == 10  # at least one unit
    assert StructuralAnnotator().tokens(" ".join(["w"] * 15)) == 20  # halves round up
    assert StructuralAnnotator().tokens(" ".join(["w"] * 14)) == 10


def test_make_topic() -> None:
    assert make_topic("1. **Retrieval practice.** Test yourself.\n") == "Retrieval practice"
    assert make_topic("## 2. Know where your money goes\nText.\n") == "Know where your money goes"
    assert make_topic("- Restart the router: unplug it for 30 seconds.\n") == "Restart the router"
    assert make_topic("Step 3: Pick `git add -p` for hunks.\n") == "Pick git add -p"
    assert make_topic("- Socks.\n", 4) == "part 4: Socks"
    assert make_topic("**Interleaving.** Mix different types of problems.\n") == "Interleaving: Mix different types"


def test_bench_replay_answers_round_trip() -> None:
    """The hand-annotated bench answers, rendered and annotated again: valid, and forked unless trivial."""
    annotator = StructuralAnnotator()
    for line in (ROOT / "pastac" / "bench" / "replay.jsonl").read_text(encoding="utf-8").splitlines():
        item = json.loads(line)
        response = render(parse(item["text"]))
        annotation = annotator.annotate(item["prompt"], response)
        _check_annotation(response, annotation)
        assert (annotation.forks > 0) == (item["shape"] != "none"), (item["id"], annotation.reason)


def test_annotators_share_one_interface() -> None:
    annotators: list[Annotator] = [StructuralAnnotator(), LLMAnnotator(lambda prompt: "")]
    assert [a.name for a in annotators] == ["structural", "llm"]


# ------------------------------------------------------------------------------------------ LLM annotator

GOOD = StructuralAnnotator().annotate("prompt", NUMBERED).text or ""


def _fake(reply: str) -> tuple[LLMAnnotator, list[str]]:
    seen: list[str] = []

    def generate(prompt: str) -> str:
        seen.append(prompt)
        return reply

    return LLMAnnotator(generate), seen


def test_llm_accepts_a_valid_annotation() -> None:
    annotator, seen = _fake(GOOD)
    annotation = annotator.annotate("How do I sleep better?", NUMBERED)
    assert annotation == Annotation(GOOD.strip(), 5, "the model forked 5 parts")
    assert len(seen) == 1 and "How do I sleep better?" in seen[0] and NUMBERED.strip() in seen[0]
    for prompt, response, annotated in DEFAULT_FEW_SHOT:
        assert prompt in seen[0] and response.strip() in seen[0] and annotated.strip() in seen[0]


def test_llm_accepts_fenced_output() -> None:
    for fence in ("```\n", "```pasta\n", "~~~xml\n"):
        annotator, _ = _fake(f"{fence}{GOOD}{fence[:3]}\n")
        annotation = annotator.annotate("prompt", NUMBERED)
        assert annotation.forks == 5 and annotation.text == GOOD.strip()


def test_llm_accepts_white_space_differences() -> None:
    annotator, _ = _fake(GOOD.replace("\n", "\n\n"))
    annotation = annotator.annotate("prompt", NUMBERED)
    assert annotation.forks == 5 and annotation.text is not None


@pytest.mark.parametrize(
    ("reply", "problem"),
    [
        ("I'm sorry, I cannot do that.", "rendered text differs"),
        (GOOD.replace("dark, quiet and cool", "dark and quiet"), "rendered text differs"),
        (GOOD.replace("</async><sync/>", "<sync/>"), "E"),
        (GOOD.replace('tokens="', 'tokens="x'), "E203"),
        ("", "rendered text differs"),
    ],
    ids=["garbage", "modified", "unclosed", "bad-tokens", "empty"],
)
def test_llm_rejects_invalid_output(reply: str, problem: str) -> None:
    annotator, _ = _fake(reply)
    annotation = annotator.annotate("prompt", NUMBERED)
    assert annotation.text == NUMBERED and annotation.forks == 0
    assert annotation.reason.startswith("model output rejected") and problem in annotation.reason


def test_llm_no_fork_returns_the_response() -> None:
    annotator, _ = _fake(FACTUAL.strip())
    assert annotator.annotate("prompt", FACTUAL) == Annotation(FACTUAL, 0, "the model forked nothing")


def test_llm_skips_responses_with_tags() -> None:
    annotator, seen = _fake(GOOD)
    annotation = annotator.annotate("prompt", CODE_WITH_TAG)
    assert annotation.text is None and not seen


def test_default_few_shot_examples_are_valid() -> None:
    assert 2 <= len(DEFAULT_FEW_SHOT) <= 3
    for _, response, annotated in DEFAULT_FEW_SHOT:
        assert validate(response, annotated) == []
        assert render(parse(annotated)) == response
    assert any(response == annotated for _, response, annotated in DEFAULT_FEW_SHOT)


def test_validate_reports_problems() -> None:
    assert validate("a b", "a  b\n") == []
    assert validate("a", "b") == ["rendered text differs from the response"]
    problems = validate("x", '<promise topic="t"/>x')
    assert problems and problems[0].startswith("E304")


def test_openai_generate_errors() -> None:
    generate = openai_generate("http://127.0.0.1:9/v1/", "some-model", api_key="k", timeout=2)
    with pytest.raises(RuntimeError, match=r"http://127\.0\.0\.1:9/v1/chat/completions"):
        generate("hello")
    with pytest.raises(ValueError):
        openai_generate("file:///etc/passwd", "m")
