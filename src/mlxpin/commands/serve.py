"""`mlxpin serve` and `mlxpin ps`: plan the pool offline and run it; ask a running one."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from mlxpin.config import Settings
from mlxpin.errors import ConfigError, Flag, Run, UnavailableError
from mlxpin.plan.serve import ServePlan, plan_serve

if TYPE_CHECKING:
    from mlxpin.supervise.restart import RestartPolicy

__all__ = ["plan", "run", "status"]


def plan(
    settings: Settings,
    names: Sequence[str],
    environ: Mapping[str, str],
    *,
    host: str | None,
    port: int | None,
    verify: bool,
) -> ServePlan:
    return plan_serve(settings, names, environ=environ, host=host, port=port, verify=verify)


def run(chosen: ServePlan, environ: Mapping[str, str], policy: RestartPolicy) -> int:
    from mlxpin.supervise.runner import run_pool_plan

    return run_pool_plan(chosen, environ, policy)


def status(host: str, port: int, api_key: str | None, timeout: float = 5.0) -> Any:
    """The JSON of a running endpoint's status route; 69 when nothing answers there."""
    import urllib.error  # only `ps` asks: the boot path of `serve` never loads urllib
    import urllib.request

    shown = f"[{host}]" if ":" in host else host
    if host in ("0.0.0.0", "::"):  # noqa: S104 (where a listener on every address answers)
        shown = "127.0.0.1"
    url = f"http://{shown}:{port}/mlxpin/status"
    request = urllib.request.Request(url)
    if api_key:
        request.add_header("Authorization", f"Bearer {api_key}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        if exc.code == 401:
            raise ConfigError(
                f"{url}: the endpoint wants an API key",
                "set MLXPIN_API_KEY (or MLXPIN_API_KEY_FILE) to the key it was started with",
            ) from None
        raise UnavailableError(
            f"{url}: answered {exc.code}; is this an `mlxpin serve` endpoint?",
            f"check {Flag('ps', '--host')}/{Flag('ps', '--port')}, or the [serve] table",
        ) from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise UnavailableError(
            f"nothing answers at {url} ({reason})",
            f"start it with {Run.of('serve')}, or point {Flag('ps', '--host')}/"
            f"{Flag('ps', '--port')} at it",
        ) from None
