"""A planning suite is resumable: each finished task is recorded as it finishes, a rerun skips the recorded tasks
and gives the summary (and the GIFs) of an uninterrupted run; half-written records do not count, and records of a
run with other settings are refused."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

import foresight  # noqa: F401
from foresight import cli, recipes
from foresight.errors import ForesightError
from foresight.planning import mpc, suites

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


def test_resuming_with_task_processes(uninterrupted, tmp_path, monkeypatch):
    out = tmp_path / "workers"
    mpc.run_suite(suite(tasks=1), out, None, ["oracle"], progress=False, videos=2, resume=True)
    (out / "oracle" / "run.json").write_text((uninterrupted / "oracle" / "run.json").read_text())  # 3 tasks
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
