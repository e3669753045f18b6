"""A training run's checkpoints on disk: written atomically, found after a kill, loaded safely, exported.

Run folder layout: ``foresight.training``'s docstring. A checkpoint folder holds ``model.pt`` and
``optimizer.pt`` (state dicts) and ``state.json``: the step reached and the sha256 of each file. Every load
(``read_weights``: resume, eval, plan, export, the shipped model) checks the file against its recorded sha256
(torch does not check its zip's CRCs) and unpickles tensors only (``weights_only=True``): a damaged file or one
that holds code is refused, in one line, and not loaded.
"""
from __future__ import annotations

import json
import pickle
import re
import shutil
from pathlib import Path

import torch

from foresight.datasets import sha256_of
from foresight.errors import ForesightError

STATE = "state.json"


def save_checkpoint(run: Path, model, optimizer, state: dict) -> None:
    """Write checkpoint.tmp/, then swap it in: a kill, a full disk or a read-only folder never leaves a
    half-written checkpoint, and the last complete one stays."""
    tmp, final, old = run / "checkpoint.tmp", run / "checkpoint", run / "checkpoint.old"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        torch.save(model.state_dict(), tmp / "model.pt")
        if optimizer is not None:
            torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        files = ["model.pt"] + (["optimizer.pt"] if optimizer is not None else [])
        state = {**state, "sha256": {name: sha256_of(tmp / name) for name in files}}
        (tmp / STATE).write_text(json.dumps(state, indent=1) + "\n")
    except (OSError, RuntimeError) as e:  # torch reports a failed write as a RuntimeError
        shutil.rmtree(tmp, ignore_errors=True)
        last = f"step {json.loads((final / STATE).read_text())['step']}" if (final / STATE).exists() else "none yet"
        # torch reports a failed write without its errno: say how much room is left instead
        reason = getattr(e, "strerror", None) or f"a write failed, {shutil.disk_usage(run).free / 1e6:.1f} MB free"
        raise ForesightError(f"{tmp}: cannot write the checkpoint ({reason}); the last complete checkpoint "
                             f"({last}) is intact") from None
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def checkpoint_dir(run: str | Path) -> Path | None:
    """The newest complete checkpoint (a kill between the two renames leaves it as checkpoint.old)."""
    run = Path(run)
    for name in ("checkpoint", "checkpoint.old"):
        if (run / name / "state.json").exists():
            return run / name
    return None


def recorded_sha256(path: Path) -> str | None:
    """The sha256 that the checkpoint's state.json records for ``path`` (None for checkpoints written before
    checksums were)."""
    state = Path(path).parent / STATE
    try:
        return json.loads(state.read_text()).get("sha256", {}).get(Path(path).name)
    except (OSError, json.JSONDecodeError):
        return None


def read_weights(path: Path, map_location="cpu"):
    """The state dict in ``path``, after checking it against its recorded sha256; never unpickles code."""
    path = Path(path)
    if not path.exists():
        raise ForesightError(f"{path}: missing")
    _check_sha256(path, recorded_sha256(path))
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        text = str(e).strip()
        found = re.search(r"GLOBAL (\S+)", text)  # what the file would have imported and called
        if isinstance(e, pickle.UnpicklingError) and found:
            # torch's own message goes on to suggest a load that would run the code: not repeated
            raise ForesightError(f"{path}: refused: it holds code or Python objects ({found.group(1)}), not only "
                                 f"weights; not loaded") from None
        first = text.splitlines()[0] if text else ""  # a damaged or foreign file
        raise ForesightError(f"{path}: not a weights file ({type(e).__name__}: {first}); not loaded") from None


def load_state_dict(module: torch.nn.Module, path: Path) -> None:
    """Load weights saved by ``save_checkpoint``; shapes that differ are named in the error."""
    saved = read_weights(path)
    own = module.state_dict()
    missing, extra = sorted(set(own) - set(saved)), sorted(set(saved) - set(own))
    differ = [f"{k}: checkpoint {tuple(saved[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in saved and saved[k].shape != own[k].shape]
    if missing or extra or differ:
        parts = ([f"shapes differ ({'; '.join(differ[:4])}{'; ...' if len(differ) > 4 else ''})"] if differ else []) \
            + ([f"missing {missing[:4]}"] if missing else []) + ([f"unexpected {extra[:4]}"] if extra else [])
        raise ForesightError(f"{path}: does not match the model: {', '.join(parts)}")
    module.load_state_dict(saved)


def export_run(run: str | Path, dest: str | Path) -> Path:
    """A run's model without its optimizer: recipe.json, checkpoint/{model.pt, state.json} and eval.json,
    for shipping (``pretrained/``); ``foresight.learners.load_run(dest)`` loads it like the run itself."""
    run, dest = Path(run), Path(dest)
    ckpt = checkpoint_dir(run)
    if ckpt is None:
        raise ForesightError(f"{run}: has no checkpoint to export")
    resolved = json.loads((run / "recipe.json").read_text())
    resolved["data"] = Path(resolved["data"]).name  # no paths of the machine that trained it
    resolved["data_mix"] = [Path(d).name for d in resolved.get("data_mix", [])]
    read_weights(ckpt / "model.pt")  # a damaged model is not shipped
    state = json.loads((ckpt / STATE).read_text())
    state["sha256"] = {"model.pt": sha256_of(ckpt / "model.pt")}  # the optimizer stays behind
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "checkpoint").mkdir(parents=True)
    (tmp / "recipe.json").write_text(json.dumps(resolved, indent=1) + "\n")
    shutil.copy2(ckpt / "model.pt", tmp / "checkpoint" / "model.pt")
    (tmp / "checkpoint" / STATE).write_text(json.dumps(state, indent=1) + "\n")
    if (run / "eval.json").exists():
        shutil.copy2(run / "eval.json", tmp / "eval.json")
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return dest


def check(ckpt: Path) -> None:
    """Every file the checkpoint records against its sha256 (a run whose optimizer is damaged is refused for
    evaluation and planning too: nothing silently wrong)."""
    for name, expected in json.loads((Path(ckpt) / STATE).read_text()).get("sha256", {}).items():
        path = Path(ckpt) / name
        if not path.exists():
            raise ForesightError(f"{path}: missing (recorded in {STATE})")
        _check_sha256(path, expected)


def _check_sha256(path: Path, expected: str | None) -> None:
    """A file whose sha256 is not the recorded one is damaged (None: nothing recorded, nothing to check)."""
    if expected is not None and (found := sha256_of(path)) != expected:
        raise ForesightError(f"{path}: damaged: its sha256 {found[:16]}... is not the {expected[:16]}... recorded in "
                             f"{STATE}; not loaded")


def verify(run: str | Path) -> list[str]:
    """Every problem found in a run's checkpoint, one line each (``foresight verify``): a missing or damaged
    file, a file without a recorded sha256, a file that is not plain weights. A folder that is not a run with a
    checkpoint is an error."""
    run = Path(run)
    if not (run / "recipe.json").exists():
        raise ForesightError(f"{run}: not a training run (no recipe.json)")
    ckpt = checkpoint_dir(run)
    if ckpt is None:
        raise ForesightError(f"{run}: has no checkpoint")
    recorded = json.loads((ckpt / STATE).read_text()).get("sha256", {})
    problems = [f"{ckpt / name}: no sha256 recorded in {STATE} (written before checksums)"
                for name in ("model.pt", "optimizer.pt") if (ckpt / name).exists() and name not in recorded]
    for name in recorded:
        try:
            read_weights(ckpt / name)
        except ForesightError as e:
            problems.append(str(e))
    return problems
