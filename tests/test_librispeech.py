"""LibriSpeech preparation from small archives laid out like the OpenSLR ones."""
from __future__ import annotations

import hashlib
import json
import tarfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from kboost.audio import AudioError
from kboost.download import DownloadError
from kboost.sources import librispeech
from kboost.sources.layout import read_index

SUBSETS = {"train": "train-clean-360", "val": "dev-clean", "test": "test-clean"}
SPEAKERS = {"train-clean-360": ["100", "101"], "dev-clean": ["200", "201"], "test-clean": ["300"]}


def _write_subset(root: Path, subset: str, rate: int = 16000, channels: int = 1,
                  bad_utt: str | None = None) -> None:
    """LibriSpeech/<subset>/<spk>/<chapter>/ with 3 utterances per chapter (0.3 .. 0.9 s)."""
    rng = np.random.default_rng(zlib.crc32(subset.encode()))
    for speaker in SPEAKERS[subset]:
        chapter = f"{speaker}0"
        folder = root / "LibriSpeech" / subset / speaker / chapter
        folder.mkdir(parents=True)
        lines = []
        for n in range(3):
            utt = f"{speaker}-{chapter}-{n:04d}"
            seconds = 0.3 * (n + 1)
            this_rate, this_channels = (rate, channels) if utt == bad_utt else (16000, 1)
            audio = 0.1 * rng.standard_normal((int(seconds * this_rate), this_channels))
            sf.write(folder / f"{utt}.flac", audio, this_rate, subtype="PCM_16")
            lines.append(f"{utt} WORDS OF {speaker} NUMBER {n}")
        (folder / f"{speaker}-{chapter}.trans.txt").write_text("\n".join(lines) + "\n")


def _publish(server, tmp_path: Path, bad: tuple[str, str, int, int] | None = None) -> dict:
    """Build the three archives, serve them, return a cfg with their md5s."""
    md5 = {}
    for subset in SUBSETS.values():
        tree = tmp_path / "build" / subset
        rate, channels, bad_utt = 16000, 1, None
        if bad and bad[0] == subset:
            _, bad_utt, rate, channels = bad
        _write_subset(tree, subset, rate, channels, bad_utt)
        archive = server.root / f"{subset}.tar.gz"
        with tarfile.open(archive, "w:gz") as tar:
            tar.add(tree / "LibriSpeech", arcname="LibriSpeech")
        md5[subset] = hashlib.md5(archive.read_bytes()).hexdigest()
    return {"mirror": server.url().rstrip("/"), "subsets": dict(SUBSETS), "md5": md5,
            "backoff": 0.001}


def test_prepare_produces_valid_layout(http_server, tmp_path):
    cfg = _publish(http_server, tmp_path)
    out = tmp_path / "corpus" / "speech"
    http_server.cut_after = 2000  # first transfer is cut: must resume
    librispeech.prepare(out, cfg, tmp_path / "downloads", workers=2, progress=False)
    assert http_server.range_requests, "the cut transfer was not resumed with a Range request"

    index = read_index("speech", out, check_files=True)
    assert len(index) == 3 * 5
    assert set(index["split"]) == {"train", "val", "test"}
    assert sorted(index.loc[index.split == "val", "speaker_id"].unique()) == ["200", "201"]
    row = index.set_index("utt_id").loc["100-1000-0001"]
    assert row["path"] == "train/100/100-1000-0001.flac"
    assert row["text"] == "WORDS OF 100 NUMBER 1"
    assert row["seconds"] == pytest.approx(0.6)
    info = sf.info(str(out / row["path"]))
    assert (info.samplerate, info.channels) == (16000, 1)

    source = json.loads((out / "source.json").read_text())
    assert source["subsets"] == SUBSETS
    assert source["archives"]["dev-clean"]["checksum"] == "md5:" + cfg["md5"]["dev-clean"]
    # archives stay for the next run, extracted trees do not
    downloads = sorted(p.name for p in (tmp_path / "downloads").iterdir())
    assert "dev-clean.tar.gz" in downloads and not any(n.endswith(".extracted") for n in downloads)
    assert sorted(p.name for p in out.parent.iterdir()) == ["speech"]


