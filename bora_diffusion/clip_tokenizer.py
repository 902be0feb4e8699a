"""The OpenAI CLIP tokenizer (49,408 tokens, 77 positions), rebuilt without downloads from the BPE merges file
that open_clip ships: the tokenizer of the embedded default base, and of the tests' tiny SD and SDXL bases.
"""

from __future__ import annotations

import gzip
from functools import lru_cache

from open_clip.tokenizer import bytes_to_unicode, default_bpe
from transformers import CLIPTokenizer

# 256 byte tokens + 256 byte tokens with "</w>" + 48,894 merges + 2 special tokens (OpenAI CLIP).
CLIP_VOCAB_SIZE = 49408
CLIP_CONTEXT_LENGTH = 77

_BOS = "<|startoftext|>"
_EOS = "<|endoftext|>"


@lru_cache(maxsize=1)
def _clip_vocab_and_merges() -> tuple[dict[str, int], tuple[tuple[str, str], ...]]:
    """The OpenAI CLIP BPE vocabulary and merges, rebuilt the way open_clip's `SimpleTokenizer` does."""
    with gzip.open(default_bpe(), "rt", encoding="utf-8") as bpe_file:
        lines = bpe_file.read().split("\n")
    # Line 0 is a version header; CLIP uses the first 49152 - 256 - 2 merges (same slice as open_clip / OpenAI).
    merge_lines = lines[1 : 49152 - 256 - 2 + 1]
    merges = tuple((a, b) for a, b in (line.split() for line in merge_lines))
    byte_chars = list(bytes_to_unicode().values())
    tokens = [*byte_chars, *(c + "</w>" for c in byte_chars), *(a + b for a, b in merges), _BOS, _EOS]
    vocab = {token: index for index, token in enumerate(tokens)}
    if len(vocab) != CLIP_VOCAB_SIZE:
        raise RuntimeError(f"rebuilt CLIP vocabulary has {len(vocab)} tokens, expected {CLIP_VOCAB_SIZE}")
    return vocab, merges


def clip_tokenizer() -> CLIPTokenizer:
    """The OpenAI CLIP tokenizer (49,408 tokens, 77 positions, pad = `<|endoftext|>`), built without downloads.

    Ids equal open_clip's `SimpleTokenizer` (and OpenAI CLIP) for any text that ftfy's cleaning leaves unchanged;
    like every Hugging Face CLIP tokenizer it does not run ftfy, so e.g. curly quotes are not straightened.
    Returns a new tokenizer each call (about 50 ms; the parsed merges are cached) because tokenizers are mutable:
    callers add concept tokens to them.
    """
    vocab, merges = _clip_vocab_and_merges()
    # transformers 5's CLIPTokenizer takes the vocabulary in memory; merges must be (left, right) tuples, a list of
    # "left right" strings is rejected by the tokenizers backend.
    return CLIPTokenizer(
        vocab=dict(vocab),
        merges=list(merges),
        unk_token=_EOS,
        bos_token=_BOS,
        eos_token=_EOS,
        pad_token=_EOS,
        model_max_length=CLIP_CONTEXT_LENGTH,
    )
