"""Converters of measured response sets, on small synthetic SOFA and WAV files."""
from __future__ import annotations

import json
from pathlib import Path

import netCDF4
import numpy as np
import pytest
import soundfile as sf

from kboost.audio import read_audio
from kboost.sources import layout
from kboost.sources import measured_responses as mr

RATE = 44100
N_TAPS = 441  # 10 ms -> 160 samples at 16 kHz


def _hrir(az: float) -> np.ndarray:
    """Toy HRIR: left louder and earlier for sources on the left (sin(az) > 0)."""
    s = np.sin(np.radians(az))
    ir = np.zeros((2, N_TAPS))
    ir[0, 20 + int(round(15 * max(0.0, -s)))] = 1.0 + 0.8 * s
    ir[1, 20 + int(round(15 * max(0.0, s)))] = 1.0 - 0.8 * s
    return ir


def write_sofa(path: Path, directions, receivers: int = 2, nan: bool = False,
               cartesian: bool = False, view=(1.0, 0.0, 0.0), listener=(0.0, 0.0, 0.0),
               convention: str = "SimpleFreeFieldHRIR") -> Path:
    """A minimal SOFA file (netCDF4) following the SimpleFreeFieldHRIR layout."""
    m = len(directions)
    ds = netCDF4.Dataset(str(path), "w", format="NETCDF4")
    for key, value in {"Conventions": "SOFA", "Version": "1.0", "SOFAConventions": convention,
                       "SOFAConventionsVersion": "1.0", "DataType": "FIR", "RoomType": "free field"}.items():
        ds.setncattr(key, value)
    for name, size in (("M", m), ("R", receivers), ("E", 1), ("N", N_TAPS), ("I", 1), ("C", 3)):
        ds.createDimension(name, size)
    ir = np.stack([_hrir(az) for az, _el, _r in directions])
    if receivers != 2:
        ir = np.repeat(ir[:, :1], receivers, axis=1)
    if nan:
        ir[0, 0, 5] = np.nan
    var = ds.createVariable("Data.IR", "f8", ("M", "R", "N"))
    var[:] = ir
    var = ds.createVariable("Data.SamplingRate", "f8", ("I",))
    var.Units = "hertz"
    var[:] = [RATE]
    ds.createVariable("Data.Delay", "f8", ("I", "R"))[:] = np.zeros((1, receivers))
    pos = np.asarray(directions, dtype=np.float64)
    var = ds.createVariable("SourcePosition", "f8", ("M", "C"))
    if cartesian:
        a, e = np.radians(pos[:, 0]), np.radians(pos[:, 1])
        pos = np.stack([pos[:, 2] * np.cos(e) * np.cos(a), pos[:, 2] * np.cos(e) * np.sin(a),
                        pos[:, 2] * np.sin(e)], axis=1)
        var.Type, var.Units = "cartesian", "metre"
    else:
        var.Type, var.Units = "spherical", "degree, degree, metre"
    var[:] = pos
    for name, value in (("ListenerPosition", listener), ("ListenerView", view), ("ListenerUp", (0, 0, 1))):
        var = ds.createVariable(name, "f8", ("I", "C"))
        var.Type, var.Units = "cartesian", "metre"
        var[:] = [value]
    var = ds.createVariable("ReceiverPosition", "f8", ("R", "C", "I"))
    var.Type, var.Units = "cartesian", "metre"
    var[:] = np.zeros((receivers, 3, 1))
    ds.close()
    return path


GRID = [(az, el, 1.2) for el in (-20.0, 0.0, 10.0) for az in range(0, 360, 30)]


def test_read_and_convert_sofa(tmp_path):
    sofa = write_sofa(tmp_path / "subject_003.sofa", GRID)
    data = mr.read_sofa(sofa)
    assert data.sample_rate == RATE and data.ir.shape == (len(GRID), 2, N_TAPS)
    assert np.allclose(data.azimuth_deg, [d[0] for d in GRID])
    assert np.allclose(data.elevation_deg, [d[1] for d in GRID])
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="looks like a number"):
        mr.convert_sofa(sofa, "cipic", "003", "val", out)
    rows = mr.convert_sofa(sofa, "cipic", mr.room_key("003"), "val", out, elevation_limit_deg=10)
    assert len(rows) == 24  # elevation -20 dropped
    layout.write_index("responses", out, rows)
    frame = layout.read_index("responses", out, check_files=True)
    assert set(frame["split"]) == {"val"} and set(frame["room_id"]) == {"r003"}
    assert sorted(set(frame["elevation_deg"])) == [0.0, 10.0]
    assert np.allclose(frame["distance_m"], 1.2)
    row = frame[(frame["azimuth_deg"] == 90) & (frame["elevation_deg"] == 0)].iloc[0]
    audio = read_audio(out / row["path"], sample_rate=16000, channels=2)
    assert audio.shape == (2, 160)
    assert np.max(np.abs(audio)) == pytest.approx(1.0)
    assert np.sum(audio[0] ** 2) > np.sum(audio[1] ** 2)                  # left louder
    assert np.argmax(np.abs(audio[0])) < np.argmax(np.abs(audio[1]))      # and earlier


