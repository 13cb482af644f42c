"""The ``pastac`` command line.

- ``common``: what every command shares: the usage error, the exit codes, argument types, reading inputs;
- ``options``: the option groups several commands take (model, adapter, device and dtype, kernels, budgets,
  sampling, penalty, guard, positions, width), each declared once;
- ``language``: the language commands (check, render, fmt, plan, graph, stats);
- ``main``: the entry point, which assembles the language commands and each package's ``add_parser``
  (``pastac.runtime.command``, ``pastac.bench.command``, ``pastac.data.command``, ``pastac.train.command``,
  ``pastac.evaluation.command``).

Command modules import ``common`` and ``options`` only; nothing imports ``main`` but the entry points, so the
command line has no import cycle (``tests/test_imports.py``).  This module imports nothing.
"""
