"""Every console script parses its arguments before it loads the library: ``--help`` and argument
errors answer at once.  Held without a clock: the child must not import the heavy modules, and its
CPU time (not wall time, which a loaded host stretches) stays under a second."""
from __future__ import annotations

import configparser
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "torchvision", "cv2", "numba", "sklearn", "matplotlib", "numpy", "PIL", "scipy", "pycocotools")


def console_scripts() -> dict[str, str]:
    """``{name: "module:function"}`` of setup.cfg's console scripts."""
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    lines = config["options.entry_points"]["console_scripts"].strip().splitlines()
    return dict(tuple(part.strip() for part in line.split("=")) for line in lines)


PROBE = """
import contextlib, io, json, resource, sys
module, function, argv = sys.argv[1], sys.argv[2], sys.argv[3:]
sys.argv = [sys.argv[0], *argv]
import importlib
main = getattr(importlib.import_module(module), function)
code = None
with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.redirect_stderr(io.StringIO()) as err:
    try:
        main(argv)
    except SystemExit as stop:
        code = stop.code
usage = resource.getrusage(resource.RUSAGE_SELF)
heavy = [m for m in json.loads(sys.stdin.read()) if m in sys.modules]
print(json.dumps({"code": code, "heavy": heavy, "cpu": usage.ru_utime + usage.ru_stime,
                  "out": out.getvalue(), "err": err.getvalue()}))
"""


def run_probe(target: str, argv: list[str]) -> dict:
    module, function = target.split(":")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", PROBE, module, function, *argv], input=json.dumps(HEAVY),
                          capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_every_tool_is_a_console_script():
    tools = {path.stem for path in (ROOT / "tools").glob("*.py")} - {"config_doc"}
    modules = {target.split(":")[0].rsplit(".", 1)[1] for target in console_scripts().values()}
    assert tools == modules, tools ^ modules


@pytest.mark.parametrize("name", sorted(console_scripts()))
def test_help_loads_nothing_heavy(name):
    found = run_probe(console_scripts()[name], ["--help"])
    assert found["code"] in (0, None) and "usage:" in found["out"], found
    assert found["heavy"] == [], f"{name} --help imported {found['heavy']}"
    assert found["cpu"] < 1.0, f"{name} --help took {found['cpu']:.2f} s of CPU"


@pytest.mark.parametrize("name", ["sppnet-train", "sppnet-test", "sppnet-predict", "sppnet-ensemble"])
def test_an_argument_error_loads_nothing_heavy(name):
    found = run_probe(console_scripts()[name], ["--no-such-flag"])
    assert found["code"] == 2 and "error:" in found["err"], found
    assert found["heavy"] == [], f"{name} imported {found['heavy']} to refuse an argument"
