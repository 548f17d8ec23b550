"""The ``xworld`` command: every subcommand runs, errors exit with a message."""

import json

import pytest
from PIL import Image

from xworld_env.cli import main


def test_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for command in ("demo", "render-sheet", "bench", "generate", "scenario-bank", "train"):
        assert command in out


def test_version_names_the_package_and_torch(capsys):
    import torch

    from xworld_env import __version__

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert f"xworld-env {__version__}" in out and f"torch {torch.__version__}" in out


def test_render_sheet(tmp_path):
    out = tmp_path / "sheet.png"
    assert main(["render-sheet", "--out", str(out)]) == 0
    width, height = Image.open(out).size
    assert width > 7 * 64 and height > 4 * 64


def test_bench_sim_writes_json(tmp_path):
    path = tmp_path / "sim.json"
    assert main(["bench", "sim", "--steps", "2", "--json", str(path)]) == 0
    result = json.loads(path.read_text())
    assert result["frames_per_s"] > 0 and result["steps_per_s"] > 0
    assert set(result["families"]) == {"highway", "merge", "roundabout", "intersection"}


def test_bench_env_writes_json(tmp_path, tiny_checkpoint):
    path = tmp_path / "env.json"
    args = ["bench", "env", "--steps", "2", "--sizes", "2", "--checkpoint", str(tiny_checkpoint),
            "--json", str(path)]
    assert main(args) == 0
    result = json.loads(path.read_text())
    assert set(result["single"]) == {"xcache", "none"} and set(result["batched"]) == {"2"}


def test_bench_env_times_baselines_beside_xcache(tmp_path, tiny_checkpoint, capsys):
    from xworld_env.bench.env import run

    path = tmp_path / "env.json"
    args = ["bench", "env", "--steps", "2", "--sizes", "2", "--checkpoint", str(tiny_checkpoint),
            "--baselines", "fbcache", "--json", str(path)]
    assert main(args) == 0
    result = json.loads(path.read_text())
    assert set(result["single"]) == {"xcache", "none", "fbcache"}
    assert set(result["batched"]["2"]) == {"xcache", "xcache_all", "none", "fbcache"}
    assert "fbcache" in result["skip_rate"]["single"] and "fbcache" in capsys.readouterr().out
    with pytest.raises(ValueError, match="baselines must be distinct names"):
        run(baselines=("tecache",))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "int8"])
def test_demo_writes_a_video(tmp_path, tiny_checkpoint, capsys, dtype):
    out = tmp_path / "demo.gif"
    args = ["demo", "--steps", "3", "--out", str(out), "--checkpoint", str(tiny_checkpoint),
            "--dtype", dtype]
    assert main(args) == 0
    assert out.stat().st_size > 0
    printed = capsys.readouterr().out
    assert "steps/s" in printed and "skip rate" in printed and "PSNR" in printed


def test_bad_override_exits_with_a_message(capsys, tmp_path):
    assert main(["generate", "data.nonsense=1", f"data.out={tmp_path}"]) == 2
    assert "error" in capsys.readouterr().err
    assert main(["train", "heads", "steps=0"]) == 2


@pytest.mark.parametrize("other", ["bfloat16", "int8"])
def test_bench_env_compares_precisions_side_by_side(tmp_path, tiny_checkpoint, other):
    from xworld_env.bench.env import run

    path = tmp_path / "env.json"
    args = ["bench", "env", "--steps", "1", "--sizes", "2", "--checkpoint", str(tiny_checkpoint),
            "--dtype", "float32", other, "--json", str(path)]
    assert main(args) == 0
    result = json.loads(path.read_text())
    assert result["dtype"] == "float32" and set(result["precisions"]) == {"float32", other}
    assert result["single"] == result["precisions"]["float32"]["single"]
    low = result["precisions"][other]
    ratio = result["speedup"][other]["batched"]["2"]["none"]
    assert abs(ratio - low["batched"]["2"]["none"] / result["batched"]["2"]["none"]) < 1e-9
    with pytest.raises(ValueError, match="dtype must be one of"):
        run(dtypes=("int4",))