def test_cartesian_source_and_listener_view(tmp_path):
    # Listener at (1, 1, 0) facing +y: a source at +y is in front, one at -x is on the left.
    dirs = [(0.0, 0.0, 2.0), (90.0, 0.0, 1.0), (0.0, 30.0, 1.0)]
    ds_path = tmp_path / "room.sofa"
    write_sofa(ds_path, dirs, cartesian=True, view=(0.0, 1.0, 0.0), listener=(0.0, 0.0, 0.0))
    with netCDF4.Dataset(str(ds_path), "a") as ds:
        ds["SourcePosition"][:] = np.array([[1.0, 3.0, 0.0], [0.0, 1.0, 0.0], [1.0, 1.0 + np.sqrt(3) / 2, 0.5]])
        ds["ListenerPosition"][:] = [[1.0, 1.0, 0.0]]
    data = mr.read_sofa(ds_path)
    assert np.allclose(data.azimuth_deg, [0.0, 90.0, 0.0], atol=1e-6)
    assert np.allclose(data.elevation_deg, [0.0, 0.0, 30.0], atol=1e-6)
    assert np.allclose(data.distance_m, [2.0, 1.0, 1.0])


@pytest.mark.parametrize("kwargs, message", [
    ({"receivers": 1}, "expected 2 receivers"),
    ({"receivers": 4}, "expected 2 receivers"),
    ({"nan": True}, "NaN"),
])
def test_bad_sofa_names_file(tmp_path, kwargs, message):
    sofa = write_sofa(tmp_path / "broken_subject.sofa", GRID[:3], **kwargs)
    with pytest.raises(mr.SofaError, match=message) as info:
        mr.convert_sofa(sofa, "cipic", "x", "train", tmp_path / "out")
    assert "broken_subject.sofa" in str(info.value)


def test_unreadable_sofa(tmp_path):
    bad = tmp_path / "garbage.sofa"
    bad.write_bytes(b"not a netcdf file")
    with pytest.raises(mr.SofaError, match="garbage.sofa"):
        mr.read_sofa(bad)


def test_parse_direction():
    got = mr.parse_direction("BRIR_RoomA_az030_el-10.wav", r"Room(?P<room>\w)_az(?P<azimuth>\d+)_el(?P<elevation>-?\d+)")
    assert got == {"azimuth_deg": 30.0, "elevation_deg": -10.0, "distance_m": 1.0, "room_id": "A"}
    got = mr.parse_direction("x_az30.wav", r"az(?P<azimuth>\d+)", azimuth_clockwise=True)
    assert got["azimuth_deg"] == 330.0
    with pytest.raises(ValueError, match="nomatch.wav"):
        mr.parse_direction("nomatch.wav", r"az(?P<azimuth>\d+)")


def _subjects(root: Path, ids) -> None:
    root.mkdir(parents=True)
    for sid in ids:
        write_sofa(root / f"subject_{sid}.sofa", GRID)


def _wav_set(root: Path) -> None:
    for room in ("hall", "office"):
        (root / room).mkdir(parents=True)
        for az in (0, 90, 270):
            ir = _hrir(-az)  # the set counts azimuth clockwise
            sf.write(str(root / room / f"brir_az{az}.wav"), ir.T, 48000, subtype="FLOAT")


SETS = {
    "cipic": {
        "format": "sofa", "glob": "*.sofa", "room_pattern": r"subject_(?P<room>\d+)",
        "elevation_limit_deg": 10, "max_seconds": 0.005,
        "split": {"method": "lists", "train": ["001", "002"], "val": ["003"], "test": ["004"]},
    },
    "ash": {
        "format": "wav", "root": "ash_root", "glob": "*/*.wav", "name_pattern": r"az(?P<azimuth>\d+)",
        "azimuth_clockwise": True, "distance_m": 2.0,
        "split": {"method": "lists", "train": ["hall"], "test": ["office"]},
    },
}


@pytest.fixture
def roots(tmp_path):
    _subjects(tmp_path / "cipic", ["001", "002", "003", "004"])
    _wav_set(tmp_path / "ash")
    return {"cipic": tmp_path / "cipic", "ash_root": tmp_path / "ash"}


