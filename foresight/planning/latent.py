"""Planning in a learned latent space toward a goal image: Embed to Control's way (Watter et al. 2015).

The model (E2C or its VAE baseline, `foresight.models.e2c`) encodes the current observation and the goal
image; the planner looks for actions whose predicted latent means come close to the goal's latent:

    c(u_0..u_{T-1}) = sum_{t=1}^{T} w_t ||z_t - z_goal||^2 + alpha sum_{t=0}^{T-1} ||u_t / h||^2
    z_0 = mean of Q(z | x_now),  z_{t+1} = mean of the predicted next latent,  w_t = 1, w_T = terminal_weight

with h the half range of each action dimension. Two optimizers share the cost, both in a receding-horizon
(MPC) loop that re-encodes the real observation every `replan_every` steps:

    cem    the shared CEM (`foresight.planning.cem`) scoring action sequences by the cost above
    ilqr   iterative LQR on the model's own local linearisation z_{t+1} ~ A_t z_t + B_t u_t + o_t around the
           current plan (E2C: the A_t = I + v_t r_t^T and B_t of its transition network, as the paper's
           controller uses them; the VAE: autograd Jacobians), box-bounded actions, warm-started from the
           last plan shifted by the executed steps
    random uniformly random actions, for reference
    oracle the same CEM and cost form on the true simulator (``set_sim_state``): squared distance of the true
           state (region_dims; pixels for a 'points' region) to the goal's. The bound of the protocol with this
           planner: what a perfect latent space (one that is the state) would reach

Evaluation as PCC (Levine et al. 2020) and PC3 (Shu et al. 2020) run it: the percentage of the task's steps
in which the true state lies in the goal region. Result folder as the pixel planner's (`mpc.run_suite`):
<out>/<planner>/task-XXX.gif and summary.json.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

from foresight import evaluation, viz
from foresight.errors import ForesightError
from foresight.planning import mpc
from foresight.planning.cem import CEM, CEMConfig
from foresight.recipes import spec

PLANNERS = ("cem", "ilqr", "random", "oracle")


# ----------------------------------------------------------------------------------------------------------
# Recipes


@dataclass(frozen=True)
class LatentCostSettings:
    action_weight: float = spec(0.01, min=0.0, help="alpha: weight of the squared action / half range per step")
    terminal_weight: float = spec(1.0, min=0.0, help="w_T: weight of the plan's last latent distance (others 1)")


@dataclass(frozen=True)
class ILQRSettings:
    horizon: int = spec(10, min=1, help="steps planned ahead")
    iterations: int = spec(10, min=1, help="iLQR iterations per replan (fewer when converged)")
    regularization: float = spec(1e-3, min=0.0, help="initial Levenberg-Marquardt term added to Q_uu")
    tolerance: float = spec(1e-4, min=0.0, help="stop when an iteration lowers the cost by less than this fraction")


@dataclass(frozen=True)
class LatentSuiteRecipe:
    name: str = spec(help="suite name; results land in <suite folder>/results/<name>/")
    env: str = spec(help="a registered environment id")
    tasks: int = spec(10, min=1, help="start-goal pairs")
    seed: int = spec(0, min=0)
    steps: int = spec(40, min=1, help="environment steps per task")
    env_kwargs: dict = spec({})
    start_low: tuple[float, ...] = spec((), help="start states uniform in [start_low, start_high]; "
                                                 "empty: the environment's own random reset")
    start_high: tuple[float, ...] = spec(())
    reset_options: dict = spec({}, help="options for env.reset when start_low is empty")
    goal_states: tuple[tuple[float, ...], ...] = spec((), help="goal states; task i takes goal_states[i % n]")
    goal_push_steps: int = spec(0, min=0, help="without goal_states: the goal image is the scene after this many "
                                               "steps of steering the pusher at the first object (PointPush)")
    region: str = spec("state", choices=("state", "points"),
                       help="goal region in the true state ('state') or around the first tracked pixel ('points')")
    region_dims: tuple[int, ...] = spec((0, 1), help="'state': the state entries compared with the goal's")
    region_radius: float = spec(2.0, min=0.0, help="in the goal region when the distance is at most this")
    region_wrap: bool = spec(False, help="'state': compare angles modulo 2 pi")
    baselines: tuple[str, ...] = spec(("random",), help="planners run beside cem and ilqr by default")
    replan_every: int = spec(1, min=1, help="environment steps executed between plans")
    cost: LatentCostSettings = spec(LatentCostSettings())
    cem: CEMConfig = spec(CEMConfig(samples=100, elites=10, iterations=4, horizon=10, repeat=1, init_std=0.5))
    ilqr: ILQRSettings = spec(ILQRSettings())


@dataclass
class LatentTask:
    index: int
    seed: int  # the environment's reset seed
    reset_options: dict  # with the seed, puts the environment at the start state
    goal_frame: np.ndarray  # (H, W, C) uint8, the goal image
    goal_state: np.ndarray | None  # (S,) true goal state, when the goal was given as one
    start_points: np.ndarray  # (K, 2) tracked pixels at the start
    goal_points: np.ndarray  # (K, 2) tracked pixels in the goal image


def check_suite(suite: LatentSuiteRecipe, env: gym.Env, source: str) -> None:
    """Cross-key checks that need the environment: state sizes, region entries, the planner names."""
    _, info = env.reset(seed=0)
    S = len(info["state"])
    if len(suite.start_low) != len(suite.start_high):
        raise ForesightError(f"{source}: key 'start_high': {len(suite.start_high)} numbers for {len(suite.start_low)} "
                             f"in start_low")
    if suite.start_low and len(suite.start_low) != S:
        raise ForesightError(f"{source}: key 'start_low': {suite.env} has states of {S} numbers, got {len(suite.start_low)}")
    if any(lo > hi for lo, hi in zip(suite.start_low, suite.start_high)):
        raise ForesightError(f"{source}: key 'start_low': must be <= start_high in every entry")
    for g in suite.goal_states:
        if len(g) != S:
            raise ForesightError(f"{source}: key 'goal_states': {suite.env} has states of {S} numbers, got {list(g)}")
    if not suite.goal_states and not suite.goal_push_steps:
        raise ForesightError(f"{source}: key 'goal_states': give goal states, or goal_push_steps > 0 for pushed goals")
    if suite.goal_push_steps and not suite.goal_states and not hasattr(env.unwrapped, "steer_toward"):
        raise ForesightError(f"{source}: key 'goal_push_steps': {suite.env} has no pusher to steer; give goal_states")
    if suite.region == "state":
        if not suite.goal_states:
            raise ForesightError(f"{source}: key 'region': 'state' needs goal_states; use 'points' for pushed goals")
        if not suite.region_dims or any(d < 0 or d >= S for d in suite.region_dims):
            raise ForesightError(f"{source}: key 'region_dims': expected state entries in 0..{S - 1}, "
                                 f"got {list(suite.region_dims)}")
    for p in suite.baselines:
        if p not in PLANNERS:
            raise ForesightError(f"{source}: key 'baselines': unknown planner {p!r} (expected: {', '.join(PLANNERS)})")


def make_tasks(suite: LatentSuiteRecipe, env: gym.Env, source: str = "suite") -> list[LatentTask]:
    """The seeded start-goal pairs of a suite, with their goal images."""
    check_suite(suite, env, source)
    tasks = []
    for i in range(suite.tasks):
        rng = np.random.default_rng([suite.seed, i])
        seed = int(rng.integers(2**31))
        if suite.start_low:
            options = {"state": rng.uniform(suite.start_low, suite.start_high).tolist()}
        else:
            options = dict(suite.reset_options)
        _, info = _reset(env, seed, options, source, "start_low")
        start_points = info["points"].astype(np.float64)
        if suite.goal_states:
            goal_state = np.asarray(suite.goal_states[i % len(suite.goal_states)], dtype=np.float64)
            goal_frame, goal_info = _reset(env, seed, {"state": goal_state.tolist()}, source, "goal_states")
        else:  # a reachable goal: push the first object for a while, keep that picture
            goal_state = None
            u = env.unwrapped
            for _ in range(suite.goal_push_steps):
                noise = rng.normal(0.0, 0.3, env.action_space.shape)
                action = np.clip(u.steer_toward(0) + noise, env.action_space.low, env.action_space.high)
                goal_frame, _, _, _, goal_info = env.step(action.astype(np.float32))
        tasks.append(LatentTask(i, seed, options, goal_frame, goal_state, start_points,
                                goal_info["points"].astype(np.float64)))
    return tasks


def _reset(env, seed, options, source, key):
    try:
        return env.reset(seed=seed, options=options)
    except ForesightError as e:
        raise ForesightError(f"{source}: key {key!r}: {e}") from None


def in_goal(suite: LatentSuiteRecipe, task: LatentTask, info: dict) -> tuple[bool, float]:
    """(inside the goal region, distance to the goal) of the true state in ``info``."""
    if suite.region == "points":
        d = float(np.linalg.norm(info["points"][0] - task.goal_points[0]))
    else:
        dims = list(suite.region_dims)
        diff = np.asarray(info["state"], dtype=np.float64)[dims] - task.goal_state[dims]
        if suite.region_wrap:
            diff = (diff + math.pi) % (2 * math.pi) - math.pi
        d = float(np.linalg.norm(diff))
    return d <= suite.region_radius, d


# ----------------------------------------------------------------------------------------------------------
# The cost and the two optimizers


class LatentGoalCost:
    """c = sum_{t=1}^{T} w_t ||z_t - z_goal||^2 + alpha sum_t ||u_t / h||^2 (module docstring), batched.

    goal (Z,), half (A,) the half range of each action dimension.
    """

    def __init__(self, goal: torch.Tensor, half, settings: LatentCostSettings = LatentCostSettings()):
        self.goal = torch.as_tensor(goal, dtype=torch.float32).reshape(-1)  # (Z,)
        self.half = torch.as_tensor(half, dtype=torch.float32).reshape(-1)  # (A,)
        if not bool((self.half > 0).all()):
            raise ForesightError(f"half: expected positive half ranges of the actions, got {self.half.tolist()}")
        self.action_weight, self.terminal_weight = settings.action_weight, settings.terminal_weight

    def weights(self, steps: int) -> torch.Tensor:
        w = torch.ones(steps)
        w[-1] = self.terminal_weight
        return w  # (T,) for z_1..z_T

    def __call__(self, z: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """z (N, T+1, Z) with z_0 first, u (N, T, A) -> (N,)."""
        distance = ((z[:, 1:] - self.goal) ** 2).sum(-1)  # (N, T)
        effort = ((u / self.half) ** 2).sum(-1)  # (N, T)
        return (distance * self.weights(u.shape[1])).sum(-1) + self.action_weight * effort.sum(-1)

    def quadratic(self, steps: int):
        """The cost as iLQR wants it (float64 numpy): stage weights (T,) of ||z_t - g||^2 for t = 1..T and the
        action Hessian R (A, A) of 1/2 u^T (2R) u."""
        R = self.action_weight * np.diag(1.0 / self.half.double().numpy() ** 2)
        return self.weights(steps).double().numpy(), R


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
    """

    ALPHAS = (1.0, 0.5, 0.25, 0.1, 0.03)

    def __init__(self, model, cost: LatentGoalCost, low, high, settings: ILQRSettings = ILQRSettings()):
        self.model, self.cost, self.settings = model, cost, settings
        self.low = torch.as_tensor(low, dtype=torch.float32).reshape(-1)
        self.high = torch.as_tensor(high, dtype=torch.float32).reshape(-1)
        if self.low.shape != self.high.shape or not bool((self.low < self.high).all()):
            raise ForesightError(f"low/high: expected action bounds with low < high, got {self.low.tolist()} and "
                                 f"{self.high.tolist()}")
        self.plan_u: torch.Tensor | None = None  # (T, A) the warm start
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
        """z0 (Z,) -> the planned actions (T, A) and their cost."""
        T, s = self.horizon, self.settings
        if u_init is None:
            u_init = self.plan_u if self.plan_u is not None else ((self.low + self.high) / 2).expand(T, -1)
        u = torch.maximum(torch.minimum(torch.as_tensor(u_init, dtype=torch.float32), self.high), self.low)
        if u.shape != (T, len(self.low)):
            raise ForesightError(f"u_init: expected shape ({T}, {len(self.low)}), got {tuple(u.shape)}")
        z0 = torch.as_tensor(z0, dtype=torch.float32).reshape(1, -1)
        with torch.no_grad():
            z = rollout(self.model, z0, u[None])[0]  # (T+1, Z)
            J = float(self.cost(z[None], u[None])[0])
        w, R = self.cost.quadratic(T)
        g = self.cost.goal.double().numpy()
        low, high = self.low.double().numpy(), self.high.double().numpy()
        mu = s.regularization
        self.iterations_run = 0
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
                costs = self.cost(zn, un)
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
        self.plan_u = u.clone()
        return u, J


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


