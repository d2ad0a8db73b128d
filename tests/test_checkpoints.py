"""Checkpoint sources: the real huggingface_hub client against the loopback Hub, and folders."""

from __future__ import annotations

import shutil
import socket
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from massive_activations.sources.catalog import CatalogError
from massive_activations.sources.checkpoints import (
    CheckpointNotFoundError,
    CorruptCheckpointError,
    FolderSource,
    HubSource,
    HubUnreachableError,
    TransientSourceError,
    load_checkpoint,
    load_from_dir,
    unreachable_reason,
)
from massive_activations.store import Store

MODEL = "nx-l2-d32-h2"


def _serve(fake_hub, micro_root: Path, steps=(0, 8, 48)):
    for step in steps:
        fake_hub.add_folder("EleutherAI/pythia-14m", f"step{step}", micro_root / MODEL / f"step{step}")


def _hub(fake_hub, tmp_path, **kw) -> HubSource:
    return HubSource(cache_dir=tmp_path / "hub", endpoint=fake_hub.url, backoff_s=0.01, seed=0, **kw)


def _same_weights(a, b) -> bool:
    sa, sb = a.model.state_dict(), b.model.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_hub_and_folder_sources_yield_the_same_checkpoint(fake_hub, micro_root, tmp_path):
    _serve(fake_hub, micro_root)
    from_hub = load_checkpoint(_hub(fake_hub, tmp_path), "pythia-14m", 8, device="cpu")
    from_folder = load_checkpoint(FolderSource(str(micro_root)), MODEL, 8, device="cpu")
    assert _same_weights(from_hub, from_folder)
    assert from_hub.architecture.n_layers == 2 and from_hub.architecture.d_model == 32
    assert not from_hub.model.training
    assert from_hub.tokenizer("abc")["input_ids"] == from_folder.tokenizer("abc")["input_ids"]
    fetched = {path.rsplit("/", 1)[-1] for cmd, path, status in fake_hub.log if cmd == "GET" and status == 200}
    assert "model.safetensors" in fetched and "config.json" in fetched
    assert "pytorch_model.bin" not in fetched  # only the files needed


@pytest.fixture
def no_sleep(monkeypatch):
    """huggingface_hub backs off up to ~23 s on its own before our retries; skip the waiting."""
    slept: list[float] = []
    monkeypatch.setattr(time, "sleep", slept.append)
    return slept


def test_hub_retries_a_transient_503(fake_hub, micro_root, tmp_path, no_sleep):
    _serve(fake_hub, micro_root)
    fake_hub.fail_next = 2
    path = _hub(fake_hub, tmp_path).fetch("pythia-14m", 0)
    assert (path / "model.safetensors").exists()
    assert [s for _, _, s in fake_hub.log].count(503) == 2


def test_hub_gives_up_after_its_retries(fake_hub, micro_root, tmp_path, no_sleep):
    _serve(fake_hub, micro_root)
    fake_hub.fail_next = 100
    with pytest.raises(TransientSourceError, match="still failing after 3 attempts"):
        _hub(fake_hub, tmp_path, retries=2).fetch("pythia-14m", 0)
    assert len(no_sleep) == 2  # one retry layer: huggingface_hub's own waits (whole seconds) never happen
    assert 0.005 <= no_sleep[0] < 0.015 and 0.01 <= no_sleep[1] < 0.03  # exponential, jittered by [0.5, 1.5)
    assert [s for _, _, s in fake_hub.log] == [503] * 3  # one request per attempt


def test_offline_mode_fails_at_once_without_a_request(fake_hub, micro_root, tmp_path, monkeypatch):
    import huggingface_hub.constants

    _serve(fake_hub, micro_root)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    started = time.monotonic()
    with pytest.raises(HubUnreachableError, match="offline mode is on"):
        _hub(fake_hub, tmp_path).fetch("pythia-14m", 0)
    assert time.monotonic() - started < 2 and not fake_hub.log  # not retried, nothing sent