def test_bench_env_compares_decoder_precisions_side_by_side(tmp_path, tiny_checkpoint):
    from xworld_env.bench.env import run

    path = tmp_path / "env.json"
    args = ["bench", "env", "--steps", "1", "--sizes", "1", "--checkpoint", str(tiny_checkpoint),
            "--decode-dtype", "float32", "bfloat16", "--repeats", "2", "--json", str(path)]
    assert main(args) == 0
    result = json.loads(path.read_text())
    labels = ["float32+decode:float32", "float32+decode:bfloat16"]
    assert result["decode_dtype"] == dict(zip(labels, ["float32", "bfloat16"], strict=True))
    assert list(result["precisions"]) == labels and list(result["speedup"]) == labels[1:]
    assert result["single"] == result["precisions"][labels[0]]["single"]
    with pytest.raises(ValueError, match="decode_dtype must be one of"):
        run(decode_dtypes=("int8",))
    assert result["repeats"] == 2
    with pytest.raises(ValueError, match="repeats must be an int >= 1"):
        run(repeats=0)


def test_bench_env_compares_attention_precisions_side_by_side(monkeypatch, capsys):
    from xworld_env.bench import env as bench_env

    seen = []

    def measure(kind):
        def run_one(cache, steps, seed, checkpoint, *rest):
            precision = rest[0] if kind == "single" else rest[1]
            seen.append(precision)
            return (2.0, 0.5, 1.0) if kind == "single" else (2.0, 0.5)

        return run_one

    monkeypatch.setattr(bench_env, "_single", measure("single"))
    monkeypatch.setattr(bench_env, "_batched", measure("batched"))
    args = ["bench", "env", "--steps", "1", "--sizes", "1", "--dtype", "int8",
            "--attention-dtype", "float32", "bfloat16"]
    assert main(args) == 0
    labels = ["int8+attention:float32", "int8+attention:bfloat16"]
    assert {("int8", "auto", "float32"), ("int8", "auto", "bfloat16")} == set(seen)
    assert "int8+attention:bfloat16 over int8+attention:float32" in capsys.readouterr().out
    result = bench_env.run(steps=1, sizes=(), dtypes=("int8",), progress=False,
                           attention_dtypes=("float32", "bfloat16"))
    assert result["attention_dtype"] == dict(zip(labels, ["float32", "bfloat16"], strict=True))
    with pytest.raises(ValueError, match="applies to float32 and int8 DiTs"):
        bench_env.run(dtypes=("bfloat16",), attention_dtypes=("float32",), progress=False)


def test_precision_noise_and_speed_choices_match_the_engine():
    from xworld_env.cli import (
        ATTENTION_PRECISIONS,
        DECODE_PRECISIONS,
        NOISES,
        PRECISIONS,
        SPEEDS,
    )
    from xworld_env.engine import (
        ATTENTION_DTYPES,
        DECODE_DTYPES,
        DIT_DTYPES,
        NOISE_MODES,
        SPEED_SOURCES,
    )

    assert set(PRECISIONS) == set(DIT_DTYPES)
    assert set(DECODE_PRECISIONS) == set(DECODE_DTYPES)
    assert set(ATTENTION_PRECISIONS) == set(ATTENTION_DTYPES)
    assert set(NOISES) == set(NOISE_MODES)
    assert set(SPEEDS) == set(SPEED_SOURCES)


def test_bench_env_repeats_take_rounds_and_medians(monkeypatch):
    from xworld_env.bench import env as bench_env

    calls = []

    def fake(kind):
        def measure(cache, *args):
            calls.append((kind, str(cache)))
            # Rounds 1, 2, 3 give 1, 10, 4 steps/s: the median is 4.
            rate = (1.0, 10.0, 4.0)[(len(calls) - 1) // 5]
            # The single env also measures how much its views move.
            return (rate, 0.5, 2.5) if kind == "single" else (rate, 0.5)

        return measure

    monkeypatch.setattr(bench_env, "_single", fake("single"))
    monkeypatch.setattr(bench_env, "_batched", fake("batched"))
    result = bench_env.run(steps=1, sizes=(2,), repeats=3, progress=False)
    one_round = [("single", "xcache"), ("single", "none"), ("batched", "xcache"),
                 ("batched", str(bench_env.BATCHED_POLICIES["xcache_all"])), ("batched", "none")]
    assert calls == one_round * 3  # every measurement once per round, rounds one after another
    assert result["single"] == {"xcache": 4.0, "none": 4.0}
    assert result["batched"]["2"] == {"xcache": 4.0, "xcache_all": 4.0, "none": 4.0}
    assert result["skip_rate"]["single"] == {"xcache": 0.5, "none": 0.5}
    assert result["motion"] == {"xcache": 2.5, "none": 2.5}
    assert result["noise"] == "checkpoint"
