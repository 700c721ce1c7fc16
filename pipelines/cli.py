"""The `vaeaug` command line.

Every command takes `--config FILE.yaml` and dotted overrides (`train.epochs=5 model.latent_dim=8`);
unknown keys are errors; the merged config is saved with the outputs. Failures print one line and
exit non-zero.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from pipelines.config import PipelineConfig, load_config
from pipelines.errors import USER_ERRORS
from vae.io import ModelFileError

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
    return load_config(args.config, args.overrides)


def _config_with_data_shape(args: argparse.Namespace) -> PipelineConfig:
    """The config, with the model's image size and channels the user left unset inferred from the data."""
    from pipelines.data import resolve_data_shape

    cfg = _config(args)
    note = resolve_data_shape(cfg)
    if note:
        print(note)
    return cfg


def cmd_train(args: argparse.Namespace) -> int:
    """Train the VAE on Ray Train (or locally with train.backend=local) and export it to
    <output_dir>/model with its metrics, loss curve and sample grid."""
    from pipelines.stages import save_merged_config, train_stage

    cfg = _config_with_data_shape(args)
    save_merged_config(cfg)
    result = train_stage(cfg)
    print(f"model: {result.model_dir}  (sha256 {result.sha256[:12]})")
    print(f"sample grid: {result.grid_path}")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    """Sample a synthetic dataset from a trained model on Ray and commit it as Parquet."""
    from pipelines.stages import generate_stage, how_to_load, save_merged_config, usefulness_lines

    cfg = _config_with_data_shape(args)
    save_merged_config(cfg)
    out = generate_stage(cfg, model_dir=args.model)
    _print_dataset(out)
    print(how_to_load(out["dataset_dir"]))
    print("\n".join(usefulness_lines(out)))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Print held-out quality figures of a trained model on its data's validation split and, with
    --dataset, the usefulness report of a committed synthetic dataset (does it help a classifier?)."""
    from pipelines.stages import evaluate_stage, usefulness_stage

    cfg = _config_with_data_shape(args)
    report = evaluate_stage(cfg, model_dir=args.model)
    width = max(map(len, report))
    for key, value in report.items():
        print(f"{key:<{width}}  {value:.4g}" if isinstance(value, float) else f"{key:<{width}}  {value}")
    if args.dataset:
        print()
        print("\n".join(usefulness_stage(cfg, args.dataset, model_dir=args.model)))
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    """Print a committed dataset's manifest summary, per-class counts, schema and quality figures."""
    from pipelines.describe import describe_dataset

    print(describe_dataset(args.dataset))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """The whole pipeline as a Prefect flow: load data -> train (Ray Train) -> evaluate ->
    generate (Ray) -> validate and commit the dataset."""
    from pipelines.flow import augmentation_flow
    from pipelines.stages import how_to_load, usefulness_lines

    _config(args)  # validate before starting Prefect or Ray
    summary = augmentation_flow(config_path=args.config, overrides=list(args.overrides))
    print()
    print(
        f"model:   {summary['model_dir']}"
        + ("  (from the training cache)" if summary["training_cached"] else "")
    )
    _print_dataset(summary)
    print(how_to_load(summary["dataset_dir"]))
    print()
    print("\n".join(usefulness_lines(summary)))
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


def _print_dataset(out: dict) -> None:
    print(f"dataset: {out['dataset_dir']}  ({out['rows']} rows in {len(out['files'])} files, committed)")
    if out.get("per_class"):
        print("per class: " + ", ".join(f"{k}={v}" for k, v in out["per_class"].items()))


def _add_model_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", metavar="DIR", help="model directory (default: <output_dir>/model)")


def _add_evaluate_args(p: argparse.ArgumentParser) -> None:
    _add_model_arg(p)
    p.add_argument(
        "--dataset", metavar="DIR", help="also measure the usefulness of this committed synthetic dataset"
    )


def _add_inspect_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("dataset", help="committed dataset directory (local path or fsspec URL)")


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


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with one subcommand per entry of `COMMANDS`."""
    parser = argparse.ArgumentParser(
        prog="vaeaug",
        description="Train a VAE on a small labelled image set and generate synthetic data at scale.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (func, add_args, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=func.__doc__)
        add_args(p)
        p.set_defaults(func=func)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `vaeaug` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(message)s")
    try:
        return args.func(args)
    except (*USER_ERRORS, ModelFileError) as exc:
        print(f"vaeaug {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"vaeaug {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
