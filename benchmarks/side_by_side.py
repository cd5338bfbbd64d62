"""mmlab against the authors' MobileMamba, interleaved in one process: batch-1 CPU latency per preset.

    python benchmarks/side_by_side.py --official /tmp/official [--presets t2,t4,s6,b1,b2,b4]
        [--rounds 30] [--threads 2] [--official-scan authors|mmlab] [--runtime eager|compile|onnxruntime]
        [--seed 0] [--json rows.json]

Absolute CPU times do not carry across machines or torch builds (../shared/reference/README.md):
the only fair comparison with the authors' code is in the same process, same input, same weights,
timed alternately. That is what this script does, per preset:

1. builds mmlab's network (``mmlab.build``), gives every tensor that was initialised to one repeated
   value (BatchNorm affine and running statistics, the zero-initialised "γ0" BatchNorms, A_logs, Ds,
   the scales, the head bias) random values so that no branch is zero, and loads the same weights
   into the authors' network through mmlab's checkpoint converter (``to_official_state_dict``,
   strict load);
2. checks the unfused pair in eval mode on one random image at the preset's resolution, batch 1:
   the network output and the output of every mixer's SS2D, global branch and local branch
   (paired by the checkpoint key map). The output alone would not see a wrong scan: at these
   weights the scan's recurrent term is a few per cent of its SS2D's output and about a thousandth
   of the logits; the SS2D's own output shows it;
3. fuses both: mmlab's ``mmlab.fuse`` (the deploy form ``mmlab.meter`` times: every BatchNorm folded,
   and whatever further folding mmlab does, e.g. the SS2D output scale into its out_proj) and the
   authors' ``replace_batchnorm`` (what their own speed test runs: every Conv-BN, SS2D's in / out
   projections included, the local branch's two Conv-BN pairs and the head's BN-Linear; the SS2D's
   LayerNorm stays). The printout counts the BatchNorms left on each side. Then checks the fused
   pair the same way (network output, global and local branches). Every check is
   max |mmlab - authors| / max |authors| <= ``--tolerance`` (1e-5); the table shows the fused
   network's output difference;
4. times one forward pass of each, alternately, for ``--rounds`` rounds after a warm-up
   (``mmlab.meter.latency.time_interleaved``: a fresh random order every round), under
   ``torch.inference_mode`` with ``torch.set_num_threads(--threads)``; mmlab's side in ``--runtime``
   (default eager; ``compile`` / ``onnxruntime`` are prepared, and their outputs checked against
   eager, before the timing, and the time that took is reported apart); reports medians with p10-p90
   and the median over rounds of the per-round ratio mmlab / authors with a bootstrap 95 % interval.

It prints one Markdown table and, on its last line, the geometric mean of the ratios (below 1:
mmlab is faster). ``--json PATH`` writes the rows (per-round samples and environment included).
The exit status is 1 if some preset fails a check (its row is marked ✗).

The authors' code (lewandofskee/MobileMamba; ../shared/reference describes commit 0980f48) is never
copied into this repository: it is imported from ``--official`` at run time. Only ``model/`` is
needed. To get it::

    git clone https://github.com/lewandofskee/MobileMamba /tmp/official
    # or from a bare mirror (e.g. the one `fetch github:lewandofskee/MobileMamba` puts under
    # /work/.mirror/lewandofskee+MobileMamba/repo). That mirror lacks some blobs under weights/:
    # archive model/ only (git still prints "error: invalid object ... weights/...", but exits 0
    # with model/ complete):
    mkdir -p /tmp/official
    git --git-dir=/work/.mirror/lewandofskee+MobileMamba/repo archive HEAD model | tar -x -C /tmp/official
    # or a work tree, where every blob is present: git --git-dir=<mirror> worktree add /tmp/official

Their ``model/mobilemamba/mobilemamba.py`` is imported with these stand-ins in ``sys.modules``, for
the import only (the previous entries are put back afterwards):

- ``model``: a bare package with a ``MODEL`` registry whose ``register_module`` returns the function.
  Their ``model/__init__.py`` imports timm's private registry / hub helpers and every model file of
  their training framework (teacher networks, factories), none of which the network needs.
- ``model.lib_mamba``: a bare package; its ``__init__.py`` imports their VMamba classifier.
- ``triton`` and ``triton.language``: ``jit`` returns the function, ``cdiv``, ``constexpr``. Their
  cross-scan Triton kernels run only on CUDA tensors (on CPU their pure-PyTorch ``CrossScanF`` /
  ``CrossMergeF`` run); without triton their module-level ``@triton.jit`` raises ``NameError``, and a
  real triton would make the import depend on its version. Their ``csm_tritonk2.py`` also sets
  ``TRITON_INTERPRET=1`` in the environment at import: the previous value is restored.

Nothing else is stubbed: timm (SqueezeExcite, DropPath, trunc_normal_), PyWavelets and fvcore are
mmlab's own dependencies and are imported for real. Their compiled CUDA selective scans
(``selective_scan_cuda_oflex`` / ``_core`` / mamba's ``selective_scan_cuda``) are not installed, which
their ``csms6s.py`` tolerates; on CPU their SS2D never calls them anyway.

The selective scan on the authors' side (``--official-scan``):

- ``authors`` (default): their own ``selective_scan_torch``, the pure-PyTorch scan their code runs on
  any CPU (a Python loop over the L positions; ../shared/docs/MOBILEMAMBA.md F.3). This is their code
  as a CPU user gets it, the same path as ../shared/reference/official_cpu_latency.tsv.
- ``mmlab``: their SS2D calls mmlab's ``selective_scan_fast`` (the chunked scan mmlab's own network
  runs on CPU) instead, so that the ratio is about the rest of the network only.

On the mmlab side the network is exactly what ``mmlab measure`` times (fused, its own scan).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import math
import os
import sys
import time
import types
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

import mmlab.model  # noqa: F401  (before the authors' code: mmlab's scan reads TRITON_INTERPRET at import)
from mmlab.meter.env import environment
from mmlab.meter.latency import Interleaved, host_probe, probe_note, time_interleaved
from mmlab.meter.runtimes import RUNTIMES
from mmlab.model import build, fuse, to_official_state_dict
from mmlab.model.checkpoint import official_key_map
from mmlab.model.scan import selective_scan_fast
from mmlab.spec.arch import ArchSpec
from mmlab.spec.presets import PAPER_PRESETS, get_preset

OFFICIAL_SCANS = ("authors", "mmlab")
# Inner modules whose outputs are compared (mmlab's names; the authors' come from the checkpoint key map):
# the SS2D, the whole global branch (WTE-Mamba) and the local branch of every mixer.
INNER_UNFUSED = (".global_op.ssm", ".global_op", ".local_op")
INNER_FUSED = (".global_op", ".local_op")
# Third-party modules their model files import (all mmlab dependencies), imported before the stubs go in.
THEIR_REAL_IMPORTS = ("pywt", "pywt.data", "timm.layers", "timm.models.layers", "timm.models.vision_transformer",
                      "fvcore.nn", "torch.utils.checkpoint")
SCAN_NOTE = {
    "authors": "authors' side runs their own pure-PyTorch selective scan (selective_scan_torch, a loop over L), "
               "as their code does on any CPU",
    "mmlab": "authors' side runs mmlab's selective_scan_fast instead of their scan (the ratio is about the rest "
             "of the network)",
}
STUB_NOTE = ("authors' code imported with stubs for `model` / `model.lib_mamba` (their package __init__s: "
             "training framework, VMamba) and `triton` (their cross-scan kernels, CUDA only); "
             "timm, pywt, fvcore real")


class _Registry:
    """Stand-in for their ``util.registry.Registry``: ``register_module`` only has to return the function."""

    def __init__(self) -> None:
        self.name_to_fn: dict[str, Any] = {}

    def register_module(self, fn: Any, name: str | None = None) -> Any:
        self.name_to_fn[name or fn.__name__] = fn
        return fn


def _package(name: str, path: Path) -> types.ModuleType:
    """An empty package whose submodules are looked up in ``path`` (its ``__init__.py`` is not run)."""
    module = types.ModuleType(name)
    module.__path__ = [str(path)]
    module.__package__ = name
    return module


def _triton_stub() -> tuple[types.ModuleType, types.ModuleType]:
    """``triton`` / ``triton.language`` with what their modules touch at import time."""
    triton = types.ModuleType("triton")
    language = types.ModuleType("triton.language")
    language.constexpr = object  # only read in the kernels' annotations
    triton.jit = lambda fn=None, **kwargs: fn if fn is not None else (lambda f: f)
    triton.cdiv = lambda a, b: -(-a // b)
    triton.language = language
    return triton, language


def import_official(root: Path) -> tuple[types.ModuleType, types.ModuleType, types.ModuleType]:
    """Import the authors' ``mobilemamba``, ``vmambanew`` and ``csms6s`` modules from a work tree.

    The stand-ins of the module docstring are in ``sys.modules`` during the import only; every
    entry the import added or replaced is put back as it was, and so is ``TRITON_INTERPRET``.
    """
    model_dir = root / "model"
    if not (model_dir / "mobilemamba" / "mobilemamba.py").is_file():
        raise ValueError(f"--official: {root} has no model/mobilemamba/mobilemamba.py; "
                         "expected a work tree of lewandofskee/MobileMamba (see this script's docstring)")
    triton, language = _triton_stub()
    stubs = {"model": _package("model", model_dir), "model.lib_mamba": _package("model.lib_mamba", model_dir / "lib_mamba"),
             "triton": triton, "triton.language": language}
    stubs["model"].MODEL = _Registry()
    # Their import prints "Can not import selective_scan_cuda_oflex..." and raises deprecation
    # warnings (timm.models.layers, torch.cuda.amp.custom_fwd): not ours to show.
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        # The real libraries they import, first: nothing but their own files runs while the stubs are in.
        for name in THEIR_REAL_IMPORTS:
            importlib.import_module(name)
        is_stubbed = lambda name: name in stubs or name.startswith("model.")  # noqa: E731
        saved_modules = {name: module for name, module in sys.modules.items() if is_stubbed(name)}
        saved_interpret = os.environ.get("TRITON_INTERPRET")
        sys.modules.update(stubs)
        try:
            mobilemamba = importlib.import_module("model.mobilemamba.mobilemamba")
            vmambanew = importlib.import_module("model.lib_mamba.vmambanew")
            csms6s = importlib.import_module("model.lib_mamba.csms6s")
        finally:
            for name in [name for name in sys.modules if is_stubbed(name)]:
                del sys.modules[name]
            sys.modules.update(saved_modules)
            if saved_interpret is None:
                os.environ.pop("TRITON_INTERPRET", None)
            else:
                os.environ["TRITON_INTERPRET"] = saved_interpret
    return mobilemamba, vmambanew, csms6s


def _mmlab_scan_for_authors(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                            D: torch.Tensor | None = None, delta_bias: torch.Tensor | None = None,
                            delta_softplus: bool = True, oflex: bool = True, backend: str | None = None) -> torch.Tensor:
    """Their ``selective_scan_fn`` signature (same tensor layouts), mmlab's chunked scan inside; fp32 out, as theirs."""
    return selective_scan_fast(u, delta, A, B, C, D=D, delta_bias=delta_bias, delta_softplus=delta_softplus)


