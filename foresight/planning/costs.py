"""Planning costs as terms: each maps one batch of rollouts to (N,) costs, lower is better.

A planner (``planners.py``) asks its rollout source what N action sequences lead to: a ``Rollout``, which
holds whatever that source knows (a video model's designated-pixel distributions, the simulator's object
pixels, a latent model's distances to the goal) beside the actions and, where the environment offers it, the
agent's own path. A suite's ``[cost]`` table weighs the terms; ``build_cost`` makes one ``Cost`` from it, and
the model planner, the oracle and every benchmark use that builder: the oracle differs only in where its
rollouts come from. Steps are weighted alike in every term: 1 each, ``last_weight`` for the plan's last
(visual foresight's "finalweight", 10: the last step is where the object should end up).

Terms (``TERMS``; a weight of 0 leaves a term out):

    designated_pixels  sum_k sum_t lambda_t E_{P_t,k}[||p - g_k||]: the expected distance of each designated
                       pixel's predicted distribution to its goal pixel (Finn & Levine 2017, Ebert et al. 2018);
                       on the simulator's object pixels, their distance
    approach           the agent's distance from the push point behind each object (below)
    goal_distance      sum_t lambda_t ||s_t - s_goal||^2 in the planner's state space: a latent model's
                       latent means (Embed to Control's cost), the true state for the oracle
    goal_image         sum_t lambda_t ||x_t - x_goal||_2 between a video model's predicted frames and a goal image
    effort             sum_t ||u_t / h||^2, h the half range of each action dimension

To add a term: a class with ``__call__(rollout) -> (N,)`` and a ``build(settings, context)`` class method,
a weight field in ``CostSettings``, an entry in ``TERMS``, and its name among the terms that the planners whose
rollouts can feed it allow (``planners.make``).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Callable

import numpy as np
import torch

from foresight import pixels
from foresight.errors import ForesightError
from foresight.recipes import spec


@dataclass(frozen=True)
class CostSettings:
    """A suite's ``[cost]`` table: one weight per term (0 = off) and the terms' options."""

    designated_pixels: float = spec(0.0, min=0.0, help="weight of the designated pixels' expected distance to "
                                                       "their goal pixels (visual foresight's cost)")
    approach: float = spec(0.0, min=0.0, help="weight of the agent's distance from the push point behind each "
                                              "designated object: use it when goals may lie between the agent "
                                              "and an object (needs an environment with agent_path)")
    goal_distance: float = spec(0.0, min=0.0, help="weight of the squared distance to the goal in the planner's "
                                                   "state space (latent models; the oracle's true state)")
    goal_image: float = spec(0.0, min=0.0, help="weight of the predicted frames' L2 distance to the goal image "
                                                "(a video model planning toward a goal image)")
    effort: float = spec(0.0, min=0.0, help="weight of the plan's effort, sum of (action / half range)^2: Embed to "
                                            "Control's control cost; with designated pixels it keeps the agent still "
                                            "when no plan moves the object")
    last_weight: float = spec(10.0, min=0.0, help="weight of the plan's last step in every step-weighted term "
                                                  "(the others 1)")
    spread: float = spec(0.0, min=0.0, help="several predictions of each plan (an ensemble's members, a stochastic "
                                            "model's latent draws): its cost is their mean plus this many standard "
                                            "deviations (0 = the mean; > 0 shuns plans the predictions disagree on)")
    approach_px: float = spec(9.0, above=0.0, help="approach: how far behind the object's centre the push point "
                                                   "lies (camera pixels), a little more than the agent's and the "
                                                   "object's half-widths, so that waiting there does not push")


def step_weights(steps: int, last_weight: float) -> torch.Tensor:
    """(T,) weights of the plan's steps: 1 for each, ``last_weight`` for the last."""
    w = torch.ones(steps)
    w[-1] = last_weight
    return w


@dataclass
class Rollout:
    """What N action sequences lead to, as one source knows it. Fields a source does not know stay None."""

    actions: torch.Tensor  # (N, T, A) the actions, in the environment's units
    dists: torch.Tensor | None = None  # (N, T, K, h, w) predicted designated-pixel distributions
    points: torch.Tensor | None = None  # (N, T, K, 2) object pixels (the simulator's)
    now: np.ndarray | None = None  # (K, 2) where the planner knows the objects are now, in the rollout's pixels
    agent_path: Callable | None = None  # actions (N, T, A) numpy -> the agent's pixels (N, T, 2), rollout's pixels
    to_goal: torch.Tensor | None = None  # (N, T) squared distance to the goal state in the planner's space
    frames: torch.Tensor | None = None  # (N, T, C, h, w) predicted frames

    @cached_property
    def objects(self) -> torch.Tensor:
        """(N, T, K, 2) the objects' pixels: the simulator's, or each distribution's centre of mass."""
        return self.points if self.points is not None else pixels.centre_of_mass(self.dists)

    @cached_property
    def agent(self) -> torch.Tensor:
        """(N, T, 2) the agent's pixel after each action."""
        return torch.as_tensor(self.agent_path(self.actions.numpy()), dtype=torch.float32)


