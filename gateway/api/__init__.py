"""The HTTP API (aiohttp): problem details, bearer auth, the agencies' routes."""

from gateway.api.app import create_app

__all__ = ["create_app"]
