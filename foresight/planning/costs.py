"""Planning costs on model predictions: designated pixels (visual foresight) and goal images.

A cost maps a batch of N predictions over T steps to N costs, lower is better. It knows nothing of how the
actions were chosen; the planner composes `model(actions) -> predictions -> cost`.

Designated-pixel cost (Finn & Levine 2017, Ebert et al. 2018): the user designates pixels d_k on objects and
goal pixels g_k; the model moves a probability distribution P_t,k over the image for each designated pixel.
The cost is the expected distance to the goal, summed over the plan's steps with extra weight on the last:

    c = sum_k w_k sum_t lambda_t sum_{(r, c)} P_t,k(r, c) ||(r, c) - g_k||_2,   lambda_t = 1, lambda_T = last_weight

Visual foresight's "finalweight" was 10 (30 in some Sawyer experiments): the last step is where the object
should end up, the earlier steps reward getting there early.

Spread penalty (``spread_weight`` = beta): each step's term becomes E_P[||p - g||] + beta sqrt(tr Cov_P(p)).
A planner exploits model errors: a plan whose prediction lets a tenth of the designated pixel's mass ride
away on the passing pusher toward the goal lowers E_P[d] by a tenth of the distance, although the block never
moved. Such a leak spreads the distribution (its std grows by ~sqrt(0.1) of the distance), while a real push
moves the whole distribution and leaves its spread alone; beta ~ 1 makes the leak cost more than it gains.

Sharpening (``sharpen`` = s >= 1): the expectation is taken under P^s / sum P^s instead of P. Leaked mass is
diffuse (a smear along the pusher's path) and the object's own mass is concentrated, so raising P to a power
keeps the object's blob and all but drops the smear: the cost follows where most of the object is predicted
to be, not its mean, which a leak drags toward the goal. s = 1 is visual foresight's cost.

Mean distance (``distance = "mean"``): each step's term is ||E_P[p] - g||, the distance of the distribution's centre
of mass, instead of E_P[||p - g||]. A blurred prediction of the object at the goal has an expected distance of
about its spread, so near the goal the expected distance cannot tell a precise push from a blur; the centre of mass
can (it ignores spread altogether, which spread_weight adds back if wanted).
"""
from __future__ import annotations

import math

import torch

from foresight.errors import ForesightError


def step_weights(steps: int, last_weight: float, end: int | None = None) -> torch.Tensor:
    """(T,) weights of the plan's steps: 1 for each, `last_weight` for the last. With ``end`` < T (the task
    ends after the plan's first ``end`` steps) step ``end`` takes `last_weight` and the steps after it 0:
    where the object is after the task has ended does not count."""
    if end is not None and not (isinstance(end, int) and 1 <= end):
        raise ForesightError(f"end must be an integer >= 1 (the plan steps before the task ends), got {end!r}")
    end = steps if end is None else min(end, steps)
    w = torch.ones(steps)
    w[end - 1] = last_weight
    w[end:] = 0.0
    return w


DISTANCES = ("expected", "mean")


