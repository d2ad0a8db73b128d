"""Loading a checkpoint in another dtype than it is stored in: exact values, one copy in memory."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from massive_activations.sources.checkpoints import load_from_dir
from massive_activations.sources.weights import float_dtypes

ROOT = Path(__file__).resolve().parents[1]
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _save(folder: Path, dtype: str, micro_root: Path, vocab_size: int = 257, **shape) -> dict[str, torch.Tensor]:
    """A random GPT-NeoX checkpoint stored in ``dtype`` (with the micro suite's tokenizer); its weights."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(0)
    config = GPTNeoXConfig(vocab_size=vocab_size, max_position_embeddings=64, **shape)
    model = GPTNeoXForCausalLM(config).to(DTYPES[dtype])
    model.save_pretrained(folder)
    for tokenizer_file in (micro_root / "nx-l2-d32-h2" / "step0").glob("tokenizer*"):
        (folder / tokenizer_file.name).write_bytes(tokenizer_file.read_bytes())
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("stored", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("wanted", ["float32", "float16", "bfloat16"])
def test_every_weight_arrives_in_the_asked_dtype_with_the_value_a_cast_gives(micro_root, tmp_path, stored, wanted):
    weights = _save(tmp_path / "ckpt", stored, micro_root, hidden_size=32, num_hidden_layers=2,
                    num_attention_heads=2, intermediate_size=64)
    assert float_dtypes(sorted((tmp_path / "ckpt").glob("*.safetensors"))) == {DTYPES[stored]}
    loaded = load_from_dir(tmp_path / "ckpt", "m", 0, device="cpu", dtype=wanted).model.state_dict()
    for name, value in weights.items():
        if not value.is_floating_point():
            continue
        assert loaded[name].dtype == DTYPES[wanted], name
        assert torch.equal(loaded[name], value.to(DTYPES[wanted])), name


RSS = """
import re, sys, torch
from pathlib import Path
from massive_activations.sources.checkpoints import load_from_dir

def high_water() -> int:  # this program's peak RSS in kB (VmHWM starts afresh at exec; ru_maxrss does not)
    return int(re.search(r"VmHWM:\\s+(\\d+)", Path("/proc/self/status").read_text()).group(1))

small, big, dtype = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
for d in ("float32", dtype):  # imports and first-use allocations, before the baseline
    [p.sum() for p in load_from_dir(small, "w", 0, device="cpu", dtype=d).model.parameters()]
base = high_water()
model = load_from_dir(big, "x", 0, device="cpu", dtype=dtype).model
with torch.no_grad():
    [p.sum() for p in model.parameters()]  # every page of every weight resident
print((high_water() - base) * 1024 / sum(p.numel() * p.element_size() for p in model.parameters()))
"""


@pytest.mark.parametrize(("stored", "wanted"), [("float32", "float16"), ("float16", "float32"),
                                                ("float32", "bfloat16")])
def test_peak_memory_when_loading_in_another_dtype_stays_under_1_3_times_the_weights(micro_root, tmp_path,
                                                                                    stored, wanted):
    shape = {"num_attention_heads": 4, "intermediate_size": 1024}
    _save(tmp_path / "small", stored, micro_root, hidden_size=32, num_hidden_layers=1, **shape)
    # Pythia's vocabulary: two 25.8 M-parameter embedding matrices, the tensors a whole-tensor cast doubles
    _save(tmp_path / "big", stored, micro_root, vocab_size=50304, hidden_size=512, num_hidden_layers=2, **shape)
    out = subprocess.run([sys.executable, "-c", RSS, str(tmp_path / "small"), str(tmp_path / "big"), wanted],
                         cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin",
                              "MA_CACHE_DIR": str(tmp_path / "cache")})
    assert out.returncode == 0, out.stderr[-2000:]
    ratio = float(out.stdout.strip().splitlines()[-1])
    assert ratio <= 1.3, f"peak RSS {ratio:.2f} × the weights in {wanted}"
