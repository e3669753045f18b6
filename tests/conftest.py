"""Fixtures that several test modules share."""
import gymnasium as gym
import pytest

import foresight  # noqa: F401  (registers the environments)
from foresight import collect, recipes


@pytest.fixture(scope="module")
def point_push_env():
    """One PointPush environment for a module's tests (its reset seeds each task)."""
    e = gym.make("foresight/PointPush-v0")
    yield e
    e.close()


@pytest.fixture(scope="session")
def collected(tmp_path_factory):
    """``collected(folder, text, name)``: a fresh folder holding the data recipe ``text`` as <name>.toml and its
    dataset, collected into <folder>/<name>."""
    def make(folder: str, text: str, name: str = "planar_seq"):
        root = tmp_path_factory.mktemp(folder)
        (root / f"{name}.toml").write_text(text)
        collect.collect(recipes.load(collect.CollectRecipe, root / f"{name}.toml"), root / name, progress=False)
        return root
    return make
