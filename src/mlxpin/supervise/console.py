"""The operator's view of a running gateway (docs/observability.md): ``GET /metrics``, the
status page ``GET /mlxpin/``, each model's log ``GET /mlxpin/logs/{label}``, and one
access-log line per client request (logger ``mlxpin.access``; `-q` turns it off).

Auth: the bearer key works on every route. The page's key form sets an HttpOnly,
SameSite=Strict cookie (a digest of the key, never the key) that stands in for the bearer
on ``/mlxpin/*`` only; a POST with it must also come from the page's own origin.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Final

from aiohttp import web

from mlxpin.gateway.observe import Exchange
from mlxpin.supervise.metrics import CONTENT_TYPE, Metrics, pin_of
from mlxpin.supervise.pool import Pool, Slot
from mlxpin.util.logtail import read_from, tail

if TYPE_CHECKING:
    from mlxpin.gateway.app import Gateway

__all__ = ["METRICS_PATH", "PAGE_PATH", "Console"]

access = logging.getLogger("mlxpin.access")

METRICS_PATH: Final = "/metrics"
PAGE_PATH: Final = "/mlxpin/"
LOGIN_PATH: Final = "/mlxpin/login"
LOGS_PATH: Final = "/mlxpin/logs/{label}"
COOKIE: Final = "mlxpin_session"
RECENT: Final = 20  # requests kept per model for the page
FOLLOW_POLL_S: Final = 0.5


class Console:
    """Metrics, recent requests and the operator routes of one gateway over ``pool``."""

    def __init__(
        self, gateway: Gateway, pool: Pool, api_key: str | None, *, metrics_public: bool
    ) -> None:
        self.gateway, self.pool = gateway, pool
        self.metrics = Metrics(pool)
        self.recent: dict[str, deque[dict[str, object]]] = {
            label: deque(maxlen=RECENT) for label in pool.by_label
        }
        self.session = (
            None
            if api_key is None
            else hmac.new(api_key.encode(), b"mlxpin page session", hashlib.sha256).hexdigest()
        )
        self.api_key = api_key
        gateway.on_exchange = self.observe
        gateway.allow = self.cookie_ok
        gateway.public_paths |= {PAGE_PATH, LOGIN_PATH, "/mlxpin"}
        if metrics_public:
            gateway.public_paths.add(METRICS_PATH)

    def routes(self, app: web.Application) -> None:
        app.router.add_get(METRICS_PATH, self.scrape)
        app.router.add_get("/mlxpin", self.to_page)
        app.router.add_get(PAGE_PATH, self.page)
        app.router.add_post(LOGIN_PATH, self.login)
        app.router.add_get(LOGS_PATH, self.logs)

    def observe(self, exchange: Exchange) -> None:
        self.metrics.observe(exchange)
        recent = self.recent.get(exchange.label)
        if recent is not None:
            recent.append(exchange.summary(time.time()))
        if access.isEnabledFor(logging.INFO):
            access.info("%s", exchange.access_line())

    def cookie_ok(self, request: web.Request) -> bool:
        """The page's cookie, on /mlxpin/* only; a POST also from our own origin."""
        if self.session is None or not request.path.startswith("/mlxpin/"):
            return False
        got = request.cookies.get(COOKIE, "")
        if not hmac.compare_digest(got.encode(), self.session.encode()):
            return False
        return request.method in ("GET", "HEAD") or same_origin(request)

    def detail(self, slot: Slot) -> dict[str, object]:
        """A model's pin and recent requests, for the page."""
        label = slot.plan.launch.api_label
        return {"pin": pin_of(slot), "recent": list(self.recent.get(label, ()))}

    async def scrape(self, _request: web.Request) -> web.Response:
        body = self.metrics.render()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

    async def to_page(self, _request: web.Request) -> web.Response:
        raise web.HTTPFound(PAGE_PATH)

    async def page(self, request: web.Request) -> web.Response:
        if not (self.gateway.bearer_ok(request) or self.cookie_ok(request)):
            return login_page(401)
        data = status_json(self, request.app.get(OPERATOR, False))
        body = PAGE.replace("__DATA__", data.replace("</", "<\\/"))
        return web.Response(text=body, content_type="text/html", headers=_NO_STORE)

    async def login(self, request: web.Request) -> web.Response:
        form = await request.post()
        key = form.get("key")
        if self.api_key is None or not same_origin(request, missing_ok=True):
            raise web.HTTPFound(PAGE_PATH)
        if not isinstance(key, str) or not hmac.compare_digest(key.encode(), self.api_key.encode()):
            return login_page(401, "That key is not right.")
        response = web.HTTPSeeOther(PAGE_PATH)
        assert self.session is not None
        response.set_cookie(COOKIE, self.session, httponly=True, samesite="Strict", path="/mlxpin/")
        return response

    async def logs(self, request: web.Request) -> web.StreamResponse:
        """The model's log: its last ``n`` lines (default 200), and with ``follow=1``
        whatever is appended until the client hangs up."""
        route = self.gateway.table.by_label.get(request.match_info["label"])
        slot = None if route is None else self.pool.by_label[route.api_label]
        path = None if slot is None else slot.plan.launch.log_file
        if path is None:
            raise web.HTTPNotFound()
        n = int(request.query.get("n", "200")) if request.query.get("n", "").isdigit() else 200
        response = web.StreamResponse(headers={"Content-Type": "text/plain; charset=utf-8"})
        await response.prepare(request)
        try:
            data, offset = tail(path, n)
        except FileNotFoundError:
            data, offset = b"", 0
        await response.write(data)
        while request.query.get("follow") == "1":
            await asyncio.sleep(FOLLOW_POLL_S)
            data, offset = read_from(path, offset)
            if data:
                await response.write(data)
        await response.write_eof()
        return response


