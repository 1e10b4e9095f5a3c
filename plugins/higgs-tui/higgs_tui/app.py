"""The dashboard: five tabs fed by one poll of ``/metrics`` (and ``/v1/system``) per interval.

Tabs: overview (rates, latency, TTFT, throughput and sparklines over the retention window), models (per
model numbers plus each provider's engine state), providers, routing (which rules hit how often) and
errors (recent failures with request ids). A failed poll keeps the last numbers on screen, marks them
stale and retries, so the dashboard survives a server restart.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.css.query import NoMatches
from textual.widgets import DataTable, Footer, Header, Sparkline, Static, TabbedContent, TabPane

from higgs_tui.client import MetricsClient, Snapshot, Unreachable

TABS = ("overview", "models", "providers", "routing", "errors")
WINDOW = "1m"
WIDE_WINDOW = "5m"


def fmt_ms(value: float | None) -> str:
    """``850 ms`` / ``1.24 s`` / ``-``."""
    if value is None:
        return "-"
    return f"{value:.0f} ms" if value < 1000 else f"{value / 1000:.2f} s"


def fmt_rate(value: float | None) -> str:
    """Requests (or tokens) per second with sensible precision."""
    if value is None:
        return "-"
    return f"{value:.2f}" if value < 10 else f"{value:.1f}" if value < 100 else f"{value:.0f}"


def fmt_bytes(value: Any) -> str:
    """Human-readable bytes."""
    if not isinstance(value, int | float):
        return "-"
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def fmt_pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def window(stats: dict[str, Any], name: str) -> dict[str, Any]:
    """A window's stats, falling back to the widest one reported (short retention drops long windows)."""
    windows = stats.get("windows", stats)
    return windows.get(name) or windows.get("retention") or {}


