"""The settings schema (bora_diffusion.settings) and methods that declare their own options.

The dummy method below is what "a new method with an option is one file and one registry line" means: it is
registered, and its option then exists everywhere a setting does, without a line elsewhere naming it.
"""

from __future__ import annotations

import argparse
import dataclasses

import pytest
import torch
from torch import nn

from bora_diffusion import adapters
from bora_diffusion.adapters import AdapterLayer
from bora_diffusion.adapters.lora import LoRA
from bora_diffusion.config import AdapterConfig, TrainConfig, adapter_settings
from bora_diffusion.errors import ConfigError
from bora_diffusion.inject import wrap_linear
from bora_diffusion.settings import Setting, settings_of


class Widened(LoRA):
    """LoRA whose update is multiplied by its own option `gain`: a method with an option, for the tests."""

    method = "widened"
    options = (Setting("gain", float, 2.0, "multiplies the update", positive=True, maximum=8),)

    def delta_weight(self, base_weight: torch.Tensor) -> torch.Tensor:
        return self.config.options["gain"] * super().delta_weight(base_weight)

    add_delta = AdapterLayer.add_delta  # through the dense delta above


@pytest.fixture
def widened(monkeypatch):
    """The dummy method, registered the way a new method is: one line in the registry."""
    monkeypatch.setitem(adapters._METHODS, "widened", Widened)
    return Widened


@pytest.mark.parametrize(
    ("described", "value", "message"),
    [
        (Setting("rank", int, 4, "", positive=True), 0, "rank must be a positive integer, got 0"),
        (Setting("rank", int, 4, "", positive=True), 2.0, "rank must be a positive integer, got 2.0"),
        (Setting("rank", int, 4, "", positive=True), True, "rank must be a positive integer, got True"),
        (Setting("warmup", int, 0, "", minimum=0), -1, "warmup must be a non-negative integer, got -1"),
        (Setting("lr", float, 1.0, "", positive=True), 0, "lr must be positive, got 0"),
        (Setting("lr", float, 1.0, "", positive=True), float("nan"), "lr must be positive, got nan"),
        (Setting("lr", float, 1.0, "", positive=True), "1e-3", "lr must be a positive number, got '1e-3'"),
        (Setting("w", float, 0.0, "", minimum=0), "none", "w must be a number >= 0, got 'none'"),
        (Setting("w", float, 0.0, "", minimum=0), -0.5, "w must be >= 0, got -0.5"),
        (Setting("p", float, 0.5, "", minimum=0, maximum=1), 2, "p must be a number 0 <= p <= 1, got 2"),
        (
            Setting("g", float, None, "", positive=True, optional=True),
            -1,
            "g must be positive (or omitted), got -1",
        ),
        (Setting("x", str, "a", "", choices=("a", "b")), "c", "x must be one of a, b, got 'c'"),
        (Setting("on", bool, False, ""), 1, "on must be true or false, got 1"),
        (Setting("rank", int, 4, ""), None, "rank must be an integer, got None"),
    ],
)
def test_a_setting_refuses_what_it_does_not_allow_by_name(described, value, message):
    with pytest.raises(ConfigError) as error:
        described.check(value)
    assert str(error.value) == message


def test_a_float_setting_takes_an_integer_as_a_float_and_optional_takes_none():
    assert Setting("alpha", float, None, "", positive=True, optional=True).check(4) == 4.0
    assert isinstance(Setting("alpha", float, None, "", optional=True).check(4), float)
    assert Setting("alpha", float, None, "", optional=True).check(None) is None
    assert Setting("steps", int, 1, "", positive=True).check(7) == 7


def test_every_training_setting_is_described_and_its_default_is_allowed():
    described = {s.name: s for s in settings_of(TrainConfig)}
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    assert fields - set(described) == {"sample_prompts"}  # the concept's [prompts], not a setting
    for s in described.values():
        assert s.help and s.check(s.default) == s.default, s.name
    assert (
        described["learning_rate"].cli_flag == "--lr" and described["batch_size"].cli_flag == "--batch-size"
    )
    # The configs validate through the same descriptions.
    with pytest.raises(ConfigError, match="gradient_accumulation must be a positive integer, got 0"):
        TrainConfig(gradient_accumulation=0)
    with pytest.raises(ConfigError, match="lr_schedule must be one of constant, "):
        TrainConfig(lr_schedule="exponential")


def test_a_methods_option_is_checked_defaulted_and_refused_for_other_methods():
    assert AdapterConfig("bora_block").options == {"blocks": 4}
    assert AdapterConfig("bora_block", blocks=None).options == {"blocks": 4}  # None: not given
    assert AdapterConfig("bora_block", blocks=2).options == {"blocks": 2}
    assert AdapterConfig("lora", blocks=None).options == {}
    with pytest.raises(ConfigError, match="^blocks must be a positive integer, got 0$"):
        AdapterConfig("bora_block", blocks=0)
    with pytest.raises(
        ConfigError, match="^blocks is an option of bora_block only; remove it for method 'lora'$"
    ):
        AdapterConfig("lora", blocks=2)
    with pytest.raises(
        ConfigError, match="^width is not an option of any method; remove it for method 'lora'$"
    ):
        AdapterConfig("lora", width=2)
    with pytest.raises(ConfigError, match="^method 'lorra' is unknown; choose one of lora, dora, "):
        AdapterConfig("lorra")


