"""The ``xworld`` command.

Subcommands that take hydra overrides (``key=value``) pass them to the config they compose.
"""

from __future__ import annotations

import argparse
import sys

#: Floating-point precisions (``engine.COMPUTE_DTYPES``; spelled out here so that building the
#: parser does not import torch).
FLOAT_PRECISIONS = ("float32", "bfloat16", "float16")
#: World-model precisions the commands accept (``engine.DIT_DTYPES``).
PRECISIONS = (*FLOAT_PRECISIONS, "int8")
#: Decoder precisions (``engine.DECODE_DTYPES``).
DECODE_PRECISIONS = ("auto", *FLOAT_PRECISIONS)
#: Precisions of attention's products (``engine.ATTENTION_DTYPES``).
ATTENTION_PRECISIONS = ("auto", "float32", "bfloat16")
#: Noise modes of the engine (``engine.NOISE_MODES``).
NOISES = ("fresh", "fixed")
#: Sources of the ego speed (``engine.SPEED_SOURCES``).
SPEEDS = ("heads", "kinematic")


def _render_sheet(args: argparse.Namespace) -> int:
    from xworld_env.sim.contact_sheet import render_sheet

    path = render_sheet(args.out, seed=args.seed)
    print(f"wrote {path}")
    return 0


def _bench_sim(args: argparse.Namespace) -> int:
    from xworld_env.bench import sim

    sim.main(steps=args.steps, json_path=args.json)
    return 0


def _bench_module(name: str):
    def run(args: argparse.Namespace) -> int:
        import importlib

        importlib.import_module(f"xworld_env.bench.{name}").main(args)
        return 0

    return run


def _demo(args: argparse.Namespace) -> int:
    from xworld_env.demo import main

    main(args)
    return 0


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


