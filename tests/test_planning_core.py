"""The model-agnostic planning core: the CEM optimizer and the cost terms."""
import math

import numpy as np
import pytest
import torch

from foresight import recipes
from foresight.errors import ForesightError
from foresight.planning.cem import CEM, CEMConfig, colored_noise, repeat_actions
from foresight.planning.costs import (TERMS, Approach, CostContext, CostSettings, DesignatedPixels, Effort,
                                     GoalDistance, GoalImage, Rollout, build_cost, step_weights)

LOW, HIGH = [-2.0, -1.0], [2.0, 3.0]


def quadratic(target):
    """Score (N, H, A) -> (N,) squared distance to a target sequence (H, A); records every batch it sees."""
    seen = []

    def score(x):
        assert x.dtype == torch.float32 and x.dim() == 3
        seen.append(x.clone())
        return ((x - target) ** 2).sum(dim=(1, 2))

    score.seen = seen
    return score


# ---------------------------------------------------------------------------------------------------------
# CEM


@pytest.mark.parametrize("beta", [0.0, 2.0])
def test_cem_finds_the_minimum_of_a_quadratic(beta):
    target = torch.tensor([[1.0, 0.0], [1.2, 0.5], [1.4, 1.0], [1.2, 1.5], [1.0, 2.0]])  # inside the bounds
    cem = CEM(CEMConfig(iterations=10, noise_beta=beta, seed=1), LOW, HIGH)
    score = quadratic(target)
    result = cem.plan(score)
    start = ((torch.tensor([0.0, 1.0]) - target) ** 2).sum()  # the cost of the prior mean, the bounds' centre
    assert ((result.mean - target) ** 2).sum() < 0.03 * start  # (over 100 seeds the worst is 0.008 / 0.022)
    assert (result.mean - target).abs().max() < 0.3
    assert result.best_cost == pytest.approx(((result.best - target) ** 2).sum().item(), rel=1e-5)
    assert result.best_cost == min(result.costs)
    assert result.costs[-1] < result.costs[0] / 10  # the search improves, not just samples
    # one score call per iteration, each with all samples
    assert len(score.seen) == 10 and all(x.shape == (200, 5, 2) for x in score.seen)
    assert result.samples_scored == 10 * 200 and len(result.costs) == 10
    assert result.mean.shape == result.best.shape == result.std.shape == (5, 2)


def test_samples_and_plans_respect_the_bounds():
    target = torch.tensor([[5.0, -4.0]]).expand(5, 2)  # outside: the optimum is the corner (high[0], low[1])
    cem = CEM(CEMConfig(iterations=6, init_std=1.0, noise_beta=1.0), LOW, HIGH)
    score = quadratic(target)
    result = cem.plan(score)
    low, high = torch.tensor(LOW), torch.tensor(HIGH)
    for x in score.seen + [result.mean[None], result.best[None]]:
        assert bool((x >= low).all()) and bool((x <= high).all())
    # clipped, not rejected: the search piles samples onto the bound the optimum lies beyond
    assert (score.seen[-1][..., 0] == HIGH[0]).float().mean() > 0.1
    corner = torch.tensor([HIGH[0], LOW[1]]).expand(5, 2)
    assert torch.allclose(result.best, corner, atol=0.4) and torch.allclose(result.mean, corner, atol=0.4)


def test_colored_noise_is_smoother_at_equal_variance():
    g = torch.Generator().manual_seed(0)
    white = colored_noise(0.0, 4000, 16, 2, g)
    brown = colored_noise(2.0, 4000, 16, 2, g)
    assert white.shape == brown.shape == (4000, 16, 2)
    assert white.var().item() == pytest.approx(1.0, abs=0.05)
    assert brown.var().item() == pytest.approx(1.0, abs=0.05)
    # the variance is the same at every step, not just on average
    assert torch.allclose(brown.var(dim=(0, 2)), torch.ones(16), atol=0.1)
    msd = lambda x: (x.diff(dim=1) ** 2).mean().item()  # noqa: E731
    assert msd(brown) < 0.3 * msd(white)
    assert msd(white) == pytest.approx(2.0, abs=0.1)  # independent steps: E(x_t - x_t-1)^2 = 2


