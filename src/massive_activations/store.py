"""One store addressed by a URL: ``file://…`` (or a plain path) or ``s3://bucket/prefix``.

Datasets are hive-partitioned Parquet (``stats/model=…/step=…/part-0.parquet``) so that DuckDB,
Polars, pandas and pyarrow read them without project code. Every write is atomic: a local file is
written beside its target and renamed over it; an S3 object only becomes visible once its upload
completes. A reader therefore never sees half a file, and a crash leaves at most a hidden temporary
file that dataset readers ignore (their names start with a dot).
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import fsspec
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from massive_activations.errors import BadInputError
from massive_activations.provenance import module_version, provenance, stable_hash

METADATA_KEY = b"massive_activations"
PART_FILE = "part-0.parquet"
SUPPORTED_SCHEMES = ("file", "s3")
# Types of partition keys; a key not listed here is read back as a string.
PARTITION_TYPES: dict[str, pa.DataType] = {"step": pa.int64(), "layer": pa.int64()}
_SAFE_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+=-]*$")
# S3's rule for bucket names (3–63 lowercase letters, digits, dots and hyphens, letter or digit at both ends)
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


class StoreError(Exception):
    """A store operation that cannot succeed as asked (bad URL, bad key, missing data)."""


class StoreConfigError(StoreError, BadInputError):
    """A store URL that cannot be used at all: bad input, refused before any work."""


class PartitionExistsError(StoreError):
    """Refusing to replace stored data without an explicit ``overwrite=True``."""


@dataclass(frozen=True)
class WrittenPartition:
    key: str
    content_hash: str
    rows: int


def _check_segment(segment: str, what: str) -> str:
    if segment in {".", ".."} or not _SAFE_SEGMENT.match(segment):
        raise StoreError(f"invalid {what} {segment!r}: use letters, digits and . _ + = - "
                         "(no '/', no '..', not starting with a dot)")
    return segment


def _check_dataset(dataset: str) -> str:
    """A dataset name: one or more safe segments, e.g. ``stats`` or ``evals/sae``."""
    for segment in dataset.split("/"):
        _check_segment(segment, "dataset name")
    return dataset


def _clean_key(key: str) -> str:
    """A relative key inside the store; absolute keys and '..' would escape the root."""
    if not key or key.startswith("/") or "\\" in key:
        raise StoreError(f"invalid store key {key!r}: keys are relative paths inside the store")
    for part in key.split("/"):
        _check_segment(part, "store key segment")
    return key


def table_hash(table: pa.Table) -> str:
    """Content hash of a table's schema and values, independent of file metadata and timestamps."""
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, table.schema.remove_metadata()) as writer:
        writer.write_table(table.combine_chunks())
    return hashlib.sha256(sink.getvalue()).hexdigest()[:16]


