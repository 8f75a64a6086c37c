import pytest

import os
import signal
import subprocess
import sys
import time

from kboost.fsutil import atomic_dir, atomic_file, remove_stale_temporaries, remove_temporaries_in, write_json


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


def test_a_write_killed_midway_leaves_a_temporary_that_the_rerun_removes(tmp_path):
    """kill -9 inside atomic_file (as inside a checkpoint, metrics or audio write): the target is
    untouched, the hidden temporary survives, and the rerun's cleanup removes it."""
    target = tmp_path / "model" / "best.pt"
    target.parent.mkdir()
    target.write_bytes(b"old")
    child = subprocess.Popen([sys.executable, "-c", f"""
import time
from kboost.fsutil import atomic_file
with atomic_file({str(target)!r}) as tmp:
    tmp.write_bytes(b"half")
    print("writing", flush=True)
    time.sleep(60)
"""], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "writing"
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    left = [p.name for p in target.parent.iterdir() if p.name != "best.pt"]
    assert len(left) == 1 and left[0].startswith(".best.tmp-") and left[0].endswith(".pt"), left
    assert target.read_bytes() == b"old"
    remove_stale_temporaries(target)
    assert [p.name for p in target.parent.iterdir()] == ["best.pt"]
    (target.parent / left[0]).write_bytes(b"half")  # the folder-wide cleanup of the training stage
    (target.parent / ".live.tmp-123").mkdir()
    assert sorted(p.name for p in remove_temporaries_in(target.parent)) == sorted([left[0], ".live.tmp-123"])
    assert [p.name for p in target.parent.iterdir()] == ["best.pt"]


def test_stale_temporaries_of_files_with_a_suffix(tmp_path):
    """atomic_file names its temporary .<stem>.tmp-XXXX<suffix>; only those of the target go."""
    for name in (".small.tmp-ab12.json", ".small.tmp-cd34.csv", ".large.tmp-ef56.json"):
        (tmp_path / name).write_text("x")
    remove_stale_temporaries(tmp_path / "small.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".large.tmp-ef56.json", ".small.tmp-cd34.csv"]
