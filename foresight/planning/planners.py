"""Planners: one small interface (observe, then act), so that one MPC loop (``mpc.py``) runs any of them.

A planner is made for one task (``make``). The loop calls ``act(obs, info, steps)`` at each replan for the
actions to execute, and ``observe(obs, info, action)`` after each executed action. It reports ``replans`` and
``model_seconds`` and, for the videos, ``pictures(step, scale)``: its own panels for the step-th action executed
since the last plan (predicted frames, heat maps, decodings).

    random   uniform random decisions, each held cem.repeat steps
    CEM      ``CEMPlanner``: the shared CEM scoring rollouts with the suite's cost; the rollout source decides
             what the planner is: a video model ('model': designated pixels, or a goal image with the goal_image
             cost term), the simulator ('oracle'), a latent model ('cem')
    iLQR     ``latent.ILQRPlanner`` on a latent model's local linearisation ('ilqr')

The planner names of each suite kind are ``suites.PLANNERS[kind]``; what each needs of a model is checked in
``check``.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from foresight.errors import ForesightError
from foresight.planning import oracle
from foresight.planning.cem import CEM, repeat_actions
from foresight.planning.suites import PLANNERS
from foresight.planning.costs import CostContext, build_cost
from foresight.planning.latent import ILQRPlanner, LatentModel, LatentRollouts
from foresight.planning.video import VideoEnsemble, VideoPredictor, VideoRollouts

VIDEO = (VideoPredictor, VideoEnsemble)
MODEL_PLANNERS = {"model": VIDEO, "cem": LatentModel, "ilqr": LatentModel}  # the model each plans with


class RandomPlanner:
    """Uniformly random decisions in the action box, each held ``repeat`` steps."""

    model_seconds = 0.0

    def __init__(self, low, high, repeat: int, rng: np.random.Generator):
        self.low, self.high, self.repeat, self.rng = low, high, repeat, rng
        self.replans = 0

    def observe(self, obs, info, action) -> None:
        pass

    def act(self, obs, info, steps: int) -> np.ndarray:
        decisions = self.rng.uniform(self.low, self.high, (math.ceil(steps / self.repeat), *self.low.shape))
        return repeat_actions(torch.as_tensor(decisions.astype(np.float32)), self.repeat)[:steps].numpy()

    def pictures(self, step: int, scale: int) -> list[np.ndarray]:
        return []


class CEMPlanner:
    """Model-predictive CEM: at each replan, search action sequences whose rollouts the cost likes best, execute
    the best one's first actions, warm-start the next search from the rest (``CEM.shift``)."""

    def __init__(self, cem: CEM, rollouts, cost, rest=None):
        # rest: the environment's rest_action, where it has one: each plan's prior holds the agent still
        self.cem, self.rollouts, self.cost, self.rest = cem, rollouts, cost, rest
        self.replans, self.last_cost = 0, None  # the chosen plan's cost at the last replan

    @property
    def model_seconds(self) -> float:
        return self.rollouts.model_seconds

    def score(self, decisions: torch.Tensor) -> torch.Tensor:
        """CEM's decisions (N, H, A) -> (N,) costs of the rollouts they lead to."""
        return self.cost(self.rollouts(self.cem.expand(decisions)))

    def observe(self, obs, info, action) -> None:
        self.rollouts.observe(obs, info, action)

    def act(self, obs, info, steps: int) -> np.ndarray:
        self.rollouts.begin(obs, info)
        if self.rest is not None:
            self.cem.set_prior(self.rest())
        result = self.cem.plan(self.score)
        plan, self.last_cost = self.cem.expand(result.best), float(result.best_cost)  # (H * repeat, A)
        self.rollouts.chosen(plan)
        self.cem.shift(max(1, steps // self.cem.config.repeat))
        self.replans += 1
        return plan[:steps].numpy()

    def pictures(self, step: int, scale: int) -> list[np.ndarray]:
        return self.rollouts.pictures(step, scale)


def check(suite, names, model, where: str = "--planners") -> None:
    """The planner names must be the suite kind's, and the model planners need a model of the right family."""
    known = PLANNERS[suite.kind]
    for name in names:
        if name not in known:
            raise ForesightError(f"{where}: unknown planner {name!r} (expected: {', '.join(known)})")
    needs = [n for n in names if n in MODEL_PLANNERS]
    if needs and model is None:
        raise ForesightError(f"--model: planner(s) {', '.join(needs)} need a trained model (--model RUN)")
    for name in needs:
        if not isinstance(model, MODEL_PLANNERS[name]):
            family = "a video prediction model (CDNA / DNA / SNA)" if name == "model" else \
                "a latent model (E2C, its VAE baseline, PCC or PC3)"
            raise ForesightError(f"--model: planner {name!r} plans with {family}")


def model_planners(suite, model) -> list[str]:
    """The planners of the suite's kind that plan with this model."""
    return [n for n in PLANNERS[suite.kind] if n in MODEL_PLANNERS and isinstance(model, MODEL_PLANNERS[n])]


def make(name: str, suite, env, task, obs, model=None):
    """The planner ``name`` for one task of ``suite``, whose episode starts at ``obs``."""
    low, high = env.action_space.low, env.action_space.high
    rest = getattr(env.unwrapped, "rest_action", None)  # where actions are targets: CEM's prior holds the agent still
    if name == "random":
        return RandomPlanner(low, high, suite.cem.repeat, np.random.default_rng([suite.seed, task.index, 7]))
    H, W = obs.shape[:2]
    if suite.kind == "designated_pixels":
        m = suite.mpc
        rollouts = VideoRollouts(model, env, task, obs, m.track, m.amp, m.latent_samples) if name == "model" \
            else oracle.SimulatorPixels(env, suite, task)
        size = model.image_size if name == "model" else (H, W)
        goal_frame = model.frames([task.goal_frame])[0] if name == "model" and task.goal_frame is not None else None
        context = CostContext(goals=task.goals, image_size=size, camera_size=(H, W), half=(high - low) / 2,
                              success_px=suite.success_px, goal_frame=goal_frame)
        # a goal image is a cost the model can read where the task has one (goal = 'trajectory')
        terms = ("designated_pixels", "approach", "effort") + (("goal_image",) if goal_frame is not None else ())
        cost = build_cost(suite.cost, context, terms)
        return CEMPlanner(CEM(suite.cem, low, high), rollouts, cost, rest)
    if name == "model":  # a video model toward a goal image
        rollouts = VideoRollouts(model, env, task, obs)
        context = CostContext(half=(high - low) / 2, goal_frame=model.frames([task.goal_frame])[0])
        cost = build_cost(suite.cost, context, ("goal_image", "effort"))
        return CEMPlanner(CEM(suite.cem, low, high), rollouts, cost, rest)
    context = CostContext(half=(high - low) / 2)
    cost = build_cost(suite.cost, context, ("goal_distance", "effort"))
    if name == "oracle":
        return CEMPlanner(CEM(suite.cem, low, high), oracle.SimulatorGoalDistance(env, suite, task), cost, rest)
    rollouts = LatentRollouts(model, task, obs)
    if name == "ilqr":
        return ILQRPlanner(rollouts, cost, low, high, suite.ilqr, np.random.default_rng([suite.seed, task.index, 11]))
    return CEMPlanner(CEM(suite.cem, low, high), rollouts, cost, rest)


def load_model(run):
    """A trained run as the planners use it: a video model's ``VideoPredictor`` (deterministic or stochastic), or a
    latent model's ``LatentModel``; either knows the environment its training data came from (``trained_env``).
    Several runs (a list) make a ``VideoEnsemble`` of video models."""
    from foresight.learners import load_run

    if isinstance(run, (list, tuple)):
        if len(run) == 1:
            return load_model(run[0])
        members = [load_model(r) for r in run]
        for r, m in zip(run, members):
            if not isinstance(m, VideoPredictor) or m.latent_dim:
                raise ForesightError(f"--model: {r}: an ensemble is made of deterministic video models")
        return VideoEnsemble(members)
    model, learner, resolved, _ = load_run(run)
    trained = resolved.get("dataset", {}).get("env")
    if learner.kind in ("video", "stochastic_video"):
        return VideoPredictor(model, learner.settings.context, trained_env=trained)
    return LatentModel(model, trained_env=trained)
