"""Infrastructure: where the data lives and how it travels.

The streams DB (:mod:`hub.infra.store`: embedded file or remote libSQL), the tenant and public
DBs (:mod:`hub.infra.db`, :mod:`hub.infra.tenants`), the brokers linking instances
(:mod:`hub.infra.broker`: memory and Redis), and the archive of finished streams
(:mod:`hub.infra.archive`). Nothing here knows about HTTP, sockets or order rules.
"""
