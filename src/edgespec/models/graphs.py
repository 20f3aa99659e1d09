"""CUDA graphs of the decode and verify steps: a preallocated KV arena per model, and the lean Llama step over it, captured per (batch bucket, width, column bucket).

Why: a decode step of a small target launches a few hundred kernels, and on a GPU launching them
costs more than running them; a captured graph replays them all with one launch. A graph fixes every
shape and address, so the step it captures runs over static tensors:

- the **arena** holds each layer's keys and values in buffers [rows_cap, kv_heads, cols_cap, head_dim]
  that never move while graphs use them (they only grow, and growing drops the graphs);
- a `RaggedKV` in graph mode stores its cache there (`StaticCache`): a layer's keys are the view
  [:B, :, :C] of its buffer, appending writes in place, and every row surgery of the runtime (crop,
  trim, compact, take/put rows) works on those views unchanged;
- a **step** of B rows × n new tokens runs as the bucket's step: rows padded up to a batch bucket
  (padded rows see only themselves), attention over C + n columns rounded up to a column bucket (the
  extra columns are masked), new keys/values written at columns C..C+n−1 through an index tensor. Its
  inputs (ids, positions, validity of every column, the columns written) are static tensors refilled
  before each replay; its output is the final hidden state [rows, n, H]; the output head runs eagerly
  on the positions asked for, as in the eager path.

The same step runs eagerly when capture is off (`GraphConfig(capture=False)`): that is how the CPU
tests check the arena, the buckets and the masks against the plain path; only capture and replay are
CUDA-only. A step wider than `max_width` (prefill) or a batch above the largest bucket runs the eager
lean forward on the same arena. An arena serves one live `RaggedKV` at a time (a model keeps up to
`max_arenas`; beyond that a cache falls back to transformers' `DynamicCache`), so graphs captured
for one generation are replayed by the next.
"""

from __future__ import annotations

import math
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from typing import Optional

import torch

from edgespec.models import fastpath
from edgespec.models.device import upload

__all__ = ["GraphConfig", "Arena", "StaticCache", "StepInputs"]


@dataclass(frozen=True)
class GraphConfig:
    """How decode/verify steps run over a KV arena: captured as CUDA graphs (or eagerly), by which buckets, how many kept."""

    capture: bool = True  # False: run the static step eagerly (CPU tests; no CUDA graph)
    max_width: int = 16  # new tokens per row; wider steps (prefill) run the eager forward on the arena
    batch_buckets: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128)
    column_step: int = 128  # attention spans C + n columns rounded up to a multiple of this
    max_graphs: int = 64  # captured steps kept per arena (least recently used dropped first)
    max_arenas: int = 4  # arenas per model (live caches in graph mode at once)

    def __post_init__(self) -> None:
        if self.max_width < 1 or self.column_step < 1 or self.max_graphs < 1 or self.max_arenas < 1:
            raise ValueError("max_width, column_step, max_graphs and max_arenas must be >= 1")
        if not self.batch_buckets or list(self.batch_buckets) != sorted(set(self.batch_buckets)) or self.batch_buckets[0] < 1:
            raise ValueError(f"batch_buckets must be strictly increasing positive integers, got {self.batch_buckets!r}")

    def batch_bucket(self, rows: int) -> Optional[int]:
        """The smallest bucket holding `rows` rows; None above the largest."""
        return next((b for b in self.batch_buckets if b >= rows), None)

    def column_bucket(self, columns: int) -> int:
        return max(1, math.ceil(columns / self.column_step)) * self.column_step


@dataclass(frozen=True)
class StepInputs:
    """Host tensors of one step, padded to its bucket: ids and positions [rows, n], validity [rows, cols], written columns [n]."""

    ids: torch.Tensor
    positions: torch.Tensor
    valid: torch.Tensor
    write_cols: torch.Tensor


