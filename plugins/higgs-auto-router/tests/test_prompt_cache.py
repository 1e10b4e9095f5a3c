"""The classifier's prompt, history trimming, answer regex and lenient parsing; the prefix-keyed cache."""

from __future__ import annotations

import json
import re

from higgs.messages import ChatRequest, ImageBlock, Message, TextBlock, ThinkingBlock, ToolResultBlock, ToolUseBlock

from higgs_auto_router.cache import DecisionCache, prefix_keys
from higgs_auto_router.prompt import (
    ANSWER_PREFIX,
    Candidate,
    answer_regex,
    build_prompt,
    conversation_items,
    parse_answer,
    trim_history,
)

CANDIDATES = [Candidate("code", "Writing code"), Candidate("code-review", "Reviewing code"),
              Candidate("chat", "Small talk"), Candidate("a.b+c", "Odd name")]


class CharTokens:
    """One token per character: exact, readable budgets."""

    def encode(self, text: str) -> list[int]:
        return [ord(c) for c in text]

    def decode(self, ids: list[int]) -> str:
        return "".join(chr(i) for i in ids)


def _msg(role, *blocks):
    return Message(role=role, content=list(blocks))


def test_conversation_items_skip_system_and_summarise_tools():
    request = ChatRequest(model="auto", system=[TextBlock(text="SECRET SYSTEM")], messages=[
        _msg("user", TextBlock(text="fix my bug"), ImageBlock(url="http://x/y.png")),
        _msg("assistant", ThinkingBlock(thinking="hmm"), ToolUseBlock(id="t1", name="read", input={"path": "a.py"})),
        _msg("user", ToolResultBlock(tool_use_id="t1", content=[TextBlock(text="print(1)")])),
        _msg("assistant", ThinkingBlock(thinking="only thinking")),
    ])
    items = conversation_items(request)
    assert items == [
        {"role": "user", "content": "fix my bug[image]"},
        {"role": "assistant", "content": '[tool call read: {"path": "a.py"}]'},
        {"role": "user", "content": "[tool result: print(1)]"},
    ]
    assert "SECRET" not in build_prompt(CANDIDATES, items)


def test_prompt_lists_routes_and_conversation_as_json():
    items = [{"role": "user", "content": 'say "hi"'}]
    prompt = build_prompt(CANDIDATES, items)
    routes = json.loads(re.search(r"<routes>\n\n(.*?)\n\n</routes>", prompt, re.S).group(1))
    assert routes[0] == {"name": "code", "description": "Writing code"}
    conversation = json.loads(re.search(r"<conversation>\n\n(.*?)\n\n</conversation>", prompt, re.S).group(1))
    assert conversation == items
    assert '{"route": "other"}' in prompt


def test_trim_keeps_the_most_recent_messages_within_budget():
    tokens = CharTokens()
    items = [{"role": "user", "content": f"message {i} " + "x" * 20} for i in range(10)]
    cost = len(json.dumps(items[0])) + 1
    kept = trim_history(items, tokens, cost * 3 + 5)
    assert kept == items[-3:]
    assert trim_history(items, tokens, 10_000) == items


def test_trim_cuts_an_oversized_last_message_from_the_front():
    tokens = CharTokens()
    items = [{"role": "user", "content": "old"}, {"role": "user", "content": "A" * 500 + " the actual question"}]
    kept = trim_history(items, tokens, 80)
    assert len(kept) == 1 and kept[0]["content"].endswith("the actual question")
    assert len(json.dumps(kept[0])) + 1 <= 80
    assert trim_history(items, tokens, 5) == []


def test_answer_regex_matches_exactly_the_answers():
    regex = re.compile(answer_regex(CANDIDATES))
    for answer in ["code", "code-review", "chat", "a.b+c", "other"]:
        assert regex.fullmatch(answer)
    for answer in ["none", "cod", "codex", "abbc", "a.bbc", ""]:
        assert not regex.fullmatch(answer)


def test_lenient_parse():
    assert parse_answer('code-review"}', CANDIDATES) == "code-review"
    assert parse_answer("chat", CANDIDATES) == "chat"
    assert parse_answer('{"route": "code"}', CANDIDATES) == "code"
    assert parse_answer("CHAT", CANDIDATES) == "chat"
    assert parse_answer('other"}', CANDIDATES) is None
    assert parse_answer("none", CANDIDATES) is None
    assert parse_answer("I would pick code-review here", CANDIDATES) == "code-review"
    assert parse_answer("qwzx 3dodin", CANDIDATES) is None
    assert ANSWER_PREFIX == '{"route": "'


def test_prefix_keys_and_longest_prefix_hit():
    a = [{"role": "user", "content": "write a parser"}]
    b = [*a, {"role": "assistant", "content": "here it is"}, {"role": "user", "content": "now tests"}]
    keys_a, keys_b = prefix_keys(a), prefix_keys(b)
    assert keys_b[0] == keys_a[0] and len(set(keys_b)) == 3
    cache = DecisionCache(8)
    assert cache.lookup(keys_b) is None
    cache.store(keys_a[-1], "code")
    hit = cache.lookup(keys_b)
    assert hit is not None and hit.route == "code" and hit.messages == 1
    cache.store(keys_b[-1], None)  # "no route fits" is remembered too
    hit = cache.lookup(keys_b)
    assert hit is not None and hit.route is None and hit.messages == 3
    other = prefix_keys([{"role": "assistant", "content": "write a parser"}])
    assert cache.lookup(other) is None  # the role is part of the key


def test_cache_is_bounded_lru_and_can_be_off():
    cache = DecisionCache(2)
    for i in range(3):
        cache.store(f"k{i}", "r")
    assert len(cache) == 2 and cache.lookup(["k0"]) is None and cache.lookup(["k2"]) is not None
    off = DecisionCache(0)
    off.store("k", "r")
    assert off.lookup(["k"]) is None
