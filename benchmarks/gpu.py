"""Every GPU check and benchmark in one run (about 5 minutes on one H100 / H200).

1. Checks: the Triton selective scan against ``selective_scan_ref`` on random inputs of several
   shapes (fails above 1e-4 relative), and the fused T2 model laid out for CUDA, on CUDA, against
   the same network laid out for the CPU, on CPU, in fp32 (TF32 off for the checks).
2. Scan kernel timing: Triton vs the chunked autograd-path scan on CUDA, at model shapes.
3. A/Bs interleaved at the throughput batch: the deploy layouts (``fuse(device=...)``,
   :data:`LAYOUTS`, ``--layout-presets``), the wavelet paths (``--wavelet-presets``), conv + bias +
   ReLU as one cuDNN call (``--fusion-presets``); and a ``torch.profiler`` table of where the GPU
   time goes (``--profile-presets``).
4. Per preset (t2 t4 s6 b1 b2 b4), fp32, ``fuse(build(spec).eval(), device="cuda")``, random input
   at the preset's resolution, under ``torch.inference_mode``: batch-256 throughput and batch-1
   latency, eager and as a CUDA graph (CUDA-event timing, warm-up, median of >= 30 runs, p10 / p90).
5. ``torch.compile`` per preset (``--compile-presets``) while the time budget allows, in a child
   process with a timeout (compile time reported on its own, never inside a latency).

Results are compared with the authors' H100 figures (../shared/reference/official_gpu_h100.tsv)
and written to ``results/gpu.md`` after every step, so a partial run is still a report. Exits 0
with "no CUDA: skipped" on a machine without CUDA, 1 if a correctness check failed.

    python benchmarks/gpu.py [--out results/gpu.md] [--presets t2,s6] [--quick] [--budget-s 240]
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import math
import shlex
import statistics
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # run from a checkout without installing mmlab

PRESETS = ("t2", "t4", "s6", "b1", "b2", "b4")
LATENCY_GOAL_MS = {"t2": 2.0, "s6": 2.0, "b1": 2.0}
SCAN_TOL = 1e-4
MODEL_TOL = 1e-4
REFERENCE_CANDIDATES = (
    Path(__file__).resolve().parents[1].parent / "shared/reference/official_gpu_h100.tsv",
    ROOT / "shared/reference/official_gpu_h100.tsv",  # shared/ inside the checkout (device copies)
)
T0 = time.monotonic()


def log(msg: str) -> None:
    print(f"[{time.monotonic() - T0:6.1f}s] {msg}", flush=True)


# --------------------------------------------------------------------------------------------
# timing
# --------------------------------------------------------------------------------------------


@dataclass
class Stats:
    """Per-call milliseconds over ``runs`` timed calls."""

    median_ms: float
    p10_ms: float
    p90_ms: float
    runs: int

    @classmethod
    def of(cls, samples: list[float]) -> "Stats":
        s = sorted(samples)
        q = statistics.quantiles(s, n=10, method="inclusive") if len(s) > 1 else [s[0]] * 9
        return cls(statistics.median(s), q[0], q[-1], len(s))

    def ips(self, batch: int) -> tuple[float, float, float]:
        """Images per second: median, and the p10..p90 range (from the p90 / p10 times)."""
        return 1e3 * batch / self.median_ms, 1e3 * batch / self.p90_ms, 1e3 * batch / self.p10_ms


def time_synced(fn, warmup: int, runs: int, deadline: float, min_runs: int) -> Stats:
    """Latency: each call from an idle GPU (synchronised per call), CUDA events around it."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    samples = []
    for _ in range(runs):
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        fn()
        end.record()
        end.synchronize()
        samples.append(begin.elapsed_time(end))
        if len(samples) >= min_runs and time.monotonic() > deadline:
            break
    return Stats.of(samples)


def time_pipelined(fn, warmup: int, runs: int, deadline: float, min_runs: int) -> Stats:
    """Throughput: calls back to back (the CPU may run ahead), one CUDA event between calls."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    events = [torch.cuda.Event(enable_timing=True)]
    events[0].record()
    for i in range(runs):
        fn()
        events.append(torch.cuda.Event(enable_timing=True))
        events[-1].record()
        if i + 1 >= min_runs and time.monotonic() > deadline:
            break
    events[-1].synchronize()
    return Stats.of([a.elapsed_time(b) for a, b in zip(events, events[1:])])


def capture_graph(model, x):
    """One forward pass captured in a CUDA graph (warm-up on a side stream first); returns the replay."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            model(x)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = model(x)

    def replay():
        graph.replay()
        return out

    return replay