class Store:
    """A URL-rooted store of Parquet datasets, JSON documents and files."""

    def __init__(self, url: str | os.PathLike[str], storage_options: Mapping[str, Any] | None = None):
        url = os.fspath(url)
        parsed = urlparse(url)
        scheme = parsed.scheme or "file"
        if scheme not in SUPPORTED_SCHEMES:
            raise StoreConfigError(f"unsupported store URL scheme {scheme!r} in {url!r}; "
                             f"use one of: {', '.join(s + '://' for s in SUPPORTED_SCHEMES)} or a plain path")
        self.scheme = scheme
        self.storage_options = dict(storage_options or {})
        if scheme == "file":
            path = parsed.path if parsed.scheme else url
            self.root = str(Path(path).expanduser().resolve())
            self.fs = fsspec.filesystem("file")
            self.url = "file://" + self.root
        else:
            if not parsed.netloc:
                raise StoreConfigError(f"store URL {url!r} names no bucket; use s3://bucket/prefix")
            if not _BUCKET.match(parsed.netloc):
                raise StoreConfigError(f"invalid S3 bucket name {parsed.netloc!r} in {url!r}: use 3 to 63 lowercase "
                                       "letters, digits, '.' and '-', starting and ending with a letter or digit")
            self.root = (parsed.netloc + parsed.path).rstrip("/")
            self.fs = fsspec.filesystem("s3", **self.storage_options)
            self.url = "s3://" + self.root

    def __repr__(self) -> str:
        return f"Store({self.url!r})"

    # --- keys and plain objects -------------------------------------------------------------
    def path(self, key: str) -> str:
        return f"{self.root}/{_clean_key(key)}"

    def url_for(self, key: str) -> str:
        return f"{self.scheme}://{self.path(key)}"

    def check_reachable(self) -> None:
        """Fail early, before expensive work, when the root cannot be used (e.g. a missing bucket)."""
        if self.scheme == "s3":
            bucket = self.root.split("/", 1)[0]
            try:
                self.fs.ls(bucket)
            except FileNotFoundError as err:
                raise StoreConfigError(f"bucket {bucket!r} of store {self.url} does not exist; the store never "
                                       f"creates buckets: create it first (e.g. `aws s3 mb s3://{bucket}`, with "
                                       "--endpoint-url for a non-AWS server)") from err
        else:
            self.fs.makedirs(self.root, exist_ok=True)

    def exists(self, key: str) -> bool:
        return self.fs.exists(self.path(key))

    def write_bytes(self, key: str, data: bytes) -> None:
        """Atomic: readers see the old object or the whole new one. A full disk or bucket is a StoreError."""
        try:
            self._write_bytes(self.path(key), data)
        except OSError as err:
            if err.errno in (errno.ENOSPC, errno.EDQUOT) or "quota" in str(err).lower():
                reason = "no space left" if err.errno == errno.ENOSPC else "quota exceeded"
                raise StoreError(f"{reason} on store {self.url} writing {key} ({err}); the previous version, "
                                 "if any, is intact") from err
            raise

    def _write_bytes(self, path: str, data: bytes) -> None:
        if self.scheme == "file":
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.tmp-{uuid.uuid4().hex}")
            try:
                with open(tmp, "wb") as fh:
                    fh.write(data)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, path)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        else:
            self.fs.pipe_file(path, data)

    def read_bytes(self, key: str) -> bytes:
        try:
            return self.fs.cat_file(self.path(key))
        except FileNotFoundError as err:
            raise StoreError(f"nothing stored at {self.url_for(key)}") from err

    def write_json(self, key: str, value: Any) -> None:
        self.write_bytes(key, json.dumps(value, indent=2, sort_keys=True, default=str).encode())

    def read_json(self, key: str) -> Any:
        return json.loads(self.read_bytes(key))

    def put_file(self, local_path: str | os.PathLike[str], key: str) -> None:
        self.write_bytes(key, Path(local_path).read_bytes())

    def list(self, prefix: str) -> list[str]:
        """Keys of the files below a prefix, relative to the store root."""
        base = self.path(prefix) if prefix else self.root  # "" lists the whole store
        if not self.fs.exists(base):
            return []
        found = self.fs.find(base)
        inside = base.rstrip("/") + "/"  # not evals/quant_model/… when listing evals/quant
        return sorted(p[len(self.root) + 1:] for p in found
                      if p.startswith(inside) and not os.path.basename(p).startswith("."))

    def download(self, prefix: str, dest: str | os.PathLike[str]) -> Path:
        """Copy the files below a prefix into a local folder (for libraries that need local paths)."""
        dest = Path(dest)
        keys = self.list(prefix)
        if not keys:
            raise StoreError(f"nothing stored under {self.url_for(prefix)}")
        for key in keys:
            target = dest / key[len(prefix.rstrip('/')) + 1:]
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex}")
            tmp.write_bytes(self.fs.cat_file(self.path(key)))
            os.replace(tmp, target)
        return dest

    # --- partitioned Parquet datasets -------------------------------------------------------
    def partition_key(self, dataset: str, partition: Mapping[str, Any]) -> str:
        _check_dataset(dataset)
        parts = [_check_segment(f"{_check_segment(str(k), 'partition key')}={v}", "partition value")
                 for k, v in partition.items()]
        return "/".join([dataset, *parts, PART_FILE])

    def write_partition(self, dataset: str, partition: Mapping[str, Any], table: pa.Table, *,
                        inputs: Mapping[str, Any], code_modules: tuple[str, ...] = (),
                        overwrite: bool = False) -> WrittenPartition:
        """Write one partition atomically, with provenance in the Parquet footer."""
        key = self.partition_key(dataset, partition)
        clash = [k for k in partition if k in table.column_names]
        if clash:
            raise StoreError(f"columns {clash} are partition keys of {dataset}; they live in the path")
        if not overwrite and self.exists(key):
            raise PartitionExistsError(f"{self.url_for(key)} exists; pass overwrite=True to replace it")
        content = table_hash(table)
        meta = provenance(dict(inputs), code_modules) | {"content_hash": content, "partition": dict(partition)}
        table = table.replace_schema_metadata({**(table.schema.metadata or {}),
                                               METADATA_KEY: json.dumps(meta, default=str).encode()})
        sink = io.BytesIO()
        pq.write_table(table, sink, compression="zstd")
        self.write_bytes(key, sink.getvalue())
        return WrittenPartition(key=key, content_hash=content, rows=table.num_rows)

    def partition_metadata(self, dataset: str, partition: Mapping[str, Any]) -> dict[str, Any] | None:
        """The provenance stored with a partition, or None when it does not exist."""
        key = self.partition_key(dataset, partition)
        try:
            with self.fs.open(self.path(key), "rb") as fh:
                schema = pq.read_schema(fh)
        except FileNotFoundError:
            return None
        raw = (schema.metadata or {}).get(METADATA_KEY)
        return json.loads(raw) if raw else {}

    def current(self, dataset: str, partition: Mapping[str, Any], inputs: Mapping[str, Any],
                code_modules: tuple[str, ...]) -> dict[str, Any] | None:
        """The partition's provenance when it was computed from exactly these inputs by this version of
        the code, else None.

        The one skip-or-compute decision of every stage: the store's provenance is the cache, so a
        result is reused wherever the store goes (another process, machine or orchestrator).
        """
        meta = self.partition_metadata(dataset, partition)
        wanted = json.loads(json.dumps(dict(inputs), default=str))  # as stored: tuples become lists
        if meta and meta.get("inputs") == wanted and meta.get("code_version") == module_version(*code_modules):
            return meta
        return None

    def partitions_hash(self, dataset: str, where: Mapping[str, Any | Iterable[Any]]) -> str | None:
        """One hash over the content hashes of the partitions matching ``where`` (None when none does):
        what a later stage records as its data input."""
        def matches(part: dict[str, Any]) -> bool:
            return all(part.get(k) in v if isinstance(v, (list, tuple, set, frozenset)) else part.get(k) == v
                       for k, v in where.items())

        found = sorted((p for p in self.partitions(dataset) if matches(p)), key=lambda p: sorted(p.items()))
        if not found:
            return None
        return stable_hash([[sorted(p.items()), (self.partition_metadata(dataset, p) or {}).get("content_hash")]
                            for p in found])

    def partitions(self, dataset: str) -> list[dict[str, Any]]:
        """The partitions present in a dataset, with keys typed as in PARTITION_TYPES."""
        found = []
        depth = len(_check_dataset(dataset).split("/"))
        for key in self.list(dataset):
            segments = key.split("/")
            if segments[-1] != PART_FILE or not all("=" in seg for seg in segments[depth:-1]):
                continue
            values = dict(seg.split("=", 1) for seg in segments[depth:-1])
            found.append({k: int(v) if pa.types.is_integer(PARTITION_TYPES.get(k, pa.string())) else v
                          for k, v in values.items()})
        return found

    def read_partition(self, dataset: str, partition: Mapping[str, Any]) -> pa.Table:
        key = self.partition_key(dataset, partition)
        try:
            with self.fs.open(self.path(key), "rb") as fh:
                return pq.read_table(fh)
        except FileNotFoundError as err:
            raise StoreError(f"no partition {dict(partition)} in {self.url_for(dataset)}") from err

    def read_dataset(self, dataset: str, where: Mapping[str, Any | Iterable[Any]] | None = None) -> pa.Table:
        """A whole dataset (or the partitions matching ``where``) as one Arrow table."""
        present = self.partitions(dataset)
        if not present:
            raise StoreError(f"dataset {self.url_for(dataset)} is empty or missing")
        keys = list(present[0])
        schema = pa.schema([(k, PARTITION_TYPES.get(k, pa.string())) for k in keys])
        data = ds.dataset(self.path(dataset), filesystem=self.fs, format="parquet",
                          partitioning=ds.partitioning(schema, flavor="hive"))
        expr = None
        for name, wanted in (where or {}).items():
            values = list(wanted) if isinstance(wanted, (list, tuple, set, frozenset)) else [wanted]
            term = ds.field(name).isin(values)
            expr = term if expr is None else expr & term
        return data.to_table(filter=expr)
