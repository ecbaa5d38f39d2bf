"""The aiohttp application: middlewares and routes; resources come from ``gateway.service``."""

from __future__ import annotations

from aiohttp import web

from adapters.document_management import routes as edxml_routes
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
    app.add_routes(edxml_routes)
    # Imported here: the adapter builds on gateway.api.routes, so importing it at the top
    # would make `import adapters.one_stop_shop` (before gateway.api) a circular import.
    from adapters.one_stop_shop import routes as motcua_routes

    app.add_routes(motcua_routes)
    return app