def rel_err(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """(max |a-b|, max |a-b| / max |b|), in float64 on CPU."""
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    diff = (a - b).abs().max().item()
    return diff, diff / max(b.abs().max().item(), 1e-30)


# --------------------------------------------------------------------------------------------
# imports of the package (paths move during a restructure: both layouts are accepted)
# --------------------------------------------------------------------------------------------


def import_mmlab():
    try:
        from mmlab.spec import get_preset
    except ImportError:
        from mmlab.presets import get_preset
    from mmlab.model import build, fuse
    from mmlab.model import scan as scan_module

    return get_preset, build, fuse, scan_module


def randomize_bn(model: torch.nn.Module, seed: int = 0) -> None:
    """Random BN statistics and affine parameters: with the γ0 init every residual branch is 0."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.weight.copy_(0.5 + torch.rand(n, generator=g))
                m.bias.copy_(0.1 * torch.randn(n, generator=g))
                m.running_mean.copy_(0.1 * torch.randn(n, generator=g))
                m.running_var.copy_(0.5 + torch.rand(n, generator=g))


def set_tf32(on: bool) -> None:
    torch.backends.cuda.matmul.allow_tf32 = on
    torch.backends.cudnn.allow_tf32 = on


# --------------------------------------------------------------------------------------------
# the report
# --------------------------------------------------------------------------------------------


def load_reference(path_arg: str | None) -> tuple[dict[str, dict[str, float | None]], str]:
    candidates = [Path(path_arg)] if path_arg else list(REFERENCE_CANDIDATES)
    for path in candidates:
        if path.is_file():
            rows = {}
            lines = [line for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]
            header = lines[0].split("\t")
            for line in lines[1:]:
                cells = dict(zip(header, line.split("\t")))
                rows[cells["preset"]] = {k: (float(v) if v.strip() else None) for k, v in cells.items() if k != "preset"}
            return rows, str(path)
    return {}, "not found (" + ", ".join(str(p) for p in candidates) + ")"


def fmt(x: float | None, digits: int = 0) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:,.{digits}f}"


class Report:
    def __init__(self, args, out: Path, reference: dict, reference_src: str) -> None:
        self.args, self.out, self.reference, self.reference_src = args, out, reference, reference_src
        self.header: list[str] = []
        self.checks: list[tuple[str, float | None, float | None, float, str]] = []
        self.scan_timing: list[str] = []
        self.layout_ab: list[str] = []
        self.profiles: list[str] = []
        self.wavelet_ab: list[str] = []
        self.fusion_ab: list[str] = []
        self.rows: dict[str, dict] = {}
        self.errors: list[str] = []
        self.status = "running"

    def check(self, name: str, abs_err: float | None, rel: float | None, tol: float, ok: bool | None = None) -> bool:
        ok = (rel is not None and rel <= tol) if ok is None else ok
        self.checks.append((name, abs_err, rel, tol, "ok" if ok else "**FAIL**"))
        log(f"check {name}: max abs {fmt(abs_err, 3) if abs_err is None else f'{abs_err:.3e}'}, "
            f"max rel {'–' if rel is None else f'{rel:.3e}'} (tol {tol:g}) -> {'ok' if ok else 'FAIL'}")
        if not ok:
            print(f"\n!!!!!!!! CHECK FAILED: {name} !!!!!!!!\n", flush=True)
        return ok

    @property
    def failed(self) -> bool:
        return any(c[4] != "ok" for c in self.checks)

    def goals(self, name: str, row: dict) -> tuple[str, str]:
        ref = self.reference.get(name, {})
        best_ips = max((v for v in (row.get("b256_eager_ips"), row.get("b256_graph_ips"), row.get("b256_compiled_ips")) if v), default=None)
        eager_ref = [v for v in (ref.get("eager_b256_ips_run1"), ref.get("eager_b256_ips_run2")) if v]
        eager_mean = sum(eager_ref) / len(eager_ref) if eager_ref else None
        graph_ref = ref.get("graph_b256_ips")
        if best_ips is None or eager_mean is None:
            thr = "–"
        else:
            ok = best_ips >= 2 * eager_mean and (graph_ref is None or best_ips >= graph_ref)
            thr = f"{'met' if ok else 'NOT met'} (best {best_ips:,.0f} vs 2×{eager_mean:,.0f}" + (
                f", {graph_ref:,.0f})" if graph_ref else ")")
        lat_goal = LATENCY_GOAL_MS.get(name)
        best_ms = min((v for v in (row.get("b1_eager_ms"), row.get("b1_graph_ms"), row.get("b1_compiled_ms")) if v), default=None)
        if lat_goal is None:
            lat = "(no goal)"
        elif best_ms is None:
            lat = "–"
        else:
            lat = f"{'met' if best_ms <= lat_goal else 'NOT met'} (best {best_ms:.2f} ≤ {lat_goal:g} ms)"
        return thr, lat

    def render(self) -> str:
        a = self.args
        lines = ["# GPU checks and benchmarks", ""]
        lines += [f"- {h}" for h in self.header]
        lines += [f"- reference figures: {self.reference_src}", f"- status: {self.status}", ""]
        lines += ["## Correctness checks", "", "| check | max abs err | max rel err | tolerance | result |", "|---|---|---|---|---|"]
        for name, ae, re_, tol, res in self.checks:
            lines.append(f"| {name} | {'–' if ae is None else f'{ae:.2e}'} | {'–' if re_ is None else f'{re_:.2e}'} | {tol:g} | {res} |")
        if self.scan_timing:
            lines += ["", "## Selective scan alone (forward, inference mode)", "",
                      "| shape (batch, K·Di, L) | Triton ms | chunked ms | speed-up |", "|---|---|---|---|", *self.scan_timing]
        if self.layout_ab:
            lines += ["", f"## Deploy layout on CUDA, interleaved in one process (batch {a.batch}, img/s, median of 3 rounds)", "",
                      *[f"- `{k}`: {v}" for k, v in LAYOUTS.items()],
                      "", "Ratios are per round against `cuda` (> 1: faster than `cuda`), median [min–max].", "",
                      "| preset | cpu eager | cuda eager | cuda-cl eager | cpu graph | cuda graph | cuda-cl graph "
                      "| cpu ÷ cuda eager | cpu ÷ cuda graph | cuda-cl ÷ cuda eager | cuda-cl ÷ cuda graph | outputs equal |",
                      "|---|---|---|---|---|---|---|---|---|---|---|---|", *self.layout_ab]
        lines += ["", f"## Throughput, batch {a.batch} (img/s, median; p10–p90 in brackets)", "",
                  "| preset | img | eager | CUDA graph | compiled | authors eager (mean of 2) | authors graph | eager / authors eager | graph / authors graph | goal ≥ 2× authors eager and ≥ authors graph |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for name, row in self.rows.items():
            ref = self.reference.get(name, {})
            eager_ref = [v for v in (ref.get("eager_b256_ips_run1"), ref.get("eager_b256_ips_run2")) if v]
            eager_mean = sum(eager_ref) / len(eager_ref) if eager_ref else None
            graph_ref = ref.get("graph_b256_ips")
            e, g = row.get("b256_eager_ips"), row.get("b256_graph_ips")
            thr, _ = self.goals(name, row)
            lines.append(
                f"| {name} | {row.get('img', '–')} | {fmt(e)} {row.get('b256_eager_range', '')} | {fmt(g)} {row.get('b256_graph_range', '')} "
                f"| {fmt(row.get('b256_compiled_ips'))} | {fmt(eager_mean)} | {fmt(graph_ref)} "
                f"| {fmt(e / eager_mean if e and eager_mean else None, 2)} | {fmt(g / graph_ref if g and graph_ref else None, 2)} | {thr} |")
        lines += ["", "## Latency, batch 1 (ms, median; p10–p90 in brackets)", "",
                  "| preset | eager | CUDA graph | compiled | authors eager | authors graph | goal ≤ 2 ms (t2, s6, b1) |",
                  "|---|---|---|---|---|---|---|"]
        for name, row in self.rows.items():
            ref = self.reference.get(name, {})
            _, lat = self.goals(name, row)
            lines.append(
                f"| {name} | {fmt(row.get('b1_eager_ms'), 2)} {row.get('b1_eager_range', '')} | {fmt(row.get('b1_graph_ms'), 2)} {row.get('b1_graph_range', '')} "
                f"| {fmt(row.get('b1_compiled_ms'), 2)} | {fmt(ref.get('eager_b1_ms'), 1)} | {fmt(ref.get('graph_b1_ms'), 2)} | {lat} |")
        lines += ["", "## Per preset: graph check, memory, torch.compile", "",
                  f"| preset | graph replay = eager | peak GPU memory GiB | compile mode | compile s (b1) | compile s (b{a.batch}) | compiled = eager | compile status |",
                  "|---|---|---|---|---|---|---|---|"]
        for name, row in self.rows.items():
            lines.append(
                f"| {name} | {row.get('graph_ok', '–')} | {fmt(row.get('peak_gib'), 1)} | {a.compile_mode}{' (inductor layout_optimization off)' if a.inductor_layout_opt == 'off' else ''} | {fmt(row.get('b1_compile_s'), 1)} "
                f"| {fmt(row.get('b256_compile_s'), 1)} | {row.get('compiled_ok', '–')} | {row.get('compile_status', 'not run')} |")
        lines += pair_section(
            f"Wavelet path on CUDA, interleaved in one process (batch {a.batch}, img/s, median of 3 rounds)",
            "`folded`: the one-level Haar path as one grouped k×k conv (4 → 4 channels per group) between a "
            "pixel unshuffle and shuffle (the CPU default); `levels`: analysis conv, depthwise sub-band conv, "
            "synthesis conv (the CUDA default since this A/B).", ("folded", "levels"), "blocks switched", self.wavelet_ab)
        lines += pair_section(
            f"Conv + bias + ReLU as one cuDNN call, interleaved in one process (batch {a.batch}, img/s, median of 3 rounds)",
            "`base`: the CUDA deploy form (cuDNN conv, then the bias `add_`, then ReLU); `conv_relu`: "
            "`torch.cudnn_convolution_relu` where a ReLU directly follows a conv.", ("base", "conv_relu"), "pairs fused",
            self.fusion_ab)
        if self.profiles:
            lines += ["", "## Where the GPU time goes (torch.profiler, eager, `cuda` layout)", "", *self.profiles]
        if self.errors:
            lines += ["", "## Errors", ""] + [f"```\n{e.strip()}\n```" for e in self.errors]
        return "\n".join(lines) + "\n"

    def write(self) -> None:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.out.with_suffix(self.out.suffix + ".tmp")
        tmp.write_text(self.render())
        tmp.replace(self.out)


# --------------------------------------------------------------------------------------------
# steps
# --------------------------------------------------------------------------------------------


def scan_inputs(batch, k, di, length, n, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    kd = k * di
    x = dict(
        u=torch.randn(batch, kd, length, generator=g),
        delta=torch.randn(batch, kd, length, generator=g),
        A=-(torch.rand(kd, n, generator=g) + 0.2),
        B=torch.randn(batch, k, n, length, generator=g),
        C=torch.randn(batch, k, n, length, generator=g),
        D=torch.randn(kd, generator=g),
        delta_bias=torch.rand(kd, generator=g),
    )
    return {name: v.to(device) for name, v in x.items()}


def check_scan(report: Report, scan_module) -> None:
    shapes = [  # (batch, K, Di, L, N)
        (2, 2, 8, 37, 1), (2, 4, 4, 49, 4), (3, 1, 5, 7, 2), (1, 2, 8, 20, 16),
        (8, 2, 224, 144, 1),  # T2 stage 1
        (4, 2, 320, 1024, 1),  # B4 stage 1
        (16, 2, 544, 49, 1),  # S6 stage 3
        (2, 2, 70, 300, 1),
    ]
    with torch.inference_mode():
        for shape in shapes:
            x = scan_inputs(*shape, "cuda")
            y = scan_module.selective_scan_triton(**x)
            ref = scan_module.selective_scan_ref(**x)
            report.check(f"Triton scan vs reference, (B,K,Di,L,N)={shape}", *rel_err(y, ref), SCAN_TOL)
        # B, C as strided views (as SS2D passes them), no D / bias, no softplus
        x = scan_inputs(2, 2, 16, 50, 1, "cuda")
        bc = torch.randn(2, 2, 5, 50, device="cuda")
        x.update(B=bc[:, :, 1:2], C=bc[:, :, 3:4], D=None, delta_bias=None, delta=x["delta"].abs())
        y = scan_module.selective_scan_triton(**x, delta_softplus=False)
        ref = scan_module.selective_scan_ref(**x, delta_softplus=False)
        report.check("Triton scan vs reference, strided B/C, no D/bias/softplus", *rel_err(y, ref), SCAN_TOL)


def time_scan(report: Report, scan_module, quick: bool) -> None:
    shapes = [(256, 2, 224, 144, 1), (256, 2, 320, 256, 1), (64, 2, 320, 1024, 1)]  # T2 s1, B1 s1, B4 s1
    runs = 10 if quick else 30
    with torch.inference_mode():
        for shape in shapes:
            x = scan_inputs(*shape, "cuda")
            far = time.monotonic() + 30
            t_tri = time_synced(lambda: scan_module.selective_scan_triton(**x), 3, runs, far, 5)
            t_chk = time_synced(lambda: scan_module.selective_scan_fast(**x), 2, max(5, runs // 3), far, 5)
            b, k, di, length, _ = shape
            report.scan_timing.append(
                f"| ({b}, {k * di}, {length}) | {t_tri.median_ms:.3f} | {t_chk.median_ms:.3f} | {t_chk.median_ms / t_tri.median_ms:.1f}× |")
            log(f"scan {shape}: triton {t_tri.median_ms:.3f} ms, chunked {t_chk.median_ms:.3f} ms")
            del x
    torch.cuda.empty_cache()


def check_model(report: Report, get_preset, build, fuse) -> None:
    import mmlab.model.ssm as ssm

    spec = get_preset("t2")
    torch.manual_seed(0)
    net = build(spec).eval()
    randomize_bn(net)
    model = fuse(net, device="cpu").eval()
    x = torch.randn(2, spec.in_chans, spec.resolution, spec.resolution, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        y_cpu = model(x)
    model = fuse(net, device="cuda").eval().cuda()  # the CUDA layout against the CPU one
    calls = []
    real = ssm.selective_scan_triton
    ssm.selective_scan_triton = lambda *a, **k: calls.append(1) or real(*a, **k)
    try:
        with torch.inference_mode():
            y_gpu = model(x.cuda())
    finally:
        ssm.selective_scan_triton = real
    report.check("t2 fused for CUDA (Triton scan) vs fused for CPU, fp32", *rel_err(y_gpu, y_cpu), MODEL_TOL)
    report.check(f"t2 fused on CUDA took the Triton path ({len(calls)} scans)", None, None, 0, ok=bool(calls))
    for m in model.modules():
        if isinstance(m, ssm.SS2D):
            m.scan_impl = "chunked"
    with torch.inference_mode():
        y_chunked = model(x.cuda())
    report.check("t2 fused: CUDA chunked scan vs CPU fp32", *rel_err(y_chunked, y_cpu), MODEL_TOL)
    del model
    torch.cuda.empty_cache()


def time_batch(name, model, spec, batch, label, row, deadline, counts, min_runs) -> None:
    """Eager and CUDA-graph timing of ``model`` at one batch size, into ``row``."""
    x = torch.randn(batch, spec.in_chans, spec.resolution, spec.resolution, device="cuda")
    # one call first: kernels compile / autotune, and it tells how long a call takes
    t = time.monotonic()
    model(x)
    torch.cuda.synchronize()
    per_call = time.monotonic() - t
    timer = time_pipelined if label == "b256" else time_synced
    warmup, runs = counts
    stop = min(deadline, time.monotonic() + max(20.0, 4 * runs * per_call))
    eager = timer(lambda: model(x), warmup, runs, stop, min_runs)
    replay = capture_graph(model, x)
    ok = torch.allclose(replay(), model(x), rtol=1e-4, atol=1e-4)
    row["graph_ok"] = ok if label == "b256" else (row.get("graph_ok", True) and ok)
    graph = timer(replay, warmup, runs, stop, min_runs)
    if label == "b256":
        med, lo, hi = eager.ips(batch)
        row.update(b256_eager_ips=med, b256_eager_range=f"[{lo:,.0f}–{hi:,.0f}]")
        med, lo, hi = graph.ips(batch)
        row.update(b256_graph_ips=med, b256_graph_range=f"[{lo:,.0f}–{hi:,.0f}]")
        log(f"{name} batch {batch}: eager {row['b256_eager_ips']:,.0f} img/s ({eager.runs} runs), "
            f"graph {row['b256_graph_ips']:,.0f} img/s ({graph.runs} runs), graph==eager {ok}")
    else:
        row.update(b1_eager_ms=eager.median_ms, b1_eager_range=f"[{eager.p10_ms:.2f}–{eager.p90_ms:.2f}]",
                   b1_graph_ms=graph.median_ms, b1_graph_range=f"[{graph.p10_ms:.2f}–{graph.p90_ms:.2f}]")
        log(f"{name} batch 1: eager {eager.median_ms:.2f} ms, graph {graph.median_ms:.2f} ms "
            f"(p10 {graph.p10_ms:.2f}, p90 {graph.p90_ms:.2f}), graph==eager {ok}")
    del replay, x


LAYOUTS = {
    "cpu": "`fuse(device='cpu')`: 1x1 convs as `Pointwise` GEMMs (cuBLAS, fp32) on a channels-last view, channels-last conv weights",
    "cuda": "`fuse(device='cuda')`, what mmlab times on CUDA: NCHW `Conv2d` throughout (cuDNN, TF32 convs by default), "
            "wavelet level path",
    "cuda-cl": "the `cuda` form with channels-last conv weights (cuDNN's NHWC kernels)",
}


def layout_variant(name: str, net: torch.nn.Module, fuse) -> torch.nn.Module:
    """The fused network of ``net`` in one of :data:`LAYOUTS` (same outputs; checked by the caller)."""
    if name == "cpu":
        return fuse(net, device="cpu")
    model = fuse(net, device="cuda")
    if name == "cuda-cl":
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d):
                m.weight.data = m.weight.data.contiguous(memory_format=torch.channels_last)
    return model


def interleaved(models: dict, x: torch.Tensor, base: str, rounds: int = 3) -> tuple[dict, dict, bool]:
    """img/s per round of each model, eager and as a CUDA graph, rounds alternating the models;
    and whether every output equals ``models[base]``'s (1e-3)."""
    far = time.monotonic() + 90
    batch = x.shape[0]
    with torch.inference_mode():
        ref = models[base](x)
        same = all(torch.allclose(m(x), ref, rtol=1e-3, atol=1e-3) for m in models.values())
        replays = {key: capture_graph(m, x) for key, m in models.items()}
        eager = {key: [] for key in models}
        graph = {key: [] for key in models}
        for _ in range(rounds):
            for key, model in models.items():
                eager[key].append(time_pipelined(lambda: model(x), 2, 10, far, 10).ips(batch)[0])
                graph[key].append(time_pipelined(replays[key], 2, 10, far, 10).ips(batch)[0])
    del replays, ref
    return eager, graph, same


def ratio_cell(times: dict, key: str, base: str) -> str:
    r = sorted(v / b for v, b in zip(times[key], times[base]))
    return f"{statistics.median(r):.2f} [{r[0]:.2f}–{r[-1]:.2f}]"


def layout_ab(name: str, report: Report, get_preset, build, fuse, rounds: int = 3) -> None:
    """Interleaved A/B/C of the deploy layouts (:data:`LAYOUTS`) at the throughput batch, eager and graph."""
    a = report.args
    spec = get_preset(name)
    torch.manual_seed(0)
    net = build(spec).eval()
    models = {key: layout_variant(key, net, fuse).eval().cuda() for key in LAYOUTS}
    x = torch.randn(a.batch, spec.in_chans, spec.resolution, spec.resolution, device="cuda")
    eager, graph, same = interleaved(models, x, "cuda", rounds)
    cells = [f"{statistics.median(times[key]):,.0f}" for times in (eager, graph) for key in LAYOUTS]
    ratios = [ratio_cell(times, key, "cuda") for key in ("cpu", "cuda-cl") for times in (eager, graph)]
    report.layout_ab.append(f"| {name} | " + " | ".join(cells + ratios) + f" | {same} |")
    log(f"layout A/B {name}: eager " + ", ".join(f"{k} {statistics.median(v):,.0f}" for k, v in eager.items())
        + "; graph " + ", ".join(f"{k} {statistics.median(v):,.0f}" for k, v in graph.items()) + f" img/s; outputs equal {same}")
    if not same:
        report.check(f"{name}: the deploy layouts give the same outputs", None, None, 0, ok=False)


def pair_section(title: str, intro: str, keys: tuple[str, str], count_header: str, rows: list[str]) -> list[str]:
    """A report section for :func:`pair_ab`'s rows (nothing when there are none)."""
    if not rows:
        return []
    first, second = keys
    return ["", f"## {title}", "", f"{intro} Ratios per round, {second} ÷ {first} (> 1: `{second}` faster), median [min–max].", "",
            f"| preset | {count_header} | {first} eager | {second} eager | ratio eager | {first} graph | {second} graph "
            "| ratio graph | outputs equal |", "|---|---|---|---|---|---|---|---|---|", *rows]


def pair_ab(name: str, report: Report, spec, models: dict, count: int, rows: list[str], what: str, rounds: int = 3) -> None:
    """Two forms of one network (``models``, in column order) interleaved at the throughput batch:
    a row of :func:`pair_section` into ``rows``, and a failed check unless their outputs agree."""
    (first, _), (second, _) = models.items()
    x = torch.randn(report.args.batch, spec.in_chans, spec.resolution, spec.resolution, device="cuda")
    eager, graph, same = interleaved(models, x, first, rounds)
    med = {k: (statistics.median(eager[k]), statistics.median(graph[k])) for k in models}
    rows.append(f"| {name} | {count} | {med[first][0]:,.0f} | {med[second][0]:,.0f} | {ratio_cell(eager, second, first)} "
                f"| {med[first][1]:,.0f} | {med[second][1]:,.0f} | {ratio_cell(graph, second, first)} | {same} |")
    log(f"{what} {name} ({count}): eager {first} {med[first][0]:,.0f}, {second} {med[second][0]:,.0f}; "
        f"graph {first} {med[first][1]:,.0f}, {second} {med[second][1]:,.0f} img/s; outputs equal {same}")
    if not same:
        report.check(f"{name}: {what}, both forms give the same outputs", None, None, 0, ok=False)


def wavelet_ab(name: str, report: Report, get_preset, build, fuse, rounds: int = 3) -> None:
    """The CUDA deploy form with the Haar level folded into one grouped conv (``folded``, the CPU
    default) against the level-by-level path (``levels``, the CUDA default)."""
    from mmlab.model.blocks import FusedGlobalBranch

    spec = get_preset(name)
    torch.manual_seed(0)
    levels = fuse(build(spec).eval(), device="cuda").eval().cuda()
    folded = copy.deepcopy(levels)
    switched = 0
    for m in folded.modules():
        if isinstance(m, FusedGlobalBranch) and m.folded_level:
            m.wavelet_impl = "folded"
            switched += 1
    pair_ab(name, report, spec, {"folded": folded, "levels": levels}, switched, report.wavelet_ab, "wavelet A/B", rounds)


class ConvReLU(torch.nn.Module):
    """``relu(conv(x) + bias)`` as one cuDNN call (``torch.cudnn_convolution_relu``); the oracle is
    the conv and ReLU it replaces."""

    def __init__(self, conv: torch.nn.Conv2d) -> None:
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.conv
        return torch.cudnn_convolution_relu(x, c.weight, c.bias, c.stride, c.padding, c.dilation, c.groups)


def fuse_conv_relu(model: torch.nn.Module) -> int:
    """Replace, in place, each conv that a ReLU directly follows (the stem's ``Sequential``, the
    FFNs' ``pw1 → act``, PatchMerging's ``conv1 → act1`` and ``conv2 → act2``) by :class:`ConvReLU`
    and the ReLU by an identity; how many were replaced."""
    from mmlab.model.layers import FFN, PatchMerging

    pairs = []
    for m in model.modules():
        if isinstance(m, torch.nn.Sequential):
            names = list(m._modules)
            pairs += [(m, a, b) for a, b in zip(names, names[1:])
                      if isinstance(m._modules[a], torch.nn.Conv2d) and isinstance(m._modules[b], torch.nn.ReLU)]
        elif isinstance(m, FFN):
            pairs.append((m, "pw1", "act"))
        elif isinstance(m, PatchMerging):
            pairs += [(m, "conv1", "act1"), (m, "conv2", "act2")]
    count = 0
    for parent, conv_name, relu_name in pairs:
        conv = getattr(parent, conv_name)
        if isinstance(conv, torch.nn.Conv2d) and not isinstance(conv.padding, str):
            setattr(parent, conv_name, ConvReLU(conv))
            setattr(parent, relu_name, torch.nn.Identity())
            count += 1
    return count


def fusion_ab(name: str, report: Report, get_preset, build, fuse, rounds: int = 3) -> None:
    """The CUDA deploy form against the same network with conv + bias + ReLU as one cuDNN call
    (:func:`fuse_conv_relu`). The b2 profile of the first H100 run gave the separate bias ``add_``
    12 % and ReLU 6 % of the GPU time."""
    spec = get_preset(name)
    torch.manual_seed(0)
    base = fuse(build(spec).eval(), device="cuda").eval().cuda()
    fused = copy.deepcopy(base)
    replaced = fuse_conv_relu(fused)
    pair_ab(name, report, spec, {"base": base, "conv_relu": fused}, replaced, report.fusion_ab, "conv+ReLU A/B", rounds)


def profile_preset(name: str, report: Report, get_preset, build, fuse, steps: int = 3) -> None:
    """Per-kernel GPU time of eager forwards at the throughput batch (torch.profiler), top rows."""
    from torch.profiler import ProfilerActivity, profile

    a = report.args
    spec = get_preset(name)
    torch.manual_seed(0)
    model = fuse(build(spec).eval(), device="cuda").eval().cuda()
    x = torch.randn(a.batch, spec.in_chans, spec.resolution, spec.resolution, device="cuda")
    with torch.inference_mode():
        for _ in range(3):
            model(x)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(steps):
                model(x)
            torch.cuda.synchronize()
    table = prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=25, max_name_column_width=70)
    report.profiles.append(f"### {name}, batch {a.batch}, {steps} eager forwards\n\n```\n{table}\n```")
    log(f"profile {name}:\n{table}")


