"""What a saved model *is*: its architecture, stored beside its weights.

Compression changes a model's shape: pruning leaves blocks with different head counts and
MLP widths, Nyström swaps the attention, distillation adds a token and a head. A file that
held only weights would rebuild into the recipe's original architecture and fail to load, or
load wrongly. So every safetensors file vitdeploy writes carries an `Architecture` in its
metadata (key `vitdeploy.architecture`, JSON), and `build_model` rebuilds exactly that model.

`read_architecture` parses the safetensors header itself and imports no torch.
"""

from __future__ import annotations

import json
import struct
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from vitdeploy.core.errors import UserError

METADATA_KEY = "vitdeploy.architecture"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class BlockArch:
    """One transformer block: attention heads and their width, MLP hidden units, attention kind."""

    num_heads: int
    head_dim: int
    mlp_hidden: int
    attention: dict[str, Any] = field(default_factory=lambda: {"kind": "exact"})

    @property
    def attn_dim(self) -> int:
        return self.num_heads * self.head_dim


@dataclass(frozen=True)
class Architecture:
    """A timm ViT (name and overrides) plus everything compression changed about it."""

    timm_name: str
    overrides: dict[str, Any]
    embed_dim: int
    blocks: tuple[BlockArch, ...]
    distilled: bool = False  # DeiT's distillation token and second head
    version: int = FORMAT_VERSION

    @property
    def num_prefix_tokens(self) -> int:
        has_cls = self.overrides.get("class_token", True) is not False
        return int(has_cls) + int(self.distilled)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Architecture:
        data = json.loads(text)
        if data.get("version", 0) > FORMAT_VERSION:
            raise ValueError(f"architecture format {data['version']} is newer than this vitdeploy ({FORMAT_VERSION})")
        blocks = tuple(BlockArch(**b) for b in data.pop("blocks"))
        return cls(blocks=blocks, **data)

    def with_blocks(self, blocks: list[BlockArch] | tuple[BlockArch, ...]) -> Architecture:
        return replace(self, blocks=tuple(blocks))

    def summary(self) -> dict[str, Any]:
        """The short form a manifest shows: per-block heads, MLP width and attention kind."""
        return {
            "timm_name": self.timm_name,
            "embed_dim": self.embed_dim,
            "distilled": self.distilled,
            "heads": [b.num_heads for b in self.blocks],
            "head_dim": [b.head_dim for b in self.blocks],
            "mlp_hidden": [b.mlp_hidden for b in self.blocks],
            "attention": [b.attention.get("kind", "exact") for b in self.blocks],
        }


def read_safetensors_metadata(path: Path) -> dict[str, str]:
    """The `__metadata__` of a safetensors file, read from its header (no torch, no weights)."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            if length > 100_000_000:
                raise ValueError("header too large")
            header = json.loads(f.read(length))
    except (OSError, struct.error, ValueError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: not a readable safetensors file ({err})") from None
    meta = header.get("__metadata__") or {}
    return meta if isinstance(meta, dict) else {}


def read_architecture(path: Path) -> Architecture | None:
    """The architecture stored in a safetensors file, or None for a plain weights file."""
    if Path(path).suffix != ".safetensors":
        return None
    text = read_safetensors_metadata(path).get(METADATA_KEY)
    if text is None:
        return None
    try:
        return Architecture.from_json(text)
    except (ValueError, TypeError, KeyError) as err:
        raise UserError(f"{path}: its architecture metadata is unreadable ({err})") from None
