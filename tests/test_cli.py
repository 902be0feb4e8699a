"""The command line: the main job's table on the embedded default, `inspect`, and one-line errors."""

from __future__ import annotations

import json
import re

import pytest
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from bora_diffusion.cli import main
from bora_diffusion.formats import read_adapter
from bora_diffusion.pipeline import load_base
from bora_diffusion.slots import SlotLedger


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
    # The world base has 56 attention projections; sbora_fa trains r * out values per layer.
    assert rows[0][1] == "56" and rows[0][2] == "8,448"
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


def test_compose_generate_and_slots_from_the_command_line(tmp_path, capsys):
    files = tmp_path / "files"
    assert main(["methods", "--method", "sbora_fa", "--method", "lora", "--out", str(files)]) == 0
    fa, lora = files / "sbora_fa.safetensors", files / "lora.safetensors"
    report = tmp_path / "report.json"
    assert (
        main(["compose", str(fa), f"{lora}:0.5", "--report", str(report), "--save", str(tmp_path / "fused")])
        == 0
    )
    out = capsys.readouterr().out
    assert "2 concepts fused (check x1, check-2 x0.5) on 56 layers" in out
    assert json.loads(report.read_text())["concepts"]["check-2"]["scale"] == 0.5
    assert (tmp_path / "fused" / "model_index.json").exists()
    # The saved folder is a plain diffusers pipeline: it loads as a base without any adapter code.
    fused = load_base(str(tmp_path / "fused"))
    assert not any(name.endswith(".base") for name, _ in fused.unet.named_modules())

    code = main(
        [
            "generate",
            str(fa),
            "--prompt",
            "a star",
            "--seed",
            "1",
            "--seed",
            "2",
            "--steps",
            "2",
            "--out",
            str(tmp_path / "gen"),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0 and "2 images" in out and "note:" not in out
    manifest = json.loads((tmp_path / "gen" / "manifest.json").read_text())
    assert (
        manifest["concepts"]["check"]["file"] == str(fa) and manifest["base_model"] == "embedded:world-base-2"
    )
    assert manifest["settings"]["guidance"] == 3.0  # no --guidance: the embedded base's own default

    ledger = SlotLedger(seed=2)
    ledger.allocate("dog", "in", {"layer.a": 64}, 4)
    ledger.save(tmp_path / "slots.json")
    assert main(["slots", str(tmp_path / "slots.json")]) == 0
    assert "dog                  in        1 layers, rank 4" in capsys.readouterr().out

    assert main(["compose"]) == 2
    assert "needs at least one concept file" in capsys.readouterr().err


def test_a_file_made_on_another_base_is_noted(tmp_path, capsys):
    """Layers of the same shapes load, but the user is told the file was trained on other weights."""
    assert main(["methods", "--method", "sbora_fa", "--out", str(tmp_path)]) == 0
    capsys.readouterr()
    path = tmp_path / "sbora_fa.safetensors"
    tensors, metadata = load_file(path), safe_open(str(path), "pt").metadata()
    base = json.loads(metadata["base_model"])
    metadata["base_model"] = json.dumps({**base, "name": "embedded:tiny-sd-v1"})
    save_file(tensors, path, metadata=metadata)
    assert main(["compose", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"note: {path} was trained on base 'embedded:tiny-sd-v1', not 'embedded:world-base-2'" in out


def test_export_then_import_round_trips_through_the_command_line(tmp_path, capsys):
    assert main(["methods", "--method", "ortho", "--method", "dora", "--out", str(tmp_path)]) == 0
    capsys.readouterr()
    for layout in ("diffusers", "kohya"):
        exported = tmp_path / f"{layout}.safetensors"
        assert main(["export", str(tmp_path / "ortho.safetensors"), str(exported), "--layout", layout]) == 0
        assert f"{layout} LoRA: {exported}" in capsys.readouterr().out
        native = tmp_path / f"back-{layout}.safetensors"
        assert main(["import", str(exported), str(native), "--name", "back", "--token", "qwiv"]) == 0
        assert f"imported 56 UNet layer(s) at rank 4 from {layout} file" in capsys.readouterr().out
        info = read_adapter(native)
        assert (info.config.method, info.name, info.token) == ("lora", "back", "qwiv")
    assert main(["export", str(tmp_path / "dora.safetensors"), str(tmp_path / "x.safetensors")]) == 2
    assert "fuse" in capsys.readouterr().err and not (tmp_path / "x.safetensors").exists()


def test_the_app_subcommand_hands_its_options_to_the_app(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["app", "--help"])
    assert exit_.value.code == 0
    assert "--host" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_:
        main(["app", "--host", "0.0.0.0"])  # beyond localhost without --auth: refused before serving
    assert exit_.value.code == 2
    assert "--auth" in capsys.readouterr().err


def test_the_device_is_cuda_when_available_and_each_launched_process_takes_its_own(monkeypatch, capsys):
    """train, generate, compose and methods run the base on `_device`: a GPU when torch sees one (under a launcher,
    the one LOCAL_RANK names, as accelerate places each process), else the CPU; `--device` overrides it."""
    import argparse

    import torch

    from bora_diffusion.cli import _device

    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert _device(argparse.Namespace(device=None)) == "cpu"
    assert main(["generate", "--device", "cuda", "--prompt", "a", "--out", "unused"]) == 2
    assert "no CUDA GPU is visible" in capsys.readouterr().err
    assert main(["train", "concepts/kettle", "--device", "gpu", "--out", "unused"]) == 2
    assert "--device 'gpu' is not a device" in capsys.readouterr().err
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert _device(argparse.Namespace(device=None)) == "cuda"
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert _device(argparse.Namespace(device=None)) == "cuda:1"
    assert _device(argparse.Namespace(device="cpu")) == "cpu"


def _subcommands():
    import argparse

    from bora_diffusion.cli import build_parser

    parser = build_parser()
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


def test_every_setting_is_a_train_flag_with_its_own_name_as_dest():
    from bora_diffusion.cli import TRAIN_FLAGS, adapter_flag_names
    from bora_diffusion.config import TrainConfig, adapter_settings
    from bora_diffusion.settings import settings_of

    train = _subcommands()["train"]
    dests = {option: action.dest for action in train._actions for option in action.option_strings}
    for setting in (*adapter_settings(), *settings_of(TrainConfig)):
        assert dests[setting.cli_flag] == setting.name, setting.name
    assert set(TRAIN_FLAGS) == {s.name for s in settings_of(TrainConfig)}
    assert set(adapter_flag_names()) == {s.name for s in adapter_settings()} | {"targets"}
    # The flags of before keep their names and dests.
    for flag, dest in {"--lr": "learning_rate", "--schedule": "lr_schedule", "--warmup": "warmup_steps",
                       "--accumulate": "gradient_accumulation", "--embedding-lr": "embedding_learning_rate",
                       "--xformers": "attention", "--blocks": "blocks"}.items():  # fmt: skip
        assert dests[flag] == dest, flag
    compare = {o: a.dest for a in _subcommands()["compare"]._actions for o in a.option_strings}
    assert (compare["--train-steps"], compare["--lr"], compare["--embedding-lr"]) == (
        "train_steps", "lr", "embedding_lr",
    )  # fmt: skip
    assert compare["--steps"] == "steps" and compare["--seed"] == "seed"  # the sampler's and the shared seed


def test_train_flags_beat_the_concepts_values_which_beat_the_defaults(tmp_path, monkeypatch, capsys):
    import bora_diffusion.train

    seen = []

    def record(pipe, jobs, *, out_dir, **_):
        seen.extend(jobs)
        return [tmp_path / f"{concept.name}.safetensors" for concept, _, _ in jobs]

    monkeypatch.setattr(bora_diffusion.train, "train_concepts", record)
    argv = ["train", "concepts/bolt-circle", "--out", str(tmp_path / "run"), "--quiet", "--steps", "3",
            "--max-grad-norm", "0.5", "--no-train-embedding", "--xformers", "--no-cache-latents"]  # fmt: skip
    assert main(argv) == 0
    ((concept, adapter, config),) = seen
    assert concept.name == "bolt-circle"
    # bolt-circle's [train]: steps 500, batch_size 4, targets cross_kv, train_embedding true, vectors 3.
    assert (config.steps, config.max_grad_norm, config.train_embedding) == (3, 0.5, False)  # flags
    assert (config.batch_size, config.embedding_vectors, adapter.targets) == (4, 3, "cross_kv")  # concept
    assert (config.weight_decay, config.class_images, adapter.alpha) == (0.01, 16, None)  # defaults
    assert (config.attention, config.cache_latents) == ("xformers", False)
    assert "bolt-circle: sbora_fa rank 4, 3 steps ->" in capsys.readouterr().out


def test_a_flag_value_the_schema_refuses_is_one_line_naming_the_flag_before_anything_loads(
    tmp_path, monkeypatch, capsys
):
    import bora_diffusion.pipeline

    def no_base(*_, **__):
        raise AssertionError("the base model loaded before the bad flag was refused")

    monkeypatch.setattr(bora_diffusion.pipeline, "load_base", no_base)
    out = str(tmp_path / "run")
    for argv, message in [
        (["train", "concepts/kettle", "--out", out, "--rank", "0"], "--rank: rank must be a positive integer, got 0"),
        (["train", "concepts/kettle", "--out", out, "--rank", "2.5"], "--rank: rank must be a positive integer, got '2.5'"),
        (["train", "concepts/kettle", "--out", out, "--lr", "0"], "--lr: learning_rate must be positive, got 0.0"),
        (["train", "concepts/kettle", "--out", out, "--schedule", "exp"], "--schedule: lr_schedule must be one of constant, "),
        (["train", "concepts/kettle", "--out", out, "--mixed-precision", "fp8"], "--mixed-precision: mixed_precision must be one of no, fp16, bf16"),
        (["train", "concepts/kettle", "--out", out, "--blocks", "0"], "--blocks: blocks must be a positive integer, got 0"),
        (["methods", "--rank", "-1"], "--rank: rank must be a positive integer, got -1"),
        (["compare", "concepts/kettle", "--out", out, "--train-steps", "0"], "--train-steps: steps must be a positive integer"),
        (["compare", "concepts/kettle", "--out", out, "--weight-decay", "-1"], "--weight-decay: weight_decay must be >= 0"),
    ]:  # fmt: skip
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith(f"error: {message}") and err.count("\n") == 1, err
    assert not (tmp_path / "run").exists()


def test_the_command_line_names_no_method_the_registry_lists():
    """The method list, the option flags and export's additive methods come from the registry, so cli/ has no
    method id in a string (a new method needs no line there)."""
    from pathlib import Path

    import bora_diffusion.cli
    from bora_diffusion import adapters

    sources = {p.name: p.read_text() for p in Path(bora_diffusion.cli.__file__).parent.glob("*.py")}
    assert len(sources) >= 8
    # lora and sbora_fa stay: compare's default pair, named in its help (and "lora" in LoRA file names).
    for method in set(adapters.available()) - {"lora", "sbora_fa"}:
        for name, text in sources.items():
            assert not re.search(rf"\b{method}\b", text), (method, name)
    export = " ".join(_subcommands()["export"].format_help().split())
    assert (
        "exact LoRA factors for lora, sbora_fa, sbora_fb, ortho and bora_block. dora and bora_bidim" in export
    )