class _Step:
    """One step shape (rows × width over cols): its static input tensors, and its CUDA graph once captured."""

    def __init__(self, arena: "Arena", model, rows: int, width: int, cols: int, capture: bool) -> None:
        dev = arena.device
        self.arena, self.model, self.rows, self.width, self.cols, self.capture = arena, model, rows, width, cols, capture
        self.ids = torch.zeros(rows, width, dtype=torch.long, device=dev)
        self.positions = torch.zeros(rows, width, dtype=torch.long, device=dev)
        self.valid = torch.zeros(rows, cols, dtype=torch.bool, device=dev)
        self.write_cols = torch.zeros(width, dtype=torch.long, device=dev)
        self.graph = None
        self.out: Optional[torch.Tensor] = None

    def body(self) -> torch.Tensor:
        """The step over the static inputs: hidden states [rows, width, H]; writes the new keys/values into the arena."""
        cols = torch.arange(self.cols, device=self.arena.device)
        q_cols = self.write_cols[:, None]  # [n, 1]
        causal = cols[None, :] <= q_cols  # [n, cols]
        mask = (causal[None] & self.valid[:, None, :]) | (cols[None, :] == q_cols)[None]  # [rows, n, cols]; each query sees itself
        writer = _ArenaWriter(self.arena, self.rows, self.cols, self.write_cols)
        return fastpath.llama_hidden(self.model, self.ids, mask[:, None], self.positions, writer)

    def run(self, inputs: StepInputs) -> torch.Tensor:
        """Refill the static inputs and run the step (replaying its graph, capturing it on first use)."""
        for static, host in ((self.ids, inputs.ids), (self.positions, inputs.positions), (self.valid, inputs.valid),
                             (self.write_cols, inputs.write_cols)):
            static.copy_(upload(host, static.device), non_blocking=True)
        if not self.capture:
            return self.body()
        with torch.cuda.device(self.arena.device):  # a worker thread's current device may be another one
            if self.graph is None:
                self._capture()
            self.graph.replay()
        return self.out

    def _capture(self) -> None:
        """Warm up on a side stream (cuBLAS and allocator state), then capture `body` into a graph sharing the arena's pool.

        The warm-up runs on this step's real inputs, so the keys/values it writes are the very ones the
        replay that follows writes again.
        """
        dev = self.arena.device
        side = torch.cuda.Stream(dev)
        side.wait_stream(torch.cuda.current_stream(dev))
        with torch.cuda.stream(side):
            for _ in range(2):
                self.body()
        torch.cuda.current_stream(dev).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.arena.graph_pool(), capture_error_mode="thread_local"):
            out = self.body()
        self.graph, self.out = graph, out
        self.arena.captures += 1


