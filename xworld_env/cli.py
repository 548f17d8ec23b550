"""The ``xworld`` command.

Subcommands that take hydra overrides (``key=value``) pass them to the config they compose.
"""

from __future__ import annotations

import argparse
import sys


def _render_sheet(args: argparse.Namespace) -> int:
    from xworld_env.sim.contact_sheet import render_sheet

    path = render_sheet(args.out, seed=args.seed)
    print(f"wrote {path}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    if args.target == "sim":
        from xworld_env.bench import sim

        sim.main(steps=args.steps, json_path=args.json)
        return 0
    raise AssertionError(args.target)


def _generate(args: argparse.Namespace) -> int:
    from xworld_env.data.generate import main

    return main(args.overrides)


def _scenario_bank(args: argparse.Namespace) -> int:
    from xworld_env.data.scenario_bank import main

    return main(args.overrides)


def _train(args: argparse.Namespace) -> int:
    from xworld_env.training import run_stage

    result = run_stage(args.stage, args.overrides)
    for key, value in result.items():
        print(f"{key}: {value}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xworld",
        description="xworld-env: a driving world model as a Gymnasium environment.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("render-sheet", help="write a PNG: one row of the seven views per family")
    p.add_argument("--out", required=True, help="PNG path to write")
    p.add_argument("--seed", type=int, default=0, help="scenario seed (default 0)")
    p.set_defaults(func=_render_sheet)

    p = sub.add_parser("bench", help="benchmarks that print a table and write JSON")
    p.add_argument("target", choices=["sim"], help="what to measure")
    p.add_argument("--json", default=None, help="write the results to this JSON file")
    p.add_argument("--steps", type=int, default=40, help="env steps per family (sim)")
    p.set_defaults(func=_bench)

    p = sub.add_parser(
        "generate", help="write a simulator dataset (hydra overrides, e.g. data.out_dir=DIR)"
    )
    p.add_argument("overrides", nargs="*", help="hydra overrides of configs/generate.yaml")
    p.set_defaults(func=_generate)

    p = sub.add_parser(
        "scenario-bank", help="build the scenario bank of env starts from a dataset"
    )
    p.add_argument("overrides", nargs="*", help="hydra overrides of configs/scenario_bank.yaml")
    p.set_defaults(func=_scenario_bank)

    p = sub.add_parser(
        "train", help="train a stage of the world model (hydra overrides of configs/train/STAGE)"
    )
    p.add_argument("stage", choices=["autoencoder", "world-model", "heads", "bundle"])
    p.add_argument("overrides", nargs="*", help="hydra overrides, e.g. steps=100 device=cuda")
    p.set_defaults(func=_train)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        print(f"xworld {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