OPERATOR: Final = web.AppKey("operator", bool)
_NO_STORE: Final = {"Cache-Control": "no-store"}


def same_origin(request: web.Request, *, missing_ok: bool = False) -> bool:
    origin = request.headers.get("Origin")
    if origin is None:
        return missing_ok
    return origin == f"{request.scheme}://{request.host}"


def status_json(console: Console, operator: bool) -> str:
    status = dict(console.pool.status())
    details = {s.plan.launch.api_label: console.detail(s) for s in console.pool.slots.values()}
    status["details"] = details
    status["operator"] = operator
    return json.dumps(status, separators=(",", ":"))


def login_page(status: int, message: str = "") -> web.Response:
    body = LOGIN.replace("__MESSAGE__", message)
    return web.Response(text=body, status=status, content_type="text/html", headers=_NO_STORE)


_STYLE = """<style>
body{font:14px system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa}
table{border-collapse:collapse;width:100%}th,td{padding:.35em .6em;border-bottom:1px solid #ddd;
text-align:left;vertical-align:top}th{background:#eee}.s-ready{color:#070}.s-failed{color:#b00}
.s-starting,.s-stopping{color:#a60}code{font-size:12px}small{color:#666}button{margin:1px}
</style>"""

LOGIN = f"""<!doctype html><html><head><meta charset="utf-8"><title>mlxpin</title>{_STYLE}
</head><body><h1>mlxpin</h1><p>__MESSAGE__</p>
<form method="post" action="/mlxpin/login"><label>API key
<input type="password" name="key" autocomplete="current-password" autofocus></label>
<button type="submit">Sign in</button></form></body></html>"""

PAGE = f"""<!doctype html><html><head><meta charset="utf-8"><title>mlxpin</title>{_STYLE}
</head><body><h1>mlxpin</h1><p id="summary"></p>
<table><thead><tr><th>Model</th><th>State</th><th>Pin</th><th>Memory</th><th>In flight</th>
<th>Last use</th><th>Recent requests</th><th></th></tr></thead><tbody id="models"></tbody>
</table><script id="data" type="application/json">__DATA__</script><script>
"use strict";
const esc = s => String(s ?? "").replace(/[&<>"']/g, c => "&#" + c.charCodeAt(0) + ";");
const gb = b => b == null ? "-" : (b / 2 ** 30).toFixed(2) + " GiB";
const ago = t => t == null ? "never" : Math.round(Date.now() / 1000 - t) + " s ago";
function render(st) {{
  document.getElementById("summary").textContent = "memory " + gb(st.budget.used) + " of " +
    gb(st.budget.total) + " · " + st.loaded + " loaded";
  document.getElementById("models").innerHTML = st.models.map(m => {{
    const d = st.details[m.api_label] || {{pin: {{}}, recent: []}}, p = d.pin;
    const recent = d.recent.slice(-5).reverse().map(r => esc(r.status) + " " + esc(r.ms) +
      " ms" + (r.tokens_per_s == null ? "" : " " + esc(r.tokens_per_s) + " tok/s")).join("<br>");
    const act = a =>
      `<button data-action="${{a}}" data-label="${{esc(m.api_label)}}">${{a}}</button>`;
    return `<tr data-label="${{esc(m.api_label)}}"><td class="label">${{esc(m.api_label)}}</td>` +
      `<td class="state s-${{esc(m.state)}}">${{esc(m.state)}}</td><td><code>` +
      `${{esc((p.commit || "").slice(0, 12))}}</code><br><small>${{esc(p.engine)}} · ` +
      `${{esc(p.runtime)}} · mlx-lm ${{esc(p.mlx_lm)}}</small></td><td>${{gb(m.cost)}}</td>` +
      `<td>${{esc(m.in_flight)}}</td><td>${{ago(m.last_used)}}</td><td>${{recent || "-"}}</td>` +
      `<td>${{st.operator ? act("load") + act("unload") : ""}}</td></tr>`;
  }}).join("");
}}
async function refresh() {{
  try {{
    const r = await fetch("/mlxpin/status?detail=1", {{credentials: "same-origin"}});
    if (r.ok) render(await r.json());
  }} catch (e) {{}}
}}
document.addEventListener("click", async ev => {{
  const b = ev.target.closest("button[data-action]");
  if (!b) return;
  b.disabled = true;
  const url = "/mlxpin/models/" + encodeURIComponent(b.dataset.label) + "/" + b.dataset.action;
  await fetch(url, {{method: "POST", credentials: "same-origin"}}).catch(() => null);
  refresh();
}});
render(JSON.parse(document.getElementById("data").textContent));
setInterval(refresh, 2000);
</script></body></html>"""
