"""The domain: what the hub does, whatever carries it.

Who may read and write (:mod:`hub.domain.auth`); the stream node that commits and fans out
(:mod:`hub.domain.node`, :mod:`hub.domain.channels`); one subscriber's delivery, whatever
transport carries it (:mod:`hub.domain.subscription`) and the open sockets' caps and stall
sweeper (:mod:`hub.domain.sessions`); the order flow of the seed (:mod:`hub.domain.orders`),
GPS (:mod:`hub.domain.gps`) and archiving (:mod:`hub.domain.archiver`). It calls
:mod:`hub.infra` for storage and transport and never imports :mod:`hub.edge`.
"""
