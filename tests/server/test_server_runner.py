"""VerifierRunner without sockets: batched ragged verification equals target-only decoding; KV rows are reused and freed."""

import torch

from edgespec.models.decoder import draft_blocks
from edgespec.server.runner import DraftItem, VerifierRunner, round_seed
from edgespec.spec.sampling import GREEDY, SamplingParams
from edgespec.spec.verify import DraftBatch

from server_helpers import PROMPTS, ad_tokens


def _item(key, position, tokens):
    return DraftItem(key, position, DraftBatch.from_blocks([tokens]))


def _decode(runner, draft, keys, prompts, max_new, gammas, closing=None):
    """Drive the runner like a drafter would: all live sessions in one batch per round, each with its own γ."""
    transcripts = {k: list(p) for k, p in zip(keys, prompts)}
    kvs = {k: draft.new_kv(1) for k in keys}
    gen = torch.Generator().manual_seed(0)
    live = list(keys)
    rounds = 0
    while live:
        items = []
        for j, k in enumerate(live):
            done = len(transcripts[k]) - len(prompts[keys.index(k)])
            g = min(gammas[(rounds + j) % len(gammas)], max_new - done - 1)
            block = draft_blocks(draft, kvs[k], [transcripts[k]], [g], GREEDY, "tokens", 4, gen).blocks[0]
            items.append(_item(k, len(transcripts[k]), block))
        results = runner.verify_batch(items)
        for item, res in zip(items, results):
            assert res.error is None
            assert runner.kv_tokens_in_use >= item.position + res.accepted
            transcripts[item.key] += item.draft.token_ids[: res.accepted].tolist() + [res.next_token_id]
            assert runner.transcript(item.key) == transcripts[item.key]
        live = [k for k in live if len(transcripts[k]) - len(prompts[keys.index(k)]) < max_new]
        rounds += 1
        if closing and rounds == closing[0]:
            runner.close(closing[1])
            live.remove(closing[1])
    return {k: transcripts[k][len(p):] for k, p in zip(keys, prompts)}


def test_batched_ragged_verification_equals_ad(toy_pair):
    draft, target = toy_pair
    runner = VerifierRunner(target)
    keys = [(1, i) for i in range(len(PROMPTS))]
    for k, p in zip(keys, PROMPTS):
        runner.open(k, p, GREEDY, seed=0)
    out = _decode(runner, draft, keys, PROMPTS, 12, gammas=[0, 3, 1, 4, 2])
    assert [out[k] for k in keys] == ad_tokens(target, PROMPTS, 12)
    assert runner.kv_rows == len(PROMPTS)
    for k in keys:
        runner.close(k)
    runner.reclaim()
    assert runner.kv_tokens_in_use == 0 and runner.kv_rows == 0 and runner.session_count == 0


def test_rows_are_reused_and_a_session_closed_midway_leaves_the_others_exact(toy_pair):
    draft, target = toy_pair
    runner = VerifierRunner(target)
    keys = [(1, i) for i in range(3)]
    for k, p in zip(keys, PROMPTS[:3]):
        runner.open(k, p, GREEDY, seed=0)
    out = _decode(runner, draft, keys, PROMPTS[:3], 10, gammas=[3], closing=(2, keys[1]))
    ref = ad_tokens(target, PROMPTS[:3], 10)
    assert out[keys[0]] == ref[0] and out[keys[2]] == ref[2]
    # a new session takes the freed row and decodes exactly, next to an old one
    runner.open((2, 1), PROMPTS[3], GREEDY, seed=0)
    runner.open((2, 2), PROMPTS[4], GREEDY, seed=0)
    out2 = _decode(runner, draft, [(2, 1), (2, 2)], PROMPTS[3:5], 8, gammas=[2, 4])
    assert [out2[(2, 1)], out2[(2, 2)]] == ad_tokens(target, PROMPTS[3:5], 8)
    assert runner.kv_rows <= 4


def test_resume_from_transcript_continues_exactly(toy_pair):
    draft, target = toy_pair
    ref = ad_tokens(target, [PROMPTS[0]], 12)[0]
    runner = VerifierRunner(target)
    runner.resume("s", PROMPTS[0] + ref[:5], len(PROMPTS[0]), GREEDY, seed=0)
    out = _decode(runner, draft, ["s"], [PROMPTS[0] + ref[:5]], 7, gammas=[3])
    assert ref[:5] + out["s"] == ref


