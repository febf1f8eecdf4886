"""The edge: how the outside reaches the hub.

HTTP (:mod:`hub.edge.app` holds the route table, :mod:`hub.edge.append` the write path),
WebSockets (:mod:`hub.edge.ws`), the command line (:mod:`hub.edge.cli`) and the documents
that describe them (:mod:`hub.edge.openapi`). The edge parses and checks what arrives, asks
:mod:`hub.domain` to do it, and turns the answer into responses and frames.
"""