def test_cem_samples_are_correlated_in_time_with_colored_noise():
    score = quadratic(torch.zeros(10, 2))
    CEM(CEMConfig(horizon=10, iterations=1, noise_beta=2.0, init_std=0.1), [-1, -1], [1, 1]).plan(score)
    x = score.seen[0]  # (N, 10, 2), well inside the bounds
    step_corr = torch.corrcoef(torch.stack([x[:, :-1].flatten(), x[:, 1:].flatten()]))[0, 1]
    assert step_corr > 0.5


def test_warm_start_shifts_the_mean():
    target = torch.tensor([[1.5, -0.5], [-1.0, 2.5], [0.3, 0.0], [-1.7, 1.2], [0.8, 2.0]])
    cem = CEM(CEMConfig(iterations=4), LOW, HIGH)
    centre = torch.tensor([0.0, 1.0])
    assert torch.equal(cem.initial_mean, centre.expand(5, 2))
    mean = cem.plan(quadratic(target)).mean
    assert torch.equal(cem.initial_mean, mean)
    cem.shift(2)
    assert torch.equal(cem.initial_mean, torch.cat([mean[2:], centre.expand(2, 2)]))
    # the next plan samples around the shifted mean
    score = quadratic(target)
    cem.plan(score)
    first = score.seen[0]
    assert (first.mean(0) - torch.cat([mean[2:], centre.expand(2, 2)])).abs().max() < 0.3
    cem.shift(0)
    cem.shift(5)  # a whole horizon executed: nothing left to warm start from
    assert torch.equal(cem.initial_mean, centre.expand(5, 2))
    cem.plan(quadratic(target))
    cem.reset()
    assert torch.equal(cem.initial_mean, centre.expand(5, 2))
    cold = CEM(CEMConfig(warm_start=False), LOW, HIGH)
    cold.plan(quadratic(target))
    cold.shift(1)
    assert torch.equal(cold.initial_mean, centre.expand(5, 2))


def test_keep_elites_rescores_the_previous_elites():
    target = torch.full((5, 2), 0.5)
    cem = CEM(CEMConfig(samples=50, elites=10, iterations=3, keep_elites=0.3), LOW, HIGH)
    score = quadratic(target)
    cem.plan(score)
    for before, after in zip(score.seen, score.seen[1:]):
        top3 = before[((before - target) ** 2).sum(dim=(1, 2)).argsort()[:3]]
        assert after.shape == (50, 5, 2)
        assert torch.equal(after[-3:], top3)
    # and across planning steps, shifted like the mean
    last = score.seen[-1]
    top3 = last[((last - target) ** 2).sum(dim=(1, 2)).argsort()[:3]]
    cem.shift(1)
    score2 = quadratic(target)
    cem.plan(score2)
    assert torch.equal(score2.seen[0][-3:, :4], top3[:, 1:])
    assert torch.equal(score2.seen[0][-3:, 4], torch.tensor([0.0, 1.0]).expand(3, 2))


def test_cem_is_deterministic_for_a_seed_or_generator():
    target = torch.full((5, 2), 0.5)
    a = CEM(CEMConfig(seed=3, noise_beta=1.0), LOW, HIGH).plan(quadratic(target))
    b = CEM(CEMConfig(seed=3, noise_beta=1.0), LOW, HIGH).plan(quadratic(target))
    c = CEM(CEMConfig(seed=4, noise_beta=1.0), LOW, HIGH).plan(quadratic(target))
    assert torch.equal(a.mean, b.mean) and torch.equal(a.best, b.best) and a.costs == b.costs
    assert not torch.equal(a.best, c.best)
    d = CEM(CEMConfig(seed=0), LOW, HIGH).plan(quadratic(target), generator=torch.Generator().manual_seed(7))
    e = CEM(CEMConfig(seed=1), LOW, HIGH).plan(quadratic(target), generator=torch.Generator().manual_seed(7))
    assert torch.equal(d.best, e.best)


def test_nan_costs_never_become_elites():
    target = torch.full((5, 2), 0.5)

    def score(x):
        c = ((x - target) ** 2).sum(dim=(1, 2))
        c[x[:, 0, 0] > 0.0] = math.nan  # "diverged" predictions, including the region of the optimum
        return c

    result = CEM(CEMConfig(iterations=4), LOW, HIGH).plan(score)
    assert math.isfinite(result.best_cost)
    assert result.best[0, 0] <= 0.0 and result.mean[0, 0] <= 0.0


