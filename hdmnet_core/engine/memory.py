"""Out of memory, said in the run's own terms: what failed, with which batch and image
size on which device, and which setting to lower.

:func:`out_of_memory_named` turns ``torch.OutOfMemoryError`` (CUDA, also raised as
``torch.cuda.OutOfMemoryError``; MPS and XPU raise it too) inside its block into
:class:`OutOfMemory`, a :class:`~hdmnet_core.errors.UserError` (one ``error:`` line,
exit code 2). Training wraps every optimizer step in it, evaluation every forward; the
CUDA cache is emptied before the error is raised.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch

from hdmnet_core.errors import UserError


class OutOfMemory(UserError, RuntimeError):
    """The device ran out of memory; the message names the sizes and what to lower."""


def out_of_memory_message(
    what: str, device: torch.device, sizes: str, remedies: Sequence[str], said: str
) -> str:
    """``"out of memory on cuda:0 during <what> (<sizes>; ...): lower ..."``."""
    first_line = said.strip().splitlines()[0] if said.strip() else "no detail"
    return (
        f"out of memory on {device} during {what} ({sizes}; torch: {first_line}); "
        f"lower the memory it needs: {'; '.join(remedies)}"
    )


@contextlib.contextmanager
def out_of_memory_named(
    what: str, device: torch.device, sizes: str, remedies: Sequence[str]
) -> Iterator[None]:
    """Re-raise an out-of-memory error of the block as :class:`OutOfMemory`.

    ``what``: the work (``"meta training step 12"``); ``sizes``: the batch and image
    size that failed; ``remedies``: the settings to lower, as the user types them."""
    try:
        yield
    except torch.OutOfMemoryError as error:
        if device.type == "cuda" and torch.cuda.is_available():
            torch.cuda.empty_cache()
        message = out_of_memory_message(what, device, sizes, remedies, str(error))
        raise OutOfMemory(message) from None
