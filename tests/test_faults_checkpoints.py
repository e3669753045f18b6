"""Checkpoints: every file's sha256 is recorded and checked on every load; code is never unpickled."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from foresight import checkpoints, cli, collect, recipes, training
from foresight.datasets import sha256_of
from foresight.errors import ForesightError
from foresight.learners import load_run

REPO = Path(__file__).resolve().parents[1]
DATA = 'name = "planar_seq"\nenv = "foresight/Planar-v0"\nepisodes = 12\nsteps = 4\nseed = 2\n'
RECIPE = """
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
    (root / "data.toml").write_text(DATA)
    collect.collect(recipes.load(collect.CollectRecipe, root / "data.toml"), root / "planar_seq", progress=False)
    (root / "tiny.toml").write_text(RECIPE)
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
    if name == "model.pt":  # eval, plan, export: everything that reads the model
        with pytest.raises(ForesightError, match=r"model.pt: damaged: its sha256 .* is not the .* recorded"):
            load_run(damaged)
        with pytest.raises(ForesightError, match="model.pt: damaged"):
            checkpoints.export_run(damaged, tmp_path / "export")
        assert not (tmp_path / "export").exists()
    recipe = recipes.load(training.TrainRecipe, root / "tiny.toml", ["train.steps=6"])
    with pytest.raises(ForesightError, match=f"{name}: damaged") as e:  # resume reads both files
        training.train(recipe, root / "tiny.toml", resume=True, run=damaged, progress=False)
    assert "\n" not in str(e.value)


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
    (tmp_path / "tiny.toml").write_text(RECIPE)
    shard = sorted(data.glob("shard-*.h5"))[0]
    flip_byte(shard, at=0.9)
    with pytest.raises(ForesightError) as e:
        training.train(recipes.load(training.TrainRecipe, tmp_path / "tiny.toml"), tmp_path / "tiny.toml",
                       progress=False)
    assert str(e.value).startswith(f"{shard}: sha256 ") and "foresight data verify" in str(e.value)
    assert "\n" not in str(e.value) and not (tmp_path / "runs" / "tiny" / "checkpoint").exists()