class DesignatedPixelCost:
    """Euclidean pixel distance of K predicted distributions to their K goal pixels: expected under each
    distribution (visual foresight), or of its centre of mass with ``distance = "mean"``.

    goals (K, 2) are (row, col) pixel coordinates, floats allowed, (0, 0) the centre of the top-left pixel;
    image_size is (H, W); weights (K,) weigh the designated pixels (default all 1). The K distance maps are
    computed once here, so calling the cost on each of the planner's batches is one weighted sum.
    """

    def __init__(self, goals, image_size, weights=None, last_weight: float = 10.0, spread_weight: float = 0.0,
                 sharpen: float = 1.0, distance: str = "expected"):
        self.goals = _tensor("goals", goals)  # (K, 2)
        if self.goals.dim() != 2 or self.goals.shape[1] != 2 or self.goals.shape[0] == 0:
            raise ForesightError(f"goals must have shape (K, 2) of (row, col) pixels, got {tuple(self.goals.shape)}")
        if not (isinstance(image_size, (tuple, list)) and len(image_size) == 2
                and all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in image_size)):
            raise ForesightError(f"image_size must be (H, W), two integers >= 1, got {image_size!r}")
        k = self.goals.shape[0]
        self.weights = torch.ones(k) if weights is None else _tensor("weights", weights)  # (K,)
        if self.weights.shape != (k,) or bool((self.weights < 0).any()):
            raise ForesightError(
                f"weights must be {k} numbers >= 0, one per goal, got {self.weights.tolist()}"
            )
        self.last_weight = _last_weight(last_weight)
        self.spread_weight = _nonnegative("spread_weight", spread_weight)
        self.sharpen = _nonnegative("sharpen", sharpen)
        if self.sharpen < 1:
            raise ForesightError(f"sharpen must be a number >= 1 (1 = the plain expected distance), got {sharpen!r}")
        if distance not in DISTANCES:
            raise ForesightError(f"distance must be one of {DISTANCES}, got {distance!r}")
        self.distance = distance
        self.image_size = (int(image_size[0]), int(image_size[1]))
        h, w = self.image_size
        rows = torch.arange(h, dtype=torch.float32).view(1, h, 1)
        cols = torch.arange(w, dtype=torch.float32).view(1, 1, w)
        g = self.goals.view(k, 2, 1, 1)
        self.maps = torch.sqrt((rows - g[:, 0]) ** 2 + (cols - g[:, 1]) ** 2)  # (K, H, W) distance to goal k
        # (3, H, W): row, col and row^2 + col^2, whose expectations give each distribution's spread
        self.moments = torch.cat([rows.expand(1, h, w), cols.expand(1, h, w), rows ** 2 + cols ** 2])
        self._cache = {}  # (device, dtype) -> (maps, weights, farthest, moments, goals) on that device

    def __call__(self, dists: torch.Tensor, end: int | None = None) -> torch.Tensor:
        """dists (N, T, K, H, W) distributions over pixels -> (N,) costs; ``end``: see step_weights."""
        k, (h, w) = self.goals.shape[0], self.image_size
        if not torch.is_tensor(dists) or dists.dim() != 5 or tuple(dists.shape[2:]) != (k, h, w):
            raise ForesightError(f"dists must have shape (N, T, {k}, {h}, {w}), got {_shape(dists)}")
        if not dists.is_floating_point():
            raise ForesightError(f"dists must be a floating-point tensor, got {dists.dtype}")
        maps, weights, farthest, moments, goals = self._on(dists.device, dists.dtype)
        if self.sharpen != 1:  # P^s, renormalised below with the mass
            peak = dists.amax(dim=(-2, -1), keepdim=True).clamp_min(torch.finfo(dists.dtype).tiny)
            dists = (dists.clamp_min(0) / peak) ** self.sharpen  # scaled by the peak first: no underflow
        mass = dists.sum(dim=(-2, -1))  # (N, T, K)
        # divide by the mass: a model that leaks probability off the image must not be rewarded for it;
        # a distribution that lost all its mass counts as far from the goal as the image allows
        lost = mass <= 1e-12
        safe_mass = torch.where(lost, torch.ones_like(mass), mass)
        if self.distance == "mean" or self.spread_weight > 0:
            m = torch.einsum("ntkhw,mhw->ntkm", dists, moments) / safe_mass[..., None]  # E[r], E[c], E[r^2 + c^2]
        if self.distance == "mean":
            expected = (m[..., :2] - goals).norm(dim=-1)  # (N, T, K)
        else:
            expected = torch.einsum("ntkhw,khw->ntk", dists, maps) / safe_mass
        expected = torch.where(lost, farthest, expected)
        if self.spread_weight > 0:
            spread = (m[..., 2] - m[..., 0] ** 2 - m[..., 1] ** 2).clamp_min(0).sqrt()  # (N, T, K)
            expected = expected + self.spread_weight * torch.where(lost, torch.zeros_like(spread), spread)
        lam = step_weights(dists.shape[1], self.last_weight, end).to(dists.device, dists.dtype)  # (T,)
        return (expected * lam.view(1, -1, 1) * weights.view(1, 1, -1)).sum(dim=(1, 2))  # (N,)

    def _on(self, device, dtype):
        key = (device, dtype)
        if key not in self._cache:
            maps = self.maps.to(device, dtype)
            self._cache[key] = (maps, self.weights.to(device, dtype), maps.flatten(1).amax(1),
                                self.moments.to(device, dtype), self.goals.to(device, dtype))
        return self._cache[key]


def designated_pixel_cost(dists: torch.Tensor, goals, weights=None, last_weight: float = 10.0) -> torch.Tensor:
    """dists (N, T, K, H, W), goals (K, 2) (row, col) -> (N,); see DesignatedPixelCost (reuse it when planning)."""
    if not torch.is_tensor(dists) or dists.dim() != 5:
        raise ForesightError(f"dists must have shape (N, T, K, H, W), got {_shape(dists)}")
    return DesignatedPixelCost(goals, tuple(dists.shape[-2:]), weights, last_weight)(dists)


def action_cost(actions: torch.Tensor, weight: float, end: int | None = None) -> torch.Tensor:
    """actions (N, T, A) -> (N,): weight * sum_t |a_t|^2 over the plan's first ``end`` steps (all by default).

    Not in visual foresight's cost, but the usual MPC effort term: once the object is where it should be, every
    plan that leaves it alone costs the same and CEM would pick any of them, often one whose pusher strays into
    the object in a way the model fails to predict; a small effort weight makes the planner keep still instead.
    """
    if not torch.is_tensor(actions) or actions.dim() != 3:
        raise ForesightError(f"actions must have shape (N, T, A), got {_shape(actions)}")
    steps = actions.shape[1] if end is None else min(end, actions.shape[1])
    return _nonnegative("action_weight", weight) * actions[:, :steps].pow(2).sum(dim=(1, 2))


