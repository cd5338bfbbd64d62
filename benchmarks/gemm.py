"""The 1x1-conv GEMMs of a fused preset: MKL (``F.linear``) against oneDNN, shape by shape.

    python benchmarks/gemm.py [--presets t2,s6] [--threads 2] [--runs 200]

``mmlab.fuse`` turns every dense 1x1 conv into a :class:`~mmlab.model.layers.Pointwise` GEMM on
the (H·W, C) view of a channels-last map. Which library runs that GEMM matters: PyTorch sends a
float32 ``F.linear`` to MKL's sgemm, whose speed depends on the CPU it detects, while oneDNN JITs
its kernels for whatever the CPU has. This script records every ``Pointwise`` call of one forward
pass (rows M = B·H·W, K inputs, N outputs), then times each shape alone, hot in cache, three ways
(median of ``--runs`` calls): MKL's ``F.linear``; oneDNN's ``_linear_pointwise`` on the plain
weight; the same on the weight reordered once into oneDNN's layout (what ``Pointwise`` does). It
prints GMAC/s per shape and, last, each variant's total per forward pass. In-network times differ
(weights and activations are not always in cache); ``benchmarks/side_by_side.py`` times whole
networks.
"""

from __future__ import annotations

import argparse
import collections
import statistics
import time

import torch
import torch.nn.functional as F

import mmlab
from mmlab.model.layers import Pointwise
from mmlab.spec.presets import PAPER_PRESETS


def median_us(fn, runs: int) -> float:
    for _ in range(max(10, runs // 10)):
        fn()
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1e6


def gemm_shapes(name: str) -> collections.Counter:
    """(M, K, N) -> calls per forward pass, for the Pointwise layers of preset ``name`` at batch 1."""
    spec = mmlab.get_preset(name)
    model = mmlab.fuse(mmlab.build(spec).eval())
    shapes: collections.Counter = collections.Counter()

    def record(module: Pointwise, inputs: tuple[torch.Tensor, ...], _output: torch.Tensor) -> None:
        b, _, h, w = inputs[0].shape
        shapes[(b * h * w, module.weight.shape[1], module.weight.shape[0])] += 1

    for module in model.modules():
        if isinstance(module, Pointwise):
            module.register_forward_hook(record)
    with torch.inference_mode():
        model(torch.randn(1, spec.in_chans, spec.resolution, spec.resolution))
    return shapes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="t2,s6", help=f"comma-separated, of {','.join(PAPER_PRESETS)}")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=200, help="timed calls per shape and variant")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    variants = ("mkl F.linear", "onednn plain", "onednn reordered")
    print(f"torch {torch.__version__}, {args.threads} threads, float32; "
          f"oneDNN linear available: {hasattr(torch.ops.mkldnn, '_linear_pointwise')}")
    for name in args.presets.split(","):
        totals = dict.fromkeys(variants, 0.0)
        print(f"\n{name}: M x K x N (calls per forward): " + " | ".join(f"{v} us (GMAC/s)" for v in variants))
        with torch.inference_mode():
            for (m, k, n), calls in sorted(gemm_shapes(name).items()):
                x, w, b = torch.randn(m, k), torch.randn(n, k), torch.randn(n)
                reordered = torch.ops.mkldnn._reorder_linear_weight(w)
                times = {
                    "mkl F.linear": median_us(lambda: F.linear(x, w, b), args.runs),
                    "onednn plain": median_us(lambda: torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [], ""), args.runs),
                    "onednn reordered": median_us(
                        lambda: torch.ops.mkldnn._linear_pointwise(x, reordered, b, "none", [], ""), args.runs),
                }
                for v in variants:
                    totals[v] += calls * times[v]
                cells = " | ".join(f"{times[v]:.1f} ({m * k * n / times[v] / 1e3:.0f})" for v in variants)
                print(f"  {m} x {k} x {n} ({calls}): {cells}")
        print(f"{name} per forward: " + ", ".join(f"{v} {totals[v] / 1e3:.2f} ms" for v in variants), flush=True)


if __name__ == "__main__":
    main()
