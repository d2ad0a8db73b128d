"""The store on the local filesystem and on a real S3 server, with the same test code."""

from __future__ import annotations

import os
import threading

import pyarrow as pa
import pytest

from massive_activations.provenance import module_version
from massive_activations.store import PartitionExistsError, Store, StoreError


def _table(n: int, offset: float = 0.0) -> pa.Table:
    return pa.table({"layer": pa.array(range(n), pa.int32()), "ratio": [offset + i * 1.5 for i in range(n)]})


def test_partition_round_trip_with_provenance(any_store: Store):
    written = any_store.write_partition("stats", {"model": "m1", "step": 8}, _table(3),
                                        inputs={"prompt_set": "abc"})
    any_store.write_partition("stats", {"model": "m1", "step": 16}, _table(3, 10.0), inputs={})
    any_store.write_partition("stats", {"model": "m2", "step": 8}, _table(2), inputs={})

    assert sorted(any_store.partitions("stats"), key=lambda p: (p["model"], p["step"])) == [
        {"model": "m1", "step": 8}, {"model": "m1", "step": 16}, {"model": "m2", "step": 8}]
    table = any_store.read_dataset("stats")
    assert table.num_rows == 8
    assert table.schema.field("step").type == pa.int64()
    only = any_store.read_dataset("stats", where={"model": "m1", "step": [16]})
    assert only.column("ratio").to_pylist() == [10.0, 11.5, 13.0]

    meta = any_store.partition_metadata("stats", {"model": "m1", "step": 8})
    assert meta["inputs"] == {"prompt_set": "abc"}
    assert meta["content_hash"] == written.content_hash
    assert meta["libraries"]["pyarrow"] == pa.__version__
    assert "code_version" in meta and "python" in meta["libraries"]
    assert any_store.partition_metadata("stats", {"model": "m9", "step": 8}) is None


def test_overwrite_must_be_explicit(any_store: Store):
    part = {"model": "m", "step": 0}
    any_store.write_partition("stats", part, _table(2), inputs={})
    with pytest.raises(PartitionExistsError, match="overwrite=True"):
        any_store.write_partition("stats", part, _table(5), inputs={})
    assert any_store.read_partition("stats", part).num_rows == 2  # untouched
    any_store.write_partition("stats", part, _table(5), inputs={}, overwrite=True)
    assert any_store.read_partition("stats", part).num_rows == 5


def test_content_hash_ignores_metadata_but_not_values(any_store: Store):
    a = any_store.write_partition("d", {"model": "a"}, _table(3), inputs={"x": 1})
    b = any_store.write_partition("d", {"model": "b"}, _table(3), inputs={"x": 2})
    c = any_store.write_partition("d", {"model": "c"}, _table(3, 0.5), inputs={"x": 1})
    assert a.content_hash == b.content_hash != c.content_hash


def test_json_and_bytes(any_store: Store):
    any_store.write_json("suites/x/manifest.json", {"b": 1, "a": [1, 2]})
    assert any_store.read_json("suites/x/manifest.json") == {"a": [1, 2], "b": 1}
    any_store.write_bytes("suites/x/step0/blob.bin", b"\x00\x01")
    assert any_store.list("suites/x") == ["suites/x/manifest.json", "suites/x/step0/blob.bin"]
    with pytest.raises(StoreError, match="nothing stored"):
        any_store.read_bytes("suites/x/missing.bin")


@pytest.mark.parametrize("key", ["../escape", "/etc/passwd", "a/../../b", "a/.hidden", ""])
def test_keys_cannot_escape_the_root(any_store: Store, key: str):
    with pytest.raises(StoreError, match="invalid"):
        any_store.write_bytes(key, b"x")


def test_bad_partition_values_are_rejected(any_store: Store):
    with pytest.raises(StoreError, match="invalid partition value"):
        any_store.write_partition("stats", {"model": "../x"}, _table(1), inputs={})
    with pytest.raises(StoreError, match="partition keys"):
        any_store.write_partition("stats", {"layer": 1}, _table(1), inputs={})


