"""A full disk and a read-only folder: collection and training stop with one clear line and leave what was
already written intact. Small tmpfs mounts stand in for the disk (root only; skipped where mount is refused)."""
import contextlib
import json
import subprocess
import sys

import pytest

from foresight import checkpoints, collect, datasets, recipes

DATA = 'name = "pp"\nenv = "foresight/PointPush-v0"\nepisodes = 60\nsteps = 10\nshard_size = 10\n'


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


def foresight(*args):
    return subprocess.run([sys.executable, "-m", "foresight", *args], capture_output=True, text=True)


def test_collection_into_a_full_disk_stops_in_one_line_and_keeps_the_finished_shards(tmp_path):
    (tmp_path / "pp.toml").write_text(DATA)
    with mounted(tmp_path / "small", "size=150k") as disk:
        run = foresight("collect", str(tmp_path / "pp.toml"), "--out", str(disk / "pp"), "--no-progress")
        assert run.returncode == 2 and len(run.stderr.strip().splitlines()) == 1, run.stderr
        assert "No space left on device" in run.stderr and "intact" in run.stderr
        store = datasets.EpisodeStore(disk / "pp")
        assert 0 < len(store) < 60 and not list((disk / "pp").glob("*.tmp"))
        problems = store.verify()  # every listed shard intact; only the unfinished episodes are missing
        assert len(problems) == 1 and "run the same `foresight collect` command again" in problems[0]


def test_a_read_only_output_folder_is_one_line(tmp_path):
    (tmp_path / "pp.toml").write_text(DATA)
    with mounted(tmp_path / "ro", "ro,size=64k") as ro:
        run = foresight("collect", str(tmp_path / "pp.toml"), "--out", str(ro / "pp"), "--no-progress")
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
        run = foresight("train", str(tmp_path / "e2c.toml"), "--no-progress")
        assert run.returncode == 2 and len(run.stderr.strip().splitlines()) == 1, run.stderr
        assert "cannot write the checkpoint" in run.stderr and "(step 1) is intact" in run.stderr
        assert checkpoints.verify(runs / "e") == []
        assert json.loads((runs / "e" / "checkpoint" / "state.json").read_text())["step"] == 1
