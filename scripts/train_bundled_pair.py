#!/usr/bin/env python3
"""Train edgespec's bundled draft/target pair: a Python code-completion pair on the standard library sources.

Reproducible from a seed on any machine with this Python: the corpus is the interpreter's own
standard library (tests excluded), the tokenizer a byte-level BPE trained on it, and both models
Llama-style HF checkpoints written in float16 safetensors (loaded as float32 at run time).

Steps:
  1. collect the corpus (sorted file list, hashed into the report),
  2. train a shared byte-level BPE tokenizer (HF `tokenizers`),
  3. train the target on next-token cross-entropy (with --cotrain-draft the draft trains alongside it
     on a mix of cross-entropy and KL to the target's current predictions),
  4. distil the draft against the frozen, final target (KL to the target plus a little cross-entropy),
  5. evaluate validation loss and teacher-forced greedy agreement (a proxy for greedy α),
  6. save both models, the tokenizer and `train_report.json`.

Usage: python scripts/train_bundled_pair.py --out src/edgespec/models/bundled [--steps N] [--seed S]
       [--init-from DIR] (continue from a saved pair; docs/bundled_pair.md gives the exact recipe)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sysconfig
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

EOT = "<|endoftext|>"
PAD = "<|pad|>"
EXCLUDED_DIRS = {"test", "tests", "idle_test", "site-packages", "__pycache__", "lib2to3", "turtledemo"}


@dataclass(frozen=True)
class ModelShape:
    hidden: int
    layers: int
    heads: int
    ffn: int


TARGET = ModelShape(hidden=512, layers=6, heads=8, ffn=1376)
DRAFT = ModelShape(hidden=128, layers=2, heads=4, ffn=384)
VOCAB = 8192
MAX_POSITIONS = 2048


def collect_corpus(stdlib: Path) -> tuple[list[Path], str]:
    """1. Sorted .py files of the standard library, without tests; returns files and a content hash."""
    files = []
    for root, dirs, names in os.walk(stdlib):
        dirs[:] = sorted(d for d in dirs if d not in EXCLUDED_DIRS and not d.startswith("test"))
        files += [Path(root) / n for n in sorted(names) if n.endswith(".py") and not n.startswith("test_")]
    files.sort()
    digest = hashlib.sha256()
    for f in files:
        digest.update(f.read_bytes())
    return files, digest.hexdigest()[:16]


def read_texts(files: list[Path]) -> list[str]:
    return [f.read_text(encoding="utf-8", errors="replace") for f in files]


def train_tokenizer(texts: list[str], out_dir: Path) -> PreTrainedTokenizerFast:
    """2. Byte-level BPE shared by draft and target (lossless round trip for any text)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=[EOT, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    # encoding text puts BOS first, as the models saw it in training (the ecosystem's default: `tokenizer(text)`)
    tok.post_processor = processors.TemplateProcessing(single=f"{EOT} $A", pair=f"{EOT} $A $B:1", special_tokens=[(EOT, tok.token_to_id(EOT))])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOT, eos_token=EOT, pad_token=PAD)
    fast.save_pretrained(out_dir)
    return fast


def encode_corpus(texts: list[str], tok: PreTrainedTokenizerFast) -> np.ndarray:
    eot = tok.convert_tokens_to_ids(EOT)
    ids: list[int] = []
    for enc in tok(texts, add_special_tokens=False)["input_ids"]:
        ids.append(eot)
        ids.extend(enc)
    return np.asarray(ids, dtype=np.int32)


def make_model(shape: ModelShape, tok: PreTrainedTokenizerFast) -> LlamaForCausalLM:
    cfg = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=shape.hidden,
        intermediate_size=shape.ffn,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.heads,
        max_position_embeddings=MAX_POSITIONS,
        rope_theta=10000.0,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    return LlamaForCausalLM(cfg)


def sample_batch(data: np.ndarray, rng: np.random.Generator, batch: int, seq: int) -> torch.Tensor:
    starts = rng.integers(0, len(data) - seq - 1, size=batch)
    return torch.from_numpy(np.stack([data[s : s + seq + 1] for s in starts]).astype(np.int64))  # [B, T+1]


def lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def distill_loss(draft_logits: torch.Tensor, target_logits: torch.Tensor, labels: torch.Tensor, kl_weight: float) -> torch.Tensor:
    """Draft loss: (1 − w)·CE(labels) + w·KL(p_target ‖ q_draft), logits [B, T, V] in float32."""
    vocab = draft_logits.shape[-1]
    logq = F.log_softmax(draft_logits.float(), dim=-1).view(-1, vocab)
    ce = F.nll_loss(logq, labels.reshape(-1))
    logp = F.log_softmax(target_logits.float(), dim=-1).view(-1, vocab)
    kl = F.kl_div(logq, logp, log_target=True, reduction="batchmean")
    return (1.0 - kl_weight) * ce + kl_weight * kl


def cpu_has_fast_bf16() -> bool:
    """True where the CPU multiplies bf16 natively (AVX-512 BF16 or AMX); elsewhere bf16 is emulated and slow."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def autocast(args: argparse.Namespace):
    """bf16 autocast when --precision resolves to bf16, else a no-op context (float32)."""
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16")


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for group in opt.param_groups:
        group["lr"] = lr


def train(args: argparse.Namespace, target: LlamaForCausalLM, draft: LlamaForCausalLM, train_ids: np.ndarray) -> dict:
    """3 + 4. Co-train target and draft, then distil the draft against the frozen target."""
    rng = np.random.default_rng(args.seed)
    opt_t = torch.optim.AdamW(target.parameters(), lr=args.lr_target, betas=(0.9, 0.95), weight_decay=0.1)
    opt_d = torch.optim.AdamW(draft.parameters(), lr=args.lr_draft, betas=(0.9, 0.95), weight_decay=0.1)
    log: list[dict] = []
    t0 = time.perf_counter()
    total = args.steps + args.distill_steps
    for step in range(total):
        co_training = step < args.steps
        train_draft = args.cotrain_draft or not co_training
        batch = sample_batch(train_ids, rng, args.batch, args.seq)
        inputs, labels = batch[:, :-1], batch[:, 1:]
        # target: train during co-training, frozen teacher afterwards
        target.train(co_training)
        with autocast(args), torch.set_grad_enabled(co_training):
            t_logits = target(input_ids=inputs).logits
        t_loss = F.cross_entropy(t_logits.float().view(-1, VOCAB), labels.reshape(-1))
        if co_training:
            set_lr(opt_t, lr_at(step, args.steps, args.lr_target, args.warmup))
            opt_t.zero_grad(set_to_none=True)
            t_loss.backward()
            torch.nn.utils.clip_grad_norm_(target.parameters(), 1.0)
            opt_t.step()
        # draft: mix of ground truth and the target's (detached) predictions
        d_loss = torch.zeros(())
        if train_draft:
            kl_weight = args.kl_weight if co_training else 0.9
            with autocast(args):
                d_logits = draft(input_ids=inputs).logits
            d_loss = distill_loss(d_logits, t_logits.detach(), labels, kl_weight)
            d_step, d_total = (step, total) if args.cotrain_draft else (step - args.steps, args.distill_steps)
            set_lr(opt_d, lr_at(d_step, d_total, args.lr_draft, args.warmup))
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            torch.nn.utils.clip_grad_norm_(draft.parameters(), 1.0)
            opt_d.step()
        if step % args.log_every == 0 or step == total - 1:
            elapsed = time.perf_counter() - t0
            tok_s = (step + 1) * args.batch * args.seq / elapsed
            row = {"step": step, "phase": ("co-train" if args.cotrain_draft else "target") if co_training else "distill", "target_loss": round(t_loss.item(), 4),
                   "draft_loss": round(d_loss.item(), 4), "elapsed_s": round(elapsed, 1), "tokens_per_s": round(tok_s)}
            log.append(row)
            print(json.dumps(row), flush=True)
    return {"log": log, "train_time_s": round(time.perf_counter() - t0, 1)}


@torch.inference_mode()
def evaluate(target: LlamaForCausalLM, draft: LlamaForCausalLM, val_ids: np.ndarray, seq: int, batches: int, seed: int) -> dict:
    """5. Validation loss of both models and teacher-forced greedy agreement (argmax draft == argmax target)."""
    rng = np.random.default_rng(seed + 1)
    target.eval()
    draft.eval()
    t_losses, d_losses, agree = [], [], []
    for _ in range(batches):
        batch = sample_batch(val_ids, rng, 8, seq)
        inputs, labels = batch[:, :-1], batch[:, 1:]
        t_logits = target(input_ids=inputs).logits.float()
        d_logits = draft(input_ids=inputs).logits.float()
        t_losses.append(F.cross_entropy(t_logits.view(-1, VOCAB), labels.reshape(-1)).item())
        d_losses.append(F.cross_entropy(d_logits.view(-1, VOCAB), labels.reshape(-1)).item())
        agree.append((t_logits.argmax(-1) == d_logits.argmax(-1)).float().mean().item())
    return {"target_val_loss": round(float(np.mean(t_losses)), 4), "draft_val_loss": round(float(np.mean(d_losses)), 4),
            "greedy_agreement": round(float(np.mean(agree)), 4)}


def save(model: LlamaForCausalLM, tok: PreTrainedTokenizerFast, out: Path) -> int:
    """6. float16 safetensors (halves the shipped size; the runtime loads float32)."""
    out.mkdir(parents=True, exist_ok=True)
    model.to(torch.float16).save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    model.to(torch.float32)
    return (out / "model.safetensors").stat().st_size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("src/edgespec/models/bundled"))
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--steps", type=int, default=600, help="target training steps")
    ap.add_argument("--distill-steps", type=int, default=200, help="draft-only distillation steps afterwards")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--lr-target", type=float, default=1.5e-3)
    ap.add_argument("--lr-draft", type=float, default=3e-3)
    ap.add_argument("--kl-weight", type=float, default=0.5, help="KL share of the draft loss while co-training")
    ap.add_argument("--cotrain-draft", action="store_true", help="train the draft alongside the target (stage 1 of the shipped pair)")
    ap.add_argument("--init-from", type=Path, default=None, help="start from the pair saved in this directory (its tokenizer too)")
    ap.add_argument("--warmup", type=int, default=40)
    ap.add_argument("--log-every", type=int, default=10)
    ap.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto",
                    help="training arithmetic; auto = bf16 where the CPU has native bf16 (AVX-512 BF16/AMX), else fp32")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()
    if args.precision == "auto":
        args.precision = "bf16" if cpu_has_fast_bf16() else "fp32"

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files, corpus_hash = collect_corpus(stdlib)
    texts = read_texts(files)
    tmp_tok_dir = args.out / "_tokenizer"
    if args.init_from is not None:
        tok = PreTrainedTokenizerFast.from_pretrained(args.init_from / "target")
        tok.save_pretrained(tmp_tok_dir)
    else:
        tok = train_tokenizer(texts, tmp_tok_dir)
    n_val = max(1, len(texts) // 50)
    train_ids, val_ids = encode_corpus(texts[:-n_val], tok), encode_corpus(texts[-n_val:], tok)
    print(json.dumps({"files": len(files), "corpus_hash": corpus_hash, "train_tokens": len(train_ids), "val_tokens": len(val_ids)}), flush=True)

    if args.init_from is not None:
        target = LlamaForCausalLM.from_pretrained(args.init_from / "target", dtype=torch.float32)
        draft = LlamaForCausalLM.from_pretrained(args.init_from / "draft", dtype=torch.float32)
    else:
        target, draft = make_model(TARGET, tok), make_model(DRAFT, tok)
    result = train(args, target, draft, train_ids)
    metrics = evaluate(target, draft, val_ids, args.seq, batches=8, seed=args.seed)
    print(json.dumps(metrics), flush=True)
    sizes = {"target_bytes": save(target, tok, args.out / "target"), "draft_bytes": save(draft, tok, args.out / "draft")}
    for f in tmp_tok_dir.iterdir():
        f.unlink()
    tmp_tok_dir.rmdir()
    previous = json.loads((args.init_from / "train_report.json").read_text()) if args.init_from else None
    report = {
        "previous_stage": previous,
        "total_train_time_s": round(result["train_time_s"] + (previous or {}).get("total_train_time_s", (previous or {}).get("train_time_s", 0)), 1),
        "seed": args.seed, "python_stdlib": str(stdlib), "corpus_files": len(files), "corpus_hash": corpus_hash,
        "train_tokens": int(len(train_ids)), "val_tokens": int(len(val_ids)), "vocab": VOCAB,
        "target_shape": asdict(TARGET), "draft_shape": asdict(DRAFT),
        "target_params": sum(p.numel() for p in target.parameters()), "draft_params": sum(p.numel() for p in draft.parameters()),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "train_time_s": result["train_time_s"], "final": result["log"][-1], **metrics, **sizes,
    }
    (args.out / "train_report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
