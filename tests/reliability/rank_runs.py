"""Real multi-process runs of the CLI over gloo, for the torchrun cases of the reliability corpus.

`run_ranks` starts one process per rank itself, with the environment torchrun gives its workers (RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR, MASTER_PORT), so each rank's exit code and output are seen on their own, and a rank that is
left waiting in a collective shows up as a timeout (torchrun's agent would kill it and hide the defect). `run_torchrun`
goes through the real launcher. `setup` is Python run in each process before the command, with `rank` defined: it
installs a fake backbone or a fault on one rank.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

from conftest import REPO, Outcome

HERE = Path(__file__).resolve().parent
# Seconds a whole multi-process case may take (a few on a quiet machine); beyond it a rank is taken to be hanging.
RANKS_TIMEOUT = 300
# A rank's exit code when main() returned without destroying the process group: left to interpreter shutdown, gloo's
# threads abort the process now and then (SIGABRT after the error line), so it is caught here on every run.
LEFT_INITIALISED = 97
RANK_SCRIPT = """
import os, sys
sys.path.insert(0, {here!r})
rank = int(os.environ["RANK"])
exec(sys.argv[1])
from dlsr_core.cli import main
code = main(sys.argv[2:])
import torch.distributed
if torch.distributed.is_initialized():
    print("rank_runs: main() returned with the process group still initialised", file=sys.stderr)
    code = {left_initialised}
sys.exit(code)
"""
FAKE_BACKBONE = (
    "import dlsr_core.backbones\n"
    "from conftest import FakeExtractor\n"
    "dlsr_core.backbones.create_feature_extractor = lambda *a, **k: FakeExtractor()\n"
)


def _rank_script() -> str:
    return RANK_SCRIPT.format(here=str(HERE), left_initialised=LEFT_INITIALISED)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), **(extra or {})}


def run_ranks(
    argvs: list[list[str]],
    setup: str = FAKE_BACKBONE,
    cwds: list[Path] | None = None,
    envs: list[dict[str, str]] | None = None,
) -> list[Outcome]:
    """Run `python -m dlsr_core <argv>` as rank r of len(argvs) for each argv; every rank's Outcome, in rank order.

    Fails the test when a rank has not exited after RANKS_TIMEOUT seconds (a rank left waiting), killing them all.
    """
    port, world_size = _free_port(), len(argvs)
    script = _rank_script()
    processes = []
    for rank, argv in enumerate(argvs):
        env = _environment((envs or [{}] * world_size)[rank])
        env.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_WORLD_SIZE=str(world_size))
        env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        command = [sys.executable, "-c", script, setup, *map(str, argv)]
        cwd = (cwds or [REPO] * world_size)[rank]
        processes.append(subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    deadline, outcomes = time.monotonic() + RANKS_TIMEOUT, []
    try:
        for rank, process in enumerate(processes):
            try:
                out, err = process.communicate(timeout=max(deadline - time.monotonic(), 1))
            except subprocess.TimeoutExpired:
                raise AssertionError(f"rank {rank} still runs after {RANKS_TIMEOUT} s: it was left waiting") from None
            outcomes.append(Outcome(process.returncode, out.decode(), err.decode()))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    return outcomes


def run_torchrun(argv: list[str], setup: str = FAKE_BACKBONE, nproc: int = 2, cwd: Path = REPO) -> Outcome:
    """The same through `torchrun --standalone` (the launcher's own exit code, all ranks' output interleaved)."""
    script = cwd / "rank_main.py"
    script.write_text(_rank_script())
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    command = [*launcher, str(script), setup, *map(str, argv)]
    result = subprocess.run(command, cwd=cwd, env=_environment(), capture_output=True, text=True, timeout=RANKS_TIMEOUT)
    return Outcome(result.returncode, result.stdout, result.stderr)


def rank_error_lines(err: str) -> list[str]:
    """The "error: ..." lines in torchrun's interleaved stderr. Ranks write at the same moment, so one rank's line
    may be glued to the end of another's; each starts at its own "error: " and ends at a newline or the next one."""
    return [f"error: {part.split(chr(10))[0]}" for part in re.split(r"(?:^|(?<=\S))error: ", err, flags=re.M)[1:]]