@torch.no_grad()
def randomize_constants(model: nn.Module, generator: torch.Generator) -> int:
    """Give random values to every float tensor initialised to one repeated value; returns how many.

    Without this the zero-initialised BatchNorms ("γ0") make most branches exactly zero and the
    output check would not see their weights. Running variances get U(0.5, 1.5), everything else
    adds 0.1·N(0, 1). Frozen parameters (the fixed wavelet filters) and integer buffers are left alone.
    """
    changed = 0
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if not tensor.is_floating_point() or (isinstance(tensor, nn.Parameter) and not tensor.requires_grad):
            continue
        if tensor.numel() > 1 and not bool((tensor == tensor.flatten()[0]).all()):
            continue  # already random
        if name.endswith("running_var"):
            tensor.uniform_(0.5, 1.5, generator=generator)
        else:
            tensor.add_(0.1 * torch.randn(tensor.shape, generator=generator))
        changed += 1
    return changed


def batchnorms(model: nn.Module) -> int:
    """Number of BatchNorm modules left in ``model`` (0 once fused)."""
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def authors_network(name: str, mobilemamba: types.ModuleType, state: dict[str, torch.Tensor], fused: bool) -> nn.Module:
    """The authors' network for preset ``name`` with ``state`` loaded (strict), eval, fused by their
    ``replace_batchnorm`` if asked."""
    model = getattr(mobilemamba, f"MobileMamba_{name.upper()}")()
    model.load_state_dict(state, strict=True)
    model.eval()
    if fused:
        mobilemamba.replace_batchnorm(model)  # in place
        model.eval()  # the modules fuse() created are in training mode (no effect on convs, but be explicit)
    return model


