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


def cmd_train(args: argparse.Namespace) -> int:
    """Train the VAE and export it (model, metrics, loss curve, sample grid) to `<output_dir>/model`."""
    from pipelines.stages import train_stage

    cfg = _config(args)
    result = train_stage(cfg)
    print(f"model: {result.model_dir}  (sha256 {result.sha256[:12]})")
    print(f"sample grid: {result.grid_path}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """The main job on the configured data (default: scikit-learn digits)."""
    return cmd_train(args)


COMMANDS: dict[str, tuple[Callable[[argparse.Namespace], int], str]] = {
    "run": (cmd_run, "run the whole job: train the VAE, write the model and a sample grid"),
    "train": (cmd_train, "train the VAE and export it"),
}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with one subcommand per entry of `COMMANDS`."""
    parser = argparse.ArgumentParser(
        prog="vaeaug",
        description="Train a VAE on a small labelled image set and generate synthetic data at scale.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (func, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=func.__doc__)
        _add_config_args(p)
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
