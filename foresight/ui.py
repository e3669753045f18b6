"""``foresight ui``: a local page to click designated and goal pixels on a scene's camera image and watch visual MPC
move them, with the same planners and MPC loop as ``foresight plan`` (``mpc.run_task``, saved by ``mpc.save_task``).

    foresight ui --model pretrained/plan_point_push [--model RUN ...] [--suite plan/point_push.toml ...] [--port N]

A scene is a designated-pixel suite (its environment, options, CEM, MPC and cost settings); the page picks one, a
reset seed, a planner, a model among those named on the command line (by name: the browser never sends a path) and
the main CEM settings. The page (``ui.html``) asks the server for JSON:

    GET  /                the page
    GET  /api/config      scenes, models, planners, each scene's settings
    POST /api/frame       {scene, seed} -> the start frame (a PNG data URL) and its size
    POST /api/run         {scene, seed, planner, model, designated, goals, steps, samples, iterations, horizon}
    GET  /api/status      the run so far: per step the true distance, the plan's cost, in the goal; the latest panel
                          (camera | heat map | predicted frame); when done, the final distance and where it was saved
    POST /api/stop        ends the run after its current step

Everything that touches an environment or a model runs on one worker thread (a MuJoCo scene's EGL context belongs
to the thread that made it), so there is one run at a time. A request the page cannot serve is answered
``{"error": "..."}``, one line, and the server goes on.

The server is the standard library's ``ThreadingHTTPServer``: one user on 127.0.0.1 polling a few JSON routes
needs no web framework.
"""
from __future__ import annotations

import base64
import json
import queue
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np

from foresight import recipes, viz
from foresight.errors import ForesightError

PAGE = Path(__file__).with_name("ui.html")
PLANNERS = ("model", "oracle", "random")
SETTINGS = {"steps": ("steps", 1, 500), "samples": ("cem.samples", 2, 5000), "iterations": ("cem.iterations", 1, 20),
            "horizon": ("cem.horizon", 1, 50)}  # the page's field: (the suite key, least, most)


def data_url(image: np.ndarray) -> str:
    return "data:image/png;base64," + base64.b64encode(viz.png_bytes(image)).decode()


