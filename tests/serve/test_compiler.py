"""``mlaas4hep compile``'s kept build folder (serve/compiler.py): what makes a build incremental.

The builds themselves (a minute and more) run in ``make test`` (the host's) and in
tests/deploy/test_image.py (the image's); these tests check the parts that decide what a
kept folder holds, and that nothing stale survives a failed build.
"""

from __future__ import annotations

import os
import time

import pytest

from mlaas4hep.serve import compiler


def _sources(tmp_path, files):
    src = tmp_path / "src"
    for rel, text in files.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_text(text)
    return {p.relative_to(src): p for p in src.rglob("*.py")}


def test_sync_writes_what_changed_and_removes_what_is_gone(tmp_path):
    work = tmp_path / "work"
    first = _sources(tmp_path, {"a.py": "A = 1\n", "serve/b.py": "B = 2\n", "serve/c.py": "C = 3\n"})
    assert sorted(map(str, compiler.sync_sources(work, first))) == ["a.py", "serve/b.py", "serve/c.py"]
    past = 1_000_000_000
    for f in (work / "mlaas4hep").rglob("*.py"):
        os.utime(f, (past, past))

    (tmp_path / "src/serve/b.py").write_text("B = 20\n")
    (tmp_path / "src/serve/c.py").unlink()
    second = _sources(tmp_path, {})
    assert sorted(map(str, compiler.sync_sources(work, second))) == ["serve/b.py", "serve/c.py"]
    root = work / "mlaas4hep"
    assert (root / "serve/b.py").read_text() == "B = 20\n"
    assert not (root / "serve/c.py").exists()
    assert (root / "a.py").stat().st_mtime == past  # unchanged: mypy skips it
    assert compiler.sync_sources(work, second) == []


def test_one_folder_per_installation_and_compiler_settings(tmp_path, monkeypatch):
    monkeypatch.setenv(compiler.CACHE_ENV, str(tmp_path))
    for var in ("MYPYC_OPT_LEVEL", "CC", "CFLAGS"):
        monkeypatch.delenv(var, raising=False)
    base = compiler.work_folder()
    assert base is not None and base.parent == tmp_path and base == compiler.work_folder()
    monkeypatch.setenv("MYPYC_OPT_LEVEL", "0")  # a C file compiled at -O3 is not the one at -O0
    assert compiler.work_folder() not in (base, None)
    monkeypatch.delenv("MYPYC_OPT_LEVEL")
    monkeypatch.setenv("CC", "clang")
    assert compiler.work_folder() not in (base, None)
    monkeypatch.setenv(compiler.CACHE_ENV, "off")
    assert compiler.work_folder() is None


def test_a_failed_build_leaves_no_folder_behind(tmp_path):
    kept = tmp_path / "kept"
    with compiler._building_in(kept) as work:
        (work / "x.c").write_text("int x;")
    assert (kept / "x.c").is_file()  # a good build's folder stays for the next one
    with pytest.raises(RuntimeError), compiler._building_in(kept) as work:
        raise RuntimeError("gcc failed")
    assert not kept.exists()
    with compiler._building_in(None) as work:
        temporary = work
        assert work.is_dir()
    assert not temporary.exists()


def test_folders_no_build_used_for_a_month_are_removed(tmp_path):
    old, recent, kept = tmp_path / "old", tmp_path / "recent", tmp_path / "kept"
    for folder in (old, recent):
        (folder / "mlaas4hep").mkdir(parents=True)
    month_ago = time.time() - 31 * 86400
    os.utime(old, (month_ago, month_ago))
    with compiler._building_in(kept):
        pass
    assert not old.exists() and recent.is_dir() and kept.is_dir()
