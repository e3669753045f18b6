"""Environments under faults: non-finite actions are refused without touching the state, and every registered
environment works in gymnasium's async vector environments (worker processes forked from a parent that built
one environment to read its spaces)."""
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import foresight  # noqa: F401  (registers the environments, selects EGL)
from foresight.envs import ENVS, env_class, make_env
from foresight.errors import ForesightError

# gymnasium's passive checker (gym.make) expects 3 channels from rgb_array; the classic systems are grey.
pytestmark = pytest.mark.filterwarnings("ignore:.*last axis has three dimensions:UserWarning")


def good_actions(env, n, seed=0):
    """n actions inside the action space, the same for the same seed."""
    rng = np.random.default_rng(seed)
    space = env.action_space
    return [rng.uniform(space.low, space.high).astype(np.float32) for _ in range(n)]


def with_bad(env, value):
    """A good action with its first number replaced by `value`."""
    a = good_actions(env, 1, seed=7)[0].astype(np.float64)
    a[0] = value
    return a


@pytest.fixture
def make():
    """make_env that closes what it made."""
    envs = []

    def _make(env_id):
        envs.append(make_env(env_id))
        return envs[-1]

    yield _make
    for env in envs:
        env.close()


def test_every_env_class_knows_its_registered_id():
    for env_id in ENVS:
        assert env_class(env_id).env_id == env_id


@pytest.mark.parametrize("env_id", list(ENVS))
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_action_is_refused_and_the_state_untouched(make, env_id, value):
    env = make(env_id)
    actions = good_actions(env, 3)
    env.reset(seed=5)
    env.step(actions[0])
    sim_before = env.unwrapped.get_sim_state()
    bad = with_bad(env, value)
    with pytest.raises(ForesightError) as caught:
        env.step(bad)
    message = str(caught.value)
    assert env_id in message and "\n" not in message
    assert "not finite" in message and str(value).lstrip("-") in message and "expected" in message
    assert np.array_equal(env.unwrapped.get_sim_state(), sim_before)
    # a good step continues from the state before the bad one: as if it never happened
    obs, _, _, _, info = env.step(actions[1])
    obs2, _, _, _, info2 = env.step(actions[2])

    fresh = make(env_id)
    fresh.reset(seed=5)
    for a, want_obs, want_info in [(actions[0], None, None), (actions[1], obs, info), (actions[2], obs2, info2)]:
        got_obs, _, _, _, got_info = fresh.step(a)
        if want_obs is not None:
            assert np.array_equal(got_obs, want_obs)
            assert np.array_equal(got_info["state"], want_info["state"])
            assert np.array_equal(got_info["points"], want_info["points"])
    assert np.array_equal(fresh.unwrapped.get_sim_state(), env.unwrapped.get_sim_state())
    assert np.isfinite(info2["state"]).all()


@pytest.mark.parametrize("env_id", list(ENVS))
def test_finite_actions_out_of_bounds_are_still_clipped(make, env_id):
    env, edge = make(env_id), make(env_id)
    space = env.action_space
    env.reset(seed=3)
    edge.reset(seed=3)
    for sign in (1, -1, 1):
        _, _, _, _, info = env.step(sign * 10 * space.high)  # far outside: clipped to the bound
        _, _, _, _, info_edge = edge.step(sign * space.high)
        assert np.array_equal(info["state"], info_edge["state"])


@pytest.mark.parametrize("env_id", list(ENVS))
def test_malformed_action_names_the_env(make, env_id):
    env = make(env_id)
    env.reset(seed=0)
    n = env.action_space.shape[0]
    for bad in (np.zeros(n + 1), ["a"] * n):
        with pytest.raises(ForesightError) as caught:
            env.step(bad)
        assert env_id in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize("env_id", [e for e in ENVS if hasattr(env_class(e), "rollout_points")])
def test_rollout_points_refuses_non_finite_actions(make, env_id):
    env = make(env_id)
    env.reset(seed=1)
    start = env.unwrapped.get_sim_state()
    actions = np.stack([np.stack(good_actions(env, 4, seed=s)) for s in range(3)])  # (3, 4, A)
    expected = env.unwrapped.rollout_points(actions)
    actions[2, 1, 0] = np.nan
    with pytest.raises(ForesightError) as caught:
        env.unwrapped.rollout_points(actions)
    message = str(caught.value)
    assert env_id in message and "nan" in message and "sequence 2, step 1" in message and "\n" not in message
    assert np.array_equal(env.unwrapped.get_sim_state(), start)
    actions[2, 1, 0] = 0.0
    assert np.array_equal(env.unwrapped.rollout_points(actions)[:2], expected[:2])


# ------------------------------------------------------------------ fork

# Run in a fresh interpreter: Mesa's software EGL keeps per-process driver state that a forked child
# cannot use, so a process that has rendered (as this test process may have) cannot fork workers that
# render. The vector environment runs first for the same reason; the single environments after it.
VECTOR_CHECK = textwrap.dedent("""
    import multiprocessing
    import sys
    import warnings

    import gymnasium as gym
    import numpy as np

    import foresight  # noqa: F401
    from foresight.envs import make_env

    warnings.filterwarnings("ignore")
    env_id, seeds = sys.argv[1], [11, 12]
    vec = gym.make_vec(env_id, num_envs=2, vectorization_mode="async")  # gymnasium's default context: fork
    assert multiprocessing.get_context(vec.unwrapped.context).get_start_method() == "fork"
    rng = np.random.default_rng(0)
    space = vec.single_action_space
    actions = [rng.uniform(space.low, space.high, (2, *space.shape)).astype(np.float32) for _ in range(3)]
    obs, _ = vec.reset(seed=seeds)
    got = [obs]
    for a in actions:
        obs, _, _, _, _ = vec.step(a)
        got.append(obs)
    vec.close()
    got = np.stack(got, axis=1)  # (2, 4, H, W, C)
    assert got.shape == (2, 4, *vec.single_observation_space.shape), got.shape
    for i, seed in enumerate(seeds):
        env = make_env(env_id)
        want = [env.reset(seed=seed)[0]] + [env.step(a[i])[0] for a in actions]
        assert np.array_equal(got[i], np.stack(want)), (env_id, i)
        env.close()
    assert not np.array_equal(got[0], got[1])  # the seeds reached the workers
    print("ok", env_id, got.shape)
""")


@pytest.mark.parametrize("env_id", list(ENVS))
def test_async_vector_env_in_forked_workers(env_id):
    try:
        result = subprocess.run([sys.executable, "-c", VECTOR_CHECK, env_id], capture_output=True, text=True,
                                timeout=180)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{env_id}: a 2-env async (fork) vector environment hung for 180 s")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert f"ok {env_id}" in result.stdout
