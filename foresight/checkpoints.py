"""A training run's checkpoints on disk: written atomically, found after a kill, loaded safely, exported.

Run folder layout: ``foresight.training``'s docstring. A checkpoint folder holds ``model.pt`` and
``optimizer.pt`` (state dicts, loaded with ``weights_only=True``) and ``state.json`` (the step reached).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from foresight.errors import ForesightError


def save_checkpoint(run: Path, model, optimizer, state: dict) -> None:
    """Write checkpoint.tmp/, then swap it in: a kill never leaves a half-written checkpoint."""
    tmp, final, old = run / "checkpoint.tmp", run / "checkpoint", run / "checkpoint.old"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    torch.save(model.state_dict(), tmp / "model.pt")
    if optimizer is not None:
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    (tmp / "state.json").write_text(json.dumps(state, indent=1) + "\n")
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


def load_state_dict(module: torch.nn.Module, path: Path) -> None:
    """Load weights saved by ``save_checkpoint``; shapes that differ are named in the error."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ForesightError(f"{path}: missing") from None
    except Exception as e:  # a damaged or foreign file: say which, never unpickle code
        raise ForesightError(f"{path}: cannot be read as a weights file ({type(e).__name__}: {e})") from None
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
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "checkpoint").mkdir(parents=True)
    (tmp / "recipe.json").write_text(json.dumps(resolved, indent=1) + "\n")
    for name in ("model.pt", "state.json"):
        shutil.copy2(ckpt / name, tmp / "checkpoint" / name)
    if (run / "eval.json").exists():
        shutil.copy2(run / "eval.json", tmp / "eval.json")
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return dest
