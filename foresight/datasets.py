"""The episode store (a folder of HDF5 shards and a manifest) and the training windows over it.

Layout (DESIGN.md): ``manifest.json`` plus ``shard-00000.h5``, ... Each shard holds one group per
episode, ``episode-<global index>``, with ``frames (T+1, H, W, C) uint8``, ``actions (T, A)``,
``states (T+1, S)`` and ``points (T+1, K, 2)`` (float32). Shards and manifest are written to a
temporary name and published with an atomic rename, so a reader never sees half a file.

``WindowDataset`` returns numpy arrays, which a ``torch.utils.data.DataLoader`` collates into tensors.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path

import h5py
import numpy as np

from foresight.errors import ForesightError
from foresight.pixels import resize_frames, scale_points

FORMAT = "foresight-dataset"
VERSION = 1
MANIFEST = "manifest.json"
KEYS = ("frames", "actions", "states", "points")


def shard_name(j: int) -> str:
    return f"shard-{j:05d}.h5"


def episode_name(i: int) -> str:
    return f"episode-{i:06d}"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write through ``path.tmp`` and an atomic rename: a reader never sees half a file, and a full disk or a
    read-only folder is one clear error that leaves the file as it was."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:  # a read-only folder holds no temporary file
            pass
        raise ForesightError(f"{path}: cannot write it ({e.strerror}); what was written before is intact") from None


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def write_manifest(root: Path, manifest: dict) -> None:
    atomic_write_text(Path(root) / MANIFEST, json.dumps(manifest, indent=1) + "\n")


def read_manifest(root: str | Path) -> dict:
    path = Path(root) / MANIFEST
    if not Path(root).is_dir():
        raise ForesightError(f"{root}: no such dataset folder")
    if not path.exists():
        raise ForesightError(f"{path}: missing; {root} is not a foresight dataset (collect one with `foresight collect`)")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ForesightError(f"{path}: not valid JSON ({e})") from None
    if manifest.get("format") != FORMAT:
        raise ForesightError(f"{path}: key 'format': expected {FORMAT!r}, got {manifest.get('format')!r}")
    if manifest.get("version") != VERSION:
        raise ForesightError(f"{path}: key 'version': this foresight reads version {VERSION}, got {manifest.get('version')!r}")
    for key in ("env", "shapes", "shards", "episodes"):
        if key not in manifest:
            raise ForesightError(f"{path}: missing key {key!r}")
    return manifest


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class ShardWriter:
    """Build a shard in memory; on a clean exit, write it through ``path.tmp`` and rename it into place.

    Datasets are written without timestamps, so the same episodes give byte-identical shards. Built in memory
    (a shard is a few MB), the file reaches the disk in one plain write, which a full disk stops with a clean
    error instead of HDF5's failing half way through its own writes.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self.sha256 = None

    def __enter__(self):
        self.buffer = io.BytesIO()
        self.file = h5py.File(self.buffer, "w", libver="latest")
        return self

    def add(self, index: int, episode: dict[str, np.ndarray]) -> None:
        g = self.file.create_group(episode_name(index))
        for key in KEYS:
            data = episode[key]
            if key == "frames":
                # One frame per chunk, so a training window reads only the frames it needs. Deflate, not
                # LZF: LZF's output depends on uninitialised memory, which would break byte-identical shards.
                g.create_dataset(key, data=data, chunks=(1, *data.shape[1:]), compression="gzip",
                                 compression_opts=1, track_times=False)
            else:
                g.create_dataset(key, data=data, track_times=False)

    def __exit__(self, exc_type, exc, tb):
        self.file.close()
        if exc_type is not None:
            return False
        data = self.buffer.getvalue()
        self.sha256 = hashlib.sha256(data).hexdigest()
        atomic_write_bytes(self.path, data)
        return False


