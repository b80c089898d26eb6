"""Tensors read from a safetensors file through a memory map, so a feature set larger than RAM can be trained on.

A mapped tensor is an ordinary torch.Tensor whose storage is the file's pages: the operating system reads rows when
they are touched and may drop them again under memory pressure. Touched pages stay counted in the process's resident
memory until `release_pages` tells the kernel they are no longer needed (they stay in the page cache, so touching them
again is cheap). Random rows are costly through the map: each page fault maps a whole page-cache folio around the row
(measured: about 1 MB per 2.9 KB row, 8 ms per batch of 256 rows), so `gather_rows` reads them from the file with
plain file reads instead (0.6 ms per batch, nothing mapped); training draws its batches that way.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import struct
from collections.abc import Iterable
from typing import BinaryIO

import numpy as np
import torch
from torch import Tensor

_NUMPY_DTYPES = {"F32": np.float32, "F64": np.float64, "I64": np.int64, "I32": np.int32, "F16": np.float16}
_PAGES_ATTRIBUTE = "_dlsr_mapped_pages"


def read_safetensors_header(stream: BinaryIO) -> tuple[dict, int]:
    """(the JSON header of an open safetensors file, the byte offset where its data starts). ValueError when malformed.

    `stream` is a seekable binary file (or io.BytesIO); the header is read from its start.
    """
    size = stream.seek(0, os.SEEK_END)
    stream.seek(0)
    prefix = stream.read(8)
    if len(prefix) != 8:
        raise ValueError("too short for a safetensors file")
    (length,) = struct.unpack("<Q", prefix)
    if length > 100_000_000 or length > size - 8:
        raise ValueError(f"header length {length} does not fit the file")
    header = json.loads(stream.read(length))
    if not isinstance(header, dict):
        raise ValueError("header is not a JSON object")
    return header, 8 + length


def tensor_byte_range(header: dict, data_start: int, name: str) -> tuple[int, int]:
    """Absolute [begin, end) byte range of tensor `name` in the file."""
    begin, end = header[name]["data_offsets"]
    return data_start + int(begin), data_start + int(end)


def stream_sha256(stream: BinaryIO, ranges: Iterable[tuple[int, int]], block: int = 16 << 20) -> str:
    """SHA-256 of the concatenated byte `ranges` of an open file, read in blocks (never the whole file in memory)."""
    digest = hashlib.sha256()
    for begin, end in ranges:
        stream.seek(begin)
        remaining = end - begin
        while remaining > 0:
            chunk = stream.read(min(block, remaining))
            if not chunk:
                raise ValueError(f"file ends before byte {end}")
            digest.update(chunk)
            remaining -= len(chunk)
    return digest.hexdigest()


class _MappedPages:
    """The memory map and a file descriptor behind a mapped tensor (kept alive by the tensor that refers to it).

    The descriptor is a duplicate of the one the tensor was mapped from, so rows are read from that same file even
    when its name has since been given to a new file (an atomic replace by another process).
    """

    def __init__(self, handle: mmap.mmap, descriptor: int, begin: int, row_bytes: int) -> None:
        self.handle = handle
        self.descriptor = os.dup(descriptor)
        self.begin, self.row_bytes = begin, row_bytes

    def release(self) -> None:
        advice = getattr(mmap, "MADV_DONTNEED", None)
        if advice is not None:
            self.handle.madvise(advice)

    def read_rows(self, rows: np.ndarray, dtype: np.dtype, row_shape: tuple[int, ...]) -> np.ndarray:
        out = np.empty((len(rows), *row_shape), dtype=dtype)
        flat = out.reshape(len(rows), -1).view(np.uint8)  # a view: row `position` is written in place
        for position, row in enumerate(rows):
            chunk = os.pread(self.descriptor, self.row_bytes, self.begin + int(row) * self.row_bytes)
            if len(chunk) != self.row_bytes:
                raise OSError(f"short read of row {int(row)} from a memory-mapped feature file")
            flat[position] = np.frombuffer(chunk, dtype=np.uint8)
        return out

    def __del__(self) -> None:
        os.close(self.descriptor)


def map_tensor(stream: BinaryIO, header: dict, data_start: int, name: str) -> Tensor:
    """Tensor `name` of an open safetensors file as a memory-mapped tensor (no copy; its pages are read on access).

    The map is copy-on-write: writing to the tensor never changes the file.
    """
    entry = header[name]
    dtype = _NUMPY_DTYPES.get(entry["dtype"])
    if dtype is None:
        raise ValueError(f"tensor {name} has unsupported dtype {entry['dtype']}")
    shape = tuple(int(size) for size in entry["shape"])
    begin, end = tensor_byte_range(header, data_start, name)
    count = int(np.prod(shape)) if shape else 1
    if end - begin != count * np.dtype(dtype).itemsize:
        raise ValueError(f"tensor {name} has {end - begin} bytes for shape {shape}")
    if os.fstat(stream.fileno()).st_size < end:
        raise ValueError(f"file ends before tensor {name} does")
    handle = mmap.mmap(stream.fileno(), 0, access=mmap.ACCESS_COPY)
    array = np.frombuffer(handle, dtype=dtype, count=count, offset=begin).reshape(shape)
    tensor = torch.from_numpy(array)
    row_bytes = (end - begin) // shape[0] if shape and shape[0] else 0
    setattr(tensor, _PAGES_ATTRIBUTE, _MappedPages(handle, stream.fileno(), begin, row_bytes))
    return tensor


def is_mapped(tensor: Tensor) -> bool:
    """True for a tensor made by `map_tensor`."""
    return hasattr(tensor, _PAGES_ATTRIBUTE)


def gather_rows(tensor: Tensor, indices: Tensor) -> Tensor:
    """tensor[indices] along the first dimension (indices (B,) int64); a mapped tensor's rows are read from its file
    with plain file reads, so they never enter this process's memory map."""
    pages = getattr(tensor, _PAGES_ATTRIBUTE, None)
    if pages is None:
        return tensor[indices]
    rows = indices.detach().cpu().numpy()
    if len(rows) and (rows.min() < 0 or rows.max() >= tensor.shape[0]):
        raise IndexError(f"row index out of range for {tensor.shape[0]} rows")
    dtype = tensor.numpy().dtype
    return torch.from_numpy(pages.read_rows(rows, dtype, tuple(tensor.shape[1:])))


def release_pages(tensor: Tensor) -> None:
    """Drop a mapped tensor's touched pages from this process's resident memory; no-op for other tensors."""
    pages = getattr(tensor, _PAGES_ATTRIBUTE, None)
    if pages is not None:
        pages.release()
