"""Does the default sampler beat random sampling? Hypervolume at equal trial counts, 3 seeds.

    python benchmarks/sampler_hypervolume.py [--trials 40] [--seeds 0 1 2] [--budget-mflops 300]

A cheap objective pair (synflow signal, maximised; complete MACs, minimised) under a MAC budget on
the default space: nothing is timed. For every seed both samplers run the same number of trials;
the hypervolume of each feasible front is taken in (−signal, MACs) against a common reference
point (the worst signal seen by any run, the MAC budget). The last line prints the ratio of the
median hypervolumes, default / random (>= 1 means the default does not lose).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

from mmlab.study.pareto import hypervolume_2d
from mmlab.study.search import SearchConfig, finished, run_worker


def front_points(study) -> list[tuple[float, float]]:
    points = []
    for t in finished(study):
        if t.user_attrs.get("feasible") and "signal" in t.user_attrs:
            points.append((-t.user_attrs["signal"], t.user_attrs["macs"] / 1e6))
    return points


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--budget-mflops", type=float, default=300.0)
    args = parser.parse_args()
    default_sampler = SearchConfig(trials=args.trials).sampler_name
    points: dict[tuple[str, int], list[tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            for sampler in ("auto", "random"):
                config = SearchConfig(study=f"{sampler}-{seed}", trials=args.trials, budget_mflops=args.budget_mflops,
                                      objectives=("signal", "macs"), signal="synflow", sampler=sampler, seed=seed,
                                      storage=f"sqlite:///{tmp}/{sampler}-{seed}.db", results_dir=tmp)
                started = time.perf_counter()
                points[(sampler, seed)] = front_points(run_worker(config))
                print(f"seed {seed} {sampler:>6}: {len(points[(sampler, seed)])} feasible of {args.trials} "
                      f"({time.perf_counter() - started:.0f} s)", flush=True)
    worst_signal = max(x for pts in points.values() for x, _ in pts)
    reference = (worst_signal, args.budget_mflops)
    hv = {key: hypervolume_2d(pts, reference) for key, pts in points.items()}
    print(f"\nreference point: signal {-reference[0]:.2f}, {reference[1]:g} M MACs; objectives synflow (max), macs (min)")
    print(f"{'seed':>4}  {'default (' + default_sampler + ')':>16}  {'random':>10}  ratio")
    for seed in args.seeds:
        d, r = hv[("auto", seed)], hv[("random", seed)]
        print(f"{seed:>4}  {d:>16.1f}  {r:>10.1f}  {d / r if r else float('inf'):.3f}")
    med_d = statistics.median(hv[("auto", s)] for s in args.seeds)
    med_r = statistics.median(hv[("random", s)] for s in args.seeds)
    print(f"hypervolume ratio default/random (median of {len(args.seeds)} seeds, {args.trials} trials each): {med_d / med_r:.3f}")


if __name__ == "__main__":
    main()
