"""Training: determinism, resume after kill -9 mid-epoch, non-finite loss, joint boosting."""
import copy
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
import yaml

from fake_corpus import make_corpus
from kboost.dataset import EpochView, MixtureDataset
from kboost.distributed import Runtime
from kboost.live_log import LiveLog
from kboost.mixtures import synthesize_task
from kboost.models import BoostedPair, GridNetSize, TFGridNet
from kboost.models.checkpoint import read_checkpoint, save_checkpoint
from kboost.run_store import RunStore
from kboost.training import Trainer, TrainingError, TrainSettings

ROOT = Path(__file__).resolve().parents[1]
TINY = GridNetSize(emb_dim=4, hidden=4, blocks=2)
TINY_LARGE = GridNetSize(emb_dim=8, hidden=8, blocks=2, heads=2, window=4)


@pytest.fixture(scope="module")
def mixtures(tmp_path_factory):
    """data/mixtures/ss of a tiny synthetic corpus: 8 train, 2 val, 2 test clips of 0.5 s."""
    corpus = make_corpus(tmp_path_factory.mktemp("corpus"))
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    profile = copy.deepcopy(params["profiles"]["smoke"])
    profile["data"].update(workers=1, clip_seconds=0.5, response_sets=["sim"],
                           mixtures={"train": 8, "val": 2, "test": 2})
    root = tmp_path_factory.mktemp("repo")
    synthesize_task("ss", corpus, root / "data" / "mixtures" / "ss", params, profile)
    return root


def _settings(**kw):
    base = dict(epochs=2, batch_size=2, crop_seconds=0.25, seed=7, threads=1)
    base.update(kw)
    return TrainSettings(**base)


def _trainer(mixtures, out, settings, train_set=None):
    torch.manual_seed(0)
    data = mixtures / "data" / "mixtures" / "ss"
    return Trainer(TFGridNet("ss", TINY), "ss", train_set or MixtureDataset(data, "train"),
                   MixtureDataset(data, "val"), settings, out, out / "live", {"test": True}, progress=False)


def test_epoch_view_is_a_pure_function_of_seed_and_epoch(mixtures):
    data = MixtureDataset(mixtures / "data" / "mixtures" / "ss", "train")
    a, b = EpochView(data, 1, 3, 1024), EpochView(data, 1, 3, 1024)
    assert [x["id"] for x in a] == [x["id"] for x in b]
    assert all(torch.equal(x["mixture"], y["mixture"]) for x, y in zip(a, b))
    assert a[0]["mixture"].shape[-1] == 1024
    other = EpochView(data, 1, 4, 1024)
    assert [x["id"] for x in other] != [x["id"] for x in a] or not torch.equal(other[0]["mixture"], a[0]["mixture"])
    shards = [EpochView(data, 1, 3, None, rank, 2) for rank in (0, 1)]
    assert sorted(x["id"] for s in shards for x in s) == sorted(x["id"] for x in a)


def test_run_store_fingerprint_ignores_only_the_epoch_count_and_loader_workers(tmp_path):
    def stored(**kw):
        return RunStore(tmp_path, {"test": True}, asdict(_settings(**kw)), Runtime(torch.device("cpu"))).meta

    assert stored()["processes"] == 1 and stored()["test"] is True
    assert stored()["fingerprint"] == stored(epochs=5, loader_workers=3)["fingerprint"]
    assert stored()["fingerprint"] != stored(lr=2e-3)["fingerprint"]


def test_live_log_is_rewritten_from_the_history(tmp_path):
    rows = [{"epoch": e, "train_loss": 1.0 / e, "val_si_snri": float(e), "lr": 1e-3, "seconds": 9.0} for e in (1, 2)]
    log = LiveLog(tmp_path / "live")
    log.write(rows)
    log.write(rows[:1])  # e.g. a shorter run retraining from scratch: no trace of epoch 2 remains
    assert json.loads((tmp_path / "live" / "metrics.json").read_text()) == \
        {"train_loss": 1.0, "val_si_snri": 1.0, "lr": 1e-3, "step": 1}
    tsv = (tmp_path / "live" / "plots" / "metrics" / "val_si_snri.tsv").read_text().splitlines()
    assert len(tsv) == 2 and not (tmp_path / "live" / "plots" / "metrics" / "seconds.tsv").exists()
    LiveLog(None).write(rows)  # no log asked for: nothing written, no error


