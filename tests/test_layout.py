"""The package layout (docs/architecture.md): who may import whom, one import name, and dvc.yaml
deps that declare exactly the code each stage runs."""

from __future__ import annotations

import ast
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import dvc_deps  # noqa: E402


def _py_files(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


def _talk_imports(path: Path) -> set[str]:
    return set(dvc_deps.imports_of(path))


def test_every_package_folder_is_installed_under_one_name():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    listed = set(project["tool"]["setuptools"]["packages"])
    mapped = project["tool"]["setuptools"]["package-dir"]
    assert set(mapped) == {"talk.cli", "talk.stages", "talk.models"}
    found = set()
    for top, name in (("talk", "talk"), ("cli", "talk.cli"), ("stages", "talk.stages"), ("models", "talk.models")):
        for init in (ROOT / top).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / top)
            found.add(".".join([name, *rel.parts]))
    assert found == listed


def test_stages_are_thin_and_import_no_other_stage():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert sorted(p.stem for p in (ROOT / "stages").glob("*.py") if p.stem != "__init__") == sorted(stages)
    for path in _py_files("stages"):
        others = {m for m in _talk_imports(path) if m.startswith("talk.stages.") and m != f"talk.stages.{path.stem}"}
        assert not others, f"{path.name} imports other stages: {others}"


def test_library_never_imports_stages_or_cli():
    for path in _py_files("talk"):
        bad = {m for m in _talk_imports(path) if m.startswith(("talk.stages", "talk.cli"))}
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def test_models_import_nothing_from_the_rest():
    for path in _py_files("models"):
        bad = {m for m in _talk_imports(path) if not m.startswith("talk.models")}
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


@pytest.mark.parametrize("stage", list(yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]))
def test_dvc_yaml_declares_the_code_each_stage_runs(stage):
    declared = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"][stage].get("deps", [])
    code = [d for d in declared if isinstance(d, str) and d.split("/")[0] in dvc_deps.CODE_ROOTS]
    used = dvc_deps.closure(stage)
    covered = set()
    for d in code:
        path = ROOT / d
        files = dvc_deps.modules_under(Path(d)) if path.is_dir() else {Path(d)}
        assert files & used, f"{stage}: dvc.yaml declares {d}, which the stage never runs"
        if path.is_dir():
            assert files <= used, f"{stage}: folder {d} holds modules the stage never runs: {sorted(map(str, files - used))[:3]}"
        covered |= files
    missing = sorted(str(p) for p in used - covered)
    assert not missing, f"{stage}: runs code dvc.yaml does not declare: {missing} (python tools/dvc_deps.py {stage})"