@dataclass(frozen=True)
class CostContext:
    """What the terms need to know of the task, fixed for an episode: the goal pixels (camera pixels) and the
    rollouts' image size and camera size (the model may see smaller images), the actions' half ranges, the goal
    image (model input scale)."""

    goals: np.ndarray | None = None  # (K, 2) camera pixels
    image_size: tuple[int, int] | None = None  # (h, w) of the rollouts' pixels
    camera_size: tuple[int, int] | None = None  # (H, W)
    half: np.ndarray | None = None  # (A,)
    goal_frame: torch.Tensor | None = None  # (C, h, w) float in [0, 1]
    success_px: float | None = None  # camera pixels: an object this near its goal is done (the approach term's order)

    def to_rollout(self, points) -> np.ndarray:
        """Camera pixels -> the rollouts' pixels."""
        return pixels.scale_points(points, self.camera_size, self.image_size)


class DesignatedPixels:
    """Expected Euclidean distance of K predicted distributions to their K goal pixels (one distance map per goal,
    computed once, so each call is one weighted sum); on the simulator's object pixels, their distance."""

    def __init__(self, goals: torch.Tensor, image_size, weight: float, last_weight: float):
        self.goals, self.weight, self.last_weight = goals, weight, last_weight  # goals (K, 2)
        self.maps = pixels.distance_maps(goals, *image_size)  # (K, H, W)
        self.farthest = self.maps.flatten(1).amax(1)  # (K,) what a distribution that lost its mass costs

    @classmethod
    def build(cls, settings: CostSettings, context: CostContext):
        goals = torch.as_tensor(context.to_rollout(context.goals), dtype=torch.float32)
        return cls(goals, context.image_size, settings.designated_pixels, settings.last_weight)

    def __call__(self, r: Rollout) -> torch.Tensor:
        if r.dists is None:  # the simulator's pixels
            lam = step_weights(r.points.shape[1], self.last_weight)
            return self.weight * ((r.points - self.goals).norm(dim=-1).sum(-1) * lam).sum(-1)
        dists = r.dists
        mass = dists.sum(dim=(-2, -1))  # (N, T, K)
        # divide by the mass: a model that leaks probability off the image must not be rewarded for it;
        # a distribution that lost all its mass counts as far from the goal as the image allows
        lost = mass <= 1e-12
        safe_mass = torch.where(lost, torch.ones_like(mass), mass)
        expected = torch.einsum("ntkhw,khw->ntk", dists, self.maps.to(dists.device, dists.dtype)) / safe_mass
        expected = torch.where(lost, self.farthest.to(dists.device, dists.dtype), expected)
        lam = step_weights(dists.shape[1], self.last_weight).to(dists.device, dists.dtype)
        return self.weight * (expected * lam.view(1, -1, 1)).sum(dim=(1, 2))  # (N,)


class Approach:
    """The agent's distance from where it must be to push an object toward its goal.

    The push point of object k is ``offset`` pixels behind it, on the side away from its goal (the direction taken
    from where it is now); each step's term is the agent's distance from it, faded by min(1, |now_k - goal_k| /
    offset) so that it lets go as the object arrives, weighted over steps. With several objects the agent cannot be
    behind all of them: the term pulls it to the first object, in the designated order, that is not yet within
    ``done`` pixels of its goal (the suite's success_px), then to the next (without ``done``: to every object).

    Not in visual foresight's cost, but the reaching term of gymnasium's Pusher reward (hand to object) aimed at the
    object's far side: the designated-pixel cost says nothing until a predicted push moves the object, so when the
    goal lies between the agent and the object no plan looks better than keeping away, and the planner never goes
    round the object. This term does, and it stays near zero while the agent pushes from behind.
    """

    def __init__(self, goals: np.ndarray, offset: float, weight: float, last_weight: float, done: float | None = None):
        self.goals = torch.as_tensor(goals, dtype=torch.float32)  # (K, 2)
        self.offset, self.weight, self.last_weight, self.done = offset, weight, last_weight, done

    @classmethod
    def build(cls, settings: CostSettings, context: CostContext):
        scale = context.image_size[0] / context.camera_size[0]
        done = None if context.success_px is None else context.success_px * scale
        return cls(context.to_rollout(np.asarray(context.goals, np.float32)), settings.approach_px * scale,
                   settings.approach, settings.last_weight, done)

    def __call__(self, r: Rollout) -> torch.Tensor:
        objects, agent = r.objects, r.agent  # (N, T, K, 2), (N, T, 2)
        away = torch.as_tensor(r.now, dtype=torch.float32) - self.goals  # (K, 2)
        distance = away.norm(dim=-1, keepdim=True)  # (K, 1)
        push = objects + self.offset * away / distance.clamp_min(1e-6)  # (N, T, K, 2) push points
        fade = (distance[:, 0] / self.offset).clamp(max=1.0)  # (K,)
        if len(fade) > 1 and self.done is not None:
            left = (distance[:, 0] > self.done).nonzero()
            if len(left):  # only the first object still to be pushed pulls the agent
                fade = fade * (torch.arange(len(fade)) == left[0, 0])
        per_step = ((agent[:, :, None] - push).norm(dim=-1) * fade).sum(-1)  # (N, T)
        return self.weight * (per_step * step_weights(agent.shape[1], self.last_weight)).sum(1)


