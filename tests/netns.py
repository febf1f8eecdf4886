"""Hosts on their own network stacks, and links between them to cut and heal (Linux, root).

:class:`Net` builds a small network out of network namespaces (``ip netns``), so that
processes that would all listen on 127.0.0.1 run as separate *hosts*, each with its own
address, reached over links that the test can cut::

                    root namespace: the test itself, host "client" (127.77.R.100)
                         |
      ns hubnet-PID-K-router: forwards between the hosts (127.77.R.254 on every link)
        |             |             |             |
     hub-a         hub-b          redis          sqld       one namespace each,
   127.77.R.1    127.77.R.2    127.77.R.3    127.77.R.4     eth0 <-> a veth end in the router

- Every address is in 127.0.0.0/8 (``127.77.R.0/24``, ``R`` picked per network so that
  networks of concurrent runs never overlap). ``net.ipv4.conf.*.route_localnet=1`` lets such
  addresses be routed over veth links at all; in each namespace the loopback keeps only
  ``127.0.0.1/32`` (not the usual ``/8``, which would make every 127.x address local).
- The test process stays in the root namespace, as host ``client``: its veth link
  (``hn<pid hex>n<k>``) and two routes in the root namespace's ``local`` table (which is looked up
  first, and holds ``local 127.0.0.0/8``) send ``127.77.R.0/24`` to the router. Nothing else of
  the root namespace changes: ``route_localnet`` is set on that one link.
- Processes run on a host with :meth:`Net.prefix` (``ip netns exec NAME``, which execs the
  command in place: the process started is the command itself, its pid the one to signal).

**Faults.** Every cut is silent, as a real partition is: packets are dropped, nobody is told
(no RST, no ICMP), so TCP connections stay open and only time-outs notice.

- :meth:`Net.cut` ``(a, b)``: the two hosts stop reaching each other, both ways, and nothing
  else changes (two ``blackhole`` policy rules in the router: ``from A to B``, ``from B to A``).
  :meth:`Net.heal` removes them.
- :meth:`Net.isolate` ``(h)``: ``h``'s link is taken down at the router (its end of the
  veth pair: the cable pulled at the switch). ``h`` sees its link without carrier; the
  router drops what is sent to ``h`` (a ``blackhole`` route for the whole network catches
  what no longer has a route). :meth:`Net.rejoin` sets the link up and puts ``h``'s route
  back.

**Clean-up.** A network is torn down by :meth:`Net.close` (a context manager, and an
``atexit`` hook for anything left open): processes still inside its namespaces are killed
(by pid, from ``ip netns pids``), the namespaces and the root link deleted. Namespaces and
links are named after the pid of the process that made them (``hubnet-<pid>-…``,
``hn<pid hex>n…``), and each new :class:`Net` first removes those of processes that no
longer exist (a run killed with ``kill -9``), never those of a live one.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import random
import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import TracebackType

import pytest

__all__ = ["CLIENT", "PREFIX", "Net", "NetError", "require_netns", "sweep"]

PREFIX = "hubnet-"  # every namespace made here: hubnet-<pid>-<k>-<host>
LINK_PREFIX = "hn"  # the root namespace's end of the client link: hn<pid hex>n<k>
CLIENT = "client"  # the root namespace, where the test runs
NET = "127.77"  # networks are 127.77.R.0/24
GATEWAY = 254  # the router's address on every link: 127.77.R.254
CLIENT_HOST = 100  # the root namespace's address: 127.77.R.100
BLACKHOLE_METRIC = 4000  # the router's catch-all for hosts without a route
RULE_PREF = 100  # the router's blackhole rules, before the local table (pref 0 stays first)
HOST_NAME = re.compile(r"[a-z][a-z0-9-]{0,14}")  # also the router's name for the host's link

_open: list[Net] = []  # closed by the atexit hook if a test did not


class NetError(RuntimeError):
    """An ``ip`` command failed."""


def _run(args: Sequence[str], *, check: bool = True) -> str:
    proc = subprocess.run(list(args), capture_output=True, text=True, timeout=30)
    if check and proc.returncode != 0:
        raise NetError(f"{' '.join(args)}: {proc.stderr.strip() or proc.returncode}")
    return proc.stdout


def _ip(*args: str, ns: str | None = None, check: bool = True) -> str:
    return _run(["ip", *(["-n", ns] if ns else []), *args], check=check)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill_inside(ns: str) -> None:
    """SIGKILL every process still inside namespace ``ns`` (ours: started in it by a Net)."""
    for word in _ip("netns", "pids", ns, check=False).split():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(word), signal.SIGKILL)


def _delete_ns(ns: str) -> None:
    _kill_inside(ns)
    for _ in range(50):  # the processes must be gone for the namespace to go
        if not _ip("netns", "pids", ns, check=False).split():
            break
        time.sleep(0.02)
    _ip("netns", "del", ns, check=False)


def sweep() -> list[str]:
    """Delete the namespaces and root links left by processes that no longer exist;
    returns their names. Those of a live process (another run) are left alone."""
    gone: list[str] = []
    for line in _ip("netns", "list", check=False).splitlines():
        name = line.split()[0] if line.split() else ""
        m = re.fullmatch(re.escape(PREFIX) + r"(\d+)-.*", name)
        if m and not _alive(int(m.group(1))):
            _delete_ns(name)
            gone.append(name)
    for line in _ip("-o", "link", "show", check=False).splitlines():
        m = re.match(r"\d+: (" + LINK_PREFIX + r"([0-9a-f]+)n\d+)[@:]", line)
        if m and not _alive(int(m.group(2), 16)):
            _ip("link", "del", m.group(1), check=False)
            gone.append(m.group(1))
    return gone


def _write_sysctl(path: str, value: str, ns: str | None = None) -> None:
    """Write ``/proc/sys/...`` in the root namespace, or in ``ns`` (a shell run inside it:
    ``/proc/sys/net`` is the namespace of the process that opens it)."""
    if ns is None:
        Path(path).write_text(value)
    else:
        _run(["ip", "netns", "exec", ns, "sh", "-c", f"echo {value} > {path}"])


class Net:
    """A network of hosts in namespaces, the test in the root one (see the module docstring).

    ``Net(["hub-a", "hub-b", "redis", "sqld"])``, used as a context manager (or
    :meth:`start`, then :meth:`close`). Host names are 1 to 15 characters, ``[a-z0-9-]``;
    ``"client"`` is the root namespace.
    """

    _made = 0  # networks made by this process (names them)

    def __init__(self, hosts: Iterable[str]) -> None:
        self.hosts = list(hosts)
        for h in self.hosts:
            if not HOST_NAME.fullmatch(h) or h == CLIENT:
                raise ValueError(f"bad host name {h!r}")
        if len(set(self.hosts)) != len(self.hosts):
            raise ValueError(f"host names repeat: {self.hosts}")
        Net._made += 1
        self.tag = f"{os.getpid()}-{Net._made}"
        self.router = f"{PREFIX}{self.tag}-router"
        self.root_link = f"{LINK_PREFIX}{os.getpid():x}n{Net._made}"
        self.subnet: int | None = None  # R of 127.77.R.0/24, once claimed
        self._namespaces: list[str] = []  # made so far (deleted by close)
        self._cuts: set[tuple[str, str]] = set()
        self._isolated: set[str] = set()
        self._closed = False

    # -- names and addresses ----------------------------------------------------------------

    def ns(self, host: str) -> str | None:
        """The namespace of ``host`` (None: ``client``, the root namespace)."""
        if host == CLIENT:
            return None
        if host not in self.hosts:
            raise KeyError(host)
        return f"{PREFIX}{self.tag}-{host}"

    def addr(self, host: str) -> str:
        """``host``'s address, 127.77.R.N."""
        assert self.subnet is not None, "start() first"
        n = CLIENT_HOST if host == CLIENT else self.hosts.index(host) + 1
        return f"{NET}.{self.subnet}.{n}"

    @property
    def gateway(self) -> str:
        return f"{NET}.{self.subnet}.{GATEWAY}"

    @property
    def network(self) -> str:
        return f"{NET}.{self.subnet}.0/24"

    def prefix(self, host: str) -> list[str]:
        """The command prefix that runs a process on ``host`` (``[]`` for ``client``)."""
        ns = self.ns(host)
        return [] if ns is None else ["ip", "netns", "exec", ns]

    # -- building ---------------------------------------------------------------------------

    def start(self) -> Net:
        sweep()
        _open.append(self)
        try:
            self._add_ns(self.router)
            _write_sysctl("/proc/sys/net/ipv4/ip_forward", "1", self.router)
            self._claim_subnet()  # the client link, and 127.77.R.0/24 in the root namespace
            _ip("route", "add", "blackhole", self.network, "metric", str(BLACKHOLE_METRIC),
                ns=self.router)  # fmt: skip
            for host in self.hosts:
                ns = self.ns(host)
                assert ns is not None
                self._add_ns(ns)
                _ip("link", "add", host, "type", "veth", "peer", "name", "eth0", "netns", ns,
                    ns=self.router)  # fmt: skip
                me = self.addr(host)
                _ip("addr", "add", f"{me}/32", "dev", "eth0", ns=ns)
                _ip("link", "set", "eth0", "up", ns=ns)
                _ip("route", "add", f"{self.gateway}/32", "dev", "eth0", "src", me, ns=ns)
                _ip("route", "add", self.network, "via", self.gateway, "dev", "eth0", "src", me,
                    ns=ns)  # fmt: skip
                self._router_end(host)
            self.wait_reachable()
        except BaseException:
            self.close()
            raise
        return self

    def _add_ns(self, ns: str) -> None:
        _ip("netns", "add", ns)
        self._namespaces.append(ns)
        # Every link made here from now on inherits route_localnet (the "default" value).
        for conf in ("all", "default"):
            _write_sysctl(f"/proc/sys/net/ipv4/conf/{conf}/route_localnet", "1", ns)
        _ip("link", "set", "lo", "up", ns=ns)
        # lo comes up with 127.0.0.1/8, which makes all of 127/8 local: keep only 127.0.0.1.
        _ip("addr", "del", "127.0.0.1/8", "dev", "lo", ns=ns)
        _ip("addr", "add", "127.0.0.1/32", "dev", "lo", ns=ns)

    def _router_end(self, host: str) -> None:
        """The router's end of ``host``'s link: up, with the gateway address and the host's
        route (both go when the link goes down)."""
        _ip("addr", "replace", f"{self.gateway}/32", "dev", host, ns=self.router)
        _ip("link", "set", host, "up", ns=self.router)
        _ip("route", "replace", f"{self.addr(host)}/32", "dev", host, "src", self.gateway,
            ns=self.router)  # fmt: skip

    def _claim_subnet(self) -> None:
        """Make the client link and claim a free 127.77.R.0/24 for it: the route to the
        router (127.77.R.254) in the root namespace's local table is the claim (a second
        ``ip route add`` of it fails)."""
        link = self.root_link
        _ip("link", "add", link, "type", "veth", "peer", "name", CLIENT, "netns", self.router)
        _write_sysctl(f"/proc/sys/net/ipv4/conf/{link}/route_localnet", "1")
        _ip("link", "set", link, "up")
        taken = _ip("route", "show", "table", "local").split()
        choices = [r for r in range(1, 254) if f"{NET}.{r}.{GATEWAY}" not in taken]
        random.shuffle(choices)
        for r in choices:
            self.subnet = r
            me = self.addr(CLIENT)
            _ip("addr", "add", f"{me}/32", "dev", link)
            try:  # the gateway first: a gateway the table finds local would be refused
                _ip("route", "add", f"{self.gateway}/32", "dev", link, "src", me, "table", "local")
            except NetError:  # taken by a concurrent run just now: try another
                _ip("addr", "del", f"{me}/32", "dev", link, check=False)
                continue
            _ip("route", "add", self.network, "via", self.gateway, "dev", link, "src", me,
                "table", "local")  # fmt: skip
            self._router_end(CLIENT)
            return
        self.subnet = None
        raise NetError(f"no free {NET}.R.0/24 left")

    def wait_reachable(self, seconds: float = 10.0) -> None:
        """Wait until the root namespace's link to the router answers ARP (the links of a
        new network take a moment to come up)."""
        deadline = time.monotonic() + seconds
        while True:
            state = _ip("neigh", "show", self.gateway, "dev", self.root_link, check=False)
            if "lladdr" in state:
                return
            if time.monotonic() > deadline:
                raise NetError(f"the router {self.gateway} does not answer ARP: {state!r}")
            # Any packet to the gateway makes the kernel ask for its address.
            with contextlib.suppress(OSError), socket.socket(type=socket.SOCK_DGRAM) as s:
                s.sendto(b"", (self.gateway, 9))
            time.sleep(0.05)

    # -- faults -----------------------------------------------------------------------------

    def _rules(self, a: str, b: str, op: str) -> None:
        for src, dst in ((a, b), (b, a)):
            _ip("rule", op, "pref", str(RULE_PREF), "from", self.addr(src), "to", self.addr(dst),
                "blackhole", ns=self.router)  # fmt: skip

    def cut(self, a: str, b: str) -> None:
        """``a`` and ``b`` stop reaching each other (both ways, silently); nothing else."""
        key = (min(a, b), max(a, b))
        if key not in self._cuts:
            self._rules(a, b, "add")
            self._cuts.add(key)

    def heal(self, a: str, b: str) -> None:
        key = (min(a, b), max(a, b))
        if key in self._cuts:
            self._rules(a, b, "del")
            self._cuts.discard(key)

    def isolate(self, host: str) -> None:
        """Take ``host``'s link down at the router: it reaches no one, no one reaches it."""
        if host not in self._isolated:
            _ip("link", "set", host, "down", ns=self.router)
            self._isolated.add(host)

    def rejoin(self, host: str) -> None:
        if host in self._isolated:
            self._router_end(host)
            self._isolated.discard(host)

    def heal_all(self) -> None:
        for a, b in list(self._cuts):
            self.heal(a, b)
        for host in list(self._isolated):
            self.rejoin(host)

    # -- tearing down -----------------------------------------------------------------------

    def close(self) -> None:
        """Kill what still runs inside, delete the namespaces and the root link. Idempotent."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(ValueError):
            _open.remove(self)
        _ip("link", "del", self.root_link, check=False)  # its routes go with it
        for ns in reversed(self._namespaces):
            _delete_ns(ns)
        self._namespaces.clear()

    def __enter__(self) -> Net:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


@atexit.register
def _close_all() -> None:
    for net in list(_open):
        with contextlib.suppress(Exception):
            net.close()


def require_netns() -> None:
    """Fail (never skip) the test where namespaces cannot be made: it needs root and ``ip``."""
    if os.geteuid() != 0:
        pytest.fail("network namespaces need root (ip netns add)", pytrace=False)
    try:
        _run(["ip", "-V"])
    except (OSError, NetError) as exc:
        pytest.fail(f"no ip command (iproute2): {exc}", pytrace=False)
