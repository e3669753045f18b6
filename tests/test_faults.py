"""Faults: nothing lost, nothing silently wrong.

Sections:

* checkpoints: every file's sha256 is recorded in state.json and checked on every load (``foresight verify``,
  eval, export, resume); a flipped byte is caught; a checkpoint that holds code is refused in one line without
  running it; old checkpoints without checksums still load; training refuses a dataset whose shard fails its
  manifest sha256.
* disk: a full disk and a read-only folder. Collection and training stop with one clear line and leave what was
  already written intact. Small tmpfs mounts stand in for the disk (root only; skipped where mount is refused).
* environments: non-finite actions are refused without touching the state (and in ``rollout_points``); finite
  out-of-range actions are still clipped; malformed actions name the environment; every registered environment
  works in gymnasium's async vector environments (worker processes forked from a parent that built one
  environment to read its spaces).
* planning: a suite is resumable. Each finished task is recorded as it finishes, a rerun skips the recorded tasks
  and gives the summary (and the GIFs) of an uninterrupted run; half-written records do not count; records of a
  run with other settings are refused (``--fresh`` starts over); a ``foresight plan`` killed with SIGKILL resumes
  to the uninterrupted results (slow).
"""
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import foresight  # noqa: F401  (registers the environments, selects EGL)
from foresight import checkpoints, cli, collect, datasets, recipes, training
from foresight.datasets import sha256_of
from foresight.envs import ENVS, env_class, make_env
from foresight.errors import ForesightError
from foresight.learners import load_run
from foresight.planning import mpc, suites