@dataclass
class Run:
    """What the page is shown of the current (or last) run."""
    steps: int = 0
    planner: str = ""
    running: bool = False
    records: list[dict] = field(default_factory=list)  # per executed step: distance, cost, in_goal
    panel: str | None = None  # the latest step's panel, a PNG data URL
    final_distance: str | None = None  # as the saved summary rounds it
    success: bool | None = None
    saved: str | None = None
    error: str | None = None
    seconds_per_step: float | None = None  # server work per MPC step: planning, stepping, drawing, encoding
    encode_seconds_per_step: float | None = None  # of which drawing the panel and encoding it

    def view(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


class Session:
    """The scenes, the models and the one run; a worker thread does all environment and model work."""

    def __init__(self, scenes: dict, models: dict[str, Path], out: Path):
        self.scenes, self.models, self.out = scenes, models, Path(out)
        self._envs, self._loaded = {}, {}
        self.run = Run()
        self._lock, self._stop = threading.Lock(), threading.Event()
        self._jobs: queue.Queue = queue.Queue()
        self._worker = threading.Thread(target=self._work, name="foresight-ui-worker", daemon=True)
        self._worker.start()

    # --- the worker thread ---
    def _work(self) -> None:
        while True:
            job, reply = self._jobs.get()
            if job is None:
                break
            try:
                reply.put((True, job()))
            except ForesightError as e:
                reply.put((False, str(e)))
            except Exception as e:  # noqa: BLE001 - the page shows it; the server goes on
                reply.put((False, f"{type(e).__name__}: {e}"))

    def _submit(self, job) -> queue.Queue:
        reply: queue.Queue = queue.Queue()
        self._jobs.put((job, reply))
        return reply

    def call(self, job, timeout: float = 300.0):
        """``job()`` run on the worker thread; its result, or its ForesightError raised here."""
        ok, value = self._submit(job).get(timeout=timeout)
        if not ok:
            raise ForesightError(value)
        return value

    def close(self) -> None:
        """End the run (after its current step), close the scenes on the worker thread that made them, stop it."""
        self._stop.set()

        def close_all():
            for env in self._envs.values():
                env.close()
            self._envs.clear()

        self._submit(close_all)
        self._jobs.put((None, None))
        self._worker.join(timeout=60)

    def _env(self, scene: str):  # on the worker thread
        if scene not in self._envs:
            from foresight.envs import make_env

            suite = self.scenes[scene]
            self._envs[scene] = make_env(suite.env, suite.env_kwargs, f"scene {scene}")
        return self._envs[scene]

    def _model(self, name: str):  # on the worker thread
        if name not in self._loaded:
            from foresight.planning import planners

            self._loaded[name] = planners.load_model(self.models[name])
        return self._loaded[name]

    # --- requests (on the server's threads) ---
    def config(self) -> dict:
        scenes = {}
        for name, s in self.scenes.items():
            scenes[name] = {"env": s.env, "steps": s.steps, "samples": s.cem.samples,
                            "iterations": s.cem.iterations, "horizon": s.cem.horizon, "success_px": s.success_px}
        return {"scenes": scenes, "models": list(self.models), "planners": list(PLANNERS),
                "default_scene": self.default_scene()}

    def default_scene(self) -> str:
        """The scene the first model was trained for (its environment and options), else its environment's, else the
        first."""
        trained = {}
        if self.models:
            try:
                recipe = json.loads((next(iter(self.models.values())) / "recipe.json").read_text())
                trained = recipe.get("dataset", {}).get("env") or {}
            except (OSError, ValueError):
                pass
        for same in (lambda s: s.env == trained.get("id") and s.env_kwargs == trained.get("kwargs"),
                     lambda s: s.env == trained.get("id")):
            for name, suite in self.scenes.items():
                if same(suite):
                    return name
        return next(iter(self.scenes))

    def _scene(self, request: dict) -> str:
        scene = request.get("scene")
        if scene not in self.scenes:
            raise ForesightError(f"scene: {scene!r} is not one this page serves ({', '.join(self.scenes)})")
        return scene

    @staticmethod
    def _seed(request: dict) -> int:
        seed = request.get("seed", 0)
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            raise ForesightError(f"seed: expected an integer >= 0, got {seed!r}")
        return seed

    def _idle(self) -> None:
        if self.run.running:
            raise ForesightError("a run is going: stop it, or wait for it to end, before starting another")

    def frame(self, request: dict) -> dict:
        scene, seed = self._scene(request), self._seed(request)
        self._idle()

        def job():
            obs, _ = self._env(scene).reset(seed=seed, options=self.scenes[scene].reset_options)
            return {"image": data_url(obs), "height": int(obs.shape[0]), "width": int(obs.shape[1])}

        return self.call(job)

    def start(self, request: dict) -> dict:
        scene, seed = self._scene(request), self._seed(request)
        planner, name = request.get("planner"), request.get("model")
        if planner not in PLANNERS:
            raise ForesightError(f"planner: expected one of {', '.join(PLANNERS)}, got {planner!r}")
        if planner == "model" and name not in self.models:
            served = ", ".join(self.models) or "none: start foresight ui with --model RUN"
            raise ForesightError(f"model: {name!r} is not one this page serves ({served})")
        designated, goals = request.get("designated") or [], request.get("goals") or []
        if not designated:
            raise ForesightError("designated: place at least one designated pixel on the image")
        if len(goals) != len(designated):
            k = min(len(goals), len(designated)) + 1
            raise ForesightError(f"goal {k} has no designated pixel" if len(goals) > len(designated)
                                 else f"designated pixel {k} has no goal pixel")
        raw = recipes.to_dict(self.scenes[scene])
        raw.update(name="ui", tasks=1, heldout_seed=0, goal="offset", goal_data="", heldout_goal_data="",
                   success="pixels", baselines=[], designated=len(designated))
        for key, (path, low, high) in SETTINGS.items():
            value = request.get(key)
            if value is None:
                continue
            if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
                raise ForesightError(f"{key}: expected an integer in {low}..{high}, got {value!r}")
            recipes.apply_override(raw, f"{path}={value}", key)
        from foresight.planning import suites

        if raw["cem"]["elites"] > raw["cem"]["samples"]:
            raw["cem"]["elites"] = raw["cem"]["samples"]  # fewer samples than the scene's elites: keep them all
        suite = recipes.from_dict(suites.DesignatedPixelSuite, raw, "the page")
        model = name if planner == "model" else None
        with self._lock:
            self._idle()
            self.run = Run(steps=suite.steps, planner=planner, running=True)
            self._stop.clear()
        run = self.run
        try:  # what can be refused is refused here, in the request's answer
            env, task = self.call(lambda: self._prepare(scene, suite, seed, model, designated, goals))
        except BaseException:
            run.running = False
            raise

        def job():
            try:
                self._execute(run, env, task, scene, suite, planner, model)
            except ForesightError as e:
                run.error = str(e)
            except Exception as e:  # noqa: BLE001 - the page shows it; the server goes on
                run.error = f"{type(e).__name__}: {e}"
            finally:
                run.running = False

        self._submit(job)
        return {"started": True, "steps": suite.steps}

    def _prepare(self, scene, suite, seed, name, designated, goals):  # on the worker thread
        from foresight.pixels import check_in_image
        from foresight.planning import suites

        env = self._env(scene)
        if name is not None:
            try:
                self._model(name).check_env(suite.env, suite.env_kwargs, env, f"model {name}")
            except ForesightError as e:  # the page names the model by its name, not as the command line's option
                raise ForesightError(f"model {name}: {str(e).removeprefix('--model: ')}") from None
        obs, info = env.reset(seed=seed, options=suite.reset_options)
        H, W = obs.shape[:2]
        try:
            designated = check_in_image("designated", designated, H, W)
            goals = check_in_image("goal", goals, H, W)
        except (TypeError, ValueError):
            raise ForesightError("designated/goals: expected lists of [row, col] pixels") from None
        task = suites.Task(0, seed, designated, goals, reset_options=dict(suite.reset_options),
                           objects=suites.nearest_objects(info["points"], designated))
        return env, task

    def _execute(self, run: Run, env, task, scene, suite, planner, name) -> None:  # on the worker thread
        from foresight.planning import mpc

        model = self._model(name) if name else None
        clock = {"encode": 0.0}

        def on_step(step, panel, distance, inside, cost):
            start = time.perf_counter()
            run.panel = data_url(panel)
            clock["encode"] += time.perf_counter() - start
            run.records.append({"step": step, "distance": round(float(distance), 3), "in_goal": bool(inside),
                                "cost": None if cost is None else round(float(cost), 4)})
            run.seconds_per_step = (time.perf_counter() - clock["start"]) / step
            run.encode_seconds_per_step = clock["encode"] / step

        clock["start"] = time.perf_counter()
        outcome = mpc.run_task(env, task, suite, planner, model, record=True, on_step=on_step,
                               stop=self._stop.is_set)
        folder = self.out / f"{datetime.now():%Y%m%d-%H%M%S-%f}-{scene}"
        resolved = {**recipes.to_dict(suite), "model": str(self.models[name]) if name else None}
        gif = mpc.save_task(folder, suite, outcome, resolved)
        run.final_distance = f"{round(outcome.final_distance, 3):.3f}"
        run.success, run.saved = bool(outcome.success), str(gif)

    def status(self) -> dict:
        return self.run.view()

    def stop(self) -> dict:
        self._stop.set()
        return {"stopping": self.run.running}


def make_server(session: Session, host: str = "127.0.0.1", port: int = 8765) -> ThreadingHTTPServer:
    page = PAGE.read_bytes()
    routes = {("GET", "/api/config"): lambda body: session.config(),
              ("GET", "/api/status"): lambda body: session.status(),
              ("POST", "/api/frame"): session.frame, ("POST", "/api/run"): session.start,
              ("POST", "/api/stop"): lambda body: session.stop()}

    class Handler(BaseHTTPRequestHandler):
        def _send(self, code: int, data: bytes, kind: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(data)

        def _answer(self, method: str) -> None:
            path = self.path.split("?")[0]
            if method == "GET" and path in ("/", "/index.html"):
                return self._send(200, page, "text/html; charset=utf-8")
            route = routes.get((method, path))
            if route is None:
                return self._send(404, json.dumps({"error": f"no such page: {method} {path}"}).encode(),
                                  "application/json")
            try:
                body = {}
                if method == "POST":
                    length = int(self.headers.get("Content-Length") or 0)
                    body = json.loads(self.rfile.read(length) or b"{}")
                    if not isinstance(body, dict):
                        raise ForesightError("request: expected a JSON object")
                answer, code = route(body), 200
            except ValueError:
                answer, code = {"error": "request: the body is not JSON"}, 400
            except ForesightError as e:
                answer, code = {"error": str(e)}, 400
            except Exception as e:  # noqa: BLE001 - one line to the page, never a dead server
                answer, code = {"error": f"{type(e).__name__}: {e}"}, 500
            self._send(code, json.dumps(answer).encode(), "application/json")

        def do_GET(self):  # noqa: N802 - http.server's names
            self._answer("GET")

        def do_POST(self):  # noqa: N802
            self._answer("POST")

        def log_message(self, format, *args):  # noqa: A002 - quiet: the page is the interface
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    return server


def load_scenes(paths=(), repo: Path | None = None) -> dict:
    """Scenes by suite name: the suites named (each must be a designated-pixel suite), or else every designated-pixel
    suite in the checkout's plan/ folder."""
    from foresight.planning import suites

    scenes = {}
    found = list(paths) or (sorted((repo / "plan").glob("*.toml")) if repo else [])
    for path in found:
        suite = suites.load(path)
        if suite.kind == "designated_pixels":
            scenes[suite.name] = suite
        elif paths:
            raise ForesightError(f"--suite: {path} is a goal-image suite; the page plans designated pixels")
    if not scenes:
        raise ForesightError("--suite: no scene to serve (give a designated-pixel suite, e.g. plan/point_push.toml)")
    return scenes


def model_names(runs) -> dict[str, Path]:
    """Each --model RUN by its folder's name (a second of the same name gets a number)."""
    names: dict[str, Path] = {}
    for run in runs:
        path = Path(run)
        if not path.is_dir():
            raise ForesightError(f"--model: {run}: no such run folder")
        name, k = path.name, 2
        while name in names:
            name, k = f"{path.name}-{k}", k + 1
        names[name] = path.resolve()
    return names
