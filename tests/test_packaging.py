"""The project's own files: dependencies in sync, two-command setup, lint, `kto-course doctor`."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
from conftest import ROOT, inner_pytest_env

from kto_course import cli, system

# pip and conda spell a few packages differently.
CONDA_NAMES = {"torch": "pytorch"}


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~; \[]", requirement.strip(), maxsplit=1)[0].lower()


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_environment_yml_has_every_runtime_dependency():
    text = (ROOT / "environment.yml").read_text()
    conda = {
        _name(line.strip()[2:])
        for line in text.splitlines()
        if line.startswith("  - ") and not line.strip().startswith("- pip")
    }
    missing = [
        dep
        for dep in (_name(r) for r in _pyproject()["project"]["dependencies"])
        if CONDA_NAMES.get(dep, dep) not in conda
    ]
    assert not missing, f"environment.yml lacks runtime dependencies: {missing}"
    assert "python=3.11" in text and "conda-forge" in text
    # Lesson 07 needs the trl extra; conda learners get it through pip.
    assert "-e .[trl]" in text


def test_importing_nbformat_builds_no_grammars():
    """Every submit, grading worker and kernel imports nbformat: the jsonschema it validates
    with must not build rfc3987-syntax's grammars on import (the cap in pyproject.toml)."""
    code = "import sys, nbformat; print('rfc3987_syntax' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_trl_extra_admits_the_cpu_torch_and_trl_1_16():
    from packaging.requirements import Requirement

    trl_extra = _pyproject()["project"]["optional-dependencies"]["trl"]
    extra = {_name(r): Requirement(r) for r in trl_extra}
    assert {"trl", "accelerate", "datasets"} <= set(extra)
    assert extra["trl"].specifier.contains("1.16.0")


def test_torch_requirement_admits_the_cpu_wheel_2_13_0():
    from packaging.requirements import Requirement

    torch_req = next(
        Requirement(r) for r in _pyproject()["project"]["dependencies"] if _name(r) == "torch"
    )
    assert torch_req.specifier.contains("2.13.0")


def test_readme_first_screen_shows_the_two_commands():
    first_screen = "\n".join((ROOT / "README.md").read_text().splitlines()[:15])
    assert "make lab" in first_screen and "make test" in first_screen


def test_makefile_installs_torch_first_and_reinstalls_only_on_change():
    makefile = (ROOT / "Makefile").read_text()
    # The test extras and the trl extra (lesson 07): CI always tests the TRL path.
    assert makefile.index("torch==2.13.0") < makefile.index("-e '.[test,trl]'")
    # The install recipe hangs off a stamp that depends on pyproject.toml: a second run is a no-op.
    assert re.search(r"^\$\(STAMP\): pyproject\.toml", makefile, re.M)
    assert re.search(r"^test: \$\(STAMP\)", makefile, re.M)
    assert re.search(r"^lab: \$\(STAMP\)", makefile, re.M)
    assert "--notebook-dir=notebooks" in makefile