def test_build_lists_rule_and_determinism(tmp_path, roots):
    out1, out2 = tmp_path / "o1", tmp_path / "o2"
    out1.mkdir(), out2.mkdir()
    frame = mr.build(out1, SETS, roots, workers=1)
    mr.build(out2, SETS, roots, workers=2)
    frame = layout.read_index("responses", out1, check_files=True)
    splits = frame.groupby(["set", "room_id"])["split"].first().to_dict()
    assert splits == {("ash", "hall"): "train", ("ash", "office"): "test", ("cipic", "r001"): "train",
                      ("cipic", "r002"): "train", ("cipic", "r003"): "val", ("cipic", "r004"): "test"}
    ash = frame[frame["set"] == "ash"]
    assert sorted(set(ash["azimuth_deg"])) == [0.0, 90.0, 270.0] and (ash["distance_m"] == 2.0).all()
    left = ash[ash["azimuth_deg"] == 90].iloc[0]   # file az270 clockwise = 90 SOFA = left
    assert "az270" in left["response_id"]
    audio = read_audio(out1 / left["path"], sample_rate=16000, channels=2)
    assert np.sum(audio[0] ** 2) > np.sum(audio[1] ** 2)
    assert (frame.loc[frame["set"] == "cipic", "path"].map(
        lambda p: sf.info(str(out1 / p)).frames) == 80).all()   # max_seconds 0.005 s
    for rel in ("index.csv", "source.json", *frame["path"]):
        assert (out1 / rel).read_bytes() == (out2 / rel).read_bytes()
    assert json.loads((out1 / "source.json").read_text())["counts"]["cipic"] == {"train": 48, "val": 24, "test": 24}


def test_build_hash_rule_and_azimuth_bins(tmp_path, roots):
    cfg = {"cipic": dict(SETS["cipic"], split={"method": "hash", "val": 0.25, "test": 0.25},
                         azimuth_bins={"width_deg": 30, "pattern": ["train", "val", "test"]})}
    out = tmp_path / "o"
    out.mkdir()
    frame = mr.build(out, cfg, roots)
    expected = {f"r{sid}": mr.hash_split(f"cipic/r{sid}", 0.25, 0.25) for sid in ("001", "002", "003", "004")}
    assert frame.groupby("room_id")["split"].first().to_dict() == expected
    for az, split in zip(frame["azimuth_deg"], frame["split"]):
        assert mr.direction_split(az, 30, ["train", "val", "test"]) == split


@pytest.mark.parametrize("change, message", [
    ({"split": {"method": "lists", "train": ["001"], "val": ["003"], "test": ["004"]}}, "'r002' is in no list"),
    ({"split": {"method": "lists", "train": ["001", "002", "999"], "val": ["003"], "test": ["004"]}}, "999"),
    ({"split": {"method": "random"}}, "method"),
    ({"format": "mat"}, "format"),
    ({"glob": "*.nothing"}, "no files"),
    ({"bogus": 1}, "bogus"),
])
def test_build_errors(tmp_path, roots, change, message):
    cfg = {"cipic": dict(SETS["cipic"], **change)}
    with pytest.raises(ValueError, match=message):
        mr.build(tmp_path, cfg, roots)


def test_wrong_azimuth_convention_is_caught(tmp_path, roots):
    cfg = {"ash": dict(SETS["ash"], azimuth_clockwise=False)}
    with pytest.raises(ValueError, match="azimuth convention"):
        mr.build(tmp_path, cfg, roots)


def test_prepare_downloads_and_converts(tmp_path, http_server):
    """Measured sets fetched from a local mirror: single SOFA files by template and a zip."""
    import zipfile

    _subjects(http_server.root / "cipic", ["001", "002", "003", "004"])
    _wav_set(tmp_path / "ash")
    with zipfile.ZipFile(http_server.root / "ash.zip", "w") as archive:
        for wav in sorted((tmp_path / "ash").rglob("*.wav")):
            archive.write(wav, f"ash-main/{wav.relative_to(tmp_path / 'ash')}")
    cfg = {
        "cipic": {"files": http_server.url("cipic/subject_{id}.sofa"), "ids": ["001", "002", "003", "004"],
                  "convert": dict(SETS["cipic"], glob="**/*.sofa")},
        "ash": {"files": http_server.url("ash.zip"),
                "convert": {k: v for k, v in SETS["ash"].items() if k != "root"} | {"glob": "**/*.wav"}},
    }
    out = tmp_path / "out"
    out.mkdir()
    mr.prepare(out, cfg, tmp_path / "downloads", ["cipic", "ash"], progress=False)
    frame = layout.read_index("responses", out, check_files=True)
    assert set(frame["set"]) == {"cipic", "ash"}
    requests = len(http_server.requests)
    out2 = tmp_path / "out2"
    out2.mkdir()
    mr.prepare(out2, cfg, tmp_path / "downloads", ["cipic", "ash"], progress=False)
    assert len(http_server.requests) == requests  # verified downloads are reused, not fetched again
    lock = json.loads((tmp_path / "downloads.lock.json").read_text())["files"]
    assert sorted(entry["file"] for entry in lock.values()) == [
        "ash.zip", "subject_001.sofa", "subject_002.sofa", "subject_003.sofa", "subject_004.sofa"]
    with pytest.raises(ValueError, match=r"real.responses: no entry for response set\(s\) \['catt'\]"):
        mr.prepare(out2, cfg, tmp_path / "downloads", ["catt"], progress=False)
