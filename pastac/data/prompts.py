"""A reproducible, offline instruction set for annotated-data generation, and the ``prompts`` step that writes it.

Prompts come from hand-written templates filled in from hand-written lists (topics, tasks, pairs,
places, numbers).  The lists are data, shipped beside this module in ``prompt_words.toml`` and read once
per process; the templates stay here, next to the code that fills in their fields.  Everything that
varies is drawn from ``random.Random`` seeded with a fixed integer, candidates are built in list order
(never from a set or a dict keyed by a str hash), and the split is a SHA-256 hash of the normalised
prompt, so ``build_prompts()`` gives the same records on every run and every machine.

Five categories call for answers with independent parts that a model should decode in parallel
(``list``, ``howto``, ``comparison``, ``explanation``, ``plan``); four call for short or sequential
answers that should not fork (``factual``, ``sentence``, ``arithmetic``, ``code``).
"""

from __future__ import annotations

import functools
import hashlib
import random
import tomllib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Literal

from pastac import jsonl
from pastac.data.step import PROMPT_RECORDS, PipelineError, StepResult

Split = Literal["train", "validation", "test"]
SPLITS: tuple[Split, ...] = ("train", "validation", "test")

#: Category -> whether a good answer has independent parts (forks).
FORKABLE: dict[str, bool] = {
    "list": True,
    "howto": True,
    "comparison": True,
    "explanation": True,
    "plan": True,
    "factual": False,
    "sentence": False,
    "arithmetic": False,
    "code": False,
}
CATEGORIES: tuple[str, ...] = tuple(FORKABLE)

#: How many prompts each category contributes (70% forkable).
COUNTS: dict[str, int] = {
    "list": 500,
    "howto": 300,
    "comparison": 300,
    "explanation": 300,
    "plan": 280,
    "factual": 220,
    "sentence": 180,
    "arithmetic": 150,
    "code": 170,
}

DEFAULT_SEED = 20250511
_SPLIT_SALT = "pastac-prompts-split-v1"


@dataclass(frozen=True)
class PromptRecord:
    """One instruction: a stable id, the prompt text, its category, whether it should fork, its split."""

    id: str
    prompt: str
    category: str
    forkable: bool
    split: Split

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)}, not {self.split!r}")
        if self.category not in FORKABLE:
            raise ValueError(f"unknown category {self.category!r}")


def normalise(text: str) -> str:
    """Lower case, white space collapsed: the key for distinctness and for the split."""
    return " ".join(text.lower().split())


def assign_split(prompt: str) -> Split:
    """The split of a prompt: 90% train, 5% validation, 5% test, by a stable hash of its normalised text."""
    digest = hashlib.sha256(f"{_SPLIT_SALT}\n{normalise(prompt)}".encode()).digest()
    bucket = int.from_bytes(digest[:8], "big") % 1000
    if bucket < 900:
        return "train"
    return "validation" if bucket < 950 else "test"


# --------------------------------------------------------------------------------------------- word lists

#: The word lists' file, shipped in this package.
WORDS_FILE = "prompt_words.toml"


@dataclass(frozen=True)
class WordLists:
    """The lists the templates are filled in from (``WORDS_FILE``, one field per list), in the file's order."""

    activities: tuple[str, ...]
    howto_tasks: tuple[str, ...]
    comparison_pairs: tuple[tuple[str, str], ...]
    phenomena: tuple[str, ...]
    concepts: tuple[str, ...]
    cities: tuple[str, ...]
    study_subjects: tuple[str, ...]
    fitness_goals: tuple[str, ...]
    diets: tuple[str, ...]
    households: tuple[str, ...]
    events: tuple[str, ...]
    countries: tuple[str, ...]
    books: tuple[str, ...]
    elements: tuple[str, ...]
    history_events: tuple[str, ...]
    unit_questions: tuple[str, ...]
    paintings: tuple[str, ...]
    misc_facts: tuple[str, ...]
    products: tuple[str, ...]
    terms: tuple[str, ...]
    relations: tuple[str, ...]
    code_tasks: tuple[str, ...]
    languages: tuple[str, ...]


