"""The training benchmark's code path (scripts/bench_train.py) on SDXL's layout in miniature: both sides run in
their own processes under each memory feature set and give rows that can be compared. No timing is asserted."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"
sys.path.insert(0, str(SCRIPTS))

import bench_train  # noqa: E402


def test_sdxl_config_is_sdxl_base():
    """The full config is SDXL base 1.0's: the widths, depths and conditioning sizes that set its cost."""
    config = bench_train.sdxl_unet_config()
    assert config["block_out_channels"] == (320, 640, 1280)
    assert config["transformer_layers_per_block"] == (1, 2, 10)
    assert config["cross_attention_dim"] == 2048
    assert config["projection_class_embeddings_input_dim"] == 6 * config["addition_time_embed_dim"] + 1280
    first, second = bench_train.sdxl_text_configs()
    assert first["hidden_size"] + second["hidden_size"] == config["cross_attention_dim"]


def test_tiny_sdxl_rows_compare(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    parser_args = [
        "--sdxl", "--tiny", "--methods", "lora", "--steps", "3", "--warmup", "0", "--rounds", "1",
        "--resolution", "64", "--features", "off,on",
    ]  # fmt: skip
    args = _parse(parser_args)
    rows = bench_train.measure(args)
    assert [(r["features"], r["method"]) for r in rows] == [
        ("off", "diffusers_lora"),
        ("off", "lora"),
        ("on", "diffusers_lora"),
        ("on", "lora"),
    ]
    for row in rows:
        for key in ("step_seconds", "step_ratio", "peak_ratio", "total_ratio"):
            assert math.isfinite(row[key]) and row[key] > 0, (row, key)
        assert row["total_bytes"] > 0
    # Same targets (to_q, to_k, to_v, to_out.0), same rank: both sides train the same number of parameters.
    by_cell = {(r["features"], r["method"]): r for r in rows}
    for features in ("off", "on"):
        assert by_cell[features, "lora"]["trainable"] == by_cell[features, "diffusers_lora"]["trainable"] > 0
    recipe = next(r for r in rows if r["method"] == "diffusers_lora")
    assert recipe["step_ratio"] == recipe["peak_ratio"] == 1.0


def _parse(argv):
    """The script's own argument handling, stopped before it measures."""
    captured = {}

    def fake_measure(args):
        captured["args"] = args
        raise _Stop

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(bench_train, "measure", fake_measure)
        with pytest.raises(_Stop):
            bench_train.main(argv)
    return captured["args"]


class _Stop(Exception):
    pass


def test_bad_feature_set_is_refused(capsys):
    with pytest.raises(SystemExit) as stop:
        bench_train.main(["--sdxl", "--tiny", "--features", "fast"])
    assert stop.value.code == 2
    assert "'fast' is not one of off, cached, on" in capsys.readouterr().err
