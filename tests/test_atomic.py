"""Atomic writes: nothing half-written, and files get the mode a plain open() would give."""

import os

import pytest

from weft.atomic import write_json, write_text


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_new_files_follow_the_umask(tmp_path, umask_022):
    # regression: mkstemp's 0600 made every file weft wrote private
    p = write_json(tmp_path / "sub" / "report.json", {"a": 1})
    assert p.stat().st_mode & 0o777 == 0o644
    os.umask(0o077)
    assert write_text(tmp_path / "private.txt", "x").stat().st_mode & 0o777 == 0o600


def test_rewrite_keeps_the_existing_mode(tmp_path, umask_022):
    p = write_text(tmp_path / "a.txt", "one")
    os.chmod(p, 0o640)
    write_text(p, "two")
    assert p.read_text() == "two" and p.stat().st_mode & 0o777 == 0o640


def test_failed_write_leaves_the_old_file_and_no_temp(tmp_path):
    from weft.atomic import atomic_path

    p = write_text(tmp_path / "a.txt", "old")
    with pytest.raises(RuntimeError):
        with atomic_path(p) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash mid-write")
    assert p.read_text() == "old"
    assert [f.name for f in tmp_path.iterdir()] == ["a.txt"]


def test_replace_dir_swaps_a_whole_folder_and_leaves_nothing_aside(tmp_path):
    from weft.atomic import replace_dir

    target = tmp_path / "ckpt"
    for version in ("one", "two"):
        tmp = tmp_path / f".ckpt.tmp-{version}"
        tmp.mkdir()
        (tmp / "v.txt").write_text(version)
        replace_dir(tmp, target)
        assert (target / "v.txt").read_text() == version and not tmp.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]   # no old folder left