@functools.cache
def word_lists() -> WordLists:
    """The word lists shipped with pastac, read once per process (a list or a key too many or too few in the
    file raises ``TypeError``)."""
    table = tomllib.loads(resources.files("pastac.data").joinpath(WORDS_FILE).read_text(encoding="utf-8"))
    return WordLists(
        **{
            name: tuple(tuple(item) if isinstance(item, list) else item for item in items)
            for name, items in table.items()
        }
    )


# ------------------------------------------------------------------------------------------------ templates

_NUMBER_WORDS = (
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
)

_LIST_TEMPLATES: tuple[tuple[str, bool], ...] = (  # (template, number written as a word)
    ("Give me {n} tips for {a}.", True),
    ("List {n} ways to get better at {a}.", False),
    ("What are {n} common mistakes to avoid when {a}?", True),
    ("Share {n} practical tips for {a}.", False),
    ("Suggest {n} habits that help with {a}.", True),
    ("What are the {n} most important things to know about {a}?", True),
    ("I'm new to {a}. Give me {n} pieces of advice.", False),
    ("List {n} tools or resources that help with {a}.", False),
    ("Name {n} myths about {a} and explain why each is wrong.", True),
    ("What are {n} quick wins for someone who wants to improve at {a}?", False),
)

_HOWTO_TEMPLATES: tuple[str, ...] = (
    "How do I {t}?",
    "What steps should I take to {t}?",
    "Walk me through how to {t}.",
    "Give me step-by-step instructions to {t}.",
    "I need to {t}. What should I do?",
    "What's the best way to {t}? Break it into steps.",
)

_COMPARISON_TEMPLATES: tuple[str, ...] = (
    "Compare {a} and {b}.",
    "What are the differences between {a} and {b}?",
    "Should I choose {a} or {b}? Explain the pros and cons of each.",
    "How does {a} differ from {b}?",
    "Give me a side-by-side comparison of {a} and {b}.",
)

_PHENOMENON_TEMPLATES: tuple[str, ...] = (
    "Explain the causes and effects of {x}.",
    "What are the main causes and consequences of {x}?",
    "Give an overview of {x}: its causes, its effects and what can be learned from it.",
)

_CONCEPT_TEMPLATES: tuple[str, ...] = (
    "Give me an overview of {x}, covering the basic idea, the benefits and the drawbacks.",
    "What are the advantages and disadvantages of {x}?",
    "Explain {x} from several angles: the basic idea, practical uses and common misconceptions.",
    "Describe {x}: the key concepts, real-world applications and main criticisms.",
)

_TRIP_TEMPLATES: tuple[str, ...] = (
    "Plan a {n}-day trip to {c}.",
    "Make an itinerary for {n} days in {c} for a family with young children.",
    "Plan a {n}-day budget trip to {c}.",
)

_STUDY_TEMPLATES: tuple[str, ...] = (
    "Make a weekly study plan for {s}.",
    "Create a {n}-week plan to learn {s} from scratch.",
)

_FITNESS_TEMPLATES: tuple[str, ...] = (
    "Create a {n}-week training plan to {g}.",
    "Design a weekly workout plan to help me {g}.",
)

_EVENT_TEMPLATES: tuple[str, ...] = (
    "Plan {e}: list what needs to be done in the weeks before.",
    "Make a timeline for organising {e}.",
)

_SENTENCE_TEMPLATES: tuple[tuple[str, str], ...] = (  # (template, which list fills {x})
    ("Write a one-sentence slogan for {x}.", "product"),
    ("Suggest a catchy one-line tagline for {x}.", "product"),
    ("Give me a one-line definition of {x}.", "term"),
    ("Define {x} in a single sentence.", "term"),
    ("Write a one-sentence birthday message for my {x}.", "relation"),
    ("Write a one-sentence thank-you note to my {x}.", "relation"),
    ("In one sentence, why does {x} matter?", "activity"),
)