def _version() -> str:
    """``xworld-env <version> (torch <version>)``, read without importing torch."""
    from importlib.metadata import PackageNotFoundError, version

    from xworld_env import __version__

    try:
        torch_version = version("torch")
    except PackageNotFoundError:
        torch_version = "not installed"
    return f"xworld-env {__version__} (torch {torch_version})"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xworld",
        description="xworld-env: a driving world model as a Gymnasium environment.",
    )
    parser.add_argument("--version", action="version", version=_version(),
                        help="print the versions of xworld-env and torch, then exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("render-sheet", help="write a PNG: one row of the seven views per family")
    p.add_argument("--out", required=True, help="PNG path to write")
    p.add_argument("--seed", type=int, default=0, help="scenario seed (default 0)")
    p.set_defaults(func=_render_sheet)

    p = sub.add_parser(
        "demo", help="drive the shipped world model with X-Cache, write a video, compare speed"
    )
    p.add_argument("--out", default="xworld_demo.gif",
                   help="video to write: .gif, or .mp4 with imageio-ffmpeg (default %(default)s)")
    p.add_argument("--steps", type=int, default=40, help="env steps (default 40 = 20 s)")
    p.add_argument("--family", default="highway", help="scenario family (default highway)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache", default="xcache", help="cache policy (default xcache)")
    p.add_argument("--dtype", default="float32", choices=PRECISIONS,
                   help="compute precision of both runs (default float32)")
    p.add_argument("--decode-dtype", default="auto", choices=DECODE_PRECISIONS,
                   help="decoder precision of both runs (default auto: bfloat16 on CPUs with "
                        "AMX or AVX512-BF16 when --dtype is float32 or int8)")
    p.add_argument("--speed", default="heads", choices=SPEEDS,
                   help="where the ego speed comes from: read by the heads (default), or the "
                        "pedals integrated with the simulator's vehicle model")
    p.add_argument("--checkpoint", default=None, help="world model folder (default: shipped)")
    p.set_defaults(func=_demo)

    bench = sub.add_parser("bench", help="benchmarks that print a table and write JSON")
    targets = bench.add_subparsers(dest="target", required=True, metavar="TARGET")
    p = targets.add_parser("sim", help="simulator: 7-view frames/s and env steps/s")
    p.add_argument("--steps", type=int, default=40, help="env steps per family")
    p.add_argument("--json", default=None, help="write the results to this JSON file")
    p.set_defaults(func=_bench_sim)
    p = targets.add_parser("env", help="XWorld-v0 steps/s, single and batched, cache on/off")
    p.add_argument("--steps", type=int, default=40,
                   help="steps of every world per measurement, from a reset (default 40; the "
                        "first steps after a reset reuse less while X-Cache calibrates)")
    p.add_argument("--sizes", type=int, nargs="+", default=[1, 4, 8, 16], help="batch sizes")
    p.add_argument("--repeats", type=int, default=1,
                   help="rounds of every measurement; rates are medians (default 1)")
    p.add_argument("--dtype", nargs="+", default=["float32"],
                   choices=PRECISIONS,
                   help="compute precisions of the world model, measured side by side "
                        "(default float32)")
    p.add_argument("--decode-dtype", nargs="+", default=["auto"], choices=DECODE_PRECISIONS,
                   help="decoder precisions, measured side by side with every --dtype "
                        "(default auto: bfloat16 on CPUs with AMX or AVX512-BF16 when the DiT runs "
                        "in float32 or int8)")
    p.add_argument("--attention-dtype", nargs="+", default=["auto"],
                   choices=ATTENTION_PRECISIONS,
                   help="precisions of attention's products, measured side by side with every "
                        "--dtype (default auto: bfloat16 on CPUs with AMX or AVX512-BF16 when the "
                        "DiT runs in int8)")
    p.add_argument("--baselines", nargs="*", default=[], choices=["fbcache", "static"],
                   help="baseline caches to time beside X-Cache, at their defaults (default none)")
    p.add_argument("--noise", choices=NOISES, default=None,
                   help="noise mode of the envs: one draw per episode reused for every chunk "
                        "(fixed) or new noise every chunk (fresh); default: the checkpoint's")
    p.add_argument("--checkpoint", default=None, help="world model folder (default: shipped)")
    p.add_argument("--json", default=None, help="write the results to this JSON file")
    p.set_defaults(func=_bench_module("env"))
    for name, module, text in (
        ("xcache", "fidelity", "X-Cache vs full compute and baselines: speed and fidelity"),
        ("quality", "quality", "world model vs the simulator: PSNR by horizon, heads"),
        ("rllib", "rllib", "env steps/s sampled by Ray RLlib env runners, gSDE and Gaussian "
                            "exploration (distributed extra)"),
    ):
        import importlib

        p = targets.add_parser(name, help=text)
        importlib.import_module(f"xworld_env.bench.{module}").add_arguments(p)
        p.set_defaults(func=_bench_module(module))

    p = sub.add_parser(
        "generate", help="write a simulator dataset (hydra overrides, e.g. data.out=DIR)",
        description="Drives the teacher simulator and writes training shards "
                    "(configs/generate.yaml).\nRerunning the same command after an interruption "
                    "resumes at the first missing shard.",
        epilog="examples:\n  xworld generate data=tiny data.out=/tmp/tiny\n"
               "  xworld generate data.episodes_per_family=64 data.families=[highway,merge]\n"
               "  xworld generate sim.rig.height=128 sim.rig.width=128\n"
               "  xworld generate driver=explore driver.random=0.4 data.out=/tmp/explore",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("overrides", nargs="*", help="hydra overrides of configs/generate.yaml")
    p.set_defaults(func=_generate)

    p = sub.add_parser(
        "scenario-bank", help="build the scenario bank of env starts from a dataset",
        description="Cuts env starts from the validation episodes of a dataset "
                    "(configs/scenario_bank.yaml).",
        epilog="example:\n  xworld scenario-bank dataset=data/xworld_sim "
               "out=xworld_env/assets/scenario_bank.npz",
        formatter_class=argparse.RawDescriptionHelpFormatter,
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
