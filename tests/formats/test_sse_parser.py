"""The incremental SSE parser: line ends, comments, multi-line data, and arbitrary chunk boundaries."""

from __future__ import annotations

from fmt_helpers import aiter_bytes, collect, split_at
from hypothesis import given, settings
from hypothesis import strategies as st

from higgs.sse import SSEEvent, SSEParser, encode, encode_json, iter_data, iter_events


def parse_all(pieces: list[bytes]) -> list[SSEEvent]:
    parser = SSEParser()
    events = [e for piece in pieces for e in parser.feed(piece)]
    return events + list(parser.close())


def test_basic_fields_and_comments():
    body = b": keep-alive\nevent: ping\ndata: {}\nid: 7\nretry: 1500\n\ndata:no-space\n\n"
    events = parse_all([body])
    assert events == [SSEEvent(data="{}", event="ping", id="7", retry=1500),
                      SSEEvent(data="no-space", event="message", id="7", retry=1500)]


def test_multiline_data_and_all_line_endings():
    body = b"data: a\r\ndata: b\r\n\r\ndata: c\rdata: d\r\rdata: e\n\n"
    assert [e.data for e in parse_all([body])] == ["a\nb", "c\nd", "e"]


def test_cr_lf_split_across_chunks_is_one_line_end():
    # "\r" ends one chunk and "\n" starts the next: that is one line end, not an empty line.
    events = parse_all([b"data: x\r", b"\ndata: y\r\n\r\n"])
    assert [e.data for e in events] == ["x\ny"]


def test_utf8_character_split_across_chunks():
    body = "data: héllo ✓\n\n".encode()
    cut = body.index("✓".encode()) + 1
    assert [e.data for e in parse_all([body[:cut], body[cut:]])] == ["héllo ✓"]


def test_bom_and_event_without_data_is_not_dispatched():
    events = parse_all(["\ufeffevent: lonely\n\ndata: real\n\n".encode()])
    assert events == [SSEEvent(data="real")]


def test_trailing_event_without_blank_line_is_dispatched_at_close():
    assert [e.data for e in parse_all([b"data: [DONE]"])] == ["[DONE]"]
    assert [e.data for e in parse_all([b"data: [DONE]\n"])] == ["[DONE]"]


def test_encode_round_trip():
    body = encode("line1\nline2", event="note") + encode_json({"a": "é"})
    events = parse_all([body])
    assert events[0] == SSEEvent(data="line1\nline2", event="note")
    assert events[1].json() == {"a": "é"}
    assert b"\\u" not in body  # JSON is sent as UTF-8, not escaped


async def test_iter_events_and_iter_data_over_async_bytes():
    body = b"event: a\ndata: 1\n\ndata: 2\n\n"
    events = await collect(iter_events(aiter_bytes(split_at(body, range(0, len(body), 3)))))
    assert [(e.event, e.data) for e in events] == [("a", "1"), ("message", "2")]
    assert await collect(iter_data(aiter_bytes([body]))) == ["1", "2"]


_field_text = st.text(alphabet=st.characters(blacklist_characters="\r\n", blacklist_categories=("Cs",)), max_size=20)


@settings(max_examples=150, deadline=None)
@given(
    events=st.lists(st.tuples(st.sampled_from([None, "message_start", "x"]), st.lists(_field_text, min_size=1,
                                                                                      max_size=3)), max_size=6),
    newline=st.sampled_from(["\n", "\r\n", "\r"]),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=12),
)
def test_any_chunking_gives_the_same_events(events, newline, cuts):
    lines = []
    for name, data in events:
        if name:
            lines.append(f"event: {name}")
        lines.extend(f"data: {d}" for d in data)
        lines.append("")
    body = newline.join(lines).encode() + (newline.encode() if lines else b"")
    expected = [SSEEvent(data="\n".join(d), event=n or "message") for n, d in events]
    assert parse_all([body]) == expected
    assert parse_all(split_at(body, cuts)) == expected
