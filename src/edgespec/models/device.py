"""Where a model runs: parse and check a device and dtype, upload host tensors without a stream sync, synchronise, and time a step.

The runtime keeps its bookkeeping (which cache columns hold which row's tokens, row lengths) on the
host and only the keys/values and activations on the device, so deciding what to run never waits for
the GPU. Host data reaches the device through `upload`: on CUDA a pinned staging copy and an
asynchronous transfer on the current stream (no `cudaStreamSynchronize`, unlike `torch.tensor(...,
device="cuda")`); on the CPU the tensor itself. The only waits left are the ones a caller asks for
(`synchronize`, `.tolist()` of a verdict).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Optional

import torch

__all__ = ["DTYPES", "DeviceError", "DeviceOptions", "device_options", "resolve_device", "resolve_dtype", "dtype_name", "upload", "synchronize",
           "timed_s", "StepClock", "device_name"]

DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16", "float": "float32"}


class DeviceError(ValueError):
    """A device or dtype that cannot be used here; the message says why in one line."""


def resolve_device(name: str | torch.device) -> torch.device:
    """The torch device for `name` ("cpu", "cuda", "cuda:1"); a clear `DeviceError` when it is unknown or absent."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise DeviceError(f"unknown device {str(name)!r}: use cpu, cuda or cuda:N") from None
    if device.type == "cpu":
        return torch.device("cpu")
    if device.type != "cuda":
        raise DeviceError(f"unsupported device {str(name)!r}: use cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        built = torch.version.cuda or "no CUDA"
        raise DeviceError(f"device {str(name)!r} asked for, but torch sees no CUDA GPU (torch {torch.__version__}, built with {built})")
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index >= torch.cuda.device_count():
        raise DeviceError(f"device {str(name)!r} asked for, but torch sees {torch.cuda.device_count()} CUDA GPU(s)")
    return torch.device("cuda", index)


def resolve_dtype(name: str | torch.dtype) -> torch.dtype:
    """The torch dtype for "float32" | "bfloat16" | "float16" (or fp32/bf16/fp16); a clear `DeviceError` otherwise."""
    if isinstance(name, torch.dtype):
        if name not in DTYPES.values():
            raise DeviceError(f"unsupported dtype {name}: use {', '.join(DTYPES)}")
        return name
    key = _ALIASES.get(str(name).lower(), str(name).lower())
    if key not in DTYPES:
        raise DeviceError(f"unknown dtype {str(name)!r}: use {', '.join(DTYPES)}")
    return DTYPES[key]


@dataclass(frozen=True)
class DeviceOptions:
    """Checked `--device`, `--dtype` and `--cuda-graphs` of a command."""

    device: torch.device
    dtype: torch.dtype
    cuda_graphs: bool

    def describe(self) -> str:
        graphs = ", CUDA graphs" if self.cuda_graphs else (", eager" if self.device.type == "cuda" else "")
        return f"{self.device}, {dtype_name(self.dtype)}{graphs}"


def device_options(device: str, dtype: str, cuda_graphs: Optional[bool] = None, no_cuda_graphs: bool = False) -> DeviceOptions:
    """The options checked, each error naming its option ("--device: …"); CUDA graphs default to on for CUDA.

    The commands take `--cuda-graphs` and `--no-cuda-graphs` as two flags (`cuda_graphs`, `no_cuda_graphs`).
    """
    if cuda_graphs and no_cuda_graphs:
        raise DeviceError("--cuda-graphs: give --cuda-graphs or --no-cuda-graphs, not both")
    cuda_graphs = False if no_cuda_graphs else cuda_graphs
    try:
        dev = resolve_device(device)
    except DeviceError as exc:
        raise DeviceError(f"--device: {exc}") from None
    try:
        dt = resolve_dtype(dtype)
    except DeviceError as exc:
        raise DeviceError(f"--dtype: {exc}") from None
    if cuda_graphs and dev.type != "cuda":
        raise DeviceError(f"--cuda-graphs: CUDA graphs need a CUDA device (--device cuda), not {dev}")
    return DeviceOptions(dev, dt, dev.type == "cuda" if cuda_graphs is None else cuda_graphs)


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def upload(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on `device` without waiting for the device: pinned and asynchronous on CUDA, itself on the CPU.

    The pinned staging block is recorded on the current stream, so it is not reused before the copy ends.
    """
    if device.type != "cuda":
        return t
    return t.contiguous().pin_memory().to(device, non_blocking=True)


def synchronize(device: torch.device) -> None:
    """Wait until every kernel queued on `device` has run (no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_s(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds `fn()` takes on `device`, from an idle device to the end of its last kernel.

    CUDA: the queue is drained first, then CUDA events bracket the call, so the time includes every
    gap the host leaves while launching (what a serving loop pays), not only the kernels. CPU: wall time.
    """
    if device.type != "cuda":
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start
    torch.cuda.synchronize(device)
    stream = torch.cuda.current_stream(device)
    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    begin.record(stream)
    fn()
    end.record(stream)
    end.synchronize()
    return begin.elapsed_time(end) / 1e3


class StepClock:
    """Times a stretch of queued device work without waiting for it; starts when made, `stop()` at its end.

    CUDA: events recorded on the current stream, read by `seconds()` (which waits for the end event,
    normally already passed by then, e.g. after a verdict's transfer). CPU: the wall clock.
    """

    def __init__(self, device: torch.device) -> None:
        self._cuda = device.type == "cuda"
        self._end_s: Optional[float] = None
        if self._cuda:
            self._stream = torch.cuda.current_stream(device)
            self._begin, self._end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            self._begin.record(self._stream)
        else:
            self._start_s = time.perf_counter()

    def stop(self) -> None:
        if self._cuda:
            self._end.record(self._stream)
        else:
            self._end_s = time.perf_counter()

    def seconds(self) -> float:
        if self._cuda:
            self._end.synchronize()
            return self._begin.elapsed_time(self._end) / 1e3
        return (self._end_s if self._end_s is not None else time.perf_counter()) - self._start_s


def device_name(device: torch.device, cpu_name: Optional[str] = None) -> str:
    """A human name of the device: the GPU's name, or the CPU model."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if cpu_name:
        return cpu_name
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "cpu"
