"""The LLM annotator: asks a language model to write the response in Pasta-Lang, and keeps a valid answer only.

The model (any ``str -> str`` callable; ``openai_generate`` makes one for an OpenAI-compatible server) gets a
description of the language and a few examples. Invariants: a reply is kept only if it validates against the
response; otherwise the response stays unchanged (no fork). Errors of ``generate`` (an unreachable server)
propagate: they are not the response's fault.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from pastac.data.annotate.annotation import Annotation, count_promises, tag_problem, unchanged, validate
from pastac.grammar import check

LANGUAGE_DESCRIPTION = """\
Pasta-Lang marks the parts of a response that can be written independently, so that they can be
generated in parallel. It has three tags:
- <promise topic="TOPIC" tokens="N"/> stands where an independent part belongs. TOPIC is a 2-6 word
  summary of the part; N is its approximate length in tokens, a multiple of 10.
- <async>PART</async> comes right after its promise and holds the exact text of the part.
- <sync/> comes after the last part of a group. Text after it (a conclusion) may depend on the parts.
Text before the first promise, such as an introduction, stays outside the tags, and so does a list
item's marker ("1. ", "- "): it goes just before the item's promise.
Fork only parts that do not depend on each other: list items, separate sections, steps that can be
written on their own. Do not fork short answers, single sentences, calculations or code: return them
unchanged. Every character of the response must be kept: removing the tags must give back the response.
In TOPIC write &quot; &amp; &lt; &gt; for the characters " & < >.
Reply with the annotated response only, with no comments before or after it."""

DEFAULT_FEW_SHOT: tuple[tuple[str, str, str], ...] = (
    (
        "How can I save money on groceries?",
        "A few habits make a big difference:\n"
        "1. Plan the week's meals before you shop and write a list, so you buy only what you will use.\n"
        "2. Compare the price per kilogram on the shelf label instead of the package price.\n"
        "3. Buy store brands for staples such as rice, flour, pasta and canned tomatoes.\n"
        "\nTogether these can cut a grocery bill by a fifth without eating any worse.\n",
        "A few habits make a big difference:\n"
        '1. <promise topic="plan meals and a list" tokens="20"/><async>Plan the week\'s meals before you shop '
        "and write a list, so you buy only what you will use.\n</async>"
        '2. <promise topic="compare unit prices" tokens="20"/><async>Compare the price per kilogram on the '
        "shelf label instead of the package price.\n</async>"
        '3. <promise topic="store brands for staples" tokens="20"/><async>Buy store brands for staples such as '
        "rice, flour, pasta and canned tomatoes.\n</async><sync/>"
        "\nTogether these can cut a grocery bill by a fifth without eating any worse.\n",
    ),
    (
        "What are the pros and cons of living in a big city?",
        "Big cities suit some people far better than others.\n\n"
        "**Pros.** There are more jobs and higher wages, public transport makes a car unnecessary, and "
        "museums, restaurants and concerts are always close by.\n\n"
        "**Cons.** Rent and everyday costs are high, flats are small, and noise, crowds and pollution wear "
        "many people down over time.\n\n"
        "Whether it is worth it depends on your career and on how much you value space and quiet.\n",
        "Big cities suit some people far better than others.\n\n"
        '<promise topic="pros of city life" tokens="30"/><async>**Pros.** There are more jobs and higher wages, '
        "public transport makes a car unnecessary, and museums, restaurants and concerts are always close "
        "by.\n\n</async>"
        '<promise topic="cons of city life" tokens="30"/><async>**Cons.** Rent and everyday costs are high, '
        "flats are small, and noise, crowds and pollution wear many people down over time.\n</async><sync/>"
        "\nWhether it is worth it depends on your career and on how much you value space and quiet.\n",
    ),
    (
        "What is the capital of Canada?",
        "The capital of Canada is Ottawa, in the province of Ontario.",
        "The capital of Canada is Ottawa, in the province of Ontario.",
    ),
)


def _block(prompt: str, response: str) -> str:
    return f"=== PROMPT ===\n{prompt.strip()}\n=== RESPONSE ===\n{response.strip()}\n=== ANNOTATED RESPONSE ===\n"


def _candidates(output: str) -> list[str]:
    """Readings of a model's reply: as it is, then without a label and without surrounding code fences."""
    text = output.strip()
    label = "=== ANNOTATED RESPONSE ==="
    if label in text:
        text = text[text.rindex(label) + len(label) :].strip()
    out = [text]
    if m := re.fullmatch(r"(`{3,}|~{3,})[^\n]*\n(.*?)\n?\1", text, re.DOTALL):
        out.append(m.group(2).strip())
    return out


class LLMAnnotator:
    """Asks a language model to annotate the response; keeps its answer only if it validates.  Errors of
    ``generate`` (an unreachable server) propagate."""

    name = "llm"

    def __init__(
        self, generate: Callable[[str], str], few_shot: Sequence[tuple[str, str, str]] = DEFAULT_FEW_SHOT
    ) -> None:
        self.generate = generate
        self.few_shot = tuple(few_shot)

    def build_prompt(self, prompt: str, response: str) -> str:
        """What the model is asked: the language's description, the examples, then this prompt and response."""
        parts = [LANGUAGE_DESCRIPTION, ""]
        for i, (p, r, annotated) in enumerate(self.few_shot, start=1):
            parts += [f"Example {i}:", _block(p, r) + annotated.strip(), ""]
        parts += ["Now annotate this response:", _block(prompt, response).rstrip("\n")]
        return "\n".join(parts) + "\n"

    def annotate(self, prompt: str, response: str) -> Annotation:
        """The model's annotation if one reading of its reply validates, else the response unchanged."""
        if problem := tag_problem(response):
            return unchanged(response, f"not forked: {problem}")
        output = self.generate(self.build_prompt(prompt, response))
        first_problem = ""
        for candidate in _candidates(output):
            problems = validate(response, candidate)
            if not problems:
                forks = count_promises(check(candidate).document)
                if forks == 0:
                    return Annotation(response, 0, "the model forked nothing")
                return Annotation(candidate, forks, f"the model forked {forks} parts")
            first_problem = first_problem or problems[0]
        return unchanged(response, f"model output rejected: {first_problem}")


def openai_generate(url: str, model: str, api_key: str | None = None, timeout: float = 120) -> Callable[[str], str]:
    """A ``generate`` function that sends the prompt to ``{url}/chat/completions`` (an OpenAI-compatible
    server, temperature 0; ``pastac.openai_client``, which retries on 429, 5xx and lost connections) and
    returns the reply's text; failures raise ``RuntimeError`` naming the URL, a URL that is not http:// or
    https:// ``ValueError``."""
    from pastac.openai_client import ChatRequest, OpenAIClient

    client = OpenAIClient(url, api_key=api_key, timeout=timeout)

    def generate(prompt: str) -> str:
        return client.chat(ChatRequest(prompt, model, temperature=0)).text

    return generate
