"""The specification agrees with the code.

- specs/pasta-lang.md embeds pastac/grammar/pasta.lark verbatim, in one ```lark block;
- its error-code table (§10) lists exactly the codes of ``CODES``, each row as ``CODES`` says
  (code markup aside), and every code also appears in a section that states its rule;
- every code is exercised by a conformance case.
"""

from __future__ import annotations

import re
from pathlib import Path

from pastac.grammar import CODES

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "specs" / "pasta-lang.md"
GRAMMAR = ROOT / "pastac" / "grammar" / "pasta.lark"
SUITE = ROOT / "specs" / "conformance"


def spec_text() -> str:
    return SPEC.read_bytes().decode("utf-8")  # bytes: no newline translation


def sections() -> dict[str, str]:
    """Top-level section title (``## 10. Error codes`` -> ``Error codes``) -> its text."""
    parts = re.split(r"^## \d+\. (.+)$", spec_text(), flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def code_table() -> list[list[str]]:
    """The rows of the §10 table, as cells with the code markup (backticks) removed."""
    rows = []
    for line in sections()["Error codes"].splitlines():
        if re.match(r"\|\s*E\d{3}\s*\|", line):
            rows.append([cell.strip().replace("`", "") for cell in line.strip().strip("|").split("|")])
    return rows


def test_grammar_is_embedded_verbatim() -> None:
    blocks = re.findall(r"^```lark\n(.*?)^```$", spec_text(), flags=re.MULTILINE | re.DOTALL)
    assert len(blocks) == 1, "the spec must hold exactly one ```lark block"
    assert blocks[0].encode("utf-8") == GRAMMAR.read_bytes()


def test_code_table_matches_codes() -> None:
    rows = code_table()
    codes = [row[0] for row in rows]
    assert len(codes) == len(set(codes)), "a code is listed twice"
    assert set(codes) == set(CODES)
    for code, name, rule, recovery in rows:
        assert (name, rule, recovery) == (CODES[code].name, CODES[code].rule, CODES[code].recovery), code


def test_every_code_has_its_rule_stated() -> None:
    rules = "".join(text for title, text in sections().items() if title not in ("Modes", "Error codes"))
    assert not [code for code in CODES if not re.search(rf"\b{code}\b", rules)]


def test_every_code_has_a_conformance_case() -> None:
    diagnostics = "".join(path.read_bytes().decode("utf-8") for path in SUITE.rglob("*.diag"))
    assert not [code for code in CODES if f"[{code}]" not in diagnostics]