class EpisodeStore:
    """Read access to a dataset folder. HDF5 handles open lazily and per process (DataLoader-safe)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.manifest = read_manifest(self.root)
        self.shapes = {k: tuple(v) for k, v in self.manifest["shapes"].items()}
        self.index: list[tuple[str, str]] = []  # episode -> (shard file, group)
        for s in sorted(self.manifest["shards"], key=lambda s: s["first_episode"]):
            for i in range(s["first_episode"], s["first_episode"] + s["episodes"]):
                self.index.append((s["file"], episode_name(i)))
        if not self.index:
            raise ForesightError(f"{self.root / MANIFEST}: the dataset holds no finished shard yet")
        self._files: dict[str, h5py.File] = {}
        self._pid = None

    def __len__(self) -> int:
        return len(self.index)

    @property
    def complete(self) -> bool:
        return bool(self.manifest.get("complete"))

    def _file(self, name: str) -> h5py.File:
        if self._pid != os.getpid():  # a forked DataLoader worker must not share its parent's handles
            self._files, self._pid = {}, os.getpid()
        if name not in self._files:
            path = self.root / name
            try:
                self._files[name] = h5py.File(path, "r")
            except OSError as e:
                raise ForesightError(f"{path}: cannot open shard ({e}); run `foresight data verify {self.root}`") from None
        return self._files[name]

    def read(self, i: int, key: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """``key`` of episode ``i``, time steps ``start:stop``."""
        shard, group = self.index[i]
        try:
            return self._file(shard)[group][key][start:stop]
        except KeyError:
            raise ForesightError(f"{self.root / shard}: episode group {group!r} has no {key!r}; "
                                 f"run `foresight data verify {self.root}`") from None

    def episode(self, i: int) -> dict[str, np.ndarray]:
        return {key: self.read(i, key) for key in KEYS}

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files = {}

    def __getstate__(self):  # pickled into spawned DataLoader workers without open handles
        return {**self.__dict__, "_files": {}, "_pid": None}

    def shard_problem(self, s: dict) -> str | None:
        """What is wrong with one shard's file against the manifest (missing, another sha256), or None."""
        path = self.root / s["file"]
        if not path.exists():
            return f"{path}: missing"
        digest = sha256_of(path)
        if digest != s["sha256"]:
            return f"{path}: sha256 {digest[:16]}... does not match the manifest's {s['sha256'][:16]}..."
        return None

    def check_shards(self) -> None:
        """Refuse a dataset whose shard files differ from the manifest (training reads only checked data):
        hashing costs about a second per GB (``benchmarks/verify_cost.py``)."""
        for s in self.manifest["shards"]:
            if (problem := self.shard_problem(s)) is not None:
                raise ForesightError(f"{problem}; run `foresight data verify {self.root}`")

    def verify(self) -> list[str]:
        """Every problem found, one line each: missing shards, checksum or shape mismatches."""
        problems = []
        for s in self.manifest["shards"]:
            path = self.root / s["file"]
            if (problem := self.shard_problem(s)) is not None:
                problems.append(problem)
                continue
            with h5py.File(path, "r") as f:
                names = [episode_name(i) for i in range(s["first_episode"], s["first_episode"] + s["episodes"])]
                if sorted(f.keys()) != names:
                    problems.append(f"{path}: holds episodes {sorted(f.keys())[:3]}..., the manifest says {names[:3]}...")
                    continue
                for name in names:
                    for key in KEYS:
                        shape = f[name][key].shape if key in f[name] else None
                        if shape != self.shapes[key]:
                            problems.append(f"{path}: {name}/{key} has shape {shape}, expected {self.shapes[key]}")
        planned = self.manifest["episodes"]
        if sum(s["episodes"] for s in self.manifest["shards"]) < planned:
            problems.append(f"{self.root}: holds {len(self)} of {planned} episodes; "
                            f"run the same `foresight collect` command again to finish it")
        return problems