class GoalDistance:
    """sum_t lambda_t ||s_t - s_goal||^2, from the rollout's squared distances to the goal (N, T)."""

    def __init__(self, weight: float, last_weight: float):
        self.weight, self.last_weight = weight, last_weight

    @classmethod
    def build(cls, settings: CostSettings, context: CostContext):
        return cls(settings.goal_distance, settings.last_weight)

    def stage_weights(self, steps: int) -> torch.Tensor:
        """(T,) the weight of each step's squared distance (what iLQR's quadratic model needs)."""
        return self.weight * step_weights(steps, self.last_weight)

    def __call__(self, r: Rollout) -> torch.Tensor:
        return self.weight * (r.to_goal * step_weights(r.to_goal.shape[1], self.last_weight).to(r.to_goal)).sum(-1)


class Effort:
    """sum_t ||u_t / h||^2 over the plan, h (A,) the half range of each action dimension."""

    def __init__(self, half, weight: float):
        self.half = torch.as_tensor(half, dtype=torch.float32).reshape(-1)  # (A,)
        self.weight = weight

    @classmethod
    def build(cls, settings: CostSettings, context: CostContext):
        return cls(context.half, settings.effort)

    def hessian(self) -> np.ndarray:
        """R (A, A) of the effort written as u^T R u (float64, for iLQR)."""
        return self.weight * np.diag(1.0 / self.half.double().numpy() ** 2)

    def __call__(self, r: Rollout) -> torch.Tensor:
        return self.weight * ((r.actions / self.half) ** 2).sum(-1).sum(-1)


class GoalImage:
    """sum_t lambda_t ||x_t - x_goal||_2 over all pixels and channels of the predicted frames (N, T, C, H, W)."""

    def __init__(self, goal: torch.Tensor, weight: float, last_weight: float):
        self.goal, self.weight, self.last_weight = goal, weight, last_weight  # (C, H, W) float

    @classmethod
    def build(cls, settings: CostSettings, context: CostContext):
        return cls(context.goal_frame, settings.goal_image, settings.last_weight)

    def __call__(self, r: Rollout) -> torch.Tensor:
        frames = r.frames
        lam = step_weights(frames.shape[1], self.last_weight).to(frames.device, frames.dtype)
        dist = (frames - self.goal.to(frames.device, frames.dtype)).flatten(2).norm(dim=2)  # (N, T)
        return self.weight * (dist * lam).sum(dim=1)


TERMS = {"designated_pixels": DesignatedPixels, "approach": Approach, "goal_distance": GoalDistance,
         "goal_image": GoalImage, "effort": Effort}


class Cost:
    """The sum of a suite's weighted terms, in ``TERMS`` order: rollouts -> (N,) costs. Given several rollouts of
    the same plans (particles: an ensemble's members, a stochastic model's latent draws), the cost of each plan is
    the particles' mean plus ``spread`` standard deviations (PETS's trajectory sampling, Chua et al. 2018)."""

    def __init__(self, terms: dict, spread: float = 0.0):
        self.terms, self.spread = terms, spread  # name -> term

    def _sum(self, rollout: Rollout) -> torch.Tensor:
        total = None
        for term in self.terms.values():
            c = term(rollout)
            total = c if total is None else total + c
        return total

    def __call__(self, rollout: Rollout | list[Rollout]) -> torch.Tensor:
        if isinstance(rollout, Rollout):
            return self._sum(rollout)
        per = torch.stack([self._sum(r) for r in rollout])  # (P, N)
        return per.mean(0) + self.spread * per.std(0, correction=0) if self.spread else per.mean(0)

    def parts(self, rollout: Rollout | list[Rollout]) -> dict[str, torch.Tensor]:
        """Each term's (N,) costs (over particles, their mean), for diagnostics."""
        rollouts = [rollout] if isinstance(rollout, Rollout) else rollout
        return {name: torch.stack([term(r) for r in rollouts]).mean(0) for name, term in self.terms.items()}

    @property
    def uses_agent(self) -> bool:
        return "approach" in self.terms


def build_cost(settings: CostSettings, context: CostContext, allowed=tuple(TERMS), where: str = "cost") -> Cost:
    """The cost of a suite's ``[cost]`` table: the terms with a weight > 0 (at least one), each built for the task;
    ``allowed``: the terms the planner's rollouts can feed."""
    names = [name for name in TERMS if getattr(settings, name) > 0]
    for name in names:
        if name not in allowed:
            raise ForesightError(f"{where}: key 'cost.{name}': this planner's rollouts cannot feed the {name} term "
                                 f"(it can use: {', '.join(allowed)})")
    if not names:
        raise ForesightError(f"{where}: key 'cost': no term has a weight > 0 (terms: {', '.join(TERMS)})")
    return Cost({name: TERMS[name].build(settings, context) for name in names}, settings.spread)
