"""Model runtime over Hugging Face transformers: load a causal LM from a local directory and run ragged prefill/decode/verify with a per-row croppable KV cache.

KV layout (`RaggedKV`): one transformers `DynamicCache` for B rows, plus a validity mask over its
columns. Appending writes the same number of columns to every row (shorter rows get masked pad
columns); cropping a row masks its trailing valid columns. Each row keeps its own position ids, so
a row's keys and values are exactly those of its kept prefix wherever they sit in the cache; we
pass our own 4-D attention mask (causal on columns AND valid). Columns that no row uses are trimmed
and heavily holed caches are compacted, so a single row (B = 1) never has holes and runs on
transformers' plain causal path.

Devices: the validity mask and the row lengths are bookkeeping and always live on the host; only
keys/values and activations live on the model's device. Every decision (which path, what to crop,
trim or compact) is taken from host tensors, and the host data a forward needs (ids, positions,
validity, gather indices) is uploaded without a stream sync (`edgespec.models.device.upload`), so a
forward on a GPU never waits for the GPU. With graphs on (`CausalLM.use_graphs`, the default on CUDA)
the cache lives in a preallocated arena and decode/verify steps replay CUDA graphs
(`edgespec.models.graphs`).
"""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache, PreTrainedTokenizerBase, PreTrainedTokenizerFast
from transformers.utils import logging as hf_logging

from edgespec.models import fastpath
from edgespec.models.card import read_card
from edgespec.models.gguf import GGUFError, resolve_model_dir
from edgespec.models.subvocab import SubVocabHead
from edgespec.models.device import resolve_device, resolve_dtype, upload
from edgespec.models.graphs import GraphConfig, StaticCache
from edgespec.policy.load import packs

__all__ = [
    "CausalLM", "RaggedKV", "ModelLoadError", "TokenizerMismatchError", "check_same_tokenizer",
    "drop_unused_columns", "resize_rows", "take_rows", "put_rows",
]

hf_logging.disable_progress_bar()
hf_logging.set_verbosity_error()


class ModelLoadError(ValueError):
    """A model directory is missing, incomplete or not a causal LM."""


class TokenizerMismatchError(ValueError):
    """Draft and target do not share a tokenizer, so their token ids mean different things."""


@dataclass
class RaggedKV:
    """KV cache of B sequences; `valid[b, c]` says whether column c holds a token of row b."""

    cache: DynamicCache  # or a `StaticCache` (graph mode): keys/values on the model's device
    valid: torch.Tensor  # [B, C] bool, on the host
    lengths: torch.Tensor  # [B] int64 on the host, valid tokens per row (= next position id)

    @property
    def batch_size(self) -> int:
        return self.lengths.numel()

    @property
    def columns(self) -> int:
        return self.valid.shape[1]

    def length(self, row: int) -> int:
        return int(self.lengths[row])


def _resolve(path: str | Path) -> Path:
    """A transformers directory for `path`, converting a GGUF input once (clear ModelLoadError when it cannot be)."""
    try:
        return resolve_model_dir(path)
    except GGUFError as exc:
        raise ModelLoadError(str(exc)) from None


def _layers(cache: DynamicCache) -> list:
    """The cache layers holding tensors [B, heads, C, head_dim]; empty before the first forward."""
    return [layer for layer in cache.layers if getattr(layer, "keys", None) is not None and layer.keys.dim() == 4]