_CODE_TEMPLATES: tuple[str, ...] = (
    "Write a {lang} function that {task}.",
    "Implement a small {lang} function that {task}.",
)


# ----------------------------------------------------------------------------------------------- generators


def _number(rng: random.Random, low: int, high: int, *, word: bool) -> str:
    n = rng.randint(low, high)
    return _NUMBER_WORDS[n] if word else str(n)


def _list_prompts(rng: random.Random, words: WordLists) -> list[str]:
    out = []
    for activity in words.activities:
        for template, word in _LIST_TEMPLATES:
            out.append(template.format(n=_number(rng, 3, 10, word=word), a=activity))
    return out


def _howto_prompts(rng: random.Random, words: WordLists) -> list[str]:
    return [template.format(t=task) for task in words.howto_tasks for template in _HOWTO_TEMPLATES]


def _comparison_prompts(rng: random.Random, words: WordLists) -> list[str]:
    out = []
    for a, b in words.comparison_pairs:
        for template in _COMPARISON_TEMPLATES:
            # Either order: "Compare tea and coffee" and "Compare coffee and tea" are both natural, except
            # where the second item carries a qualifier ("dogs as pets") that only reads well last.
            first, second = (b, a) if rng.random() < 0.3 and " " not in b else (a, b)
            out.append(template.format(a=first, b=second))
    return out


def _explanation_prompts(rng: random.Random, words: WordLists) -> list[str]:
    out = [template.format(x=x) for x in words.phenomena for template in _PHENOMENON_TEMPLATES]
    out += [template.format(x=x) for x in words.concepts for template in _CONCEPT_TEMPLATES]
    return out


def _plan_prompts(rng: random.Random, words: WordLists) -> list[str]:
    out = [template.format(n=rng.randint(2, 7), c=city) for city in words.cities for template in _TRIP_TEMPLATES]
    out += [template.format(n=rng.randint(4, 12), s=s) for s in words.study_subjects for template in _STUDY_TEMPLATES]
    out += [template.format(n=rng.randint(4, 12), g=g) for g in words.fitness_goals for template in _FITNESS_TEMPLATES]
    out += [f"Plan a week of {diet} dinners for {who}." for diet in words.diets for who in words.households]
    out += [template.format(e=e) for e in words.events for template in _EVENT_TEMPLATES]
    return out


def _factual_prompts(rng: random.Random, words: WordLists) -> list[str]:
    out = [f"What is the capital of {c}?" for c in words.countries]
    out += [f"What is the official currency of {c}?" for c in words.countries]
    out += [f"Who wrote {b}?" for b in words.books]
    out += [f"What is the chemical symbol for {e}?" for e in words.elements]
    out += [f"In which year did {e}?" for e in words.history_events]
    out += [f"Who painted {p}?" for p in words.paintings]
    out += list(words.unit_questions) + list(words.misc_facts)
    return out


def _sentence_prompts(rng: random.Random, words: WordLists) -> list[str]:
    sources: dict[str, Sequence[str]] = {
        "product": words.products,
        "term": words.terms,
        "relation": words.relations,
        "activity": words.activities,
    }
    return [template.format(x=x) for template, source in _SENTENCE_TEMPLATES for x in sources[source]]


def _arithmetic_prompt(rng: random.Random) -> str:
    kind = rng.randrange(8)
    if kind == 0:
        return f"What is {rng.randint(12, 999)} + {rng.randint(12, 999)}?"
    if kind == 1:
        a, b = sorted((rng.randint(10, 999), rng.randint(10, 999)), reverse=True)
        return f"What is {a} minus {b}?"
    if kind == 2:
        return f"What is {rng.randint(3, 99)} × {rng.randint(3, 49)}?"
    if kind == 3:
        b = rng.randint(2, 25)
        return f"What is {b * rng.randint(2, 60)} divided by {b}?"
    if kind == 4:
        return f"What is {rng.choice((5, 10, 15, 20, 25, 30, 40, 50, 75))}% of {rng.randint(2, 80) * 10}?"
    if kind == 5:
        return f"Convert {rng.randint(-20, 45)} degrees Celsius to Fahrenheit."
    if kind == 6:
        count, cents = rng.randint(2, 12), rng.randint(50, 2000)
        return f"If one notebook costs ${cents // 100}.{cents % 100:02d}, how much do {count} notebooks cost?"
    return f"What is the average of {rng.randint(1, 99)}, {rng.randint(1, 99)} and {rng.randint(1, 99)}?"