def test_expand_holds_each_decision_for_repeat_steps():
    cem = CEM(CEMConfig(repeat=3), LOW, HIGH)
    actions = torch.arange(2 * 5 * 2, dtype=torch.float32).view(2, 5, 2)
    long = cem.expand(actions)
    assert long.shape == (2, 15, 2)
    assert torch.equal(long[:, 0::3], actions) and torch.equal(long[:, 2::3], actions)
    assert cem.expand(actions[0]).shape == (15, 2)  # a single plan (H, A) works too
    assert torch.equal(repeat_actions(actions, 1), actions)


@pytest.mark.parametrize(
    "field, value",
    [("samples", 0), ("elites", 300), ("elites", 0), ("iterations", 1.5), ("horizon", 0), ("repeat", True),
     ("init_std", 0.0), ("momentum", 1.0), ("momentum", -0.1), ("noise_beta", -1.0), ("keep_elites", 1.5),
     ("min_std", -0.1), ("min_std", 2.0), ("warm_start", 1), ("seed", -1), ("init_std", math.nan)],
)
def test_bad_config_names_the_field(field, value):
    with pytest.raises(ForesightError, match=f"s.toml: key '{field}': expected"):
        recipes.from_dict(CEMConfig, {field: value}, "s.toml")


def test_bad_bounds_and_scores_are_errors():
    with pytest.raises(ForesightError, match="low"):
        CEM(CEMConfig(), [[0.0, 0.0]], [1.0, 1.0])
    with pytest.raises(ForesightError, match="high"):
        CEM(CEMConfig(), [0.0, 0.0], [1.0, math.inf])
    with pytest.raises(ForesightError, match="low and high"):
        CEM(CEMConfig(), [0.0, 0.0], [1.0, 1.0, 1.0])
    with pytest.raises(ForesightError, match="low must be < high"):
        CEM(CEMConfig(), [0.0, 1.0], [1.0, 1.0])
    cem = CEM(CEMConfig(), LOW, HIGH)
    with pytest.raises(ForesightError, match="score"):
        cem.plan(lambda x: x.sum(dim=2))  # (N, H), not (N,)
    with pytest.raises(ForesightError, match="executed"):
        cem.shift(-1)


# ---------------------------------------------------------------------------------------------------------
# Costs


def delta(h, w, row, col):
    d = torch.zeros(h, w)
    d[row, col] = 1.0
    return d


def designated(goals, image_size, last_weight=10.0, weight=1.0):
    """The designated-pixel term as a function of distributions (N, T, K, H, W) -> (N,)."""
    term = DesignatedPixels(torch.tensor(goals, dtype=torch.float32), image_size, weight, last_weight)
    return lambda dists: term(Rollout(actions=torch.zeros(*dists.shape[:2], 2), dists=dists))


def test_designated_pixel_cost_is_zero_at_the_goal_and_the_distance_away_from_it():
    cost = designated([[4.0, 5.0]], (16, 20), last_weight=10.0)
    at_goal = delta(16, 20, 4, 5).expand(1, 3, 1, 16, 20)  # (N=1, T=3, K=1, H, W)
    away = delta(16, 20, 7, 9).expand(1, 3, 1, 16, 20)  # 3 rows, 4 cols away: distance 5
    assert cost(at_goal).item() == pytest.approx(0.0, abs=1e-6)
    assert cost(away).item() == pytest.approx(5.0 * (1 + 1 + 10), rel=1e-5)
    # only the last step far: its distance counts ten times
    moving = torch.stack([delta(16, 20, 4, 5), delta(16, 20, 4, 5), delta(16, 20, 7, 9)]).view(1, 3, 1, 16, 20)
    assert cost(moving).item() == pytest.approx(50.0, rel=1e-5)
    # fractional goals: (row, col) = (0, 0) is the centre of the top-left pixel
    half = designated([[0.5, 0.0]], (4, 4), last_weight=1.0)
    assert half(delta(4, 4, 0, 0).view(1, 1, 1, 4, 4)).item() == pytest.approx(0.5)
    assert step_weights(5, 10.0).tolist() == [1.0, 1.0, 1.0, 1.0, 10.0]


