"""Shared machinery of the remote providers: ``RemoteProvider`` over any ``WireFormat``."""

from higgs.remote.estimate import estimate_chat, estimate_text
from higgs.remote.provider import RETRYABLE, RemoteOptions, RemoteProvider

__all__ = ["RETRYABLE", "RemoteOptions", "RemoteProvider", "estimate_chat", "estimate_text"]