def test_training_is_deterministic_and_logs_history(mixtures, tmp_path):
    one = _trainer(mixtures, tmp_path / "a", _settings()).fit()
    two = _trainer(mixtures, tmp_path / "b", _settings()).fit()
    timings = ("train_seconds", "clips_per_second")
    assert {k: v for k, v in one.items() if k not in timings} == {k: v for k, v in two.items() if k not in timings}
    last = read_checkpoint(tmp_path / "a" / "last.pt")
    assert [row["epoch"] for row in last["meta"]["history"]] == [1, 2]
    assert "optimiser" in last["training"] and "training" not in read_checkpoint(tmp_path / "a" / "best.pt")
    live = json.loads((tmp_path / "a" / "live" / "metrics.json").read_text())
    assert live["val_si_snri"] == pytest.approx(last["meta"]["history"][-1]["val_si_snri"])
    assert (tmp_path / "a" / "live" / "plots" / "metrics" / "val_si_snri.tsv").is_file()


def test_more_epochs_continue_a_finished_run(mixtures, tmp_path):
    _trainer(mixtures, tmp_path / "a", _settings(epochs=1)).fit()
    continued = _trainer(mixtures, tmp_path / "a", _settings(epochs=2)).fit()
    straight = _trainer(mixtures, tmp_path / "b", _settings(epochs=2)).fit()
    assert continued["final_val_si_snri"] == straight["final_val_si_snri"]
    assert continued["final_train_loss"] == straight["final_train_loss"]


def test_fewer_epochs_than_a_finished_run_retrain_from_scratch(mixtures, tmp_path, caplog):
    run = tmp_path / "a"
    _trainer(mixtures, run, _settings(epochs=2)).fit()
    with caplog.at_level("INFO"):
        shorter = _trainer(mixtures, run, _settings(epochs=1)).fit()
    straight = _trainer(mixtures, tmp_path / "b", _settings(epochs=1)).fit()
    assert "more than the 1 asked for" in caplog.text
    assert shorter["final_val_si_snri"] == straight["final_val_si_snri"]
    assert shorter["final_train_loss"] == straight["final_train_loss"]
    assert read_checkpoint(run / "best.pt")["meta"]["epochs_done"] == 1


def test_an_unreadable_last_checkpoint_is_set_aside_and_the_run_restarts(mixtures, tmp_path, caplog):
    run = tmp_path / "models" / "small"
    straight = _trainer(mixtures, tmp_path / "b", _settings(epochs=1)).fit()
    _trainer(mixtures, run, _settings(epochs=1)).fit()
    last = run / "last.pt"
    last.write_bytes(last.read_bytes()[:1000])  # truncated, e.g. by a full disk
    with caplog.at_level("WARNING"):
        again = _trainer(mixtures, run, _settings(epochs=1)).fit()
    aside = tmp_path / "models" / ".small.last.pt.unreadable"
    assert aside.is_file() and "truncated or corrupt PyTorch zip" in caplog.text and str(aside) in caplog.text
    assert again["final_val_si_snri"] == straight["final_val_si_snri"]
    assert read_checkpoint(last)["meta"]["epochs_done"] == 1


class _Poisoned(torch.utils.data.Dataset):
    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        item = self.dataset[index]
        return dict(item, mixture=item["mixture"] * float("nan"))


def test_non_finite_loss_stops_with_step_and_ids_and_keeps_checkpoints(mixtures, tmp_path):
    _trainer(mixtures, tmp_path, _settings(epochs=1)).fit()
    before = (tmp_path / "last.pt").read_bytes(), (tmp_path / "best.pt").read_bytes()
    poisoned = _Poisoned(MixtureDataset(mixtures / "data" / "mixtures" / "ss", "train"))
    with pytest.raises(TrainingError, match=r"non-finite loss at epoch 2, step 1 \(nan\) in batch mixtures \['ss-train-"):
        _trainer(mixtures, tmp_path, _settings(epochs=2), train_set=poisoned).fit()
    assert ((tmp_path / "last.pt").read_bytes(), (tmp_path / "best.pt").read_bytes()) == before


