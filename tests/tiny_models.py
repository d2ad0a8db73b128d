"""Tiny random causal LMs of several architectures, built from configs, saved in Hugging Face layout."""

from __future__ import annotations

from pathlib import Path

import torch

VOCAB = 257  # the byte-level tokenizer of the offline suite at vocab 257: bytes plus <|endoftext|> (id 0)
CONTEXT = 64
KINDS = ("llama", "olmo2", "qwen2", "gpt2", "gpt_neox")


def tiny_config(kind: str, layers: int = 3, d: int = 32, heads: int = 4):
    import transformers

    common = {"vocab_size": VOCAB, "bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 0}
    if kind == "gpt2":
        return transformers.GPT2Config(n_embd=d, n_layer=layers, n_head=heads, n_positions=CONTEXT, **common)
    cls = {"llama": transformers.LlamaConfig, "olmo2": transformers.Olmo2Config,
           "qwen2": transformers.Qwen2Config, "gpt_neox": transformers.GPTNeoXConfig}[kind]
    extra = {"num_key_value_heads": heads // 2} if kind != "gpt_neox" else {}
    return cls(hidden_size=d, num_hidden_layers=layers, num_attention_heads=heads, intermediate_size=2 * d,
               max_position_embeddings=CONTEXT, tie_word_embeddings=kind == "qwen2", **extra, **common)


def tiny_model(kind: str, seed: int = 0, scale: float = 1.0, **sizes):
    """A random model; ``scale`` multiplies every weight (later checkpoints of a made-up trajectory)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(kind, **sizes)).eval()
    if scale != 1.0:
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(scale)
    return model


def byte_tokenizer():
    """The offline suite's byte-level tokenizer at vocab 257 (bytes plus <|endoftext|>, id 0)."""
    from massive_activations.sources.corpus import Corpus
    from massive_activations.sources.offline_suite import build_tokenizer

    docs = [f"document {i}: the quick brown fox jumps over the lazy dog {i * 7}" for i in range(30)]
    return build_tokenizer(Corpus(tuple(docs), "tiny"), VOCAB)


def save_tiny(kind: str, folder: Path, tokenizer, seed: int = 0, scale: float = 1.0, **sizes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    tiny_model(kind, seed, scale, **sizes).save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder
