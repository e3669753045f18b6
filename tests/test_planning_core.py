"""The model-agnostic planning core: the CEM optimizer and the designated-pixel / goal-image costs."""
import math

import pytest
import torch

from foresight import recipes
from foresight.errors import ForesightError
from foresight.planning.cem import CEM, CEMConfig, colored_noise, repeat_actions
from foresight.planning.costs import (DesignatedPixelCost, action_cost, approach_cost, designated_pixel_cost,
                                     goal_image_cost, step_weights)

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


def test_designated_pixel_cost_is_zero_at_the_goal_and_the_distance_away_from_it():
    cost = DesignatedPixelCost(goals=[[4.0, 5.0]], image_size=(16, 20), last_weight=10.0)
    at_goal = delta(16, 20, 4, 5).expand(1, 3, 1, 16, 20)  # (N=1, T=3, K=1, H, W)
    away = delta(16, 20, 7, 9).expand(1, 3, 1, 16, 20)  # 3 rows, 4 cols away: distance 5
    assert cost(at_goal).item() == pytest.approx(0.0, abs=1e-6)
    assert cost(away).item() == pytest.approx(5.0 * (1 + 1 + 10), rel=1e-5)
    # only the last step far: its distance counts ten times
    moving = torch.stack([delta(16, 20, 4, 5), delta(16, 20, 4, 5), delta(16, 20, 7, 9)]).view(1, 3, 1, 16, 20)
    assert cost(moving).item() == pytest.approx(50.0, rel=1e-5)
    # fractional goals: (row, col) = (0, 0) is the centre of the top-left pixel
    half = DesignatedPixelCost(goals=[[0.5, 0.0]], image_size=(4, 4), last_weight=1.0)
    assert half(delta(4, 4, 0, 0).view(1, 1, 1, 4, 4)).item() == pytest.approx(0.5)


def test_cost_ending_with_the_task_weighs_its_last_step_and_ignores_the_rest():
    assert step_weights(5, 10.0, end=3).tolist() == [1.0, 1.0, 10.0, 0.0, 0.0]
    assert step_weights(5, 10.0, end=9).tolist() == step_weights(5, 10.0).tolist() == [1.0, 1.0, 1.0, 1.0, 10.0]
    cost = DesignatedPixelCost(goals=[[4.0, 5.0]], image_size=(16, 20), last_weight=10.0)
    # at the goal when the task ends (step 2), then pushed 5 px away: no cost when the task ends there
    late = torch.stack([delta(16, 20, 7, 9), delta(16, 20, 4, 5), delta(16, 20, 7, 9)]).view(1, 3, 1, 16, 20)
    assert cost(late, end=2).item() == pytest.approx(5.0, rel=1e-5)
    assert cost(late).item() == pytest.approx(5.0 + 0.0 + 50.0, rel=1e-5)
    torch.testing.assert_close(cost(late, end=2), cost(late[:, :2]))
    with pytest.raises(ForesightError, match="end must be an integer >= 1"):
        cost(late, end=0)


def test_mean_distance_ignores_the_spread_that_the_expected_distance_counts():
    goal = [[8.0, 10.0]]
    blur = torch.zeros(1, 1, 1, 16, 20)
    blur[..., 8, 7] = blur[..., 8, 13] = 0.5  # centred on the goal, 3 px either side
    expected = DesignatedPixelCost(goal, (16, 20), last_weight=1.0)
    mean = DesignatedPixelCost(goal, (16, 20), last_weight=1.0, distance="mean")
    assert expected(blur).item() == pytest.approx(3.0) and mean(blur).item() == pytest.approx(0.0, abs=1e-6)
    # a sharp distribution: both are its distance; moved toward the goal, both fall
    for row in (2, 5):
        sharp = delta(16, 20, row, 10).view(1, 1, 1, 16, 20)
        assert mean(sharp).item() == pytest.approx(expected(sharp).item()) == pytest.approx(8.0 - row)
    # unnormalised mass: the centre of mass, not the sum
    torch.testing.assert_close(mean(blur * 3), mean(blur))
    with pytest.raises(ForesightError, match=r"distance must be one of \('expected', 'mean'\), got 'mode'"):
        DesignatedPixelCost(goal, (16, 20), distance="mode")


def test_action_cost_is_the_weighted_effort_over_the_counted_steps():
    actions = torch.tensor([[[1.0, 0.0], [0.5, -0.5], [0.0, 2.0]], [[0.0, 0.0], [0.0, 0.0], [0.0, 0.0]]])
    torch.testing.assert_close(action_cost(actions, 2.0), torch.tensor([2.0 * (1 + 0.5 + 4), 0.0]))
    torch.testing.assert_close(action_cost(actions, 2.0, end=2), torch.tensor([2.0 * (1 + 0.5), 0.0]))
    with pytest.raises(ForesightError, match="action_weight must be a finite number >= 0"):
        action_cost(actions, -1.0)
    with pytest.raises(ForesightError, match=r"actions must have shape \(N, T, A\)"):
        action_cost(actions[0], 1.0)


