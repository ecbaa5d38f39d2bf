"""The external systems the gateway speaks to, one module each behind :mod:`adapters.base`.

:data:`ADAPTERS` is the registry the process is wired from (transports, routes, background
tasks); a new adapter is a module exporting ``ADAPTER`` and a line here.
"""

from adapters.amqp_native import ADAPTER as AMQP_NATIVE
from adapters.base import Adapter
from adapters.central_hub import ADAPTER as CENTRAL_HUB
from adapters.document_management import ADAPTER as DOCUMENT_MANAGEMENT
from adapters.one_stop_shop import ADAPTER as ONE_STOP_SHOP

#: In this order: routes are added, transports built and background tasks started in it.
ADAPTERS: tuple[Adapter, ...] = (DOCUMENT_MANAGEMENT, CENTRAL_HUB, ONE_STOP_SHOP, AMQP_NATIVE)

__all__ = ["ADAPTERS", "Adapter"]
