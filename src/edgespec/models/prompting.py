"""How text and chat messages become token ids, as the ecosystem does it: the tokenizer's own defaults decide on special tokens.

- Text: `tokenizer(text).input_ids`. The tokenizer's post-processor decides whether a BOS token
  goes first (the bundled pair's adds `<|endoftext|>`, SmolLM2's adds none), so the same prompt gives
  the same ids here as in transformers and vLLM.
- Chat: the chat template renders the messages (with the generation prompt) and writes its own
  special tokens, so the rendered text is tokenized without adding any (`apply_chat_template`'s
  own behaviour).
"""

from __future__ import annotations

from typing import Sequence

__all__ = ["encode_text", "encode_chat", "has_chat_template"]


def encode_text(tokenizer, text: str) -> list[int]:
    """Token ids of `text` with the tokenizer's default special tokens."""
    return list(tokenizer(text)["input_ids"])


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def encode_chat(tokenizer, messages: Sequence[dict]) -> list[int]:
    """Token ids of chat `messages` ({"role", "content"} dicts) rendered by the tokenizer's chat template, ready for the assistant's answer."""
    if not has_chat_template(tokenizer):
        raise ValueError("this tokenizer has no chat template")
    text = tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])