REPO = Path(__file__).resolve().parents[1]
CKPT_DATA = 'name = "planar_seq"\nenv = "foresight/Planar-v0"\nepisodes = 12\nsteps = 4\nseed = 2\n'
CKPT_RECIPE = """
name = "tiny"
data = "planar_seq"
[model]
kind = "e2c"
preset = "planar"
encoder_widths = [16]
decoder_widths = [16]
transition_widths = [8]
[train]
steps = 4
batch_size = 8
checkpoint_every = 2
loader_workers = 0
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    (root / "data.toml").write_text(CKPT_DATA)
    collect.collect(recipes.load(collect.CollectRecipe, root / "data.toml"), root / "planar_seq", progress=False)
    (root / "tiny.toml").write_text(CKPT_RECIPE)
    run = training.train(recipes.load(training.TrainRecipe, root / "tiny.toml"), root / "tiny.toml", progress=False)
    return root, run


def copy_run(run: Path, dest: Path) -> Path:
    shutil.copytree(run, dest)
    return dest


def flip_byte(path: Path, at: float = 0.5) -> None:
    data = bytearray(path.read_bytes())
    data[int(len(data) * at)] ^= 0x01
    path.write_bytes(bytes(data))


def test_the_checkpoint_records_each_files_sha256_and_a_clean_run_verifies(trained):
    _, run = trained
    state = json.loads((run / "checkpoint" / "state.json").read_text())
    assert set(state["sha256"]) == {"model.pt", "optimizer.pt"}
    for name, digest in state["sha256"].items():
        assert digest == sha256_of(run / "checkpoint" / name)
    assert checkpoints.verify(run) == []
    assert checkpoints.verify(REPO / "pretrained" / "plan_point_push") == []  # the shipped model too


@pytest.mark.parametrize("name", ["model.pt", "optimizer.pt"])
def test_a_flipped_byte_is_caught_on_every_load(trained, tmp_path, capsys, name):
    root, run = trained
    damaged = copy_run(run, tmp_path / "run")
    flip_byte(damaged / "checkpoint" / name)
    problems = checkpoints.verify(damaged)
    assert len(problems) == 1 and f"{name}: damaged" in problems[0] and "not loaded" in problems[0]
    assert cli.main(["verify", str(damaged)]) == 1
    assert f"{name}: damaged" in capsys.readouterr().err
    # eval and plan (load_run) check the whole checkpoint; export reads the model
    with pytest.raises(ForesightError, match=f"{name}: damaged: its sha256 .* is not the .* recorded"):
        load_run(damaged)
    if name == "model.pt":
        with pytest.raises(ForesightError, match="model.pt: damaged"):
            checkpoints.export_run(damaged, tmp_path / "export")
        assert not (tmp_path / "export").exists()
    recipe = recipes.load(training.TrainRecipe, root / "tiny.toml", ["train.steps=6"])
    with pytest.raises(ForesightError, match=f"{name}: damaged") as e:  # resume reads both files
        training.train(recipe, root / "tiny.toml", resume=True, run=damaged, progress=False)
    assert "\n" not in str(e.value)


def test_verify_on_a_folder_that_is_not_a_run_is_one_line(tmp_path):
    done = subprocess.run([sys.executable, "-m", "foresight", "verify", str(tmp_path)], capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.strip() == f"foresight: error: {tmp_path}: not a training run " \
                                                           f"(no recipe.json)"


def test_export_keeps_the_models_checksum(trained, tmp_path):
    _, run = trained
    dest = checkpoints.export_run(run, tmp_path / "shipped")
    state = json.loads((dest / "checkpoint" / "state.json").read_text())
    assert set(state["sha256"]) == {"model.pt"} and checkpoints.verify(dest) == []
    load_run(dest)


class Payload:
    def __reduce__(self):
        return (os.system, (f"touch {Path(os.environ['FORESIGHT_PWNED'])}",))


def test_a_checkpoint_that_holds_code_is_refused_in_one_line_without_running_it(trained, tmp_path, monkeypatch):
    _, run = trained
    bad = copy_run(run, tmp_path / "run")
    marker = tmp_path / "pwned"
    monkeypatch.setenv("FORESIGHT_PWNED", str(marker))
    torch.save({"weights": Payload()}, bad / "checkpoint" / "model.pt")
    state = json.loads((bad / "checkpoint" / "state.json").read_text())
    state["sha256"]["model.pt"] = sha256_of(bad / "checkpoint" / "model.pt")  # a consistent forgery
    (bad / "checkpoint" / "state.json").write_text(json.dumps(state))
    with pytest.raises(ForesightError) as e:
        load_run(bad)
    message = str(e.value)
    assert message.endswith("model.pt: refused: it holds code or Python objects (posix.system), not only weights; "
                            "not loaded")
    assert "\n" not in message and "weights_only" not in message and not marker.exists()
    out = subprocess.run([sys.executable, "-m", "foresight", "eval", str(bad)], capture_output=True, text=True)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1 and "refused" in out.stderr
    assert not marker.exists()


def test_a_checkpoint_without_recorded_checksums_still_loads_and_verify_says_so(trained, tmp_path):
    _, run = trained
    old = copy_run(run, tmp_path / "run")
    state = json.loads((old / "checkpoint" / "state.json").read_text())
    del state["sha256"]
    (old / "checkpoint" / "state.json").write_text(json.dumps(state))
    load_run(old)
    assert all("no sha256 recorded" in p for p in checkpoints.verify(old)) and len(checkpoints.verify(old)) == 2


def test_training_refuses_a_dataset_whose_shard_fails_verification(trained, tmp_path):
    """A flipped byte in a shard: training stops before it reads a window, naming the shard, in one line."""
    root, _ = trained
    data = tmp_path / "planar_seq"
    shutil.copytree(root / "planar_seq", data)
    (tmp_path / "tiny.toml").write_text(CKPT_RECIPE)
    shard = sorted(data.glob("shard-*.h5"))[0]
    flip_byte(shard, at=0.9)
    with pytest.raises(ForesightError) as e:
        training.train(recipes.load(training.TrainRecipe, tmp_path / "tiny.toml"), tmp_path / "tiny.toml",
                       progress=False)
    assert str(e.value).startswith(f"{shard}: sha256 ") and "foresight data verify" in str(e.value)
    assert "\n" not in str(e.value) and not (tmp_path / "runs" / "tiny" / "checkpoint").exists()

# ================================================================== disk

DISK_DATA = 'name = "pp"\nenv = "foresight/PointPush-v0"\nepisodes = 60\nsteps = 10\nshard_size = 10\n'


@contextlib.contextmanager
def mounted(path, options):
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip()})")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


def run_foresight(*args):
    return subprocess.run([sys.executable, "-m", "foresight", *args], capture_output=True, text=True)


def test_collection_into_a_full_disk_stops_in_one_line_and_keeps_the_finished_shards(tmp_path):
    (tmp_path / "pp.toml").write_text(DISK_DATA)
    with mounted(tmp_path / "small", "size=150k") as disk:
        run = run_foresight("collect", str(tmp_path / "pp.toml"), "--out", str(disk / "pp"), "--no-progress")
        assert run.returncode == 2 and len(run.stderr.strip().splitlines()) == 1, run.stderr
        assert "No space left on device" in run.stderr and "intact" in run.stderr
        store = datasets.EpisodeStore(disk / "pp")
        assert 0 < len(store) < 60 and not list((disk / "pp").glob("*.tmp"))
        problems = store.verify()  # every listed shard intact; only the unfinished episodes are missing
        assert len(problems) == 1 and "run the same `foresight collect` command again" in problems[0]


def test_a_read_only_output_folder_is_one_line(tmp_path):
    (tmp_path / "pp.toml").write_text(DISK_DATA)
    with mounted(tmp_path / "ro", "ro,size=64k") as ro:
        run = run_foresight("collect", str(tmp_path / "pp.toml"), "--out", str(ro / "pp"), "--no-progress")
        assert run.returncode == 2 and run.stderr.strip() == f"foresight: error: {ro / 'pp'}: Read-only file system"


def test_training_on_a_full_disk_keeps_the_last_complete_checkpoint(tmp_path):
    (tmp_path / "data.toml").write_text('name = "pl"\nenv = "foresight/Planar-v0"\nepisodes = 12\nsteps = 4\n')
    collect.collect(recipes.load(collect.CollectRecipe, tmp_path / "data.toml"), tmp_path / "pl", progress=False)
    (tmp_path / "e2c.toml").write_text('name = "e"\ndata = "pl"\n[model]\nkind = "e2c"\npreset = "planar"\n'
                                       'encoder_widths = [64]\ndecoder_widths = [64]\ntransition_widths = [8]\n'
                                       '[train]\nsteps = 6\nbatch_size = 8\ncheckpoint_every = 1\nsample_every = 100\n'
                                       'val_every = 100\nloader_workers = 0\n')
    # one checkpoint (model + Adam's moments, ~2.5 MB) fits, a second beside it does not
    with mounted(tmp_path / "runs", "size=4000k") as runs:
        run = run_foresight("train", str(tmp_path / "e2c.toml"), "--no-progress")
        assert run.returncode == 2 and len(run.stderr.strip().splitlines()) == 1, run.stderr
        assert "cannot write the checkpoint" in run.stderr and "(step 1) is intact" in run.stderr
        assert checkpoints.verify(runs / "e") == []
        assert json.loads((runs / "e" / "checkpoint" / "state.json").read_text())["step"] == 1



def test_planning_on_a_full_disk_stops_in_one_line_and_resumes_when_there_is_room(tmp_path):
    """The suite stops at the first record that does not fit, keeping every finished task; with room again, the
    same command resumes them and writes the same summary as an uninterrupted run."""
    args = ["plan", str(REPO / "plan" / "point_push.toml"), "--set", "tasks=4", "--set", "steps=3", "--planners", "random",
            "--no-progress", "--out"]
    whole = run_foresight(*args, str(tmp_path / "whole"))
    assert whole.returncode == 0, whole.stderr
    with mounted(tmp_path / "disk", "size=16k") as disk:  # tmpfs pages of 4 kB: room for about one task
        full = run_foresight(*args, str(disk / "out"))
        assert full.returncode == 2 and len(full.stderr.strip().splitlines()) == 1, full.stderr
        assert "No space left on device" in full.stderr and "intact" in full.stderr
        finished = sorted(p.name for p in (disk / "out" / "random").glob("task-*.json"))
        assert 1 <= len(finished) < 4 and not list((disk / "out" / "random").glob("*.tmp"))
        subprocess.run(["mount", "-o", "remount,size=1m", str(disk)], check=True)
        again = run_foresight(*args, str(disk / "out"))
        assert again.returncode == 0, again.stderr
        summary = json.loads((disk / "out" / "summary.json").read_text())
        assert summary["random"]["resumed"] == len(finished)
        assert untimed(summary) == untimed(json.loads((tmp_path / "whole" / "summary.json").read_text()))
        assert gifs(disk / "out") == gifs(tmp_path / "whole")

# ================================================================== environments

# gymnasium's passive checker (gym.make) expects 3 channels from rgb_array; the classic systems are grey.
grey = pytest.mark.filterwarnings("ignore:.*last axis has three dimensions:UserWarning")


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


@grey
def test_every_env_class_knows_its_registered_id():
    for env_id in ENVS:
        assert env_class(env_id).env_id == env_id


@grey
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


@grey
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


@grey
@pytest.mark.parametrize("env_id", list(ENVS))
def test_malformed_action_names_the_env(make, env_id):
    env = make(env_id)
    env.reset(seed=0)
    n = env.action_space.shape[0]
    for bad in (np.zeros(n + 1), ["a"] * n):
        with pytest.raises(ForesightError) as caught:
            env.step(bad)
        assert env_id in str(caught.value) and "\n" not in str(caught.value)


@grey
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


@grey
@pytest.mark.parametrize("env_id", list(ENVS))
def test_async_vector_env_in_forked_workers(env_id):
    try:
        result = subprocess.run([sys.executable, "-c", VECTOR_CHECK, env_id], capture_output=True, text=True,
                                timeout=180)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{env_id}: a 2-env async (fork) vector environment hung for 180 s")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert f"ok {env_id}" in result.stdout

# ================================================================== planning

TINY = {"name": "tiny", "env": "foresight/PointPush-v0", "tasks": 3, "steps": 24, "seed": 1,
        "reset_options": {"pusher_near": 0.02}, "goal_min_px": 6.0, "goal_max_px": 8.0,
        "cem": {"samples": 60, "elites": 6, "iterations": 2, "horizon": 3, "repeat": 3}}
TIMING = ("seconds_per_replan", "model_seconds_per_replan", "resumed")


def suite(**changes):
    return recipes.from_dict(suites.DesignatedPixelSuite, {**TINY, **changes}, "test")


def untimed(summary: dict) -> dict:
    """summary.json without the fields that differ between two runs of the same tasks (timing, resumed)."""
    def strip(x):
        if isinstance(x, dict):
            return {k: strip(v) for k, v in x.items() if k not in TIMING}
        return [strip(v) for v in x] if isinstance(x, list) else x
    return strip(summary)


def read(folder):
    return json.loads((folder / "summary.json").read_text())


def gifs(folder) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.glob("*/task-*.gif"))}


def write_suite(path, tasks: int):
    path.write_text(f"""name = "tiny"