class _ArenaWriter:
    """The cache interface `fastpath.llama_hidden` writes through inside a step: new keys/values go to the static columns."""

    def __init__(self, arena: "Arena", rows: int, cols: int, write_cols: torch.Tensor) -> None:
        self.arena, self.rows, self.cols, self.write_cols = arena, rows, cols, write_cols

    def update(self, keys: torch.Tensor, values: torch.Tensor, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        k_buf, v_buf = self.arena.keys[layer][: self.rows], self.arena.values[layer][: self.rows]
        k_buf.index_copy_(2, self.write_cols, keys)
        v_buf.index_copy_(2, self.write_cols, values)
        return k_buf[:, :, : self.cols], v_buf[:, :, : self.cols]


class Arena:
    """Preallocated keys/values of one model's layers for one live cache at a time, and the steps captured over them."""

    def __init__(self, model, cfg: GraphConfig, device: torch.device, dtype: torch.dtype) -> None:
        mc = model.config
        self.model, self.cfg, self.device, self.dtype = model, cfg, device, dtype
        self.num_layers = mc.num_hidden_layers
        self.kv_heads = mc.num_key_value_heads
        self.head_dim = getattr(mc, "head_dim", None) or mc.hidden_size // mc.num_attention_heads
        self.keys: list[torch.Tensor] = []  # per layer [rows_cap, kv_heads, cols_cap, head_dim]
        self.values: list[torch.Tensor] = []
        self.rows_cap = self.cols_cap = 0
        self.steps: OrderedDict[tuple[int, int, int], _Step] = OrderedDict()
        self.captures = 0  # graphs captured so far (steps dropped by growth or LRU are captured again)
        self.reallocations = 0
        self._owner: Optional[weakref.ref] = None
        self._pool = None

    # ------------------------------------------------------------------ ownership
    @property
    def free(self) -> bool:
        return self._owner is None or self._owner() is None

    def bind(self, rows: int) -> "StaticCache":
        """A new cache of `rows` empty rows stored in this arena (the arena must be free)."""
        if not self.free:
            raise RuntimeError("this arena is in use by another cache")
        cache = StaticCache(self, rows)
        self._owner = weakref.ref(cache)
        return cache

    # ------------------------------------------------------------------ storage
    @torch.inference_mode()
    def reserve(self, rows: int, cols: int) -> None:
        """Make room for `rows` × `cols`; growing copies what is stored and drops every captured step (their addresses change)."""
        if rows <= self.rows_cap and cols <= self.cols_cap and self.keys:
            return
        new_rows = max(self.rows_cap, self.cfg.batch_bucket(rows) or rows, 1)
        new_cols = self.cols_cap
        if cols > self.cols_cap:  # headroom: one column step, or half again what was there
            new_cols = max(self.cfg.column_bucket(cols) + self.cfg.column_step, self.cfg.column_bucket(self.cols_cap * 3 // 2))
        shape = (new_rows, self.kv_heads, new_cols, self.head_dim)
        old_k, old_v = self.keys, self.values
        self.keys, self.values = [], []
        for i in range(self.num_layers):
            for bufs, old in ((self.keys, old_k), (self.values, old_v)):
                buf = torch.zeros(shape, dtype=self.dtype, device=self.device)  # zeros: masked columns must hold finite values
                if old:
                    buf[: self.rows_cap, :, : self.cols_cap] = old[i]
                bufs.append(buf)
        self.rows_cap, self.cols_cap = new_rows, new_cols
        self.steps.clear()
        self.reallocations += 1

    # ------------------------------------------------------------------ steps
    def graph_pool(self):
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        return self._pool

    def step(self, rows: int, width: int, cols: int) -> _Step:
        """The step for this shape (least recently used ones beyond `max_graphs` are dropped)."""
        key = (rows, width, cols)
        found = self.steps.get(key)
        if found is not None:
            self.steps.move_to_end(key)
            return found
        made = _Step(self, self.model, rows, width, cols, self.cfg.capture)
        self.steps[key] = made
        while len(self.steps) > self.cfg.max_graphs:
            self.steps.popitem(last=False)
        return made


class _StaticLayer:
    """One layer's keys/values of a `StaticCache`: views [rows, kv_heads, cols, d] of the arena's buffers.

    Assigning a view of the buffer (a trim) just narrows it; assigning any other tensor (a gather,
    a merge) copies it into the buffer, which grows when needed.
    """

    def __init__(self, arena: Arena, index: int, rows: int) -> None:
        self.arena, self.index, self.rows, self.cols = arena, index, rows, 0

    @property
    def keys(self) -> torch.Tensor:
        return self.arena.keys[self.index][: self.rows, :, : self.cols]

    @keys.setter
    def keys(self, tensor: torch.Tensor) -> None:
        self._assign("keys", tensor)

    @property
    def values(self) -> torch.Tensor:
        return self.arena.values[self.index][: self.rows, :, : self.cols]

    @values.setter
    def values(self, tensor: torch.Tensor) -> None:
        self._assign("values", tensor)

    @torch.inference_mode()
    def _assign(self, name: str, tensor: torch.Tensor) -> None:
        rows, cols = tensor.shape[0], tensor.shape[2]
        buf = getattr(self.arena, name)[self.index]
        if tensor.data_ptr() != buf.data_ptr() or tensor.stride() != buf.stride():  # not a view of the buffer: copy it in
            self.arena.reserve(rows, cols)
            getattr(self.arena, name)[self.index][:rows, :, :cols] = tensor
        self.rows, self.cols = rows, cols

    @torch.inference_mode()
    def append(self, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write n new columns [rows, kv_heads, n, d] after the current ones; the views including them."""
        start, n = self.cols, keys.shape[2]
        self.arena.reserve(self.rows, start + n)
        self.arena.keys[self.index][: self.rows, :, start : start + n] = keys
        self.arena.values[self.index][: self.rows, :, start : start + n] = values
        self.cols = start + n
        return self.keys, self.values


class StaticCache:
    """The cache of a `RaggedKV` in graph mode: per-layer views of an arena (the `DynamicCache` interface the runtime uses)."""

    def __init__(self, arena: Arena, rows: int) -> None:
        arena.reserve(rows, 0)
        self.arena = arena
        self.layers = [_StaticLayer(arena, i, rows) for i in range(arena.num_layers)]

    def update(self, keys: torch.Tensor, values: torch.Tensor, layer: int, *_args) -> tuple[torch.Tensor, torch.Tensor]:
        """Append new keys/values of one layer in place (the eager lean forward's write)."""
        return self.layers[layer].append(keys, values)

    def set_rows(self, rows: int) -> None:
        """Grow or shrink the rows (new rows hold no valid column; their stale contents stay masked)."""
        self.arena.reserve(rows, max((layer.cols for layer in self.layers), default=0))
        for layer in self.layers:
            layer.rows = rows

    def set_columns(self, cols: int) -> None:
        """After a step wrote columns up to `cols` through the arena."""
        for layer in self.layers:
            layer.cols = cols
