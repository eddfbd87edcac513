"""The amphora server: serves any storage to :class:`amphora.storage.client.ClientStorage`
clients over TCP or TLS (``amphora serve URI``). The wire protocol is in
:mod:`amphora.server.protocol`, the server in :mod:`amphora.server.server` (whose docstring
maps the modules beside it: a client's session, a served storage, the handlers of commits,
reads and searches)."""
from amphora.server.server import Server, serve

__all__ = ["Server", "serve"]
