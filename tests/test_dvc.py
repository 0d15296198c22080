"""dvc.yaml: every stage runs an existing `talk` command, reads declared params, and resolves."""

import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from talk.cli.main import app
from talk.core import params as P

DVC = Path(sys.executable).with_name("dvc")


def _commands() -> set[str]:
    import typer.main

    group = typer.main.get_command(app)
    return set(group.commands)


def _stages(root):
    return yaml.safe_load((root / "dvc.yaml").read_text())["stages"] or {}


def test_every_stage_runs_an_existing_talk_command(root):
    commands = _commands()
    for name, stage in _stages(root).items():
        words = stage["cmd"].split()
        assert words[0] == "talk", name
        assert words[1] in commands, f"stage {name} runs unknown command {words[1]}"
        # one name per stage: dvc stage = params section = stages/<name>.py = talk <name>
        assert words[1] == name.replace("_", "-")
        assert (root / "stages" / f"{name}.py").is_file()
        assert name in P.SECTIONS


def test_stage_params_and_source_deps(root):
    for name, stage in _stages(root).items():
        sections = [p if isinstance(p, str) else next(iter(p)) for p in stage.get("params", [])]
        assert name in sections, f"{name} does not declare its own params section"
        assert all(s.split(".")[0] in P.SECTIONS for s in sections)
        assert f"stages/{name}.py" in stage.get("deps", []), f"{name} does not depend on its source"


def test_dvc_dag_resolves_every_template(root, tmp_path):
    dvc = str(DVC) if DVC.exists() else shutil.which("dvc")
    result = subprocess.run([dvc, "dag", "--md"], cwd=root, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    for name in _stages(root):
        assert name in result.stdout
    # templates resolve: the rendered stage list has no ${...} left
    listing = subprocess.run([dvc, "stage", "list"], cwd=root, capture_output=True, text=True, timeout=120)
    assert listing.returncode == 0, listing.stderr
    assert "${" not in listing.stdout
