"""A radix tree over prompt token ids whose nodes hold the KV-cache of their tokens.

Every edge of the tree is a run of token ids; its node keeps, per attention layer, the keys and values of
exactly those positions (``(1, heads, len(edge), dim)`` arrays, copied out of the request's cache). A new
prompt walks the tree from the root; the KV blocks along the matched path are concatenated into a fresh
``KVCache`` and only the unmatched rest of the prompt is prefilled. After its prefill a request inserts
its prompt, so requests that share a system prompt, tool definitions or earlier turns of a conversation
reuse each other's work.

A node where an inserted prompt ends also keeps that prompt's last logits (the model's output after its
last token, before any logits processor; one row of the vocabulary). An exact repeat of the prompt is then
a hit of all its tokens: the first new token is sampled from the stored row, and no model call is needed
before decoding starts. Any other prompt leaves at least one token to compute.

Memory: the tree holds at most ``budget_bytes`` of KV arrays and stored logits; inserting beyond that
evicts least recently used leaves (a node is touched whenever a lookup passes through it). A budget of 0
disables the cache.

Only plain ``KVCache`` layers can be rebuilt from a prefix. Sliding-window layers (``RotatingKVCache``)
forget old positions and SSM layers (``ArraysCache``) hold a state that cannot be cut at an arbitrary
token, so models with such layers are not cached (``PrefixCache.supports`` says why, once per model).

Runs on the engine thread only; not thread-safe.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

#: Prompts shorter than this are neither looked up nor inserted (nothing worth sharing).
MIN_TOKENS = 16


@dataclass(eq=False)
class _Node:
    tokens: list[int]
    kv: list[tuple[Any, Any]]  # per layer: (keys, values) of this edge's positions
    parent: _Node | None
    children: dict[int, _Node] = field(default_factory=dict)
    last_used: float = 0.0
    #: The logits after this node's last token, where an inserted prompt ended here.
    logits: Any = None

    @property
    def nbytes(self) -> int:
        stored = int(self.logits.nbytes) if self.logits is not None else 0
        return stored + sum(int(k.nbytes) + int(v.nbytes) for k, v in self.kv)


@dataclass
class PrefixHit:
    """The result of a lookup: how many prompt tokens are cached, and a cache holding them (or None); for an
    exact repeat (every token cached), the stored logits after the prompt's last token."""

    tokens: int
    cache: list[Any] | None
    logits: Any = None