def test_files_hold_options_flat_and_older_files_still_load():
    config = AdapterConfig("bora_block", rank=2, blocks=3)
    data = config.to_dict()
    assert data["blocks"] == 3 and "options" not in data
    assert AdapterConfig.from_dict(data) == config
    # Written before options were per method: every method carried "blocks", null unless bora_block.
    older = {"method": "lora", "rank": 4, "alpha": None, "blocks": None, "init": "kaiming", "seed": 0,
             "targets": "attention"}  # fmt: skip
    assert AdapterConfig.from_dict(older) == AdapterConfig("lora")
    with pytest.raises(ConfigError, match="unknown adapter config field"):
        AdapterConfig.from_dict({**older, "rnak": 2})
    assert dataclasses.replace(config, rank=5).options == {"blocks": 3}
    assert len({config, AdapterConfig("bora_block", rank=2, blocks=3)}) == 1  # hashable, by value


def test_a_new_method_with_an_option_needs_no_line_outside_its_file(widened):
    names = [s.name for s in adapter_settings()]
    assert "gain" in names and "blocks" in names
    assert [s.name for s in adapter_settings("widened")] == ["method", "rank", "alpha", "gain"]
    assert AdapterConfig("widened").options == {"gain": 2.0}
    with pytest.raises(ConfigError, match="^gain must be a number 0 < gain <= 8, got 9$"):
        AdapterConfig("widened", gain=9)
    with pytest.raises(ConfigError, match="^gain is an option of widened only"):
        AdapterConfig("bora_block", gain=1.0)
    torch.manual_seed(0)
    base = nn.Linear(6, 5)
    plain = wrap_linear(nn.Linear(6, 5), "lora", rank=2)
    plain.base.load_state_dict(base.state_dict())
    twice = wrap_linear(nn.Linear(6, 5), "widened", rank=2, gain=3.0)
    twice.base.load_state_dict(base.state_dict())
    for wrapper in (plain, twice):
        nn.init.normal_(wrapper.adapters["default"].B, generator=torch.Generator().manual_seed(1))
    twice.adapters["default"].A.data.copy_(plain.adapters["default"].A)
    x = torch.randn(3, 6)
    with torch.no_grad():
        delta = plain(x) - base(x)
        assert torch.allclose(twice(x) - base(x), 3.0 * delta, atol=1e-6)
        assert delta.abs().max() > 1e-3  # the update is not zero, so the factor 3 is seen


def test_a_new_methods_option_is_a_concept_toml_key(widened, tmp_path):
    import tomllib

    from PIL import Image

    from bora_diffusion.concept import TrainDefaults, concept_toml, load_concept
    from bora_diffusion.embedded import clip_tokenizer
    from bora_diffusion.errors import ConceptError

    def concept_folder(name: str, train: str):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "concept.toml").write_text(f'token = "zq{name}"\nclass_word = "dog"\n[train]\n{train}')
        Image.new("RGB", (64, 64), (90, 40, 200)).save(folder / "a.png")
        return folder

    tokenizer = clip_tokenizer()
    train = load_concept(concept_folder("dog", 'method = "widened"\ngain = 3\n'), tokenizer=tokenizer).train
    assert train.options == {"gain": 3.0} and isinstance(train.options["gain"], float)
    assert train.adapter_config() == AdapterConfig("widened", gain=3.0)
    # The option is the concept's widened choice: a method chosen over it drops it, as bora_block's blocks.
    assert train.adapter_config(method="lora") == AdapterConfig("lora")
    assert TrainDefaults(gain=3.0).adapter_config(default_method="widened").options == {"gain": 3.0}
    written = concept_toml("zqdog", "dog", train=train)
    assert written.endswith('method = "widened"\ngain = 3.0\n')
    assert TrainDefaults.from_dict(tomllib.loads(written)["train"]) == train
    # Checked by its own Setting, and refused under a method without it, in the file's one error line.
    with pytest.raises(ConceptError, match=r"\[train\] gain must be a number 0 < gain <= 8, got 9"):
        load_concept(concept_folder("cat", "gain = 9\n"), tokenizer=tokenizer)
    with pytest.raises(
        ConceptError, match=r"\[train\] gain is an option of widened only; remove it for method"
    ):
        load_concept(concept_folder("cow", 'method = "lora"\ngain = 2.0\n'), tokenizer=tokenizer)


