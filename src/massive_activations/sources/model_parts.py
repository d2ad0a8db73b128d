"""Where the parts of any transformers causal LM live: embedding, decoder blocks, trunk.

Capture, splicing, W8A8 and the outlier-dimension count all go through :func:`find_parts`, so one
discovery covers GPT-NeoX (``gpt_neox.layers``), Llama/Mistral/Qwen2/OLMo/OLMo-2 (``model.layers``),
GPT-2 (``transformer.h``) and the like:

- the trunk is the model's ``base_model`` (the transformer without its LM head);
- the decoder blocks are the trunk's one ``ModuleList`` holding ``num_hidden_layers`` modules; a
  block's output (the first element when it returns a tuple) is the residual stream after it;
- the embedding is ``get_input_embeddings()`` (for models with learned positions, such as GPT-2,
  the token embedding alone);
- a block's *input projections* are the first Linear (or GPT-2 ``Conv1D``) of its attention and of
  its MLP, found by name (``INPUT_PROJECTIONS``): their inputs are what LLM.int8() counts;
- a block's attention module and its MLP's *down-projection* (the outlier panel's hooks) are found
  by name too (``ATTENTION_MODULES``, ``DOWN_PROJECTIONS``).

An architecture this cannot read fails with :class:`UnsupportedArchitectureError` naming what was
not found; :func:`check_config` does so from a config.json alone, before any weights are fetched.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from massive_activations.errors import BadInputError

# the first projection of attention and of the MLP, by the names transformers gives them
INPUT_PROJECTIONS: dict[str, tuple[str, ...]] = {
    "attention": ("query_key_value", "qkv_proj", "Wqkv", "c_attn", "att_proj", "q_proj"),
    "mlp": ("dense_h_to_4h", "gate_up_proj", "up_proj", "c_fc", "fc_in", "fc1", "ff_proj"),
}
# the block's attention module, and the MLP's last projection (inside a module named like mlp or ff)
ATTENTION_MODULES = ("attention", "self_attn", "attn")
DOWN_PROJECTIONS = ("dense_4h_to_h", "down_proj", "c_proj", "fc_out", "fc2", "ff_out")


class UnsupportedArchitectureError(BadInputError):
    """The model's blocks, embedding or projections are not where any supported layout keeps them."""


@dataclass(frozen=True)
class ModelParts:
    trunk: torch.nn.Module
    embedding: torch.nn.Module
    blocks: torch.nn.ModuleList

    def input_projections(self, block: int) -> list[torch.nn.Module]:
        """The attention's and the MLP's first projection in decoder block ``block``."""
        named = dict(self.blocks[block].named_modules())
        found = []
        for part, names in INPUT_PROJECTIONS.items():
            match = next((m for name in names for key, m in named.items() if key.rsplit(".", 1)[-1] == name), None)
            if match is None:
                raise UnsupportedArchitectureError(
                    f"{type(self.blocks[block]).__name__}: no {part} input projection (looked for "
                    f"{', '.join(names)}; the block has {sorted(k for k in named if k)[:12]})")
            found.append(match)
        return found

    def attention(self, block: int) -> torch.nn.Module:
        """Decoder block ``block``'s attention module (whose config names its attention function)."""
        module = self.blocks[block]
        for name in ATTENTION_MODULES:
            if isinstance(getattr(module, name, None), torch.nn.Module):
                return getattr(module, name)
        raise UnsupportedArchitectureError(
            f"{type(module).__name__}: no attention module (looked for {', '.join(ATTENTION_MODULES)}; the block "
            f"has {sorted(name for name, _ in module.named_children())})")

    def down_projection(self, block: int) -> torch.nn.Module:
        """The MLP's last projection in decoder block ``block`` (GPT-2's attention has a c_proj too)."""
        named = dict(self.blocks[block].named_modules())
        for key, module in named.items():
            parts = key.split(".")
            if parts[-1] in DOWN_PROJECTIONS and any("mlp" in p or p == "ff" for p in parts[:-1]):
                return module
        raise UnsupportedArchitectureError(
            f"{type(self.blocks[block]).__name__}: no MLP down-projection (looked for {', '.join(DOWN_PROJECTIONS)} "
            f"inside an mlp; the block has {sorted(k for k in named if k)[:12]})")

    def linears(self) -> list[torch.nn.Module]:
        """Every Linear (and GPT-2 Conv1D) of the decoder blocks: what W8A8 quantizes."""
        return [m for block in self.blocks for m in block.modules() if is_linear(m)]


def is_linear(module: torch.nn.Module) -> bool:
    return isinstance(module, torch.nn.Linear) or type(module).__name__ == "Conv1D"


def find_parts(model: Any) -> ModelParts:
    """The trunk, embedding and decoder blocks of a transformers causal LM."""
    n_layers = getattr(model.config, "num_hidden_layers", None)
    trunk = getattr(model, "base_model", None)
    if not isinstance(trunk, torch.nn.Module) or trunk is model:
        raise UnsupportedArchitectureError(f"{type(model).__name__}: no transformer trunk (base_model) under its head")
    lists = [(name, m) for name, m in trunk.named_children() if isinstance(m, torch.nn.ModuleList)]
    blocks = [m for _, m in lists if len(m) == n_layers]
    if len(blocks) != 1:
        raise UnsupportedArchitectureError(
            f"{type(trunk).__name__}: expected one list of {n_layers} decoder blocks (num_hidden_layers), found "
            f"{[(name, len(m)) for name, m in lists] or 'no module lists'}")
    try:
        embedding = model.get_input_embeddings()
    except (AttributeError, NotImplementedError) as err:
        raise UnsupportedArchitectureError(f"{type(model).__name__}: no input embedding ({err})") from err
    if embedding is None:
        raise UnsupportedArchitectureError(f"{type(model).__name__}: no input embedding")
    return ModelParts(trunk=trunk, embedding=embedding, blocks=blocks[0])


def input_device(model: Any) -> torch.device:
    """Where token ids go: the embedding's device, also for a model dispatched with a device map."""
    device_map = getattr(model, "hf_device_map", None)
    if device_map:
        first = next(iter(device_map.values()))
        if first in ("cpu", "disk"):
            return torch.device("cpu")
        return torch.device(first if isinstance(first, str) else f"cuda:{first}")
    return next(model.parameters()).device


def block_output(output: Any) -> torch.Tensor:
    """The residual stream a block returns: the tensor itself, or the first element of its tuple."""
    return output[0] if isinstance(output, tuple) else output


def check_config(config: Any) -> ModelParts:
    """Build the model on the meta device (no memory, no weights) and find its parts: an unsupported
    architecture fails here, before any download of weights."""
    from transformers import AutoModelForCausalLM

    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
    except ValueError as err:
        kind = getattr(config, "model_type", None)
        raise UnsupportedArchitectureError(f"model_type {kind!r} is no causal LM transformers knows ({err})") from err
    parts = find_parts(model)
    parts.input_projections(0)
    return parts
