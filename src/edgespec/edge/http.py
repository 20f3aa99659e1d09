"""The drafter node's OpenAI-compatible HTTP API (Starlette): /v1/models, /v1/completions, /v1/chat/completions, /health, /stats.

Requests are validated up front; a bad one gets HTTP 400 with OpenAI's error JSON naming the field
(`{"error": {"message", "type": "invalid_request_error", "param", "code"}}`). Streaming uses
server-sent events (`data: {...}` chunks, then `data: [DONE]`). Extensions, as in vLLM: `top_k` and
`ignore_eos` in the request; every response carries an `edgespec` object with the request's
speculative-decoding figures (rounds, drafted and accepted tokens, acceptance rate, verifier).
A text prompt is tokenized with the tokenizer's defaults (its post-processor decides on BOS), chat messages
through the chat template (`edgespec.models.prompting`), as transformers and vLLM do.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Optional

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from edgespec.edge.engine import DraftEngine, Failed, Finished, GenerationFailed, GenerationRequest, RequestHandle, TextDelta
from edgespec.models.prompting import encode_chat, encode_text
from edgespec.spec.sampling import SamplingParams

__all__ = ["RequestError", "OpenAIFrontend", "create_app"]

MAX_STOP_STRINGS = 4
MAX_SEED = 2**64 - 1


class RequestError(Exception):
    """A request the API refuses: HTTP status, message for people, and the offending field."""

    def __init__(self, message: str, param: Optional[str] = None, status: int = 400, error_type: str = "invalid_request_error", code: Optional[str] = None):
        super().__init__(message)
        self.message, self.param, self.status, self.error_type, self.code = message, param, status, error_type, code

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.error_type, "param": self.param, "code": self.code}}
        return JSONResponse(body, status_code=self.status)


# ---------------------------------------------------------------- field validation


def _number(body: dict, name: str, default: float, *, lo: float, hi: float, lo_open: bool = False) -> float:
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise RequestError(f"'{name}' must be a number, got {value!r}", name)
    if value < lo or (lo_open and value == lo) or value > hi:
        bracket = "(" if lo_open else "["
        raise RequestError(f"'{name}' must be in {bracket}{lo:g}, {hi:g}], got {value!r}", name)
    return float(value)


def _integer(body: dict, name: str, default: Optional[int], *, lo: int, hi: Optional[int] = None) -> Optional[int]:
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(f"'{name}' must be an integer, got {value!r}", name)
    if value < lo or (hi is not None and value > hi):
        upper = f" and <= {hi}" if hi is not None else ""
        raise RequestError(f"'{name}' must be >= {lo}{upper}, got {value}", name)
    return value


def _boolean(body: dict, name: str, default: bool) -> bool:
    value = body.get(name, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise RequestError(f"'{name}' must be true or false, got {value!r}", name)
    return value


def _stop(body: dict) -> tuple[str, ...]:
    value = body.get("stop")
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        raise RequestError("'stop' must be a string or a list of strings", "stop")
    if len(value) > MAX_STOP_STRINGS:
        raise RequestError(f"'stop' takes at most {MAX_STOP_STRINGS} strings, got {len(value)}", "stop")
    if any(s == "" for s in value):
        raise RequestError("'stop' strings must not be empty", "stop")
    return tuple(value)


def _unsupported(body: dict) -> None:
    """Refuse OpenAI options this server does not implement rather than silently ignoring them."""
    checks = [
        ("n", lambda v: v in (None, 1), "only n = 1 is supported"),
        ("best_of", lambda v: v in (None, 1), "only best_of = 1 is supported"),
        ("echo", lambda v: v in (None, False), "echo is not supported"),
        ("logprobs", lambda v: v in (None, False, 0), "logprobs are not supported"),
        ("top_logprobs", lambda v: v in (None, 0), "top_logprobs are not supported"),
        ("suffix", lambda v: v in (None, ""), "suffix is not supported"),
        ("presence_penalty", lambda v: v in (None, 0, 0.0), "presence_penalty is not supported (it would change the target distribution)"),
        ("frequency_penalty", lambda v: v in (None, 0, 0.0), "frequency_penalty is not supported (it would change the target distribution)"),
        ("logit_bias", lambda v: v in (None, {}), "logit_bias is not supported"),
        ("tools", lambda v: v in (None, []), "tools are not supported"),
    ]
    for name, ok, message in checks:
        if name in body and not ok(body[name]):
            raise RequestError(message, name)


@dataclass(frozen=True)
class _Parsed:
    request: GenerationRequest
    stream: bool
    include_usage: bool


class OpenAIFrontend:
    """OpenAI-compatible endpoints over a `DraftEngine`; `app` is the ASGI application."""

    def __init__(self, engine: DraftEngine, model_id: Callable[[], str], max_context_tokens: int, health: Callable[[], dict],
                 stats: Optional[Callable[[], dict]] = None):
        self.engine = engine
        self.tokenizer = engine.draft.tokenizer
        self._model_id = model_id
        self.max_context_tokens = max_context_tokens
        self._health = health
        self._stats = stats or (lambda: engine.stats.to_dict())
        self.app = Starlette(routes=[
            Route("/health", self.health, methods=["GET"]),
            Route("/stats", self.stats, methods=["GET"]),
            Route("/v1/models", self.models, methods=["GET"]),
            Route("/v1/completions", self.completions, methods=["POST"]),
            Route("/v1/chat/completions", self.chat_completions, methods=["POST"]),
        ])

    # ------------------------------------------------------------ simple endpoints

    async def health(self, request: Request) -> Response:
        info = self._health()
        return JSONResponse(info, status_code=200 if info.get("status") == "ok" else 503)

    async def stats(self, request: Request) -> Response:
        return JSONResponse(self._stats())

    async def models(self, request: Request) -> Response:
        card = {"id": self._model_id(), "object": "model", "created": 0, "owned_by": "edgespec", "max_model_len": self.max_context_tokens}
        return JSONResponse({"object": "list", "data": [card]})

    # ------------------------------------------------------------ parsing

    async def _body(self, request: Request) -> dict:
        try:
            body = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise RequestError(f"the request body is not valid JSON: {exc}") from None
        if not isinstance(body, dict):
            raise RequestError("the request body must be a JSON object")
        model = body.get("model")
        if model is not None and not isinstance(model, str):
            raise RequestError("'model' must be a string", "model")
        return body

    def _encode_text(self, text: str) -> list[int]:
        return encode_text(self.tokenizer, text)

    def _prompt_ids(self, body: dict) -> list[int]:
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
            prompt = prompt[0]  # a batch of one
        if isinstance(prompt, str):
            return self._encode_text(prompt)
        if isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            vocab = self.engine.draft.vocab_size
            bad = [t for t in prompt if not 0 <= t < vocab]
            if bad:
                raise RequestError(f"token ids must be in [0, {vocab}), got {bad[0]}", "prompt")
            return list(prompt)
        if prompt is None:
            raise RequestError("'prompt' is required", "prompt")
        if isinstance(prompt, list) and len(prompt) > 1 and all(isinstance(p, (str, list)) for p in prompt):
            raise RequestError("one prompt per request is supported; send several requests", "prompt")
        raise RequestError("'prompt' must be a string or a non-empty list of token ids", "prompt")

    def _chat_ids(self, body: dict) -> list[int]:
        if not getattr(self.tokenizer, "chat_template", None):
            raise RequestError(f"model {self._model_id()!r} has no chat template; use /v1/completions", "messages", code="chat_template_missing")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise RequestError("'messages' must be a non-empty list", "messages")
        clean = []
        for i, msg in enumerate(messages):
            if not isinstance(msg, dict) or not isinstance(msg.get("role"), str):
                raise RequestError(f"messages[{i}] must be an object with a 'role'", f"messages[{i}].role")
            content = msg.get("content")
            if isinstance(content, list):  # content parts: text only
                if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content):
                    raise RequestError(f"messages[{i}].content parts must be text parts", f"messages[{i}].content")
                content = "".join(p["text"] for p in content)
            if not isinstance(content, str):
                raise RequestError(f"messages[{i}].content must be a string", f"messages[{i}].content")
            clean.append({"role": msg["role"], "content": content})
        try:
            return encode_chat(self.tokenizer, clean)
        except Exception as exc:  # noqa: BLE001 — template errors (e.g. roles it refuses) are the request's fault
            raise RequestError(f"the chat template refused the messages: {exc}", "messages") from None

    def _parse(self, body: dict, prompt_ids: list[int], *, chat: bool) -> _Parsed:
        _unsupported(body)
        if not prompt_ids:
            raise RequestError("the prompt has no tokens", "messages" if chat else "prompt")
        room = self.max_context_tokens - len(prompt_ids)
        if room < 1:
            raise RequestError(f"the prompt has {len(prompt_ids)} tokens; this model's maximum context length is {self.max_context_tokens} tokens", "messages" if chat else "prompt", code="context_length_exceeded")
        name = "max_completion_tokens" if chat and body.get("max_completion_tokens") is not None else "max_tokens"
        max_tokens = _integer(body, name, room if chat else 16, lo=1)
        if len(prompt_ids) + max_tokens > self.max_context_tokens:
            raise RequestError(
                f"this model's maximum context length is {self.max_context_tokens} tokens; you requested "
                f"{len(prompt_ids) + max_tokens} ({len(prompt_ids)} in the prompt, {max_tokens} in the completion)", name, code="context_length_exceeded")
        temperature = _number(body, "temperature", 1.0, lo=0.0, hi=100.0)
        top_p = _number(body, "top_p", 1.0, lo=0.0, hi=1.0, lo_open=True)
        top_k = _integer(body, "top_k", 0, lo=-1)
        seed = _integer(body, "seed", None, lo=0, hi=MAX_SEED)
        stream = _boolean(body, "stream", False)
        options = body.get("stream_options")
        if options is not None and not isinstance(options, dict):
            raise RequestError("'stream_options' must be an object", "stream_options")
        include_usage = _boolean(options or {}, "include_usage", False)
        ignore_eos = _boolean(body, "ignore_eos", False)
        sampling = SamplingParams(temperature=temperature, top_k=max(top_k, 0), top_p=top_p)
        request = GenerationRequest(tuple(prompt_ids), max_tokens, sampling, seed, _stop(body), stop_at_eos=not ignore_eos, coupled=seed is not None)
        return _Parsed(request, stream, include_usage)

    # ------------------------------------------------------------ completions

    async def completions(self, request: Request) -> Response:
        try:
            body = await self._body(request)
            parsed = self._parse(body, self._prompt_ids(body), chat=False)
        except RequestError as err:
            return err.response()
        return await self._run(parsed, chat=False)

    async def chat_completions(self, request: Request) -> Response:
        try:
            body = await self._body(request)
            parsed = self._parse(body, self._chat_ids(body), chat=True)
        except RequestError as err:
            return err.response()
        return await self._run(parsed, chat=True)

    async def _run(self, parsed: _Parsed, *, chat: bool) -> Response:
        handle = self.engine.submit(parsed.request)
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        created = int(time.time())
        if parsed.stream:
            return StreamingResponse(self._events(handle, parsed, rid, created, chat), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        try:
            done = await handle.result()
        except GenerationFailed as exc:
            return RequestError(str(exc), status=503, error_type="service_unavailable", code="verifier_unavailable").response()
        finally:
            handle.cancel()  # no-op when finished; abandons the session if this task was cancelled
        choice: dict[str, Any] = {"index": 0, "finish_reason": done.finish_reason, "logprobs": None}
        if chat:
            choice["message"] = {"role": "assistant", "content": done.text}
        else:
            choice["text"] = done.text
        return JSONResponse({
            "id": rid,
            "object": "chat.completion" if chat else "text_completion",
            "created": created,
            "model": self._model_id(),
            "choices": [choice],
            "usage": _usage(done),
            "edgespec": done.stats.to_dict(),
        })

    async def _events(self, handle: RequestHandle, parsed: _Parsed, rid: str, created: int, chat: bool):
        obj = "chat.completion.chunk" if chat else "text_completion"
        model = self._model_id()

        def chunk(delta_text: Optional[str], finish_reason: Optional[str] = None, role: bool = False, **extra) -> str:
            choice: dict[str, Any] = {"index": 0, "finish_reason": finish_reason, "logprobs": None}
            if chat:
                delta: dict[str, Any] = {"role": "assistant"} if role else {}
                if delta_text is not None:
                    delta["content"] = delta_text
                choice["delta"] = delta
            else:
                choice["text"] = delta_text or ""
            return _sse({"id": rid, "object": obj, "created": created, "model": model, "choices": [choice], **extra})

        try:
            if chat:
                yield chunk("", role=True)
            async for event in handle:
                if isinstance(event, TextDelta) and event.text:
                    yield chunk(event.text)
                elif isinstance(event, Finished):
                    yield chunk(None if chat else "", event.finish_reason, edgespec=event.stats.to_dict())
                    if parsed.include_usage:
                        yield _sse({"id": rid, "object": obj, "created": created, "model": model, "choices": [], "usage": _usage(event)})
                elif isinstance(event, Failed):
                    yield _sse({"error": {"message": event.message, "type": "service_unavailable", "param": None, "code": "verifier_unavailable"}})
            yield "data: [DONE]\n\n"
        finally:
            handle.cancel()  # the client went away (or we are done: then a no-op)


def _sse(obj: dict) -> str:
    return f"data: {json.dumps(obj, separators=(',', ':'))}\n\n"


def _usage(done: Finished) -> dict:
    return {"prompt_tokens": done.prompt_tokens, "completion_tokens": done.completion_tokens, "total_tokens": done.prompt_tokens + done.completion_tokens}


def create_app(engine: DraftEngine, model_id: Callable[[], str], max_context_tokens: int, health: Callable[[], dict],
               stats: Optional[Callable[[], dict]] = None) -> Starlette:
    """The ASGI app of a drafter node."""
    return OpenAIFrontend(engine, model_id, max_context_tokens, health, stats).app
