"""foresight ui: the page's server refuses what it cannot serve and saves runs as foresight plan does; a real browser
clicks a designated and a goal pixel, runs visual MPC and reads the final distance the saved summary holds."""
import json
import os
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from foresight import ui
from foresight.cli import REPO
from foresight.envs import make_env
from foresight.planning import suites

MODEL = REPO / "pretrained" / "plan_point_push"
POINT_PUSH = REPO / "plan" / "point_push.toml"
SCENES = [REPO / "plan" / "arm_push.toml", POINT_PUSH]  # the model's scene second: the page must still pick it


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(base URL, session, out folder) of a server on a free port, in this process."""
    out = tmp_path_factory.mktemp("ui")
    session = ui.Session(ui.load_scenes(SCENES), ui.model_names([MODEL]), out)
    server = ui.make_server(session, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", session, out
    server.shutdown()
    server.server_close()
    session.close()


def call(base, path, body=None):
    """(HTTP status, JSON answer)."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(base + path, data=data, method="GET" if body is None else "POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def wait_done(base, timeout=180):
    end = time.time() + timeout
    while time.time() < end:
        _, status = call(base, "/api/status")
        if not status["running"]:
            return status
        time.sleep(0.1)
    raise AssertionError("the run did not end")


def block_pixel(seed=0):
    """The block's true pixel at the point_push scene's start for ``seed`` (independently of the server)."""
    suite = suites.load(POINT_PUSH)
    env = make_env(suite.env, suite.env_kwargs)
    _, info = env.reset(seed=seed, options=suite.reset_options)
    env.close()
    return info["points"][0]


def run_request(**changes):
    r, c = block_pixel()
    body = {"scene": "point_push", "seed": 0, "planner": "oracle", "model": "plan_point_push",
            "designated": [[float(r), float(c)]], "goals": [[float(r), float(c) + 8]], "steps": 3, "samples": 30,
            "iterations": 1, "horizon": 4}
    return {**body, **changes}


def test_config_and_frame(served):
    base, _, _ = served
    code, config = call(base, "/api/config")
    assert code == 200 and set(config["scenes"]) == {"point_push", "arm_push"}
    assert config["models"] == ["plan_point_push"] and config["scenes"]["point_push"]["steps"] == 15
    assert config["default_scene"] == "point_push"  # the scene the model was trained for
    code, frame = call(base, "/api/frame", {"scene": "point_push", "seed": 3})
    assert code == 200 and (frame["height"], frame["width"]) == (64, 64)
    assert frame["image"].startswith("data:image/png;base64,")


@pytest.mark.parametrize("changes, expected", [
    ({"model": "../../etc/model", "planner": "model"}, "model: '../../etc/model' is not one this page serves"),
    ({"designated": []}, "place at least one designated pixel"),
    ({"goals": [[10, 10], [20, 20]]}, "goal 2 has no designated pixel"),
    ({"designated": [[70, 3]], "goals": [[10, 10]]}, "designated: pixel (70, 3) lies outside the 64x64 image"),
    ({"samples": 0}, "samples: expected an integer in 2..5000, got 0"),
    ({"scene": "nowhere"}, "scene: 'nowhere' is not one this page serves"),
    ({"scene": "arm_push", "planner": "model"}, "trained on foresight/PointPush-v0 data, the suite runs "
                                                "foresight/ArmPush-v0"),
])
def test_bad_requests_are_one_line_messages(served, changes, expected):
    base, _, _ = served
    code, answer = call(base, "/api/run", run_request(**changes))
    assert code == 400 and expected in answer["error"] and "\n" not in answer["error"]
    assert call(base, "/api/config")[0] == 200  # the server goes on


def test_a_run_is_saved_as_foresight_plan_saves_one(served):
    base, _, out = served
    code, answer = call(base, "/api/run", run_request())
    assert code == 200, answer
    code, second = call(base, "/api/run", run_request())  # one run at a time
    assert code == 400 and "a run is going" in second["error"]
    status = wait_done(base)
    assert status["error"] is None and len(status["records"]) == 3
    saved = Path(status["saved"])
    assert saved.exists() and saved.parent.parent.parent == out
    summary = json.loads((saved.parent.parent / "summary.json").read_text())
    task = summary["oracle"]["per_task"][0]
    assert float(status["final_distance"]) == task["final_distance"]
    assert task["distance_per_step"] == [round(r["distance"], 2) for r in status["records"]]
    # the oracle pushes the block toward its goal 8 px away (the true distance the page shows)
    assert status["records"][-1]["distance"] < 8.0 and status["panel"].startswith("data:image/png")


def test_stop_ends_a_run_early(served):
    base, _, _ = served
    assert call(base, "/api/run", run_request(steps=200))[0] == 200
    time.sleep(1.0)
    call(base, "/api/stop", {})
    status = wait_done(base, timeout=60)
    assert status["error"] is None and 1 <= len(status["records"]) < 200 and status["saved"]


