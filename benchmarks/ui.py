"""The page's step latency: server work per MPC step in `foresight ui`, beside the planner's seconds per replan and
beside the same tasks run by `foresight plan`'s loop without the page, measured in one run.

Writes benchmarks/results/ui.json. A server on a free port in this process with the shipped planning model
(pretrained/plan_point_push) and plan/point_push.toml as the scene, at the suite's settings; each of the suite's
first --tasks tasks (its designated and goal pixels) is sent as a page would send it (POST /api/run), and polled
(GET /api/status) every 0.25 s as the page does. Per step the server plans, steps the scene, draws the panel and
encodes it as a PNG; `encode` is that last part. The same tasks also run through `mpc.run_task` directly, before the
page's runs and after them (their mean is `plan_loop_seconds_per_step`).

    python benchmarks/ui.py [--tasks 3]
"""
from __future__ import annotations

import argparse
import json
import sys
import threading
import time
import urllib.request
from datetime import date
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from runs import REPO  # noqa: E402

from foresight import evaluation, ui  # noqa: E402
from foresight.envs import make_env  # noqa: E402
from foresight.planning import mpc, planners, suites  # noqa: E402

SUITE = REPO / "plan" / "point_push.toml"
MODEL = REPO / "pretrained" / "plan_point_push"


def call(base: str, path: str, body: dict | None = None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(base + path, data=data, method="GET" if body is None else "POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=300) as response:
        return json.loads(response.read())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=3)
    ap.add_argument("--out", default=str(HERE / "results" / "ui.json"))
    args = ap.parse_args()
    suite = suites.load(SUITE)
    env = make_env(suite.env, suite.env_kwargs)
    tasks = suites.make_tasks(suite, env)[:args.tasks]
    env.close()

    def plan_loop() -> list[float]:  # foresight plan's loop on the same tasks, without the page
        model, env, seconds = planners.load_model(MODEL), make_env(suite.env, suite.env_kwargs), []
        for task in tasks:
            start = time.perf_counter()
            o = mpc.run_task(env, task, suite, "model", model, record=True)
            seconds.append((time.perf_counter() - start) / len(o.distances))
        env.close()
        return seconds

    import tempfile

    page = {"seconds_per_step": [], "encode_seconds_per_step": [], "seconds_per_replan": []}
    with tempfile.TemporaryDirectory() as out:
        session = ui.Session(ui.load_scenes([SUITE]), ui.model_names([MODEL]), Path(out))
        # every run on the page's worker thread: OpenMP keeps a thread team per calling thread, and a second team
        # idling beside the first slows it (two cores)
        plain = session.call(plan_loop, timeout=3600)  # before the page's runs and after: neither has the warm start
        server = ui.make_server(session, "127.0.0.1", 0)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        base = f"http://127.0.0.1:{server.server_address[1]}"
        for task in tasks:
            call(base, "/api/run", {"scene": suite.name, "seed": task.seed, "planner": "model",
                                    "model": MODEL.name, "designated": task.designated.tolist(),
                                    "goals": task.goals.tolist()})
            while (status := call(base, "/api/status"))["running"]:
                time.sleep(0.25)
            if status["error"]:
                raise SystemExit(f"benchmarks/ui.py: the page's run failed: {status['error']}")
            summary = json.loads((Path(status["saved"]).parent.parent / "summary.json").read_text())
            page["seconds_per_step"].append(status["seconds_per_step"])
            page["encode_seconds_per_step"].append(status["encode_seconds_per_step"])
            page["seconds_per_replan"].append(summary["model"]["seconds_per_replan"])
        plain += session.call(plan_loop, timeout=3600)
        server.shutdown()
        server.server_close()
        session.close()

    mean = lambda xs: float(np.mean(xs))  # noqa: E731
    step, replan, encode = mean(page["seconds_per_step"]), mean(page["seconds_per_replan"]), \
        mean(page["encode_seconds_per_step"])
    result = {
        "date": date.today().isoformat(), "machine": evaluation.machine(), "torch_threads": torch.get_num_threads(),
        "suite": "plan/point_push.toml", "model": "pretrained/plan_point_push", "tasks": len(tasks),
        "steps_per_task": suite.steps, "replan_every": suite.replan_every,
        "page_seconds_per_step": round(step, 4),
        "page_planner_seconds_per_replan": round(replan, 4),
        "page_encode_seconds_per_step": round(encode, 5),
        "page_overhead_seconds_per_step": round(step - replan / suite.replan_every, 4),
        "plan_loop_seconds_per_step": round(mean(plain), 4),
        "ratio_page_over_plan_loop": round(step / mean(plain), 3),
    }
    evaluation.write_json(Path(args.out), result)
    print(json.dumps(result, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