class Dashboard(App[None]):
    """The live dashboard of one higgs server.

    Args:
        url: the server's base URL.
        api_key: its API key, when it requires one.
        interval: seconds between polls.
        title: what the header names (the profile).
    """

    TITLE = "higgs"
    CSS = """
    #status { height: 1; padding: 0 1; background: $boost; }
    #status.down { background: $error 40%; }
    .cards { height: auto; }
    Screen { overflow: hidden; }
    .card { width: 1fr; height: 5; border: round $primary; padding: 0 1; }
    .spark-label { height: 1; padding: 0 1; color: $text-muted; }
    Sparkline { height: 3; margin: 0 1 1 1; }
    DataTable { height: 1fr; }
    .engine { height: 9; }
    .table-label { height: 1; padding: 0 1; color: $text-muted; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("1", "show('overview')", "Overview"),
        Binding("2", "show('models')", "Models"),
        Binding("3", "show('providers')", "Providers"),
        Binding("4", "show('routing')", "Routing"),
        Binding("5", "show('errors')", "Errors"),
        Binding("left,h", "cycle(-1)", "Prev", show=False),
        Binding("right,l", "cycle(1)", "Next", show=False),
        Binding("r", "refresh_now", "Refresh"),
        Binding("q", "quit", "Quit"),
        Binding("ctrl+c", "quit", "Quit", show=False, priority=True),
    ]

    def __init__(self, url: str, *, api_key: str | None = None, interval: float = 1.0, title: str = "",
                 locate: Callable[[], str | None] | None = None) -> None:
        super().__init__()
        self.client = MetricsClient(url, api_key=api_key)
        self.api_key = api_key
        #: Finds the server again when it stops answering (a profile restarted on another port).
        self.locate = locate
        self.interval = interval
        self.sub_title = f"{title + ' · ' if title else ''}{url}"
        self.connected = False
        self.last: Snapshot | None = None
        self.last_ok: float | None = None
        self.last_error: str | None = None
        self.polls = 0

    # -- layout -----------------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("connecting ...", id="status")
        with TabbedContent(initial="overview", id="tabs"):
            with TabPane("Overview [1]", id="overview"), Vertical():
                with Horizontal(classes="cards"):
                    for card in ("rate", "latency", "ttft", "tokens", "errors"):
                        yield Static("-", id=f"card-{card}", classes="card")
                yield Static("requests / bucket", classes="spark-label", id="spark-requests-label")
                yield Sparkline([0], id="spark-requests")
                yield Static("output tokens / s", classes="spark-label", id="spark-tokens-label")
                yield Sparkline([0], id="spark-tokens")
                yield Static("latency p50 (ms)", classes="spark-label", id="spark-latency-label")
                yield Sparkline([0], id="spark-latency")
            with TabPane("Models [2]", id="models"), Vertical():
                yield DataTable(id="models-table", cursor_type="row", zebra_stripes=True)
                yield Static("engine state (providers' state(), process memory)", classes="table-label")
                yield DataTable(id="engine-table", cursor_type="row", classes="engine")
            with TabPane("Providers [3]", id="providers"):
                yield DataTable(id="providers-table", cursor_type="row", zebra_stripes=True)
            with TabPane("Routing [4]", id="routing"):
                yield DataTable(id="routing-table", cursor_type="row", zebra_stripes=True)
            with TabPane("Errors [5]", id="errors"):
                yield DataTable(id="errors-table", cursor_type="row", zebra_stripes=True)
        yield Footer()

    def on_mount(self) -> None:
        self._table("models-table", "MODEL", "REQ 1m", "REQ/s", "p50", "p95", "TTFT p50", "OUT TOK/s", "ERRORS")
        self._table("engine-table", "PROVIDER", "KIND", "BATCH", "QUEUE", "KV CACHE", "PREFIX CACHE", "HIT RATE",
                    "DETAILS")
        self._table("providers-table", "PROVIDER", "REQ 1m", "REQ/s", "ERRORS", "ERR %", "p50", "p95", "p99",
                    "TTFT p50", "REQ 5m")
        self._table("routing-table", "RULE", "REQ 1m", "SHARE 1m", "REQ 5m", "REQ RETAINED", "ERRORS")
        self._table("errors-table", "TIME", "REQUEST ID", "STATUS", "ERROR", "MODEL", "PROVIDER", "ROUTE")
        self.set_interval(self.interval, self.poll)
        self.call_later(self.poll)

    def _table(self, widget_id: str, *columns: str) -> None:
        self.query_one(f"#{widget_id}", DataTable).add_columns(*columns)

    # -- actions ----------------------------------------------------------------------------------
    def action_show(self, tab: str) -> None:
        self.query_one(TabbedContent).active = tab

    def action_cycle(self, step: int) -> None:
        tabs = self.query_one(TabbedContent)
        tabs.active = TABS[(TABS.index(tabs.active) + step) % len(TABS)] if tabs.active in TABS else TABS[0]

    async def action_refresh_now(self) -> None:
        await self.poll()

    async def action_quit(self) -> None:
        self.exit()

    async def on_unmount(self) -> None:
        await self.client.close()

    # -- polling ----------------------------------------------------------------------------------
    async def poll(self) -> None:
        """Fetch once and redraw; on failure keep the last numbers and say the server is unreachable."""
        self.polls += 1
        try:
            snapshot = await self.client.poll()
        except Unreachable as err:
            self.connected = False
            self.last_error = str(err)
            snapshot = None
            await self._relocate()
        else:
            self.connected, self.last, self.last_ok, self.last_error = True, snapshot, time.time(), None
        try:
            self._show_status()
            if snapshot is not None:
                self.render_snapshot(snapshot)
        except NoMatches:  # the app is shutting down while a poll was in flight
            return

    async def _relocate(self) -> None:
        if self.locate is None:
            return
        try:
            url = await asyncio.to_thread(self.locate)
        except Exception:  # locating is best effort; keep retrying the old address
            return
        if url and url.rstrip("/") != self.client.url:
            await self.client.close()
            self.client = MetricsClient(url, api_key=self.api_key)
            self.sub_title = self.sub_title.rsplit(" · ", 1)[0] + f" · {self.client.url}" \
                if " · " in self.sub_title else self.client.url

    def _show_status(self) -> None:
        status = self.query_one("#status", Static)
        if self.connected and self.last is not None:
            m = self.last.metrics
            version = self.last.system.get("version")
            status.update(f"● connected · up {int(m.get('uptime_s', 0))} s · retention "
                          f"{m.get('retention_minutes', 0):g} min" + (f" · higgs {version}" if version else ""))
            status.remove_class("down")
        else:
            stale = f" · showing numbers from {time.strftime('%H:%M:%S', time.localtime(self.last_ok))}" \
                if self.last_ok else ""
            status.update(f"✖ unreachable: {self.last_error} · retrying every {self.interval:g} s{stale}")
            status.add_class("down")

    def render_snapshot(self, snap: Snapshot) -> None:
        """Redraw every tab from one snapshot."""
        m = snap.metrics
        self._overview(m)
        self._models(m, snap.system)
        self._providers(m)
        self._routing(m)
        self._errors(m)

    def _overview(self, m: dict[str, Any]) -> None:
        w = window(m, WINDOW)
        totals = m.get("totals", {})
        lat, ttft = w.get("latency_ms", {}), w.get("ttft_ms", {})
        cards = {
            "rate": f"[b]{fmt_rate(w.get('request_rate'))}[/b] req/s\n{w.get('requests', 0)} in {WINDOW}\n"
                    f"{totals.get('requests', 0)} since start",
            "latency": f"p50 [b]{fmt_ms(lat.get('p50'))}[/b]\np95 {fmt_ms(lat.get('p95'))}\n"
                       f"p99 {fmt_ms(lat.get('p99'))}",
            "ttft": f"TTFT p50 [b]{fmt_ms(ttft.get('p50'))}[/b]\np95 {fmt_ms(ttft.get('p95'))}\n"
                    f"p99 {fmt_ms(ttft.get('p99'))}",
            "tokens": f"[b]{fmt_rate(w.get('output_tokens_per_s'))}[/b] out tok/s\nin {w.get('input_tokens', 0)} · "
                      f"out {w.get('output_tokens', 0)}\ncached {w.get('cached_tokens', 0)}",
            "errors": f"[b]{w.get('errors', 0)}[/b] errors ({fmt_pct(w.get('error_rate'))})\n"
                      f"local {w.get('local', 0)} · remote {w.get('remote', 0)}",
        }
        for key, text in cards.items():
            self.query_one(f"#card-{key}", Static).update(text)
        series = m.get("series", {})
        bucket = series.get("bucket_s", 0)
        for key, field, label in (("requests", "requests", "requests per {b} s"),
                                  ("tokens", "output_tokens_per_s", "output tokens/s ({b} s buckets)"),
                                  ("latency", "latency_p50_ms", "latency p50, ms ({b} s buckets)")):
            values = [float(v or 0) for v in series.get(field, [])] or [0.0]
            self.query_one(f"#spark-{key}", Sparkline).data = values
            peak = max(values)
            self.query_one(f"#spark-{key}-label", Static).update(
                f"{label.format(b=f'{bucket:g}')} · peak {fmt_rate(peak)} · now {fmt_rate(values[-1])}")

    def _models(self, m: dict[str, Any], system: dict[str, Any]) -> None:
        rows = []
        for name, per in sorted(m.get("by_model", {}).items()):
            w = window(per, WINDOW)
            rows.append((name, str(w.get("requests", 0)), fmt_rate(w.get("request_rate")),
                         fmt_ms(w.get("latency_ms", {}).get("p50")), fmt_ms(w.get("latency_ms", {}).get("p95")),
                         fmt_ms(w.get("ttft_ms", {}).get("p50")), fmt_rate(w.get("output_tokens_per_s")),
                         str(w.get("errors", 0))))
        _fill(self.query_one("#models-table", DataTable), rows)
        engine_rows = []
        for name, state in sorted(m.get("engine", {}).items()):
            engine_rows.append(_engine_row(name, state))
        memory = system.get("memory", {})
        if memory:
            engine_rows.append(("(process)", "memory", "-", "-", "-", "-", "-",
                                f"rss {fmt_bytes(memory.get('rss_bytes'))}, peak "
                                f"{fmt_bytes(memory.get('peak_rss_bytes'))}"))
        _fill(self.query_one("#engine-table", DataTable), engine_rows)

    def _providers(self, m: dict[str, Any]) -> None:
        rows = []
        for name, per in sorted(m.get("by_provider", {}).items()):
            w, wide = window(per, WINDOW), window(per, WIDE_WINDOW)
            lat = w.get("latency_ms", {})
            rows.append((name, str(w.get("requests", 0)), fmt_rate(w.get("request_rate")), str(w.get("errors", 0)),
                         fmt_pct(w.get("error_rate")), fmt_ms(lat.get("p50")), fmt_ms(lat.get("p95")),
                         fmt_ms(lat.get("p99")), fmt_ms(w.get("ttft_ms", {}).get("p50")),
                         str(wide.get("requests", 0))))
        _fill(self.query_one("#providers-table", DataTable), rows)

    def _routing(self, m: dict[str, Any]) -> None:
        groups = m.get("by_route", {})
        total = sum(window(per, WINDOW).get("requests", 0) for per in groups.values()) or 1
        rows = []
        for name, per in sorted(groups.items(), key=lambda kv: -window(kv[1], "retention").get("requests", 0)):
            w = window(per, WINDOW)
            rows.append((name, str(w.get("requests", 0)), fmt_pct(w.get("requests", 0) / total),
                         str(window(per, WIDE_WINDOW).get("requests", 0)),
                         str(window(per, "retention").get("requests", 0)),
                         str(window(per, "retention").get("errors", 0))))
        _fill(self.query_one("#routing-table", DataTable), rows)

    def _errors(self, m: dict[str, Any]) -> None:
        rows = [(time.strftime("%H:%M:%S", time.localtime(e.get("time", 0))), str(e.get("request_id", "")),
                 str(e.get("status", "")), str(e.get("error_type", "")), str(e.get("model", "")),
                 str(e.get("provider", "")), str(e.get("route", "")))
                for e in m.get("recent_errors", [])]
        _fill(self.query_one("#errors-table", DataTable), rows)


_BATCH_KEYS = ("batch_size", "active_requests", "active", "running", "in_flight")
_QUEUE_KEYS = ("queue_depth", "queued", "waiting")
_KV_KEYS = ("kv_cache_bytes", "cache_bytes")
_PREFIX_KEYS = ("prefix_cache_bytes", "radix_cache_bytes")
_HIT_KEYS = ("prefix_cache_hit_rate", "cache_hit_rate", "hit_rate")
_SHOWN = {"local", "format", "url", *_BATCH_KEYS, *_QUEUE_KEYS, *_KV_KEYS, *_PREFIX_KEYS, *_HIT_KEYS}


def _engine_row(name: str, state: dict[str, Any]) -> tuple[str, ...]:
    """Pick the common engine-state keys (local engine or remote pool); everything else goes into DETAILS."""
    if "error" in state:
        return (name, "-", "-", "-", "-", "-", "-", str(state["error"]))

    def pick(keys: tuple[str, ...]) -> Any:
        return next((state[k] for k in keys if k in state), None)

    batch, queue, hit = pick(_BATCH_KEYS), pick(_QUEUE_KEYS), pick(_HIT_KEYS)
    details = []
    for key, value in state.items():
        if key in _SHOWN or isinstance(value, dict):
            continue
        if isinstance(value, list):
            value = ",".join(map(str, value)) or "-"
        details.append(f"{key}={value}")
    return (name, "local" if state.get("local") else "remote", "-" if batch is None else str(batch),
            "-" if queue is None else str(queue), fmt_bytes(pick(_KV_KEYS)), fmt_bytes(pick(_PREFIX_KEYS)),
            fmt_pct(hit) if isinstance(hit, int | float) else "-", ", ".join(details)[:90] or "-")


def _fill(table: DataTable[Any], rows: Sequence[Sequence[str]]) -> None:
    """Replace a table's rows, keeping the cursor where it was."""
    cursor = table.cursor_row
    table.clear()
    for row in rows:
        table.add_row(*row)
    if rows:
        table.move_cursor(row=min(cursor, len(rows) - 1))