def test_make_is_a_no_op_when_installed():
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    stamp = ROOT / ".venv" / ".kto-course-installed"
    if not stamp.exists() or stamp.stat().st_mtime < (ROOT / "pyproject.toml").stat().st_mtime:
        pytest.skip("the venv was not set up by `make` since pyproject.toml last changed")
    out = subprocess.run(
        ["make", "-n", "test"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    assert "pip install" not in out, f"make would reinstall although nothing changed:\n{out}"


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci and "set -euo pipefail" in ci
    assert "apt-get install" in ci and "chromium" in ci


def test_ruff_is_clean():
    ruff = shutil.which("ruff", path=str(ROOT / ".venv" / "bin")) or shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed")
    result = subprocess.run(
        [ruff, "check", "kto_course", "tests", "benchmarks"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_doctor_reports_versions_device_and_browser(capsys):
    assert cli.main(["doctor"]) == 0
    out = capsys.readouterr().out
    keys = ("python", "torch", "transformers", "nbgrader", "jupyterlab", "ipywidgets", "ipympl")
    for key in keys:
        assert re.search(rf"^{key}\s+\S", out, re.M), f"doctor does not report {key}"
    assert re.search(r"^device\s+(cuda|mps|cpu)$", out, re.M)
    assert re.search(r"^torch threads\s+\d+$", out, re.M)
    assert re.search(r"^chromium\s+(/|not found)", out, re.M)


def test_doctor_runs_as_a_console_script():
    exe = ROOT / ".venv" / "bin" / "kto-course"
    if not exe.exists():
        pytest.skip("the package is not installed in .venv")
    result = subprocess.run([str(exe), "doctor"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "nbgrader" in result.stdout


def test_unknown_command_and_bad_arguments_exit_nonzero(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["no-such-command"])
    assert info.value.code == 2
    with pytest.raises(SystemExit):
        cli.main(["train", "--steps", "0"])
    assert "expected a number >= 1" in capsys.readouterr().err


def test_pick_device_errors_before_any_work(monkeypatch):
    import torch

    with pytest.raises(ValueError, match="unknown device"):
        system.pick_device("tpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="no CUDA GPU"):
        system.pick_device("cuda")
    assert system.pick_device("cpu") == "cpu"
    assert system.pick_device(None) in ("mps", "cpu")


def test_default_threads_do_not_oversubscribe():
    import os

    assert 1 <= system.default_threads() <= max(1, len(os.sched_getaffinity(0)))


def test_find_chromium_honours_the_environment_variable(monkeypatch, tmp_path):
    fake = tmp_path / "chromium"
    fake.write_text("#!/bin/sh\n")
    monkeypatch.setenv(system.CHROMIUM_ENV, str(fake))
    assert system.find_chromium() == str(fake)
    monkeypatch.setenv(system.CHROMIUM_ENV, str(tmp_path / "missing"))
    assert system.find_chromium() is None


def test_learner_profile_names_plugins_that_exist():
    """jupyter/learner/ (make lab) turns off nbgrader's instructor plugins by id: a renamed id in
    a newer nbgrader would silently bring the panels back."""
    profile = ROOT / "jupyter" / "learner"
    disabled = json.loads((profile / "labconfig" / "page_config.json").read_text())
    bundle = Path(sys.prefix) / "share" / "jupyter" / "labextensions" / "@jupyter" / "nbgrader"
    assert bundle.is_dir(), f"nbgrader's lab extension is not installed in {sys.prefix}"
    code = " ".join(p.read_text(errors="ignore") for p in bundle.glob("static/*.js"))
    for plugin in disabled["disabledExtensions"]:
        assert f'"{plugin}"' in code, plugin
    assert '"@jupyter/nbgrader:validate-assignment"' in code  # the one a learner keeps
    server = json.loads(next((profile / "jupyter_server_config.d").glob("*.json")).read_text())
    off = server["ServerApp"]["jpserver_extensions"]
    assert set(off) == {f"nbgrader.server_extensions.{n}" for n in
                        ("formgrader", "assignment_list", "course_list")}  # fmt: skip
    assert not any(off.values())
    for name in off:
        assert importlib.util.find_spec(name) is not None, name


def test_tests_of_one_group_run_in_one_worker(tmp_path):
    """``make test``'s parallel run shares a lesson's grading among its tests only if xdist
    keeps each group in one worker (pytest 9.2 silently broke that: pyproject pins below it)."""
    (tmp_path / "test_groups.py").write_text(
        "import os\nimport pytest\n\n"
        "@pytest.mark.xdist_group('shared')\n"
        "@pytest.mark.parametrize('i', range(6))\n"
        "def test_grouped(i):\n"
        "    with open('workers.txt', 'a') as f:\n"
        "        f.write(os.environ['PYTEST_XDIST_WORKER'] + '\\n')\n\n"
        "@pytest.mark.parametrize('i', range(6))\n"
        "def test_free(i):\n"
        "    pass\n"
    )
    env = inner_pytest_env()  # not this run's own worker or options
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "-n", "2", "--dist", "loadgroup", "test_groups.py"],
                          cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    workers = (tmp_path / "workers.txt").read_text().split()
    assert len(workers) == 6 and len(set(workers)) == 1, workers