def test_designated_pixel_cost_is_lower_nearer_the_goal():
    h = w = 32
    cost = DesignatedPixelCost(goals=[[20.0, 20.0]], image_size=(h, w))
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
    assert designated_pixel_cost(dists, goals).item() == pytest.approx(3.0 * 10 + 8.0 * 10)  # T=1: the last step
    assert designated_pixel_cost(dists, goals, weights=[2.0, 0.5], last_weight=1.0).item() == pytest.approx(
        2.0 * 3.0 + 0.5 * 8.0
    )
    # mass split between two pixels: the expected distance; total mass does not matter
    split = (0.5 * delta(16, 16, 2, 5) + 0.5 * delta(16, 16, 2, 2)).view(1, 1, 1, 16, 16)
    assert designated_pixel_cost(split, goals[:1], last_weight=1.0).item() == pytest.approx(1.5)
    assert designated_pixel_cost(2 * split, goals[:1], last_weight=1.0).item() == pytest.approx(1.5)
    # a distribution that lost all its mass is not "at the goal": it costs the farthest distance
    lost = torch.zeros(1, 1, 1, 16, 16)
    assert designated_pixel_cost(lost, goals[:1], last_weight=1.0).item() == pytest.approx(math.hypot(13, 13))


def test_designated_pixel_cost_bad_input_names_the_argument():
    with pytest.raises(ForesightError, match="goals"):
        DesignatedPixelCost(goals=[1.0, 2.0], image_size=(8, 8))
    with pytest.raises(ForesightError, match="image_size"):
        DesignatedPixelCost(goals=[[1.0, 2.0]], image_size=(8,))
    with pytest.raises(ForesightError, match="weights"):
        DesignatedPixelCost(goals=[[1.0, 2.0]], image_size=(8, 8), weights=[1.0, 1.0])
    with pytest.raises(ForesightError, match="last_weight"):
        DesignatedPixelCost(goals=[[1.0, 2.0]], image_size=(8, 8), last_weight=-1.0)
    cost = DesignatedPixelCost(goals=[[1.0, 2.0]], image_size=(8, 8))
    with pytest.raises(ForesightError, match="dists"):
        cost(torch.zeros(2, 3, 1, 8, 9))
    with pytest.raises(ForesightError, match="dists"):
        cost(torch.zeros(2, 1, 8, 8))


def test_goal_image_cost():
    goal = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(0))
    frames = torch.stack([goal.expand(4, 3, 8, 8), (goal + 0.1).expand(4, 3, 8, 8)])  # (N=2, T=4, C, H, W)
    c = goal_image_cost(frames, goal, last_weight=10.0)
    assert c.shape == (2,)
    assert c[0].item() == pytest.approx(0.0, abs=1e-6)
    per_step = 0.1 * math.sqrt(3 * 8 * 8)  # L2 distance of a uniform 0.1 offset
    assert c[1].item() == pytest.approx(per_step * (3 + 10), rel=1e-4)
    with pytest.raises(ForesightError, match="goal"):
        goal_image_cost(frames, goal[:, :4])
    with pytest.raises(ForesightError, match="goal"):
        goal_image_cost(frames, (goal * 255).to(torch.uint8))
    with pytest.raises(ForesightError, match="frames"):
        goal_image_cost(frames[0], goal)


def test_spread_penalty_makes_leaked_mass_cost_more_than_it_gains():
    """A tenth of the mass leaking to the goal lowers the plain expected distance; with the spread penalty it
    costs more than the unmoved delta, while a real move of the whole delta still wins."""
    h = w = 32
    goal = [[16.0, 26.0]]
    still = torch.zeros(1, 1, 1, h, w)
    still[..., 16, 10] = 1.0  # 16 px from the goal
    leak = 0.9 * still.clone()
    leak[..., 16, 26] += 0.1
    moved = torch.zeros(1, 1, 1, h, w)
    moved[..., 16, 12] = 1.0
    plain = DesignatedPixelCost(goal, (h, w), last_weight=1.0)
    spread = DesignatedPixelCost(goal, (h, w), last_weight=1.0, spread_weight=1.0)
    assert plain(leak) < plain(still)
    assert spread(leak) > spread(still) > spread(moved)
    assert spread(moved).item() == pytest.approx(14.0)  # a delta has no spread
    # the spread is the std: a 50/50 split 4 px apart has std 2
    split = torch.zeros(1, 1, 1, h, w)
    split[..., 16, 10] = split[..., 16, 14] = 0.5
    assert (spread(split) - plain(split)).item() == pytest.approx(2.0, abs=1e-4)
    with pytest.raises(ForesightError, match="spread_weight"):
        DesignatedPixelCost(goal, (h, w), spread_weight=-1.0)