# ----------------------------------------------------------------------------------------------------------
# The MPC loop


class LatentModel:
    """The model as the planner uses it: images to latent means, in inference mode, timed."""

    def __init__(self, model, env: gym.Env):
        cfg = getattr(model, "config", None)
        if cfg is None or not all(hasattr(model, m) for m in ("encode", "transition", "linearize")):
            raise ForesightError("--model: not a latent model (E2C or its VAE baseline is needed for latent planning)")
        H, W, C = env.observation_space.shape
        c, h, w = cfg.image_shape
        if (h, w) != (H, W) or c % C:
            raise ForesightError(f"--model: encodes {h}x{w} images of {c} channel(s), the environment gives {H}x{W}x{C}"
                                 f" frames")
        if cfg.action_dim != env.action_space.shape[0]:
            raise ForesightError(f"--model: takes {cfg.action_dim}-d actions, the environment's are "
                                 f"{env.action_space.shape[0]}-d")
        self.model, self.stack = model.eval(), c // C
        self.seconds = 0.0

    def encode(self, frames: list[np.ndarray]) -> torch.Tensor:
        """The latent mean (Z,) of the last `stack` frames (H, W, C) uint8, oldest first along the channels."""
        x = np.concatenate(frames[-self.stack:], axis=-1)  # (H, W, stack * C)
        x = torch.as_tensor(x, dtype=torch.float32).permute(2, 0, 1)[None] / 255
        with torch.no_grad():  # not inference mode: the VAE's iLQR differentiates the transition at this latent
            return self.model.encode(x).mean[0]

    def decode(self, z: torch.Tensor) -> np.ndarray:
        """The last frame of the decoded observation, uint8 (H, W, C)."""
        with torch.no_grad():
            x = self.model.decode(z[None])[0]  # (stack * C, H, W)
        c = x.shape[0] // self.stack
        return (x[-c:].clamp(0, 1) * 255).byte().permute(1, 2, 0).numpy()


