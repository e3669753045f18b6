"""Collection: determinism across worker counts, kill-and-resume, verify, windows, the data commands."""
import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from foresight import collect, datasets, pixels, recipes
from foresight.errors import ForesightError

RECIPE = """
name = "planar_tiny"
env = "foresight/Planar-v0"
episodes = 24
steps = 5
seed = 7
shard_size = 5
[policy]
kind = "random"
repeat = 2
smoothing = 0.5
"""


@pytest.fixture
def recipe_file(tmp_path):
    p = tmp_path / "planar_tiny.toml"
    p.write_text(RECIPE)
    return p


def load(path, *overrides):
    return recipes.load(collect.CollectRecipe, path, list(overrides))


def shard_digests(root):
    m = datasets.read_manifest(root)
    return [(s["file"], s["episodes"], s["sha256"]) for s in m["shards"]]


@pytest.fixture
def reference(tmp_path, recipe_file):
    out = collect.collect(load(recipe_file), tmp_path / "ref", workers=1, progress=False)
    return out


def test_dataset_layout_matches_manifest(reference):
    m = datasets.read_manifest(reference)
    assert m["complete"] and m["episodes"] == 24 and len(m["shards"]) == 5  # 5+5+5+5+4
    assert m["shapes"] == {"frames": [6, 40, 40, 1], "actions": [5, 2], "states": [6, 2], "points": [6, 1, 2]}
    assert m["recipe"]["seed"] == 7 and m["env"]["id"] == "foresight/Planar-v0"
    store = datasets.EpisodeStore(reference)
    assert len(store) == 24 and store.verify() == []
    ep = store.episode(23)
    assert ep["frames"].dtype == np.uint8 and ep["actions"].dtype == np.float32
    assert np.all(np.abs(ep["actions"]) <= 3.0)
    # action repeat 2: actions come in equal pairs
    assert np.array_equal(ep["actions"][0], ep["actions"][1]) and np.array_equal(ep["actions"][2], ep["actions"][3])
    # the recorded points are the agent's pixel: the frame is bright there
    for t in range(6):
        r, c = np.round(ep["points"][t, 0]).astype(int)
        assert ep["frames"][t, r, c, 0] > 200


def test_same_seed_same_bytes_whatever_the_number_of_workers(tmp_path, recipe_file, reference):
    two = collect.collect(load(recipe_file), tmp_path / "two", workers=2, progress=False)
    assert shard_digests(two) == shard_digests(reference)
    other = collect.collect(load(recipe_file, "seed=8"), tmp_path / "other", workers=1, progress=False)
    assert shard_digests(other) != shard_digests(reference)


def test_resume_after_crash_states(tmp_path, recipe_file, reference):
    """The on-disk states a kill can leave: a stray .tmp, a shard published but not yet in the manifest."""
    out = tmp_path / "crash"
    collect.collect(load(recipe_file, "episodes=10"), out, progress=False)  # two shards done
    (out / "shard-00002.h5.tmp").write_bytes(b"half a shard")
    (out / "shard-00003.h5").write_bytes(b"published before the manifest was rewritten")
    collect.collect(load(recipe_file), out, progress=False)
    assert shard_digests(out) == shard_digests(reference)
    assert not list(out.glob("*.tmp"))
    assert datasets.EpisodeStore(out).verify() == []


def test_kill_at_any_moment_then_resume(tmp_path, recipe_file, reference):
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "foresight", "collect", str(recipe_file), "--out", str(out), "--no-progress",
           "--set", "episodes=240", "--set", "shard_size=20"]
    for delay in (1.2, 1.9, 2.6):  # interpreter start-up is ~1 s: kill during set-up and mid-collection
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if (out / "manifest.json").exists():  # whatever a reader sees is consistent
            store = datasets.EpisodeStore(out) if datasets.read_manifest(out)["shards"] else None
            assert store is None or store.verify() in ([], [p for p in store.verify() if "run the same" in p])
    assert subprocess.run(cmd).returncode == 0
    full = collect.collect(load(recipe_file, "episodes=240", "shard_size=20"), tmp_path / "full", progress=False)
    assert shard_digests(out) == shard_digests(full)
    assert datasets.EpisodeStore(out).verify() == []


