"""Iterative LQR (Li & Todorov 2004; Tassa et al. 2014's box-bounded controls) on a learned model's dynamics.

The model offers ``transition(z, u).mean`` and its own local linearisation ``linearize(z, u) -> (A, B, o)``
(E2C's A_t = I + v_t r_t^T and B_t, as the paper's controller uses them; other models autograd Jacobians).
The cost is a ``costs.Cost`` of the terms iLQR can write as a quadratic: goal_distance (to the goal latent)
and effort.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from foresight.errors import ForesightError
from foresight.planning.costs import Cost, Rollout
from foresight.recipes import spec


@dataclass(frozen=True)
class ILQRSettings:
    horizon: int = spec(10, min=1, help="steps planned ahead")
    iterations: int = spec(10, min=1, help="iLQR iterations per replan (fewer when converged)")
    regularization: float = spec(1e-3, min=0.0, help="initial Levenberg-Marquardt term added to Q_uu")
    tolerance: float = spec(1e-4, min=0.0, help="stop when an iteration lowers the cost by less than this fraction")
    uniform_starts: int = spec(0, min=0, help="more initial plans each replan, every action uniform in the bounds")
    extreme_starts: int = spec(0, min=0, help="more initial plans each replan, every action at a random bound")


def rollout(model, z0: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Latent means along action sequences: z0 (N, Z), u (N, T, A) -> (N, T+1, Z), z0 first."""
    zs = [z0]
    for t in range(u.shape[1]):
        zs.append(model.transition(zs[-1], u[:, t]).mean)
    return torch.stack(zs, 1)