@dataclass
class LatentOutcome:
    outcome: mpc.Outcome  # what `mpc.aggregate` summarises (success: in the goal region at the last step)
    in_goal: list[bool] = field(default_factory=list)  # after each step

    @property
    def percent_in_goal(self) -> float:
        return 100.0 * float(np.mean(self.in_goal))

    def summary(self) -> dict:
        return {**self.outcome.summary(), "percent_in_goal": round(self.percent_in_goal, 2)}


def run_task(env: gym.Env, task: LatentTask, suite: LatentSuiteRecipe, planner: str, model: LatentModel | None,
             record: bool = True) -> LatentOutcome:
    """One start-goal pair with one planner; the true state decides the goal region after every step."""
    if planner not in PLANNERS:
        raise ForesightError(f"planner: expected one of {', '.join(PLANNERS)}, got {planner!r}")
    if planner in ("cem", "ilqr") and model is None:
        raise ForesightError(f"planner {planner!r} needs --model RUN (an E2C or VAE run)")
    obs, info = env.reset(seed=task.seed, options=task.reset_options)
    low, high = env.action_space.low, env.action_space.high
    rng = np.random.default_rng([suite.seed, task.index, 7])
    stack = model.stack if model else 1
    frames = [obs] * stack  # at rest before the first step: the first frame repeated
    goal_z = model.encode([task.goal_frame] * stack) if model else None
    cost = LatentGoalCost(goal_z, (high - low) / 2, suite.cost) if model else None
    if planner in ("cem", "oracle"):
        cem = CEM(suite.cem, low, high)
    elif planner == "ilqr":
        ilqr = LatentILQR(model.model, cost, low, high, suite.ilqr)
    video, flags, plan_seconds, replans, decoded = [], [], 0.0, 0, None
    t = 0
    while t < suite.steps:
        n = min(suite.replan_every, suite.steps - t)
        start = time.perf_counter()
        if planner == "random":
            executed = rng.uniform(low, high, (n, *low.shape)).astype(np.float32)
        elif planner == "oracle":
            plan = cem.expand(cem.plan(lambda actions: _true_cost(env, suite, task, cem.expand(actions), high - low)).best)
            cem.shift(max(1, n // suite.cem.repeat))
            executed = plan[:n].numpy()
            replans += 1
        else:
            z0 = model.encode(frames)
            if planner == "cem":
                def score(actions):  # (N, H, A) decisions -> (N,)
                    u = cem.expand(actions)
                    return cost(rollout(model.model, z0.expand(len(u), -1), u), u)
                plan = cem.expand(cem.plan(score).best)  # CEM scores without gradients
                cem.shift(max(1, n // suite.cem.repeat))
            else:
                plan, _ = ilqr.plan(z0)
                ilqr.shift(n)
            if len(plan) < n:
                raise ForesightError(f"{suite.name}: key 'replan_every': {n} steps between plans, but the plan has "
                                     f"only {len(plan)}")
            executed = plan[:n].numpy()
            replans += 1
            if record:
                decoded = model.decode(z0)
        plan_seconds += time.perf_counter() - start
        for action in executed:
            obs, _, _, _, info = env.step(action)
            frames.append(obs)
            inside, _ = in_goal(suite, task, info)
            flags.append(inside)
            if record:
                video.append(_panel(obs, info["points"][:1], task, decoded, inside))
        frames = frames[-stack:]
        t += n
    inside, distance = in_goal(suite, task, info)
    final_px = float(np.linalg.norm(info["points"][0] - task.goal_points[0]))
    seconds = plan_seconds / max(replans, 1)
    outcome = mpc.Outcome(
        task=mpc.Task(task.index, task.seed, task.start_points[:1], task.goal_points[:1]), planner=planner,
        start_distance=float(np.linalg.norm(task.start_points[0] - task.goal_points[0])), final_distance=final_px,
        success=inside, replans=replans, seconds_per_replan=seconds, model_seconds_per_replan=seconds, video=video)
    return LatentOutcome(outcome, flags)


def _true_cost(env: gym.Env, suite: LatentSuiteRecipe, task: LatentTask, u: torch.Tensor, span) -> torch.Tensor:
    """The latent cost's form on the true simulator: u (N, T, A) -> (N,), each sequence from the current state."""
    sim = env.unwrapped
    if not hasattr(sim, "set_sim_state"):
        raise ForesightError(f"planner 'oracle': {suite.env} cannot save and restore its state (no set_sim_state)")
    weights = LatentGoalCost(torch.zeros(1), span / 2, suite.cost).weights(u.shape[1]).numpy()
    effort = suite.cost.action_weight * ((u / torch.as_tensor(span / 2)) ** 2).sum((1, 2)).numpy()
    start, cost = sim.get_sim_state(), effort.astype(np.float64)
    try:
        for n, sequence in enumerate(u.numpy()):
            sim.set_sim_state(start)
            for t, action in enumerate(sequence):
                _, _, _, _, info = sim.step(action)  # unwrapped: no time limit counts these
                cost[n] += weights[t] * in_goal(suite, task, info)[1] ** 2
    finally:
        sim.set_sim_state(start)
    return torch.as_tensor(cost)


def _panel(frame, points, task: LatentTask, decoded, inside: bool) -> np.ndarray:
    """camera frame (goal pixel: cross, tracked pixel: circle; green border in the goal region) | goal image |
    the model's decoding of the observation it planned from."""
    scale = max(1, 160 // frame.shape[1])
    now = viz.mark(viz.draw_points(frame, task.goal_points[:1], scale, marker="cross"), points, scale)
    if inside:
        now[:2], now[-2:], now[:, :2], now[:, -2:] = (0, 200, 0), (0, 200, 0), (0, 200, 0), (0, 200, 0)
    panels = [now, viz.draw_points(task.goal_frame, task.goal_points[:1], scale, marker="cross")]
    if decoded is not None:
        panels.append(viz.enlarge(decoded, scale))
    return viz.grid([panels])


def summarise(outcomes: list[LatentOutcome]) -> dict:
    """`mpc.aggregate`'s figures plus the percentage of steps in the goal region, mean and std over tasks."""
    percent = np.array([o.percent_in_goal for o in outcomes])
    return {**mpc.aggregate([o.outcome for o in outcomes]),
            "percent_in_goal": round(float(percent.mean()), 2), "percent_in_goal_std": round(float(percent.std()), 2),
            "per_task": [o.summary() for o in outcomes]}


def run_suite(suite: LatentSuiteRecipe, out, model, planners: list[str], source: str = "suite", videos: int = 10,
              progress: bool = True, resolved: dict | None = None) -> dict:
    """Every task of ``suite`` with each planner: videos of the first ``videos`` tasks per planner and
    ``summary.json`` under ``out`` (the pixel planner's layout)."""
    from tqdm import tqdm

    from foresight.envs import make_env

    for p in planners:
        if p not in PLANNERS:
            raise ForesightError(f"--planners: unknown planner {p!r} (expected: {', '.join(PLANNERS)})")
    out = Path(out)
    env = make_env(suite.env, suite.env_kwargs, source)
    try:
        latent = LatentModel(model, env) if model is not None else None
        if latent is None and any(p in ("cem", "ilqr") for p in planners):
            raise ForesightError("--model: planners cem and ilqr need a trained E2C or VAE run (--model RUN)")
        tasks = make_tasks(suite, env, source)
        summary = {"suite": suite.name, "env": suite.env, "tasks": len(tasks), "recipe": resolved}
        for planner in planners:
            outcomes = []
            for task in tqdm(tasks, desc=f"plan {suite.name} [{planner}]", disable=not progress, dynamic_ncols=True):
                o = run_task(env, task, suite, planner, latent, record=task.index < videos)
                if o.outcome.video:
                    viz.write_gif(out / planner / f"task-{task.index:03d}.gif", o.outcome.video, fps=10)
                    o.outcome.video = []
                outcomes.append(o)
            summary[planner] = summarise(outcomes)
            evaluation.write_json(out / "summary.json", summary)  # after each planner: nothing lost on a kill
    finally:
        env.close()
    return summary


def cmd_plan(args, model) -> int:
    """`foresight plan SUITE --model RUN` for a latent (E2C / VAE) run: the CLI hands over here."""
    from foresight import recipes

    if not args.suite:
        raise ForesightError("plan: a latent model plans a suite of goal images; give a suite file "
                             "(plan/planar.toml, plan/pendulum.toml, plan/point_push_goal.toml)")
    suite = recipes.load(LatentSuiteRecipe, args.suite, args.set)
    trained = json.loads((Path(args.model) / "recipe.json").read_text()).get("dataset", {}).get("env", {}).get("id")
    if trained not in (None, suite.env):
        raise ForesightError(f"--model: was trained on {trained} images, the suite {args.suite} runs {suite.env}")
    out = Path(args.out) if args.out else Path(args.suite).parent / "results" / suite.name
    planners = args.planners.split(",") if args.planners else ["cem", "ilqr", *suite.baselines]
    summary = run_suite(suite, out, model, planners, args.suite, args.videos, not args.no_progress,
                        resolved={**recipes.to_dict(suite), "model": str(args.model)})
    for p in planners:
        s = summary[p]
        print(f"[{p:>6}] {s['percent_in_goal']:.1f} +- {s['percent_in_goal_std']:.1f}% of steps in the goal region, "
              f"in it at the end {100 * s['success']:.0f}% of {s['tasks']}, {s['seconds_per_replan']:.3f} s per replan")
    print(f"results in {out} (summary.json, videos per planner)")
    return 0
