"""Pareto sets and hypervolume: plain functions on objective values, checked against Optuna's own."""

from __future__ import annotations

from typing import Sequence


def pareto_mask(values: Sequence[Sequence[float]], directions: Sequence[str]) -> list[bool]:
    """True for each point that no other point dominates.

    A point dominates another if it is at least as good in every objective and strictly better
    in one; ``directions`` are ``maximize`` / ``minimize`` per objective. Duplicates of a
    non-dominated point are all kept (as Optuna's ``study.best_trials`` keeps them).
    """
    signs = [1.0 if d == "minimize" else -1.0 for d in directions]
    pts = [[s * v for s, v in zip(signs, row)] for row in values]  # everything minimised
    mask = []
    for i, p in enumerate(pts):
        dominated = any(
            all(q_k <= p_k for q_k, p_k in zip(q, p)) and any(q_k < p_k for q_k, p_k in zip(q, p))
            for j, q in enumerate(pts) if j != i
        )
        mask.append(not dominated)
    return mask


def hypervolume_2d(points: Sequence[tuple[float, float]], reference: tuple[float, float]) -> float:
    """Area dominated by ``points`` (both objectives minimised) up to ``reference``."""
    pts = sorted((x, y) for x, y in points if x < reference[0] and y < reference[1])
    area, best_y = 0.0, reference[1]
    for x, y in pts:
        if y < best_y:
            area += (reference[0] - x) * (best_y - y)
            best_y = y
    return area
