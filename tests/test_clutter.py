"""PointPush with clutter: varied object counts, colours and sizes, blocks placed in the way."""
import gymnasium as gym
import numpy as np
import pytest

import foresight  # noqa: F401  (registers the envs, selects EGL)
from foresight.envs import point_push
from foresight.errors import ForesightError

CLUTTER = {"objects": 3, "min_objects": 1, "colors": "random", "block_size": [0.03, 0.05]}


@pytest.fixture
def env():
    e = gym.make("foresight/PointPush-v0", **CLUTTER)
    yield e
    e.close()


def blob(obs, color):
    """Pixels drawn in exactly ``color`` (a block's top face)."""
    return np.argwhere((obs == color).all(-1))


def test_counts_vary_and_absent_blocks_are_out_of_view(env):
    u = env.unwrapped
    counts = set()
    for seed in range(30):
        obs, info = env.reset(seed=seed)
        n = u.present
        counts.add(n)
        points = info["points"]
        inside = (points >= 0).all(-1) & (points[:, 0] <= obs.shape[0] - 1) & (points[:, 1] <= obs.shape[1] - 1)
        assert inside[:n].all() and not inside[n:].any()
        for k in range(3):
            pixels = blob(obs, u.object_colors[k])
            if k < n:  # on the table: its top face is drawn, centred on its point
                assert len(pixels) >= 10
                assert np.hypot(*(pixels.mean(0) - points[k])) < 1.0
            else:  # waiting outside the walls: not in the image
                assert len(pixels) == 0
    assert counts == {1, 2, 3}


def test_colours_distinct_and_sizes_drawn(env):
    u = env.unwrapped
    areas, colours = [], set()
    for seed in range(12):
        obs, _ = env.reset(seed=seed, options={"objects": 3})
        assert len(np.unique(u.object_colors, axis=0)) == 3
        colours.update(map(tuple, u.object_colors))
        assert (u.half >= 0.03).all() and (u.half <= 0.05).all()
        for k in range(3):
            areas.append((u.half[k], len(blob(obs, u.object_colors[k]))))
    assert len(colours) >= 6  # the palette, not three fixed colours
    half, area = np.array(areas).T
    assert np.corrcoef(half, area)[0, 1] > 0.9  # bigger blocks are drawn bigger


def test_blocks_of_other_sizes_collide_at_their_size(env):
    """A small block lets the pusher come closer than a big one before it moves."""
    u = env.unwrapped
    gaps = {}
    for half in (0.03, 0.05):
        e = gym.make("foresight/PointPush-v0", block_size=half)
        eu = e.unwrapped
        e.reset(seed=0)
        eu.data.qpos[:5] = [-0.2, 0.0, 0.0, 0.0, 0.0]
        point_push.mujoco.mj_forward(eu.model, eu.data)
        for _ in range(40):
            e.step(np.array([0.5, 0.0], np.float32))
            if eu.data.qpos[2] > 1e-3:
                break
        gaps[half] = eu.data.qpos[2] - eu.data.qpos[0]  # block centre minus pusher centre at first contact
        e.close()
    assert gaps[0.05] - gaps[0.03] == pytest.approx(0.02, abs=0.006)
    assert u is not None


def test_same_seed_same_layout(env):
    u = env.unwrapped
    layouts = []
    for seed in (4, 4, 5):
        obs, info = env.reset(seed=seed)
        layouts.append((u.present, u.object_colors.copy(), u.half.copy(), obs))
    assert layouts[0][0] == layouts[1][0]
    for a, b in zip(layouts[0][1:], layouts[1][1:]):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(layouts[0][3], layouts[2][3])


def test_clutter_near_puts_blocks_beside_the_first(env):
    u = env.unwrapped
    for seed in range(10):
        _, info = env.reset(seed=seed, options={"objects": 3, "clutter_near": 0.03, "pusher_near": 0.02})
        xy = u.data.qpos[2:11].reshape(3, 3)[:, :2]
        radii = u.half * np.sqrt(2)
        for k in (1, 2):
            gap = np.linalg.norm(xy[k] - xy[0]) - radii[0] - radii[k]
            assert 0.01 - 1e-9 <= gap <= 0.03 + 1e-9


def test_fixed_scenes_unchanged_by_the_options():
    """Default kwargs draw nothing extra: the fixed scene's episodes stay what they were."""
    a = gym.make("foresight/PointPush-v0", objects=2)
    b = gym.make("foresight/PointPush-v0", objects=2, min_objects=2, colors="fixed", block_size=point_push.BLOCK)
    for seed in (0, 1):
        oa, ia = a.reset(seed=seed, options={"pusher_near": 0.02})
        ob, ib = b.reset(seed=seed, options={"pusher_near": 0.02})
        np.testing.assert_array_equal(oa, ob)
        np.testing.assert_array_equal(ia["state"], ib["state"])
    a.close(), b.close()


@pytest.mark.parametrize("kwargs,key", [
    ({"objects": 2, "min_objects": 3}, "min_objects"), ({"min_objects": 0}, "min_objects"),
    ({"colors": "rainbow"}, "colors"), ({"block_size": 0.5}, "block_size"),
    ({"block_size": [0.05, 0.03]}, "block_size"), ({"block_size": [0.03]}, "block_size"),
])
def test_bad_kwargs(kwargs, key):
    with pytest.raises(ForesightError, match=f"^{key}: expected"):
        gym.make("foresight/PointPush-v0", **kwargs)


@pytest.mark.parametrize("options,key", [
    ({"objects": 4}, "objects"), ({"clutter_near": 1.0}, "clutter_near"), ({"pusher_far": 0.1}, "pusher_far"),
])
def test_bad_reset_options(env, options, key):
    with pytest.raises(ForesightError, match=f"options\\['{key}'\\]"):
        env.reset(seed=0, options=options)


def test_clutter_collection_counts_episodes_that_moved_several_objects(tmp_path):
    """The manifest's per-shard counts agree with the episodes' own points, and the clutter recipe's pushes move
    more than one block in some episodes."""
    from pathlib import Path

    from foresight import collect, datasets, recipes

    recipe_path = Path(__file__).resolve().parents[1] / "data" / "point_push_clutter.toml"
    recipe = recipes.load(collect.CollectRecipe, recipe_path, ["episodes=16", "shard_size=8", "env_kwargs.image_size=32"])
    collect.collect(recipe, tmp_path / "c", workers=1, progress=False)
    store = datasets.EpisodeStore(tmp_path / "c")
    several = moved = 0
    for i in range(len(store)):
        points = store.read(i, "points")  # (T+1, K, 2)
        n = int((np.linalg.norm(points - points[:1], axis=-1).max(0) >= collect.MOVED_PX).sum())
        moved, several = moved + (n >= 1), several + (n >= 2)
    store.close()
    info = datasets.summary(tmp_path / "c")
    assert info["moved_fraction"] == moved / 16 and info["moved_several_fraction"] == several / 16
    assert several >= 2, several
