"""Cross-entropy method (CEM) over action sequences, shared by every planner in foresight.

Visual foresight (Finn & Levine, ICRA 2017; Ebert et al., arXiv:1812.00568, 2018) plans with CEM: sample N
action sequences from a diagonal Gaussian over a horizon of H decisions, score them all with the model, refit
the Gaussian to the E lowest-cost sequences (the elites), repeat a few times. Each decision is held for
`repeat` environment steps, so a 5-decision plan with repeat 3 covers 15 steps at the cost of a 5-step search.

iCEM (Pinneri et al., CoRL 2020, arXiv:2008.06389) adds, and this module offers as options:
    coloured noise   samples correlated along the horizon with power spectrum 1/f^beta (beta = noise_beta)
    momentum         mean and std smoothed between iterations: mu <- alpha mu + (1 - alpha) mu_elites
    keep elites      a fraction of each iteration's elites is scored again in the next iteration
    shift            warm start: the last plan's mean (and kept elites), shifted by the executed decisions

The prior mean is the middle of the bounds (a velocity of 0 where actions are velocities), or the action a
caller sets (``set_prior``: an environment's ``rest_action``, where actions are target positions).

The optimizer never sees what it scores: `score` maps float32 action sequences (N, H, A) to costs (N,),
lower is better. Samples are clipped to the action bounds before they are scored, so the elites, the refitted
mean and the returned plans always lie inside them. All sampling goes through one torch.Generator: a CEM with
a given seed (or a plan call with a given generator) is deterministic.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from foresight.errors import ForesightError
from foresight.recipes import spec

Score = Callable[[torch.Tensor], torch.Tensor]  # (N, H, A) float32 -> (N,) costs


@dataclass(frozen=True)
class CEMConfig:
    """Settings of the CEM search. Stds are fractions of half the action range, so one config fits any bounds."""

    samples: int = spec(200, min=1, help="N sequences scored per iteration (visual foresight: 200)")
    elites: int = spec(10, min=1, help="E lowest-cost sequences the Gaussian is refitted to (visual foresight: 10)")
    iterations: int = spec(3, min=1, help="refits per plan call (visual foresight: 3)")
    horizon: int = spec(5, min=1, help="H decisions per plan (visual foresight: 5)")
    repeat: int = spec(3, min=1, help="environment steps each decision is held for (visual foresight: 3)")
    init_std: float = spec(0.5, above=0.0, help="initial std / half range: +-2 std spans the bounds, ~5% of draws "
                                                "clipped per dimension")
    momentum: float = spec(0.0, min=0.0, below=1.0, help="iCEM alpha: weight of the old mean/std in each refit "
                                                         "(0 = replace, as visual foresight)")
    noise_beta: float = spec(0.0, min=0.0, help="0 = white noise; > 0 = coloured noise 1/f^beta along the horizon "
                                                "(iCEM uses 2-4)")
    warm_start: bool = spec(True, help="start each plan from the previous mean shifted by the executed decisions")
    keep_elites: float = spec(0.0, min=0.0, max=1.0, help="fraction of the elites carried into the next iteration "
                                                          "(iCEM: 0.3)")
    min_std: float = spec(0.0, min=0.0, help="floor on the std / half range, keeps the search from freezing on a "
                                             "dimension")
    seed: int = spec(0, min=0, help="seeds the CEM's own generator (plan(generator=...) overrides it)")

    def checks(self):
        if self.elites > self.samples:
            yield "elites", f"at most samples ({self.samples})"
        if self.min_std > self.init_std:
            yield "min_std", f"at most init_std ({self.init_std})"
        if self.kept >= self.samples:
            yield "keep_elites", f"to keep fewer than the {self.samples} samples (it keeps {self.kept})"

    @property
    def kept(self) -> int:
        """How many elites are carried into the next iteration."""
        return int(round(self.keep_elites * self.elites))


@dataclass(frozen=True)
class PlanResult:
    mean: torch.Tensor  # (H, A) the final Gaussian's mean
    std: torch.Tensor  # (H, A) the final Gaussian's std
    best: torch.Tensor  # (H, A) the lowest-cost sequence scored in any iteration
    best_cost: float  # its cost
    costs: list[float]  # the lowest cost of each iteration
    samples_scored: int  # sequences passed to score, over all iterations


def repeat_actions(actions: torch.Tensor, repeat: int) -> torch.Tensor:
    """(..., H, A) decisions -> (..., H * repeat, A) environment actions, each decision held `repeat` steps."""
    if actions.dim() < 2:
        raise ForesightError(f"actions must have shape (..., H, A), got {tuple(actions.shape)}")
    return actions.repeat_interleave(repeat, dim=-2)


def colored_noise(beta: float, n: int, horizon: int, action_dim: int, generator: torch.Generator | None = None):
    """Unit-variance Gaussian noise (n, horizon, action_dim), power spectrum 1/f^beta along the horizon.

    beta = 0 is white noise, 1 pink, 2 brown (a random walk's spectrum). Sampled in the frequency domain as in
    iCEM's `colorednoise` (Timmer & Koenig 1995): independent Gaussian real and imaginary parts scaled by
    f^(-beta/2), the zero frequency given the lowest non-zero frequency's scale, then an inverse real FFT.
    The result is divided by its exact stationary std so every beta gives the same variance. With the zero
    frequency scaled like the lowest one, horizons of 2 and 3 have equal scales in every bin: white noise.
    """
    if beta == 0 or horizon == 1:
        return torch.randn(n, horizon, action_dim, generator=generator)
    f = torch.fft.rfftfreq(horizon, dtype=torch.float64)  # (F,), F = horizon // 2 + 1
    f[0] = 1.0 / horizon
    scale = f ** (-beta / 2)
    real = torch.randn(n, action_dim, len(f), generator=generator, dtype=torch.float64) * scale
    imag = torch.randn(n, action_dim, len(f), generator=generator, dtype=torch.float64) * scale
    # the zero (and, for even horizons, the Nyquist) bin of a real signal is real: give it the full variance
    bins_real = [0] + ([len(f) - 1] if horizon % 2 == 0 else [])
    imag[..., bins_real] = 0.0
    real[..., bins_real] *= math.sqrt(2.0)
    y = torch.fft.irfft(torch.complex(real, imag), n=horizon)  # (n, A, H)
    # Var y_t = (2 s_0^2 + 4 sum_k s_k^2 + 2 s_nyq^2) / H^2 over the bins, the same for every t
    weight = torch.full_like(scale, 4.0)
    weight[bins_real] = 2.0
    sigma = torch.sqrt((weight * scale**2).sum()) / horizon
    return (y / sigma).transpose(1, 2).to(torch.float32).contiguous()  # (n, H, A)


class CEM:
    """CEM over (H, A) action sequences within the box [low, high]; see the module docstring."""

    def __init__(self, config: CEMConfig, low, high):
        self.config = config
        self.low = _bound("low", low)  # (A,)
        self.high = _bound("high", high)  # (A,)
        if self.low.shape != self.high.shape:
            raise ForesightError(
                f"low and high must have the same shape (A,), got {tuple(self.low.shape)} and {tuple(self.high.shape)}"
            )
        if not bool((self.low < self.high).all()):
            raise ForesightError(
                f"low must be < high in every dimension, got low={self.low.tolist()} high={self.high.tolist()}"
            )
        self.action_dim = self.low.shape[0]
        self.prior = (self.low + self.high) / 2  # (A,) the prior mean: the middle of the bounds, or ``set_prior``'s
        self.half = (self.high - self.low) / 2  # (A,)
        self.generator = torch.Generator().manual_seed(config.seed)
        self._mean = None  # (H, A) warm start: the last plan's mean, shifted
        self._elites = None  # (kept, H, A) the last plan's kept elites, shifted

    @property
    def horizon(self) -> int:
        return self.config.horizon

    def expand(self, actions: torch.Tensor) -> torch.Tensor:
        """(..., H, A) decisions -> (..., H * repeat, A) environment actions."""
        return repeat_actions(actions, self.config.repeat)

    @property
    def initial_mean(self) -> torch.Tensor:
        """(H, A) the mean the next plan starts from: the shifted warm start, or the prior mean."""
        return self.prior.expand(self.horizon, self.action_dim).clone() if self._mean is None else self._mean.clone()

    def set_prior(self, action) -> None:
        """Centre the prior on ``action`` (A,) instead of the bounds' middle: where actions are targets (PushT's
        agent position), the prior holds still. A cold start and the decisions a shift appends use it."""
        self.prior = torch.maximum(torch.minimum(torch.as_tensor(action, dtype=torch.float32), self.high), self.low)

    def reset(self):
        """Forget the warm start (a new episode)."""
        self._mean = None
        self._elites = None

    def shift(self, executed: int):
        """Advance the warm start by `executed` decisions: drop them and append the prior mean at the end."""
        if isinstance(executed, bool) or not isinstance(executed, int) or executed < 0:
            raise ForesightError(f"executed must be an integer >= 0 (decisions), got {executed!r}")
        if self._mean is None or executed == 0:
            return
        if executed >= self.horizon:
            self.reset()
            return
        self._mean = self._shifted(self._mean, executed)
        if self._elites is not None:
            self._elites = self._shifted(self._elites, executed)

    def _shifted(self, x, executed):  # (..., H, A) -> (..., H, A)
        tail = self.prior.expand(*x.shape[:-2], executed, self.action_dim)
        return torch.cat([x[..., executed:, :], tail], dim=-2)

    def plan(self, score: Score, generator: torch.Generator | None = None) -> PlanResult:
        """Run `iterations` CEM refits, one `score` call of `samples` sequences each, and return the plan."""
        cfg = self.config
        g = self.generator if generator is None else generator
        H, A, N = cfg.horizon, self.action_dim, cfg.samples
        prior_std = (cfg.init_std * self.half).expand(H, A)
        min_std = cfg.min_std * self.half  # (A,)
        mean = self.initial_mean
        std = prior_std.clone()
        kept = self._elites  # (kept, H, A) or None
        best, best_cost, costs_per_iter, scored = None, math.inf, [], 0
        for _ in range(cfg.iterations):
            fresh = N - (0 if kept is None else len(kept))
            noise = colored_noise(cfg.noise_beta, fresh, H, A, g)  # (fresh, H, A)
            x = torch.maximum(torch.minimum(mean + std * noise, self.high), self.low)
            if kept is not None:
                x = torch.cat([x, kept])  # (N, H, A)
            costs = self._score(score, x)  # (N,)
            scored += N
            costs, order = torch.sort(costs, stable=True)  # stable: ties resolve the same way every run
            elites = x[order[: cfg.elites]]  # (E, H, A)
            if costs[0].item() < best_cost or best is None:
                best, best_cost = x[order[0]].clone(), costs[0].item()
            costs_per_iter.append(costs[0].item())
            m = cfg.momentum
            mean = m * mean + (1 - m) * elites.mean(0)
            std = torch.maximum(m * std + (1 - m) * elites.std(0, unbiased=False), min_std)
            kept = elites[: cfg.kept] if cfg.kept > 0 else None
        if cfg.warm_start:
            self._mean, self._elites = mean.clone(), (None if kept is None else kept.clone())
        return PlanResult(mean=mean, std=std, best=best, best_cost=best_cost, costs=costs_per_iter,
                          samples_scored=scored)

    @staticmethod
    def _score(score: Score, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            costs = score(x)
        costs = torch.as_tensor(costs).detach().to("cpu", torch.float32)
        if costs.shape != (x.shape[0],):
            raise ForesightError(
                f"score must return one cost per sequence, shape ({x.shape[0]},), got {tuple(costs.shape)}"
            )
        return torch.where(torch.isnan(costs), math.inf, costs)  # a NaN (diverged prediction) is never an elite


def _bound(name, value) -> torch.Tensor:
    try:
        t = torch.as_tensor(value, dtype=torch.float32).detach().cpu()
    except (TypeError, ValueError, RuntimeError):
        t = torch.empty(0)
    if t.dim() != 1 or t.numel() == 0 or not bool(torch.isfinite(t).all()):
        raise ForesightError(f"{name} must be a finite 1-D array of action bounds (A,), got {value!r}")
    return t
