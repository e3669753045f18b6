"""What checking a dataset's shards against its manifest costs (training does it before it reads any):
seconds and MB/s of ``EpisodeStore.check_shards`` on a dataset, beside one pass of reading its training windows.

    python benchmarks/verify_cost.py [--data data/point_push] [--collect data/point_push.toml]

Collects the dataset first when it is missing (``--collect``). Writes benchmarks/results/verify_cost.json.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="data/point_push")
    ap.add_argument("--collect", default="data/point_push.toml", help="the recipe that makes --data when missing")
    ap.add_argument("--out", default=str(HERE / "results" / "verify_cost.json"))
    args = ap.parse_args()

    from foresight import datasets, evaluation

    data = REPO / args.data
    if not (data / "manifest.json").exists():
        subprocess.run([sys.executable, "-m", "foresight", "collect", str(REPO / args.collect), "--workers", "2",
                        "--no-progress", "--out", str(data)], check=True)
    store = datasets.EpisodeStore(data)
    megabytes = sum((data / s["file"]).stat().st_size for s in store.manifest["shards"]) / 1e6
    start = time.perf_counter()
    store.check_shards()
    check = time.perf_counter() - start
    windows = datasets.WindowDataset(data, 12, "train")
    start = time.perf_counter()
    for i in range(0, len(windows), 29):  # every episode once (windows of 12 frames, 30-step episodes)
        windows[i]
    read = time.perf_counter() - start
    result = {"date": date.today().isoformat(), "machine": evaluation.machine(), "data": args.data,
              "episodes": len(store), "megabytes": round(megabytes, 1), "check_seconds": round(check, 3),
              "check_mb_per_second": round(megabytes / check, 1), "read_one_window_per_episode_seconds": round(read, 3)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
