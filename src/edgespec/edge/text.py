"""Completion text from emitted tokens: incremental detokenisation for streaming, and stop strings (held back until decided)."""

from __future__ import annotations

from typing import Callable, Optional, Sequence

__all__ = ["TextAssembler"]


class TextAssembler:
    """Turns a growing list of completion token ids into text deltas, stopping at the first stop string.

    Deltas use the prefix-offset method (decode a short window and diff), so streaming costs O(tokens);
    text that ends in an incomplete character ('\ufffd') or could still be the start of a stop string is
    held back. `final_text()` is the full decode (or the text before the stop string).
    """

    def __init__(self, decode: Callable[[Sequence[int]], str], stop: Sequence[str] = ()):
        self._decode = decode
        self._stop = tuple(s for s in stop if s)
        self.ids: list[int] = []
        self._text = ""  # decoded so far (complete characters)
        self._released = 0  # characters of _text handed out as deltas
        self._prefix_offset = 0
        self._read_offset = 0
        self._prefix_text: Optional[str] = ""  # decode of ids[_prefix_offset:_read_offset] (None: not decoded yet)
        self.stop_index: Optional[int] = None  # where the stop string starts in the text, once found

    @property
    def stopped(self) -> bool:
        return self.stop_index is not None

    @property
    def has_stop_strings(self) -> bool:
        """Whether text can end the completion (then tokens are pushed one at a time, to know which one ended it)."""
        return bool(self._stop)

    def push(self, token_id: int) -> bool:
        """Append one token; True if the text now contains a stop string (then push no more)."""
        return self.extend((token_id,))

    def extend(self, token_ids: Sequence[int]) -> bool:
        """Append tokens with one decode of the window for all of them; True if the text now contains a stop string."""
        self.ids.extend(token_ids)
        if self._prefix_text is None:
            self._prefix_text = self._decode(self.ids[self._prefix_offset : self._read_offset])
        window = self._decode(self.ids[self._prefix_offset :])
        if len(window) > len(self._prefix_text) and not window.endswith("\ufffd"):
            self._text += window[len(self._prefix_text) :]
            self._prefix_offset, self._read_offset = self._read_offset, len(self.ids)
            self._prefix_text = None
        if self._stop:
            start = max(0, self._released - max(len(s) for s in self._stop))
            hits = [i for i in (self._text.find(s, start) for s in self._stop) if i >= 0]
            if hits:
                self.stop_index = min(hits)
        return self.stopped

    def delta(self) -> str:
        """Text that is now safe to show and was not shown yet."""
        end = self.stop_index if self.stop_index is not None else self._safe_end()
        if end <= self._released:
            return ""
        out = self._text[self._released : end]
        self._released = end
        return out

    def _safe_end(self) -> int:
        end = len(self._text)
        for stop in self._stop:
            for k in range(min(len(stop) - 1, end), 0, -1):
                if self._text.endswith(stop[:k]):
                    end = min(end, len(self._text) - k)
                    break
        return end

    def final_text(self) -> str:
        """The whole completion text: the text before the stop string, or the full decode of every token."""
        if self.stop_index is not None:
            return self._text[: self.stop_index]
        return self._decode(self.ids)

    def final_delta(self) -> str:
        """What remains to be shown once the completion is finished."""
        final = self.final_text()
        shown = self._text[: self._released]
        out = final[len(shown) :] if final.startswith(shown) else ""
        self._released = len(self._text)
        return out
