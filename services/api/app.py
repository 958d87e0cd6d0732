"""The api process: the ticket pages, the JSON API, and the outbox relay.

``create_app`` builds the FastAPI application around a config, a store and
(optionally) the outbox relay it wakes after each stored reply, wrapped in the
browser hardening of ``services.api.security`` (headers, Host and Origin checks).
The OpenAPI document is at /openapi.json; no documentation page is served, as
Swagger UI would load its code from a CDN into deskmail's origin.
/metrics also carries ``deskmail_tickets{queue,status}``, read from the kept
counts at each scrape, and ``deskmail_suspended{queue,reason}``
(``services.api.ticket_metrics``), every request by route template
(``deskmail_api_requests_total``, ``deskmail_api_request_seconds``) and, from
`deskmail run api`, the stages' consumer lag read from the broker (``services.api.lag``).
``run_api`` is `deskmail run api`: it serves the app with uvicorn on
``api.listen`` (with its port replaced when a port is given), serves /metrics,
/healthz and /readyz on the same port, and runs the relay in a background
thread. It returns when ``stop`` is set (the CLI turns SIGTERM/SIGINT into it;
uvicorn runs in a worker thread, so it installs no signal handlers of its own).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Awaitable, Callable
from urllib.parse import urlencode
from collections.abc import Sequence
from pathlib import Path

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from services import deadletters
from services.api import (
    rest,
    rest_suspended,
    rest_workflow,
    signin,
    suspended_web,
    ticket_metrics,
    views_web,
    web,
    workflow,
)
from services.api.context import ApiContext, Releasing, Waker
from services.api.csrf import CsrfTokens
from services.api.relay import OutboxRelay
from services.api.security import BrowserGuard, SitePolicy
from services.api.lag import LagWatch
from services.common import durability
from services.common.blobs import blob_store
from services.common.metrics import API_REQUEST_SECONDS, API_REQUESTS
from services.common.config import Config
from services.common.kafka import Kafka
from services.common.runtime import Health, serve_http
from services.suspended import Releaser
from services.tickets import TicketStore
from services.tickets.gate import await_schema

log = logging.getLogger("deskmail.api")
STATIC = Path(__file__).resolve().parent / "static"


def create_app(config: Config, store: TicketStore, relay: Waker | None = None, health: Health | None = None,
               releaser: Releasing | None = None) -> FastAPI:
    """The web application. ``relay`` is woken after each stored reply (None:
    nothing relays from this process); ``health`` answers /healthz and /readyz
    (None: both always answer ok); ``releaser`` releases suspended mail (None:
    the Release button answers that this api has no broker)."""
    app = FastAPI(
        title="deskmail",
        version="1",
        description="Tickets from email: read tickets and their threads, reply by email.",
        docs_url=None,
        redoc_url=None,
    )
    app.state.deskmail = ApiContext(config, store, relay, releaser)
    app.state.csrf = CsrfTokens.from_config(config)
    app.state.blobs = blob_store(config)
    app.add_middleware(BrowserGuard, site=SitePolicy.from_config(config), refuse=error_response)
    if config.api.auth.mode == "oidc":
        app.state.signin = signin.SignIn(config)
        app.include_router(signin.router)
    app.include_router(rest_workflow.router)
    app.include_router(rest.router)
    app.include_router(rest_suspended.router)
    app.include_router(views_web.router)
    app.include_router(suspended_web.router)
    app.include_router(workflow.router)
    app.include_router(web.router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    own_metrics = ticket_metrics.registry(config, store)

    @app.middleware("http")
    async def count_requests(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        started = time.perf_counter()
        status = 500
        try:
            response = await call_next(request)
            status = response.status_code
            return response
        finally:
            route = _route_template(request)
            API_REQUEST_SECONDS.labels(route).observe(time.perf_counter() - started)
            API_REQUESTS.labels(request.method if request.method in _METHODS else "other", route,
                                        f"{status // 100}xx").inc()

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        # The process-wide metrics, then this app's ticket gauge (read at scrape time).
        return Response(generate_latest() + generate_latest(own_metrics), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> Response:
        ok = health is None or health.alive()
        return PlainTextResponse("ok\n" if ok else "stale\n", status_code=200 if ok else 503)

    @app.get("/readyz", include_in_schema=False)
    def readyz() -> Response:
        ok = health is None or health.ready()
        body = "ready" if health is None else health.readiness()
        return PlainTextResponse(f"{body}\n", status_code=200 if ok else 503)

    @app.exception_handler(StarletteHTTPException)
    async def errors(request: Request, exc: StarletteHTTPException) -> Response:
        if _wants_json(request):
            return await http_exception_handler(request, exc)
        if exc.status_code == 401 and config.api.auth.mode == "oidc" and request.method == "GET":
            # A page without a session: sign in, then come back here.
            here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            return RedirectResponse(f"/login?{urlencode({'next': here})}", status_code=303)
        return error_response(request, exc.status_code, str(exc.detail))

    return app


_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def _route_template(request: Request) -> str:
    """The matched route's template (``/api/v1/tickets/{key}``), never the path itself:
    a label value per ticket key would be a series per ticket."""
    route = request.scope.get("route")
    path = getattr(route, "path", None)
    if isinstance(path, str):
        return path
    if request.url.path.startswith("/static/"):
        return "/static"
    return "unmatched"


def _wants_json(request: Request) -> bool:
    return request.url.path.startswith("/api/") or "text/html" not in request.headers.get("accept", "text/html")


def error_response(request: Request, status: int, detail: str) -> Response:
    """Pages get an HTML error page; the JSON API FastAPI's {"detail": ...}."""
    if _wants_json(request):
        return JSONResponse({"detail": detail}, status_code=status)
    return web.templates.TemplateResponse(request, "error.html", {"status": status, "detail": detail},
                                          status_code=status)