def test_more_episodes_extends_and_changed_recipe_is_refused(tmp_path, recipe_file, reference):
    out = tmp_path / "grow"
    collect.collect(load(recipe_file, "episodes=12"), out, progress=False)
    collect.collect(load(recipe_file), out, progress=False)
    assert shard_digests(out) == shard_digests(reference)
    with pytest.raises(ForesightError, match="seed"):
        collect.collect(load(recipe_file, "seed=9"), out, progress=False)
    assert shard_digests(out) == shard_digests(reference)  # nothing lost


def test_verify_catches_a_flipped_byte(tmp_path, reference):
    shard = reference / "shard-00002.h5"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01
    shard.write_bytes(bytes(data))
    problems = datasets.EpisodeStore(reference).verify()
    assert len(problems) == 1 and "shard-00002.h5" in problems[0] and "sha256" in problems[0]
    run = subprocess.run([sys.executable, "-m", "foresight", "data", "verify", str(reference)],
                         capture_output=True, text=True)
    assert run.returncode == 1 and "shard-00002.h5" in run.stderr


def test_verify_catches_a_missing_shard(reference):
    (reference / "shard-00001.h5").unlink()
    problems = datasets.EpisodeStore(reference).verify()
    assert problems == [f"{reference / 'shard-00001.h5'}: missing"]


def test_windows_split_and_dataloader_workers(reference):
    import torch

    train = datasets.WindowDataset(reference, length=4, split="train", val_fraction=0.25, seed=0)
    val = datasets.WindowDataset(reference, length=4, split="val", val_fraction=0.25, seed=0)
    assert set(train.episodes).isdisjoint(val.episodes) and len(train.episodes) + len(val.episodes) == 24
    assert len(val.episodes) == 6 and len(train) == 18 * 3  # 6 frames -> 3 windows of 4
    again = datasets.WindowDataset(reference, length=4, split="val", val_fraction=0.25, seed=0)
    assert np.array_equal(again.episodes, val.episodes)
    item = train[5]
    assert item["frames"].shape == (4, 1, 40, 40) and item["frames"].dtype == np.float32
    assert 0 <= item["frames"].min() and item["frames"].max() <= 1
    assert item["actions"].shape == (3, 2) and item["points"].shape == (4, 1, 2)
    ep = datasets.EpisodeStore(reference).episode(item["episode"])
    s = item["start"]
    assert np.array_equal(item["actions"], ep["actions"][s:s + 3])
    loader = torch.utils.data.DataLoader(train, batch_size=8, shuffle=True, num_workers=2)
    seen = 0
    for batch in loader:
        assert batch["frames"].shape[1:] == (4, 1, 40, 40) and isinstance(batch["frames"], torch.Tensor)
        seen += len(batch["frames"])
    assert seen == len(train)


def test_window_and_store_errors(tmp_path, reference):
    with pytest.raises(ForesightError, match="length"):
        datasets.WindowDataset(reference, length=7)
    with pytest.raises(ForesightError, match="split"):
        datasets.WindowDataset(reference, length=2, split="test")
    with pytest.raises(ForesightError, match="no such dataset folder"):
        datasets.EpisodeStore(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ForesightError, match="manifest.json: missing"):
        datasets.EpisodeStore(tmp_path / "empty")
    (reference / "manifest.json").write_text("{broken")
    with pytest.raises(ForesightError, match="not valid JSON"):
        datasets.EpisodeStore(reference)


