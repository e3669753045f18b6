"""Rollouts from the true simulator: the oracle planner, the bound a perfect model would reach.

Each action sequence is run from the current state, which is restored afterwards (the environment's
``get_sim_state`` / ``set_sim_state``). The oracle plans with the same CEM and the same cost as the model
planners; only where its rollouts come from differs.
"""
from __future__ import annotations

import numpy as np
import torch

from foresight.errors import ForesightError
from foresight.planning import suites
from foresight.planning.costs import Rollout


class _Simulator:
    """What both oracles share: the simulator and nothing to show."""

    model_seconds = 0.0

    def __init__(self, env, suite):
        self.sim = env.unwrapped
        if not hasattr(self.sim, "set_sim_state"):
            raise ForesightError(f"planner 'oracle': {suite.env} cannot save and restore its state (no set_sim_state)")

    def observe(self, obs, info, action) -> None:
        pass

    def chosen(self, plan) -> None:
        pass

    def pictures(self, step: int, scale: int) -> list[np.ndarray]:
        return []


class SimulatorPixels(_Simulator):
    """The designated objects' true pixels (camera pixels) after each action (``rollout_points``)."""

    def __init__(self, env, suite, task):
        super().__init__(env, suite)
        self.objects = task.indices
        self.agent_path = getattr(self.sim, "agent_path", None)

    def begin(self, obs, info) -> None:
        self.now = np.asarray(info["points"][self.objects], np.float32)

    def __call__(self, actions: torch.Tensor) -> Rollout:
        points = torch.as_tensor(self.sim.rollout_points(actions.numpy()))[:, :, self.objects]  # (N, T, K, 2)
        return Rollout(actions=actions, points=points, now=self.now, agent_path=self.agent_path)


class SimulatorGoalDistance(_Simulator):
    """The true state's squared distance to the goal region's centre after each action (goal-image suites)."""

    def __init__(self, env, suite, task):
        super().__init__(env, suite)
        self.suite, self.task = suite, task

    def begin(self, obs, info) -> None:
        pass

    def __call__(self, actions: torch.Tensor) -> Rollout:
        u = actions.numpy()
        start, to_goal = self.sim.get_sim_state(), np.zeros(u.shape[:2])
        try:
            for n, sequence in enumerate(u):
                self.sim.set_sim_state(start)
                for t, action in enumerate(sequence):
                    _, _, _, _, info = self.sim.step(action)  # unwrapped: no time limit counts these
                    to_goal[n, t] = suites.region_distance(self.suite, self.task, info) ** 2
        finally:
            self.sim.set_sim_state(start)
        return Rollout(actions=actions, to_goal=torch.as_tensor(to_goal))
