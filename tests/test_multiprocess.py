"""Data-parallel training really run: two processes over gloo, started by `accelerate launch` as a user starts them.

accelerate 1.15's `launch --cpu --num_processes 2` starts ONE process (multi-CPU goes through mpirun); `--multi_gpu
--num_processes 2` starts two through torchrun, and on a machine without GPUs (the trainer on the CPU) they talk
over gloo. What is checked: both processes step on their own shards (each one's loss is gathered into the
checkpoint, and they differ), the adapters equal a 1-process run of twice the batch, with and without the token's
embedding training, only the main process writes, a resume from a checkpoint ends equal to the uninterrupted
run, a 1-process resume of the 2-process checkpoint keeps to the global batch, and a user's mistake is one line.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors.torch
import torch
from test_bases import concept_folder

from bora_diffusion.cli import main
from bora_diffusion.embedded import build_tiny_pipeline

STEPS, EVERY = 4, 2
# Two concepts in one run: the second trains its token's embedding too (from its concept.toml).
COMMON = ["--steps", str(STEPS), "--accumulate", "2", "--checkpoint-every", str(EVERY), "--seed", "5"]
COMMON += ["--lr", "1e-2", "--lock-weight", "1", "--word-lock-weight", "1", "--quiet"]
# Measured (4 steps at lr 1e-2): the 2-process adapters are within 6e-5 (no embedding) and 1e-4 (embedding)
# relative of the 1-process run of twice the batch, and the mean of the shards' losses within 2e-7 of its loss.
# Not 1e-6: the gradients differ only in summation order, but AdamW divides each element by its own RMS, so an
# element whose gradient is near zero (cancellation, its rounding error large beside itself) moves by a large
# part of the learning rate either way (one step at lr 1e-3: half the elements equal within 1 ulp, the worst
# 1e-6 apart). A run that did not average, each process on its own draws, is 0.9 relative away.
ADAPTER_TOLERANCE = 1e-3
LOSS_TOLERANCE = 1e-6


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH", "")])
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    command += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    command += ["--main_process_port", str(free_port()), "-m", "bora_diffusion.cli", "train", *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def adapters(out: Path) -> dict[str, dict[str, torch.Tensor]]:
    return {p.stem: safetensors.torch.load_file(p) for p in sorted(out.glob("*.safetensors"))}


def relative(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """||a - b|| / ||a|| over every float tensor of an adapter file (the slot indices are compared exactly)."""
    assert all(torch.equal(a[k], b[k]) for k in a if not a[k].is_floating_point())
    floats = [k for k in a if a[k].is_floating_point()]
    diff = sum(float((a[k].double() - b[k].double()).pow(2).sum()) for k in floats)
    return (diff / sum(float(a[k].double().pow(2).sum()) for k in floats)) ** 0.5


def state(out: Path, concept: str, step: int) -> dict:
    return torch.load(out / f"checkpoints/{concept}/step-{step:06d}/state.pt", weights_only=True)


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> tuple[Path, list[str]]:
    root = tmp_path_factory.mktemp("multiprocess")
    build_tiny_pipeline(seed=0).save_pretrained(root / "base")
    concept_folder(root / "thing", "thing", "zqwv", 0)
    concept_folder(root / "emb", "emb", "vlqx", 1)
    with (root / "emb/concept.toml").open("a") as toml:
        toml.write("train_embedding = true\nembedding_vectors = 2\n")
    return root, [str(root / "thing"), str(root / "emb"), "--base", str(root / "base"), *COMMON]


@pytest.fixture(scope="module")
def two(setup) -> Path:
    root, args = setup
    done = launch([*args, "--out", str(root / "two"), "--batch-size", "1"], root)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("slots: ") == 1  # the report comes from the main process alone
    return root / "two"


def test_two_processes_step_on_their_own_shards_and_write_once(two):
    files = sorted(str(p.relative_to(two)) for p in two.rglob("*") if p.is_file())
    assert files == [
        "checkpoints/emb/step-000002/state.pt",
        "checkpoints/emb/step-000004/state.pt",
        "checkpoints/thing/step-000002/state.pt",
        "checkpoints/thing/step-000004/state.pt",
        "emb.safetensors",
        "slots.json",
        "thing.safetensors",
    ]  # nothing twice, no `.tmp` leftovers
    for concept in ("thing", "emb"):
        for step in (EVERY, STEPS):
            saved = state(two, concept, step)
            assert saved["processes"] == 2 and saved["step"] == step
            losses = saved["process_losses"]  # gathered from each process at that step
            assert len(losses) == 2 and abs(losses[0] - losses[1]) > 1e-4  # other images, other noise


def test_two_processes_equal_one_with_twice_the_batch(setup, two, tmp_path):
    _, args = setup
    assert main(["train", *args, "--out", str(tmp_path / "one"), "--batch-size", "2"]) == 0
    one, parallel = adapters(tmp_path / "one"), adapters(two)
    assert one.keys() == parallel.keys() == {"thing", "emb"}
    assert "concept.token_embedding" in one["emb"] and "concept.token_embedding" not in one["thing"]
    for concept in one:
        assert relative(one[concept], parallel[concept]) < ADAPTER_TOLERANCE, concept
        for step in (EVERY, STEPS):
            single, shards = state(tmp_path / "one", concept, step), state(two, concept, step)
            assert torch.equal(single["generator"], shards["generator"])  # the same global draws
            mean = sum(shards["process_losses"]) / 2
            assert abs(mean - single["process_losses"][0]) < LOSS_TOLERANCE * abs(mean)


def test_a_resumed_two_process_run_ends_equal_to_the_uninterrupted_one(setup, two, tmp_path):
    root, args = setup
    # What a run killed after its step-2 checkpoints leaves: no adapters, no ledger, no later checkpoint.
    stopped = tmp_path / "stopped"
    shutil.copytree(two, stopped)
    for path in [*stopped.glob("*.safetensors"), stopped / "slots.json"]:
        path.unlink()
    for later in stopped.glob(f"checkpoints/*/step-{STEPS:06d}"):
        shutil.rmtree(later)
    done = launch([*args, "--out", str(stopped), "--batch-size", "1", "--resume"], root)
    assert done.returncode == 0, done.stderr[-3000:]
    a, b = adapters(two), adapters(stopped)
    assert a.keys() == b.keys()
    for concept in a:  # the same process count: the same sums in the same order, bit for bit
        assert all(torch.equal(a[concept][k], b[concept][k]) for k in a[concept]), concept


def test_one_process_resumes_a_two_process_checkpoint_at_the_same_global_batch(setup, two, tmp_path, capsys):
    _, args = setup
    stopped = tmp_path / "stopped"
    shutil.copytree(two, stopped)
    for path in stopped.glob("*.safetensors"):
        path.unlink()
    for later in stopped.glob(f"checkpoints/*/step-{STEPS:06d}"):
        shutil.rmtree(later)
    assert main(["train", *args, "--out", str(stopped), "--batch-size", "1", "--resume"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "global batch (batch size x processes) is 2" in error
    assert "--batch-size 2 on 1 process" in error
    assert main(["train", *args, "--out", str(stopped), "--batch-size", "2", "--resume"]) == 0
    for concept, tensors in adapters(two).items():
        assert relative(tensors, adapters(stopped)[concept]) < ADAPTER_TOLERANCE, concept


def test_a_mistake_under_the_launcher_is_one_line_from_the_main_process(setup):
    root, _ = setup
    done = launch([str(root / "missing"), "--base", str(root / "base"), "--out", str(root / "x")], root)
    ours = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert ours == [f"error: {root / 'missing'}: 1 problem: folder does not exist"]
    assert "bora_diffusion/" not in done.stderr  # no traceback of ours; the launcher reports the exit itself
    assert "exitcode  : 2" in done.stderr and done.returncode != 0