def _ddp_worker(rank: int, root: Path, port: int, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE="2")
    torch.manual_seed(0)
    data = root / "data" / "mixtures" / "ss"
    train_set = MixtureDataset(data, "train")
    if rank == 1:
        train_set = _Poisoned(train_set)
    trainer = Trainer(TFGridNet("ss", TINY), "ss", train_set, MixtureDataset(data, "val"), _settings(epochs=1),
                      root / f"ddp-{rank}", None, {"test": True}, progress=False)
    try:
        trainer.fit()
        results.put((rank, "finished"))
    except TrainingError as error:
        results.put((rank, str(error)))


def test_non_finite_loss_on_one_process_stops_every_process(mixtures):
    """Under DDP a NaN on one rank must not leave the other waiting in the gradient all-reduce."""
    import multiprocessing
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    workers = [context.Process(target=_ddp_worker, args=(rank, mixtures, port, results)) for rank in (0, 1)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    hung = [worker for worker in workers if worker.is_alive()]
    for worker in hung:
        worker.kill()
    assert not hung, "a process hung after another one hit a non-finite loss"
    messages = dict(results.get(timeout=5) for _ in workers)
    assert re.search(r"step 1 \(nan\) in batch mixtures \['ss-train-", messages[1])
    assert "step 1 in another process's batch" in messages[0]


def test_boosted_pair_trains_the_large_model_through_the_small_loss(mixtures, tmp_path):
    torch.manual_seed(0)
    pair = BoostedPair(TFGridNet("ss", TINY), TFGridNet("ss", TINY_LARGE), delay=1)
    large_before = {k: v.clone() for k, v in pair.large.state_dict().items()}
    data = mixtures / "data" / "mixtures" / "ss"
    Trainer(pair, "ss", MixtureDataset(data, "train"), MixtureDataset(data, "val"), _settings(epochs=1),
            tmp_path, None, {}, progress=False).fit()
    changed = [k for k, v in pair.large.state_dict().items() if not torch.equal(v, large_before[k])]
    assert changed, "the large model must be trained jointly, not frozen"


def _stage(repo: Path, *extra, env=None):
    command = [sys.executable, str(ROOT / "pipeline" / "train.py"), "--task", "ss", "--model", "small",
               "--data", "data/mixtures/ss", "--out", "data/models/ss/small", "--live", "metrics/train/ss/small",
               "--no-progress", *extra]
    return subprocess.run(command, cwd=repo, env={**os.environ, **(env or {})}, capture_output=True, text=True)


def _smoke_repo(mixtures, tmp_path, name):
    repo = tmp_path / name
    (repo / "data" / "mixtures").mkdir(parents=True)
    (repo / "data" / "mixtures" / "ss").symlink_to(mixtures / "data" / "mixtures" / "ss")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["profile"] = "smoke"
    params["profiles"]["smoke"]["models"]["small"] = TINY.to_dict()
    # batch 2: 4 steps per epoch, so a kill can land mid-epoch
    params["profiles"]["smoke"]["train"].update(threads=1, batch_size=2)
    params["profiles"]["smoke"]["train"]["epochs"].update(small=3, medium=4)  # medium = small + boosted
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    return repo


def test_stage_killed_mid_epoch_resumes_to_the_same_result(mixtures, tmp_path):
    straight = _smoke_repo(mixtures, tmp_path, "straight")
    assert _stage(straight).returncode == 0
    killed = _smoke_repo(mixtures, tmp_path, "killed")
    result = _stage(killed, env={"KBOOST_KILL_AFTER_STEPS": "6"})  # in epoch 2 of 3
    assert result.returncode == -9, result.stderr
    assert read_checkpoint(killed / "data/models/ss/small/last.pt")["meta"]["epochs_done"] == 1
    resumed = _stage(killed)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stderr
    for name in ("best.pt", "last.pt"):
        a = read_checkpoint(straight / "data/models/ss/small" / name)
        b = read_checkpoint(killed / "data/models/ss/small" / name)
        assert a["state_dict"].keys() == b["state_dict"].keys()
        assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
        history = [{k: v for k, v in row.items() if k not in ("seconds", "clips_per_second")}
                   for row in a["meta"]["history"]]
        assert history == [{k: v for k, v in row.items() if k not in ("seconds", "clips_per_second")}
                           for row in b["meta"]["history"]]
    assert (straight / "metrics/train/ss/small/metrics.json").read_text() == \
        (killed / "metrics/train/ss/small/metrics.json").read_text()
    assert not list((killed / "data/models/ss/small").glob(".*tmp*"))


def _stage_processes(repo: Path) -> list[int]:
    """PIDs of processes (other than this one) whose working directory is ``repo``."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != os.getpid():
            try:
                if Path(os.readlink(proc / "cwd")) == repo:
                    found.append(int(proc.name))
            except OSError:
                pass
    return found


def test_processes_param_trains_under_torchrun_and_resumes_after_a_kill(mixtures, tmp_path):
    """profiles.<p>.train.processes = 2: the stage runs itself as two DistributedDataParallel
    workers (Gloo); a worker killed mid-epoch fails the stage, and a rerun resumes to the same
    result as an uninterrupted two-process run."""
    def two_process_repo(name):
        repo = _smoke_repo(mixtures, tmp_path, name)
        params = yaml.safe_load((repo / "params.yaml").read_text())
        params["profiles"]["smoke"]["train"]["processes"] = 2
        (repo / "params.yaml").write_text(yaml.safe_dump(params))
        return repo

    straight = two_process_repo("straight")
    result = _stage(straight)
    assert result.returncode == 0, result.stderr[-3000:]
    payload = read_checkpoint(straight / "data/models/ss/small/last.pt")
    assert (payload["meta"]["epochs_done"], payload["meta"]["processes"]) == (3, 2)
    assert json.loads((straight / "metrics/train/ss/small/metrics.json").read_text())["step"] == 3

    killed = two_process_repo("killed")
    result = _stage(killed, env={"KBOOST_KILL_AFTER_STEPS": "6"})  # both workers die in epoch 2 of 3
    assert result.returncode != 0
    assert read_checkpoint(killed / "data/models/ss/small/last.pt")["meta"]["epochs_done"] == 1
    resumed = _stage(killed)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stderr
    a = read_checkpoint(straight / "data/models/ss/small/last.pt")
    b = read_checkpoint(killed / "data/models/ss/small/last.pt")
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])


def test_killing_the_launcher_leaves_no_worker_behind(mixtures, tmp_path):
    repo = _smoke_repo(mixtures, tmp_path, "orphans")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["profiles"]["smoke"]["train"]["processes"] = 2
    params["profiles"]["smoke"]["train"]["epochs"].update(small=1000, medium=1001)
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    command = [sys.executable, str(ROOT / "pipeline" / "train.py"), "--task", "ss", "--model", "small",
               "--data", "data/mixtures/ss", "--out", "data/models/ss/small", "--no-progress"]
    launcher = subprocess.Popen(command, cwd=repo, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not (repo / "data/models/ss/small/last.pt").exists():  # the workers are training
            assert launcher.poll() is None and time.monotonic() < deadline, "training did not start"
            time.sleep(0.2)
        assert len(_stage_processes(repo)) >= 3  # torchrun and its two workers
        launcher.kill()  # SIGKILL: no chance to clean up
        launcher.wait()
        deadline = time.monotonic() + 20
        while _stage_processes(repo) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _stage_processes(repo) == [], "workers outlived their killed launcher"
    finally:
        for pid in _stage_processes(repo):
            os.kill(pid, 9)


def _hint_use(mixtures, tmp_path, zero_residual: bool) -> str:
    torch.manual_seed(0)
    pair = BoostedPair(TFGridNet("ss", TINY), TFGridNet("ss", TINY_LARGE), delay=1)
    if zero_residual:
        for merge in pair.merges:
            merge.zero_residual()
    save_checkpoint(tmp_path / "pair.pt", pair)
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_hint_use.py"), "--checkpoint",
                           str(tmp_path / "pair.pt"), "--mixtures", str(mixtures / "data" / "mixtures" / "ss")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_hint_use_probe_sees_hints_only_where_the_merges_read_them(mixtures, tmp_path):
    """benchmarks/bench_hint_use.py: merges that add nothing give no change when the hints are
    replaced; merges that add something change the output."""
    silent = _hint_use(mixtures, tmp_path, zero_residual=True)
    assert "2 mixtures" in silent
    assert re.search(r"hints set to zero .* change [+-]0\.00 ", silent), silent
    reading = _hint_use(mixtures, tmp_path, zero_residual=False)
    changes = [float(x) for x in re.findall(r"change ([+-]\d+\.\d+)", reading)]
    assert len(changes) == 2 and any(abs(c) > 0 for c in changes), reading
