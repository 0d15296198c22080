import os
import stat

import pytest

from talk.core.fs import atomic_dir, atomic_path, atomic_write_text


def test_atomic_dir_replaces_only_on_success(tmp_path):
    out = tmp_path / "out"
    with atomic_dir(out) as d:
        (d / "a.txt").write_text("one")
    assert (out / "a.txt").read_text() == "one"
    with pytest.raises(RuntimeError):
        with atomic_dir(out) as d:
            (d / "a.txt").write_text("two")
            raise RuntimeError("killed half-way")
    assert (out / "a.txt").read_text() == "one"  # the old output survives a failed run
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary left behind


def test_atomic_dir_gets_normal_permissions(tmp_path):
    with atomic_dir(tmp_path / "out") as d:
        (d / "a").write_text("x")
    mode = stat.S_IMODE(os.stat(tmp_path / "out").st_mode)
    mask = os.umask(0)
    os.umask(mask)
    assert mode == 0o777 & ~mask


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "f.txt"
    with pytest.raises(ValueError):
        with atomic_path(target) as tmp:
            tmp.write_text("partial")
            raise ValueError("bad input")
    assert list(tmp_path.iterdir()) == []
    atomic_write_text(target, "done")
    assert target.read_text() == "done"