def test_sharpened_cost_follows_the_objects_blob_not_a_smear_of_leaked_mass():
    """A fifth of the mass smeared along the path to the goal lowers the plain expected distance by ~2 px; under
    P^4 the cost stays within 0.05 px of the unmoved blob's, while the whole blob moved 2 px still wins by 2 px."""
    h = w = 32
    goal = [[16.0, 26.0]]

    def blob(col):  # a 3x3 blob, as the object's mass looks after a few predicted steps
        d = torch.zeros(1, 1, 1, h, w)
        d[..., 15:18, col - 1:col + 2] = 1.0 / 9
        return d

    still, moved = blob(10), blob(12)
    leak = 0.8 * still
    leak[..., 16, 12:28] += 0.2 / 16  # 16 pixels of smear beside the blob, each 1/7 of a blob pixel
    plain = DesignatedPixelCost(goal, (h, w), last_weight=1.0)
    sharp = DesignatedPixelCost(goal, (h, w), last_weight=1.0, sharpen=4.0)
    assert plain(still) - plain(leak) > 1.5
    assert abs((sharp(leak) - sharp(still)).item()) < 0.05
    assert (sharp(still) - sharp(moved)).item() == pytest.approx(2.0, abs=0.05)
    assert sharp(still).item() == pytest.approx(plain(still).item(), abs=1e-4)  # a flat blob is its own P^s
    tiny = 1e-30 * still  # scaled by the peak before the power: no underflow
    assert sharp(tiny).item() == pytest.approx(sharp(still).item(), abs=1e-4)
    with pytest.raises(ForesightError, match="sharpen must be a number >= 1"):
        DesignatedPixelCost(goal, (h, w), sharpen=0.5)


def test_approach_cost_draws_the_agent_round_to_the_objects_far_side():
    """The goal lies between agent and object: a plan ending behind the object (its far side from the goal) costs
    less than keeping still or backing away; on the push point the term is zero; it fades as the object arrives."""
    goal, obj = torch.tensor([[10.0, 10.0]]), torch.tensor([[10.0, 20.0]])  # object 10 px right of its goal
    objects = obj.view(1, 1, 1, 2).expand(3, 4, 1, 2)  # the object does not move in any plan
    start = torch.tensor([5.0, 10.0])
    behind = torch.tensor([10.0, 29.0])  # 9 px past the object, away from the goal: the push point
    still = start.expand(4, 2)
    back = start + torch.linspace(1, 4, 4)[:, None] * torch.tensor([0.0, -2.0])
    around = torch.stack([torch.tensor([2.0, 18.0]), torch.tensor([2.0, 26.0]), torch.tensor([6.0, 30.0]), behind])
    agent = torch.stack([still, back, around])  # (3 plans, 4 steps, 2)
    c = approach_cost(agent, objects, goal, obj, offset=9.0, weight=0.5, last_weight=1.0)
    assert c[2] < c[0] < c[1], c
    at_push = approach_cost(behind.view(1, 1, 2), obj.view(1, 1, 1, 2), goal, obj, offset=9.0, weight=1.0)
    assert at_push.item() == pytest.approx(0.0, abs=1e-5)
    # the object at 3 px from its goal: the term is a third of its size at >= 9 px
    near = torch.tensor([[10.0, 13.0]])
    far_term = approach_cost(start.view(1, 1, 2), near.view(1, 1, 1, 2), goal, obj, offset=9.0, weight=1.0)
    near_term = approach_cost(start.view(1, 1, 2), near.view(1, 1, 1, 2), goal, near, offset=9.0, weight=1.0)
    assert near_term.item() == pytest.approx(far_term.item() / 3, rel=1e-5)
    with pytest.raises(ForesightError, match=r"agent must have shape \(N, T, 2\)"):
        approach_cost(agent[0], objects, goal, obj, 9.0, 1.0)
    with pytest.raises(ForesightError, match=r"objects must have shape \(3, 4, K, 2\)"):
        approach_cost(agent, objects[:2], goal, obj, 9.0, 1.0)
    with pytest.raises(ForesightError, match=r"offset must be a number of pixels > 0"):
        approach_cost(agent, objects, goal, obj, 0.0, 1.0)
