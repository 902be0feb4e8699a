"""The concept token's trained text embedding (textual inversion / ED-LoRA): it trains, the base text encoder does
not move, the file carries it, composition and a saved fused pipeline give it back, and resume stays exact."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from test_train import StopAt, make_concept

from bora_diffusion import AdapterConfig
from bora_diffusion.config import TrainConfig
from bora_diffusion.embeddings import TokenEmbeddings, add_token, bake_tokens, spell_out
from bora_diffusion.errors import ConfigError
from bora_diffusion.formats import read_adapter, save_adapter
from bora_diffusion.merge import compose
from bora_diffusion.text import PromptEncoder
from bora_diffusion.train import Trainer

PROMPT = "a photo of <zq-thing> toy on a table"
CONFIG = TrainConfig(steps=6, learning_rate=1e-2, train_embedding=True, embedding_learning_rate=5e-2, seed=3)


def text_of(pipe, prompt: str = PROMPT) -> torch.Tensor:
    return PromptEncoder(pipe).encode([prompt]).states  # (1, 77, D)


def train_thing(pipe, folder, config: TrainConfig = CONFIG):
    """Train the stand-in concept "thing" (token <zq-thing>, class word "toy") on `pipe`; its file's path."""
    concept = make_concept(folder / "imgs", "thing", 0)
    adapter = AdapterConfig(method="sbora_fa", rank=2)
    return Trainer(pipe, concept, adapter, config, out_dir=folder / "run", base_name="tiny").train()


@pytest.fixture(scope="module")
def trained(_tiny_pipe_master, tmp_path_factory):
    """A concept trained with its token embedding; the pipeline it trained on and the initial vector."""
    pipe = copy.deepcopy(_tiny_pipe_master)
    start = add_token(
        copy.deepcopy(pipe.tokenizer), copy.deepcopy(pipe.text_encoder), "<zq-thing>", init_word="toy"
    )
    path = train_thing(pipe, tmp_path_factory.mktemp("embedding"))
    return pipe, path, start.detach().clone()


def test_an_added_token_is_one_token_and_leaves_every_other_prompt_bit_identical(tiny_pipe):
    other = "a photo of a toy on a table"
    before = text_of(tiny_pipe, other)
    vector = add_token(tiny_pipe.tokenizer, tiny_pipe.text_encoder, "<zq-thing>", init_word="toy")

    ids = tiny_pipe.tokenizer("<zq-thing>", add_special_tokens=False).input_ids
    assert len(ids) == 1 and ids[0] >= tiny_pipe.text_encoder.get_input_embeddings().base.num_embeddings
    assert torch.equal(text_of(tiny_pipe, other), before)
    # The token's row is its vector; the class word's mean is where it starts.
    embedded = tiny_pipe.text_encoder.get_input_embeddings()(torch.tensor([ids]))  # (1, 1, D)
    toy = tiny_pipe.tokenizer("toy", add_special_tokens=False).input_ids
    base = tiny_pipe.text_encoder.get_input_embeddings().base.weight
    assert vector.shape == (1, base.shape[1])
    assert torch.equal(embedded[0, 0], vector[0])
    assert torch.allclose(vector[0], base[toy].mean(0))