class PrefixCache:
    """Radix trees (one per model) of KV blocks under one memory budget with LRU eviction."""

    def __init__(self, budget_bytes: int) -> None:
        self.budget_bytes = budget_bytes
        self._roots: dict[int, _Node] = {}
        self._refused: dict[int, str] = {}
        self.nbytes = 0
        self.lookups = 0
        self.hits = 0
        self.hit_tokens = 0
        self.lookup_tokens = 0
        self.evictions = 0

    @property
    def enabled(self) -> bool:
        """Whether the cache has any room at all."""
        return self.budget_bytes > 0

    def supports(self, key: int, cache: list[Any], name: str) -> bool:
        """Whether a model whose fresh cache is ``cache`` can be prefix-cached (logs the reason once)."""
        if not self.enabled:
            return False
        if key in self._refused:
            return False
        from mlx_lm.models.cache import KVCache

        kinds = sorted({type(c).__name__ for c in cache if type(c) is not KVCache})
        if kinds:
            reason = (f"its cache layers ({', '.join(kinds)}) cannot be rebuilt from a token prefix "
                      "(sliding windows forget old positions, SSM states cannot be cut at a token)")
            self._refused[key] = reason
            log.info("prefix cache disabled for %s: %s", name, reason)
            return False
        return True

    def refused(self) -> dict[int, str]:
        """Models (by key) for which the cache is off, with the reason."""
        return dict(self._refused)

    # -- lookup -------------------------------------------------------------------------------------
    def lookup(self, key: int, prompt: list[int]) -> PrefixHit:
        """The longest cached prefix of ``prompt``, as a fresh list of ``KVCache`` layers: every token
        where the prompt was inserted before and its last logits are stored, else at most
        ``len(prompt) - 1`` tokens (at least one is left to compute logits from)."""
        import mlx.core as mx
        from mlx_lm.models.cache import KVCache

        if len(prompt) < MIN_TOKENS:
            return PrefixHit(0, None)
        self.lookups += 1
        self.lookup_tokens += len(prompt)
        limit = len(prompt)
        node = self._roots.get(key)
        blocks: list[tuple[_Node, int]] = []  # (node, how many of its tokens are used)
        matched = 0
        now = time.monotonic()
        while node is not None and matched < limit:
            child = node.children.get(prompt[matched])
            if child is None:
                break
            n = _common(child.tokens, prompt, matched, limit)
            if n == 0:
                break
            child.last_used = now
            blocks.append((child, n))
            matched += n
            if n < len(child.tokens):
                break
            node = child
        logits = None
        if matched == len(prompt):
            last, n = blocks[-1]
            if n == len(last.tokens) and last.logits is not None:
                logits = last.logits
            else:  # keep one token to compute
                matched -= 1
                if n == 1:
                    blocks.pop()
                else:
                    blocks[-1] = (last, n - 1)
        if not matched:
            return PrefixHit(0, None)
        layers = len(blocks[0][0].kv)
        cache: list[Any] = []
        for layer in range(layers):
            keys = [b.kv[layer][0][..., :n, :] for b, n in blocks]
            values = [b.kv[layer][1][..., :n, :] for b, n in blocks]
            c = KVCache()  # type: ignore[no-untyped-call]
            c.keys = keys[0] if len(keys) == 1 else mx.concatenate(keys, axis=2)
            c.values = values[0] if len(values) == 1 else mx.concatenate(values, axis=2)
            c.offset = matched
            cache.append(c)
        self.hits += 1
        self.hit_tokens += matched
        return PrefixHit(matched, cache, logits)

    # -- insert -------------------------------------------------------------------------------------
    def insert(self, key: int, prompt: list[int], cache: list[Any], logits: Any = None) -> list[Any]:
        """Store the KV of ``prompt`` (held by ``cache``, whose first ``len(prompt)`` positions are the
        prompt's) where the tree lacks it, and ``logits`` (the model's output row after the prompt's last
        token) where it ends. Returns the new arrays (to be evaluated by the caller)."""
        import mlx.core as mx

        if len(prompt) < MIN_TOKENS or not self.enabled:
            return []
        stored = [] if logits is None else [mx.contiguous(logits)]
        root = self._roots.setdefault(key, _Node([], [], None))
        node, pos = root, 0
        now = time.monotonic()
        while pos < len(prompt):
            child = node.children.get(prompt[pos])
            if child is None:
                break
            n = _common(child.tokens, prompt, pos, len(prompt))
            child.last_used = now
            if n < len(child.tokens):
                child = self._split(child, n)
            node, pos = child, pos + n
        if pos >= len(prompt):  # every token is in the tree already; the prompt ends at ``node``
            if not stored or node.logits is not None:
                return []
            node.logits = stored[0]
            self.nbytes += int(node.logits.nbytes)
            self._evict(protect=node)
            return stored
        kv = []
        for c in cache:
            k, v = c.keys[..., pos : len(prompt), :], c.values[..., pos : len(prompt), :]
            kv.append((mx.contiguous(k), mx.contiguous(v)))
        leaf = _Node(list(prompt[pos:]), kv, node, last_used=now, logits=stored[0] if stored else None)
        node.children[leaf.tokens[0]] = leaf
        self.nbytes += leaf.nbytes
        self._evict(protect=leaf)
        return [a for pair in kv for a in pair] + stored

    def _split(self, node: _Node, n: int) -> _Node:
        """Cut ``node``'s edge after ``n`` tokens; return the new upper node (the parent of ``node``)."""
        assert node.parent is not None
        import mlx.core as mx

        def cut(a: Any, lo: int, hi: int | None) -> Any:
            return mx.contiguous(a[..., lo:hi, :])

        upper = _Node(node.tokens[:n], [(cut(k, 0, n), cut(v, 0, n)) for k, v in node.kv], node.parent,
                      last_used=node.last_used)
        node.parent.children[upper.tokens[0]] = upper
        node.tokens = node.tokens[n:]
        node.kv = [(cut(k, n, None), cut(v, n, None)) for k, v in node.kv]
        node.parent = upper
        upper.children[node.tokens[0]] = node
        mx.eval(upper.kv, node.kv)  # copies, so the old block's buffer is freed; the byte count is unchanged
        return upper

    def _evict(self, protect: _Node | None = None) -> None:
        """Drop least recently used leaves until the tree fits its budget."""
        while self.nbytes > self.budget_bytes:
            leaves = [n for n in self._nodes() if not n.children and n is not protect]
            if not leaves:
                if protect is not None and protect.parent is not None:
                    leaves = [protect]
                else:
                    return
            victim = min(leaves, key=lambda n: n.last_used)
            self._remove(victim)

    def _remove(self, node: _Node) -> None:
        assert node.parent is not None
        del node.parent.children[node.tokens[0]]
        self.nbytes -= node.nbytes
        self.evictions += 1

    def _nodes(self) -> list[_Node]:
        out: list[_Node] = []
        stack = [c for root in self._roots.values() for c in root.children.values()]
        while stack:
            node = stack.pop()
            out.append(node)
            stack.extend(node.children.values())
        return out

    def clear(self) -> None:
        """Forget everything."""
        self._roots.clear()
        self.nbytes = 0

    def state(self) -> dict[str, Any]:
        """Numbers for ``/metrics``."""
        return {
            "prefix_cache_bytes": self.nbytes,
            "prefix_cache_budget_bytes": self.budget_bytes,
            "prefix_cache_nodes": len(self._nodes()),
            "prefix_cache_lookups": self.lookups,
            "prefix_cache_hits": self.hits,
            "prefix_cache_hit_rate": round(self.hits / self.lookups, 4) if self.lookups else 0.0,
            "prefix_cache_token_hit_rate": round(self.hit_tokens / self.lookup_tokens, 4)
            if self.lookup_tokens else 0.0,
            "prefix_cache_evictions": self.evictions,
        }


def _common(edge: list[int], prompt: list[int], start: int, limit: int) -> int:
    """How many leading tokens of ``edge`` equal ``prompt[start:limit]``."""
    n = min(len(edge), limit - start)
    i = 0
    while i < n and edge[i] == prompt[start + i]:
        i += 1
    return i