def test_cap_and_min_seconds_are_deterministic(http_server, tmp_path):
    cfg = _publish(http_server, tmp_path)
    cfg["min_seconds"] = 0.5
    first, second = tmp_path / "a", tmp_path / "b"
    librispeech.prepare(first, cfg, tmp_path / "dl", max_utterances={"train": 3}, progress=False)
    librispeech.prepare(second, cfg, tmp_path / "dl", max_utterances={"train": 3}, progress=False)
    a, b = read_index("speech", first), read_index("speech", second)
    assert a.equals(b)
    assert (a["seconds"] >= 0.5).all()
    assert (a["split"] == "train").sum() == 3
    assert (a["split"] == "val").sum() == 4  # 2 speakers x 2 utterances >= 0.5 s
    assert (first / "index.csv").read_bytes() == (second / "index.csv").read_bytes()


@pytest.mark.parametrize("rate,channels,message", [
    (8000, 1, "expected sample rate 16000 Hz, found 8000 Hz"),
    (16000, 2, "expected 1 channel, found 2"),
])
def test_wrong_format_names_the_file(http_server, tmp_path, rate, channels, message):
    bad_utt = "201-2010-0002"
    cfg = _publish(http_server, tmp_path, bad=("dev-clean", bad_utt, rate, channels))
    out = tmp_path / "corpus" / "speech"
    with pytest.raises(AudioError, match=message) as info:
        librispeech.prepare(out, cfg, tmp_path / "downloads", progress=False)
    assert f"{bad_utt}.flac" in str(info.value)
    assert not out.exists()


def test_checksum_mismatch_leaves_no_output(http_server, tmp_path):
    cfg = _publish(http_server, tmp_path)
    cfg["md5"]["dev-clean"] = "f" * 32
    out = tmp_path / "corpus" / "speech"
    with pytest.raises(DownloadError, match="dev-clean.tar.gz"):
        librispeech.prepare(out, cfg, tmp_path / "downloads", progress=False)
    assert not out.exists() and not out.parent.exists()
    assert not (tmp_path / "downloads" / "dev-clean.tar.gz").exists()
    assert not (tmp_path / "downloads" / "dev-clean.tar.gz.part").exists()


def test_corrupt_archive_leaves_no_output(http_server, tmp_path):
    cfg = _publish(http_server, tmp_path)
    path = http_server.root / "test-clean.tar.gz"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    cfg["md5"]["test-clean"] = hashlib.md5(path.read_bytes()).hexdigest()
    out = tmp_path / "corpus" / "speech"
    with pytest.raises(DownloadError, match="test-clean.tar.gz"):
        librispeech.prepare(out, cfg, tmp_path / "downloads", progress=False)
    assert not out.exists()
    assert not (tmp_path / "downloads" / "test-clean.extracted").exists()


def test_rerun_reuses_download_and_extraction(http_server, tmp_path):
    cfg = _publish(http_server, tmp_path)
    cfg["keep_extracted"] = True
    out = tmp_path / "speech"
    librispeech.prepare(out, cfg, tmp_path / "dl", progress=False)
    first = len(http_server.requests)
    marker = tmp_path / "dl" / "dev-clean.extracted" / ".extracted-from"
    assert marker.is_file()
    stamp = marker.stat().st_mtime_ns
    librispeech.prepare(out, cfg, tmp_path / "dl", progress=False)
    assert len(http_server.requests) == first  # archives verified locally, not fetched again
    assert marker.stat().st_mtime_ns == stamp  # extraction reused
    lock = json.loads((tmp_path / "dl.lock.json").read_text())["files"]
    assert sorted(entry["file"] for entry in lock.values()) == sorted(f"{s}.tar.gz" for s in SUBSETS.values())
    assert len(read_index("speech", out, check_files=True)) == 15
