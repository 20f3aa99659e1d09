"""The drafter node's HTTP API without a verifier: models, health, and OpenAI-style 400s naming the bad field."""

import pytest

from edge_helpers import LOOPBACK, client, edge_node, free_port, run


def test_models_health_and_validation_errors(toy_pair):
    draft, _ = toy_pair
    bad_requests = [
        ({"prompt": "w5", "max_tokens": 0}, "max_tokens"),
        ({"prompt": "w5", "max_tokens": "ten"}, "max_tokens"),
        ({"prompt": "w5", "max_tokens": 10_000}, "max_tokens"),  # over the context length
        ({"prompt": "w5", "temperature": -1}, "temperature"),
        ({"prompt": "w5", "top_p": 0}, "top_p"),
        ({"prompt": "w5", "top_k": 1.5}, "top_k"),
        ({"prompt": "w5", "seed": -3}, "seed"),
        ({"prompt": "w5", "stream": "yes"}, "stream"),
        ({"prompt": "w5", "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"prompt": "w5", "stop": 7}, "stop"),
        ({"prompt": "w5", "n": 2}, "n"),
        ({"prompt": "w5", "logprobs": 3}, "logprobs"),
        ({"prompt": "w5", "presence_penalty": 0.5}, "presence_penalty"),
        ({}, "prompt"),
        ({"prompt": 12}, "prompt"),
        ({"prompt": [1, 2, 999]}, "prompt"),
        ({"prompt": ["w5", "w6"]}, "prompt"),
    ]

    async def main():
        async with edge_node(draft, [f"{LOOPBACK}:{free_port()}"], wait=False, model_name="toy") as node:
            async with client(node) as http:
                models = (await http.get("/v1/models")).json()
                assert models["object"] == "list" and models["data"][0]["id"] == "toy"
                assert models["data"][0]["max_model_len"] == 512
                health = await http.get("/health")
                assert health.status_code == 503 and health.json()["status"] == "no_verifier"
                for body, param in bad_requests:
                    r = await http.post("/v1/completions", json=body)
                    assert r.status_code == 400, (body, r.text)
                    err = r.json()["error"]
                    assert err["param"] == param and err["type"] == "invalid_request_error" and err["message"], (body, err)
                r = await http.post("/v1/completions", content=b"{not json")
                assert r.status_code == 400 and "JSON" in r.json()["error"]["message"]
                r = await http.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
                assert r.status_code == 400 and "chat template" in r.json()["error"]["message"]
                r = await http.get("/v1/nothing")
                assert r.status_code == 404

    run(main())


def test_request_fails_with_503_when_no_verifier_comes(toy_pair):
    draft, _ = toy_pair

    async def main():
        async with edge_node(draft, [f"{LOOPBACK}:{free_port()}"], wait=False, unavailable_timeout_s=0.5) as node:
            async with client(node) as http:
                r = await http.post("/v1/completions", json={"prompt": "w5 w6", "max_tokens": 4, "temperature": 0})
                assert r.status_code == 503
                assert "no verifier" in r.json()["error"]["message"]
                assert node.engine.active_sessions == 0

    run(main())


def test_taken_http_port_is_an_oserror(toy_pair):
    import socket

    from edgespec.edge import EdgeConfig, EdgeNode

    draft, _ = toy_pair
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        s.listen()
        port = s.getsockname()[1]

        async def main():
            node = EdgeNode(EdgeConfig(verifiers=(f"{LOOPBACK}:{free_port()}",), http_host=LOOPBACK, http_port=port), draft=draft)
            with pytest.raises(OSError):
                await node.start()

        run(main())
