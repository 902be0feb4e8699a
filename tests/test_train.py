"""Training on the tiny pipeline: it learns, resumes bit for bit, stops on a NaN loss, and trains several concepts
on disjoint slots."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bora_diffusion import AdapterConfig
from bora_diffusion.callbacks import Callback
from bora_diffusion.config import TrainConfig
from bora_diffusion.formats import read_adapter
from bora_diffusion.train import Trainer, TrainingDiverged, train_concepts


@dataclass
class StandIn:
    """The part of a Concept that training reads."""

    name: str
    images: list[Path]
    token: str = "<zq-thing>"
    class_word: str = "toy"
    class_prompt: str = "a photo of a toy"

    def instance_prompt(self, image: Path) -> str:
        return f"a photo of {self.token} {self.class_word}"


def make_concept(folder: Path, name: str, seed: int) -> StandIn:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(3):
        path = folder / f"{i}.png"
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return StandIn(name, paths)


FAST = dict(steps=6, learning_rate=1e-2, checkpoint_every=3, seed=3)


class StopAt(Callback):
    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, state):
        if state.step == self.step:
            raise KeyboardInterrupt


@pytest.mark.parametrize("method", ["sbora_fa", "bora_block"])
def test_a_resumed_run_ends_bit_identical_to_an_uninterrupted_one(
    tiny_pipe, _tiny_pipe_master, tmp_path, method
):
    concept = make_concept(tmp_path / "imgs", "thing", 0)
    adapter = AdapterConfig(method=method, rank=2)
    config = TrainConfig(gradient_accumulation=2, lr_schedule="cosine", warmup_steps=2, **FAST)
    straight = Trainer(tiny_pipe, concept, adapter, config, out_dir=tmp_path / "a", base_name="tiny").train()

    with pytest.raises(KeyboardInterrupt):
        Trainer(
            copy.deepcopy(_tiny_pipe_master),
            concept,
            adapter,
            config,
            out_dir=tmp_path / "b",
            base_name="tiny",
            callbacks=[StopAt(5)],
        ).train()
    assert [p.name for p in (tmp_path / "b/checkpoints/thing").iterdir()] == ["step-000003"]
    resumed = Trainer(
        copy.deepcopy(_tiny_pipe_master), concept, adapter, config, out_dir=tmp_path / "b", base_name="tiny"
    ).train(resume=True)

    a, b = read_adapter(straight).tensors, read_adapter(resumed).tensors
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(a[k].abs().sum() > 0 for k in a if not k.endswith(".index"))  # it did train


def test_training_lowers_the_loss_and_records_the_concept(tiny_pipe, tmp_path):
    concept = make_concept(tmp_path / "imgs", "thing", 1)
    losses = []

    class Record(Callback):
        def on_step_end(self, state):
            losses.append(state.loss)

    config = TrainConfig(steps=40, learning_rate=3e-2, seed=0)
    path = Trainer(
        tiny_pipe,
        concept,
        AdapterConfig(method="lora", rank=4),
        config,
        out_dir=tmp_path / "out",
        base_name="tiny",
        callbacks=[Record()],
    ).train()
    assert np.mean(losses[-10:]) < np.mean(losses[:10])
    info = read_adapter(path)
    assert (info.token, info.class_word, info.base_name) == ("<zq-thing>", "toy", "tiny")
    assert info.training == config.to_dict()


def test_a_nan_loss_stops_with_a_clear_message_and_keeps_the_checkpoint(tiny_pipe, tmp_path):
    concept = make_concept(tmp_path / "imgs", "thing", 2)
    config = TrainConfig(steps=20, learning_rate=1e30, max_grad_norm=None, checkpoint_every=1, seed=0)
    with pytest.raises(
        TrainingDiverged, match=r"loss became (nan|inf) at step \d+; the last good checkpoint is"
    ):
        Trainer(
            tiny_pipe, concept, AdapterConfig(method="lora"), config, out_dir=tmp_path / "out", base_name="t"
        ).train()
    assert not (tmp_path / "out/thing.safetensors").exists()
    assert list((tmp_path / "out/checkpoints/thing").glob("step-*"))
    assert not list((tmp_path / "out/checkpoints/thing").glob(".tmp-*"))


def test_several_concepts_train_on_disjoint_slots(tiny_pipe, tmp_path):
    concepts = [make_concept(tmp_path / n, n, i) for i, n in enumerate(["kettle", "robot"])]
    config = TrainConfig(steps=2, seed=0)
    paths = train_concepts(
        tiny_pipe,
        [(c, AdapterConfig(method="sbora_fb", rank=4), config) for c in concepts],
        out_dir=tmp_path / "out",
        base_name="tiny",
    )
    first, second = (read_adapter(p).slots() for p in paths)
    assert first.keys() == second.keys()
    for layer in first:
        assert set(first[layer].tolist()).isdisjoint(second[layer].tolist()), layer
    assert (tmp_path / "out/slots.json").exists()


def test_resume_refuses_other_settings(tiny_pipe, _tiny_pipe_master, tmp_path):
    concept = make_concept(tmp_path / "imgs", "thing", 0)
    adapter = AdapterConfig(method="lora", rank=2)
    Trainer(tiny_pipe, concept, adapter, TrainConfig(**FAST), out_dir=tmp_path / "out", base_name="t").train()
    other = TrainConfig(**{**FAST, "learning_rate": 5e-3})
    with pytest.raises(Exception, match="other training settings"):
        Trainer(
            copy.deepcopy(_tiny_pipe_master), concept, adapter, other, out_dir=tmp_path / "out", base_name="t"
        ).train(resume=True)


class StopAfter(Callback):
    """Asks the trainer to stop after `step`, as the app's stop button does."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, state):
        state.stop = state.step == self.step


def test_a_stop_request_saves_the_adapter_and_a_checkpoint_that_resumes_exactly(
    tiny_pipe, _tiny_pipe_master, tmp_path
):
    concept = make_concept(tmp_path / "imgs", "thing", 0)
    adapter = AdapterConfig(method="lora", rank=2)
    config = TrainConfig(**{**FAST, "checkpoint_every": 0})
    straight = Trainer(tiny_pipe, concept, adapter, config, out_dir=tmp_path / "a", base_name="tiny").train()

    def trainer(**kwargs):
        pipe = copy.deepcopy(_tiny_pipe_master)
        return Trainer(pipe, concept, adapter, config, out_dir=tmp_path / "b", base_name="tiny", **kwargs)

    stopped = trainer(callbacks=[StopAfter(4)]).train()
    assert read_adapter(stopped).training["stopped_at"] == 4
    assert [p.name for p in (tmp_path / "b/checkpoints/thing").iterdir()] == ["step-000004"]
    resumed = trainer().train(resume=True)
    a, b = read_adapter(straight), read_adapter(resumed)
    assert "stopped_at" not in b.training
    assert all(torch.equal(a.tensors[k], b.tensors[k]) for k in a.tensors)
