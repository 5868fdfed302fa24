"""Copies between the host and the model's device that do not stall the host.

A copy from pageable host memory to a GPU, or back, holds the host thread until it is done, so while
frames, noise or tile weights move the host queues no kernels and the GPU runs dry. Here host tensors
are staged in pinned (page-locked) memory and copied with `non_blocking=True`: the copy engine moves the
bytes in stream order while the host goes on. PyTorch's pinned-memory allocator keeps a staging buffer
until its copy has run, so the buffer may go out of scope at once. A copy back to the host is ready only
after `wait_for_copies`. On the CPU these are plain `to` calls; a device that cannot pin host memory
(PyTorch's `meta` stand-in for a GPU) still gets `non_blocking=True`, so the dry run can hold the code
to it.
"""

from __future__ import annotations

import torch
from torch import Tensor


def to_device(tensor: Tensor, device: torch.device | str, dtype: torch.dtype | None = None) -> Tensor:
    """`tensor` on `device` in `dtype` (default: its own).

    Host to accelerator: cast into a pinned buffer in one host pass (half the bytes to move for bf16),
    copied without blocking. Accelerator to host: copied without blocking into a pinned buffer, which is
    ready to read only after `wait_for_copies(tensor.device)`. Anything else: a plain `to`.
    """
    device = torch.device(device)
    if tensor.device.type == "cpu" and device.type != "cpu":
        staged = torch.empty(tensor.shape, dtype=dtype or tensor.dtype, pin_memory=_pinnable(device))
        staged.copy_(tensor)
        return staged.to(device, non_blocking=True)
    if tensor.device.type != "cpu" and device.type == "cpu" and dtype in (None, tensor.dtype):
        host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=_pinnable(tensor.device))
        return host.copy_(tensor, non_blocking=True)
    return tensor.to(device, dtype)


def wait_for_copies(device: torch.device) -> None:
    """Block until every copy queued on `device`'s current stream has finished (CUDA only)."""
    if device.type == "cuda":
        torch.cuda.current_stream(device).synchronize()


def _pinnable(device: torch.device) -> bool:
    return device.type == "cuda"
