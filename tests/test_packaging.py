"""Packaging: shipped data inside the package (and in sync with the editable copies), `cai init`,
a wheel installed without -e, and an import graph where training and audits never pull in generation."""

from __future__ import annotations

import filecmp
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cai import shipped
from cai.cli import app

ROOT = Path(__file__).resolve().parent.parent


def _tree(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


@pytest.mark.parametrize("folder", ["constitution", "pipelines"])
def test_the_editable_copies_are_the_shipped_files(folder):
    ours, packaged = ROOT / folder, shipped.path(folder)
    assert _tree(ours) == _tree(packaged), f"{folder}/ and cai/data/{folder}/ hold different files"
    for rel in _tree(ours):
        assert filecmp.cmp(ours / rel, packaged / rel, shallow=False), f"{folder}/{rel} differs from cai/data"
    assert {r for r in shipped.STARTER if r.startswith(folder)} <= {f"{folder}/{r}" for r in _tree(ours)}


def test_init_writes_an_editable_project_that_generate_picks_up(tmp_path, monkeypatch):
    runner = CliRunner()
    done = runner.invoke(app, ["init", str(tmp_path / "proj")])
    assert done.exit_code == 0, done.output
    for rel in shipped.STARTER:
        assert (tmp_path / "proj" / rel).read_bytes() == shipped.path(rel).read_bytes()
    again = runner.invoke(app, ["init", str(tmp_path / "proj")])
    assert again.exit_code == 2 and "already exists" in again.output and "--force" in again.output
    (tmp_path / "proj" / "constitution" / "harmless.yaml").write_text("edited")
    assert runner.invoke(app, ["init", str(tmp_path / "proj"), "--force"]).exit_code == 0
    assert (tmp_path / "proj" / "constitution" / "harmless.yaml").read_bytes() == shipped.path(shipped.HARMLESS).read_bytes()
    # In the project, the default pipeline is the project's own, and its paths resolve inside it.
    monkeypatch.chdir(tmp_path / "proj")
    assert shipped.default_pipeline().resolve() == (tmp_path / "proj" / "pipelines" / "default.yaml").resolve()
    from cai.config import load_pipeline

    assert load_pipeline().constitution == str((tmp_path / "proj" / "constitution" / "harmless.yaml").resolve())
    monkeypatch.chdir(tmp_path)
    assert shipped.default_pipeline() == shipped.path("pipelines/default.yaml")


def test_training_audit_and_eval_do_not_import_the_generate_job():
    code = """
import importlib, pkgutil, sys
import cai.train, cai.audit, cai.eval
for pkg in (cai.train, cai.audit, cai.eval):
    for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
        importlib.import_module(m.name)
print(sorted(m for m in sys.modules if m.startswith("cai.")))
assert "cai.generate" not in sys.modules and "cai.plan" not in sys.modules, "imported the generate job"
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "cai.train.ppo" in done.stdout and "cai.eval.report" in done.stdout and "cai.audit.run" in done.stdout


@pytest.mark.slow
def test_a_wheel_installed_without_e_has_its_defaults(tmp_path, embedded):
    """Build a wheel from a copy of the source, install it into a fresh venv that borrows this
    environment's dependencies (but not its editable cai), and run cai from an empty folder."""
    src = tmp_path / "src"
    shutil.copytree(ROOT / "cai", src / "cai", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), str(src)],
                   check=True, timeout=600)
    (wheel,) = (tmp_path / "dist").glob("cai_engine-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=300)
    subprocess.run([*pip, "--python", str(venv / "bin" / "python"), "install", "--no-deps", str(wheel)],
                   check=True, timeout=600)
    # Dependencies from this environment: a plain path line, so its editable-install hook is not run.
    site = next((venv / "lib").glob("python3*/site-packages"))
    deps = next(p for p in sys.path if p.endswith("site-packages") and Path(p, "torch").is_dir())
    (site / "zz_deps.pth").write_text(deps + "\n")
    empty = tmp_path / "empty"
    empty.mkdir()
    env = {**os.environ, "PYTHONPATH": ""}

    def cai(*args):
        return subprocess.run([str(venv / "bin" / "cai"), *args], cwd=empty, env=env, capture_output=True,
                              text=True, timeout=600)

    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import cai; print(cai.__file__)"], cwd=empty,
                           env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert where.startswith(str(site)), where
    planned = cai("generate", "--plan")
    assert planned.returncode == 0, planned.stderr[-2000:]
    # 4 red-team prompts x (respond + 2 rounds x 2) + 4 benign ones kept (answered once) = 24
    assert '"prompts": 8' in planned.stdout and '"model_calls": 24' in planned.stdout
    assert not (empty / "outputs").exists()  # --plan writes nothing
    audit_help = cai("audit", "--help")
    assert audit_help.returncode == 0 and "probe" in audit_help.stdout
    assert cai("init").returncode == 0
    valid = cai("validate", "constitution/harmless.yaml", "pipelines/default.yaml", "pipelines/prompts/red_team.jsonl")
    assert valid.returncode == 0, valid.stderr
    assert valid.stderr.count("ok:") == 3
    # `cai review`'s templates ship as package data: a scripted run exported to HTML from the wheel.
    made = cai("generate", "--backend", "scripted", "--model", "echo", "--limit", "2", "--out", "run")
    assert made.returncode == 0, made.stderr[-2000:]
    shared = cai("review", "run", "--export", "share")
    assert shared.returncode == 0, shared.stderr[-2000:]
    assert "<table id=\"records\">" in (empty / "share" / "index.html").read_text()
