"""What torchrun ranks agree on before they work together, and how a fault on one rank reaches all of them.

Every function here is a collective when a process group is initialised (every rank must call it, in the same order)
and a cheap no-op on one process. A rank that fails alone would leave the others waiting forever in their next
collective, and ranks given different arguments would silently split the work wrongly (rows extracted by no rank, a
model averaged over different settings), so:

- `check_same(values, what)` compares a description of what each rank is about to do and raises RankMismatchError on
  every rank, naming each value that differs and each rank's value of it;
- `raise_together(error, line)` turns one rank's exception into an exception on every rank: the failing rank raises
  its own (so its message is the one a single process would print), the others RankFailedError with `line`.
"""

from __future__ import annotations

import torch


class RankMismatchError(ValueError):
    """torchrun ranks were given different arguments or see different data."""


class RankFailedError(RuntimeError):
    """Another torchrun rank failed; the message is that rank's one-line account."""


def rank_and_size() -> tuple[int, int]:
    """(rank, world size) of an initialised process group, else (0, 1)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_ranks(flag: bool) -> bool:
    """True when `flag` is true on every rank."""
    import torch.distributed as dist

    if rank_and_size()[1] == 1:
        return flag
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    value = torch.tensor([int(flag)], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value.item())


def smallest(value: int) -> int:
    """The smallest of every rank's `value`."""
    return min(gather(value))


def gather(value: object) -> list:
    """Every rank's `value` (picklable), in rank order."""
    import torch.distributed as dist

    world_size = rank_and_size()[1]
    if world_size == 1:
        return [value]
    values: list = [None] * world_size
    dist.all_gather_object(values, value)
    return values


def check_same(values: dict[str, str], what: str) -> None:
    """Raise RankMismatchError on every rank unless every rank passed equal `values` ({name: text}).

    `what` says what the ranks were about to do ("the train command", "the features of digits"); the message names
    every value that differs with each rank's version of it.
    """
    every = gather(values)
    differing = sorted({name for given in every for name in given if given.get(name) != values.get(name)})
    if not differing:
        return
    details = "; ".join(
        f"{name} ({', '.join(f'rank {rank}: {_short(given.get(name))}' for rank, given in enumerate(every))})"
        for name in differing[:4]
    )
    more = f" and {len(differing) - 4} more" if len(differing) > 4 else ""
    raise RankMismatchError(
        f"the {len(every)} torchrun ranks disagree on {what}: {details}{more}. Every rank must run the same command "
        "on the same data; nothing was done"
    )


def _short(value: str | None) -> str:
    if value is None:
        return "(not given)"
    return value if len(value) <= 80 else f"{value[:38]}...{value[-38:]}"  # long values differ at either end


def one_line(error: BaseException | None) -> str:
    """The first line of `error`'s message (its type's name when it has none); "" for None."""
    if error is None:
        return ""
    text = (str(error).strip().splitlines() or [""])[0][:300]
    return text or type(error).__name__


def raise_together(error: BaseException | None, line: str) -> None:
    """If any rank has an `error`, raise on every rank: a failing rank its own error, every other rank
    RankFailedError with the first failing rank's `line` (its one-line account of the failure). Returns when no rank
    failed."""
    failed = [text for text in gather(line if error is not None else None) if text is not None]
    if error is not None:
        raise error
    if failed:
        raise RankFailedError(failed[0])