def test_a_token_of_three_vectors_is_spelled_out_as_diffusers_does_and_each_part_reads_its_own_row(tiny_pipe):
    rows = add_token(tiny_pipe.tokenizer, tiny_pipe.text_encoder, "<zq-thing>", count=3, init_word="toy")
    assert rows.shape == (3, tiny_pipe.text_encoder.get_input_embeddings().embedding_dim)
    with torch.no_grad():
        rows.copy_(torch.randn(rows.shape, generator=torch.Generator().manual_seed(0)))

    spelled = spell_out([PROMPT, "<zq-thing>_2 alone", "a <zq-thingy> toy"], tiny_pipe.tokenizer)
    assert spelled == [
        "a photo of <zq-thing> <zq-thing>_1 <zq-thing>_2 toy on a table",
        "<zq-thing>_2 alone",  # a part written out stays as it is, and so does a longer made-up word
        "a <zq-thingy> toy",
    ]
    ids = PromptEncoder(tiny_pipe).tokenize([PROMPT])[0, 0]  # (77,)
    parts = tiny_pipe.tokenizer.convert_tokens_to_ids(["<zq-thing>", "<zq-thing>_1", "<zq-thing>_2"])
    start = ids.tolist().index(parts[0])
    assert ids[start : start + 3].tolist() == parts
    embedded = tiny_pipe.text_encoder.get_input_embeddings()(ids[None])  # (1, 77, D)
    assert torch.equal(embedded[0, start : start + 3], rows)
    # diffusers' own encoding (its pipelines spell the token out themselves) reads the same states as ours.
    theirs, _ = tiny_pipe.encode_prompt(PROMPT, "cpu", 1, False)  # (1, 77, D)
    assert torch.equal(theirs.float(), text_of(tiny_pipe))
    # The tokenizer cannot forget <zq-thing>_2: a one-vector file for the same token would read it anyway.
    with pytest.raises(ConfigError, match="already holds token '<zq-thing>' as 3 vectors.*this one has 1"):
        add_token(tiny_pipe.tokenizer, tiny_pipe.text_encoder, "<zq-thing>", rows[0].detach())


def test_a_token_trained_as_two_vectors_trains_each_and_travels_through_its_file(_tiny_pipe_master, tmp_path):
    pipe = copy.deepcopy(_tiny_pipe_master)
    path = train_thing(pipe, tmp_path, dataclasses.replace(CONFIG, embedding_vectors=2))
    info = read_adapter(path)
    assert info.token_embedding.shape == (2, pipe.text_encoder.get_input_embeddings().embedding_dim)
    first, second = info.token_embedding
    # Both started at the class word's embedding; each position gets its own gradient, so they part.
    assert (first - second).norm() > 0.01 * first.norm()
    fresh = copy.deepcopy(_tiny_pipe_master)
    compose(fresh, [(path, 1.0)])
    assert torch.equal(text_of(fresh), text_of(pipe))
    with pytest.raises(ConfigError, match="embedding_vectors must be a positive integer"):
        TrainConfig(embedding_vectors=0)


def test_training_moves_the_token_embedding_and_nothing_else_of_the_text_encoder(trained, _tiny_pipe_master):
    pipe, path, start = trained
    wrapper = pipe.text_encoder.get_input_embeddings()
    assert isinstance(wrapper, TokenEmbeddings)
    vector = wrapper.vectors[0]
    assert (vector - start).norm() > 0.05 * start.norm()  # it trained (lr 5e-2 over 6 steps)
    master = _tiny_pipe_master.text_encoder.state_dict()
    for key, value in pipe.text_encoder.state_dict().items():
        if key.endswith("vectors.0"):
            continue
        assert torch.equal(value, master[key.replace("token_embedding.base.", "token_embedding.")]), key

    info = read_adapter(path)
    assert info.token == "<zq-thing>"
    assert torch.equal(info.token_embedding, vector.detach())
    assert info.training["train_embedding"] is True
    assert not any("token_embedding" in key for key in info.tensors)  # kept apart from the UNet's tensors


def test_composition_gives_the_trained_token_back_to_a_fresh_pipeline(trained, _tiny_pipe_master):
    pipe, path, _ = trained
    fresh = copy.deepcopy(_tiny_pipe_master)
    report = compose(fresh, [(path, 1.0)])
    assert report.concepts["thing"]["token_embedding"] is True
    assert torch.equal(text_of(fresh), text_of(pipe))
    assert not torch.equal(text_of(fresh), text_of(copy.deepcopy(_tiny_pipe_master)))


def test_a_file_with_an_embedding_is_refused_on_a_bare_unet_or_another_text_encoder(
    trained, _tiny_pipe_master, tmp_path
):
    _, path, _ = trained
    with pytest.raises(ConfigError, match="compose onto the pipeline"):
        compose(copy.deepcopy(_tiny_pipe_master.unet), [(path, 1.0)])

    info = read_adapter(path)
    fresh = copy.deepcopy(_tiny_pipe_master)
    compose(fresh, [(path, 1.0)])
    wrong = tmp_path / "wrong.safetensors"
    save_adapter(
        wrong,
        fresh.unet,
        "thing",
        info.config,
        base_name="tiny",
        token="<zq-thing>",
        token_embedding=torch.zeros(1, info.token_embedding.shape[1] + 1),
    )
    with pytest.raises(ConfigError, match=r"wrong\.safetensors.*embeds in \d+ dimensions"):
        compose(copy.deepcopy(_tiny_pipe_master), [(wrong, 1.0)])