def approach_cost(agent: torch.Tensor, objects: torch.Tensor, goals, current, offset: float, weight: float,
                  last_weight: float = 10.0, end: int | None = None) -> torch.Tensor:
    """The agent's distance from where it must be to push each object toward its goal: (N,) costs.

    agent (N, T, 2): the agent's pixel after each step of each plan; objects (N, T, K, 2): the objects' pixels
    predicted after each step (a distribution's centre of mass, or the simulator's); goals (K, 2); current (K, 2):
    the objects' pixels now. The push point of object k is ``offset`` pixels behind it, on the side away from its
    goal (the direction taken from where it is now); each step's term is the agent's distance from it, faded by
    min(1, |current_k - goal_k| / offset) so that it lets go as the object arrives, summed over objects and
    weighted over steps as the designated-pixel cost is, times ``weight``.

    Not in visual foresight's cost, but the reaching term of gymnasium's Pusher reward (hand to object) aimed at the
    object's far side: the designated-pixel cost says nothing until a predicted push moves the object, so when the
    goal lies between the agent and the object no plan looks better than keeping away, and the planner never goes
    round the object. This term does, and it stays near zero while the agent pushes from behind.
    """
    if not torch.is_tensor(agent) or agent.dim() != 3 or agent.shape[-1] != 2:
        raise ForesightError(f"agent must have shape (N, T, 2), got {_shape(agent)}")
    if not torch.is_tensor(objects) or objects.dim() != 4 or objects.shape[:2] != agent.shape[:2] \
            or objects.shape[-1] != 2:
        raise ForesightError(f"objects must have shape ({agent.shape[0]}, {agent.shape[1]}, K, 2), got "
                             f"{_shape(objects)}")
    goals = _tensor("goals", goals).to(objects.device, objects.dtype)
    current = _tensor("current", current).to(objects.device, objects.dtype)
    k = objects.shape[2]
    if goals.shape != (k, 2) or current.shape != (k, 2):
        raise ForesightError(f"goals and current must have shape ({k}, 2), got {tuple(goals.shape)} and "
                             f"{tuple(current.shape)}")
    offset, weight = _nonnegative("offset", offset), _nonnegative("approach_weight", weight)
    if offset <= 0:
        raise ForesightError(f"offset must be a number of pixels > 0, got {offset!r}")
    away = current - goals  # (K, 2)
    distance = away.norm(dim=-1, keepdim=True)  # (K, 1)
    push = objects + offset * away / distance.clamp_min(1e-6)  # (N, T, K, 2) push points
    fade = (distance[:, 0] / offset).clamp(max=1.0)  # (K,)
    per_step = ((agent[:, :, None] - push).norm(dim=-1) * fade).sum(-1)  # (N, T)
    lam = step_weights(agent.shape[1], _last_weight(last_weight), end).to(agent.device, agent.dtype)
    return weight * (per_step * lam).sum(1)


def goal_image_cost(frames: torch.Tensor, goal: torch.Tensor, last_weight: float = 10.0) -> torch.Tensor:
    """frames (N, T, C, H, W), goal (C, H, W), both float on the same scale -> (N,) costs.

    The cost of a step is the Euclidean (L2) distance between the predicted frame and the goal image over
    all pixels and channels; the steps are summed with `last_weight` on the last, as for designated pixels.
    """
    if not torch.is_tensor(frames) or frames.dim() != 5 or not frames.is_floating_point():
        what = f"{tuple(frames.shape)} {frames.dtype}" if torch.is_tensor(frames) else type(frames).__name__
        raise ForesightError(f"frames must be a float tensor (N, T, C, H, W), got {what}")
    if not torch.is_tensor(goal) or tuple(goal.shape) != tuple(frames.shape[2:]) or not goal.is_floating_point():
        what = f"{tuple(goal.shape)} {goal.dtype}" if torch.is_tensor(goal) else type(goal).__name__
        raise ForesightError(
            f"goal must be a float tensor (C, H, W) = {tuple(frames.shape[2:])} on the frames' scale, got {what}"
        )
    lam = step_weights(frames.shape[1], _last_weight(last_weight)).to(frames.device, frames.dtype)  # (T,)
    dist = (frames - goal.to(frames.device, frames.dtype)).flatten(2).norm(dim=2)  # (N, T)
    return (dist * lam).sum(dim=1)


def _shape(x) -> object:  # for error messages
    return tuple(x.shape) if torch.is_tensor(x) else type(x).__name__


def _tensor(name, value) -> torch.Tensor:
    try:
        t = torch.as_tensor(value, dtype=torch.float32).detach().cpu()
    except (TypeError, ValueError, RuntimeError):
        raise ForesightError(f"{name} must be an array of numbers, got {value!r}") from None
    if not bool(torch.isfinite(t).all()):
        raise ForesightError(f"{name} must be finite, got {t.tolist()}")
    return t


def _nonnegative(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ForesightError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def _last_weight(value) -> float:
    return _nonnegative("last_weight", value)
