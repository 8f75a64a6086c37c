from pathlib import Path

import pytest
import yaml

from kboost.params import ParamsError, active_profile, load_params

ROOT = Path(__file__).resolve().parents[1]


def _write(tmp_path, edit):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    edit(params)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def test_committed_params_are_valid():
    params = load_params(ROOT / "params.yaml")
    assert params["profile"] == "demo"
    assert params["delay"] in params["delays"]
    assert active_profile(params)["data"]["mixtures"]["train"] > 0
    paper = params["profiles"]["paper"]["data"]
    assert paper["mixtures"] == {"train": 100000, "val": 5000, "test": 5000}


def _set(path, value):
    def edit(params):
        node = params
        keys = path.split(".")
        for key in keys[:-1]:
            node = node[key]
        node[keys[-1]] = value
    return edit


def _delete(path):
    def edit(params):
        node = params
        keys = path.split(".")
        for key in keys[:-1]:
            node = node[key]
        del node[keys[-1]]
    return edit


@pytest.mark.parametrize("edit, message", [
    (_set("tasks", ["se", "asr"]), r"tasks: unknown value\(s\) \['asr'\]; allowed: se, ss, tse"),
    (_set("profile", "huge"), r"profile: unknown value 'huge'; allowed: demo, paper, smoke"),
    (_set("delays", [0, -1]), r"delays: .* must be >= 0"),
    (_set("delay", 4), r"delay: 4 is not one of delays \[0, 1, 3, 6\].*delays=\[0, 1, 3, 4, 6\]"),
    (_set("delay", -2), r"delay: must be >= 0"),
    (_set("data.se.snr_db", [10, -5]), r"data.se.snr_db: range is reversed"),
    (_delete("data.tse"), r"data.tse: missing section"),
    (_delete("profiles.demo.data"), r"profiles.demo.data: missing section"),
    (_set("profiles.smoke.data.sources.speech", "timit"),
     r"profiles.smoke.data.sources.speech: unknown value 'timit'; allowed: embedded, librispeech"),
    (_set("profiles.demo.data.mixtures.train", 0), r"profiles.demo.data.mixtures.train: must be >= 1"),
    (_set("profiles.demo.data.embedded.utterances_per_speaker", 1),
     r"utterances_per_speaker: must be >= 2"),
    (_set("seed", "abc"), r"seed: must be an integer"),
    (_set("profiles.demo.data.response_sets", ["cipic"]),
     r"profiles.demo.data.response_sets: unknown value\(s\) \['cipic'\]; allowed: simulated_room, anechoic_hrtf"),
    (_set("data.sample_rate", 8000), r"data.sample_rate: must be 16000"),
    (_set("dealy", 3), r"dealy: unknown key; did you mean delay\?"),
    (_set("profiles.demo.train.boosted_int", "small"), r"profiles.demo.train.boosted_int: unknown key; did you mean "
                                                       r"profiles.demo.train.boosted_init\?"),
    (_set("profiles.demo.train.epochs.medium", 1), r"profiles.demo.train.epochs.medium: must be small \+ boosted"),
    (_set("profiles.demo.train.epochs.large", {"se": 2, "ss": 2}),
     r"profiles.demo.train.epochs.large: a per-task mapping must name exactly \['se', 'ss', 'tse'\], got \['se', 'ss'\]"),
    (_set("profiles.demo.train.epochs.large", {"se": 2, "ss": 2, "tse": 0}),
     r"profiles.demo.train.epochs.large.tse: must be >= 1"),
    (_set("profiles.demo.train.epochs.small", {"se": 8, "ss": 8, "tse": 9}),
     r"profiles.demo.train.epochs.medium: must be small \+ boosted = 12 for tse"),
    (_set("model.merge_start", "ones"), r"model.merge_start: unknown value 'ones'; allowed: zeros, masked"),
    (_set("tasks", ["se"]), r"ablation.compressions: the compression ablation trains SS pairs.*add ss to tasks"),
    (_set("variable_delay.range", [0, 3]), r"variable_delay.range: must contain the headline delay 6"),
    (_set("variable_delay.range", [-1, 6]), r"variable_delay.range: must be whole chunks >= 0"),
    (_set("link.loss_rates", [0.0, 1.0]), r"link.loss_rates: must be a non-empty list of shares in \[0, 1\)"),
    (_set("link.policy", "repeat"), r"link.policy: unknown value 'repeat'; allowed: newest, zeros"),
    (_set("link.jitter", "normal"), r"link.jitter: unknown value 'normal'; allowed: geometric, uniform"),
    (_set("link.max_age", 4), r"link.max_age: must be >= variable_delay.range's high end 6"),
    (_set("link.burst_chunks", 0.5), r"link.burst_chunks: a burst is at least one hint long"),
    (_set("hint_cost.codecs", ["int2"]), r"hint_cost.codecs: unknown value\(s\) \['int2'\]; allowed: float16, int8, int4"),
])
def test_invalid_values_name_the_key(tmp_path, edit, message):
    with pytest.raises(ParamsError, match=message):
        load_params(_write(tmp_path, edit))


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ParamsError, match="parameter file not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "params.yaml"
    bad.write_text("seed: [1,\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(bad)


@pytest.mark.parametrize("edit, message", [
    (_set("embedded.noise.coherence_range", [0.2, 1.5]), r"embedded.noise.coherence_range must satisfy 0.0 <= lo"),
    (_set("embedded.speech.variants", ["m1", "nosuchvariant"]), r"unknown espeak variant 'nosuchvariant'"),
    (_set("embedded.rooms.azimuth_bin_pattern", ["train", "vall"]), r"embedded.rooms.azimuth_bin_pattern must be"),
    (_set("embedded.rooms.wall_margin_m", -1), r"embedded.rooms.wall_margin_m must be >= 0"),
])
def test_embedded_generator_settings_fail_before_any_work(tmp_path, edit, message):
    """The generators' own checks, run by get_data before it writes anything, as ParamsError."""
    from kboost.sources.prepare import check_embedded, prepare_part

    params = load_params(_write(tmp_path, edit))
    with pytest.raises(ParamsError, match=message):
        check_embedded(params)
    with pytest.raises(ParamsError, match=message):
        prepare_part("speech", params, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_the_schema_knows_every_key_of_the_committed_params():
    from kboost.params import SCHEMA, unknown_keys

    assert unknown_keys(yaml.safe_load((ROOT / "params.yaml").read_text()), SCHEMA) == []


def test_merge_starts_match_the_models():
    from kboost.models.layers import LocalAttention
    from kboost.params import MERGE_STARTS

    assert set(MERGE_STARTS) == set(LocalAttention.STARTS)


def test_epochs_may_be_one_budget_or_one_per_task(tmp_path):
    from kboost.runs import clips_before, training_epochs

    def per_task(params):
        params["profiles"]["demo"]["train"]["epochs"].update(
            small={"se": 8, "ss": 8, "tse": 12}, medium={"se": 11, "ss": 11, "tse": 15})
    params = load_params(_write(tmp_path, per_task))
    assert [training_epochs(params, t, "small") for t in ("se", "ss", "tse")] == [8, 8, 12]
    assert training_epochs(params, "tse", "boosted") == params["profiles"]["demo"]["train"]["epochs"]["boosted"]
    per_epoch = params["profiles"]["demo"]["train"]["train_mixtures"]
    assert clips_before(params, "tse", "boosted") == 12 * per_epoch and clips_before(params, "tse", "small") == 0


@pytest.mark.parametrize("override, changed", [
    ("delay=3", "delay: 3              # headline delay"),
    ("profiles.demo.train.epochs.large.tse=30", "large: {se: 20, ss: 20, tse: 30}"),
    ("profiles.demo.train.lr=0.001", "lr: 0.001"),
    ("link.policy=zeros", "policy: zeros"),
    ("variable_delay.range=[0,12]", "- 12"),
])
def test_dvc_exp_run_set_param_changes_only_the_line_it_sets(tmp_path, override, changed):
    """`dvc exp run -S` rewrites params.yaml with DVC's YAML writer: the committed file is in the
    form that writer gives back, so an experiment's params diff is the one line it set."""
    from dvc.utils.hydra import apply_overrides

    path = tmp_path / "params.yaml"
    original = (ROOT / "params.yaml").read_text()
    path.write_text(original)
    apply_overrides(path, [override])
    before, after = original.splitlines(), path.read_text().splitlines()
    assert len(before) == len(after)
    diff = [(a, b) for a, b in zip(before, after) if a != b]
    assert len(diff) == 1 and changed in diff[0][1], diff
