"""Export the torchvision zoo of ``tests/zoo.py`` into its cache and measure it.

    python -m benchmarks.export_zoo [--only NAME ...] [--exporter {torchscript,dynamo,both}]
                                    [--small | --big] [--no-tp] [--retry-failed] [--json OUT.json]

Per model: seconds of each export (``torch.onnx.export`` alone, then the onnxruntime check), file
size, whether the export has a dynamic batch (and why not), the check's max |onnx - torch|, the
logits' scale (max |logits|) and input sensitivity (max |logits[0] - logits[1]| / max |logits|
for two random inputs), whether the exporter succeeded (and why not), Torch-Pruning's reference
groups (count, total channels) and the time of its ``build_dependency``. Cached exports are
reused: their times are those recorded when they were made (column ``cached``). The cache is
``$ONNXPRUNE_ZOO_CACHE`` or ``~/.cache/onnxprune/zoo/torch-<version>-<CACHE_TAG>/``. Column
``model s``: the first ``zoo.torch_model`` of each model, which calibrates it on a cold cache
(``zoo._calibrate``) and loads the cached calibration otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from tests import zoo


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.export_zoo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", metavar="NAME", choices=list(zoo.ZOO),
                        help="export only these models")
    parser.add_argument("--exporter", choices=[*zoo.EXPORTERS, "both"], default="both")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--small", action="store_true", help="only models with big=False")
    size.add_argument("--big", action="store_true", help="only models with big=True")
    parser.add_argument("--no-tp", action="store_true", help="skip the Torch-Pruning reference")
    parser.add_argument("--retry-failed", action="store_true",
                        help="retry exports whose failure is recorded in the cache")
    parser.add_argument("--json", type=Path, metavar="OUT.json", help="write the results as JSON")
    return parser.parse_args(argv)


def _mb(size: int | None) -> str:
    return "-" if size is None else f"{size / 1e6:.1f}"


def _sec(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.1f}"


def _export_row(name: str, exporter: zoo.Exporter, retry_failed: bool) -> dict[str, Any]:
    start = time.perf_counter()
    try:
        result = zoo.export_result(name, exporter, retry_failed=retry_failed)
    except zoo.ZooExportError as exc:
        return {"ok": False, "error": str(exc), "wall_seconds": time.perf_counter() - start}
    return {
        "ok": True,
        "error": None,
        "cached": result.cached,
        "seconds": result.seconds,
        "cpu_seconds": result.cpu_seconds,
        "check_seconds": result.check_seconds,
        "size": result.size,
        "max_abs_diff": result.max_abs_diff,
        "opset": result.opset,
        "dynamic_batch": result.dynamic_batch,
        "static_reason": result.static_reason,
        "logits_max_abs": result.logits_max_abs,
        "input_sensitivity": result.input_sensitivity,
        "path": str(result.path),
        "wall_seconds": time.perf_counter() - start,
    }


def _tp_row(name: str) -> dict[str, Any]:
    info = zoo.tp_reference_info(name)
    row = {k: v for k, v in asdict(info).items() if k not in ("name", "roots")}
    if info.channels is not None:
        row.update(groups=len(info.channels), total_channels=sum(info.channels))
        row["channels"] = list(info.channels)
    return row


def _table(results: dict[str, dict[str, Any]], exporters: list[zoo.Exporter]) -> Table:
    table = Table(title=f"zoo exports ({zoo.cache_dir()})")
    table.add_column("model")
    table.add_column("big")
    table.add_column("model s", justify="right")
    table.add_column("max|logits|", justify="right")
    table.add_column("sensitivity", justify="right")
    for exporter in exporters:
        table.add_column(f"{exporter} s", justify="right")
        table.add_column(f"{exporter} check s", justify="right")
        table.add_column(f"{exporter} MB", justify="right")
        table.add_column(f"{exporter} N", justify="center")
        table.add_column(f"{exporter} max|diff|", justify="right")
    table.add_column("TP groups", justify="right")
    table.add_column("TP channels", justify="right")
    table.add_column("TP build s", justify="right")
    for name, res in results.items():
        cells = [name, "big" if zoo.ZOO[name].big else "", _sec(res["model_seconds"])]
        ok = [res[e] for e in exporters if res[e]["ok"]]
        if ok:
            cells += [f"{ok[0]['logits_max_abs']:.3g}", f"{ok[0]['input_sensitivity']:.3g}"]
        else:
            cells += ["-", "-"]
        for exporter in exporters:
            row = res[exporter]
            if row["ok"]:
                mark = " (cached)" if row["cached"] else ""
                cells += [
                    _sec(row["seconds"]) + mark, _sec(row["check_seconds"]), _mb(row["size"]),
                    "dyn" if row["dynamic_batch"] else "[red]1[/red]", f"{row['max_abs_diff']:.1e}",
                ]  # fmt: skip
            else:
                cells += ["[red]FAILED[/red]", "-", "-", "-", "-"]
        tp = res.get("tp")
        if tp is None:
            cells += ["-", "-", "-"]
        elif tp["channels"] is None:
            cells += ["[red]FAILED[/red]", "-", _sec(tp["build_seconds"])]
        else:
            cells += [str(tp["groups"]), str(tp["total_channels"]), _sec(tp["build_seconds"])]
        table.add_row(*cells)
    return table


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    names = args.only or zoo.names(big=True if args.big else False if args.small else None)
    exporters: list[zoo.Exporter] = (
        list(zoo.EXPORTERS) if args.exporter == "both" else [args.exporter]
    )
    # The zoo silences the exporters at the file-descriptor level; write to a copy of the
    # original stdout so the progress bar stays visible meanwhile.
    console = Console(
        file=os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1),
        width=None if sys.stdout.isatty() else 200,  # a log file gets the whole table
        soft_wrap=True,
        highlight=False,
    )
    steps = len(names) * (len(exporters) + (0 if args.no_tp else 1))
    results: dict[str, dict[str, Any]] = {}
    total_start = time.perf_counter()
    progress = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=console,
    )  # fmt: skip
    with progress:
        task = progress.add_task("zoo", total=steps)
        for name in names:
            res: dict[str, Any] = {}
            progress.update(task, description=f"{name} [calibration]")
            start = time.perf_counter()
            zoo.torch_model(name)
            res["model_seconds"] = time.perf_counter() - start
            progress.console.print(f"{name:20} model       {res['model_seconds']:6.1f} s "
                                   f"(build, calibration unless cached)")
            for exporter in exporters:
                progress.update(task, description=f"{name} [{exporter}]")
                row = res[exporter] = _export_row(name, exporter, args.retry_failed)
                if row["ok"]:
                    cached = " cached" if row["cached"] else ""
                    progress.console.print(
                        f"{name:20} {exporter:11} export {row['seconds']:6.1f} s "
                        f"(cpu {row['cpu_seconds']:6.1f} s)  "
                        f"check {row['check_seconds']:5.1f} s  {_mb(row['size']):>7} MB  "
                        f"opset {row['opset']}  "
                        f"batch {'N' if row['dynamic_batch'] else '1'}  "
                        f"max|diff| {row['max_abs_diff']:.1e}  "
                        f"max|logits| {row['logits_max_abs']:.3g}  "
                        f"sensitivity {row['input_sensitivity']:.3g}{cached}"
                    )
                    if row["static_reason"]:
                        progress.console.print(f"{'':20} {exporter:11} static batch: "
                                               f"{escape(row['static_reason'])}")
                else:
                    progress.console.print(f"{name:20} {exporter:11} [red]FAILED[/red]: "
                                           f"{escape(row['error'])}")
                progress.advance(task)
            if not args.no_tp:
                progress.update(task, description=f"{name} [Torch-Pruning]")
                tp = res["tp"] = _tp_row(name)
                if tp["channels"] is None:
                    progress.console.print(f"{name:20} TP          [red]FAILED[/red]: "
                                           f"{escape(tp['error'])}")
                else:
                    progress.console.print(
                        f"{name:20} TP          {tp['groups']} groups, "
                        f"{tp['total_channels']} channels, build {tp['build_seconds']:.1f} s"
                    )
                progress.advance(task)
            results[name] = res
            if args.json:  # keep partial results if the run is interrupted
                _write_json(args.json, results, time.perf_counter() - total_start)
    total = time.perf_counter() - total_start

    console.print(_table(results, exporters))
    cache = zoo.cache_dir()
    cache_size = sum(p.stat().st_size for p in cache.glob("*") if p.is_file()) if cache.exists() else 0
    console.print(f"total {total:.0f} s; cache {cache} holds {cache_size / 1e9:.2f} GB")
    failed = [
        escape(f"{name} [{key}]: {row['error']}")
        for name, res in results.items()
        for key, row in res.items()
        if (key == "tp" and row["channels"] is None) or (key in zoo.EXPORTERS and not row["ok"])
    ]
    for line in failed:
        console.print(f"[red]failed[/red] {line}")
    if args.json:
        _write_json(args.json, results, total)
    return 0


def _write_json(path: Path, results: dict[str, Any], total: float) -> None:
    payload = {"cache": str(zoo.cache_dir()), "total_seconds": total, "models": results}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1) + "\n")
    os.replace(tmp, path)


if __name__ == "__main__":
    sys.exit(main())
