"""The ``mmlab`` command line: each command parses, calls one library function, prints."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from mmlab.arch import ArchSpec, load_spec
from mmlab.presets import PRESETS

app = typer.Typer(
    name="mmlab",
    help="Build, measure, search and ablate MobileMamba-style vision backbones.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

SpecArg = Annotated[str, typer.Argument(help="A preset name (see `mmlab presets`) or a .toml / .json spec file.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of a table.")]


def fail(message: str) -> None:
    """Print a one-line error and exit with status 2."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def resolve_spec(source: str) -> ArchSpec:
    try:
        return load_spec(source)
    except ValueError as err:
        fail(str(err))
        raise  # unreachable: fail() exits


def format_table(rows: list[dict[str, object]], columns: list[str] | None = None) -> str:
    """Plain fixed-width table; numbers right-aligned."""
    if not rows:
        return "(no rows)"
    columns = columns or list(rows[0])
    cells = [[_fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    numeric = [all(isinstance(r.get(c), (int, float)) for r in rows) for c in columns]

    def line(values: list[str]) -> str:
        return "  ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)).rstrip()

    return "\n".join([line(columns), line(["-" * w for w in widths]), *(line(r) for r in cells)])


def _fmt(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:,.0f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    if isinstance(value, (tuple, list)):
        return ",".join(map(str, value))
    return str(value)


def _param_count(spec: ArchSpec) -> int:
    import torch

    from mmlab.model import build

    with torch.device("meta"):  # shapes only: no memory, no init cost
        return sum(p.numel() for p in build(spec).parameters())


@app.command()
def presets(as_json: JsonOpt = False) -> None:
    """List the registered presets: resolution, parameters (all, incl. frozen wavelet filters), widths, depths."""
    rows = [
        {"name": name, "resolution": s.resolution, "params": _param_count(s), "widths": s.widths,
         "depths": s.depths, "key": s.key}
        for name, s in PRESETS.items()
    ]
    if as_json:
        typer.echo(json.dumps([{**r, "widths": list(r["widths"]), "depths": list(r["depths"])} for r in rows], indent=2))
    else:
        typer.echo(format_table(rows))


@app.command()
def show(spec: SpecArg, as_json: JsonOpt = False) -> None:
    """Print a spec, its per-stage channel splits and its parameter count.

    Examples: `mmlab show t2`, `mmlab show arch.toml --json`.
    """
    arch = resolve_spec(spec)
    params = _param_count(arch)
    if as_json:
        typer.echo(json.dumps({"key": arch.key, "spec": arch.to_dict(), "splits": arch.splits(), "params": params}, indent=2))
        return
    net = {k: v for k, v in arch.to_dict().items() if k != "stages"}
    typer.echo(f"spec {spec} (key {arch.key})")
    typer.echo("  " + "  ".join(f"{k}={v}" for k, v in net.items()))
    typer.echo(f"  stem: stride {arch.stem_stride}, channels {','.join(map(str, arch.stem_channels))}")
    typer.echo("")
    typer.echo(format_table(arch.splits()))
    typer.echo("")
    typer.echo(f"params: {params:,} (all parameters, frozen wavelet filters included)")


class Device(str, Enum):
    cpu = "cpu"
    cuda = "cuda"


MEASURE_COLUMNS_CPU = ["spec", "params", "macs_paper", "macs", "latency_ms", "latency_p10_ms", "latency_p90_ms", "latency_runs", "env_threads"]
MEASURE_COLUMNS_CUDA = ["spec", "params", "macs", "latency_ms", "latency_eager_ms", "latency_graph_ms",
                        "throughput_ips", "throughput_eager_ips", "throughput_graph_ips", "throughput_batch"]


@app.command()
def measure(
    specs: Annotated[list[str], typer.Argument(help="Preset names and/or .toml / .json spec files.")],
    device: Annotated[Device, typer.Option(help="Where to time: cpu (batch-1 latency) or cuda (latency and throughput).")] = Device.cpu,
    batch: Annotated[Optional[int], typer.Option(help="CPU: latency batch (default 1). CUDA: throughput batch (default 256).")] = None,
    threads: Annotated[Optional[int], typer.Option(help="CPU threads for timing (default: all cores); recorded with the result.")] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Measure again even if this machine has a cached result.")] = False,
    cache_dir: Annotated[Optional[Path], typer.Option(help="Measurement cache directory (default $MMLAB_CACHE_DIR or ~/.cache/mmlab/measurements).")] = None,
    max_time: Annotated[float, typer.Option(help="CPU timing cap in seconds (warm-up excluded).")] = 5.0,
    as_json: JsonOpt = False,
) -> None:
    """Count parameters and MACs and time each spec (deploy form: BatchNorm fused, eval, fp32).

    MACs: one multiply-add = 1 (the paper's "FLOPs"). `macs` counts everything; `macs_paper`
    leaves out the wavelet sub-band convs, as the authors' counter does.

    Examples: `mmlab measure t2 s6`, `mmlab measure arch.toml --threads 1 --json`,
    `mmlab measure t2 t4 s6 b1 b2 b4 --device cuda`.
    """
    from mmlab.meter import MeasurementCache
    from mmlab.meter import measure as measure_spec

    arches = [(name, resolve_spec(name)) for name in specs]  # all resolved before any timing
    cache = MeasurementCache(cache_dir)
    rows = []
    for name, arch in arches:
        try:
            row = measure_spec(arch, device=device.value, batch=batch, threads=threads, cache=cache,
                               use_cache=not no_cache, max_time_s=max_time)
        except ValueError as err:
            fail(str(err))
        rows.append({"spec": name, **row})
        if not as_json:
            typer.echo(f"measured {name} in {row['measure_s']:.1f} s" + (" (cached)" if row["measure_s"] == 0 else ""), err=True)
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    columns = MEASURE_COLUMNS_CUDA if device is Device.cuda else MEASURE_COLUMNS_CPU
    typer.echo(format_table([{c: r.get(c) for c in columns} for r in rows], columns))
    env = rows[0]
    typer.echo(f"\n{env['env_hardware']}, torch {env['env_torch']}, {env['env_dtype']}, batch {env['env_batch']}; "
               "MACs: 1 multiply-add = 1; latency: median ms (p10, p90) of the fused model")


def main() -> None:  # pragma: no cover - console-script shim
    app()
