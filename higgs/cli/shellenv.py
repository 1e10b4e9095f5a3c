"""``higgs shellenv`` and ``higgs exec``: point OpenAI and Anthropic clients at the running instance.

Both look for the profile's background instance (``higgs start``) first, then for a foreground server on
the profile's configured address, and use it only if ``/health`` answers. Nothing is printed on stdout
when no server answers, so ``eval "$(higgs shellenv)"`` is harmless then.
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Mapping

from higgs.cli.daemon import expected_address, healthy
from higgs.runtime import RuntimePaths, base_url, read_instance

OPENAI_VAR = "OPENAI_BASE_URL"
ANTHROPIC_VAR = "ANTHROPIC_BASE_URL"


def find_server(profile: str | None = None, config: str | None = None) -> tuple[str | None, str]:
    """The base URL of a reachable server for the profile, or None plus why not."""
    paths = RuntimePaths.for_profile(profile)
    candidates: list[str] = []
    instance = read_instance(paths)
    if instance is not None and instance.url:
        candidates.append(instance.url)
    address = expected_address(profile, None, None, config)
    if address is not None and base_url(*address) not in candidates:
        candidates.append(base_url(*address))
    for url in candidates:
        if healthy(url, timeout=2.0):
            return url, ""
    if not candidates:
        return None, f"no higgs instance of profile {paths.label} is running and its config cannot be read"
    return None, f"higgs (profile {paths.label}) is not reachable at {', '.join(candidates)}"


def client_env(url: str) -> dict[str, str]:
    """The variables that point both SDKs at ``url`` (OpenAI's includes ``/v1``)."""
    return {ANTHROPIC_VAR: url, OPENAI_VAR: f"{url}/v1"}


def render_exports(variables: Mapping[str, str], shell: str) -> str:
    """Shell code setting ``variables`` for ``sh``-like shells or ``fish``."""
    if shell == "fish":
        return "".join(f"set -gx {k} {shlex.quote(v)};\n" for k, v in variables.items())
    return "".join(f"export {k}={shlex.quote(v)}\n" for k, v in variables.items())


def _default_shell() -> str:
    return "fish" if os.path.basename(os.environ.get("SHELL", "")) == "fish" else "sh"


def _server_or_exit_code(prefix: str, profile: str | None, config: str | None) -> str | int:
    """The running server's base URL, or the exit code after saying on stderr why there is none."""
    try:
        url, why = find_server(profile, config)
    except ValueError as err:
        print(f"{prefix}: {err}", file=sys.stderr)
        return 2
    if url is None:
        print(f"{prefix}: {why}; start it with `higgs start{f' --profile {profile}' if profile else ''}`",
              file=sys.stderr)
        return 1
    return url


def shellenv(*, profile: str | None = None, config: str | None = None, shell: str | None = None) -> int:
    """Print ``export`` lines for ANTHROPIC_BASE_URL and OPENAI_BASE_URL: ``eval "$(higgs shellenv)"``.

    Args:
        profile: profile name; default profile when omitted.
        config: a config file instead of a profile.
        shell: ``sh`` (bash, zsh, ...) or ``fish``; from ``$SHELL`` by default.
    """
    shell = shell or _default_shell()
    if shell not in ("sh", "bash", "zsh", "fish"):
        print(f"# higgs shellenv: unknown shell {shell!r} (use sh or fish)", file=sys.stderr)
        return 2
    url = _server_or_exit_code("# higgs shellenv", profile, config)
    if isinstance(url, int):
        return url
    sys.stdout.write(render_exports(client_env(url), "fish" if shell == "fish" else "sh"))
    return 0


def exec_command(*command: str, profile: str | None = None, config: str | None = None) -> int:
    """Run a command with ANTHROPIC_BASE_URL and OPENAI_BASE_URL set: ``higgs exec -- claude``.

    The command replaces this process, so signals (Ctrl-C) reach it directly and its exit status is the
    exit status of ``higgs exec``.

    Args:
        command: the command and its arguments (after ``--``).
        profile: profile name; default profile when omitted.
        config: a config file instead of a profile.
    """
    if not command:
        print("higgs exec: no command given; usage: higgs exec [--profile NAME] -- CMD [ARGS...]", file=sys.stderr)
        return 2
    url = _server_or_exit_code("higgs exec", profile, config)
    if isinstance(url, int):
        return url
    env = {**os.environ, **client_env(url)}
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execvpe(command[0], list(command), env)
    except FileNotFoundError:
        print(f"higgs exec: command not found: {command[0]}", file=sys.stderr)
        return 127
    except PermissionError:
        print(f"higgs exec: permission denied: {command[0]}", file=sys.stderr)
        return 126
    return 0  # unreachable: execvpe does not return
