"""Beyond the paper: the link with jitter and loss (kboost.link), hints with their age, the
variable-delay pair, and causality of streaming through such a link."""
import numpy as np
import pytest
import torch

from kboost.link import NO_HINT, LinkModel, clip_rng, sweep
from kboost.models import BoostedPair, GridNetSize, TFGridNet
from kboost.models.boosting import NO_HINT as MODEL_NO_HINT
from kboost.models.frontend import pad_clip
from kboost.streamer import LinkedStreamer, ScheduledLink, stream
from kboost.training import clip_delays

HOP = 128
SMALL = GridNetSize(emb_dim=8, hidden=8, blocks=3, window=5)
LARGE = GridNetSize(emb_dim=16, hidden=8, blocks=2, heads=2, window=6)


def _pair(task="se", delay=3, delay_range=None, seed=0):
    torch.manual_seed(seed)
    return BoostedPair(TFGridNet(task, SMALL), TFGridNet(task, LARGE), delay=delay, delay_range=delay_range).eval()


def test_the_model_and_the_link_agree_on_what_no_hint_is():
    assert NO_HINT == MODEL_NO_HINT == -1


def test_gilbert_elliott_losses_have_the_asked_rate_and_burst_length():
    link = LinkModel(base=6, loss=0.2, burst=4)
    lost = link.lost(200_000, clip_rng(1, "rate"))
    assert abs(lost.mean() - 0.2) < 0.01
    runs = np.diff(np.flatnonzero(np.diff(np.r_[0, lost.astype(int), 0])))[::2]  # lengths of lost runs
    assert abs(runs.mean() - 4) < 0.2


@pytest.mark.parametrize("kind", ["geometric", "uniform"])
def test_jitter_has_the_asked_mean(kind):
    extra = LinkModel(base=2, jitter=2, jitter_kind=kind).extra_delays(100_000, clip_rng(2, kind))
    assert extra.min() >= 0 and abs(extra.mean() - 2) < 0.05


@pytest.mark.parametrize("policy", ["newest", "zeros"])
def test_a_schedule_uses_only_hints_that_have_arrived(policy):
    link = LinkModel(base=3, loss=0.3, burst=3, jitter=2, policy=policy, max_age=10)
    arrival = link.arrivals(400, clip_rng(3, policy))
    ages = link.schedule_from_arrivals(arrival)
    frames = np.arange(400)
    used = ages >= 0
    source = frames[used] - ages[used]
    assert (arrival[source] >= 0).all() and (arrival[source] <= frames[used]).all()  # arrived, by then
    assert (ages[used] >= 3).all() and (ages[used] <= 10).all()
    if policy == "zeros":
        assert set(ages[used]) == {3}
    else:  # nothing newer had arrived
        for t in np.flatnonzero(used)[:100]:
            assert not ((arrival >= 0) & (arrival <= t) & (np.arange(400) > t - ages[t])).any()


def test_a_perfect_link_is_the_fixed_delay():
    ages = LinkModel(base=4).schedule(20, clip_rng(0))
    assert (ages[:4] == NO_HINT).all() and (ages[4:] == 4).all()


def test_the_link_conditions_come_from_params():
    params = {"delay": 6, "link": {"loss_rates": [0.0, 0.2], "burst_chunks": 4, "jitter_chunks": [0, 2],
                                   "jitter": "geometric", "policy": "newest", "max_age": 16}}
    conditions = sweep(params)
    assert [(kind, m.loss, m.jitter) for kind, m in conditions] == [("loss", 0, 0), ("loss", 0.2, 0), ("jitter", 0, 2)]
    assert all(m.base == 6 and m.burst == 4 for _, m in conditions)


def test_a_loss_rate_the_bursts_cannot_give_is_refused():
    with pytest.raises(ValueError, match="lengthen the bursts"):
        LinkModel(base=1, loss=0.9, burst=1)


def test_constant_ages_equal_the_fixed_delay_exactly():
    pair = _pair(delay=3)
    audio = torch.randn(2, 2, 30 * HOP) * 0.1
    with torch.inference_mode():
        assert torch.equal(pair(audio), pair(audio, ages=torch.tensor([3, 3])))
        assert not torch.equal(pair(audio), pair(audio, ages=torch.tensor([1, 1])))