def test_the_command_line_offers_a_new_methods_option_as_a_checked_flag(widened, capsys):
    """cli/ has no line naming `gain` or `widened`: the flag, its help, its check and its way into the adapter
    config all come from the registry and the option's Setting."""
    from bora_diffusion.cli import adapter_flag_names, build_parser, main
    from bora_diffusion.concept import TrainDefaults

    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    train_help = " ".join(commands["train"].format_help().split())
    assert "--gain GAIN multiplies the update (widened only; default 2)" in train_help
    assert "bora_block, bora_bidim, widened" in train_help  # the method list is the registry's
    assert "--gain" in commands["compare"].format_help()
    assert "widened" in commands["methods"].format_help()

    assert "gain" in adapter_flag_names()
    args = parser.parse_args(["train", "concepts/kettle", "--out", "x", "--method", "widened", "--gain", "3"])
    assert args.gain == 3.0 and isinstance(args.gain, float)
    flags = {key: getattr(args, key) for key in adapter_flag_names()}
    config = TrainDefaults(method="lora", rank=2).adapter_config(**flags)
    assert (config.method, config.rank, config.options) == ("widened", 2, {"gain": 3.0})
    unset = parser.parse_args(["train", "concepts/kettle", "--out", "x", "--method", "widened"])
    assert unset.gain is None  # not given: the option's default applies, not a value of the parser's
    assert TrainDefaults().adapter_config(**{k: getattr(unset, k) for k in adapter_flag_names()}).options == {
        "gain": 2.0
    }

    # The option's own range, refused while parsing: one line naming the flag, before anything loads.
    assert main(["train", "concepts/kettle", "--out", "x", "--method", "widened", "--gain", "9"]) == 2
    err = capsys.readouterr().err
    assert err == "error: --gain: gain must be a number 0 < gain <= 8, got 9.0\n"
    # ... and the method's ownership, when the config is built.
    with pytest.raises(ConfigError, match="^gain is an option of widened only; remove it for method 'lora'$"):
        TrainDefaults().adapter_config(default_method="lora", **flags | {"method": None})


def test_the_apps_form_and_presets_offer_a_new_methods_option(widened, tmp_path):
    """The app part: the dummy's `gain` is a Train form field, in the presets and the named form, trained."""
    from pathlib import Path

    gradio = pytest.importorskip("gradio")
    from bora_diffusion.app import training, ui
    from bora_diffusion.app.storage import DataDir

    names = [s.name for s in training.form_settings()]
    assert names[:2] == ["method", "rank"] and {"blocks", "gain"} <= set(names)
    assert training.option_owner("gain") == "widened" and training.option_owner("rank") is None
    assert "gain" in training.preset_fields() and "gain" in training.recipe_fields()
    assert training.preset("widened")["gain"] == 2.0 and training.preset("widened")["rank"] == 4
    assert training.preset("bora_block")["gain"] == 2.0  # another method's field shows its own default
    with gradio.Blocks():
        fields = ui.form_fields(training.preset("widened"))
    gain = fields["gain"]
    assert isinstance(gain, gradio.Number) and gain.label == "Gain (widened)" and gain.value == 2.0
    assert gain.info == "multiplies the update" and gain.precision is None  # a float: no rounding
    assert fields["blocks"].label == "Blocks (bora_block)" and fields["blocks"].precision == 0

    concepts = Path(__file__).resolve().parents[1] / "concepts"
    form = training.Form.from_dict({"source": "folder", "folder": "kettle", "method": "widened", "gain": 3})
    _, adapter, _ = training.build(form, DataDir(tmp_path / "data"), concepts)
    assert adapter.method == "widened" and adapter.options == {"gain": 3.0} and adapter.rank == 4
    with pytest.raises(ConfigError, match="^gain must be a number 0 < gain <= 8, got 9$"):
        training.build(
            training.Form.from_dict({"source": "folder", "folder": "kettle", "method": "widened", "gain": 9}),
            DataDir(tmp_path / "data"),
            concepts,
        )
    with pytest.raises(ConfigError, match="^form: unknown field 'gian' \\(did you mean 'gain'\\?\\)$"):
        training.Form.from_dict({"source": "folder", "folder": "kettle", "gian": 3})
    # An upload keeps its method's option in its concept.toml, and only that method's.
    from PIL import Image

    images = []
    for i in range(2):
        images.append(str(tmp_path / f"up_{i}.png"))
        Image.new("RGB", (64, 64), (90, 40 + 60 * i, 200)).save(images[-1])
    upload = {
        "name": "wide",
        "token": "zqwide",
        "class_word": "mug",
        "method": "widened",
        "gain": 5,
        "blocks": 8,
    }
    concept, adapter, _ = training.build(
        training.Form.from_dict(upload, tuple(images)), DataDir(tmp_path / "d"), None
    )
    assert adapter.options == {"gain": 5.0} and concept.train.options == {"gain": 5.0}
    assert "gain = 5.0" in (concept.folder / "concept.toml").read_text()