def test_unknown_scheme_and_missing_bucket(s3_endpoint):
    with pytest.raises(StoreError, match="unsupported store URL scheme 'gs'"):
        Store("gs://bucket/x")
    with pytest.raises(StoreError, match="names no bucket"):
        Store("s3://")
    from tests.conftest import s3_options

    store = Store("s3://no-such-bucket-xyz/p", storage_options=s3_options(s3_endpoint))
    with pytest.raises(StoreError, match="no-such-bucket-xyz.*does not exist"):
        store.check_reachable()


def test_endpoint_from_standard_environment(s3_endpoint, monkeypatch):
    """Settings come from the standard AWS variables, not from code."""
    import s3fs

    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    s3fs.S3FileSystem.clear_instance_cache()
    store = Store("s3://env-bucket/prefix")
    store.fs.mkdir("env-bucket")
    store.write_json("hello.json", {"ok": True})
    assert store.read_json("hello.json") == {"ok": True}
    s3fs.S3FileSystem.clear_instance_cache()


def test_local_write_is_atomic_for_concurrent_readers(tmp_path):
    """A reader polling while a writer replaces a file sees the old or the new file, never half."""
    store = Store(tmp_path)
    old, new = b"a" * 2_000_000, b"b" * 3_000_000
    store.write_bytes("big.bin", old)
    seen: set[int] = set()
    stop = threading.Event()

    def reader():
        while not stop.is_set():
            seen.add(len(store.read_bytes("big.bin")))

    t = threading.Thread(target=reader)
    t.start()
    for i in range(20):
        store.write_bytes("big.bin", new if i % 2 == 0 else old)
    stop.set()
    t.join()
    assert seen <= {len(old), len(new)}
    assert not [f for f in os.listdir(tmp_path) if ".tmp-" in f]


def test_failed_write_leaves_previous_file(tmp_path, monkeypatch):
    store = Store(tmp_path)
    store.write_partition("stats", {"model": "m"}, _table(2), inputs={})

    def boom(*_a, **_k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        store.write_partition("stats", {"model": "m"}, _table(7), inputs={}, overwrite=True)
    monkeypatch.undo()
    assert store.read_partition("stats", {"model": "m"}).num_rows == 2
    assert not list(tmp_path.rglob("*.tmp-*"))


def test_current_reuses_a_partition_only_for_the_same_inputs_and_the_same_code(tmp_path, monkeypatch):
    """The one skip-or-compute decision: a stored partition is current for exactly the inputs it was
    computed from (tuples and lists alike, as JSON stores them) and the source of its code modules;
    editing one of those modules makes it stale, as a missing partition is."""
    source = tmp_path / "pkg" / "stage_code.py"
    source.parent.mkdir()
    source.write_text("VALUE = 1\n")
    monkeypatch.syspath_prepend(str(source.parent))
    store, part, inputs = Store(str(tmp_path / "store")), {"model": "m1", "step": 8}, {"layers": (0, 1), "k": 3}
    assert store.current("stats", part, inputs, ("stage_code",)) is None  # nothing stored yet
    store.write_partition("stats", part, _table(2), inputs=inputs, code_modules=("stage_code",))
    meta = store.current("stats", part, {"k": 3, "layers": [0, 1]}, ("stage_code",))
    assert meta is not None and meta["inputs"] == {"layers": [0, 1], "k": 3}
    assert store.current("stats", part, {**inputs, "k": 4}, ("stage_code",)) is None  # other inputs
    assert store.current("stats", part, {"layers": (0, 1)}, ("stage_code",)) is None  # an input fewer
    assert store.current("stats", {"model": "m1", "step": 16}, inputs, ("stage_code",)) is None

    def edit(value: int) -> None:  # the next run (a new process) sees the edited module
        source.write_text(f"VALUE = {value}\n")
        module_version.cache_clear()

    for stored, now in zip(range(1, 9), [*range(2, 9), 1], strict=True):  # round a cycle of 8 versions,
        edit(stored)  # so the new hash sorts both below and above the stored one
        store.write_partition("stats", part, _table(2), inputs=inputs, code_modules=("stage_code",),
                              overwrite=True)
        assert store.current("stats", part, inputs, ("stage_code",)) is not None
        edit(now)
        assert store.current("stats", part, inputs, ("stage_code",)) is None, (stored, now)
    edit(8)  # and back: the stored result is current again
    assert store.current("stats", part, inputs, ("stage_code",)) is not None
