"""Where and in what precision training runs: devices, dtypes and autocast, the process group
under torchrun, and the matmul peak that model FLOPs utilisation is measured against."""

from __future__ import annotations

import contextlib
import os
import time

import torch
import torch.distributed as dist


def parse_device(name: str) -> torch.device:
    """A named torch device, whether or not this machine has it; a misspelt name is a ValueError."""
    try:
        return torch.device(name)
    except RuntimeError:
        raise ValueError(f"device={name!r} is not a torch device (auto, cpu, cuda, cuda:1, mps)") from None


def resolve_device(name: str) -> torch.device:
    """`auto` is cuda, then mps, then cpu; a named device that this machine lacks is a ValueError."""
    if name != "auto":
        device = parse_device(name)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device={name!r}, but this torch sees no CUDA GPU")
        if device.type == "mps" and not torch.backends.mps.is_available():
            raise ValueError(f"device={name!r}, but MPS is not available here")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        if device.type != "cuda":
            return torch.float32  # bf16 autocast on CPU was 12% slower at these sizes
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def autocast_context(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


_PEAK_CACHE: dict[tuple[str, torch.dtype], float] = {}


def measure_peak_flops(device: torch.device, dtype: torch.dtype, size: int = 2048, repeats: int = 3) -> float:
    """Best observed dense matmul FLOP/s on `device` in `dtype`: the MFU denominator."""
    key = (str(device), dtype)
    if key not in _PEAK_CACHE:
        a = torch.randn(size, size, device=device, dtype=dtype)
        b = torch.randn(size, size, device=device, dtype=dtype)
        # A GPU does a 2048^3 product in tens of microseconds, the order of a launch and a sync:
        # time several back to back there.
        products = 1 if device.type == "cpu" else 20
        best = float("inf")
        for _ in range(repeats + 1):  # the first round warms up
            synchronize(device)
            start = time.perf_counter()
            for _ in range(products):
                a @ b
            synchronize(device)
            best = min(best, (time.perf_counter() - start) / products)
        _PEAK_CACHE[key] = 2 * size**3 / best
    return _PEAK_CACHE[key]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def setup_distributed(device_name: str) -> tuple[int, int, torch.device]:
    """(rank, world_size, device); joins the process group when launched by torchrun."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return 0, 1, resolve_device(device_name)
    local_rank = int(os.environ["LOCAL_RANK"])
    device = resolve_device(device_name)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), world_size, device
