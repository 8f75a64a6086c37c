"""Prepare one corpus part (speech, noise, responses) in the layout of :mod:`kboost.sources.layout`,
from real downloads or from the embedded generators (the ``get_data`` stage)."""
from __future__ import annotations

import logging
from pathlib import Path

from ..fsutil import atomic_dir, remove_stale_temporaries
from ..params import ParamsError, active_profile

log = logging.getLogger(__name__)
PARTS = ("speech", "noise", "responses")


def embedded_config(part: str, params: dict) -> dict:
    """The embedded generator's cfg: style knobs from ``embedded.<x>``, sizes from the profile."""
    scale = active_profile(params)["data"]["embedded"]
    if part == "speech":
        return {**params["embedded"]["speech"], "speakers": scale["speakers"],
                "utterances_per_speaker": scale["utterances_per_speaker"]}
    if part == "noise":
        return {**params["embedded"]["noise"], "clips": scale["noise_clips"]}
    return {**params["embedded"]["rooms"], "rooms": scale["rooms"],
            "directions_per_room": scale["directions_per_room"],
            "anechoic_directions": scale["anechoic_directions"]}


def check_embedded(params: dict, source: str = "params.yaml") -> None:
    """Validate the settings of every embedded generator the profile uses, with the generator's
    own checks, before any work; a problem is a ParamsError naming the key."""
    from . import embedded_noise, embedded_rooms, embedded_speech

    validators = {"speech": embedded_speech.validate_cfg, "noise": embedded_noise.validate_cfg,
                  "responses": embedded_rooms.validate_cfg}
    for part, validate_cfg in validators.items():
        if active_profile(params)["data"]["sources"][part] != "embedded":
            continue
        try:
            validate_cfg(embedded_config(part, params))
        except ValueError as exc:
            raise ParamsError(f"{source}: {exc}") from exc


def prepare_part(part: str, params: dict, out_dir: str | Path) -> str:
    """Build corpus part ``part`` into ``out_dir`` (published atomically); return the source used."""
    if part not in PARTS:
        raise ValueError(f"unknown corpus part {part!r}; allowed: {', '.join(PARTS)}")
    check_embedded(params)
    out_dir = Path(out_dir)
    remove_stale_temporaries(out_dir)  # leftovers of a killed earlier run
    pdata = active_profile(params)["data"]
    source = pdata["sources"][part]
    workers = pdata["workers"]
    seed = params["seed"]
    downloads = Path(params["real"]["downloads_dir"])
    log.info("preparing %s from source %r into %s", part, source, out_dir)
    with atomic_dir(out_dir) as tmp:
        if source == "embedded":
            cfg = embedded_config(part, params)
            if part == "speech":
                from .embedded_speech import generate
            elif part == "noise":
                from .embedded_noise import generate
            else:
                from .embedded_rooms import generate
            generate(tmp, cfg, seed=seed, workers=workers)
        elif part == "speech":
            from .librispeech import prepare
            prepare(tmp, params["real"]["librispeech"], downloads, workers=workers)
        elif part == "noise":
            from .wham import prepare
            prepare(tmp, params["real"]["wham"], downloads, workers=workers)
        else:
            from .measured_responses import prepare
            prepare(tmp, params["real"]["responses"], downloads, pdata["response_sets"], workers=workers)
    return source
