"""The Optuna samplers a search can use, one registry: name → factory(seed, trials)."""

from __future__ import annotations

from typing import Callable

import optuna


def _tpe(seed: int, trials: int) -> optuna.samplers.BaseSampler:
    # multivariate + constant_liar: good with few trials and with parallel workers.
    return optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True, n_startup_trials=10)


def _nsga2(seed: int, trials: int) -> optuna.samplers.BaseSampler:
    return optuna.samplers.NSGAIISampler(seed=seed, population_size=min(50, max(10, trials // 6)))


def _gp(seed: int, trials: int) -> optuna.samplers.BaseSampler:
    return optuna.samplers.GPSampler(seed=seed, n_startup_trials=10)


def _random(seed: int, trials: int) -> optuna.samplers.BaseSampler:
    return optuna.samplers.RandomSampler(seed=seed)


SAMPLERS: dict[str, Callable[[int, int], optuna.samplers.BaseSampler]] = {
    "auto": lambda seed, trials: SAMPLERS[sampler_name("auto", trials)](seed, trials),
    "tpe": _tpe,
    "nsga2": _nsga2,
    "gp": _gp,
    "random": _random,
}
"""``auto`` is TPE up to 300 trials and NSGA-II beyond."""


def sampler_name(name: str, trials: int) -> str:
    """The sampler ``name`` resolves to (``auto`` picks by the trial count)."""
    return ("tpe" if trials <= 300 else "nsga2") if name == "auto" else name