class CausalLM:
    """A causal LM with its tokenizer, run in inference mode over `RaggedKV` caches."""

    def __init__(self, model, tokenizer: PreTrainedTokenizerBase, path: Optional[Path] = None):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.path = path
        self.config = model.config
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self.vocab_size = int(model.get_output_embeddings().weight.shape[0])
        self._decoder = model.base_model
        self._lm_head = model.get_output_embeddings()
        # logit soft-capping and similar post-processing live in the model's own head: use its forward
        self._plain_head = getattr(model.config, "final_logit_softcapping", None) is None
        self._sdpa = getattr(model.config, "_attn_implementation", "sdpa") == "sdpa"
        # plain Llama blocks run through our lean forward (same math and cache, less overhead)
        self.fast_path = self._plain_head and self._sdpa and fastpath.supports(model)
        # the KV cache's keyword: `cache` in newer transformers, `past_key_values` (deprecated there) before
        self._cache_kw = "cache" if "cache" in inspect.signature(type(self._decoder).forward).parameters else "past_key_values"
        self.graphs: Optional[GraphConfig] = None  # see `use_graphs`
        self._arenas: list = []
        self.last_positions = 0  # positions the last forward's projections computed (rows × width, or its real tokens when packed)
        self._eos_token_id = tokenizer.eos_token_id
        self._decode = _plain_decoder(tokenizer)

    def use_graphs(self, cfg: Optional[GraphConfig]) -> None:
        """Store caches made from now on in KV arenas and run decode/verify steps as captured CUDA graphs (None: off).

        `GraphConfig(capture=False)` runs the same static steps eagerly (any device). Needs the lean
        Llama forward; capture needs a CUDA device.
        """
        if cfg is not None and not self.fast_path:
            raise ValueError("CUDA graphs need a plain Llama model (the lean forward); this model runs transformers' forward")
        if cfg is not None and cfg.capture and self.device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA device, the model is on {self.device}")
        self.graphs, self._arenas = cfg, []

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(
        cls, path: str | Path, device: str | torch.device = "cpu", dtype: Optional[str | torch.dtype] = None,
        cuda_graphs: Optional[bool] = None,
    ) -> "CausalLM":
        """Load weights (safetensors), config and tokenizer from a local directory; never touches a hub.

        `path` may also be a GGUF file or a directory holding one (converted once and cached: `edgespec.models.gguf`).
        `device` "cpu" | "cuda" | "cuda:N" and `dtype` "float32" | "bfloat16" | "float16" are checked first
        (`DeviceError`, a ValueError, when unusable); dtype None: the directory's `edgespec.json` choice on a CPU,
        else float32 (`edgespec.models.card`). `cuda_graphs` (default: on for CUDA) captures the decode and verify
        steps as CUDA graphs where the model runs the lean forward.
        """
        device, dtype = resolve_device(device), (None if dtype is None else resolve_dtype(dtype))
        if cuda_graphs and device.type != "cuda":
            raise ValueError("CUDA graphs need a CUDA device")
        path = _resolve(path)
        if not path.is_dir():
            raise ModelLoadError(f"model directory not found: {path}")
        missing = [f for f in ("config.json",) if not (path / f).exists()]
        if missing or not any(path.glob("*.safetensors")):
            raise ModelLoadError(f"{path} is not a Hugging Face model directory (needs config.json and *.safetensors, or a .gguf file)")
        try:
            card = read_card(path)
            tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
            model = AutoModelForCausalLM.from_pretrained(
                path, dtype=dtype or card.dtype(device), attn_implementation="sdpa", local_files_only=True
            )
        except (OSError, ValueError, KeyError) as exc:
            raise ModelLoadError(f"cannot load a causal LM from {path}: {exc}") from exc
        lm = cls(model.to(device), tokenizer, path)
        if card.head_token_ids is not None:
            lm._lm_head = SubVocabHead(lm._lm_head.weight, torch.tensor(card.head_token_ids))
        lm.default_graphs(cuda_graphs)
        return lm

    def default_graphs(self, cuda_graphs: Optional[bool] = None) -> None:
        """Graphs as `load` sets them: CUDA graphs on a CUDA device unless `cuda_graphs` is False (only on the lean forward)."""
        if (self.device.type == "cuda" if cuda_graphs is None else cuda_graphs) and self.fast_path:
            self.use_graphs(GraphConfig())

    @property
    def eos_token_id(self) -> Optional[int]:
        return self._eos_token_id

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def tokenize(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def detokenize(self, ids: Sequence[int]) -> str:
        """The tokenizer's `decode(ids, skip_special_tokens=True)` (streaming calls it per verdict: see `_plain_decoder`)."""
        return self._decode(list(ids))

    # ------------------------------------------------------------------ KV cache
    def new_kv(self, batch_size: int) -> RaggedKV:
        cache = self._arena_cache(batch_size) if self.graphs is not None else None
        return RaggedKV(
            cache=cache if cache is not None else DynamicCache(config=self.config),
            valid=torch.zeros(batch_size, 0, dtype=torch.bool),
            lengths=torch.zeros(batch_size, dtype=torch.long),
        )

    def _arena_cache(self, batch_size: int) -> Optional[StaticCache]:
        """A cache in a free arena (made if fewer than `max_arenas` exist); None when every arena is in use."""
        from edgespec.models.graphs import Arena

        arena = next((a for a in self._arenas if a.free), None)
        if arena is None and len(self._arenas) < self.graphs.max_arenas:
            arena = Arena(self.model, self.graphs, self.device, self.dtype)
            self._arenas.append(arena)
        return arena.bind(batch_size) if arena is not None else None

    @torch.inference_mode()
    def crop(self, kv: RaggedKV, row: int, keep_tokens: int) -> None:
        """Keep only the first `keep_tokens` tokens of `row` (its cache then equals a prefill of that prefix)."""
        self.crop_rows(kv, {row: keep_tokens})

    @torch.inference_mode()
    def crop_rows(self, kv: RaggedKV, keep: Mapping[int, int]) -> None:
        """`crop` for several rows at once ({row: tokens to keep}), trimming the cache once at the end."""
        if not keep:
            return
        # numpy views of the host bookkeeping (shared memory): its indexing costs microseconds where torch's costs tens
        all_valid, all_lengths = kv.valid.numpy(), kv.lengths.numpy()  # [B, C] bool, [B] int64
        rows = np.fromiter(keep.keys(), dtype=np.int64, count=len(keep))  # [k]
        keeps = np.fromiter(keep.values(), dtype=np.int64, count=len(keep))  # [k]
        lengths = all_lengths[rows]
        bad = np.flatnonzero((keeps < 0) | (keeps > lengths))
        if bad.size:
            i = bad[0]
            raise ValueError(f"cannot crop row {rows[i]} of length {lengths[i]} to {keeps[i]} tokens")
        cut = keeps < lengths
        if not cut.any():
            return
        rows, keeps = rows[cut], keeps[cut]
        valid = all_valid[rows]  # [k, C]
        all_valid[rows] = valid & (valid.cumsum(axis=1) <= keeps[:, None])  # a row keeps its first `keep` valid columns
        all_lengths[rows] = keeps
        self._trim(kv)

    def _trim(self, kv: RaggedKV) -> None:
        """Drop trailing columns no row uses; compact when more than half the columns are holes."""
        drop_unused_columns(kv)
        if kv.columns > 2 * int(kv.lengths.max()) + 16:
            self._compact(kv)

    def _compact(self, kv: RaggedKV) -> None:
        """Move each row's valid columns to the front, in order; keys/values are gathered, not recomputed."""
        width = int(kv.lengths.max())
        order = upload(torch.sort((~kv.valid).to(torch.int8), dim=1, stable=True).indices[:, :width], self.device)  # [B, W]
        for layer in _layers(kv.cache):
            idx = order[:, None, :, None].expand(-1, layer.keys.shape[1], -1, layer.keys.shape[-1])
            layer.keys, layer.values = layer.keys.gather(2, idx), layer.values.gather(2, idx)
        kv.valid = torch.arange(width)[None, :] < kv.lengths[:, None]

    # ------------------------------------------------------------------ forward
    def _mask(self, kv: RaggedKV, new_valid: torch.Tensor) -> torch.Tensor:
        """[B, 1, n, C + n] mask on the device: causal over columns AND valid; each new column also sees itself (no empty rows)."""
        past, n = kv.columns, new_valid.shape[1]
        valid = upload(torch.cat([kv.valid, new_valid], dim=1), self.device)  # [B, C + n]
        cols = torch.arange(past + n, device=self.device)
        q_cols = past + torch.arange(n, device=self.device)
        causal = cols[None, :] <= q_cols[:, None]  # [n, C + n]
        mask = (causal[None] & valid[:, None, :]) | (cols[None, None, :] == q_cols[None, :, None])  # [B, n, C + n]
        mask = mask[:, None]
        if self._sdpa:
            return mask
        return torch.zeros(mask.shape, dtype=self.dtype, device=self.device).masked_fill(~mask, torch.finfo(self.dtype).min)

    @torch.inference_mode()
    def forward(self, kv: RaggedKV, new_tokens: Sequence[Sequence[int]], last_n: Optional[Sequence[int]] = None) -> torch.Tensor:
        """Append `new_tokens[b]` to row b (0 allowed) and return logits of the last `last_n[b]` appended tokens.

        Returns flat float32 logits [Σ last_n, V], rows in batch order (default last_n = all appended).
        """
        counts = [len(t) for t in new_tokens]
        if len(counts) != kv.batch_size:
            raise ValueError(f"expected token lists for {kv.batch_size} rows, got {len(counts)}")
        last_n = counts if last_n is None else list(last_n)
        if any(not 0 <= m <= c for m, c in zip(last_n, counts)):
            raise ValueError("last_n must be between 0 and the number of appended tokens of each row")
        width = max(counts)
        if width == 0:
            return torch.zeros(0, self.vocab_size, device=self.device)
        self.last_positions = len(counts) * width  # padded; a packed ragged forward sets its real tokens
        if self._graph_step_fits(kv, width):
            return self._forward_graph(kv, new_tokens, counts, last_n, width)
        if len(set(counts)) == 1 and len(set(last_n)) == 1 and bool(kv.valid.all()):
            return self._forward_plain(kv, new_tokens, width, last_n[0])
        return self._forward_ragged(kv, new_tokens, counts, last_n, width)

    def _forward_plain(self, kv: RaggedKV, new_tokens, n: int, m: int) -> torch.Tensor:
        """Every row appends n tokens to a hole-free cache: transformers' own causal path, no mask."""
        ids = upload(torch.tensor([list(t) for t in new_tokens], dtype=torch.long), self.device)  # [B, n]
        positions = upload(kv.lengths[:, None] + torch.arange(n)[None, :], self.device) if self.fast_path else None
        hidden = self._hidden(ids, None, positions, kv.cache)  # [B, n, H]
        kv.valid = torch.ones(kv.batch_size, kv.columns + n, dtype=torch.bool)
        kv.lengths = kv.lengths + n
        selected = hidden[:, n - m :].reshape(kv.batch_size * m, hidden.shape[-1])
        return (self._lm_head(selected) if self._plain_head else selected).float()

    def _forward_ragged(self, kv: RaggedKV, new_tokens, counts: list[int], last_n: list[int], width: int) -> torch.Tensor:
        # 1. right-padded input, per-row positions and validity of the new columns (host)
        ids = _padded(new_tokens, width)  # [B, n]
        count_t = torch.tensor(counts)
        new_valid = torch.arange(width)[None, :] < count_t[:, None]  # [B, n]
        positions = kv.lengths[:, None] + torch.arange(width)[None, :]
        # 2. one forward under our own mask (the lean forward projects only the real tokens of rows padded to the width)
        mask = self._mask(kv, new_valid)
        packed = None
        if self.fast_path and packs(sum(counts), len(counts), width):
            packed = upload(new_valid.flatten().nonzero().squeeze(-1), self.device)  # [T]
            self.last_positions = sum(counts)
        hidden = self._hidden(upload(ids, self.device), mask, upload(positions, self.device), kv.cache, packed)  # [B, n, H]
        # 3. bookkeeping: validity and lengths; drop columns nobody uses
        kv.valid = torch.cat([kv.valid, new_valid], dim=1)
        kv.lengths = kv.lengths + count_t
        # 4. logits only where asked
        logits = self._logits(hidden, *_asked(counts, last_n, self.device))
        self._trim(kv)
        return logits

    def _graph_step_fits(self, kv: RaggedKV, width: int) -> bool:
        """Graph mode, a cache in an arena, a decode/verify-sized step and a batch within the buckets."""
        cfg = self.graphs
        return (cfg is not None and isinstance(kv.cache, StaticCache) and width <= cfg.max_width
                and cfg.batch_bucket(kv.batch_size) is not None)

    def _forward_graph(self, kv: RaggedKV, new_tokens, counts: list[int], last_n: list[int], width: int) -> torch.Tensor:
        """The step as its bucket's static step (a CUDA graph replay when capturing); same results as `_forward_ragged`."""
        from edgespec.models.graphs import StepInputs

        cfg, cache = self.graphs, kv.cache
        bsz, past = kv.batch_size, kv.columns
        rows, cols = cfg.batch_bucket(bsz), cfg.column_bucket(past + width)
        cache.arena.reserve(rows, cols)
        # 1. host inputs padded to the bucket: padded rows hold no valid column, so they see only themselves
        count_t = torch.tensor(counts)
        new_valid = torch.arange(width)[None, :] < count_t[:, None]  # [B, n]
        ids = torch.zeros(rows, width, dtype=torch.long)
        ids[:bsz] = _padded(new_tokens, width)
        positions = torch.arange(width).repeat(rows, 1)
        positions[:bsz] += kv.lengths[:, None]
        valid = torch.zeros(rows, cols, dtype=torch.bool)
        valid[:bsz, :past] = kv.valid
        valid[:bsz, past : past + width] = new_valid
        # 2. the step: keys/values written at columns past..past+width-1 of the arena
        step = cache.arena.step(rows, width, cols)
        hidden = step.run(StepInputs(ids, positions, valid, past + torch.arange(width)))  # [rows, n, H]
        # 3. bookkeeping, then logits where asked (the output head runs eagerly, as in the other paths)
        cache.set_columns(past + width)
        kv.valid = torch.cat([kv.valid, new_valid], dim=1)
        kv.lengths = kv.lengths + count_t
        logits = self._logits(hidden, *_asked(counts, last_n, self.device))
        self._trim(kv)
        return logits

    def _hidden(self, ids, mask, positions, cache, packed: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Final hidden states [B, n, H] (logits where the head is not plain); all inputs on the device (`packed`: see
        `fastpath.llama_hidden`; the lean forward only)."""
        if self.fast_path:
            return fastpath.llama_hidden(self.model, ids, mask, positions, cache, packed)
        kwargs = {"input_ids": ids, "attention_mask": mask, "position_ids": positions, self._cache_kw: cache, "use_cache": True}
        if self._plain_head:
            return self._decoder(**kwargs).last_hidden_state
        return self.model(**kwargs).logits

    def _logits(self, hidden: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        selected = hidden[rows, cols]  # [R, H] (or [R, V] when `hidden` already holds logits)
        if self._plain_head:
            selected = self._lm_head(selected)
        return selected.float()

    # ------------------------------------------------------------------ conveniences
    def prefill(self, kv: RaggedKV, prompts: Sequence[Sequence[int]]) -> torch.Tensor:
        """Process whole prompts; logits of each prompt's last token [B, V]."""
        return self.forward(kv, prompts, [1 if len(p) else 0 for p in prompts])

    def decode(self, kv: RaggedKV, tokens: Sequence[int]) -> torch.Tensor:
        """One token per row; logits [B, V]."""
        return self.forward(kv, [[t] for t in tokens])


def _padded(new_tokens: Sequence[Sequence[int]], width: int) -> torch.Tensor:
    """Token lists right-padded with 0 to `width`: [B, width] int64 on the host."""
    return torch.tensor([list(t) + [0] * (width - len(t)) for t in new_tokens], dtype=torch.long)


def _asked(counts: list[int], last_n: list[int], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(row, column) of every position whose logits were asked for, rows in batch order, on the device."""
    rows = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(last_n))
    cols = torch.cat([torch.arange(c - m, c) for c, m in zip(counts, last_n)])
    return upload(rows, device), upload(cols, device)


# ---------------------------------------------------------------------- row surgery
# A `RaggedKV` with one row per session slot: grow or shrink the rows, take a subset out and put it
# back. Keys and values are gathered, never recomputed, so a row's cache stays exactly that of its
# prefix; columns a row does not use are masked by `valid`, whatever they hold. Like the forwards, they
# run in inference mode: an arena's buffers are written in place, and are inference tensors.


@torch.inference_mode()
def drop_unused_columns(kv: RaggedKV) -> RaggedKV:
    """Drop trailing columns that no row uses."""
    used = kv.valid.any(dim=0).nonzero()
    keep = int(used.max()) + 1 if used.numel() else 0
    if keep < kv.columns:
        for layer in _layers(kv.cache):
            layer.keys, layer.values = layer.keys[..., :keep, :], layer.values[..., :keep, :]
        kv.valid = kv.valid[:, :keep]
    return kv


def _from_tensors(lm: CausalLM, keys: list[torch.Tensor], values: list[torch.Tensor], valid: torch.Tensor, lengths: torch.Tensor) -> RaggedKV:
    cache = DynamicCache(ddp_cache_data=list(zip(keys, values)), config=lm.config) if keys else DynamicCache(config=lm.config)
    return RaggedKV(cache=cache, valid=valid, lengths=lengths)


@torch.inference_mode()
def resize_rows(lm: CausalLM, kv: RaggedKV, rows: int) -> RaggedKV:
    """`kv` with `rows` rows: new rows are empty; dropped rows (trailing) must hold no tokens."""
    old = kv.batch_size
    if rows < old and int(kv.lengths[rows:].sum()):
        raise ValueError("cannot drop rows that still hold tokens")
    if isinstance(kv.cache, StaticCache):  # the arena keeps its buffers: only the row count changes
        kv.cache.set_rows(rows)
        kv.valid = torch.cat([kv.valid, kv.valid.new_zeros((max(0, rows - old), kv.columns))], dim=0)[:rows].contiguous()
        kv.lengths = torch.cat([kv.lengths, kv.lengths.new_zeros(max(0, rows - old))], dim=0)[:rows].contiguous()
        return kv
    layers = _layers(kv.cache)
    if rows == 0 or not layers:  # nothing cached (columns appear only with the tensors of a forward)
        return lm.new_kv(rows)
    if rows <= old:
        for layer in layers:
            layer.keys, layer.values = layer.keys[:rows].contiguous(), layer.values[:rows].contiguous()
        kv.valid, kv.lengths = kv.valid[:rows].contiguous(), kv.lengths[:rows].contiguous()
        return kv
    extra = rows - old
    for layer in layers:
        layer.keys = torch.cat([layer.keys, layer.keys.new_zeros((extra, *layer.keys.shape[1:]))], dim=0)
        layer.values = torch.cat([layer.values, layer.values.new_zeros((extra, *layer.values.shape[1:]))], dim=0)
    kv.valid = torch.cat([kv.valid, kv.valid.new_zeros((extra, kv.columns))], dim=0)
    kv.lengths = torch.cat([kv.lengths, kv.lengths.new_zeros(extra)], dim=0)
    return kv


@torch.inference_mode()
def take_rows(lm: CausalLM, kv: RaggedKV, rows: Sequence[int]) -> RaggedKV:
    """A new cache holding copies of `rows` (in that order); `kv` is unchanged."""
    idx = torch.tensor(list(rows), dtype=torch.long)
    dev_idx = upload(idx, lm.device)
    layers = _layers(kv.cache)
    keys = [layer.keys.index_select(0, dev_idx) for layer in layers]
    values = [layer.values.index_select(0, dev_idx) for layer in layers]
    return _from_tensors(lm, keys, values, kv.valid.index_select(0, idx), kv.lengths.index_select(0, idx))


@torch.inference_mode()
def put_rows(lm: CausalLM, kv: RaggedKV, sub: RaggedKV, rows: Sequence[int]) -> RaggedKV:
    """`kv` with `rows` replaced by the rows of `sub` (as `take_rows` took them, then extended); columns are padded to fit both."""
    idx = torch.tensor(list(rows), dtype=torch.long)
    dev_idx = upload(idx, lm.device)
    width = max(kv.columns, sub.columns)
    sub_layers, main_layers = _layers(sub.cache), _layers(kv.cache)
    valid = torch.zeros(kv.batch_size, width, dtype=torch.bool)
    valid[:, : kv.columns] = kv.valid
    valid[idx] = False
    valid[idx, : sub.columns] = sub.valid
    lengths = kv.lengths.clone()
    lengths[idx] = sub.lengths
    if not sub_layers:  # nothing was ever computed
        kv.valid, kv.lengths = valid, lengths
        return kv
    if isinstance(kv.cache, StaticCache):  # write the rows into the arena in place
        kv.cache.arena.reserve(kv.batch_size, width)
        for main, s in zip(main_layers, sub_layers):
            main.cols = width  # columns the other rows lack are masked by `valid`
            main.keys[dev_idx, :, : sub.columns] = s.keys
            main.values[dev_idx, :, : sub.columns] = s.values
        kv.valid, kv.lengths = valid, lengths
        return drop_unused_columns(kv)
    keys, values = [], []
    for j, s in enumerate(sub_layers):
        shape = (kv.batch_size, s.keys.shape[1], width, s.keys.shape[3])
        for name, out in (("keys", keys), ("values", values)):
            merged = getattr(s, name).new_zeros(shape)
            if main_layers:
                main = getattr(main_layers[j], name)
                merged[:, :, : main.shape[2]] = main
            merged[dev_idx, :, : sub.columns] = getattr(s, name)
            out.append(merged)
    if main_layers:
        for layer, k, v in zip(main_layers, keys, values):
            layer.keys, layer.values = k, v
        kv.valid, kv.lengths = valid, lengths
        return drop_unused_columns(kv)
    return drop_unused_columns(_from_tensors(lm, keys, values, valid, lengths))


def _plain_decoder(tok: PreTrainedTokenizerBase):
    """`tok.decode(ids, skip_special_tokens=True)` as a function of a list of ids: the Rust tokenizer's own decode where
    that is all transformers' decode does (a fast tokenizer whose decode is not overridden, no clean-up of spaces),
    skipping its Python wrapper (~4x the Rust call on a short window); else transformers' decode itself."""
    backend = getattr(tok, "backend_tokenizer", None)
    plain = (backend is not None and isinstance(tok, PreTrainedTokenizerFast) and not tok.clean_up_tokenization_spaces
             and type(tok).decode is PreTrainedTokenizerFast.decode and type(tok)._decode is PreTrainedTokenizerFast._decode)
    if plain:
        return lambda ids: backend.decode(ids, skip_special_tokens=True)
    return lambda ids: tok.decode(ids, skip_special_tokens=True)


def _tokenizer_fingerprint(tok: PreTrainedTokenizerBase) -> tuple:
    specials = tuple(sorted((k, str(v)) for k, v in tok.special_tokens_map.items()))
    return tok.get_vocab(), specials


def check_same_tokenizer(draft: CausalLM, target: CausalLM) -> None:
    """Refuse a draft/target pair whose tokenizers differ (vocabulary, special tokens or model vocab size)."""
    dv, ds = _tokenizer_fingerprint(draft.tokenizer)
    tv, ts = _tokenizer_fingerprint(target.tokenizer)
    problems = []
    if dv != tv:
        only_d, only_t = len(dv.keys() - tv.keys()), len(tv.keys() - dv.keys())
        changed = sum(1 for k in dv.keys() & tv.keys() if dv[k] != tv[k])
        problems.append(f"vocabularies differ ({only_d} tokens only in the draft, {only_t} only in the target, {changed} with different ids)")
    if ds != ts:
        problems.append(f"special tokens differ ({dict(ds)} vs {dict(ts)})")
    if draft.vocab_size != target.vocab_size:
        problems.append(f"output vocabulary sizes differ ({draft.vocab_size} vs {target.vocab_size})")
    if problems:
        raise TokenizerMismatchError(
            f"draft {draft.path} and target {target.path} do not share a tokenizer: " + "; ".join(problems)
        )


def read_train_report(model_dir: Path) -> Optional[dict]:
    report = Path(model_dir).parent / "train_report.json"
    return json.loads(report.read_text()) if report.exists() else None
