"""The error hierarchy. Every error that reaches a client carries an ``ErrorInfo`` that formats render."""

from __future__ import annotations

from higgs.messages import ErrorInfo


class HiggsError(Exception):
    """Base of every higgs error."""


class ConfigError(HiggsError):
    """The configuration is invalid; the message names the file, the key and what is wrong."""


class PluginError(HiggsError):
    """A plugin failed to load or registered something invalid (duplicate names, bad spec)."""


class ApiError(HiggsError):
    """An error with an HTTP status, rendered to the client in its own wire format.

    Args:
        status: HTTP status code.
        kind: canonical error kind (see ``ErrorInfo.kind``).
        message: human-readable message; never include secrets.
        param: the request field at fault, when there is one.
        code: a machine-readable code (e.g. ``context_length_exceeded``, ``model_not_found``).
        retry_after: seconds, sent as the ``retry-after`` header.
    """

    def __init__(
        self,
        status: int,
        kind: str,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.info = ErrorInfo(
            status=status, kind=kind, message=message, param=param, code=code, retry_after=retry_after
        )

    @property
    def status(self) -> int:
        return self.info.status

    @classmethod
    def from_info(cls, info: ErrorInfo) -> ApiError:
        """Rebuild an exception from an ``ErrorInfo`` (e.g. an upstream error parsed by a format)."""
        return cls(
            info.status, info.kind, info.message, param=info.param, code=info.code, retry_after=info.retry_after
        )


class InvalidRequestError(ApiError):
    """400: the request is malformed or asks for something impossible."""

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(400, "invalid_request", message, param=param, code=code)


class UnknownModelError(ApiError):
    """404: no local model, route or default serves this model name."""

    def __init__(self, model: str, available: list[str] | None = None) -> None:
        listed = f" Available: {', '.join(available)}." if available else ""
        super().__init__(404, "not_found", f"The model '{model}' does not exist.{listed}", param="model",
                         code="model_not_found")
        self.model = model


class ProviderError(ApiError):
    """An upstream or backend failure; ``retryable`` tells fallbacks whether to try the next provider."""

    def __init__(self, status: int, kind: str, message: str, *, retryable: bool = False,
                 retry_after: float | None = None, code: str | None = None) -> None:
        super().__init__(status, kind, message, retry_after=retry_after, code=code)
        self.retryable = retryable


class RoutingError(ApiError):
    """The router cannot place the request (e.g. an auto route with no model to forward)."""

    def __init__(self, message: str) -> None:
        super().__init__(400, "invalid_request", message, code="routing_error")
