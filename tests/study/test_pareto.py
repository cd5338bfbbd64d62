"""Our Pareto mask and 2-D hypervolume against Optuna's own implementations."""

import numpy as np
import pytest
from optuna._hypervolume import compute_hypervolume
from optuna.study._multi_objective import _is_pareto_front

from mmlab.study.pareto import hypervolume_2d, pareto_mask


@pytest.mark.parametrize("seed", range(20))
def test_pareto_mask_matches_optuna(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 40))
    points = rng.integers(0, 8, size=(n, 2)).astype(float)  # small integers: ties and duplicates occur
    directions = ["maximize", "minimize"]
    loss = points * np.array([-1.0, 1.0])  # Optuna's helper minimises everything
    expected = _is_pareto_front(loss, assume_unique_lexsorted=False)
    assert pareto_mask(points.tolist(), directions) == expected.tolist()


@pytest.mark.parametrize("seed", range(20))
def test_hypervolume_matches_optuna(seed):
    rng = np.random.default_rng(seed)
    points = rng.uniform(0, 10, size=(int(rng.integers(1, 30)), 2))
    reference = (11.0, 11.0)
    assert hypervolume_2d([tuple(p) for p in points], reference) == pytest.approx(
        compute_hypervolume(points, np.array(reference)), rel=1e-12)
