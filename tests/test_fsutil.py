import pytest

from kboost.fsutil import atomic_dir, atomic_file, remove_stale_temporaries, write_json


def test_atomic_dir_replaces_only_on_success(tmp_path):
    target = tmp_path / "out"
    with atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("first")
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "a.txt").write_text("half-written")
            raise RuntimeError("killed")
    assert (target / "a.txt").read_text() == "first"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_atomic_file_and_json(tmp_path):
    target = tmp_path / "x.json"
    write_json(target, {"b": 1, "a": [1, 2]})
    assert target.read_text().startswith('{\n  "a"')
    with pytest.raises(ValueError):
        with atomic_file(target) as tmp:
            tmp.write_text("broken")
            raise ValueError
    assert '"b": 1' in target.read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


def test_stale_temporaries_of_one_target_only(tmp_path):
    for name in (".speech.tmp-abc", ".speech.old-12", ".noise.tmp-xyz"):
        (tmp_path / name).mkdir()
    (tmp_path / "speech").mkdir()
    remove_stale_temporaries(tmp_path / "speech")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".noise.tmp-xyz", "speech"]
