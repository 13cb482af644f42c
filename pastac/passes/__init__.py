"""Scheduling passes over the IR, one per file, and the pass manager.

The standard pipeline, in order: ``positions``, ``visibility``,
``resolution-order`` (the schedule), ``width``, ``critical-path``.
``training_layout`` turns an annotated document's positions and visibility
into the trainer's tensors (``Layout.mask``, ``Layout.position_ids``), with
the position arithmetic (``PositionRule``) and the visibility owner
(``pastac.backend.visibility.Views``) the runtime decodes with.
"""

from pastac.passes.critical_path import DEFAULT_STEP_COST, CriticalPath, CriticalPathPass, StepCost, critical_path
from pastac.passes.manager import Pass, PassError, PassManager, PassResults
from pastac.passes.positions import Policy, PositionOptions, Positions, PositionsPass, assign_positions
from pastac.passes.resolution_order import Order, ResolutionOrderPass, Schedule, ScheduleOptions, schedule
from pastac.passes.visibility import Visibility, VisibilityPass, visibility
from pastac.passes.width import Width, WidthPass, width


def standard_pipeline(
    positions: PositionOptions = PositionOptions(),
    plan: ScheduleOptions = ScheduleOptions(),
    cost: StepCost = DEFAULT_STEP_COST,
) -> list[Pass]:
    """The standard passes, in order, with these options."""
    return [PositionsPass(positions), VisibilityPass(), ResolutionOrderPass(plan), WidthPass(), CriticalPathPass(cost)]


__all__ = [
    "DEFAULT_STEP_COST",
    "CriticalPath",
    "CriticalPathPass",
    "Layout",
    "Order",
    "Pass",
    "PassError",
    "PassManager",
    "PassResults",
    "Policy",
    "PositionOptions",
    "Positions",
    "PositionsPass",
    "ResolutionOrderPass",
    "Schedule",
    "ScheduleOptions",
    "StepCost",
    "Visibility",
    "VisibilityPass",
    "Width",
    "WidthPass",
    "assign_positions",
    "critical_path",
    "schedule",
    "standard_pipeline",
    "training_layout",
    "visibility",
    "visibility_mask",
    "width",
]


_LAYOUT = ("Layout", "training_layout", "visibility_mask")


def __getattr__(name: str) -> object:
    # The tensor layout needs torch; importing it only on first use keeps the front end and the
    # command line's analysis commands quick to start.
    if name in _LAYOUT:
        from pastac.passes import layout

        return getattr(layout, name)
    raise AttributeError(f"module 'pastac.passes' has no attribute {name!r}")