def split_episodes(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded split of episode indices into (train, validation)."""
    if not 0 <= val_fraction < 1:
        raise ForesightError(f"val_fraction: expected a number in [0, 1), got {val_fraction}")
    order = np.random.default_rng(seed).permutation(n)
    n_val = int(round(n * val_fraction))
    if val_fraction > 0 and n >= 2:
        n_val = min(max(n_val, 1), n - 1)
    return np.sort(order[n_val:]), np.sort(order[:n_val])


class WindowDataset:
    """Fixed-length windows of ``length`` frames (context + horizon) from a dataset folder.

    An item is a dict of numpy arrays: ``frames (L, C, H, W) float32 in [0, 1]``, ``actions (L-1, A)``,
    ``states (L, S)``, ``points (L, K, 2)``, plus ``episode`` and ``start``. Windows start every
    ``stride`` steps. ``split`` picks the seeded train or validation episodes. ``image_size`` (h, w)
    area-resizes the frames and scales the points to match. ``agent_points`` (a function: states (L, S) ->
    (L, P, 2) camera pixels, e.g. ``foresight.envs.agent_pixels``) appends the agent's pixels to the points.
    ``in_memory`` reads the split's episodes once, episode by episode, and serves every window from memory
    (uint8 frames, as stored): for small datasets whose model steps are faster than a window's HDF5 read
    (about 1.5 ms); the items are the same.
    """

    def __init__(self, root: str | Path, length: int, split: str = "train", val_fraction: float = 0.1,
                 seed: int = 0, stride: int = 1, image_size=None, agent_points=None, in_memory: bool = False):
        self.store = EpisodeStore(root)
        self.agent_points = agent_points
        self.image_size = tuple(image_size) if image_size is not None else tuple(self.store.shapes["frames"][1:3])
        frames_per_episode = self.store.shapes["frames"][0]
        if not 2 <= length <= frames_per_episode:
            raise ForesightError(f"length: windows of {length} frames do not fit episodes of {frames_per_episode} frames "
                                 f"in {root} (expected 2 <= length <= {frames_per_episode})")
        if split not in ("train", "val", "all"):
            raise ForesightError(f"split: expected 'train', 'val' or 'all', got {split!r}")
        if stride < 1:
            raise ForesightError(f"stride: expected an integer >= 1, got {stride}")
        train, val = split_episodes(len(self.store), val_fraction, seed)
        self.episodes = {"train": train, "val": val, "all": np.arange(len(self.store))}[split]
        starts = np.arange(0, frames_per_episode - length + 1, stride)
        self.items = [(int(e), int(s)) for e in self.episodes for s in starts]
        self.length = length
        self.memory = None  # episode -> {key: array}, when held in memory
        if in_memory:
            try:
                self.memory = {int(e): self.store.episode(int(e)) for e in self.episodes}
            finally:
                self.store.close()

    def _read(self, e: int, key: str, start: int, stop: int) -> np.ndarray:
        if self.memory is not None:
            return self.memory[e][key][start:stop]
        return self.store.read(e, key, start, stop)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, n: int) -> dict[str, np.ndarray]:
        e, s = self.items[n]
        L, read = self.length, self._read
        frames = read(e, "frames", s, s + L)  # (L, H, W, C) uint8
        points = read(e, "points", s, s + L)
        states = read(e, "states", s, s + L)
        if self.agent_points is not None:
            points = np.concatenate([points, self.agent_points(states).astype(points.dtype)], axis=1)
        if frames.shape[1:3] != self.image_size:
            points = scale_points(points, frames.shape[1:3], self.image_size)
            frames = resize_frames(frames, self.image_size)
        return {
            "frames": np.ascontiguousarray(frames.transpose(0, 3, 1, 2), dtype=np.float32) / 255.0,
            "actions": read(e, "actions", s, s + L - 1),
            "states": states,
            "points": points,
            "episode": e,
            "start": s,
        }


def summary(root: str | Path) -> dict:
    """What ``foresight data info`` prints: episodes, shapes, action ranges, how often objects moved."""
    store = EpisodeStore(root)
    m = store.manifest
    lo = np.full(store.shapes["actions"][-1], np.inf)
    hi = -lo
    for i in range(len(store)):
        a = store.read(i, "actions")
        lo, hi = np.minimum(lo, a.min(0)), np.maximum(hi, a.max(0))
    store.close()
    moved = sum(s["moved"] for s in m["shards"])
    return {
        "path": str(root), "env": m["env"]["id"], "env_kwargs": m["env"]["kwargs"],
        "episodes": len(store), "episodes_planned": m["episodes"], "complete": store.complete,
        "shards": len(m["shards"]), "shapes": m["shapes"], "point_names": m.get("point_names"),
        "action_space": m.get("action_space"),
        "actions_seen": {"min": lo.round(4).tolist(), "max": hi.round(4).tolist()},
        "moved_fraction": moved / len(store), "moved_threshold_px": m.get("moved_threshold_px"),
        # (datasets collected before it was counted have no moved_several)
        "moved_several_fraction": sum(s.get("moved_several", 0) for s in m["shards"]) / len(store),
        "bytes": sum((Path(root) / s["file"]).stat().st_size for s in m["shards"] if (Path(root) / s["file"]).exists()),
    }