def test_an_unresolvable_host_is_final_and_a_503_is_not():
    try:
        try:
            raise socket.gaierror(-2, "Name or service not known")
        except socket.gaierror as dns:
            raise ConnectionError("connect failed") from dns
    except ConnectionError as err:
        assert "host name does not resolve" in unreachable_reason(err)
    assert unreachable_reason(ConnectionError("connection reset by peer")) == ""


def test_hub_fails_fast_on_a_missing_revision(fake_hub, micro_root, tmp_path):
    _serve(fake_hub, micro_root)
    started = time.perf_counter()
    with pytest.raises(CheckpointNotFoundError, match="EleutherAI/pythia-14m has no revision 'step143000'"):
        _hub(fake_hub, tmp_path).fetch("pythia-14m", 143000)
    assert time.perf_counter() - started < 5
    assert len(fake_hub.log) == 1  # not retried


def test_hub_rejects_bad_input_before_any_request(fake_hub, tmp_path):
    with pytest.raises(CatalogError, match="not on the schedule"):
        _hub(fake_hub, tmp_path).fetch("pythia-14m", 7)
    with pytest.raises(CatalogError, match="unknown Pythia model"):
        _hub(fake_hub, tmp_path).fetch("gpt2", 0)
    assert fake_hub.log == []


def test_hub_falls_back_to_pytorch_bin(fake_hub, micro_root, tmp_path):
    folder = micro_root / MODEL / "step8"
    files = {p.name: p.read_bytes() for p in folder.iterdir() if p.suffix != ".safetensors"}
    bin_path = tmp_path / "pytorch_model.bin"
    torch.save(load_file(folder / "model.safetensors"), bin_path)
    files["pytorch_model.bin"] = bin_path.read_bytes()
    fake_hub.add("EleutherAI/pythia-14m", "step8", files)
    ckpt = load_checkpoint(_hub(fake_hub, tmp_path), "pythia-14m", 8, device="cpu")
    assert _same_weights(ckpt, load_checkpoint(FolderSource(str(micro_root)), MODEL, 8, device="cpu"))


def test_folder_source_on_s3(s3_store, micro_root):
    for f in (micro_root / MODEL / "step8").iterdir():
        s3_store.put_file(f, f"suite/{MODEL}/step8/{f.name}")
    source = FolderSource(Store(s3_store.url + "/suite", storage_options=s3_store.storage_options))
    assert source.steps(MODEL) == [8]
    ckpt = load_checkpoint(source, MODEL, 8, device="cpu")
    assert _same_weights(ckpt, load_checkpoint(FolderSource(str(micro_root)), MODEL, 8, device="cpu"))
    with pytest.raises(CheckpointNotFoundError, match="no checkpoint .*step16"):
        source.fetch(MODEL, 16)


def _copy(micro_root: Path, dest: Path) -> Path:
    dest.mkdir(parents=True)
    for f in (micro_root / MODEL / "step8").iterdir():
        (dest / f.name).write_bytes(f.read_bytes())
    return dest


def test_truncated_weights_name_the_file(micro_root, tmp_path):
    ckpt = _copy(micro_root, tmp_path / "ckpt")
    data = (ckpt / "model.safetensors").read_bytes()
    (ckpt / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptCheckpointError, match=r"model\.safetensors: unreadable weight file"):
        load_from_dir(ckpt, MODEL, 8, device="cpu")


def test_bad_header_names_the_file(micro_root, tmp_path):
    ckpt = _copy(micro_root, tmp_path / "ckpt")
    (ckpt / "model.safetensors").write_bytes(b"\xff" * 64)
    with pytest.raises(CorruptCheckpointError, match=r"model\.safetensors"):
        load_from_dir(ckpt, MODEL, 8, device="cpu")


