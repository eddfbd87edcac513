"""The network client: a storage served by ``amphora serve`` (see :mod:`.storage`).

:mod:`.storage` is the storage (requests, reads, commits, the snapshot kept current by the
server's pushes), :mod:`.wire` the connection to the server and the process's I/O loop,
:mod:`.search` the JSON mirror's requests forwarded to the server.
"""
from amphora.errors import ClientDisconnected
from amphora.storage.client.storage import ClientStorage

__all__ = ["ClientStorage", "ClientDisconnected"]
