"""The routing table: which label goes to which model (pure, built once per gateway).

A request names a model by its api_label or an alias; ``"model"`` absent or null means
the only model when there is exactly one. Anything else is answered by the gateway itself
(404 ``model_not_found``, listing the labels) and never reaches a server.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from mlxpin.gateway.apierrors import ApiError
from mlxpin.gateway.backends import Route

__all__ = ["RoutingTable"]

_OWNER = "mlxpin"


def _model_object(label: str, route: Route) -> dict[str, object]:
    return {"id": label, "object": "model", "created": 0, "owned_by": _OWNER, "kind": route.role}


class RoutingTable:
    """Labels (api_label + aliases) to routes, plus the ``/v1/models`` answers."""

    def __init__(self, routes: Sequence[Route]) -> None:
        if not routes:
            raise ValueError("a gateway needs at least one model")
        self.routes = tuple(routes)
        self.by_label: dict[str, Route] = {}
        for route in self.routes:
            for label in route.labels:
                if self.by_label.setdefault(label, route) is not route:
                    raise ValueError(f"label {label!r} is used by two models")
        self.default = self.routes[0] if len(self.routes) == 1 else None
        self.available = ", ".join(self.by_label)
        self.max_body_bytes = max(route.max_body_bytes for route in self.routes)
        listing = {
            "object": "list",
            "data": [_model_object(k, r) for k, r in self.by_label.items()],
        }
        self.models_body = json.dumps(listing, separators=(",", ":")).encode()

    def resolve(self, model: object) -> Route | ApiError:
        """The route for a request's ``"model"`` value, or the error to answer."""
        if model is None:
            if self.default is not None:
                return self.default
            return ApiError(
                400,
                f"Say which model to use in 'model'. Available: {self.available}",
                "model_required",
                "model",
            )
        if isinstance(model, str):
            return self.by_label.get(model) or self.not_found(model)
        return self.not_found(json.dumps(model))

    def served(self, route: Route, path: str, label: object) -> ApiError | None:
        """None if ``route`` serves POST ``path``, else the 404 that says what it serves."""
        if path in route.endpoints:
            return None
        serves = ", ".join(f"POST {p}" for p in route.endpoints)
        return ApiError(
            404,
            f"The model '{label}' ({route.engine} {route.role}) does not serve POST {path}; "
            f"it serves {serves}",
            "not_found",
            "model",
        )

    def not_found(self, shown: str) -> ApiError:
        return ApiError(
            404,
            f"The model '{shown[:200]}' does not exist. Available: {self.available}",
            "model_not_found",
            "model",
        )

    def model_body(self, label: str) -> bytes | ApiError:
        """The answer to ``GET /v1/models/{label}`` (OpenAI's ``models.retrieve``)."""
        route = self.by_label.get(label)
        if route is None:
            return self.not_found(label)
        return json.dumps(_model_object(label, route), separators=(",", ":")).encode()