def _listen(config: Config, port: int | None) -> tuple[str, int]:
    """``api.listen`` (default 127.0.0.1:8080); a given ``port`` (--metrics-port)
    replaces its port and keeps its host, so the page stays on loopback unless
    the configuration says otherwise (Kubernetes: ``api: {listen: 0.0.0.0:8080}``)."""
    return config.api.listen.host, port if port is not None else config.api.listen.port


def _await_schema(store: TicketStore, stop: threading.Event, health: Health, host: str, port: int) -> bool:
    if store.schema_state() == "current":
        return True
    probes = serve_http(host, port, health)
    try:
        return await_schema(store, stop, health, "api")
    finally:
        probes.shutdown()
        probes.server_close()  # free the port for the web server


def run_api(
    config: Config,
    stop: threading.Event,
    health: Health,
    bootstrap: Sequence[str] | None = None,
    port: int | None = None,
) -> None:
    """Serve until ``stop`` is set; raises if the web server or the relay failed.

    It starts on the schema of its release only: until `deskmail db migrate`
    has run, a plain server on the same address answers /healthz, /readyz (not
    ready, and why) and /metrics (``services.tickets.gate``).
    """
    store = TicketStore(config.database_url)
    host, listen_port = _listen(config, port)
    try:
        current = _await_schema(store, stop, health, host, listen_port)
    except BaseException:
        store.close()
        raise
    if not current:  # stopped while waiting
        store.close()
        return
    kafka = Kafka(config, bootstrap)
    try:
        durability.check_writes(config, kafka.describe_topics, durability.API_WRITES, "api")
    except BaseException:
        store.close()
        raise
    producer = kafka.producer()
    relay = OutboxRelay(store, producer, config.topics["outbound"])
    # The relay's producer also releases suspended mail (thread-safe, acks=all).
    releaser = Releaser(config, store, blob_store(config), producer,
                        lambda partition, offset: deadletters.read_one(kafka, partition, offset), stage="api")
    server = uvicorn.Server(uvicorn.Config(
        create_app(config, store, relay, health, releaser), host=host, port=listen_port,
        log_config=None, access_log=False, lifespan="off", timeout_graceful_shutdown=10,
    ))
    failures: list[BaseException] = []

    def guarded(name: str, target: object) -> threading.Thread:
        def body() -> None:
            try:
                target()  # type: ignore[operator]
            except BaseException as exc:  # noqa: BLE001 - reported and re-raised in the main thread
                failures.append(exc)
                log.exception("%s failed", name, extra={"stage": "api"})
            finally:
                stop.set()

        thread = threading.Thread(target=body, name=name, daemon=True)
        thread.start()
        return thread

    web_thread = guarded("web", server.run)
    relay_thread = guarded("relay", lambda: relay.run(stop, on_alive=health.tick))
    # Never fails (a broker outage is logged and measured again); stops with the api.
    threading.Thread(target=LagWatch(config, kafka.group_lag).run, args=(stop,), name="lag", daemon=True).start()
    log.info("started", extra={"stage": "api", "url": f"http://{host}:{listen_port}/"})
    try:
        while not stop.wait(0.2):
            health.set_ready(server.started)
    finally:
        health.set_ready(False)
        server.should_exit = True
        relay.wake()
        web_thread.join(timeout=30)
        relay_thread.join(timeout=30)
        producer.close()
        store.close()
    if failures:
        raise RuntimeError("the api stopped on an error") from failures[0]
