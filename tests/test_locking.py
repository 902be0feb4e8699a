"""Prompt locking: which prompts it locks, what it measures, which layers it reads, and that training under it
keeps the token-free prompts' keys and values where the base has them while the token's still move."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import perturb
from test_train import make_concept

from bora_diffusion import AdapterConfig
from bora_diffusion.config import TrainConfig
from bora_diffusion.data import encode_prompts
from bora_diffusion.errors import ConfigError
from bora_diffusion.inject import inject, set_active, wrappers
from bora_diffusion.locking import PromptLock, lock_prompts
from bora_diffusion.train import Trainer


def test_the_locked_prompts_are_the_captions_without_the_token_and_the_class_prompt():
    captions = ["a qwiv kettle on a table", "a small qwiv kettle", "a qwiv kettle on a table", "qwivy qwiv"]
    assert lock_prompts("qwiv", captions, "a kettle") == [
        "a kettle",
        "a kettle on a table",
        "a small kettle",
        "qwivy",  # only the whole word goes
    ]
    assert lock_prompts("<zq-thing>", ["a photo of <zq-thing> toy"], "a photo of a toy") == [
        "a photo of a toy",
        "a photo of toy",
    ]


def _states(pipe, prompts=("a photo of toy", "a red cube on a table")):
    return encode_prompts(pipe.tokenizer, pipe.text_encoder, list(prompts))  # (N, 77, D)


def test_the_lock_is_the_mean_relative_change_of_the_text_reading_layers(tiny_pipe):
    unet = tiny_pipe.unet
    inject(unet, AdapterConfig(method="lora", rank=2, targets="attention"), name="c")
    states = _states(tiny_pipe)
    lock = PromptLock(unet, "c", states)
    text_reading = [path for path, _ in wrappers(unet) if path.endswith(("attn2.to_k", "attn2.to_v"))]
    assert len(lock.layers) == len(text_reading) > 0  # attn1 and to_q / to_out read image features
    assert float(lock().detach()) == 0.0  # LoRA starts at zero

    perturb(unet, "c")
    expected = []
    for path, layer in wrappers(unet):
        if path not in text_reading:
            continue
        before = states @ layer.original_weight.T  # (N, 77, out), no bias on the keys and values
        layer.merge(["c"])
        after = states @ layer.weight.T
        layer.unmerge()
        expected.append(((after - before).pow(2).mean() / before.pow(2).mean()).item())
    assert float(lock().detach()) == pytest.approx(sum(expected) / len(expected), rel=1e-4)
    assert float(lock().detach()) > 0

    set_active(unet, [])  # the lock measures the adapters that run
    assert float(lock().detach()) == 0.0


def test_a_lock_with_nothing_to_lock_is_refused(tiny_pipe):
    inject(tiny_pipe.unet, AdapterConfig(method="lora", rank=2, targets="self_attention"), name="c")
    with pytest.raises(ConfigError, match="lock_weight.*cross_kv"):
        PromptLock(tiny_pipe.unet, "c", _states(tiny_pipe))


def _relative_change(unet, name: str, states: torch.Tensor) -> float:
    lock = PromptLock(unet, name, states)
    with torch.no_grad():
        return float(lock().detach())


@pytest.mark.parametrize("method", ["lora", "sbora_fa", "sbora_fb"])
def test_training_under_the_lock_keeps_the_token_free_prompts_and_moves_the_token(
    _tiny_pipe_master, tmp_path, method
):
    concept = make_concept(tmp_path / "imgs", "thing", 0)
    tokenizer = _tiny_pipe_master.tokenizer
    prompt = concept.instance_prompt(concept.images[0])  # "a photo of <zq-thing> toy"
    pieces = tokenizer(concept.token, add_special_tokens=False).input_ids
    start = tokenizer(prompt).input_ids.index(pieces[0])
    token_states = _states(_tiny_pipe_master, [prompt])[:, start : start + len(pieces)]  # (1, pieces, D)
    locked = _states(_tiny_pipe_master, ["a photo of toy", "a photo of a toy"])
    changes = {}
    for weight in (0.0, 10.0):
        pipe = copy.deepcopy(_tiny_pipe_master)
        config = TrainConfig(steps=30, learning_rate=3e-2, seed=0, lock_weight=weight)
        adapter = AdapterConfig(method=method, rank=4, targets="cross_kv")
        Trainer(pipe, concept, adapter, config, out_dir=tmp_path / str(weight), base_name="tiny").train()
        changes[weight] = (
            _relative_change(pipe.unet, "thing", locked),
            _relative_change(pipe.unet, "thing", token_states),
        )
    (free_locked, free_token), (held_locked, held_token) = changes[0.0], changes[10.0]
    assert held_locked < 0.2 * free_locked  # the token-free prompts stay where the base has them ...
    # ... while the token's own states still move: the change the adapter makes is at least twice as much the
    # token's (measured: lora 140x, sbora_fa 2.5x, sbora_fb 5.7x).
    assert held_token / held_locked > 2 * free_token / free_locked