def test_bad_environment_and_options(tmp_path, recipe_file):
    with pytest.raises(ForesightError, match="'env'.*unknown environment"):
        collect.collect(load(recipe_file, "env='foresight/Nothing-v0'"), tmp_path / "x", progress=False)
    with pytest.raises(ForesightError, match="'env_kwargs'"):
        collect.collect(load(recipe_file, "env_kwargs.wings=2"), tmp_path / "y", progress=False)
    with pytest.raises(ForesightError, match="'policy.kind'"):
        collect.collect(load(recipe_file, "policy.kind='push'"), tmp_path / "z", progress=False)
    with pytest.raises(ForesightError, match="--workers"):
        collect.collect(load(recipe_file), tmp_path / "w", workers=0, progress=False)


def test_data_commands(reference):
    run = subprocess.run([sys.executable, "-m", "foresight", "data", "info", str(reference), "--json"],
                         capture_output=True, text=True)
    info = json.loads(run.stdout)
    assert info["episodes"] == 24 and info["complete"] and 0 <= info["moved_fraction"] <= 1
    assert info["shapes"]["frames"] == [6, 40, 40, 1]
    run = subprocess.run([sys.executable, "-m", "foresight", "data", "show", str(reference), "--episodes", "3"],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    from PIL import Image
    gif = Image.open(reference / "preview" / "episodes.gif")
    durations = []
    for n in range(gif.n_frames):  # Pillow merges repeated frames into one longer frame
        gif.seek(n)
        durations.append(gif.info["duration"])
    assert abs(sum(durations) - 6 * 100) <= 60 and gif.size[0] > 3 * 40
    sheet = Image.open(reference / "preview" / "contact_sheet.png")
    assert sheet.size[1] > 3 * 40


def test_resized_frames_keep_the_points_on_their_objects():
    """Area-averaged 64 -> 32 frames with scale_points: each block's scaled point lands on its colour."""
    import gymnasium as gym

    env = gym.make("foresight/PointPush-v0", objects=3)
    rng = np.random.default_rng(0)
    obs, info = env.reset(seed=3)
    checked = 0
    for _ in range(6):
        small = pixels.resize_frames(obs[None], (32, 32))[0]
        assert small.shape == (32, 32, 3) and small.dtype == np.uint8
        points = pixels.scale_points(info["points"], (64, 64), (32, 32))
        assert np.allclose(pixels.scale_points(points, (32, 32), (64, 64)), info["points"], atol=1e-4)
        for k, (r, c) in enumerate(np.round(points).astype(int)):
            if 0 <= r < 32 and 0 <= c < 32:
                assert small[r, c].argmax() == k and small[r, c, k] > 150, (k, small[r, c])
                checked += 1
        obs, _, _, _, info = env.step(rng.uniform(-1, 1, 2))
    env.close()
    assert checked >= 15


def test_reset_options_start_episodes_as_the_recipe_says(tmp_path, reference, recipe_file):
    """reset_options reach env.reset for reset_fraction of the episodes; a bad option names the key; a dataset
    made before the key existed still resumes (a missing key reads as its default)."""
    p = tmp_path / "near.toml"
    p.write_text('name = "near"\nenv = "foresight/PointPush-v0"\nepisodes = 8\nsteps = 1\nseed = 3\n'
                 'shard_size = 4\nreset_options = { pusher_near = 0.02 }\nreset_fraction = 0.5\n'
                 '[policy]\nkind = "random"\n')
    out = collect.collect(load(p), tmp_path / "near", progress=False)
    store = datasets.EpisodeStore(out)
    # state: pusher x, y, block x, y, yaw; "near" = the gap between bounding circles is 2 cm
    gaps = np.array([np.linalg.norm(store.read(i, "states")[0, 2:4] - store.read(i, "states")[0, :2]) for i in range(8)])
    near = np.isclose(gaps, 0.03 + 0.04 * np.sqrt(2) + 0.02, atol=1e-4)
    assert 1 <= near.sum() <= 7, gaps  # some episodes near, some plain
    with pytest.raises(ForesightError, match=r"key 'reset_options': options\['pusher_near'\]"):
        collect.collect(load(p, "reset_options.pusher_near=5.0"), tmp_path / "bad", progress=False)
    manifest = json.loads((reference / "manifest.json").read_text())
    for key in ("reset_options", "reset_fraction"):
        del manifest["recipe"][key]
    for key in ("suite", "planner", "model", "replan_every"):  # keys of a table, too
        del manifest["recipe"]["policy"][key]
    (reference / "manifest.json").write_text(json.dumps(manifest))
    more = collect.collect(load(recipe_file, "episodes=26"), reference, progress=False)
    assert len(datasets.EpisodeStore(more)) == 26


PLANNER_SUITE = """
name = "s"
env = "foresight/PointPush-v0"
tasks = 1
goal_min_px = 8.0
goal_max_px = 12.0
reset_options = { pusher_near = 0.02 }
[env_kwargs]
image_size = 32
action_repeat = 3
[cem]
samples = 100
elites = 10
iterations = 3
horizon = 5
repeat = 1
"""


def planner_recipe(tmp_path, suite_env="image_size = 32", **policy):  # 10 steps of 3 control steps each
    (tmp_path / "suites").mkdir(exist_ok=True)
    (tmp_path / "suites" / "s.toml").write_text(PLANNER_SUITE.replace("image_size = 32", suite_env))
    fields = {"kind": '"planner"', "suite": '"suites/s.toml"', "replan_every": "5", **policy}
    p = tmp_path / "planned.toml"
    p.write_text('name = "planned"\nenv = "foresight/PointPush-v0"\nepisodes = 4\nsteps = 10\nseed = 5\nshard_size = 2\n'
                 'reset_options = { pusher_near = 0.02 }\n[env_kwargs]\nimage_size = 32\naction_repeat = 3\n[policy]\n'
                 + "".join(f"{k} = {v}\n" for k, v in fields.items()))
    return p


def test_planner_policy_collects_the_oracles_episodes_identically_for_any_worker_count(tmp_path):
    """policy kind 'planner': each episode is a fresh task of the suite, planned by its MPC (here the oracle);
    the episodes push the block (random actions from the same starts seldom do in 10 steps), and 1 or 2
    workers write the same bytes; the suite path is relative to the recipe, not the shell."""
    p = planner_recipe(tmp_path)
    one = collect.collect(load(p), tmp_path / "one", workers=1, source=str(p), progress=False)
    two = collect.collect(load(p), tmp_path / "two", workers=2, source=str(p), progress=False)
    assert shard_digests(one) == shard_digests(two)
    store = datasets.EpisodeStore(one)
    ep = store.episode(0)
    assert ep["frames"].shape == (11, 32, 32, 3) and ep["actions"].shape == (10, 2) and ep["points"].shape == (11, 1, 2)
    moved = [np.linalg.norm(store.read(i, "points")[-1] - store.read(i, "points")[0]) for i in range(4)]
    rand = collect.collect(load(p, "policy.kind='random'"), tmp_path / "rand", source=str(p), progress=False)
    rstore = datasets.EpisodeStore(rand)
    moved_random = [np.linalg.norm(rstore.read(i, "points")[-1] - rstore.read(i, "points")[0]) for i in range(4)]
    assert np.mean(moved) > np.mean(moved_random) + 1.0, (moved, moved_random)
    assert datasets.read_manifest(one)["recipe"]["policy"]["suite"] == "suites/s.toml"  # as written


def test_planner_policy_with_a_trained_model_collects_the_same_bytes_for_any_worker_count(tmp_path):
    """planner 'model': the episodes a trained video model's MPC makes (here a tiny model trained for one step
    on oracle episodes), identical for 1 and 2 workers."""
    from foresight import training

    p = planner_recipe(tmp_path)
    collect.collect(load(p, "episodes=2"), tmp_path / "planned", source=str(p), progress=False)
    (tmp_path / "tiny.toml").write_text(
        'name = "tiny"\ndata = "planned"\n[model]\nkind = "video"\nvariant = "cdna"\nwidths = [4, 4, 8, 8, 8, 8, 4]\n'
        'transform_kernel = 3\n[train]\nsteps = 1\nbatch_size = 2\ncontext = 2\nhorizon = 3\nval_fraction = 0.0\n'
        'loader_workers = 0\n')
    training.train(recipes.load(training.TrainRecipe, tmp_path / "tiny.toml"), tmp_path / "tiny.toml", progress=False)
    m = planner_recipe(tmp_path, planner='"model"', model='"runs/tiny"')
    one = collect.collect(load(m, "episodes=2", "shard_size=1"), tmp_path / "m1", workers=1, source=str(m), progress=False)
    two = collect.collect(load(m, "episodes=2", "shard_size=1"), tmp_path / "m2", workers=2, source=str(m), progress=False)
    assert shard_digests(one) == shard_digests(two)
    assert datasets.EpisodeStore(one).episode(1)["actions"].shape == (10, 2)


def test_planner_policy_bad_inputs_name_the_key(tmp_path):
    with pytest.raises(ForesightError, match="key 'policy.suite': kind 'planner' needs a planning suite"):
        p = planner_recipe(tmp_path, suite='""')
        collect.collect(load(p), tmp_path / "a", source=str(p), progress=False)
    with pytest.raises(ForesightError, match=r"key 'policy.suite': .*s.toml plans in foresight/PointPush-v0 "
                                             r"\{'image_size': 64, 'action_repeat': 3\}, the recipe collects"):
        p = planner_recipe(tmp_path, suite_env="image_size = 64")
        collect.collect(load(p), tmp_path / "b", source=str(p), progress=False)
    with pytest.raises(ForesightError, match="key 'policy.model': planner 'model' needs a training run"):
        p = planner_recipe(tmp_path, planner='"model"')
        collect.collect(load(p), tmp_path / "c", source=str(p), progress=False)
    with pytest.raises(ForesightError, match="not a training run"):
        p = planner_recipe(tmp_path, planner='"model"', model='"runs/none"')
        collect.collect(load(p), tmp_path / "d", source=str(p), progress=False)
    assert not (tmp_path / "b").exists() and not (tmp_path / "d").exists()


def test_aimed_pushes_push_the_object_farther_than_random_actions(tmp_path):
    """policy.aim_fraction: episodes that go round the block and push it along a direction move it far more
    often than random actions do; an environment that cannot aim is refused with the key named."""
    p = tmp_path / "aim.toml"
    p.write_text('name = "aim"\nenv = "foresight/PointPush-v0"\nepisodes = 12\nsteps = 12\nseed = 4\nshard_size = 6\n'
                 'reset_options = { pusher_near = 0.02 }\n[env_kwargs]\nimage_size = 32\naction_repeat = 3\n'
                 '[policy]\nkind = "push"\nrepeat = 1\npush_fraction = 1.0\nsteer_prob = 0.8\naim_fraction = 1.0\n')

    def displacements(out):
        store = datasets.EpisodeStore(out)
        return np.array([np.linalg.norm(store.read(i, "points")[-1, 0] - store.read(i, "points")[0, 0])
                         for i in range(len(store))])

    aimed = displacements(collect.collect(load(p), tmp_path / "aimed", progress=False))
    random = displacements(collect.collect(load(p, "policy.kind='random'"), tmp_path / "random", progress=False))
    assert np.median(aimed) > 3 * max(np.median(random), 0.5), (aimed, random)
    with pytest.raises(ForesightError, match="'policy.aim_fraction'"):
        collect.collect(load(p, "env='foresight/ArmPush-v0'", "env_kwargs={}"), tmp_path / "arm", progress=False)
