"""A rank's side of tests/test_distributed.py's messages test, in a module of its own: a spawned process
imports only torch and lib.core.distributed, not the trainer and transformers (seconds per process)."""

import json
import os

import torch.distributed as dist

from lib.core.distributed import Distributed, leave_process_group


def messages_main(rank: int, world: int, port: int, out: str) -> None:
    """Write what `any`, `all_gather` and `broadcast` gave this rank over the default group and a gloo group."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        seen = {}
        for name, messages in (("default", None), ("own group", dist.new_group(backend="gloo"))):
            ctx = Distributed(rank, world, rank, messages)
            seen[name] = [ctx.any(rank == 1), ctx.any(False), ctx.any(True), ctx.all_gather(rank * 10),
                          ctx.broadcast(f"from {rank}")]
        with open(f"{out}.{rank}", "w") as file:
            json.dump(seen, file)
    finally:
        leave_process_group()
