"""The `vaeaug` command line.

Every command takes `--config FILE.yaml` and dotted overrides (`train.epochs=5 model.latent_dim=8`);
unknown keys are errors; the merged config is saved with the outputs. Failures print one line and
exit non-zero. `inspect --json` and `evaluate --json` print one JSON document on stdout.

This module imports only light modules at the top (no torch, Ray or Prefect), so `vaeaug --help`,
`vaeaug COMMAND --help` and `vaeaug --version` answer at once; each command imports what it needs.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from pipelines.errors import USER_ERRORS

if TYPE_CHECKING:
    from pipelines.config import PipelineConfig

EXIT_USER_ERROR = 2


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", metavar="FILE", help="YAML config (sections: data, model, train, ...)")
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="dotted overrides applied after the file, e.g. train.epochs=5 model.latent_dim=8",
    )


def _config(args: argparse.Namespace) -> PipelineConfig:
    from pipelines.config import load_config

    return load_config(args.config, args.overrides)


def _config_with_data_shape(args: argparse.Namespace) -> PipelineConfig:
    """The config, with the model's image size and channels the user left unset inferred from the data
    (the note saying so goes to stderr with --json, keeping stdout for the JSON document)."""
    from pipelines.data import resolve_data_shape

    cfg = _config(args)
    note = resolve_data_shape(cfg)
    if note and getattr(args, "json", False):
        print(note, file=sys.stderr)
    elif note:
        from pipelines.console import console

        console.line(note)
    return cfg


def _json_ready(value: Any) -> Any:
    """`value` with non-finite floats as None (JSON has no NaN/inf) and tuples as lists."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_ready(v) for v in value]
    return value


def _print_json(document: Any) -> None:
    """Print `document` as the one JSON document on stdout (strict JSON: NaN/inf become null)."""
    print(json.dumps(_json_ready(document), indent=2, allow_nan=False))


def cmd_train(args: argparse.Namespace) -> int:
    """Train the VAE on Ray Train (or locally with train.backend=local) and export it to
    <output_dir>/model with its metrics, loss curve and sample grid."""
    from pipelines.console import console
    from pipelines.stages import (
        describe_data,
        load_data,
        model_pictures,
        save_merged_config,
        train_job_stage,
        train_stage,
    )

    cfg = _config_with_data_shape(args)
    save_merged_config(cfg)
    with console.stage("train"):
        if cfg.ray.submit_job:  # the cluster loads the data
            result = train_job_stage(cfg)
        else:
            data = load_data(cfg)
            console.line(describe_data(cfg, data))
            result = train_stage(cfg, data)
    console.plain(f"model: {result.model_dir}  (sha256 {result.sha256[:12]})")
    for what, path in model_pictures(result.model_dir, result.grid_path).items():
        console.plain(f"picture: {path}  ({what})")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    """Sample a synthetic dataset from a trained model on Ray and commit it as Parquet."""
    from pipelines.console import console
    from pipelines.stages import generate_stage, how_to_load, save_merged_config, usefulness_lines

    cfg = _config_with_data_shape(args)
    save_merged_config(cfg)
    dataset = generate_stage(cfg, None, model_dir=args.model)  # it loads real images if it needs any
    print(f"dataset: {dataset.dataset_dir}  ({dataset.rows} rows in {len(dataset.files)} files, committed)")
    if dataset.per_class:
        print("per class: " + ", ".join(f"{k}={v}" for k, v in dataset.per_class.items()))
    for what, path in dataset.pictures().items():
        console.plain(f"picture: {path}  ({what})")
    console.plain("\n".join(usefulness_lines(dataset)))
    console.plain(how_to_load(dataset.dataset_dir))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Print held-out quality figures of a trained model on its data's validation split and, with
    --dataset, the usefulness report of a committed synthetic dataset (does it help a classifier?)."""
    from pipelines.stages import evaluate_stage, load_data, usefulness_report_stage

    cfg = _config_with_data_shape(args)
    report = evaluate_stage(cfg, load_data(cfg), model_dir=args.model).to_dict()
    useful, note = usefulness_report_stage(cfg, args.dataset, args.model) if args.dataset else (None, None)
    if args.json:
        doc: dict[str, Any] = {"model_dir": args.model or cfg.model_dir, "quality": report}
        if args.dataset:
            doc["usefulness"] = useful.to_dict() if useful is not None else {"skipped": note}
        _print_json(doc)
        return 0
    width = max(map(len, report))
    for key, value in report.items():
        print(f"{key:<{width}}  {value:.4g}" if isinstance(value, float) else f"{key:<{width}}  {value}")
    if args.dataset:
        print()
        print("\n".join(useful.summary_lines() if useful is not None else [f"usefulness: {note}"]))
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    """Print a committed dataset's manifest summary, per-class counts, preview image, usefulness
    headline, schema (with class names) and quality figures."""
    from pipelines.inspection import dataset_description, render_description

    description = dataset_description(args.dataset)
    if args.json:
        _print_json(description.to_dict())
    else:
        print(render_description(description))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """The whole pipeline as a Prefect flow: check the job -> load data -> train (Ray Train) ->
    evaluate -> generate (Ray) and measure the set's usefulness -> validate and commit the dataset."""
    from pipelines.console import console
    from pipelines.redaction import refuse_secret_parameters

    refuse_secret_parameters(overrides=args.overrides, where="overrides")  # before the line echoing them
    given = " ".join(args.overrides) or "no overrides"
    console.line(f"vaeaug {package_version()} run: config {args.config or '(defaults)'}, {given}")
    from pipelines.launch import run_pipeline

    returned = run_pipeline(args.config, list(args.overrides))
    from pipelines.stages import RunSummary, run_summary

    summary = RunSummary.from_dict(returned).with_timing("total", console.elapsed())
    console.plain(run_summary(summary))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve the pipeline flow on a cron or interval schedule (runs until interrupted)."""
    from pipelines.schedule import build_deployment, deployment_parameters, serve

    params = deployment_parameters(args.config, list(args.overrides))
    deployment = build_deployment(
        args.name, cron=args.cron, interval_s=args.interval, timezone=args.timezone, parameters=params
    )
    serve(deployment)
    return 0


def _add_model_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", metavar="DIR", help="model directory (default: <output_dir>/model)")


def _add_json_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--json", action="store_true", help="print one JSON document on stdout (notes go to stderr)"
    )


def _add_evaluate_args(p: argparse.ArgumentParser) -> None:
    _add_model_arg(p)
    p.add_argument(
        "--dataset", metavar="DIR", help="also measure the usefulness of this committed synthetic dataset"
    )
    _add_json_arg(p)


def _add_inspect_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("dataset", help="committed dataset directory (local path or fsspec URL)")
    _add_json_arg(p)


def _add_serve_args(p: argparse.ArgumentParser) -> None:
    _add_config_args(p)
    p.add_argument("--name", default="scheduled", help="deployment name (default: scheduled)")
    when = p.add_mutually_exclusive_group(required=True)
    when.add_argument("--cron", help="cron schedule, e.g. '0 3 * * *'")
    when.add_argument("--interval", type=float, metavar="SECONDS", help="run every N seconds")
    p.add_argument("--timezone", default="UTC", help="time zone of the cron (default: UTC)")


def _with_config(extra: Callable[[argparse.ArgumentParser], None] | None = None):
    def add(p: argparse.ArgumentParser) -> None:
        _add_config_args(p)
        if extra is not None:
            extra(p)

    return add


COMMANDS: dict[str, tuple[Callable[[argparse.Namespace], int], Callable, str]] = {
    "run": (cmd_run, _with_config(), "run the whole pipeline (train, evaluate, generate, commit) as a flow"),
    "train": (cmd_train, _with_config(), "train the VAE on Ray Train and export it"),
    "generate": (cmd_generate, _with_config(_add_model_arg), "sample and commit a synthetic dataset"),
    "evaluate": (
        cmd_evaluate,
        _with_config(_add_evaluate_args),
        "held-out quality of a trained model; --dataset: usefulness of a synthetic set",
    ),
    "inspect": (cmd_inspect, _add_inspect_args, "describe a committed synthetic dataset"),
    "serve": (cmd_serve, _add_serve_args, "serve the pipeline flow on a cron/interval schedule"),
}


def package_version() -> str:
    """The installed `vaeaug` distribution's version ("unknown" when it is not installed)."""
    from importlib import metadata

    try:
        return metadata.version("vaeaug")
    except metadata.PackageNotFoundError:
        return "unknown"