env = "foresight/PointPush-v0"
tasks = {tasks}
steps = 24
seed = 1
goal_min_px = 6.0
goal_max_px = 8.0
reset_options = {{ pusher_near = 0.02 }}

[cem]
samples = 60
elites = 6
iterations = 2
horizon = 3
repeat = 3
""")
    return path


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("full")
    mpc.run_suite(suite(), out, None, ["oracle", "random"], progress=False, videos=2, resume=True)
    return out


def test_an_interrupted_suite_resumes_to_the_uninterrupted_summary_and_videos(uninterrupted, tmp_path, monkeypatch):
    out, calls, run_task = tmp_path / "part", [], mpc.run_task

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return run_task(*args, **kwargs)

    monkeypatch.setattr(mpc, "run_task", interrupted)
    with pytest.raises(KeyboardInterrupt):
        mpc.run_suite(suite(), out, None, ["oracle", "random"], progress=False, videos=2, resume=True)
    monkeypatch.setattr(mpc, "run_task", run_task)
    assert sorted(p.name for p in (out / "oracle").iterdir()) == \
        ["run.json", "task-000.gif", "task-000.json", "task-001.gif", "task-001.json"]
    assert not (out / "summary.json").exists()

    summary = mpc.run_suite(suite(), out, None, ["oracle", "random"], progress=False, videos=2, resume=True)
    assert summary["oracle"]["resumed"] == 2 and summary["random"]["resumed"] == 0
    assert read(out) == summary and untimed(read(out)) == untimed(read(uninterrupted))
    assert gifs(out) == gifs(uninterrupted) and len(gifs(out)) == 4
    first = json.loads((out / "oracle" / "task-000.json").read_text())  # a resumed task's timing: its record's
    assert summary["oracle"]["per_task"][0]["seconds_per_replan"] == first["seconds_per_replan"]

    again = mpc.run_suite(suite(), out, None, ["oracle", "random"], progress=False, videos=2, resume=True)
    assert again["oracle"]["resumed"] == again["random"]["resumed"] == 3 and again == read(out)
    assert {k: v for k, v in again.items() if k not in ("oracle", "random")} == \
        {k: v for k, v in summary.items() if k not in ("oracle", "random")}
    for p in ("oracle", "random"):  # everything from the records: the very same figures, timing included
        assert {k: v for k, v in again[p].items() if k != "resumed"} == \
            {k: v for k, v in summary[p].items() if k != "resumed"}


def test_half_written_records_do_not_count(uninterrupted, tmp_path):
    out = tmp_path / "half"
    mpc.run_suite(suite(), out, None, ["oracle"], progress=False, videos=2, resume=True)
    folder = out / "oracle"
    (folder / "task-001.gif").unlink()  # a record without its GIF: killed between the two (cannot happen, but)
    (folder / "task-002.json").rename(folder / "task-002.json.tmp")  # killed while writing the record
    (folder / "task-002.tmp").write_bytes(b"GIF89a")  # and a half GIF
    summary = mpc.run_suite(suite(), out, None, ["oracle"], progress=False, videos=2, resume=True)
    assert summary["oracle"]["resumed"] == 1
    assert not list(folder.glob("*.tmp"))
    assert untimed(summary["oracle"]) == untimed(read(uninterrupted)["oracle"])
    assert gifs(out) == {k: v for k, v in gifs(uninterrupted).items() if k.startswith("oracle")}

    text = (folder / "task-000.json").read_text()  # a truncated record (not through the atomic write)
    (folder / "task-000.json").write_text(text[: len(text) // 2])
    (folder / "task-001.json").write_text(text)  # another task's record under its name
    summary = mpc.run_suite(suite(), out, None, ["oracle"], progress=False, videos=2, resume=True)
    assert summary["oracle"]["resumed"] == 1  # only task 2
    assert untimed(summary["oracle"]) == untimed(read(uninterrupted)["oracle"])


def test_without_resume_the_old_records_are_cleared(uninterrupted, tmp_path):
    out = tmp_path / "again"
    mpc.run_suite(suite(), out, None, ["oracle"], progress=False, videos=2)
    (out / "oracle" / "task-009.json").write_text("{}")  # a stale record of some other run
    summary = mpc.run_suite(suite(), out, None, ["oracle"], progress=False, videos=0)
    assert summary["oracle"]["resumed"] == 0
    assert sorted(p.name for p in (out / "oracle").iterdir()) == \
        ["run.json", "task-000.json", "task-001.json", "task-002.json"]


def test_a_rerun_with_other_settings_is_refused_and_fresh_starts_over(tmp_path, capsys):
    path, out = write_suite(tmp_path / "tiny.toml", tasks=2), tmp_path / "out"
    base = ["plan", str(path), "--planners", "random", "--out", str(out), "--no-progress", "--videos", "1"]
    assert cli.main(base) == 0
    before = {p.name: p.read_bytes() for p in (out / "random").iterdir()}
    capsys.readouterr()
    assert cli.main(base + ["--set", "cem.samples=30"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cem.samples" in err and str(out / "random") in err and "--fresh" in err
    assert {p.name: p.read_bytes() for p in (out / "random").iterdir()} == before  # untouched

    assert cli.main(base + ["--set", "cem.samples=30", "--fresh"]) == 0
    summary = read(out)
    assert summary["random"]["resumed"] == 0 and summary["recipe"]["cem"]["samples"] == 30
    assert cli.main(base + ["--set", "cem.samples=30"]) == 0  # the new settings now resume
    assert read(out)["random"]["resumed"] == 2
    assert "2 task(s) resumed" in capsys.readouterr().out

    (out / "oracle").mkdir()  # another planner's settings in a planner's folder
    (out / "oracle" / "run.json").write_text((out / "random" / "run.json").read_text())
    resumed = suites.load(path, ["cem.samples=30"])
    with pytest.raises(ForesightError, match='planner = "random" there, "oracle" now'):
        mpc.run_suite(resumed, out, None, ["oracle"], progress=False, resume=True,
                      resolved={**recipes.to_dict(resumed), "model": None, "model_sha256": None})


def test_a_run_extended_to_more_tasks_keeps_the_finished_ones_with_task_processes(uninterrupted, tmp_path):
    out = tmp_path / "workers"
    mpc.run_suite(suite(tasks=1), out, None, ["oracle"], progress=False, videos=2, resume=True)
    summary = mpc.run_suite(suite(), out, None, ["oracle"], progress=False, videos=2, resume=True, workers=2)
    assert summary["oracle"]["resumed"] == 1
    assert untimed(summary["oracle"]) == untimed(read(uninterrupted)["oracle"])
    assert gifs(out) == {k: v for k, v in gifs(uninterrupted).items() if k.startswith("oracle")}


@pytest.mark.slow
def test_a_killed_plan_command_resumes_to_the_uninterrupted_results(tmp_path):
    path = write_suite(tmp_path / "tiny.toml", tasks=6)
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    args = ["plan", str(path), "--planners", "oracle", "--no-progress", "--videos", "6", "--out"]
    proc = subprocess.Popen([sys.executable, "-m", "foresight", *args, str(killed)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not (killed / "oracle" / "task-000.json").exists():
            assert proc.poll() is None and time.monotonic() < deadline, "no task record appeared"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert not (killed / "summary.json").exists()  # killed before the end
    finished = len(list((killed / "oracle").glob("task-*.json")))
    assert 1 <= finished < 6

    assert cli.main([*args, str(killed)]) == 0
    assert cli.main([*args, str(whole)]) == 0
    assert read(killed)["oracle"]["resumed"] >= finished and read(whole)["oracle"]["resumed"] == 0
    assert untimed(read(killed)) == untimed(read(whole))
    assert gifs(killed) == gifs(whole) and len(gifs(whole)) == 6
