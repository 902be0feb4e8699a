"""Prompt locking: which prompts it locks, what it measures, which layers it reads, and that training under it
keeps the token-free prompts' keys and values where the base has them while the token's still move. Word
locking: what it measures, and that under it a trained token embedding leaves the other words' states."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import perturb
from test_train import make_concept

from bora_diffusion import AdapterConfig
from bora_diffusion.config import TrainConfig
from bora_diffusion.embeddings import add_token, vector_tokens
from bora_diffusion.errors import ConfigError
from bora_diffusion.formats import read_adapter
from bora_diffusion.inject import inject, set_active, wrappers
from bora_diffusion.locking import PromptLock, WordLock, lock_prompts
from bora_diffusion.text import PromptEncoder
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
    return PromptEncoder(pipe).encode(list(prompts)).states  # (N, 77, D)


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


# --- the word lock ------------------------------------------------------------------------------------------

CAPTIONS = ["a photo of <zq-thing> toy", "<zq-thing> toy on a red table"]


def _word_lock(pipe, rows: int = 2) -> WordLock:
    """A word lock on CAPTIONS, its reference taken at the token's current rows."""
    return WordLock(PromptEncoder(pipe), CAPTIONS, vector_tokens("<zq-thing>", rows))


def test_the_word_lock_is_the_relative_change_of_the_other_words_states(tiny_pipe):
    rows = add_token(tiny_pipe.tokenizer, tiny_pipe.text_encoder, "<zq-thing>", count=2, init_word="toy")
    lock = _word_lock(tiny_pipe)
    assert float(lock().detach()) == 0.0
    before = PromptEncoder(tiny_pipe).encode(CAPTIONS).states  # (2, 77, D)
    with torch.no_grad():
        rows.add_(torch.randn(rows.shape, generator=torch.Generator().manual_seed(1)))
    after = PromptEncoder(tiny_pipe).encode(CAPTIONS).states

    ids = PromptEncoder(tiny_pipe).tokenize(CAPTIONS)[:, 0]  # (2, 77)
    parts = tiny_pipe.tokenizer.convert_tokens_to_ids(vector_tokens("<zq-thing>", 2))
    token = torch.isin(ids, torch.tensor(parts))
    assert token.sum() == 4  # two parts in each caption
    words = ~token
    expected = (after - before)[words].pow(2).mean() / before[words].pow(2).mean()
    assert float(lock().detach()) == pytest.approx(float(expected), rel=1e-5)
    assert float(lock().detach()) > 0
    # The text encoder is causal: the words before the token keep their states exactly.
    first = ids[0].tolist().index(parts[0])
    assert first > 1 and torch.equal(after[0, :first], before[0, :first])


def test_a_word_lock_without_a_trained_embedding_stays_idle(_tiny_pipe_master, tmp_path):
    concept = make_concept(tmp_path / "imgs", "thing", 0)
    config = TrainConfig(steps=1, word_lock_weight=1.0)  # a recipe's word lock under --no-train-embedding
    trainer = Trainer(
        copy.deepcopy(_tiny_pipe_master),
        concept,
        AdapterConfig(method="lora", rank=2),
        config,
        out_dir=tmp_path / "o",
        base_name="t",
    )
    assert trainer.train().is_file()
    assert trainer.word_lock is None  # the words cannot move without a trained embedding: nothing to lock
    with pytest.raises(ConfigError, match="word_lock_weight must be >= 0"):
        TrainConfig(word_lock_weight=-1.0)


def test_training_under_the_word_lock_keeps_the_other_words_and_moves_the_token(_tiny_pipe_master, tmp_path):
    concept = make_concept(tmp_path / "imgs", "thing", 0)
    moved, changed = {}, {}
    for weight in (0.0, 10.0):
        config = TrainConfig(
            steps=20,
            learning_rate=1e-2,
            seed=0,
            train_embedding=True,
            embedding_learning_rate=5e-2,
            embedding_vectors=2,
            word_lock_weight=weight,
        )
        adapter = AdapterConfig(method="sbora_fa", rank=2, targets="cross_kv")
        path = Trainer(
            copy.deepcopy(_tiny_pipe_master),
            concept,
            adapter,
            config,
            out_dir=tmp_path / str(weight),
            base_name="t",
        ).train()
        # The states at the token's initial rows, then at its trained ones.
        pipe = copy.deepcopy(_tiny_pipe_master)
        start = add_token(pipe.tokenizer, pipe.text_encoder, "<zq-thing>", count=2, init_word="toy").clone()
        lock = _word_lock(pipe)
        trained = read_adapter(path).token_embedding
        add_token(pipe.tokenizer, pipe.text_encoder, "<zq-thing>", trained)
        with torch.no_grad():
            changed[weight] = float(lock())
        moved[weight] = float((trained - start).norm())
    # Measured: the other words change 0.04x as much under the lock, the token moves 0.89x as far.
    assert changed[10.0] < 0.3 * changed[0.0]  # the other words keep their states ...
    assert moved[10.0] > 0.3 * moved[0.0]  # ... while the token still trains
