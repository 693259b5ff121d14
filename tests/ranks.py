"""Start the ranks of a CPU gloo job as torchrun would, but forked from the test process.

Forking skips what a spawned process pays before its first step: importing torch, transformers and
the trainer again (seconds per rank on 2 cores). Each rank sets one intra-op thread before any torch
work, so no OpenMP pool inherited from the parent is entered in the child. Every fork of the tests
goes through `frozen_garbage`, so what the parent left for its garbage collector stays the parent's."""

import contextlib
import gc
import os
import socket
from typing import Callable, Iterator

import torch
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(main: Callable, *args, world: int = 2) -> None:
    """`main(rank, *args)` in `world` forked processes, with torchrun's environment; raises if a rank fails."""
    with frozen_garbage():
        mp.start_processes(_rank, args=(main, world, free_port(), args), nprocs=world, join=True,
                           start_method="fork")


@contextlib.contextmanager
def frozen_garbage() -> Iterator[None]:
    """Fork with the parent's objects out of the children's garbage collection: a leftover cycle that
    holds a gloo group (a test's leak) freed in a child joins threads the child does not have, and
    segfaults."""
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _rank(rank: int, main: Callable, world: int, port: int, args: tuple) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    main(rank, *args)
