"""The code each DVC stage runs, from its import closure, and the dvc.yaml deps that declare it.

A stage runs ``talk <stage>``: cli/<stage>.py, then talk/stages/<stage>.py, and every talk module
they import, at the top of a file or inside a function (static analysis of ``import`` statements:
what *can* run). ``closure`` lists those files; ``deps`` covers them with as few dvc.yaml entries as
possible: a folder when every module in it is used, else the files. Package ``__init__.py`` files
are left out (they hold docstrings and re-exports, not stage logic). tests/test_layout.py checks
that dvc.yaml declares exactly this for every stage::

    python tools/dvc_deps.py            # print each stage's code deps
    python tools/dvc_deps.py render     # one stage
"""

from __future__ import annotations

import ast
import sys
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOP = {"cli": "cli", "stages": "stages", "models": "models"}  # talk.<x> installed from the top-level folder <x>
CODE_ROOTS = ("talk", "cli", "stages", "models")
NO_FOLDER = ("talk", "cli", "stages")  # never declared whole: each stage uses a part


def module_file(module: str) -> Path | None:
    """The repository file of a ``talk.*`` module (a package's ``__init__.py``), or None."""
    parts = module.split(".")
    if parts[0] != "talk":
        return None
    if len(parts) > 1 and parts[1] in TOP:
        parts = [TOP[parts[1]], *parts[2:]]
    base = ROOT.joinpath(*parts)
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    return None


@cache
def imports_of(path: Path) -> frozenset[str]:
    """``talk.*`` modules a file imports anywhere in it (``from p import m`` counts p.m when m is a module)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "talk")
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module.split(".")[0] == "talk":
            found.add(node.module)
            for a in node.names:
                if module_file(f"{node.module}.{a.name}") is not None:
                    found.add(f"{node.module}.{a.name}")
    return frozenset(found)


def closure(stage: str) -> set[Path]:
    """Repository files (relative) that ``talk <stage>`` can run, ``__init__.py`` files excluded."""
    todo = [f"talk.cli.{stage}", f"talk.stages.{stage}"]
    seen: set[str] = set()
    files: set[Path] = set()
    while todo:
        mod = todo.pop()
        if mod in seen:
            continue
        seen.add(mod)
        path = module_file(mod)
        if path is None:
            continue
        if path.name != "__init__.py":
            files.add(path.relative_to(ROOT))
        todo.extend(imports_of(path) - seen)
    return files


def modules_under(folder: Path) -> set[Path]:
    return {p.relative_to(ROOT) for p in (ROOT / folder).rglob("*.py") if p.name != "__init__.py"}


def deps(stage: str) -> list[str]:
    """The fewest dvc.yaml entries covering ``closure(stage)``: whole folders where all is used."""
    used = closure(stage)
    out: list[str] = []
    covered: set[Path] = set()

    def visit(folder: Path) -> None:
        mods = modules_under(folder)
        if mods and mods <= used and folder.as_posix() not in NO_FOLDER:
            out.append(folder.as_posix())
            covered.update(mods)
            return
        for child in sorted((ROOT / folder).iterdir()):
            rel = child.relative_to(ROOT)
            if child.is_dir() and (child / "__init__.py").is_file():
                visit(rel)
            elif child.suffix == ".py" and rel in used and rel not in covered:
                out.append(rel.as_posix())
                covered.add(rel)

    for top in CODE_ROOTS:
        visit(Path(top))
    return out


def main() -> int:
    import yaml

    stages = sys.argv[1:] or list(yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"])
    for s in stages:
        print(f"{s}:")
        for d in deps(s):
            print(f"  - {d}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
