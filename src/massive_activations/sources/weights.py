"""Safetensors weights in another dtype, without ever holding two copies of them.

transformers converts a checkpoint to the requested dtype after reading it whole: measured peak
RSS of 2.0× (float16 → float32) to 4.0× (float32 → float16) the weights' size in the requested
dtype. Here each tensor is streamed from the file in chunks with plain reads (no memory map, whose
touched pages would count against this process), converted, and written to a new safetensors file;
transformers then loads that file in its own dtype, which it does without a copy.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

SAFETENSORS_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64}
NAMES = {v: k for k, v in SAFETENSORS_DTYPES.items()}
CHUNK_BYTES = 16 << 20


def read_header(file: Path) -> tuple[dict, int]:
    """The header (tensor name → dtype, shape, data_offsets) and where the data starts."""
    with open(file, "rb") as fh:
        (size,) = struct.unpack("<Q", fh.read(8))
        return json.loads(fh.read(size)), 8 + size


def float_dtypes(files: list[Path]) -> set[torch.dtype]:
    """The floating-point dtypes the weight files store."""
    return {SAFETENSORS_DTYPES[t["dtype"]] for f in files for name, t in read_header(f)[0].items()
            if name != "__metadata__" and t["dtype"] in SAFETENSORS_DTYPES}


def convert_file(src: Path, dst: Path, dtype: torch.dtype) -> None:
    """``src`` with every floating-point tensor in ``dtype`` (others unchanged), written to ``dst``."""
    header, start = read_header(src)
    out_header, plan, offset = {}, [], 0
    for name, t in header.items():
        if name == "__metadata__":
            out_header[name] = t
            continue
        source = SAFETENSORS_DTYPES.get(t["dtype"])
        target = dtype if source is not None else None
        begin, end = t["data_offsets"]
        size = (end - begin) // source.itemsize * target.itemsize if target is not None else end - begin
        out_header[name] = {**t, "dtype": NAMES[target] if target is not None else t["dtype"],
                            "data_offsets": [offset, offset + size]}
        plan.append((start + begin, end - begin, source, target))
        offset += size
    encoded = json.dumps(out_header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        fout.write(struct.pack("<Q", len(encoded)) + encoded)
        for position, length, source, target in plan:
            step = CHUNK_BYTES - CHUNK_BYTES % (source.itemsize if source is not None else 1)
            for at in range(0, length, step):
                fin.seek(position + at)
                raw = bytearray(fin.read(min(step, length - at)))
                if target is None or target == source:
                    fout.write(raw)
                else:
                    fout.write(torch.frombuffer(raw, dtype=source).to(target).view(torch.uint8).numpy())


@contextmanager
def in_dtype(path: Path, files: list[Path], dtype: torch.dtype, scratch: Path) -> Iterator[Path]:
    """The checkpoint folder to load in ``dtype``: ``path`` itself when its weights are stored in it (or
    are not safetensors), else a converted copy under ``scratch``, removed when the block ends."""
    if files[0].suffix != ".safetensors" or not float_dtypes(files) - {dtype}:
        yield path
        return
    scratch.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="convert-", dir=scratch) as tmp:
        yield converted_copy(path, files, dtype, Path(tmp) / "checkpoint")


def converted_copy(path: Path, files: list[Path], dtype: torch.dtype, into: Path) -> Path:
    """A folder ``into`` holding the checkpoint at ``path`` with its safetensors weights in ``dtype``
    (the other files linked or copied): what transformers then loads without converting."""
    into.mkdir(parents=True)
    for item in path.iterdir():
        if item.is_file() and item not in files:
            try:
                os.symlink(item.resolve(), into / item.name)
            except OSError:
                shutil.copy2(item, into / item.name)
    for file in files:
        convert_file(file, into / file.name, dtype)
    return into
