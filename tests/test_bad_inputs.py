"""Every bad input the project knows of, as a table (issue 23): each exits 2 with one `error:` line naming the
thing, no traceback, and nothing new on disk. Rows marked early must be refused before any model loads.

To add a case: write a `setup(tmp) -> (argv, expected substring)` that builds the bad input under `tmp`, and
add a `Case` row to CASES.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from PIL import Image

import bora_diffusion.pipeline
from bora_diffusion.cli import main

REPO = Path(__file__).resolve().parent.parent
KETTLE = REPO / "concepts" / "kettle"  # a good concept folder, only read


@dataclass(frozen=True)
class Case:
    id: str
    setup: Callable[[Path], tuple[list[str], str]]
    early: bool = True  # refused before the base model loads


def concept(tmp: Path, name: str = "dog") -> Path:
    """A good concept folder under tmp, to spoil in one way."""
    path = tmp / name
    path.mkdir()
    (path / "concept.toml").write_text('token = "zqdog"\nclass_word = "dog"\n')
    for index in range(2):
        Image.new("RGB", (64, 64), (40 * index, 90, 200)).save(path / f"img{index}.png")
    return path


def a_file(path: Path) -> Path:
    path.write_text("x")
    return path


def _folder(path: Path) -> Path:
    path.mkdir()
    return path


def _fifo(tmp):
    os.mkfifo(concept(tmp) / "x.png")
    return ["train", str(tmp / "dog"), "--out", str(tmp / "run")], "x.png is not a regular file"


def _link_outside(tmp):
    Image.new("RGB", (64, 64)).save(tmp / "elsewhere.png")
    (concept(tmp) / "link.png").symlink_to(tmp / "elsewhere.png")
    return ["train", str(tmp / "dog"), "--out", str(tmp / "run")], "link.png is a link to"


def _caption_without_token(tmp):
    (concept(tmp) / "img0.txt").write_text("a dog on a sofa")
    return ["train", str(tmp / "dog"), "--out", str(tmp / "run")], "img0.txt does not mention {token}"


def _truncated_checkpoint(tmp):
    folder = tmp / "run" / "checkpoints" / "kettle" / "step-000001"
    folder.mkdir(parents=True)
    torch.save({"step": 1}, folder / "state.pt")
    (folder / "state.pt").write_bytes((folder / "state.pt").read_bytes()[:30])
    argv = ["train", str(KETTLE), "--out", str(tmp / "run"), "--steps", "2", "--resume", "--quiet"]
    return argv, "step-000001/state.pt: the checkpoint is unreadable"


CASES = [
    # item 2: output paths, checked before any work
    Case("train-out-is-a-file", lambda t: (["train", str(KETTLE), "--out", str(a_file(t / "f"))], "is an existing file")),
    Case(
        "train-out-under-a-file",
        lambda t: (["train", str(KETTLE), "--out", str(a_file(t / "f") / "run")], "is a file, so nothing"),
    ),
    Case("generate-out-is-a-file", lambda t: (["generate", "--prompt", "a", "--out", str(a_file(t / "f"))], "f is an existing file")),
    Case("export-into-a-folder", lambda t: (["export", str(t / "a.safetensors"), str(t)], "is a folder: give a file path")),
    Case("import-into-a-folder", lambda t: (["import", str(t / "a.safetensors"), str(t)], "is a folder: give a file path")),
    Case("compose-save-is-a-file", lambda t: (["compose", "x.safetensors", "--save", str(a_file(t / "f"))], "--save")),
    Case("compose-report-is-a-folder", lambda t: (["compose", "x.safetensors", "--report", str(t)], "--report")),
    # item 3 and 12: concept folders (refused before the base loads: item 11)
    Case("fifo-in-concept-folder", _fifo),
    Case("link-out-of-concept-folder", _link_outside),
    Case("caption-without-token", _caption_without_token),
    Case("missing-concept-folder", lambda t: (["train", str(t / "nowhere"), "--out", str(t / "run")], "nowhere")),
    # item 4: checkpoints
    Case("truncated-checkpoint-no-earlier", _truncated_checkpoint, early=False),
    # cases the suite already had (test_cli, test_train)
    Case("inspect-missing-file", lambda t: (["inspect", str(t / "missing.safetensors")], "not found")),
    Case("compose-nothing", lambda t: (["compose"], "compose needs at least one concept file")),
    Case("export-missing-file", lambda t: (["export", str(t / "none.safetensors"), str(t / "x.safetensors")], "none.safetensors")),
    Case("methods-unknown-targets", lambda t: (["methods", "--targets", "nonsense"], "unknown target preset 'nonsense'"), early=False),
    Case("methods-missing-base", lambda t: (["methods", "--base", str(t / "no-base")], "no-base"), early=False),
    Case(
        "train-negative-snr-gamma",
        lambda t: (["train", str(KETTLE), "--out", str(t / "run"), "--snr-gamma", "-1"], "snr"),
        early=False,
    ),
    # issue 23 items 1, 5, 6: scales, generate's numbers and an import folder, all refused before the base loads
    Case("scale-nan", lambda t: (["compose", f"{a_file(t / 'k.safetensors')}:nan"], "is not a finite number")),
    Case("scale-inf", lambda t: (["generate", f"{a_file(t / 'k.safetensors')}:inf", "--prompt", "a", "--out", str(t / "g")], "is not a finite number")),
    Case("scale-1e30", lambda t: (["generate", f"{a_file(t / 'k.safetensors')}:1e30", "--prompt", "a", "--out", str(t / "g")], "outside -10..10")),
    Case("seed-too-big", lambda t: (["generate", "--prompt", "a", "--seed", "99999999999999999999999", "--out", str(t / "g")], "from 0 to 2**64-1")),
    Case("seed-negative", lambda t: (["generate", "--prompt", "a", "--seed", "-1", "--out", str(t / "g")], "from 0 to 2**64-1")),
    Case("guidance-nan", lambda t: (["generate", "--prompt", "a", "--guidance", "nan", "--out", str(t / "g")], "guidance")),
    Case("guidance-inf", lambda t: (["generate", "--prompt", "a", "--guidance", "inf", "--out", str(t / "g")], "guidance")),
    Case("guidance-negative", lambda t: (["generate", "--prompt", "a", "--guidance", "-1", "--out", str(t / "g")], "guidance")),
    Case("prompt-blank", lambda t: (["generate", "--prompt", "  ", "--out", str(t / "g")], "empty prompt")),
    Case("resolution-63", lambda t: (["generate", "--prompt", "a", "--resolution", "63", "--out", str(t / "g")], "height: 63 is not a positive multiple of 8")),
    Case("width-0", lambda t: (["generate", "--prompt", "a", "--width", "0", "--out", str(t / "g")], "width: 0 is not a positive multiple of 8")),
    Case("steps-0", lambda t: (["generate", "--prompt", "a", "--steps", "0", "--out", str(t / "g")], "steps: 0 is not")),
    Case("import-folder-without-weights", lambda t: (["import", str(_folder(t / "empty_lora")), str(t / "x.safetensors")], "a folder with no pytorch_lora_weights.safetensors")),
]  # fmt: skip


def _tree(root: Path) -> set[str]:
    return {str(path.relative_to(root)) for path in root.rglob("*")}  # lstat only: a FIFO is never opened


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input_is_one_error_line(case, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("BORA_DIFFUSION_HOME", str(tmp_path / "home"))
    work = tmp_path / "work"
    work.mkdir()
    argv, expected = case.setup(work)
    if case.early:

        def no_base(*_, **__):
            raise AssertionError("the base model loaded before the bad input was refused")

        monkeypatch.setattr(bora_diffusion.pipeline, "load_base", no_base)
    before = _tree(work)
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert expected.lower() in err.lower(), err
    assert _tree(work) == before  # nothing new, nothing partial
    shutil.rmtree(work, ignore_errors=True)
