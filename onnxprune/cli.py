"""`onnxprune` command line: a thin layer over `onnxprune.api`.

Exit codes: 0 success, 2 bad usage or bad input (one line on stderr), 1 onnxprune's own failure
(its own work failed on a valid input, such as a fine-tune that diverged or a rewrite that fails
verification, or a bug), 130/143/129 interrupted by SIGINT/SIGTERM/SIGHUP.
Every output path is checked before any work (`onnxprune.fileio.check_outputs`) and all outputs of a
command are written together at its end, or none (`onnxprune.fileio.transaction`).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

from onnxprune import __version__
from onnxprune.errors import Interrupted, OnnxPruneError, cli_style
from onnxprune.fileio import STDOUT, check_outputs, install_signal_handlers, model_files, remove_temps, transaction
from onnxprune.methods import L1, METHODS, TAYLOR, method, names_of, search_flags


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2
        self.exit(2, f"onnxprune: error: {message} (see `{self.prog} --help`)\n")


def _fraction(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
        return h, w
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW, e.g. 32x32, got {text!r}") from None


def _data_options(parser: argparse.ArgumentParser) -> None:
    """Preprocessing flags shared by the commands that read a dataset."""
    g = parser.add_argument_group("data preprocessing (defaults follow the model's input shape)")
    g.add_argument("--layout", choices=["auto", "nchw", "nhwc"], default="auto",
                   help="image layout the model expects (auto: from the input shape)")
    g.add_argument("--resize", type=_size, metavar="HxW", help="resize images (default: the model's H, W)")
    g.add_argument("--mean", type=_floats, metavar="M[,M,M]", help="per-channel mean after scaling to [0, 1]")
    g.add_argument("--std", type=_floats, metavar="S[,S,S]", help="per-channel std after scaling to [0, 1]")


def _torch_options(parser: argparse.ArgumentParser, calib: bool = True) -> None:
    """Where the PyTorch side runs and how much data each use of it streams."""
    g = parser.add_argument_group("device and data streaming (Taylor, BatchNorm re-estimation, masked "
                                  "evaluation, fine-tuning)")
    g.add_argument("--device", default="auto", metavar="auto|cpu|cuda|cuda:N",
                   help="where the PyTorch side runs (auto: the GPU when torch sees one)")
    g.add_argument("--amp", action="store_true", help="mixed precision (float16) when fine-tuning on a GPU")
    if calib:
        g.add_argument("--calib-images", type=int, default=512, metavar="N",
                       help="training images for Taylor scores and BatchNorm statistics (default: 512)")
    g.add_argument("--data-workers", type=int, default=None, metavar="N",
                   help="processes decoding images (default: 2 for folder:DIR on a GPU; 0 on the CPU, "
                        "where the model needs the cores, and for in-memory data)")


def _option(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key.strip().replace("-", "_"), value.strip()


def _method_help() -> str:
    return "; ".join(f"{m.name}: {m.summary}" for m in METHODS.values())


def _search_options(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group(f"search methods ({', '.join(names_of('search'))})")
    for name, takers in search_flags().items():
        by_text: dict[str, list[str]] = {}
        for method_name, flag in takers:
            by_text.setdefault(flag.help, []).append(method_name)
        text = "; ".join(f"{', '.join(users)}: {help_}" for help_, users in by_text.items())
        flag = takers[0][1]
        if flag.const is not None:
            prefix = "--no-" if flag.const is False else "--"
            g.add_argument(prefix + name.replace("_", "-"), dest=f"opt_{name}", action="store_const",
                           const=flag.const, default=None, help=text)
        else:
            g.add_argument("--" + name.replace("_", "-"), dest=f"opt_{name}", type=flag.kind, default=None, help=text,
                           metavar="N" if flag.kind is int else "NAME")
    g.add_argument("--option", action="append", type=_option, default=[], metavar="KEY=VALUE",
                   help="any other setting of the method (repeatable; see the README)")
    g.add_argument("--workers", type=int, default=1, help="processes (local) or Ray actors evaluating candidates")
    g.add_argument("--evaluator", choices=["local", "ray"], default="local",
                   help="where candidates are scored: local processes, or Ray actors (pip install 'onnxprune[ray]')")
    g.add_argument("--ray-address", metavar="ADDR", default=None,
                   help="join this Ray cluster (default: start a local Ray instance)")
    g.add_argument("--eval-images", type=int, default=1000,
                   help="validation images per candidate evaluation and for fine-tuning's model selection "
                        "(0: the whole split)")
    g.add_argument("--checkpoint", metavar="PATH", help="save the search state here (and --resume from it)")
    g.add_argument("--resume", action="store_true", help="continue the search saved in --checkpoint")
    g.add_argument("--trajectory", metavar="OUT.json", help="write the search trajectory as JSON")
    g.add_argument("--plot", metavar="OUT.png", help="plot the search trajectory (reward phases, best accuracy)")


def search_options(args: argparse.Namespace) -> dict:
    """The method options given on the command line (named flags, then --option KEY=VALUE)."""
    opts: dict = {}
    for key, value in vars(args).items():
        if key.startswith("opt_") and value is not None:
            opts[key[4:]] = value
    for key, value in args.option:
        opts[key] = value
    return opts


def data_kwargs(args: argparse.Namespace) -> dict:
    return {"layout": args.layout, "resize": args.resize, "mean": args.mean, "std": args.std}


DATA_HELP = ("dataset: digits | fashion-mnist[:DIR] | idx:DIR | folder:DIR (one sub-folder per class) | "
             "npz:FILE (arrays x, y) | random")
SHAPE_HELP = "static shape of an input whose dimensions are dynamic, e.g. input:1x3x224x224 (repeatable)"


def _epilog(*lines: str) -> str:
    return "examples:\n" + "\n".join(f"  {line}" for line in lines)


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Wraps the description to the terminal, keeps the examples of the epilog as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if text.startswith("examples:"):
            return super()._fill_text(text, width, indent)
        return argparse.HelpFormatter._fill_text(self, text, width, indent)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="onnxprune", formatter_class=_Formatter,
                description="Structured channel pruning of CNNs given only as ONNX files: find the channels that "
                            "must go together, remove the least important ones, write a smaller ONNX model "
                            "verified equal to the original with those channels masked, and time it.",
                epilog=_epilog("onnxprune analyze model.onnx",
                               "onnxprune prune model.onnx -o pruned.onnx --target-flops 0.5",
                               "onnxprune bench model.onnx pruned.onnx",
                               "onnxprune demo", "", "Run `onnxprune COMMAND --help` for a command's options."))
    p.add_argument("--version", action="version", version=f"onnxprune {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser, metavar="COMMAND")
    kw = {"formatter_class": _Formatter}

    a = sub.add_parser("analyze", help="channel groups, MACs and params of a model", **kw,
                       description="Find the model's channel groups (channels that must be removed together), "
                                   "which are prunable and why not, and its MACs and params.",
                       epilog=_epilog("onnxprune analyze model.onnx",
                                      "onnxprune analyze model.onnx --json analysis.json --simplify off"))
    a.add_argument("model", metavar="MODEL.onnx", help="the ONNX model to analyse (never modified)")
    a.add_argument("--json", metavar="OUT.json", help="also write the analysis as JSON (`-`: standard output)")
    a.add_argument("--input-shape", action="append", metavar="NAME:1x3x224x224", help=SHAPE_HELP)
    _simplify_option(a)

    pr = sub.add_parser("prune", help="prune channels and write a smaller, verified ONNX model", **kw,
                        description="Score channels, choose which to remove under a budget, rewrite a structurally "
                                    "smaller ONNX model and verify it equals the original with those channels "
                                    "masked. Widths are rounded to multiples that suit the runtime (--round-to "
                                    "auto), so the smaller model is also faster.",
                        epilog=_epilog(
                            "onnxprune prune model.onnx -o pruned.onnx --target-flops 0.5",
                            "onnxprune prune model.onnx -o pruned.onnx --sparsity 0.3 --method l2 --global",
                            "onnxprune prune model.onnx -o pruned.onnx --target-flops 0.5 --method taylor \\",
                            "    --data fashion-mnist --finetune-epochs 1 --report report.json",
                            "onnxprune prune model.onnx -o pruned.onnx --target-flops 0.5 --method gat-ppo \\",
                            "    --data fashion-mnist --trajectory t.json --plot t.png"))
    pr.add_argument("model", metavar="MODEL.onnx", help="the ONNX model to prune (never modified)")
    pr.add_argument("-o", "--output", required=True, metavar="OUT.onnx",
                    help="where to write the pruned model (written only once complete and verified)")
    pr.add_argument("--method", default=L1.name, choices=names_of(), help=_method_help())
    target = pr.add_mutually_exclusive_group(required=True)
    target.add_argument("--target-flops", type=_fraction, metavar="F",
                        help="keep at most F (0 < F <= 1) of the original MACs (multiply-accumulates of "
                             "Conv/Gemm/MatMul, what pruning papers call FLOPs)")
    target.add_argument("--sparsity", type=_fraction, metavar="S",
                        help="remove a fraction S of the channels of every prunable group "
                             "(with --global or a search method: of all prunable channels)")
    target.add_argument("--target-params", type=_fraction, metavar="F",
                        help="search methods: keep at most F of the parameters")
    target.add_argument("--target-latency", type=_fraction, metavar="F",
                        help="search methods: keep at most F of the onnxruntime latency (batch 1, on the "
                             "--runtime's provider), read from a per-layer latency table measured once and "
                             "cached (~/.cache/onnxprune/latency)")
    pr.add_argument("--latency-threads", type=int, default=0, metavar="N",
                    help="with --target-latency: onnxruntime intra-op threads the latency is measured at (default 0: "
                         "onnxruntime's default; 1 gives steadier timings on a shared machine and matches "
                         "single-threaded deployments)")
    pr.add_argument("--latency-per-candidate", action="store_true",
                    help="with --target-latency: rewrite and time every candidate on the CPU instead of the table")
    pr.add_argument("--global", dest="global_ranking", action="store_true",
                    help="rank all channels together (scores normalized per group) instead of removing the "
                         "same fraction from every group")
    pr.add_argument("--round-to", type=_round_to, default="auto", metavar="auto|K",
                    help="kept widths are multiples of K (1: any width). auto (default): per group, the multiple "
                         "that suits --runtime (cpu: 8 for groups of 16+ channels, 16 for 32+; cuda/tensorrt: "
                         "8 for groups of 16+ channels); odd widths can make a pruned model slower than the "
                         "original")
    pr.add_argument("--runtime", choices=["cpu", "cuda", "tensorrt"], default="cpu",
                    help="what the pruned model will run on; picks the --round-to auto widths (default: cpu)")
    pr.add_argument("--exclude", nargs="+", default=[], metavar="NODE",
                    help="node names whose channels are never pruned (names as `onnxprune analyze` shows them)")
    pr.add_argument("--seed", type=int, default=0, metavar="N",
                    help="seed of everything random (random scores, data order, verification inputs; default 0)")
    pr.add_argument("--report", metavar="OUT.json",
                    help="write a JSON report: groups, kept channels, MACs/params before and after, verification")
    pr.add_argument("--verify", dest="verify", action="store_true", default=True,
                    help="check the result against the masked original with onnxruntime before writing "
                         "(the default)")
    pr.add_argument("--no-verify", dest="verify", action="store_false",
                    help="skip the equivalence check (the ONNX checker still runs)")
    pr.add_argument("--input-shape", action="append", metavar="NAME:1x3x224x224", help=SHAPE_HELP)
    pr.add_argument("--data", metavar="SPEC", help=DATA_HELP + " (taylor, search methods, fine-tuning; with any "
                    "method, BatchNorm is re-estimated under the mask)")
    pr.add_argument("--finetune-epochs", type=int, default=0, metavar="N",
                    help="fine-tune the pruned model for N epochs with knowledge distillation from the original "
                         "(needs --data; default 0)")
    pr.add_argument("--finetune-images", type=int, default=None, metavar="N",
                    help="training images per fine-tuning epoch (default: all)")
    pr.add_argument("--finetune-lr", type=float, default=None, metavar="LR",
                    help="fine-tuning learning rate (default: 0.01, SGD)")
    _simplify_option(pr)
    _data_options(pr)
    _torch_options(pr)
    _search_options(pr)

    ft = sub.add_parser("finetune", help="fine-tune a pruned model with knowledge distillation", **kw,
                        description="Train a pruned model to imitate the original (knowledge distillation plus "
                                    "cross-entropy) and write the trained weights back into the ONNX file.",
                        epilog=_epilog("onnxprune finetune pruned.onnx --teacher model.onnx --data fashion-mnist "
                                       "-o tuned.onnx --epochs 2"))
    ft.add_argument("model", metavar="PRUNED.onnx", help="the pruned model to train (never modified)")
    ft.add_argument("--teacher", required=True, metavar="ORIG.onnx", help="the original model it imitates")
    ft.add_argument("--data", required=True, metavar="SPEC", help=DATA_HELP)
    ft.add_argument("-o", "--output", required=True, metavar="OUT.onnx", help="where to write the fine-tuned model")
    ft.add_argument("--epochs", type=int, default=5, metavar="N", help="training epochs (default 5)")
    ft.add_argument("--optimizer", choices=["sgd", "adamw"], default="sgd", help="optimizer (default sgd)")
    ft.add_argument("--lr", type=float, default=None, help="learning rate (default: the optimizer's own default)")
    ft.add_argument("--tau", type=float, default=0.7,
                    help="weight of the distillation loss; 1 - tau goes to cross-entropy (default 0.7)")
    ft.add_argument("--temperature", type=float, default=4.0, help="distillation temperature (default 4)")
    ft.add_argument("--images", type=int, default=None, metavar="N", help="training images per epoch (default: all)")
    ft.add_argument("--seed", type=int, default=0, metavar="N", help="seed of data order and initialization")
    ft.add_argument("--eval-images", type=int, default=1000, metavar="N",
                    help="validation images for model selection (0: the whole split; default 1000)")
    ft.add_argument("--input-shape", action="append", metavar="NAME:1x3x224x224", help=SHAPE_HELP)
    _data_options(ft)
    _torch_options(ft)

    b = sub.add_parser("bench", help="onnxruntime latency of one or more models", **kw,
                       description="Time models with onnxruntime (all graph optimizations, seeded random inputs); "
                                   "the first model is the baseline of the speed-up column.",
                       epilog=_epilog("onnxprune bench model.onnx pruned.onnx --batch 1 32",
                                      "onnxprune bench pruned.onnx --provider cuda --json bench.json"))
    b.add_argument("models", nargs="+", metavar="MODEL.onnx", help="models to time, the first is the baseline")
    b.add_argument("--provider", choices=["cpu", "cuda", "tensorrt"], default="cpu",
                   help="onnxruntime execution provider (default cpu; without a GPU, cuda/tensorrt fall back to "
                        "cpu and the output says so)")
    b.add_argument("--batch", type=int, nargs="+", default=[1], metavar="B", help="batch sizes (default 1)")
    b.add_argument("--threads", type=int, default=0, help="intra-op threads (0: onnxruntime default)")
    b.add_argument("--warmup", type=int, default=5, metavar="N", help="untimed runs first (default 5)")
    b.add_argument("--runs", type=int, default=30, metavar="N", help="timed runs per model and batch (default 30)")
    b.add_argument("--input-shape", action="append", metavar="NAME:1x3x224x224", help=SHAPE_HELP)
    b.add_argument("--json", metavar="OUT.json",
                   help="write the results as JSON, with onnxruntime version, provider, CPU/GPU model "
                        "(`-`: standard output)")

    e = sub.add_parser("eval", help="top-1 accuracy of a model on a dataset (onnxruntime)", **kw,
                       description="Top-1 accuracy and cross-entropy of a classifier on a dataset split, "
                                   "run with onnxruntime.",
                       epilog=_epilog("onnxprune eval pruned.onnx --data fashion-mnist",
                                      "onnxprune eval model.onnx --data folder:images/ --resize 224x224 "
                                      "--mean 0.485,0.456,0.406 --std 0.229,0.224,0.225"))
    e.add_argument("model", metavar="MODEL.onnx", help="the model to evaluate")
    e.add_argument("--data", required=True, metavar="SPEC", help=DATA_HELP)
    e.add_argument("--split", default="test", choices=["train", "val", "test"], help="which split (default test)")
    e.add_argument("--batch-size", type=int, default=256, metavar="N", help="images per onnxruntime run (default 256)")
    e.add_argument("--images", type=int, default=None, metavar="N",
                   help="evaluate a seeded subset of N images of the split (default: all)")
    e.add_argument("--seed", type=int, default=0, metavar="N", help="seed of the --images subset (default 0)")
    e.add_argument("--input-shape", action="append", metavar="NAME:1x3x224x224", help=SHAPE_HELP)
    e.add_argument("--json", metavar="OUT.json", help="write top-1, loss and image count as JSON (`-`: standard output)")
    _data_options(e)

    d = sub.add_parser("demo", help="prune a trained ResNet-20 to 50%% MACs and compare before/after", **kw,
                       description="The whole flow on the ResNet-20 shipped with onnxprune (trained on "
                                   "Fashion-MNIST, BatchNorm folded, as users export it): prune with Taylor scores, "
                                   "verify, fine-tune with distillation, compare accuracy, MACs, params and latency. "
                                   "Without Fashion-MNIST it falls back to scikit-learn's digits.",
                       epilog=_epilog("onnxprune demo", "onnxprune demo --target-flops 0.3 --json demo.json"))
    d.add_argument("--data", choices=["fashion-mnist", "digits"], default=None,
                   help="dataset (default: fashion-mnist, installed with apt when run as root; digits when "
                        "it is missing)")
    d.add_argument("--no-install", dest="install", action="store_false",
                   help="never run apt-get to install Fashion-MNIST")
    d.add_argument("--target-flops", type=_fraction, default=0.5, metavar="F",
                   help="keep at most F of the MACs (default 0.5)")
    d.add_argument("--method", choices=names_of("criterion"), default=TAYLOR.name,
                   help="channel scores (default taylor)")
    d.add_argument("--finetune-epochs", type=int, default=1, metavar="N", help="distillation epochs (default 1)")
    d.add_argument("--finetune-images", type=int, default=16000, metavar="N",
                   help="training images per fine-tuning epoch (default 16000)")
    d.add_argument("--json", metavar="OUT.json", help="write the comparison as JSON (`-`: standard output)")
    return p


def _round_to(text: str) -> str | int:
    if text.strip().lower() == "auto":
        return "auto"
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected auto or a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected auto or a positive integer, got {text!r}")
    return value


def _simplify_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--simplify", choices=["auto", "on", "off"], default="auto",
                        help="run onnxsim (constant folding, shape computations) before the analysis, keeping "
                             "node names; it unfreezes groups behind computed shapes. auto (default): on, and "
                             "the model as given when onnxsim fails; on: its failure is an error; off: never")


def _console(json_to_stdout: bool = False):
    """(out, err) consoles; `out` is standard error when JSON goes to standard output."""
    from rich.console import Console

    err = Console(stderr=True)
    return (err if json_to_stdout else Console()), err


def _data_files(spec: str | None) -> list[str]:
    """Files a `--data SPEC` reads that an output must not replace (an npz file, a folder)."""
    if not spec:
        return []
    from onnxprune.data.specs import parse_data_spec

    try:
        parsed = parse_data_spec(spec)
    except OnnxPruneError:
        return []  # reported when the data is loaded
    return [str(parsed.path)] if parsed.path is not None else []


def _inputs(*models: str | None) -> list:
    return [f for m in models if m for f in model_files(m)]


def cmd_analyze(args: argparse.Namespace) -> int:
    from onnxprune.api import analyze_simplified, save_json
    from onnxprune.ir import parse_input_shapes
    from onnxprune.report import analysis_table

    check_outputs({"--json": args.json}, _inputs(args.model))
    analysis, _, simplified = analyze_simplified(args.model, parse_input_shapes(args.input_shape),
                                                 simplify=args.simplify)
    out, err = _console(args.json == STDOUT)
    out.print(analysis_table(analysis))
    if simplified.note and simplified.mode != "off":
        err.print(f"note: {simplified.note}")
    if args.json:
        save_json({**analysis.to_json(), "simplify": simplified.to_json()}, args.json)
        if args.json != STDOUT:
            out.print(f"wrote {args.json}")
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    from onnxprune.api import PruneConfig, prune, save_json, save_model
    from onnxprune.ir import parse_input_shapes
    from onnxprune.report import prune_summary

    if args.output == STDOUT:
        from onnxprune.errors import InputError

        raise InputError("-o -: the pruned model must go to a file")
    check_outputs({"-o": args.output, "--report": args.report, "--trajectory": args.trajectory,
                   "--plot": args.plot, "--checkpoint": args.checkpoint},
                  _inputs(args.model) + _data_files(args.data))
    if args.resume and args.checkpoint:
        from onnxprune.search.checkpoint import check_file

        check_file(args.checkpoint, "--resume")
    cfg = PruneConfig(
        method=args.method, sparsity=args.sparsity, target_flops=args.target_flops,
        global_ranking=args.global_ranking, round_to=args.round_to, runtime=args.runtime, simplify=args.simplify,
        seed=args.seed,
        exclude=tuple(args.exclude), verify=args.verify, input_shapes=parse_input_shapes(args.input_shape),
        data=args.data, finetune_epochs=args.finetune_epochs, finetune_images=args.finetune_images,
        finetune_lr=args.finetune_lr,
        data_options=data_kwargs(args), target_params=args.target_params, target_latency=args.target_latency,
        latency_table=not args.latency_per_candidate, latency_threads=args.latency_threads,
        workers=args.workers, eval_images=args.eval_images, checkpoint=args.checkpoint, resume=args.resume,
        trajectory=args.trajectory, plot=args.plot, options=search_options(args),
        device=args.device, amp=args.amp, calib_images=args.calib_images, data_workers=args.data_workers,
        evaluator=args.evaluator, ray_address=args.ray_address,
    )
    out, err = _console(args.report == STDOUT)
    if args.finetune_epochs or method(args.method).searches:  # progress bars need the terminal to themselves
        result = prune(args.model, cfg, progress=lambda msg: err.print(f"[dim]{msg}[/dim]"))
    else:
        with err.status("pruning") as status:
            result = prune(args.model, cfg, progress=lambda msg: status.update(msg))
    save_model(result.model, args.output)
    if args.report:
        save_json(result.report(), args.report)
    out.print(prune_summary(result, args.output))
    tuned = result.finetuned
    if tuned is not None and tuned.message():
        err.print(f"[yellow]warning: {tuned.message()}[/yellow]")
    elif tuned is not None:
        out.print(f"fine-tuned: validation top-1 {tuned.initial_val_top1:.4f} -> {tuned.best_val_top1:.4f} "
                  f"(best epoch {tuned.best_epoch})")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from onnxprune.api import save_json
    from onnxprune.bench import BenchConfig, benchmark_models, format_table, results_to_json
    from onnxprune.ir import parse_input_shapes

    check_outputs({"--json": args.json}, _inputs(*args.models))
    cfg = BenchConfig(provider=args.provider, batch_sizes=tuple(args.batch), threads=args.threads,
                      warmup=args.warmup, runs=args.runs)
    out, err = _console(args.json == STDOUT)
    with err.status(f"benchmarking {len(args.models)} model(s) on {args.provider}"):
        results = benchmark_models(args.models, cfg, parse_input_shapes(args.input_shape))
    out.print(format_table(results))
    for r in results:
        if r.fell_back:
            err.print(f"note: {r.provider_requested} was requested but unavailable; ran on {r.provider_used}")
            break
    if args.json:
        save_json(results_to_json(results), args.json)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from onnxprune.api import evaluate_model, save_json
    from onnxprune.ir import parse_input_shapes

    check_outputs({"--json": args.json}, _inputs(args.model) + _data_files(args.data))
    out, err = _console(args.json == STDOUT)
    with err.status(f"evaluating ({args.split} split)"):
        acc, splits = evaluate_model(args.model, args.data, split=args.split, batch_size=args.batch_size,
                                     images=args.images, seed=args.seed,
                                     input_shapes=parse_input_shapes(args.input_shape), data_options=data_kwargs(args))
    out.print(f"top-1 {acc.top1:.4f}   loss {acc.loss:.4f}   n {acc.n}   ({splits.spec}, {args.split} split)")
    if args.json:
        save_json({"top1": acc.top1, "n": acc.n, "loss": acc.loss, "split": args.split, "data": args.data}, args.json)
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    from onnxprune.api import finetune_model, save_model
    from onnxprune.ir import parse_input_shapes

    check_outputs({"-o": args.output}, _inputs(args.model, args.teacher) + _data_files(args.data))
    result = finetune_model(args.model, args.teacher, args.data, epochs=args.epochs, optimizer=args.optimizer,
                            lr=args.lr, tau=args.tau, temperature=args.temperature, images=args.images,
                            eval_images=args.eval_images, calib_images=args.calib_images, device=args.device,
                            amp=args.amp, data_workers=args.data_workers, seed=args.seed,
                            input_shapes=parse_input_shapes(args.input_shape), data_options=data_kwargs(args))
    save_model(result.model, args.output)
    out, err = _console()
    if result.message():  # not a success: say so, and what was written
        err.print(f"[yellow]warning: {result.message()}[/yellow]")
        out.print(f"wrote the starting weights unchanged -> {args.output}")
        return 0
    out.print(f"validation top-1 {result.initial_val_top1:.4f} -> {result.best_val_top1:.4f} "
              f"(best epoch {result.best_epoch}); weights written back and verified against the torch student "
              f"(max abs diff {result.verify_max_abs_diff or 0:.2g}) -> {args.output}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from onnxprune.api import save_json
    from onnxprune.demo import DemoConfig, run_demo

    check_outputs({"--json": args.json}, [])
    summary = run_demo(DemoConfig(method=args.method, target_flops=args.target_flops, data=args.data,
                                  install=args.install, finetune_epochs=args.finetune_epochs,
                                  finetune_images=args.finetune_images))
    if args.json:
        save_json(summary, args.json)
    return 0


COMMANDS = {"analyze": cmd_analyze, "prune": cmd_prune, "bench": cmd_bench, "eval": cmd_eval, "demo": cmd_demo,
            "finetune": cmd_finetune}
# the demo writes its own cache files as it goes (and reads them back): not one transaction
_TRANSACTIONAL = {"analyze", "prune", "bench", "eval", "finetune"}

DEBUG_HINT = "set ONNXPRUNE_DEBUG=1 for details"


def one_line(message: str, limit: int = 400) -> str:
    """The first line of a message (cut to `limit` characters), saying where the rest is."""
    lines = [ln.strip() for ln in str(message).strip().splitlines() if ln.strip()]
    if not lines:
        return ""
    first = lines[0]
    if len(first) > limit:
        first = first[:limit] + "..."
    elif len(lines) > 1:
        first += f" ({DEBUG_HINT})"
    return first


def _quiet_libraries() -> None:
    """Keep stderr to onnxprune's own lines: onnxruntime's C++ log and Python warnings off."""
    import warnings

    if os.environ.get("ONNXPRUNE_DEBUG"):
        return
    warnings.filterwarnings("ignore")
    try:
        import onnxruntime as ort

        ort.set_default_logger_severity(4)  # fatal only
    except Exception:  # pragma: no cover - a declared dependency
        pass


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (0 ok, 2 bad input, 1 onnxprune's failure)."""
    args = build_parser().parse_args(argv)
    install_signal_handlers()
    _quiet_libraries()
    debug = bool(os.environ.get("ONNXPRUNE_DEBUG"))
    try:
        with cli_style():
            if args.command in _TRANSACTIONAL:
                with transaction():
                    return COMMANDS[args.command](args)
            return COMMANDS[args.command](args)
    except ModuleNotFoundError as exc:  # an optional dependency, or a bug
        if exc.name in MISSING_HINTS and not debug:
            print(f"onnxprune: error: {exc.name} is not installed: {MISSING_HINTS[exc.name]}", file=sys.stderr)
            return 2
        if debug:
            raise
        print(f"onnxprune: internal error: {type(exc).__name__}: {one_line(str(exc), 300)} "
              "(set ONNXPRUNE_DEBUG=1 for a traceback and please report it)", file=sys.stderr)
        return 1
    except OnnxPruneError as exc:
        if debug:
            raise
        text = one_line(str(exc)) or type(exc).__name__
        if exc.exit_code == 2:
            print(f"onnxprune: error: {text}", file=sys.stderr)
        else:
            print(f"onnxprune: failed: {text} (onnxprune's fault, not the input's: please report it)",
                  file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("onnxprune: interrupted (SIGINT): outputs not written", file=sys.stderr)
        return 130
    except Interrupted as exc:
        print(f"onnxprune: interrupted ({_signal_name(exc.signum)}): outputs not written", file=sys.stderr)
        return 128 + exc.signum
    except Exception as exc:  # a bug: say so in one line unless debugging
        if debug:
            raise
        print(f"onnxprune: internal error: {type(exc).__name__}: {one_line(str(exc), 300)} "
              "(set ONNXPRUNE_DEBUG=1 for a traceback and please report it)", file=sys.stderr)
        return 1
    finally:
        remove_temps()


# Optional dependencies: what to install when one is missing.
MISSING_HINTS = {
    "onnxruntime": "pip install 'onnxprune[gpu]' (onnxruntime-gpu, also runs on CPU) or 'onnxprune[cpu]' "
                   "(plain onnxruntime)",
    "sklearn": "pip install 'onnxprune[demo]' (scikit-learn, for the digits dataset)",
    "matplotlib": "pip install 'onnxprune[plot]' (matplotlib, for --plot)",
}


def _signal_name(signum: int) -> str:
    import signal

    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


if __name__ == "__main__":
    sys.exit(main())
