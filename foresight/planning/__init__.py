"""Planning: the CEM optimizer and costs (model-agnostic), the MPC loop and task suites built on them.

A planner sees a model only through one function, action sequences (N, H, A) -> costs (N,).
"""
from foresight.planning.cem import CEM, CEMConfig, PlanResult, colored_noise, repeat_actions  # noqa: F401
from foresight.planning.costs import (  # noqa: F401
    DesignatedPixelCost,
    designated_pixel_cost,
    goal_image_cost,
    step_weights,
)