def _arithmetic_prompts(rng: random.Random, words: WordLists) -> list[str]:
    return [_arithmetic_prompt(rng) for _ in range(3 * COUNTS["arithmetic"])]


def _code_prompts(rng: random.Random, words: WordLists) -> list[str]:
    return [
        template.format(lang=lang, task=task)
        for task in words.code_tasks
        for lang in words.languages
        for template in _CODE_TEMPLATES
    ]


_GENERATORS: dict[str, Callable[[random.Random, WordLists], list[str]]] = {
    "list": _list_prompts,
    "howto": _howto_prompts,
    "comparison": _comparison_prompts,
    "explanation": _explanation_prompts,
    "plan": _plan_prompts,
    "factual": _factual_prompts,
    "sentence": _sentence_prompts,
    "arithmetic": _arithmetic_prompts,
    "code": _code_prompts,
}


def _take_distinct(candidates: Iterable[str], count: int, seen: set[str]) -> list[str]:
    """The first ``count`` candidates whose normalised text is not in ``seen`` (which is updated)."""
    out = []
    for text in candidates:
        key = normalise(text)
        if key in seen:
            continue
        seen.add(key)
        out.append(text)
        if len(out) == count:
            break
    return out


def build_prompts(seed: int = DEFAULT_SEED) -> list[PromptRecord]:
    """The whole instruction set, identical on every run for a given seed, in category order."""
    words = word_lists()
    records: list[PromptRecord] = []
    seen: set[str] = set()  # membership only: never iterated, so its order does not matter
    for index, category in enumerate(CATEGORIES):
        rng = random.Random(seed * 100 + index)
        candidates = _GENERATORS[category](rng, words)
        rng.shuffle(candidates)
        chosen = _take_distinct(candidates, COUNTS[category], seen)
        if len(chosen) < COUNTS[category]:
            raise RuntimeError(f"category {category!r}: only {len(chosen)} distinct prompts, {COUNTS[category]} wanted")
        for i, prompt in enumerate(chosen):
            records.append(
                PromptRecord(f"{category}-{i:05d}", prompt, category, FORKABLE[category], assign_split(prompt))
            )
    return records


def write_prompts(out: str | Path, seed: int = DEFAULT_SEED) -> StepResult:
    """Append the built-in prompt set's records (``build_prompts(seed)``) that ``out`` does not hold yet."""
    out = Path(out)
    done = jsonl.resume(out, PROMPT_RECORDS)
    records = build_prompts(seed)
    for record in records:
        if record.id in done and done[record.id].get("prompt") != record.prompt:
            raise PipelineError(
                f"'{out}' holds another prompt under id {record.id!r} (made with another --seed?); "
                f"name another output file"
            )
    new = [record for record in records if record.id not in done]
    with jsonl.appending(out) as write:
        for record in new:
            write(asdict(record))
    return StepResult("prompts", out, len(new), len(records) - len(new))


# --------------------------------------------------------------------------------------------------- JSONL


def write_jsonl(records: Iterable[PromptRecord], path: str | Path) -> None:
    """Write one JSON object per line (the dataclass fields), UTF-8, replacing the file atomically."""
    jsonl.write_records(path, [asdict(record) for record in records])


def read_jsonl(path: str | Path) -> list[PromptRecord]:
    """Read records written by ``write_jsonl`` (blank lines are skipped)."""
    out = []
    for number, record in jsonl.parse(Path(path).read_text(encoding="utf-8")):
        if isinstance(record, str):
            raise ValueError(f"{path}:{number}: {record}")
        out.append(PromptRecord(**record))
    return out
