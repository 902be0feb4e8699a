"""The command line: the main job's table on the embedded default, `inspect`, and one-line errors."""

from __future__ import annotations

import pytest

from bora_diffusion.cli import main


@pytest.fixture(autouse=True)
def _home(tmp_path, monkeypatch):
    monkeypatch.setenv("BORA_DIFFUSION_HOME", str(tmp_path / "home"))


def test_methods_runs_each_method_and_keeps_files(tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["methods", "--method", "sbora_fa", "--method", "dora", "--rank", "2", "--out", str(out)])
    text = capsys.readouterr().out
    assert code == 0
    rows = [line.split() for line in text.splitlines() if line.startswith(("sbora_fa", "dora"))]
    assert [row[0] for row in rows] == ["sbora_fa", "dora"]
    assert all(row[-1] == "bit-exact" for row in rows)
    assert rows[0][1] == "32" and rows[0][2] == "2,560"  # 32 projections; FA trains r * out per layer
    assert sorted(p.name for p in out.iterdir()) == ["dora.safetensors", "sbora_fa.safetensors"]

    assert main(["inspect", str(out / "sbora_fa.safetensors")]) == 0
    shown = capsys.readouterr().out
    assert "method:      sbora_fa   rank: 2" in shown and "slots:       in space" in shown


def test_user_mistakes_are_one_line_errors_with_status_2(tmp_path, capsys):
    assert main(["inspect", str(tmp_path / "missing.safetensors")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "not found" in err and err.count("\n") == 1
    assert main(["methods", "--base", "./no/such/folder"]) == 2
    assert "no/such/folder" in capsys.readouterr().err
    assert main(["methods", "--targets", "nonsense"]) == 2
    assert "unknown target preset 'nonsense'" in capsys.readouterr().err