def _verbose_flag(default: Any) -> argparse.ArgumentParser:
    """A parent parser holding -v/--verbose with `default`."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("-v", "--verbose", action="store_true", default=default, help="debug logging")
    return parent


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with one subcommand per entry of `COMMANDS`.

    -v/--verbose is accepted before and after the command: the subcommands' copy defaults to
    SUPPRESS, so it never resets a -v given before the command.
    """
    parser = argparse.ArgumentParser(
        prog="vaeaug",
        description="Train a VAE on a small labelled image set and generate synthetic data at scale.",
        parents=[_verbose_flag(False)],
    )
    parser.add_argument("--version", action="version", version=f"vaeaug {package_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    verbose = _verbose_flag(argparse.SUPPRESS)
    for name, (func, add_args, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=func.__doc__, parents=[verbose])
        add_args(p)
        p.set_defaults(func=func)
    return parser


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse `argv`, letting options sit between KEY=VALUE overrides (`run a=1 -v b=2`).

    argparse fills a `nargs="*"` positional once, so overrides after an option come back unparsed:
    they are appended, in order, to the command's overrides. Anything else left over is an error.
    """
    args, extras = parser.parse_known_args(argv)
    if extras and hasattr(args, "overrides") and not any(e.startswith("-") for e in extras):
        args.overrides = [*args.overrides, *extras]
    elif extras:
        parser.error(f"unrecognized arguments: {' '.join(extras)}")
    return args


def _user_errors() -> tuple[type[BaseException], ...]:
    """`USER_ERRORS` plus `vae.io.ModelFileError` once `vae.io` is loaded (it imports torch; an
    error of that type can only come from code that loaded it)."""
    io = sys.modules.get("vae.io")
    return (*USER_ERRORS, io.ModelFileError) if io is not None else USER_ERRORS


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `vaeaug` console script; returns the exit code."""
    parser = build_parser()
    args = parse_args(parser, argv)
    from pipelines.console import console, route_logs, set_verbose

    console.restart()
    set_verbose(args.verbose)
    route_logs(args.verbose)
    try:
        return args.func(args)
    except _user_errors() as exc:
        print(f"vaeaug {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"vaeaug {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
