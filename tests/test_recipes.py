"""Recipes: every bad-recipe error names the file, the key and what was expected; --set overrides."""
import json
import subprocess
import sys

import pytest

from foresight import recipes
from foresight.collect import CollectRecipe
from foresight.errors import ForesightError

GOOD = """
name = "tiny"
env = "foresight/Planar-v0"
episodes = 4
steps = 3
[policy]
kind = "random"
repeat = 2
"""


def write(tmp_path, text, name="r.toml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_good_recipe_loads_frozen_with_defaults(tmp_path):
    r = recipes.load(CollectRecipe, write(tmp_path, GOOD))
    assert (r.name, r.episodes, r.steps, r.policy.repeat, r.policy.kind) == ("tiny", 4, 3, 2, "random")
    assert r.shard_size == 50 and r.env_kwargs == {}
    with pytest.raises(Exception):
        r.episodes = 5  # frozen


def test_overrides_parse_toml_values_and_nested_keys(tmp_path):
    r = recipes.load(CollectRecipe, write(tmp_path, GOOD),
                     ["episodes=500", "policy.smoothing=0.25", "env_kwargs.image_size=32", "name=other"])
    assert (r.episodes, r.policy.smoothing, r.env_kwargs, r.name) == (500, 0.25, {"image_size": 32}, "other")
    assert json.loads(json.dumps(recipes.to_dict(r)))["policy"]["smoothing"] == 0.25


@pytest.mark.parametrize("text, override, key, expected", [
    ("colour = 3\n" + GOOD, [], "colour", "unknown key"),
    (GOOD, ["policy.speed=2"], "policy.speed", "unknown key"),
    (GOOD, ["episodes=many"], "episodes", "expected an integer"),
    (GOOD, ["episodes=2.5"], "episodes", "expected an integer"),
    (GOOD, ["episodes=0"], "episodes", "expected a value >= 1"),
    (GOOD, ["policy.smoothing=1.5"], "policy.smoothing", "expected a value <= 0.99"),
    (GOOD, ["policy.kind='wander'"], "policy.kind", "expected one of"),
    (GOOD, ["policy.repeat=true"], "policy.repeat", "expected an integer"),
    (GOOD, ["policy=3"], "policy", "expected a table"),
    (GOOD, ["env_kwargs=3"], "env_kwargs", "expected a table"),
    (GOOD.replace('name = "tiny"', ""), [], "name", "missing key"),
])
def test_bad_recipes_name_file_key_and_expectation(tmp_path, text, override, key, expected):
    path = write(tmp_path, text)
    with pytest.raises(ForesightError) as e:
        recipes.load(CollectRecipe, path, override)
    msg = str(e.value)
    assert str(path) in msg and repr(key) in msg and expected in msg, msg


def test_not_toml_and_missing_file(tmp_path):
    with pytest.raises(ForesightError, match="not valid TOML"):
        recipes.load(CollectRecipe, write(tmp_path, "name = = 3"))
    with pytest.raises(ForesightError, match="no such recipe file"):
        recipes.load(CollectRecipe, tmp_path / "absent.toml")
    with pytest.raises(ForesightError, match="expected key=value"):
        recipes.load(CollectRecipe, write(tmp_path, GOOD), ["episodes"])


def test_cli_prints_one_line_and_exits_nonzero_without_traceback(tmp_path):
    path = write(tmp_path, "speed = 3\n" + GOOD)
    run = subprocess.run([sys.executable, "-m", "foresight", "collect", str(path)], capture_output=True, text=True)
    assert run.returncode == 2
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in run.stderr
    assert str(path) in lines[0] and "'speed'" in lines[0]
    assert not (tmp_path / "tiny").exists()  # nothing written for a bad recipe
