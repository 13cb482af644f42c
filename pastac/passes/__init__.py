"""Scheduling passes over the IR, one per file, and the pass manager.

The standard pipeline, in order: ``positions``, ``visibility``,
``resolution-order`` (the schedule), ``width``, ``critical-path``.
"""

from pastac.passes.critical_path import DEFAULT_STEP_COST, CriticalPath, CriticalPathPass, StepCost, critical_path
from pastac.passes.manager import Pass, PassError, PassManager, PassResults
from pastac.passes.positions import Policy, PositionOptions, Positions, PositionsPass, assign_positions
from pastac.passes.resolution_order import Order, ResolutionOrderPass, Schedule, ScheduleOptions, schedule
from pastac.passes.visibility import Visibility, VisibilityPass, ancestors
from pastac.passes.width import Width, WidthPass, width


def standard_pipeline(
    positions: PositionOptions = PositionOptions(),
    plan: ScheduleOptions = ScheduleOptions(),
    cost: StepCost = DEFAULT_STEP_COST,
) -> list[Pass]:
    return [PositionsPass(positions), VisibilityPass(), ResolutionOrderPass(plan), WidthPass(), CriticalPathPass(cost)]


__all__ = [
    "DEFAULT_STEP_COST", "CriticalPath", "CriticalPathPass", "Order", "Pass", "PassError", "PassManager",
    "PassResults", "Policy", "PositionOptions", "Positions", "PositionsPass", "ResolutionOrderPass", "Schedule",
    "ScheduleOptions", "StepCost", "Visibility", "VisibilityPass", "Width", "WidthPass", "ancestors",
    "assign_positions", "critical_path", "schedule", "standard_pipeline", "width",
]
