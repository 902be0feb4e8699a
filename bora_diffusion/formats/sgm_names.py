"""SDXL's original (SGM) module names, which sd-scripts writes in its SDXL LoRA files, and diffusers' paths.

sd-scripts trains SD 1.x/2.x on diffusers' UNet, so those kohya names are diffusers module paths with `.` -> `_`.
For SDXL it uses its own UNet (library/sdxl_original_unet.py), which keeps the module names of Stability's
generative-models (SGM) checkpoints; A1111, Forge and ComfyUI expect those in an SDXL LoRA. The SGM UNet is flat:

    input_blocks.0.0             conv_in
    input_blocks.N.0             a resnet;   input_blocks.N.1  its transformer, when the level has attention
    input_blocks.N.0.op          a level's downsampler (the block after its resnets)
    middle_block.0 / .1 / .2     resnet, transformer, resnet
    output_blocks.N.0            a resnet;   output_blocks.N.1  its transformer (if any);  .1 or .2 `.conv`: upsampler
    time_embed.0 / .2, label_emb.0.0 / .2, out.0 / out.2   the time and added-condition MLPs, the output norm and conv

For down level L and resnet i, N = 1 + L * (layers_per_block + 1) + i (the downsampler takes i = layers_per_block);
for up level L (diffusers' order, deepest first) and resnet i, N = L * (layers_per_block + 1) + i, since an up
level has layers_per_block + 1 resnets. Inside a transformer the names are diffusers' (`proj_in`,
`transformer_blocks.0.attn1.to_q`, `attn1.to_out.0`, `ff.net.0.proj`, `ff.net.2`); inside a resnet they are SGM's
(`in_layers.0`/`.2` = norm1/conv1, `emb_layers.1` = time_emb_proj, `out_layers.0`/`.3` = norm2/conv2,
`skip_connection` = conv_shortcut).

The mapping is derived from a `BlockLayout`, read from the UNet's config (layers_per_block, which up levels have
attention); `SDXL` is the real SDXL base's. It is a pure function of a path, so imports apply it to the base UNet's
own module paths and never have to split a name on underscores.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class BlockLayout:
    """What the diffusers <-> SGM mapping depends on."""

    layers_per_block: int  # resnets per down level; up levels have one more
    # per up level, deepest first (diffusers' up_blocks order): whether it has transformers
    up_attention: tuple[bool, ...]

    @classmethod
    def from_config(cls, config: Mapping[str, object]) -> BlockLayout:
        """From a diffusers UNet2DConditionModel config (or the subset a native file records)."""
        per_block = config["layers_per_block"]
        if not isinstance(per_block, int):  # a list per level: SGM's flat numbering needs one count
            counts = set(per_block)  # type: ignore[arg-type]
            if len(counts) != 1:
                raise ValueError(f"layers_per_block differs per level ({per_block}); no SGM layout")
            per_block = counts.pop()
        up_types = config["up_block_types"]
        return cls(int(per_block), tuple("CrossAttn" in str(kind) for kind in up_types))  # type: ignore[union-attr]


# The SDXL 1.0 base UNet's (and its finetunes'): what a file that does not record its base is numbered by.
SDXL = BlockLayout(layers_per_block=2, up_attention=(True, True, False))

_TOP = {
    "conv_in": "input_blocks.0.0",
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}
_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
_BLOCK = re.compile(
    r"^(down_blocks|up_blocks)\.(\d+)\.(resnets|attentions|downsamplers|upsamplers)\.(\d+)(?:\.(.+))?$"
)
_MID = re.compile(r"^mid_block\.(resnets|attentions)\.(\d+)(?:\.(.+))?$")


def to_sgm(path: str, layout: BlockLayout = SDXL) -> str | None:
    """The SGM module name of a diffusers UNet module path, or None if it has none (a path of no SDXL UNet)."""
    for head, name in _TOP.items():
        if path == head or path.startswith(head + "."):
            return name + path[len(head) :]
    per = layout.layers_per_block + 1
    match = _BLOCK.match(path)
    if match:
        kind, level, part, index, rest = match.groups()
        level, index = int(level), int(index)
        if kind == "down_blocks":
            if part == "downsamplers":
                head = f"input_blocks.{1 + level * per + layout.layers_per_block}.0"
                return _sampler(head, "op", rest) if index == 0 else None
            if part == "upsamplers" or index >= layout.layers_per_block:
                return None
            block = f"input_blocks.{1 + level * per + index}"
        else:
            if part == "downsamplers" or level >= len(layout.up_attention):
                return None
            if part == "upsamplers":
                sub = 2 if layout.up_attention[level] else 1  # after the resnet and, if any, the transformer
                head = f"output_blocks.{level * per + layout.layers_per_block}.{sub}"
                return _sampler(head, "conv", rest) if index == 0 else None
            if index >= per:
                return None
            block = f"output_blocks.{level * per + index}"
        return _inner(f"{block}.{1 if part == 'attentions' else 0}", part, rest)
    match = _MID.match(path)
    if match:
        part, index, rest = match.groups()
        sub = {("resnets", "0"): 0, ("attentions", "0"): 1, ("resnets", "1"): 2}.get((part, index))
        return None if sub is None else _inner(f"middle_block.{sub}", part, rest)
    return None


def _inner(module: str, part: str, rest: str | None) -> str | None:
    """The SGM name of a path inside a resnet or transformer whose own SGM name is `module`."""
    if part == "attentions" or rest is None:
        return _join(module, rest)
    first, _, tail = rest.partition(".")
    return _join(f"{module}.{_RESNET[first]}", tail or None) if first in _RESNET else None


def _sampler(head: str, name: str, rest: str | None) -> str | None:
    """diffusers' `downsamplers.0.conv` is SGM's `<block>.0.op`, `upsamplers.0.conv` its `<block>.<1|2>.conv`."""
    if rest is None:
        return head
    first, _, tail = rest.partition(".")
    return _join(f"{head}.{name}", tail or None) if first == "conv" else None


def _join(head: str, rest: str | None) -> str:
    return head if rest is None else f"{head}.{rest}"
