"""Bad input never crashes the gateway: arbitrary JSON bodies get a 4xx in the caller's format, never a 500."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from higgs.testing import FakeProvider, app_client, build_app

JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                                 max_size=3), max_leaves=10)
FIELDS = ["model", "messages", "max_tokens", "stream", "tools", "tool_choice", "system", "temperature",
          "response_format", "stop", "content", "role", "n", "input", "prompt"]
BODIES = st.dictionaries(st.sampled_from(FIELDS), JSON, max_size=6) | JSON
PATHS = ["/v1/chat/completions", "/v1/messages", "/v1/completions", "/v1/embeddings", "/v1/messages/count_tokens"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=BODIES, path=st.sampled_from(PATHS))
async def test_arbitrary_bodies_never_cause_a_500(body, path):
    app = build_app(providers={"higgs": FakeProvider(local=True, models=["tiny"])})
    async with app_client(app) as client:
        resp = await client.post(path, data=json.dumps(body), headers={"content-type": "application/json"})
        payload = await resp.json()
    assert resp.status < 500, (path, body, payload)
    if resp.status >= 400:
        message = payload["error"]["message"]
        assert message and ("type" in payload or "type" in payload["error"])
