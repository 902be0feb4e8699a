"""Slots: disjoint standard-basis indices per layer, so concepts merged into one model never touch each other.

Each layer has a seeded permutation of its index range (seeded by the ledger's seed and the layer's module path).
A new concept takes the first r indices of that permutation that no other concept owns. Slots live in a "space":
"in" (input features, `sbora_fa`), "out" (output units, `sbora_fb`) or "ortho" (columns of the shared orthogonal
basis, `ortho`). The ledger records who owns what and is saved as JSON. Independent random draws would collide
often (about 74% chance of a shared index at r = 20, n = 320); the allocator makes disjointness a guarantee.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .atomic import write_text
from .errors import SlotError
from .seeding import generator

SPACES = ("in", "out", "ortho")
LEDGER_VERSION = 1


def slot_size(space: str, in_features: int, out_features: int) -> int:
    """How many slots a layer has in `space`: its output units for "out"; its input features for "in", and for
    "ortho", whose basis is (in, in)."""
    return out_features if space == "out" else in_features


class SlotLedger:
    """Who owns which indices of which layer, in each slot space. Deterministic for a given seed."""

    def __init__(self, seed: int = 0) -> None:
        self.seed = int(seed)
        # space -> module path -> {"size": int, "owners": {concept: [indices]}}
        self._layers: dict[str, dict[str, dict[str, Any]]] = {space: {} for space in SPACES}

    def permutation(self, path: str, size: int) -> Tensor:
        """The layer's order of handing out indices: (size,) int64, fixed by (seed, path)."""
        return torch.randperm(size, generator=generator("slot-permutation", self.seed, path))

    def allocate(self, concept: str, space: str, sizes: dict[str, int], rank: int) -> dict[str, Tensor]:
        """Give `concept` `rank` free indices on every layer of `sizes` (module path -> size of the space).

        All or nothing: if any layer is full, nothing is recorded. Asking again for a concept that already holds
        slots of the same rank returns them unchanged.
        """
        self._check_space(space)
        layers = self._layers[space]
        chosen: dict[str, list[int]] = {}
        for path, size in sizes.items():
            entry = layers.get(path)
            if entry is not None and entry["size"] != size:
                raise SlotError(
                    f"layer {path} has size {size} but the ledger recorded {entry['size']} in space {space!r}: "
                    "this ledger belongs to another base model; use a new ledger file"
                )
            owners = entry["owners"] if entry else {}
            if concept in owners:
                if len(owners[concept]) != rank:
                    raise SlotError(
                        f"concept {concept!r} already owns {len(owners[concept])} slots on {path}, asked for {rank}; "
                        "release it first to change its rank"
                    )
                chosen[path] = owners[concept]
                continue
            taken = {index for indices in owners.values() for index in indices}
            free = [index for index in self.permutation(path, size).tolist() if index not in taken]
            if len(free) < rank:
                raise SlotError(
                    f"slots exhausted on {path} ({space} space, size {size}): {len(owners)} concept(s) own "
                    f"{len(taken)} of {size} indices and {concept!r} needs {rank} (capacity at rank {rank} is "
                    f"{size // rank} concepts); lower the rank, release a concept, or target fewer layers"
                )
            chosen[path] = free[:rank]
        for path, indices in chosen.items():
            layers.setdefault(path, {"size": sizes[path], "owners": {}})["owners"][concept] = indices
        return {path: torch.tensor(indices, dtype=torch.int64) for path, indices in chosen.items()}

    def record(self, concept: str, space: str, path: str, size: int, indices: list[int]) -> None:
        """Enter slots a concept already holds (e.g. read from its adapter file); they must be free."""
        self._check_space(space)
        entry = self._layers[space].setdefault(path, {"size": size, "owners": {}})
        clash = sorted(set(indices) & {i for c, idx in entry["owners"].items() if c != concept for i in idx})
        if clash:
            raise SlotError(
                f"{concept!r} holds indices {clash} on {path} ({space} space) that another concept owns"
            )
        entry["owners"][concept] = [int(i) for i in indices]

    def release(self, concept: str) -> None:
        """Forget every slot `concept` owns (its indices become free for the next concept)."""
        for layers in self._layers.values():
            for entry in layers.values():
                entry["owners"].pop(concept, None)

    def slots(self, concept: str, space: str) -> dict[str, list[int]]:
        """The indices `concept` owns per layer in `space` (empty if none)."""
        self._check_space(space)
        return {
            path: list(entry["owners"][concept])
            for path, entry in self._layers[space].items()
            if concept in entry["owners"]
        }

    def concepts(self) -> list[str]:
        names = {c for layers in self._layers.values() for entry in layers.values() for c in entry["owners"]}
        return sorted(names)

    def to_dict(self) -> dict[str, Any]:
        return {"version": LEDGER_VERSION, "seed": self.seed, "spaces": self._layers}

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "ledger") -> SlotLedger:
        if not isinstance(data, dict) or "seed" not in data or "spaces" not in data:
            raise SlotError(f"{source}: not a slot ledger (needs 'version', 'seed' and 'spaces')")
        if int(data.get("version", 0)) > LEDGER_VERSION:
            raise SlotError(
                f"{source}: ledger version {data['version']} is newer than this bora-diffusion reads "
                f"({LEDGER_VERSION}); upgrade bora-diffusion"
            )
        ledger = cls(seed=int(data["seed"]))
        for space, layers in data["spaces"].items():
            ledger._check_space(space, source)
            for path, entry in layers.items():
                size, owners = (
                    int(entry["size"]),
                    {c: [int(i) for i in idx] for c, idx in entry["owners"].items()},
                )
                seen: dict[int, str] = {}
                for concept, indices in owners.items():
                    for index in indices:
                        if not 0 <= index < size or index in seen:
                            raise SlotError(
                                f"{source}: layer {path} index {index} of {concept!r} is out of range "
                                f"or also owned by {seen.get(index)!r}; the ledger is corrupt"
                            )
                        seen[index] = concept
                ledger._layers[space][path] = {"size": size, "owners": owners}
        return ledger

    def save(self, path: str | os.PathLike) -> None:
        write_text(path, json.dumps(self.to_dict(), indent=1, sort_keys=True))

    @classmethod
    def load(cls, path: str | os.PathLike) -> SlotLedger:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise SlotError(f"{path}: slot ledger not found; check the path or start a new ledger") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise SlotError(
                f"{path}: not valid JSON ({error}); restore the ledger or start a new one"
            ) from None
        return cls.from_dict(data, source=str(path))

    def _check_space(self, space: str, source: str = "ledger") -> None:
        if space not in SPACES:
            raise SlotError(f"{source}: unknown slot space {space!r}; spaces are {', '.join(SPACES)}")