def module_pairs(spec: ArchSpec, suffixes: tuple[str, ...]) -> dict[str, str]:
    """mmlab module name -> the authors' name, for mmlab's modules whose names end in one of ``suffixes``.

    Read off the checkpoint key map: a module owning the key ``M.rest`` (mmlab) / ``M'.rest``
    (authors, same ``rest``) is ``M`` on one side and ``M'`` on the other.
    """
    pairs: dict[str, str] = {}
    for key, official in official_key_map(spec).items():
        parts = key.split(".")
        for i in range(1, len(parts)):
            module, rest = ".".join(parts[:i]), ".".join(parts[i:])
            if module.endswith(suffixes) and module not in pairs and official.endswith("." + rest):
                pairs[module] = official[: -len(rest) - 1]
    return pairs


def rel_diff(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    """max |ours - theirs| / max |theirs|."""
    if ours.shape != theirs.shape:
        raise ValueError(f"outputs: mmlab's shape {tuple(ours.shape)} differs from the authors' {tuple(theirs.shape)}")
    return float((ours - theirs).abs().max() / theirs.abs().max())


def check_outputs(ours: nn.Module, theirs: nn.Module, pairs: dict[str, str], x: torch.Tensor) -> tuple[float, dict[str, float]]:
    """Run both on ``x``: the output's relative difference, and each paired inner module's.

    The output alone would miss a wrong scan: at these weights the scan's recurrent term is a few
    per cent of an SS2D's output and a thousandth of the logits, below the tolerance; an SS2D's own
    output shows it. Pairs missing on either side (a fused form that renames a module) are skipped.
    """
    ours_modules, theirs_modules = dict(ours.named_modules()), dict(theirs.named_modules())
    pairs = {o: t for o, t in pairs.items() if o in ours_modules and t in theirs_modules}
    got_ours: dict[str, torch.Tensor] = {}
    got_theirs: dict[str, torch.Tensor] = {}
    hooks = [ours_modules[o].register_forward_hook(lambda m, i, out, o=o: got_ours.__setitem__(o, out)) for o in pairs]
    hooks += [theirs_modules[t].register_forward_hook(lambda m, i, out, t=t: got_theirs.__setitem__(t, out)) for t in pairs.values()]
    try:
        with torch.inference_mode():
            output = rel_diff(ours(x), theirs(x))
    finally:
        for hook in hooks:
            hook.remove()
    return output, {o: rel_diff(got_ours[o], got_theirs[t]) for o, t in pairs.items()}


def worst(diffs: dict[str, float]) -> tuple[str, float]:
    """The inner module with the largest difference (``("", 0.0)`` if none was compared)."""
    return max(diffs.items(), key=lambda item: item[1], default=("", 0.0))


def compare(name: str, mobilemamba: types.ModuleType, rounds: int, threads: int, seed: int,
            runtime: str = "eager") -> dict[str, Any]:
    """Build, check and time one preset, mmlab's side in ``runtime`` (the authors' side is always
    their eager network); returns its row."""
    spec = get_preset(name)
    cfg = getattr(mobilemamba, f"CFG_MobileMamba_{name.upper()}")
    if cfg["img_size"] != spec.resolution:
        raise ValueError(f"preset {name}: mmlab's resolution {spec.resolution} differs from the authors' img_size {cfg['img_size']}")
    torch.manual_seed(seed)
    ours = build(spec).eval()
    randomized = randomize_constants(ours, torch.Generator().manual_seed(seed))
    state = to_official_state_dict(ours, spec)
    x = torch.randn(1, spec.in_chans, spec.resolution, spec.resolution, generator=torch.Generator().manual_seed(seed + 1))

    # Unfused, both sides the same modules: the weight transfer and every branch, the scan included.
    theirs = authors_network(name, mobilemamba, state, fused=False)
    out_unfused, inner_unfused = check_outputs(ours, theirs, module_pairs(spec, INNER_UNFUSED), x)
    del theirs
    # Fused, the networks that are timed. mmlab's deploy form may fold more than BatchNorm (the
    # SS2D's output scale, for one), so only modules whose output is the same by definition are paired.
    ours = fuse(ours)  # a fused copy, eval: what mmlab.meter times
    theirs = authors_network(name, mobilemamba, state, fused=True)
    out_fused, inner_fused = check_outputs(ours, theirs, module_pairs(spec, INNER_FUSED), x)

    with torch.inference_mode():
        start = time.perf_counter()
        run_ours = RUNTIMES[runtime].prepare(ours, x)  # compile / export and its output check: never timed
        prepare_s = time.perf_counter() - start
        # Base first: ratios[0] is mmlab / authors, round by round.
        result: Interleaved = time_interleaved([lambda: theirs(x), run_ours], rounds=rounds, min_rounds=rounds,
                                               max_time_s=math.inf, seed=seed)
    RUNTIMES[runtime].free()
    authors, mmlab_t, ratio = result.timing(0), result.timing(1), result.ratios[0]
    worst_unfused, worst_fused = worst(inner_unfused), worst(inner_fused)
    return {
        "preset": name,
        "resolution": spec.resolution,
        "mmlab_ms": mmlab_t.median_ms, "mmlab_p10_ms": mmlab_t.p10_ms, "mmlab_p90_ms": mmlab_t.p90_ms,
        "authors_ms": authors.median_ms, "authors_p10_ms": authors.p10_ms, "authors_p90_ms": authors.p90_ms,
        "ratio_mmlab_over_authors": ratio.ratio, "ratio_low": ratio.low, "ratio_high": ratio.high, "ratio_level": ratio.level,
        "rounds": result.rounds, "compare_s": result.seconds, "runtime": runtime, "prepare_s": prepare_s,
        "max_rel_diff": out_fused,
        "max_rel_diff_unfused": out_unfused,
        "inner_modules_unfused": len(inner_unfused), "inner_worst_unfused": worst_unfused[0],
        "inner_max_rel_diff_unfused": worst_unfused[1],
        "inner_modules_fused": len(inner_fused), "inner_worst_fused": worst_fused[0], "inner_max_rel_diff_fused": worst_fused[1],
        "randomized_tensors": randomized, "bn_left_mmlab": batchnorms(ours), "bn_left_authors": batchnorms(theirs),
        "mmlab_samples_ms": list(result.samples_ms[1]), "authors_samples_ms": list(result.samples_ms[0]),
        **environment("cpu", threads, "float32", 1, spec.resolution, runtime, runtime=runtime),
    }


def largest_diff(row: dict[str, Any]) -> float:
    """The largest of a row's output and inner-module differences."""
    return max(row["max_rel_diff"], row["max_rel_diff_unfused"], row["inner_max_rel_diff_unfused"], row["inner_max_rel_diff_fused"])


def table(rows: list[dict[str, Any]], tolerance: float) -> list[str]:
    """The Markdown table of the rows; a ✗ marks a row with any difference (output or inner module) above ``tolerance``."""
    runtime = rows[0]["runtime"] if rows else "eager"
    lines = [
        f"| preset | px | mmlab {runtime} ms (median, p10-p90) | authors ms (median, p10-p90) | mmlab/authors (95% CI) | max rel diff |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        flag = "" if largest_diff(r) <= tolerance else " ✗"
        lines.append(
            f"| {r['preset']} | {r['resolution']} | {r['mmlab_ms']:.1f} ({r['mmlab_p10_ms']:.1f}-{r['mmlab_p90_ms']:.1f}) | "
            f"{r['authors_ms']:.1f} ({r['authors_p10_ms']:.1f}-{r['authors_p90_ms']:.1f}) | "
            f"{r['ratio_mmlab_over_authors']:.3f} ({r['ratio_low']:.3f}-{r['ratio_high']:.3f}) | {r['max_rel_diff']:.1e}{flag} |"
        )
    return lines


def parse_presets(text: str) -> list[str]:
    """``"t2,s6"`` -> ``["t2", "s6"]``; only the authors' six presets are allowed."""
    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    for n in names:
        if n not in PAPER_PRESETS:
            raise ValueError(f"--presets: {n!r} is not allowed; allowed: {', '.join(PAPER_PRESETS)} (the authors' presets)")
    if not names:
        raise ValueError(f"--presets: {text!r} names no preset; allowed: {', '.join(PAPER_PRESETS)}")
    return names


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official", type=Path, required=True, help="work tree of lewandofskee/MobileMamba (model/ is enough)")
    parser.add_argument("--presets", default=",".join(PAPER_PRESETS), help="comma-separated, of t2,t4,s6,b1,b2,b4")
    parser.add_argument("--rounds", type=int, default=30, help="timed rounds per preset (one forward of each network per round)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--official-scan", choices=OFFICIAL_SCANS, default="authors",
                        help="selective scan on the authors' side: their own CPU scan, or mmlab's")
    parser.add_argument("--runtime", choices=[n for n, r in RUNTIMES.items() if "cpu" in r.devices], default="eager",
                        help="how mmlab's side runs (the authors' side is their eager network); compile / export "
                             "time is reported apart, never timed")
    parser.add_argument("--seed", type=int, default=0, help="seeds weights, input and block order")
    parser.add_argument("--tolerance", type=float, default=1e-5, help="largest allowed max|diff| / max|authors output|")
    parser.add_argument("--json", type=Path, default=None, help="write the rows here (JSON list)")
    args = parser.parse_args()
    try:
        presets = parse_presets(args.presets)
        if args.rounds < 1:
            raise ValueError(f"--rounds: {args.rounds} is not allowed; must be >= 1")
        if args.threads < 1:
            raise ValueError(f"--threads: {args.threads} is not allowed; must be >= 1")
        mobilemamba, vmambanew, csms6s = import_official(args.official.resolve())
    except ValueError as err:
        parser.error(str(err))
    if args.official_scan == "mmlab":
        vmambanew.selective_scan_fn = _mmlab_scan_for_authors  # their SS2D looks the name up at every call
    torch.set_num_threads(args.threads)

    cuda_scans = [n for n in ("WITH_SELECTIVESCAN_OFLEX", "WITH_SELECTIVESCAN_CORE", "WITH_SELECTIVESCAN_MAMBA") if getattr(csms6s, n, False)]
    load_before = os.getloadavg()[0]
    probe_before = host_probe(args.threads).median_ms
    print(f"mmlab vs the authors' MobileMamba ({args.official}), batch 1, float32, CPU, {args.threads} threads, "
          f"torch {torch.__version__}, {args.rounds} interleaved rounds per preset", flush=True)
    print(f"- scan: mmlab's side runs its own scan, as mmlab.meter times it; {SCAN_NOTE[args.official_scan]}", flush=True)
    print(f"- {STUB_NOTE}; their compiled CUDA scans importable: {', '.join(cuda_scans) or 'none'} (unused on CPU)", flush=True)
    print("- weights: mmlab's random init with every constant-initialised tensor randomised, loaded into the authors' "
          "network (strict); checked unfused, then fused on both sides (mmlab.fuse: BatchNorm and whatever else it folds; their replace_batchnorm)", flush=True)

    rows = []
    for name in presets:
        row = compare(name, mobilemamba, args.rounds, args.threads, args.seed, args.runtime)
        rows.append(row)
        print(f"- {name}: output max rel diff {row['max_rel_diff']:.1e} fused, {row['max_rel_diff_unfused']:.1e} unfused; "
              f"worst of {row['inner_modules_unfused']} inner modules unfused {row['inner_max_rel_diff_unfused']:.1e} "
              f"({row['inner_worst_unfused']}), of {row['inner_modules_fused']} fused {row['inner_max_rel_diff_fused']:.1e}; "
              f"BatchNorms left mmlab {row['bn_left_mmlab']} / authors {row['bn_left_authors']}; "
              f"{row['randomized_tensors']} constant tensors randomised; {args.runtime} prepared in {row['prepare_s']:.0f} s, "
              f"timed in {row['compare_s']:.0f} s", flush=True)
    load_after = os.getloadavg()[0]
    probe_after = host_probe(args.threads).median_ms
    print(f"- load average (1 min) {load_before:.2f} before, {load_after:.2f} after "
          f"({os.cpu_count()} cores: well above {args.threads} means the machine was busy)", flush=True)
    print(f"- {probe_note(probe_before, probe_after, args.threads)}", flush=True)
    for row in rows:
        row.update(env_probe_before_ms=round(probe_before, 3), env_probe_after_ms=round(probe_after, 3))

    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
        print(f"- rows written to {args.json}", flush=True)
    print()
    print("\n".join(table(rows, args.tolerance)))
    print()
    bad = [r["preset"] for r in rows if not largest_diff(r) <= args.tolerance]
    if bad:
        print(f"outputs (network or inner module) differ by more than {args.tolerance:g} relative for: {', '.join(bad)} "
              "(marked ✗; see the lines above the table)", flush=True)
    geomean = math.exp(sum(math.log(r["ratio_mmlab_over_authors"]) for r in rows) / len(rows))
    print(f"geometric mean of mmlab/authors over {','.join(presets)}: {geomean:.3f}", flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