class LatentILQR:
    """iLQR over T steps of the model's latent dynamics with box-bounded actions.

    Each iteration linearises the transition around the current plan (z_t, u_t) with the model's own
    `linearize` (A_t, B_t), runs the Riccati backward pass of the quadratic cost, and tries the new controls
    u_t + a k_t + K_t (z'_t - z_t) for several step sizes a at once through the real (nonlinear) model. A
    feed-forward step that would leave the bounds is clipped to them, and that action dimension gets no
    feedback (Tassa et al. 2014's clamped-control rule, with the box QP solved by clipping).

    iLQR finds the local optimum nearest its initial plan. Beside the warm start, each replan can also optimise
    fresh random plans (``uniform_starts``, ``extreme_starts``: PC3's code draws 3 of each) and keep the cheapest
    result: a pendulum at rest below its goal has a stationary plan (no torque) that a full push escapes.
    """

    ALPHAS = (1.0, 0.5, 0.25, 0.1, 0.03)

    def __init__(self, model, cost: Cost, goal: torch.Tensor, low, high, settings: ILQRSettings = ILQRSettings(),
                 rng: np.random.Generator | None = None):
        unknown = set(cost.terms) - {"goal_distance", "effort"}
        if "goal_distance" not in cost.terms or unknown:
            raise ForesightError(f"cost: iLQR plans with the terms goal_distance and effort only, got "
                                 f"{', '.join(cost.terms)}")
        self.model, self.cost, self.settings = model, cost, settings
        self.goal = torch.as_tensor(goal, dtype=torch.float32).reshape(-1)  # (Z,)
        self.low = torch.as_tensor(low, dtype=torch.float32).reshape(-1)
        self.high = torch.as_tensor(high, dtype=torch.float32).reshape(-1)
        if self.low.shape != self.high.shape or not bool((self.low < self.high).all()):
            raise ForesightError(f"low/high: expected action bounds with low < high, got {self.low.tolist()} and "
                                 f"{self.high.tolist()}")
        self.plan_u: torch.Tensor | None = None  # (T, A) the warm start
        self.rng = rng if rng is not None else np.random.default_rng(0)  # the random initial plans
        self.iterations_run = 0

    @property
    def horizon(self) -> int:
        return self.settings.horizon

    def reset(self):
        self.plan_u = None

    def shift(self, executed: int):
        """Drop the executed steps of the last plan and repeat its last action at the end."""
        if self.plan_u is not None and executed > 0:
            n = min(executed, self.horizon)
            self.plan_u = torch.cat([self.plan_u[n:], self.plan_u[-1:].expand(n, -1)])

    def plan(self, z0: torch.Tensor, u_init: torch.Tensor | None = None) -> tuple[torch.Tensor, float]:
        """z0 (Z,) -> the planned actions (T, A) and their cost: the cheapest local optimum over the initial plans
        (``u_init``, else the warm start, else the middle of the bounds; then the random ones)."""
        T, s, A = self.horizon, self.settings, len(self.low)
        if u_init is None:
            u_init = self.plan_u if self.plan_u is not None else ((self.low + self.high) / 2).expand(T, -1)
        u_init = torch.as_tensor(u_init, dtype=torch.float32)
        if u_init.shape != (T, A):
            raise ForesightError(f"u_init: expected shape ({T}, {A}), got {tuple(u_init.shape)}")
        low, high = self.low.double().numpy(), self.high.double().numpy()
        starts = [u_init]
        starts += [torch.as_tensor(self.rng.uniform(low, high, (T, A)), dtype=torch.float32)
                   for _ in range(s.uniform_starts)]
        starts += [torch.as_tensor(np.where(self.rng.random((T, A)) < 0.5, low, high), dtype=torch.float32)
                   for _ in range(s.extreme_starts)]
        z0 = torch.as_tensor(z0, dtype=torch.float32).reshape(1, -1)
        self.iterations_run = 0
        u, J = min((self._optimize(z0, start) for start in starts), key=lambda result: result[1])
        self.plan_u = u.clone()
        return u, J

    def _optimize(self, z0: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, float]:
        """iLQR from one initial plan u (T, A), clipped to the bounds: the local optimum's actions and cost."""
        T, s = self.horizon, self.settings
        u = torch.maximum(torch.minimum(u, self.high), self.low)
        with torch.no_grad():
            z = rollout(self.model, z0, u[None])[0]  # (T+1, Z)
            J = float(self._cost(z[None], u[None])[0])
        w, R = self.quadratic(T)
        g = self.goal.double().numpy()
        low, high = self.low.double().numpy(), self.high.double().numpy()
        mu = s.regularization
        for _ in range(s.iterations):
            self.iterations_run += 1
            with torch.no_grad():
                A, B, _ = self.model.linearize(z[:-1], u)  # (T, Z, Z), (T, Z, U)
            k, K, expected = _backward(A.double().numpy(), B.double().numpy(), z.double().numpy(),
                                       u.double().numpy(), g, w, R, mu, low, high)
            if expected < s.tolerance * abs(J) + 1e-9:  # the local model sees nothing left to gain: converged
                break
            k, K = torch.as_tensor(k, dtype=torch.float32), torch.as_tensor(K, dtype=torch.float32)
            alphas = torch.tensor(self.ALPHAS)
            with torch.no_grad():  # the forward pass for every step size at once: batch (n_alpha,)
                zn = [z0.expand(len(alphas), -1)]
                un = []
                for t in range(T):
                    ut = u[t] + alphas[:, None] * k[t] + (zn[-1] - z[t]) @ K[t].T  # (n_alpha, A)
                    ut = torch.maximum(torch.minimum(ut, self.high), self.low)
                    un.append(ut)
                    zn.append(self.model.transition(zn[-1], ut).mean)
                zn, un = torch.stack(zn, 1), torch.stack(un, 1)  # (n_alpha, T+1, Z), (n_alpha, T, A)
                costs = self._cost(zn, un)
            best = int(torch.argmin(torch.where(torch.isfinite(costs), costs, torch.inf)))
            new_J = float(costs[best])
            if new_J < J:
                improvement = (J - new_J) / max(abs(J), 1e-12)
                z, u, J = zn[best], un[best], new_J
                mu = max(mu / 2, 1e-6) if mu > 0 else 0.0
                if improvement < s.tolerance:
                    break
            else:  # no step size helped: trust the quadratic model less
                mu = max(mu * 10, 1e-3)
                if mu > 1e6:
                    break
        return u, J

    def _cost(self, z: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """z (N, T+1, Z) with z_0 first, u (N, T, A) -> (N,)."""
        return self.cost(Rollout(actions=u, to_goal=((z[:, 1:] - self.goal) ** 2).sum(-1)))

    def quadratic(self, steps: int):
        """The cost as iLQR wants it (float64 numpy): stage weights (T,) of ||z_t - g||^2 for t = 1..T and the
        action Hessian R (A, A) of u^T R u."""
        w = self.cost.terms["goal_distance"].stage_weights(steps).double().numpy()
        effort = self.cost.terms.get("effort")
        R = effort.hessian() if effort is not None else np.zeros((len(self.low), len(self.low)))
        return w, R


def _backward(A, B, z, u, g, w, R, mu, low, high):
    """The Riccati backward pass of iLQR for cost sum_t w_t ||z_t - g||^2 (t = 1..T) + u_t^T R u_t on the
    linearised dynamics dz_{t+1} = A_t dz_t + B_t du_t. Returns feed-forward k (T, U), feedback K (T, U, Z)
    and the cost reduction the quadratic model expects from the full step."""
    T, Z = z.shape[0] - 1, z.shape[1]
    U = u.shape[1]
    Vx = 2 * w[-1] * (z[T] - g)  # (Z,)
    Vxx = 2 * w[-1] * np.eye(Z)
    k, K = np.zeros((T, U)), np.zeros((T, U, Z))
    eye_u = np.eye(U)
    expected = 0.0
    for t in range(T - 1, -1, -1):
        lx = 2 * w[t - 1] * (z[t] - g) if t > 0 else np.zeros(Z)  # z_0 is given: no cost on it
        lxx = 2 * w[t - 1] * np.eye(Z) if t > 0 else np.zeros((Z, Z))
        At, Bt = A[t], B[t]
        Qx = lx + At.T @ Vx
        Qu = 2 * R @ u[t] + Bt.T @ Vx
        Qxx = lxx + At.T @ Vxx @ At
        Quu = 2 * R + Bt.T @ Vxx @ Bt
        Qux = Bt.T @ Vxx @ At
        Quu_reg = Quu + mu * eye_u
        try:
            kt = -np.linalg.solve(Quu_reg, Qu)
            Kt = -np.linalg.solve(Quu_reg, Qux)
        except np.linalg.LinAlgError:
            kt, Kt = np.zeros(U), np.zeros((U, Z))
        target = np.clip(u[t] + kt, low, high)
        clamped = (target <= low) | (target >= high)
        kt = target - u[t]
        Kt[clamped] = 0.0
        k[t], K[t] = kt, Kt
        expected -= kt @ Qu + 0.5 * kt @ Quu @ kt
        Vx = Qx + Kt.T @ Quu @ kt + Kt.T @ Qu + Qux.T @ kt
        Vxx = Qxx + Kt.T @ Quu @ Kt + Kt.T @ Qux + Qux.T @ Kt
        Vxx = 0.5 * (Vxx + Vxx.T)
    return k, K, expected