def test_a_variable_pair_at_a_delay_is_a_pair_of_that_delay():
    pair = _pair(delay=6, delay_range=(0, 6))
    audio = torch.randn(1, 2, 30 * HOP) * 0.1
    with torch.inference_mode():
        by_age = pair(audio, ages=torch.tensor([2]))
        assert torch.allclose(pair.at_delay(2)(audio), by_age, rtol=0, atol=1e-5 * by_age.abs().max())
    with pytest.raises(ValueError, match="outside the range 0 to 6"):
        pair.at_delay(7)
    with pytest.raises(ValueError, match="trained for delay 3 only"):
        _pair(delay=3).at_delay(2)


def test_training_delays_are_drawn_per_clip_reproducibly_within_the_range():
    ids = [f"m{k:03d}" for k in range(200)]
    draws = clip_delays(ids, 42, 0, (0, 6))
    assert torch.equal(draws, clip_delays(ids, 42, 0, (0, 6)))
    assert set(draws.tolist()) == set(range(7))
    assert not torch.equal(draws, clip_delays(ids, 42, 1, (0, 6)))  # afresh each epoch


def _link_schedules(batch, chunks, link, seed=5):
    return np.stack([link.schedule(chunks, clip_rng(seed, clip)) for clip in range(batch)])


@pytest.mark.parametrize("task", ["se", "tse"])
def test_streaming_through_the_link_equals_the_whole_clip_with_the_same_ages(task):
    pair = _pair(task, delay=6, delay_range=(0, 6))
    link = LinkModel(base=2, loss=0.25, burst=3, jitter=1.5, max_age=8)
    batch, chunks = 2, 40
    audio = torch.randn(batch, 2, chunks * HOP) * 0.1
    embedding = torch.randn(batch, 256) if task == "tse" else None
    with torch.inference_mode():
        features = pair.small.frontend.analyse(pad_clip(audio))
        hints = pair.remote_forward(features, embedding)
        frames = hints.shape[2]
        ages = torch.as_tensor(_link_schedules(batch, frames + 2, link))
        whole = pair.device_forward(audio, features, hints, embedding, ages[:, :frames])
        streamed = stream(LinkedStreamer(pair, ScheduledLink(ages, keep=8), embedding, batch), audio)
    scale = whole.abs().max()
    assert (whole - streamed).abs().max() <= 1e-5 * scale


def test_a_poisoned_hint_reaches_the_output_no_earlier_than_its_arrival():
    pair = _pair("se", delay=6, delay_range=(0, 6))
    link = LinkModel(base=2, loss=0.2, burst=2, jitter=2, max_age=8)
    chunks = 40
    arrival = link.arrivals(chunks, clip_rng(9, "poison"))
    ages = link.schedule_from_arrivals(arrival)
    used_at = np.flatnonzero(ages >= 0)
    poisoned_index = int((used_at - ages[used_at])[5])  # a hint the device does use
    first_use = int(used_at[(used_at - ages[used_at]) == poisoned_index][0])
    assert first_use >= arrival[poisoned_index]

    class PoisonedLink(ScheduledLink):
        def deliver(self, sent, held):
            if len(held) == poisoned_index:
                sent = torch.full_like(sent, float("nan"))
            return super().deliver(sent, held)

    audio = torch.randn(1, 2, chunks * HOP) * 0.1
    schedule = torch.as_tensor(ages)[None]
    clean_streamer = LinkedStreamer(pair, ScheduledLink(schedule, keep=8))
    bad_streamer = LinkedStreamer(pair, PoisonedLink(schedule, keep=8))
    clean_state, bad_state = clean_streamer.initial_state(), bad_streamer.initial_state()
    with torch.inference_mode():
        for k in range(chunks - 1):
            chunk = audio[..., k * HOP:(k + 1) * HOP]
            clean, bad = clean_streamer.step(chunk, clean_state), bad_streamer.step(chunk, bad_state)
            if k < first_use:
                assert torch.equal(clean, bad), k
            else:
                assert not torch.isfinite(bad).all(), k  # the NaN hint has arrived and is used


def test_params_allow_exactly_the_link_models_choices():
    from kboost.link import JITTERS, POLICIES
    from kboost.params import LINK_JITTERS, LINK_POLICIES

    assert (LINK_JITTERS, LINK_POLICIES) == (JITTERS, POLICIES)
