"""pastac's import graph has no cycle, and the command line is layered: commands import its shared pieces only.

Imports inside functions count (a lazy import that closes a cycle is still one); those under
``if TYPE_CHECKING:`` do not (they never run).  The graph is grimp's, the cycles networkx's.
"""

from __future__ import annotations

import sys
from pathlib import Path

import grimp
import networkx as nx
import pytest


def import_graph(package: str) -> nx.DiGraph:
    graph = grimp.build_graph(package, exclude_type_checking_imports=True, cache_dir=None)
    out = nx.DiGraph()
    out.add_nodes_from(graph.modules)
    for module in graph.modules:
        out.add_edges_from((module, imported) for imported in graph.find_modules_directly_imported_by(module))
    return out


def cycles(graph: nx.DiGraph) -> list[list[str]]:
    """The groups of modules that import each other, directly or not."""
    return sorted(sorted(group) for group in nx.strongly_connected_components(graph) if len(group) > 1)


def test_pastac_has_no_import_cycle() -> None:
    found = cycles(import_graph("pastac"))
    assert not found, "import cycles:\n" + "\n".join(" <-> ".join(group) for group in found)


def test_only_the_entry_points_import_the_command_line_entry() -> None:
    graph = import_graph("pastac")
    importers = set(graph.predecessors("pastac.cli.main"))
    assert importers <= {"pastac.__main__"}
    # the language commands are assembled by the entry point alone
    assert set(graph.predecessors("pastac.cli.language")) == {"pastac.cli.main"}


def test_the_cycle_check_finds_a_cycle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "cyclic"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("def f():\n    from cyclic import b\n")  # a lazy import closes it
    (package / "b.py").write_text("from cyclic import c\n")
    (package / "c.py").write_text("import cyclic.a\n")
    (package / "d.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from cyclic import a\n")
    (package / "e.py").write_text("from cyclic import d\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        assert cycles(import_graph("cyclic")) == [["cyclic.a", "cyclic.b", "cyclic.c"]]
    finally:
        for name in [m for m in sys.modules if m == "cyclic" or m.startswith("cyclic.")]:
            del sys.modules[name]


def test_every_package_pastac_imports_is_a_declared_dependency() -> None:
    """A third-party module pastac imports (anywhere, lazily included) comes from a distribution that
    pyproject.toml declares: one that only arrives as another's dependency may be gone on the next release."""
    import importlib.metadata
    import re
    import tomllib

    root = Path(__file__).resolve().parent.parent
    project = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))["project"]

    def name(distribution: str) -> str:  # PEP 503: prometheus-client and prometheus_client are one
        return re.sub(r"[-_.]+", "-", distribution).lower()

    # an optional extra's packages count too: pastac imports them only where that extra is asked for
    # (llama_cpp, pastac[llamacpp], for `pastac bench --strategies llamacpp`); the test tools' extras do not
    requirements = [*project["dependencies"]] + [
        requirement
        for extra, listed in project.get("optional-dependencies", {}).items()
        if extra not in ("test", "dev")
        for requirement in listed
    ]
    declared = {name(re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0]) for requirement in requirements}
    graph = grimp.build_graph(
        "pastac", include_external_packages=True, exclude_type_checking_imports=True, cache_dir=None
    )
    distributions = importlib.metadata.packages_distributions()
    # an extra's package need not be installed here, and then nothing maps its import name to its distribution
    absent = {"llama_cpp": ["llama-cpp-python"]}
    imported = {m.split(".")[0] for m in graph.modules if not m.startswith("pastac")} - set(sys.stdlib_module_names)
    missing = {
        module: distributions.get(module)
        for module in imported
        if not {name(d) for d in distributions.get(module) or absent.get(module, [module])} & declared
    }
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"
