"""``reparam``: convert, batch-convert and inspect checkpoints from the command line.

Exit codes: 0 equivalence passed, 1 the gate failed (nothing written), 2 bad input (one line on
stderr), 3 internal error. Other installed packages add commands through the ``reparam.commands``
entry-point group (the service adds ``serve``): each entry is a function that receives the
sub-command parsers and adds its own.
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from collections import Counter
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from . import __version__
from .errors import EquivalenceError, ReparamError

EXIT_OK, EXIT_GATE, EXIT_INPUT, EXIT_INTERNAL = 0, 1, 2, 3
CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth", ".tar", ".bin", ".ckpt")

err = Console(stderr=True)
out = Console(width=None if sys.stdout.isatty() else 160)


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args))
    except EquivalenceError as exc:
        print(f"reparam: gate failed: {exc}", file=sys.stderr)
        return EXIT_GATE
    except ReparamError as exc:
        print(f"reparam: error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    except Exception:  # a bug, not bad input: keep the traceback, distinct exit code
        traceback.print_exc()
        return EXIT_INTERNAL


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="reparam", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"reparam {__version__}")
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    convert = sub.add_parser("convert", help="convert one training checkpoint into verified deploy artifacts")
    convert.add_argument("--checkpoint", required=True, type=Path)
    convert.add_argument("--out", required=True, type=Path, help="folder for the artifacts (replaced whole)")
    _conversion_options(convert)
    convert.set_defaults(run=_cmd_convert)

    batch = sub.add_parser("convert-dir", help="convert every checkpoint in a folder (one sub-folder each)")
    batch.add_argument("--checkpoints", required=True, type=Path, help="folder of checkpoint files")
    batch.add_argument("--out", required=True, type=Path)
    _conversion_options(batch)
    batch.set_defaults(run=_cmd_convert_dir)

    graph = sub.add_parser(
        "fuse-graph", help="fuse any traceable model of yours by graph analysis (runs your factory code)"
    )
    graph.add_argument("--factory", required=True, help="package.module:function returning the nn.Module")
    graph.add_argument("--checkpoint", required=True, type=Path)
    graph.add_argument("--input-shape", required=True, help="N,C,H,W used to trace and to validate")
    graph.add_argument("--out", required=True, type=Path)
    graph.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    graph.add_argument("--tolerance", type=float, default=1e-9)
    graph.add_argument("--no-export", action="store_true")
    graph.add_argument("--json", action="store_true")
    graph.set_defaults(run=_cmd_fuse_graph)

    reference = sub.add_parser(
        "reference",
        help="write a reference file (inputs and your model's outputs) to prove a conversion against "
        "(runs your factory code)",
    )
    reference.add_argument("--factory", required=True, help="package.module:function returning the nn.Module")
    reference.add_argument("--checkpoint", required=True, type=Path)
    reference.add_argument("--out", required=True, type=Path, help="the .safetensors file to write")
    reference.add_argument("--input-shape", default="8,3,224,224", help="N,C,H,W of the random inputs")
    reference.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    reference.add_argument("--seed", type=int, default=0)
    reference.add_argument("--weights", default="auto", choices=["auto", "model", "ema"])
    reference.set_defaults(run=_cmd_reference)

    repopt = sub.add_parser("repopt", help="RepOptimizer workflow steps (see docs/optim.md)")
    repopt_steps = repopt.add_subparsers(required=True, metavar="STEP")
    scales = repopt_steps.add_parser(
        "scales", help="extract the per-channel scales of a hyper-search checkpoint (ours or official)"
    )
    scales.add_argument("--checkpoint", required=True, type=Path)
    scales.add_argument("--out", required=True, type=Path, help="the .safetensors file to write")
    scales.set_defaults(run=_cmd_repopt_scales)

    example = sub.add_parser(
        "example", help="write a small training-form checkpoint, its spec and a photo to try things on"
    )
    example.add_argument("--out", required=True, type=Path, help="folder to write them into")
    example.set_defaults(run=_cmd_example)

    inspect = sub.add_parser(
        "inspect", help="describe a checkpoint: layout, form, family, blocks, parameters"
    )
    inspect.add_argument("checkpoint", type=Path)
    inspect.add_argument("--json", action="store_true", help="print JSON instead of a table")
    inspect.set_defaults(run=_cmd_inspect)
    for plugin in entry_points(group="reparam.commands"):
        if plugin.name in sub.choices:  # the same plugin installed twice (editable and regular)
            continue
        try:
            plugin.load()(sub)
        except Exception as exc:  # a broken plugin must not take the library's commands down
            print(f"reparam: skipping command {plugin.name!r} ({plugin.value}): {exc}", file=sys.stderr)
    return parser


def _conversion_options(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument("--spec", required=True, help="architecture spec: a .json/.yaml file or inline JSON")
    cmd.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    cmd.add_argument("--tolerance", type=float, default=1e-9, help="max fp64 relative error (default 1e-9)")
    cmd.add_argument("--no-export", action="store_true", help="skip the torch.export program (model.pt2)")
    cmd.add_argument(
        "--weights",
        default="auto",
        choices=["auto", "model", "ema"],
        help="with model and EMA weights in the checkpoint, which to convert (auto: the model's)",
    )
    cmd.add_argument(
        "--reference",
        type=Path,
        default=None,
        help="safetensors file of 'inputs' and your model's 'outputs': the deploy net is held to them",
    )
    cmd.add_argument(
        "--calibration",
        type=Path,
        default=None,
        help="safetensors file of preprocessed 'inputs' [N,C,H,W] (N <= 64; a reference file serves): the "
        "report's 'quantization' section diagnoses each layer for INT8; serving precision int8 is "
        "calibrated on them",
    )
    cmd.add_argument(
        "--serving",
        default=None,
        metavar="JSON",
        help='also check the net as it would be served, e.g. \'{"precision": "fp16", "compile": true}\' '
        "(fields as in POST /convert; the result is the report's 'serving' section; precision int8 with "
        "int8_float_layers N, \"auto\" or layer names keeps layers float32, see the report's 'int8')",
    )
    cmd.add_argument("--json", action="store_true", help="print the result as JSON on stdout")


def _convert_one(args: argparse.Namespace, checkpoint: Path, out_dir: Path) -> dict[str, Any]:
    from .arch import parse_spec
    from .conversion import convert
    from .deploy import parse_serving

    spec = parse_spec(_spec_source(args.spec))
    serving = parse_serving(args.serving) if args.serving is not None else None
    with err.status(f"{checkpoint.name}: starting") as status:
        on_stage: Callable[[str], None] = lambda stage: status.update(f"{checkpoint.name}: {stage}")  # noqa: E731
        result = convert(
            spec,
            checkpoint,
            device=args.device,
            tolerance=args.tolerance,
            progress=on_stage,
            serving=serving,
            weights=args.weights,
            reference=args.reference,
            calibration=args.calibration,
        )
        status.update(f"{checkpoint.name}: writing artifacts")
        digests = result.save(out_dir, export=not args.no_export)
    return {
        "checkpoint": str(checkpoint),
        "out": str(out_dir),
        "report": result.report.model_dump(mode="json"),
        "timings": result.timings,
        "sha256": digests,
    }


def _spec_source(value: str) -> str | Path:
    """``--spec``: inline JSON/YAML text, or the path of a file holding it."""
    if value.lstrip().startswith(("{", "[")) or "\n" in value:
        return value
    path = Path(value)
    try:
        return path if path.is_file() else value
    except OSError:  # e.g. a name longer than the file system allows: not a file
        return value


def _cmd_convert(args: argparse.Namespace) -> int:
    summary = _convert_one(args, args.checkpoint, args.out)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        _print_summary([summary])
    return EXIT_OK


def _cmd_convert_dir(args: argparse.Namespace) -> int:
    if not args.checkpoints.is_dir():
        raise ReparamError(f"{args.checkpoints} is not a folder")
    files = sorted(p for p in args.checkpoints.iterdir() if p.is_file() and p.suffix in CHECKPOINT_SUFFIXES)
    if not files:
        raise ReparamError(f"no checkpoint files ({', '.join(CHECKPOINT_SUFFIXES)}) in {args.checkpoints}")
    results: list[dict[str, Any]] = []
    code = EXIT_OK
    folders = _output_folders(files)
    for path in files:
        try:
            results.append(_convert_one(args, path, args.out / folders[path]))
        except EquivalenceError as exc:
            code = max(code, EXIT_GATE)
            results.append({"checkpoint": str(path), "error": str(exc), "exit_code": EXIT_GATE})
        except ReparamError as exc:
            code = max(code, EXIT_INPUT)
            results.append({"checkpoint": str(path), "error": str(exc), "exit_code": EXIT_INPUT})
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        _print_summary(results)
    return code


def _output_folders(files: list[Path]) -> dict[Path, str]:
    """Each checkpoint's output folder: its name without checkpoint suffixes (``best.pth.tar`` ->
    ``best``), or its whole name where two files would share one (``a.pt``, ``a.pth``)."""
    bare = {}
    for path in files:
        name = path.name
        while Path(name).suffix in CHECKPOINT_SUFFIXES and Path(name).stem:
            name = Path(name).stem
        bare[path] = name
    shared = {name for name in bare.values() if list(bare.values()).count(name) > 1}
    return {path: path.name if name in shared else name for path, name in bare.items()}


def _print_summary(results: list[dict[str, Any]]) -> None:
    table = Table(title="conversion")
    for column in (
        "checkpoint",
        "status",
        "format",
        "fp64 rel err",
        "fp32 rel err",
        "serving rel err",
        "convs",
        "params",
        "seconds",
    ):
        table.add_column(column)
    for item in results:
        if "error" in item:
            table.add_row(Path(item["checkpoint"]).name, f"[red]{item['error']}[/red]", *[""] * 7)
            continue
        report = item["report"]
        worst = max(r["max_rel_error"] for r in report["fp64"])
        table.add_row(
            Path(item["checkpoint"]).name,
            "[green]passed[/green]",
            report["checkpoint_format"],
            f"{worst:.2e}",
            f"{report['fp32']['max_rel_error']:.2e}",
            _serving_cell(report.get("serving")),
            f"{report['convs_train']} -> {report['convs_deploy']}",
            f"{report['params_train'] / 1e6:.2f}M -> {report['params_deploy'] / 1e6:.2f}M",
            f"{sum(item['timings'].values()):.2f}",
        )
    out.print(table)
    for item in results:
        quantization = item.get("report", {}).get("quantization")
        if quantization is not None:
            out.print(_quantization_line(Path(item["checkpoint"]).name, item["report"]), highlight=False)


def _quantization_line(name: str, report: dict[str, Any]) -> str:
    """One line per checkpoint with a quantization report: the layers that will break INT8."""
    quantization = report["quantization"]
    layers = {layer["name"]: layer for layer in quantization["layers"]}
    worst = ", ".join(
        f"{n} (logits error {layers[n]['int8']['logits_rel_error']:.2e}, outlier ratio "
        f"{layers[n]['outlier_ratio']:.1f})"
        for n in quantization["worst_layers"]
    )
    whole = quantization["all_layers"]
    line = (
        f"{name}: int8 (simulated, every layer) logits error {whole['logits_rel_error']:.2e}, "
        f"top-1 agreement {whole['top1_agreement']:.3f} on {quantization['samples']} inputs; "
        f"worst layers alone: {worst}"
    )
    int8 = report.get("int8")
    if int8 is not None:
        line += (
            f"; model.int8.onnx top-1 agreement {int8['top1_agreement']:.3f} on {int8['held_out_samples']} "
            "held-out inputs"
        )
        if int8.get("float_layers"):
            every = int8["trials"][0]
            line += (
                f" with {', '.join(int8['float_layers'])} kept float32 (every layer int8: "
                f"{every['top1_agreement']:.3f})"
            )
    return line


def _serving_cell(serving: dict[str, Any] | None) -> str:
    if serving is None:
        return "-"
    return f"{serving['options']['precision']} {serving['equivalence']['max_rel_error']:.2e}"


def _cmd_fuse_graph(args: argparse.Namespace) -> int:
    from .graph.pipeline import fuse_checkpoint, load_factory, write_graph_artifacts

    shape = _shape(args.input_shape)
    with err.status("fusing the graph"):
        result = fuse_checkpoint(
            load_factory(args.factory), args.checkpoint, shape, device=args.device, tolerance=args.tolerance
        )
        digests = write_graph_artifacts(result, args.out, export=not args.no_export)
    summary = {
        "out": str(args.out),
        "fusion": result.fusion.model_dump(mode="json"),
        "equivalence": [r.model_dump(mode="json") for r in result.equivalence],
        "sha256": digests,
    }
    if args.json:
        print(json.dumps(summary, indent=2))
        return EXIT_OK
    report = result.fusion
    out.print(
        f"convs {report.convs_before} -> {report.convs_after}, parameters {report.params_before:,} -> "
        f"{report.params_after:,}, {len(report.regions)} regions, max fp64 relative error "
        f"{max(r.max_rel_error for r in result.equivalence):.2e}; artifacts in {args.out}"
    )
    counts = Counter(f"{item.op} ({item.reason})" for item in report.unmerged)
    if counts:
        listing = ", ".join(f"{n} x {what}" for what, n in counts.most_common())
        out.print(f"  left as they are: {listing}; details in report.json", highlight=False)
    return EXIT_OK


def _cmd_reference(args: argparse.Namespace) -> int:
    import torch

    from .checkpoints import check_values, load_strictly, read_checkpoint
    from .graph.pipeline import load_factory
    from .reference import make_reference

    shape = _shape(args.input_shape)
    model = load_factory(args.factory)
    state = read_checkpoint(args.checkpoint, weights=args.weights).state
    check_values(state)
    load_strictly(model, state)
    dtype = getattr(torch, args.dtype)
    inputs = torch.randn(shape, generator=torch.Generator().manual_seed(args.seed), dtype=dtype)
    reference = make_reference(model.to(dtype), inputs, args.out)
    out.print(
        f"{args.out}: {shape[0]} inputs {list(shape)}, outputs {list(reference.outputs.shape)} ({args.dtype})"
    )
    return EXIT_OK


def _shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise ReparamError(f"input shape {text!r}: expected N,C,H,W integers") from None
    if len(shape) != 4 or min(shape) < 1:
        raise ReparamError(f"input shape {text!r}: expected four positive integers N,C,H,W")
    return shape


def _cmd_repopt_scales(args: argparse.Namespace) -> int:
    from .optim import extract_scales, save_scales

    scales = extract_scales(args.checkpoint)
    save_scales(scales, args.out)
    identity = sum(1 for found in scales.values() if "identity" in found)
    out.print(
        f"{args.out}: scales of {len(scales)} blocks ({identity} with an identity branch)", highlight=False
    )
    return EXIT_OK


def _cmd_example(args: argparse.Namespace) -> int:
    from .example import write_example

    paths = write_example(args.out)
    for what, path in paths.items():
        out.print(f"{what:<11} {path}", highlight=False)
    return EXIT_OK


def _cmd_inspect(args: argparse.Namespace) -> int:
    from .checkpoints import inspect_checkpoint

    info = inspect_checkpoint(args.checkpoint)
    if args.json:
        print(info.model_dump_json(indent=2))
        return EXIT_OK
    table = Table(show_header=False, title=str(args.checkpoint))
    for key, value in info.model_dump().items():
        if key != "path":
            table.add_row(
                key,
                ", ".join(value)
                if isinstance(value, list)
                else f"{value:,}"
                if isinstance(value, int)
                else str(value),
            )
    out.print(table)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
