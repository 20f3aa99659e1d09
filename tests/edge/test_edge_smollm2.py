"""The smollm2 pair served for real (a verifier node and a drafter node on loopback): greedy output equals AD, and a chat completion through
the official `openai` client equals the target's own greedy chat answer computed by transformers (`apply_chat_template` + `generate`)."""

import asyncio

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from edgespec.bench.prompts import INSTRUCTIONS
from edgespec.models.decoder import GenerationConfig, generate_ad
from edgespec.models.prompting import encode_chat

from edge_helpers import LOOPBACK, client, edge_node, run, verifier_node

MAX_TOKENS = 32


def test_served_greedy_completions_equal_ad(smollm2_pair):
    """A text prompt and a chat request, top-K q with pipelining: the same tokens as target-only decoding; prompt ids as transformers gives them."""
    draft, target = smollm2_pair
    text = "The three primary colours are"
    messages = [{"role": "user", "content": INSTRUCTIONS[1]}]
    cfg = GenerationConfig(max_new_tokens=MAX_TOKENS, stop_at_eos=False)
    prompt_ids = target.tokenizer(text).input_ids
    want_text, want_chat = (generate_ad(target, [ids], cfg)[0].text for ids in (prompt_ids, encode_chat(target.tokenizer, messages)))

    async def main():
        async with verifier_node(target, max_top_k=8) as v, edge_node(draft, [f"{LOOPBACK}:{v.port}"], q_mode="topk", top_k=8, pipeline=True,
                                                                      gamma_policy="static", gamma=4) as node:
            async with client(node) as http:
                body = {"max_tokens": MAX_TOKENS, "temperature": 0, "ignore_eos": True}
                return await asyncio.gather(http.post("/v1/completions", json={"prompt": text, **body}),
                                            http.post("/v1/chat/completions", json={"messages": messages, **body}))

    completion, chat = (r.json() for r in run(main(), timeout_s=300))
    assert completion["choices"][0]["text"] == want_text
    assert completion["usage"]["prompt_tokens"] == len(prompt_ids)
    assert chat["choices"][0]["message"]["content"] == want_chat
    assert completion["edgespec"]["accepted_tokens"] > 0 and chat["edgespec"]["draft_rejections"] == 0


def _transformers_chat_answer(target_dir, messages, max_new_tokens: int) -> str:
    """What a transformers user gets: the chat template, greedy `generate`, the new tokens decoded."""
    tok = AutoTokenizer.from_pretrained(target_dir)
    model = AutoModelForCausalLM.from_pretrained(target_dir, dtype=torch.float32).eval()
    inputs = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return tok.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)


def test_openai_client_chat_equals_transformers_greedy_answer(smollm2_pair, smollm2_dirs):
    from openai import OpenAI

    draft, target = smollm2_pair
    messages = [{"role": "user", "content": INSTRUCTIONS[0]}]
    want = _transformers_chat_answer(smollm2_dirs[1], messages, 48)

    async def main():
        async with verifier_node(target) as v, edge_node(draft, [f"{LOOPBACK}:{v.port}"], q_mode="topk", gamma_policy="heuristic") as node:
            api = OpenAI(base_url=f"{node.http_url}/v1", api_key="unused", max_retries=0, timeout=240)
            models = await asyncio.to_thread(api.models.list)
            reply = await asyncio.to_thread(api.chat.completions.create, model=models.data[0].id, messages=messages, temperature=0, max_tokens=48)
            return models, reply

    models, reply = run(main(), timeout_s=300)
    assert reply.object == "chat.completion" and reply.choices[0].message.role == "assistant"
    assert reply.choices[0].message.content == want
    assert reply.choices[0].finish_reason in ("stop", "length") and reply.usage.completion_tokens >= 1
    assert models.data[0].id