def bench_preset(name: str, report: Report, get_preset, build, fuse, deadline: float) -> None:
    a = report.args
    row = report.rows.setdefault(name, {})
    spec = get_preset(name)
    row["img"] = spec.resolution
    torch.manual_seed(0)
    model = fuse(build(spec).eval(), device="cuda").eval().cuda()
    torch.cuda.reset_peak_memory_stats()
    w256, r256 = (2, 10) if a.quick else (5, 30)
    w1, r1 = (5, 30) if a.quick else (20, 50)
    min_runs = 10 if a.quick else 30
    with torch.inference_mode():
        for batch, label in ((a.batch, "b256"), (1, "b1")):
            try:
                time_batch(name, model, spec, batch, label, row, deadline, (w256, r256) if label == "b256" else (w1, r1), min_runs)
            except Exception:  # noqa: BLE001 - e.g. out of memory at batch 256: keep batch 1
                row["error"] = True
                report.errors.append(f"{name} batch {batch}:\n{traceback.format_exc()}")
                print(traceback.format_exc(), flush=True)
                torch.cuda.empty_cache()
    row["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    del model
    torch.cuda.empty_cache()


def compile_child(args) -> None:
    """Child process: compile one preset, print one ``@@{json}`` line per result."""
    get_preset, build, fuse, _ = import_mmlab()
    set_tf32(args.tf32 == "on")
    torch.backends.cudnn.benchmark = True
    if args.inductor_layout_opt == "off":
        import torch._inductor.config as inductor_config

        inductor_config.layout_optimization = False
    name = args.compile_child
    spec = get_preset(name)
    torch.manual_seed(0)
    model = fuse(build(spec).eval(), device="cuda").eval().cuda()
    compiled = torch.compile(model, mode=args.compile_mode, dynamic=False)  # one static graph per batch size
    warm, runs = (3, 10) if args.quick else (5, 30)
    with torch.no_grad():
        for batch, label in ((1, "b1"), (args.batch, "b256")):
            x = torch.randn(batch, spec.in_chans, spec.resolution, spec.resolution, device="cuda")
            t = time.monotonic()
            y = compiled(x)
            torch.cuda.synchronize()
            compile_s = time.monotonic() - t
            ok = torch.allclose(y.float(), model(x).float(), rtol=1e-3, atol=1e-3)
            far = time.monotonic() + 60
            timing = (time_synced if label == "b1" else time_pipelined)(lambda: compiled(x), warm, runs, far, 10)
            out = {"label": label, "compile_s": compile_s, "ok": bool(ok), "median_ms": timing.median_ms,
                   "p10_ms": timing.p10_ms, "p90_ms": timing.p90_ms, "runs": timing.runs, "batch": batch}
            print("@@" + json.dumps(out), flush=True)
            del x, y


def run_compile(name: str, report: Report, timeout_s: float) -> None:
    a = report.args
    row = report.rows.setdefault(name, {})
    cmd = [sys.executable, str(Path(__file__).resolve()), "--compile-child", name, "--compile-mode", a.compile_mode,
           "--tf32", a.tf32, "--batch", str(a.batch), "--inductor-layout-opt", a.inductor_layout_opt] + (["--quick"] if a.quick else [])
    log(f"{name}: torch.compile(mode={a.compile_mode!r}) in a child process, timeout {timeout_s:.0f} s")
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, cwd=ROOT)
        stdout, stderr, status = done.stdout, done.stderr, "ok" if done.returncode == 0 else f"exit {done.returncode}"
    except subprocess.TimeoutExpired as e:
        def text(s):
            return s.decode(errors="replace") if isinstance(s, bytes) else (s or "")
        stdout, stderr, status = text(e.stdout), text(e.stderr), f"timed out after {timeout_s:.0f} s"
    for line in stdout.splitlines():
        if line.startswith("@@"):
            r = json.loads(line[2:])
            row[f"{r['label']}_compile_s"] = r["compile_s"]
            row["compiled_ok"] = row.get("compiled_ok", True) and r["ok"]
            if r["label"] == "b1":
                row["b1_compiled_ms"] = r["median_ms"]
            else:
                row["b256_compiled_ips"] = 1e3 * r["batch"] / r["median_ms"]
            log(f"{name} compiled {r['label']}: compile {r['compile_s']:.1f} s, median {r['median_ms']:.3f} ms "
                f"({r['runs']} runs), output ok {r['ok']}")
    row["compile_status"] = status
    if status != "ok":
        tail = "\n".join(stderr.strip().splitlines()[-15:])
        report.errors.append(f"{name} torch.compile: {status}\n{tail}")
        log(f"{name} torch.compile: {status}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "results" / "gpu.md"), help="markdown report (default results/gpu.md)")
    parser.add_argument("--presets", default=",".join(PRESETS), help="comma list (default all six)")
    parser.add_argument("--quick", action="store_true", help="fewer warm-up and timed runs")
    parser.add_argument("--budget-s", type=float, default=240.0, help="wall-clock budget; compile and slow steps are skipped past it")
    parser.add_argument("--batch", type=int, default=256, help="throughput batch size")
    parser.add_argument("--compile-mode", default="reduce-overhead", choices=["reduce-overhead", "max-autotune-no-cudagraphs", "default"])
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    parser.add_argument("--layout-presets", default="t2,b1,b2", help="presets for the deploy-layout A/B ('' skips it)")
    parser.add_argument("--wavelet-presets", default="", help="presets for the wavelet-path A/B ('' skips it)")
    parser.add_argument("--fusion-presets", default="", help="presets for the conv+ReLU cuDNN-fusion A/B ('' skips it)")
    parser.add_argument("--inductor-layout-opt", choices=["default", "off"], default="default",
                        help="torch._inductor.config.layout_optimization for compile (off: keep NCHW)")
    parser.add_argument("--profile-presets", default="b2", help="presets to profile at the throughput batch ('' skips it)")
    parser.add_argument("--compile-presets", default=None, help="presets to torch.compile (default: all timed, while the budget lasts)")
    parser.add_argument("--tf32", choices=["default", "on", "off"], default="default",
                        help="TF32 while timing: torch's defaults (cuDNN convs on, matmul off), on, or off (strict fp32)")
    parser.add_argument("--reference", default=None, help="official_gpu_h100.tsv (default ../shared/reference/)")
    parser.add_argument("--compile-child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if not torch.cuda.is_available():
        print("no CUDA: skipped", flush=True)
        return 0
    if args.compile_child:
        compile_child(args)
        return 0

    presets = [p.strip() for p in args.presets.split(",") if p.strip()]
    deadline = T0 + args.budget_s
    reference, reference_src = load_reference(args.reference)
    report = Report(args, Path(args.out), reference, reference_src)
    tf32_default = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    props = torch.cuda.get_device_properties(0)
    try:
        import triton

        triton_version = triton.__version__
    except Exception:  # noqa: BLE001
        triton_version = "not importable"
    report.header = [
        "command: `python " + " ".join(shlex.quote(s) for s in sys.argv) + "`",
        f"date: {dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"device: {torch.cuda.get_device_name(0)} ({props.total_memory / 2**30:.0f} GiB, sm_{props.major}{props.minor}, "
        f"{props.multi_processor_count} SMs)",
        f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, triton {triton_version}, "
        f"python {sys.version.split()[0]}",
        "model: fp32, `fuse(build(spec).eval(), device='cuda')` (BatchNorm folded, NCHW convs), random init and input at the preset's resolution, "
        "`torch.inference_mode` (compiled: `torch.no_grad`)",
        f"timing settings: TF32 {args.tf32} (matmul {tf32_default[0] if args.tf32 == 'default' else args.tf32 == 'on'}, "
        f"cuDNN conv {tf32_default[1] if args.tf32 == 'default' else args.tf32 == 'on'}), cudnn.benchmark on; checks run with TF32 off",
        "timing: CUDA events; throughput: back-to-back calls, one event between calls; latency: synchronised per call; "
        + ("--quick: 10 timed runs (b256) / 30 (b1)" if args.quick else "warm-up, then median of 30 (b256) / 50 (b1) runs")
        + "; p10–p90 over the runs",
    ]
    log(f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}, presets {presets}, report -> {report.out}")
    report.write()

    try:
        get_preset, build, fuse, scan_module = import_mmlab()
    except Exception:  # noqa: BLE001
        report.errors.append("import mmlab:\n" + traceback.format_exc())
        report.status = "failed: could not import mmlab"
        report.write()
        print(traceback.format_exc(), flush=True)
        return 1

    # 1. correctness, strict fp32
    set_tf32(False)
    for step, fn in (("scan check", lambda: check_scan(report, scan_module)),
                     ("model check", lambda: check_model(report, get_preset, build, fuse))):
        try:
            log(f"{step} ...")
            fn()
        except Exception:  # noqa: BLE001
            report.check(f"{step} raised", None, None, 0, ok=False)
            report.errors.append(f"{step}:\n{traceback.format_exc()}")
            print(traceback.format_exc(), flush=True)
        report.write()
    if args.tf32 == "default":
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32_default
    else:
        set_tf32(args.tf32 == "on")
    torch.backends.cudnn.benchmark = True

    # 2. the scan alone
    try:
        time_scan(report, scan_module, args.quick)
    except Exception:  # noqa: BLE001
        report.errors.append(f"scan timing:\n{traceback.format_exc()}")
        print(traceback.format_exc(), flush=True)
    report.write()

    # 2b. the A/Bs on CUDA, interleaved; 2c. where the time goes
    steps = ((args.layout_presets, "layout A/B", layout_ab), (args.wavelet_presets, "wavelet A/B", wavelet_ab),
             (args.fusion_presets, "conv+ReLU A/B", fusion_ab), (args.profile_presets, "profile", profile_preset))
    for preset_list, label, step in steps:
        for name in [p.strip() for p in preset_list.split(",") if p.strip()]:
            try:
                step(name, report, get_preset, build, fuse)
            except Exception:  # noqa: BLE001
                report.errors.append(f"{label} {name}:\n{traceback.format_exc()}")
                print(traceback.format_exc(), flush=True)
            torch.cuda.empty_cache()  # the step's networks and graphs are gone with its frame
            report.write()

    # 3. eager and CUDA graph, every preset; keep a reserve for compile
    for i, name in enumerate(presets):
        left = len(presets) - i
        reserve = 0 if args.no_compile else 60
        share = (deadline - reserve - time.monotonic()) / left
        log(f"{name}: eager and CUDA graph (about {max(share, 0):.0f} s of budget)")
        try:
            bench_preset(name, report, get_preset, build, fuse, time.monotonic() + max(share, 10.0))
        except Exception:  # noqa: BLE001
            report.rows.setdefault(name, {})["error"] = True
            report.errors.append(f"{name}:\n{traceback.format_exc()}")
            print(traceback.format_exc(), flush=True)
            torch.cuda.empty_cache()
        report.status = f"running: {i + 1}/{len(presets)} presets timed"
        report.write()
        thr, lat = report.goals(name, report.rows.get(name, {}))
        log(f"{name}: throughput goal {thr}; latency goal {lat}")

    # 4. torch.compile while time is left (each in a child process with a timeout)
    if not args.no_compile:
        to_compile = presets if args.compile_presets is None else [p.strip() for p in args.compile_presets.split(",") if p.strip()]
        for name in to_compile:
            left = deadline - time.monotonic()
            if report.rows.get(name, {}).get("error"):
                report.rows[name]["compile_status"] = "skipped: eager timing failed"
                continue
            if left < 45:
                report.rows.setdefault(name, {})["compile_status"] = "skipped: time budget"
                log(f"{name}: torch.compile skipped ({left:.0f} s of budget left)")
                continue
            try:
                run_compile(name, report, timeout_s=left - 5)
            except Exception:  # noqa: BLE001
                report.rows.setdefault(name, {})["compile_status"] = "failed"
                report.errors.append(f"{name} torch.compile:\n{traceback.format_exc()}")
            report.write()

    report.status = "complete" + ("; A CORRECTNESS CHECK FAILED" if report.failed else "")
    report.header.append(f"total wall time: {time.monotonic() - T0:.0f} s")
    report.write()
    print()
    print(report.render(), flush=True)
    log(f"wrote {report.out}")
    if report.failed:
        print("!!!!!!!! at least one correctness check FAILED (see the table above) !!!!!!!!", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
