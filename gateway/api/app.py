"""The aiohttp application: middlewares and routes (the core's, then each adapter's);
resources come from ``gateway.service``."""

from __future__ import annotations

from aiohttp import web

from gateway.api.auth import auth_middleware
from gateway.api.dossiers import routes as dossier_routes
from gateway.api.keys import SETTINGS
from gateway.api.ops import routes as ops_routes
from gateway.api.problems import problems_middleware
from gateway.api.routes import routes
from gateway.api.stats import routes as stats_routes
from gateway.settings import Settings


def create_app(settings: Settings) -> web.Application:
    app = web.Application(
        middlewares=[problems_middleware, auth_middleware],
        client_max_size=settings.max_body_bytes,
    )
    app[SETTINGS] = settings
    app.add_routes(routes)
    app.add_routes(ops_routes)
    app.add_routes(dossier_routes)
    app.add_routes(stats_routes)
    # Imported here: the adapters build on gateway.api.routes, so importing them at the top
    # would make `import adapters` (before gateway.api) a circular import.
    from adapters import ADAPTERS

    for adapter in ADAPTERS:
        if adapter.routes is not None:
            app.add_routes(adapter.routes)
    return app
