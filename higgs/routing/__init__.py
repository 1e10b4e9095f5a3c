"""Built-in routing strategies (local names, ``[[routes]]`` patterns, ``[default]``) and their helpers."""

from higgs.routing.builtin import DefaultRouter, LocalRouter, PatternRouter, explain_route, provider_map

__all__ = ["DefaultRouter", "LocalRouter", "PatternRouter", "explain_route", "provider_map"]