def test_missing_tensor_is_an_error_not_random_weights(micro_root, tmp_path):
    ckpt = _copy(micro_root, tmp_path / "ckpt")
    tensors = load_file(ckpt / "model.safetensors")
    del tensors["gpt_neox.layers.1.mlp.dense_4h_to_h.weight"]
    save_file(tensors, ckpt / "model.safetensors")
    with pytest.raises(CorruptCheckpointError, match="dense_4h_to_h"):
        load_from_dir(ckpt, MODEL, 8, device="cpu")


def test_wrong_shapes_for_the_config(micro_root, tmp_path):
    ckpt = _copy(micro_root, tmp_path / "ckpt")
    tensors = load_file(ckpt / "model.safetensors")
    tensors["gpt_neox.layers.0.mlp.dense_h_to_4h.weight"] = torch.zeros(64, 32)
    save_file(tensors, ckpt / "model.safetensors")
    with pytest.raises(CorruptCheckpointError, match="do not fit"):
        load_from_dir(ckpt, MODEL, 8, device="cpu")


def test_device_and_dtype_are_validated(micro_root):
    with pytest.raises(ValueError, match="unknown dtype 'float8'"):
        load_from_dir(micro_root / MODEL / "step8", MODEL, 8, device="cpu", dtype="float8")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            load_from_dir(micro_root / MODEL / "step8", MODEL, 8, device="cuda")


def test_a_repository_with_only_a_sentencepiece_tokenizer_loads(fake_hub, tmp_path):
    """Llama-era repositories (LLM360/Amber) ship tokenizer.model and no tokenizer.json."""
    import sentencepiece as spm
    from transformers import LlamaTokenizer

    from tests.tiny_models import tiny_model

    text = tmp_path / "text.txt"
    text.write_text("\n".join(f"the quick brown fox {i} jumps over the lazy dog" for i in range(200)))
    spm.SentencePieceTrainer.train(input=str(text), model_prefix=str(tmp_path / "sp"), vocab_size=60,
                                   model_type="bpe", minloglevel=2)
    folder = tmp_path / "ckpt_000"
    tiny_model("llama").save_pretrained(folder, safe_serialization=True)
    LlamaTokenizer(vocab_file=str(tmp_path / "sp.model")).save_pretrained(folder)
    (folder / "tokenizer.json").unlink(missing_ok=True)
    shutil.copy(tmp_path / "sp.model", folder / "tokenizer.model")
    fake_hub.add_folder("LLM360/Amber-tiny", "ckpt_000", folder)
    loaded = load_checkpoint(_hub(fake_hub, tmp_path), "LLM360/Amber-tiny", 0, device="cpu")
    ids = loaded.tokenizer("the quick brown fox", add_special_tokens=False)["input_ids"]
    assert ids and max(ids) < 60 and loaded.tokenizer.decode(ids) == "the quick brown fox"
    assert loaded.architecture.model_type == "llama"


def test_loads_at_once_leave_transformers_weight_tying_intact(tmp_path):
    """transformers patches ``PreTrainedModel.tie_weights`` and ``init_weights`` process-wide while it loads;
    two loads at once could leave them patched for good, and every model built afterwards untied (an LM
    head of uninitialised memory). Loads are serialised: after 8 threads load a tied model at once,
    each loaded model and a model built afterwards are tied."""
    from concurrent.futures import ThreadPoolExecutor

    from tests.tiny_models import byte_tokenizer, save_tiny, tiny_model

    folder = save_tiny("gpt2", tmp_path / "gpt2" / "step0", byte_tokenizer())
    with ThreadPoolExecutor(8) as pool:
        loaded = list(pool.map(lambda _: load_from_dir(folder, "gpt2", 0, device="cpu").model, range(24)))
    assert all(m.lm_head.weight is m.get_input_embeddings().weight for m in loaded)
    built = tiny_model("gpt2")
    assert built.lm_head.weight is built.get_input_embeddings().weight
