"""The composition benchmark's code path (scripts/bench_compose.py) on a miniature of SD 1.5's layout. No timing
is asserted: the rows are complete, and the fused model computes what the live concepts compute."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"
sys.path.insert(0, str(SCRIPTS))

import bench_compose  # noqa: E402


def test_tiny_rows_are_complete(tmp_path, capsys):
    out = tmp_path / "compose.json"
    argv = ["--tiny", "--resolution", "64", "--rounds", "1", "--fuse-rounds", "1", "--rows", "sbora_fa:cross_kv",
            "--json", str(out)]  # fmt: skip
    report = bench_compose.main(argv)
    assert json.loads(out.read_text())["rows"] == json.loads(json.dumps(report["rows"]))
    (row,) = report["rows"]
    assert (row["method"], row["targets"], row["concepts"]) == ("sbora_fa", "cross_kv", 10)
    assert (
        row["adapted_layers"] == 20
    )  # attn2.to_k and to_v of the tiny layout's 10 transformer blocks (3 + 1 + 6)
    assert set(row["step_s"]) == {"base", "fused", "live_1", "live_5"}
    for value in (row["fuse_s"], row["compose_s"], *row["step_s"].values(), *row["step_ratio"].values()):
        assert math.isfinite(value) and value > 0
    assert row["step_ratio"]["base"] == 1.0
    assert row["fused_vs_live_rel_error"] < 1e-5  # disjoint slots: the fused weights are the exact sum
    assert "| sbora_fa | cross_kv | 20 |" in capsys.readouterr().out
