"""The tensor table of a safetensors header, checked: what LFDN checkpoints (dlsr_core.checkpoint) and baseline files
(dlsr_core.baselines.store) both trust only after every entry is described rightly and the entries cover the data."""

from __future__ import annotations

import math


def header_tensors(
    header: dict,
    payload: int,
    dtypes: dict[str, int],
    damaged: str,
    error: type[Exception],
) -> dict[str, tuple[str, tuple[int, ...]]]:
    """name -> (dtype, shape) of the tensor entries of a parsed safetensors header (`__metadata__` removed): each
    must have a dtype of `dtypes` (name -> bytes per value), a shape of whole numbers and offsets inside the
    `payload` data bytes spanning exactly its size, and together they must cover the payload. Raises `error` with
    `damaged` (the file's one-line problem) and the first entry at fault."""
    tensors, covered = {}, 0
    for name, entry in header.items():
        try:
            dtype, shape, (begin, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
            valid = (
                dtype in dtypes
                and isinstance(shape, list)
                and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
                and all(isinstance(o, int) and not isinstance(o, bool) for o in (begin, end))
                and 0 <= begin <= end <= payload
                and end - begin == math.prod(shape) * dtypes[dtype]
            )
        except (KeyError, TypeError, ValueError):
            valid = False
        if not valid:
            raise error(f"{damaged} (tensor {name!r} is described wrongly or lies outside the file)")
        tensors[name] = (dtype, tuple(shape))
        covered += end - begin
    if covered != payload:
        raise error(f"{damaged} ({payload} data bytes, tensors describe {covered})")
    return tensors
