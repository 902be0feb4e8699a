"""CPU threads: one for a tiny model, torch's choice for a large one, `--threads` over both (bora_diffusion.threads)."""

from __future__ import annotations

import argparse
import types

import pytest
import torch
from torch import nn

from bora_diffusion import pipeline
from bora_diffusion.cli import main
from bora_diffusion.cli.runtime import base_pipeline
from bora_diffusion.errors import ConfigError
from bora_diffusion.threads import TINY_MODEL_PARAMETERS, threads_for, use_threads


@pytest.fixture(autouse=True)
def torch_threads(monkeypatch):
    """Each test starts from 2 threads and leaves torch as it found it."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def large_model() -> nn.Module:
    model = nn.Module()
    model.weight = nn.Parameter(torch.empty(TINY_MODEL_PARAMETERS, device="meta"))  # counted, never allocated
    return model


def test_a_tiny_model_runs_on_one_thread_and_a_large_one_keeps_torchs_choice():
    assert threads_for(nn.Linear(8, 8)) == 1
    assert threads_for(large_model()) is None
    assert use_threads(nn.Linear(8, 8)) == 1 and torch.get_num_threads() == 1
    torch.set_num_threads(2)
    assert use_threads(large_model()) == 2


def test_the_users_count_wins_over_the_size_rule(monkeypatch):
    assert threads_for(nn.Linear(8, 8), 3) == 3 and threads_for(large_model(), 1) == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # the user's own choice, which torch has read
    assert threads_for(nn.Linear(8, 8)) is None
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ConfigError, match="--threads must be a positive integer"):
            threads_for(nn.Linear(8, 8), bad)


def test_commands_set_the_threads_when_they_load_the_base(monkeypatch):
    tiny = types.SimpleNamespace(unet=nn.Linear(8, 8))
    monkeypatch.setattr(pipeline, "load_base", lambda base, device="cpu": tiny)
    assert base_pipeline(argparse.Namespace(base=None, device="cpu", threads=None)) is tiny
    assert torch.get_num_threads() == 1
    base_pipeline(argparse.Namespace(base=None, device="cpu", threads=2))
    assert torch.get_num_threads() == 2


def test_a_bad_thread_count_is_one_line_before_anything_loads(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(pipeline, "load_base", lambda *a, **k: pytest.fail("the base must not load"))
    assert main(["train", "concepts/bolt-circle", "--out", str(tmp_path / "out"), "--threads", "0"]) == 2
    err = capsys.readouterr().err
    assert err == "error: --threads: threads must be a positive integer (or omitted), got 0\n"