def test_designated_pixel_cost_on_the_simulators_pixels_is_their_distance():
    """The oracle's rollouts hold object pixels, not distributions: the same term gives their distance, as a delta
    distribution at each pixel would."""
    goals = [[4.0, 5.0], [10.0, 10.0]]
    points = torch.tensor([[[[7.0, 9.0], [10.0, 2.0]]] * 2])  # (N=1, T=2, K=2, 2): 5 and 8 px from the goals
    term = DesignatedPixels(torch.tensor(goals), (16, 20), 1.0, 10.0)
    assert term(Rollout(actions=torch.zeros(1, 2, 2), points=points)).item() == pytest.approx(13.0 * 11)
    as_dists = torch.stack([delta(16, 20, 7, 9), delta(16, 20, 10, 2)]).expand(1, 2, 2, 16, 20)
    assert designated(goals, (16, 20))(as_dists).item() == pytest.approx(13.0 * 11, rel=1e-5)


def test_effort_is_the_weighted_sum_of_squared_actions_over_their_half_range():
    actions = torch.tensor([[[1.0, 0.0], [0.5, -0.5], [0.0, 2.0]], [[0.0, 0.0], [0.0, 0.0], [0.0, 0.0]]])
    torch.testing.assert_close(Effort([1.0, 1.0], 2.0)(Rollout(actions=actions)), torch.tensor([2.0 * (1 + 0.5 + 4), 0.0]))
    torch.testing.assert_close(Effort([1.0, 2.0], 1.0)(Rollout(actions=actions)), torch.tensor([1 + 0.25 + 0.0625 + 1, 0.0]))
    assert np.allclose(Effort([1.0, 2.0], 3.0).hessian(), np.diag([3.0, 0.75]))


def test_designated_pixel_cost_is_lower_nearer_the_goal():
    h = w = 32
    cost = designated([[20.0, 20.0]], (h, w))
    rows, cols = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                                indexing="ij")

    def blob(r, c, sigma=2.0):
        p = torch.exp(-((rows - r) ** 2 + (cols - c) ** 2) / (2 * sigma**2))
        return p / p.sum()

    dists = torch.stack([blob(5, 5), blob(12, 12), blob(19, 21)]).view(3, 1, 1, h, w).expand(3, 4, 1, h, w)
    c = cost(dists)
    assert c.shape == (3,)
    assert c[0] > c[1] > c[2]
    # the expected distance, not the distance of the expected position: a spread-out blob at the goal costs > 0
    assert cost(blob(20, 20, sigma=3.0).view(1, 1, 1, h, w)).item() > 1.0


def test_designated_pixel_cost_weights_several_pixels_and_renormalises():
    goals = [[2.0, 2.0], [10.0, 10.0]]
    p0 = delta(16, 16, 2, 5)  # 3 from goal 0
    p1 = delta(16, 16, 10, 2)  # 8 from goal 1
    dists = torch.stack([p0, p1]).view(1, 1, 2, 16, 16)  # (N, T=1, K=2, H, W)
    assert designated(goals, (16, 16))(dists).item() == pytest.approx(3.0 * 10 + 8.0 * 10)  # T=1: the last step
    assert designated(goals, (16, 16), last_weight=1.0, weight=0.5)(dists).item() == pytest.approx(0.5 * (3 + 8))
    # mass split between two pixels: the expected distance; total mass does not matter
    split = (0.5 * delta(16, 16, 2, 5) + 0.5 * delta(16, 16, 2, 2)).view(1, 1, 1, 16, 16)
    assert designated(goals[:1], (16, 16), last_weight=1.0)(split).item() == pytest.approx(1.5)
    assert designated(goals[:1], (16, 16), last_weight=1.0)(2 * split).item() == pytest.approx(1.5)
    # a distribution that lost all its mass is not "at the goal": it costs the farthest distance
    lost = torch.zeros(1, 1, 1, 16, 16)
    assert designated(goals[:1], (16, 16), last_weight=1.0)(lost).item() == pytest.approx(math.hypot(13, 13))


def test_goal_image_cost():
    goal = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(0))
    frames = torch.stack([goal.expand(4, 3, 8, 8), (goal + 0.1).expand(4, 3, 8, 8)])  # (N=2, T=4, C, H, W)
    c = GoalImage(goal, 1.0, last_weight=10.0)(Rollout(actions=torch.zeros(2, 4, 2), frames=frames))
    assert c.shape == (2,)
    assert c[0].item() == pytest.approx(0.0, abs=1e-6)
    per_step = 0.1 * math.sqrt(3 * 8 * 8)  # L2 distance of a uniform 0.1 offset
    assert c[1].item() == pytest.approx(per_step * (3 + 10), rel=1e-4)


