"""Make every read of a tensor's value on the host fail: on a GPU each one waits for the whole queue."""

import traceback

import pytest
import torch

READS = ("item", "__bool__", "__float__", "__int__", "tolist")


def fail_on_host_reads(patch: pytest.MonkeyPatch, asked_by: str | None = None) -> None:
    """Patch (for `patch`'s scope) every way to read a tensor's value so that it fails the test.

    `asked_by`: only the reads with that file on the stack fail, and not those inside the model's
    forward (transformers' own, which the plain step pays too); the others read as usual."""
    for method in READS:
        original = getattr(torch.Tensor, method)

        def read(*args, name=method, original=original):
            files = [frame.filename for frame in traceback.extract_stack()]
            if asked_by is None or (asked_by in files and not any("/transformers/" in file for file in files)):
                pytest.fail(f"host read: {name}\n" + "".join(traceback.format_stack(limit=8)))
            return original(*args)

        patch.setattr(torch.Tensor, method, read)