def test_a_fused_pipeline_saved_with_the_token_reloads_in_plain_diffusers(
    trained, _tiny_pipe_master, tmp_path
):
    from diffusers import StableDiffusionPipeline

    _, path, _ = trained
    fused = copy.deepcopy(_tiny_pipe_master)
    compose(fused, [(path, 1.0)], fuse=True)
    expected = text_of(fused)
    bake_tokens(fused.text_encoder)
    assert torch.equal(text_of(fused), expected)
    fused.save_pretrained(tmp_path / "fused")
    reloaded = StableDiffusionPipeline.from_pretrained(tmp_path / "fused")
    assert torch.allclose(text_of(reloaded), expected, atol=1e-6)


def test_a_resumed_run_with_a_trained_embedding_is_bit_identical(_tiny_pipe_master, tmp_path):
    concept = make_concept(tmp_path / "imgs", "thing", 0)
    adapter = AdapterConfig(method="lora", rank=2)
    config = dataclasses.replace(CONFIG, checkpoint_every=3)

    def run(out: str, **kwargs):
        return Trainer(
            copy.deepcopy(_tiny_pipe_master),
            concept,
            adapter,
            config,
            out_dir=tmp_path / out,
            base_name="tiny",
            **kwargs,
        )

    straight = run("a").train()
    with pytest.raises(KeyboardInterrupt):
        run("b", callbacks=[StopAt(5)]).train()
    resumed = run("b").train(resume=True)
    a, b = read_adapter(straight), read_adapter(resumed)
    assert torch.equal(a.token_embedding, b.token_embedding)
    assert all(torch.equal(a.tensors[k], b.tensors[k]) for k in a.tensors)


def test_train_embedding_in_concept_toml_is_checked_like_every_training_key():
    from bora_diffusion.concept import TrainDefaults

    assert TrainDefaults.from_dict({"train_embedding": True}).train_config().train_embedding is True
    with pytest.raises(ConfigError, match="train_embedding must be true or false"):
        TrainDefaults.from_dict({"train_embedding": "yes"})
    with pytest.raises(ConfigError, match="embedding_learning_rate must be positive"):
        TrainConfig(embedding_learning_rate=0.0)


def test_the_command_line_turns_a_concepts_train_embedding_on_or_off():
    from bora_diffusion.cli import TRAIN_FLAGS, build_parser
    from bora_diffusion.concept import TrainDefaults

    world_recipe = TrainDefaults(train_embedding=True, embedding_learning_rate=5e-3)  # the world concepts'
    parser = build_parser()
    for flags, expected in (([], True), (["--no-train-embedding"], False), (["--train-embedding"], True)):
        args = parser.parse_args(["train", "concepts/bolt-circle", "--out", "x", *flags])
        config = world_recipe.train_config(**{key: getattr(args, key) for key in TRAIN_FLAGS})
        assert config.train_embedding is expected, flags
    args = parser.parse_args(["train", "concepts/kettle", "--out", "x"])
    assert (
        TrainDefaults().train_config(**{key: getattr(args, key) for key in TRAIN_FLAGS}).train_embedding
        is False
    )


def test_the_command_line_trains_inspects_and_exports_a_token_embedding(tmp_path, capsys):
    from bora_diffusion.cli import main

    out = tmp_path / "run"
    assert (
        main(["train", "concepts/kettle", "--out", str(out), "--steps", "2", "--train-embedding", "--quiet"])
        == 0
    )
    assert "kettle: sbora_fa rank 4, 2 steps, token 'qwiv' trained too ->" in capsys.readouterr().out
    assert main(["inspect", str(out / "kettle.safetensors")]) == 0
    assert "the token's own text embedding, trained" in capsys.readouterr().out
    assert main(["export", str(out / "kettle.safetensors"), str(tmp_path / "kettle_lora.safetensors")]) == 0
    printed = capsys.readouterr().out
    assert "load_textual_inversion" in printed
    assert (tmp_path / "kettle_lora.embedding.safetensors").is_file()