def test_the_judge_follows_the_object_under_each_designated_pixel():
    points = np.array([[10.0, 10.0], [40.0, 40.0]])
    assert suites.nearest_objects(points, np.array([[39.0, 41.0], [9.0, 12.0]])) == (1, 0)
    task = suites.Task(0, 0, np.array([[39.0, 41.0]]), np.array([[40.0, 44.0]]), objects=(1,))
    suite = suites.load(POINT_PUSH)
    distance, inside = suites.judge(suite, task, {"points": points})
    assert distance == pytest.approx(4.0) and inside is False


# --- a real browser -------------------------------------------------------------------------------------------

def browser_paths():
    """Debian's chromium and chromedriver, installed when missing (the machine is root and reaches Debian)."""
    found = shutil.which("chromium"), shutil.which("chromedriver")
    if all(found):
        return found
    if os.geteuid() != 0:
        pytest.fail("the browser test needs Debian's chromium and chromium-driver (apt-get install chromium "
                    "chromium-driver), and installing them needs root")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    done = subprocess.run("apt-get update -qq && apt-get install -y -qq chromium chromium-driver", shell=True,
                          capture_output=True, text=True, env=env, timeout=1200)
    found = shutil.which("chromium"), shutil.which("chromedriver")
    if done.returncode or not all(found):
        last = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["(no output)"]
        pytest.fail(f"the browser test could not install chromium and chromium-driver with apt-get: {last[0]}")
    return found


@pytest.fixture(scope="module")
def browser():
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.fail("the browser test needs selenium, a dev dependency: pip install -e '.[dev]'")

    chromium, driver = browser_paths()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1400,1100"):
        options.add_argument(flag)
    chrome = webdriver.Chrome(service=Service(executable_path=driver), options=options)
    yield chrome
    chrome.quit()


def click_pixel(chrome, canvas, row, col, scale=6):
    from selenium.webdriver.common.action_chains import ActionChains

    # Selenium 4 offsets are from the element's centre; the image sits ui.html's MARGIN (6) cells inside the canvas
    x = (col + 6 + 0.5) * scale - canvas.size["width"] / 2
    y = (row + 6 + 0.5) * scale - canvas.size["height"] / 2
    ActionChains(chrome).move_to_element_with_offset(canvas, int(x), int(y)).click().perform()


def test_browser_designates_runs_and_shows_the_saved_distance(served, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    base, _, _ = served
    browser.get(base + "/")
    wait = WebDriverWait(browser, 60)
    wait.until(lambda d: d.execute_script("return document.getElementById('image').width") == 456)
    time.sleep(0.5)  # the frame's image is drawn on load
    canvas = browser.find_element(By.ID, "image")
    click_pixel(browser, canvas, -3, 10)  # in the grey margin: outside the image
    assert "outside the 64x64 image" in browser.find_element(By.ID, "message").text
    r, c = np.round(block_pixel()).astype(int)
    click_pixel(browser, canvas, r, c)
    browser.find_element(By.ID, "mode-goal").click()
    click_pixel(browser, canvas, r, c + 8)
    assert browser.find_element(By.ID, "message").text == ""
    Select(browser.find_element(By.ID, "planner")).select_by_value("model")
    for key, value in (("steps", 3), ("samples", 20), ("iterations", 1)):
        field = browser.find_element(By.ID, key)
        field.clear()
        field.send_keys(str(value))
    browser.find_element(By.ID, "run").click()
    wait = WebDriverWait(browser, 180)
    wait.until(lambda d: d.find_element(By.ID, "saved").text not in ("", "–")
               or d.find_element(By.ID, "message").text)
    assert browser.find_element(By.ID, "message").text == ""
    saved = Path(browser.find_element(By.ID, "saved").text)
    summary = json.loads((saved.parent.parent / "summary.json").read_text())
    task = summary["model"]["per_task"][0]
    assert float(browser.find_element(By.ID, "final").text) == task["final_distance"]
    assert task["designated"] == [[float(r), float(c)]] and task["goals"] == [[float(r), float(c + 8)]]
    assert browser.find_element(By.ID, "live").get_attribute("src").startswith("data:image/png")
    # a request naming a model not given on the command line, sent from the page, is refused
    answer = browser.execute_async_script("""
        const done = arguments[arguments.length - 1];
        fetch('/api/run', {method: 'POST', body: JSON.stringify({scene: 'point_push', seed: 0, planner: 'model',
              model: 'elsewhere', designated: [[20, 20]], goals: [[25, 25]]})})
          .then((r) => r.json()).then(done);""")
    assert "model: 'elsewhere' is not one this page serves" in answer["error"]