def test_goal_distance_weighs_the_last_step():
    to_goal = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 1.0]])
    term = GoalDistance(2.0, last_weight=5.0)
    torch.testing.assert_close(term(Rollout(actions=torch.zeros(2, 3, 1), to_goal=to_goal)),
                               torch.tensor([2.0 * (1 + 2 + 15), 2.0 * 5]))
    assert term.stage_weights(3).tolist() == [2.0, 2.0, 10.0]


def test_approach_cost_draws_the_agent_round_to_the_objects_far_side():
    """The goal lies between agent and object: a plan ending behind the object (its far side from the goal) costs
    less than keeping still or backing away; on the push point the term is zero; it fades as the object arrives."""
    goal, obj = np.array([[10.0, 10.0]]), np.array([[10.0, 20.0]])  # object 10 px right of its goal
    objects = torch.tensor(obj, dtype=torch.float32).view(1, 1, 1, 2).expand(3, 4, 1, 2)  # no plan moves it
    start = torch.tensor([5.0, 10.0])
    behind = torch.tensor([10.0, 29.0])  # 9 px past the object, away from the goal: the push point
    still = start.expand(4, 2)
    back = start + torch.linspace(1, 4, 4)[:, None] * torch.tensor([0.0, -2.0])
    around = torch.stack([torch.tensor([2.0, 18.0]), torch.tensor([2.0, 26.0]), torch.tensor([6.0, 30.0]), behind])
    agent = torch.stack([still, back, around])  # (3 plans, 4 steps, 2)

    def cost(agent, objects, now, weight=1.0, last_weight=10.0):
        rollout = Rollout(actions=torch.zeros(*agent.shape), points=objects, now=now, agent_path=lambda a: agent)
        return Approach(goal, 9.0, weight, last_weight)(rollout)

    c = cost(agent, objects, obj, weight=0.5, last_weight=1.0)
    assert c[2] < c[0] < c[1], c
    at_push = cost(behind.view(1, 1, 2), objects[:1, :1], obj)
    assert at_push.item() == pytest.approx(0.0, abs=1e-5)
    # the object at 3 px from its goal: the term is a third of its size at >= 9 px
    near = np.array([[10.0, 13.0]])
    near_objects = torch.tensor(near, dtype=torch.float32).view(1, 1, 1, 2)
    far_term = cost(start.view(1, 1, 2), near_objects, obj)
    near_term = cost(start.view(1, 1, 2), near_objects, near)
    assert near_term.item() == pytest.approx(far_term.item() / 3, rel=1e-5)


def test_the_cost_is_the_sum_of_the_suites_weighted_terms():
    """build_cost takes the terms with a weight > 0, in TERMS order; every term is a field of the [cost] table; a
    term the planner's rollouts cannot feed, or no term at all, is one clear error naming the key."""
    assert set(TERMS) <= {f for f in CostSettings.__dataclass_fields__}
    context = CostContext(goals=np.array([[4.0, 5.0]]), image_size=(16, 20), camera_size=(16, 20), half=np.ones(2))
    settings = recipes.from_dict(CostSettings, {"designated_pixels": 2.0, "effort": 0.5}, "s.toml")
    cost = build_cost(settings, context)
    assert list(cost.terms) == ["designated_pixels", "effort"]
    dists = delta(16, 20, 7, 9).expand(2, 3, 1, 16, 20)
    r = Rollout(actions=torch.ones(2, 3, 2), dists=dists)
    parts = cost.parts(r)
    torch.testing.assert_close(cost(r), parts["designated_pixels"] + parts["effort"])
    torch.testing.assert_close(parts["designated_pixels"], torch.full((2,), 2.0 * 5.0 * (1 + 1 + 10)))
    torch.testing.assert_close(parts["effort"], torch.full((2,), 0.5 * 6))
    with pytest.raises(ForesightError, match=r"s.toml: key 'cost.approach': this planner's rollouts cannot feed"):
        build_cost(recipes.from_dict(CostSettings, {"approach": 1.0}, "s"), context, ("designated_pixels",), "s.toml")
    with pytest.raises(ForesightError, match=r"s.toml: key 'cost': no term has a weight > 0"):
        build_cost(CostSettings(), context, where="s.toml")
    for key, value in (("effort", -1.0), ("approach_px", 0.0), ("last_weight", math.inf)):
        with pytest.raises(ForesightError, match=f"s.toml: key '{key}': expected"):
            recipes.from_dict(CostSettings, {key: value}, "s.toml")
