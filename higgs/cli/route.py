"""``higgs route MODEL [--message TEXT]``: explain which rule would serve a request for a model name.

Builds the same formats, providers and strategies ``higgs serve`` builds (nothing is started, nothing is
sent upstream) and runs the strategies in order, as the gateway does for each request.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from pathlib import Path
from typing import Annotated, Any

from cyclopts import Parameter

from higgs.errors import ApiError, HiggsError


def route(
    model: Annotated[str, Parameter(help="The model name a client would send.")],
    *,
    message: Annotated[str | None, Parameter(help="A user message, for strategies that read the conversation "
                                                  "(the auto-router).")] = None,
    config: Annotated[Path | None, Parameter(help="Config file (instead of ~/.config/higgs/config.toml).")] = None,
    profile: Annotated[str | None, Parameter(help="Use config.NAME.toml beside the default config.")] = None,
    json_: Annotated[bool, Parameter(name="--json", help="Machine-readable output.")] = False,
) -> int:
    """Explain which rule would serve MODEL: the strategy, the rule, the providers in fallback order."""
    from higgs.plugins import load_plugins
    from higgs.registry import Registry
    from higgs.server.app import build_formats, build_providers, build_routers
    from higgs.server.gateway import RouterServices
    from higgs.settings_loader import load_settings

    settings = load_settings(config=config, profile=profile).settings
    registry = Registry.build(load_plugins(enabled=settings.plugins.enabled, disabled=settings.plugins.disabled))
    formats = build_formats(registry)
    providers = build_providers(settings, registry, formats)
    routers = build_routers(settings, registry, RouterServices(providers=providers, formats=formats,
                                                               registry=registry))
    report = asyncio.run(explain(model, message, routers, providers))
    if json_:
        print(json.dumps(report, indent=2))
    else:
        print(render(report))
    return 0 if report.get("decision") else 1


async def explain(model: str, message: str | None, routers: list[Any], providers: dict[str, Any]) -> dict[str, Any]:
    """Run the strategies in order and describe the outcome (``decision`` is None when none serves it)."""
    from higgs.interfaces import RouteQuery
    from higgs.messages import ChatRequest, Message, TextBlock

    request = None
    if message is not None:
        request = ChatRequest(model=model, messages=[Message(role="user", content=[TextBlock(text=message)])])
    query = RouteQuery(model=model, operation="chat", request=request)
    report: dict[str, Any] = {"model": model, "decision": None, "error": None, "notes": [],
                              "rules": [{"strategy": r.name, "lines": r.explain()} for r in routers]}
    async with contextlib.AsyncExitStack() as stack:
        # A strategy that needs something started to decide (the auto-router's classifier model) may offer
        # ``explaining()``, an async context manager; ``explain_route(query)`` -> (decision, note lines) says how.
        for router in routers:
            explaining = getattr(router, "explaining", None)
            if callable(explaining):
                await stack.enter_async_context(explaining())
        return await _run_strategies(model, query, routers, providers, report)


async def _run_strategies(model: str, query: Any, routers: list[Any], providers: dict[str, Any],
                          report: dict[str, Any]) -> dict[str, Any]:
    for router in routers:
        try:
            explain_route = getattr(router, "explain_route", None)
            if callable(explain_route):
                decision, notes = await explain_route(query)
                report["notes"].extend(notes)
            else:
                decision = await router.route(query)
        except ApiError as err:
            report["error"] = {"strategy": router.name, "status": err.status, "message": err.info.message}
            return report
        except HiggsError as err:
            report["error"] = {"strategy": router.name, "status": None, "message": str(err)}
            return report
        if decision is None:
            continue
        match = getattr(router, "match", None)
        matched = match(model) if callable(match) else None
        report["decision"] = {
            "strategy": router.name, "method": decision.method, "rule": decision.rule, "model": decision.model,
            "route_index": matched.index + 1 if matched is not None else None,
            "providers": [_describe(name, providers.get(name)) for name in decision.providers],
        }
        return report
    report["error"] = {"strategy": None, "status": 404, "message": f"No strategy serves '{model}'."}
    return report


def _describe(name: str, provider: Any) -> dict[str, Any]:
    if provider is None:
        return {"name": name, "missing": True}
    state = provider.state() if hasattr(provider, "state") else {}
    return {"name": name, "local": bool(getattr(provider, "local", False)), "class": type(provider).__name__,
            "format": getattr(provider, "upstream_format", None), "url": state.get("url")}


def render(report: dict[str, Any]) -> str:
    """The human-readable explanation."""
    lines = [f"model: {report['model']}"]
    decision = report["decision"]
    if decision is None:
        error = report["error"] or {}
        status = f" ({error['status']})" if error.get("status") else ""
        lines.append(f"  not served{status}: {error.get('message', '')}")
    else:
        where = f" (route #{decision['route_index']})" if decision["route_index"] else ""
        lines.append(f"  strategy:  {decision['strategy']}{where}")
        lines.append(f"  rule:      {decision['rule']}   (x-higgs-route header)")
        lines.append(f"  sends:     model '{decision['model']}'")
        for i, p in enumerate(decision["providers"]):
            label = "provider:" if i == 0 else "fallback:"
            if p.get("missing"):
                lines.append(f"  {label:10} {p['name']} (not configured!)")
            elif p["local"]:
                lines.append(f"  {label:10} {p['name']} (local engine)")
            elif not p["format"]:
                lines.append(f"  {label:10} {p['name']} ({p['class']}; answers every client format itself)")
            else:
                lines.append(f"  {label:10} {p['name']} ({p['format']} format, {p['url']}); "
                             f"{p['format']} clients pass through, others are translated")
    lines.extend(f"  note:      {note}" for note in report.get("notes", []))
    lines.append("rules, in order:")
    for rule in report["rules"]:
        lines.extend(f"  {line}" for line in rule["lines"] or [rule["strategy"]])
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(route(sys.argv[1]))