def test_a_mixed_batch_whose_rows_are_not_in_item_order_verifies_each_session_exactly(toy_pair):
    """Greedy sessions are verified together in the logits' row order, sampled ones on their own rows; item order does not matter."""
    draft, target = toy_pair
    sampled = SamplingParams(temperature=1.0)
    runner = VerifierRunner(target)
    for key, prompt in (("old", PROMPTS[0]), ("b", PROMPTS[1])):
        runner.open(key, prompt, GREEDY, seed=0)
    runner.verify_batch([_item("old", runner.position("old"), []), _item("b", runner.position("b"), [])])  # rows 0 and 1
    runner.close("old")
    runner.reclaim()
    runner.open("c", PROMPTS[2], GREEDY, seed=0)  # takes the freed row 0, before b's
    starts = [runner.transcript(k) for k in ("b", "c")]
    greedy_only = _decode(runner, draft, ["b", "c"], starts, 4, gammas=[3])
    runner.open("s", PROMPTS[3], sampled, seed=5)
    keys = ["b", "c", "s"]
    out = _decode(runner, draft, keys, [runner.transcript(k) for k in keys], 8, gammas=[3])
    assert [greedy_only["b"] + out["b"], greedy_only["c"] + out["c"]] == ad_tokens(target, starts, 12)
    alone = VerifierRunner(target)
    alone.open("s", PROMPTS[3], sampled, seed=5)
    assert out["s"] == _decode(alone, draft, ["s"], [PROMPTS[3]], 8, gammas=[3])["s"]


def test_sampled_rounds_are_reproducible_from_seed_and_position(toy_pair):
    _, target = toy_pair
    params = SamplingParams(temperature=1.0)
    outs = []
    for _ in range(2):
        runner = VerifierRunner(target)
        runner.open("s", PROMPTS[2], params, seed=123)
        for _ in range(6):
            pos = runner.position("s")
            runner.verify_batch([_item("s", pos, [])])  # γ = 0: one sampled token per round
        outs.append(runner.transcript("s"))
    assert outs[0] == outs[1]
    assert round_seed(123, 5) != round_seed(123, 6) and round_seed(123, 5) == round_seed(123, 5)


def test_stale_or_closed_items_do_not_run(toy_pair):
    _, target = toy_pair
    runner = VerifierRunner(target)
    runner.open("a", [3, 4], GREEDY, seed=0)
    res = runner.verify_batch([_item("a", 1, [5]), _item("gone", 2, [5])])
    assert res[0].error and "position" in res[0].error
    assert res[1] is None
    assert runner.kv_tokens_in_use == 0


class _Hooked:
    """Wrap a CausalLM so a test can act during (or fail) the next forward."""

    def __init__(self, lm, hook):
        self._lm, self._hook = lm, hook

    def __getattr__(self, name):
        return getattr(self._lm, name)

    def forward(self, kv, new_tokens, last_n=None):
        if self._hook is not None:
            hook, self._hook = self._hook, None
            hook()
        return self._lm.forward(kv, new_tokens, last_n)


def test_a_session_closed_during_the_forward_is_freed(toy_pair):
    _, target = toy_pair
    runner = VerifierRunner(target)
    runner.open("a", [3, 4, 5], GREEDY, seed=0)
    runner.open("b", [6, 7], GREEDY, seed=0)
    runner.target = _Hooked(target, lambda: runner.close("a"))
    res = runner.verify_batch([_item("a", 3, [8, 9]), _item("b", 2, [8])])
    assert res[0] is not None and res[1].error is None
    runner.reclaim()
    assert runner.session_count == 1 and runner.kv_tokens_in_use == 2 + res[1].accepted
    runner.close("b")
    runner.reclaim()
    assert runner.kv_tokens_in_use == 0 and runner.kv_rows == 0


def test_a_failed_forward_drops_the_cache_and_sessions_rebuild_it(toy_pair):
    draft, target = toy_pair
    ref = ad_tokens(target, PROMPTS[:2], 8)
    runner = VerifierRunner(target)
    for i, p in enumerate(PROMPTS[:2]):
        runner.open(i, p, GREEDY, seed=0)
    first = runner.verify_batch([_item(i, len(p), []) for i, p in enumerate(PROMPTS[:2])])

    def boom():
        raise RuntimeError("simulated device failure")

    runner.target = _Hooked(target, boom)
    try:
        runner.verify_batch([_item(i, len(p) + 1, []) for i, p in enumerate(PROMPTS[:2])])
    except RuntimeError:
        pass
    else:
        raise AssertionError("the forward failure must propagate")
    assert runner.kv_tokens_in_use == 0 and runner.kv_rows == 0 and runner.session_count == 2
    out = _decode(runner, draft, [0, 1], [p + [r.next_token_id] for p, r in zip(PROMPTS[:2], first)], 7, gammas=[3])
    assert [[first[i].next_token_id] + out[i] for i in (0, 1)] == ref


def test_a_batch_whose_sessions_all_closed_still_counts_the_freed_kv(toy_pair):
    """The node's batch loop can hand over drafts whose sessions closed after the batch was formed: the batch
    then reclaims their rows and verifies nothing, and the KV count must follow (it once stayed stale)."""
    _, target = toy_pair
    runner = VerifierRunner(target)
    key = (1, 0)
    runner.open(key, PROMPTS[0], GREEDY, seed=0)
    position = len(PROMPTS[0])
    assert runner.verify_batch([_item(key, position, [3, 4])])[0].error is None
    assert runner.kv_tokens_in_use > 0 and runner.kv_rows == 1
    runner.close(key)
    assert runner.verify_batch([_item(key, position + 1, [5])]) == [None]
    assert runner.kv_rows == 0 and runner.kv_tokens_in_use == 0 and not runner.needs_reclaim
