"""WHAM! noise preparation from a small zip laid out like wham_noise.zip."""
from __future__ import annotations

import hashlib
import json
import logging
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from kboost.audio import AudioError
from kboost.download import DownloadError
from kboost.sources import wham
from kboost.sources.layout import read_index

COUNTS = {"tr": 3, "cv": 2, "tt": 2}


def _build_zip(server, tmp_path: Path, rate: int = 16000, bad: tuple[str, str] | None = None) -> Path:
    """wham_noise/{tr,cv,tt}/*.wav (2-ch float) + metadata/; ``bad`` = (name, 'mono'|'garbage')."""
    rng = np.random.default_rng(7)
    archive = server.root / "wham_noise.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("wham_noise/metadata/noise_meta_tr.csv", "utterance_id,noise_band\n")
        for folder, count in COUNTS.items():
            for n in range(count):
                name = f"{n:02d}{folder}x_1.2345_0{n}abc_-1.2345.wav"
                path = tmp_path / "build" / folder / name
                path.parent.mkdir(parents=True, exist_ok=True)
                seconds = 0.5 + 0.25 * n
                channels = 2
                if bad and bad[0] == name and bad[1] == "mono":
                    channels = 1
                audio = 0.2 * rng.standard_normal((int(seconds * rate), channels)).astype(np.float32)
                sf.write(path, audio, rate, subtype="FLOAT")
                if bad and bad[0] == name and bad[1] == "garbage":
                    path.write_bytes(b"RIFF\x00\x00not really a wave file")
                zf.write(path, f"wham_noise/{folder}/{name}")
    return archive


def test_prepare_produces_valid_layout(http_server, tmp_path, caplog):
    archive = _build_zip(http_server, tmp_path)
    cfg = {"url": http_server.url("wham_noise.zip"), "checksum": None, "backoff": 0.001}
    out = tmp_path / "corpus" / "noise"
    http_server.fail_first = 1  # one 503, then served
    with caplog.at_level(logging.WARNING, logger="kboost.download"):
        wham.prepare(out, cfg, tmp_path / "downloads", workers=2, progress=False)
    assert "no checksum pinned" in caplog.text
    index = read_index("noise", out, check_files=True)
    assert len(index) == sum(COUNTS.values())
    assert dict(index["split"].value_counts()) == {"train": 3, "val": 2, "test": 2}
    assert set(index["kind"]) == {"wham"}
    row = index.set_index("noise_id").loc["tt_01ttx_1.2345_01abc_-1.2345"]
    assert row["path"] == "test/tt_01ttx_1.2345_01abc_-1.2345.flac"
    assert row["seconds"] == pytest.approx(0.75)
    info = sf.info(str(out / row["path"]))
    assert (info.samplerate, info.channels, info.format) == (16000, 2, "FLAC")
    source = json.loads((out / "source.json").read_text())
    assert source["checksum"] == "sha256:" + hashlib.sha256(archive.read_bytes()).hexdigest()
    assert source["checksum_pinned"] is False
    assert not (tmp_path / "downloads" / "wham_noise.extracted").exists()
    lock = json.loads((tmp_path / "downloads.lock.json").read_text())["files"]  # next to downloads/
    assert lock == {cfg["url"]: {"file": "wham_noise.zip", "size": archive.stat().st_size,
                                 "sha256": hashlib.sha256(archive.read_bytes()).hexdigest()}}


def test_48k_source_is_resampled(http_server, tmp_path):
    archive = _build_zip(http_server, tmp_path, rate=48000)
    cfg = {"url": http_server.url("wham_noise.zip"),
           "checksum": "md5:" + hashlib.md5(archive.read_bytes()).hexdigest()}
    out = tmp_path / "noise"
    wham.prepare(out, cfg, tmp_path / "downloads", max_files={"train": 1}, progress=False)
    index = read_index("noise", out, check_files=True)
    assert (index["split"] == "train").sum() == 1
    for rel, seconds in zip(index["path"], index["seconds"]):
        info = sf.info(str(out / rel))
        assert info.samplerate == 16000 and info.channels == 2
        assert info.frames == round(seconds * 16000)
    assert sorted(index["seconds"].round(3))[:2] == [0.5, 0.5]


@pytest.mark.parametrize("problem,message", [("mono", "expected 2 channel"), ("garbage", "cannot read audio")])
def test_bad_file_is_named(http_server, tmp_path, problem, message):
    name = "01cvx_1.2345_01abc_-1.2345.wav"
    _build_zip(http_server, tmp_path, bad=(name, problem))
    cfg = {"url": http_server.url("wham_noise.zip"), "checksum": None}
    out = tmp_path / "noise"
    with pytest.raises(AudioError, match=message) as info:
        wham.prepare(out, cfg, tmp_path / "downloads", progress=False)
    assert name in str(info.value)
    assert not out.exists()


def test_checksum_mismatch_and_corrupt_zip(http_server, tmp_path):
    archive = _build_zip(http_server, tmp_path)
    out = tmp_path / "noise"
    cfg = {"url": http_server.url("wham_noise.zip"), "checksum": "sha256:" + "0" * 64}
    with pytest.raises(DownloadError, match="checksum mismatch"):
        wham.prepare(out, cfg, tmp_path / "downloads", progress=False)
    assert not out.exists()
    assert list((tmp_path / "downloads").iterdir()) == []

    archive.write_bytes(archive.read_bytes()[:-200])  # central directory cut off
    cfg["checksum"] = None
    with pytest.raises(DownloadError, match="wham_noise.zip"):
        wham.prepare(out, cfg, tmp_path / "downloads", progress=False)
    assert not out.exists()
    assert not (tmp_path / "downloads" / "wham_noise.extracted").exists()
