"""The launchers' own control channel: node 0 tells the other nodes when to join and how to exit.

Owns: a small TCP protocol of newline-delimited JSON on MASTER_ADDR:MASTER_PORT (AML gives every
node that address; nothing else uses it once torch variables are scrubbed):
  head -> worker  {"challenge": n_h}           on connect (a random nonce)
  worker -> head  {"hello": mac("worker", n_h), "challenge": n_w}
  head -> worker  {"ray_address": "ip:port", "proof": mac("head", n_w)}   only to a peer whose
                                               hello is right; any other peer is dropped unheard
  (mac = HMAC-SHA256 with the job's Ray token, which every node has: both sides prove they hold
  it, so a stranger learns nothing, cannot stop the job with a "failed" line, and a worker never
  takes orders from a fake head; with Ray auth disabled there is no token and no check)
  worker -> head  {"rank": r, "role": "...", "ok": true|false, "message": "..."}  after `ray start`
  head -> worker  {"ping": t}                   every `heartbeat_s` (a silent head counts as dead)
  worker -> head  {"failed": "..."}             a worker's own Ray died while the driver runs
  head -> worker  {"exit": code}                the driver ended; every node exits with `code`
Why not Ray itself: the exit status must reach workers even when Ray or the driver is the thing that
died, and the head must learn about a worker that never managed to join Ray.
Does not know: Ray, AML, the driver. Only stdlib.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)


class RendezvousError(RuntimeError):
    """The cluster could not form, or a node was lost; the message says which and why."""


def _mac(secret: str | None, who: str, nonce: Any) -> str:
    key = (secret or "").encode()
    return hmac.new(key, f"{who}:{nonce}".encode(), hashlib.sha256).hexdigest()


def _proves(
    secret: str | None, msg: dict[str, Any] | None, field: str, who: str, nonce: str
) -> bool:
    """Whether `msg[field]` is `who`'s MAC of `nonce` (always true without a secret)."""
    if secret is None:
        return msg is not None
    given = (msg or {}).get(field)
    return isinstance(given, str) and hmac.compare_digest(given, _mac(secret, who, nonce))


def _send(sock: socket.socket, msg: dict[str, Any]) -> None:
    sock.sendall((json.dumps(msg) + "\n").encode())


class _LineReader:
    """Reads newline-delimited JSON from a socket with a per-call timeout."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def read(self, timeout: float) -> dict[str, Any] | None:
        """One message, or None on timeout. Raises ConnectionError on EOF."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                return None
            if not chunk:
                raise ConnectionError("peer closed the connection")
            self.buf += chunk
            if len(self.buf) > 1 << 20:
                raise ConnectionError("peer sent an oversized message")
        line, self.buf = self.buf.split(b"\n", 1)
        try:
            msg = json.loads(line)
        except ValueError:
            raise ConnectionError(f"peer sent a malformed message: {line[:80]!r}") from None
        if not isinstance(msg, dict):
            raise ConnectionError(f"peer sent a non-object message: {line[:80]!r}")
        return msg


class HeadRendezvous:
    """Node 0's side: accepts the N+M-1 workers, heartbeats them, broadcasts the exit code."""

    def __init__(
        self,
        bind_host: str,
        port: int,
        worker_ranks: set[int],
        ray_address: str,
        heartbeat_s: float = 2.0,
        secret: str | None = None,
    ) -> None:
        self.secret = secret
        self.worker_ranks = set(worker_ranks)
        self.ray_address = ray_address
        self.heartbeat_s = heartbeat_s
        self._lock = threading.Lock()
        self._conns: dict[int, socket.socket] = {}
        self._joined: dict[int, dict[str, Any]] = {}
        self._failures: list[str] = []
        self._closing = threading.Event()
        self._server = socket.create_server((bind_host, port), reuse_port=False)
        self._server.settimeout(0.5)
        self._threads = [
            threading.Thread(target=self._accept_loop, name="rdzv-accept", daemon=True),
            threading.Thread(target=self._heartbeat_loop, name="rdzv-heartbeat", daemon=True),
        ]
        for t in self._threads:
            t.start()

    # -- background threads ------------------------------------------------------------------
    def _accept_loop(self) -> None:
        while not self._closing.is_set():
            try:
                conn, peer = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn, peer), daemon=True).start()

    def _serve(self, conn: socket.socket, peer: Any) -> None:
        reader = _LineReader(conn)
        rank: int | None = None
        try:
            nonce = secrets.token_hex(16)
            _send(conn, {"challenge": nonce})
            hello = reader.read(timeout=10.0)
            if not _proves(self.secret, hello, "hello", "worker", nonce):
                log.warning(
                    "rendezvous: dropped a peer %s that does not hold the job's token", peer
                )
                conn.close()
                return
            proof = _mac(self.secret, "head", (hello or {}).get("challenge"))
            _send(conn, {"ray_address": self.ray_address, "proof": proof})
            while not self._closing.is_set():
                msg = reader.read(timeout=1.0)
                if msg is None:
                    continue
                if "rank" in msg and rank is None:
                    rank = self._register(conn, peer, msg)
                    if rank is None:
                        return
                elif "failed" in msg:
                    self._fail(f"node {rank}: {msg['failed']}")
                    return
        except (ConnectionError, OSError) as e:
            if self._closing.is_set():
                return
            if rank is not None:
                self._fail(f"node {rank} disconnected ({e})")
            else:  # a port scan or a worker that retries: not a cluster failure
                log.warning("rendezvous: a peer %s dropped before joining: %s", peer, e)

    def _register(self, conn: socket.socket, peer: Any, msg: dict[str, Any]) -> int | None:
        try:
            rank = int(msg["rank"])
        except (TypeError, ValueError):
            log.warning("rendezvous: ignoring a join without an integer rank from %s", peer)
            conn.close()
            return None
        with self._lock:
            if rank not in self.worker_ranks or rank in self._joined:
                why = "is not a worker rank" if rank not in self.worker_ranks else "joined twice"
                self._failures.append(f"node rank {rank} from {peer} {why}")
                conn.close()
                return None
            self._conns[rank] = conn
            self._joined[rank] = msg
        if not msg.get("ok", False):
            self._fail(f"node {rank} ({msg.get('role')}) failed to start: {msg.get('message')}")
        else:
            log.info("rendezvous: node %d (%s) joined from %s", rank, msg.get("role"), peer[0])
        return rank

    def _fail(self, reason: str) -> None:
        with self._lock:
            self._failures.append(reason)
        log.error("rendezvous: %s", reason)

    def _heartbeat_loop(self) -> None:
        while not self._closing.wait(self.heartbeat_s):
            with self._lock:
                conns = list(self._conns.items())
            for rank, conn in conns:
                try:
                    _send(conn, {"ping": time.time()})
                except OSError as e:
                    self._fail(f"node {rank} unreachable ({e})")

    # -- API for the launcher ------------------------------------------------------------------
    def failure(self) -> str | None:
        """The first failure seen (a worker that could not start or was lost), else None."""
        with self._lock:
            return self._failures[0] if self._failures else None

    def wait_joined(self, timeout: float, alive: Callable[[], str | None] = lambda: None) -> None:
        """Block until every worker joined OK; raise on a failure, on `alive()` returning a reason, or timeout."""
        deadline = time.monotonic() + timeout
        while True:
            failure = self.failure() or alive()
            if failure:
                raise RendezvousError(failure)
            with self._lock:
                missing = sorted(self.worker_ranks - set(self._joined))
            if not missing:
                return
            if time.monotonic() > deadline:
                raise RendezvousError(
                    f"nodes {missing} did not join within {timeout:.0f}s: check their logs (ray start failed, "
                    "or they cannot reach MASTER_ADDR:MASTER_PORT), or raise --join-timeout"
                )
            time.sleep(0.1)

    def finish(self, code: int) -> None:
        """Tell every joined worker to exit with `code`, then close."""
        self._closing.set()
        with self._lock:
            conns = list(self._conns.items())
        for rank, conn in conns:
            try:
                _send(conn, {"exit": code})
                conn.shutdown(socket.SHUT_WR)
            except OSError as e:
                log.warning("rendezvous: could not tell node %d to exit: %s", rank, e)
        for _, conn in conns:
            conn.close()
        self._server.close()


class WorkerRendezvous:
    """A worker node's side: connect, learn the Ray address, report, then wait for the exit code."""

    def __init__(self, sock: socket.socket, ray_address: str, reader: _LineReader) -> None:
        self.sock = sock
        self.ray_address = ray_address
        self._reader = reader

    @classmethod
    def connect(
        cls, host: str, port: int, timeout: float, secret: str | None = None
    ) -> WorkerRendezvous:
        """Retry until node 0's launcher listens (it starts Ray first), up to `timeout` seconds.
        `secret`: the job's Ray token (see the module docstring)."""
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                sock = socket.create_connection((host, port), timeout=5)
            except OSError as e:
                last = e
                time.sleep(0.5)
                continue
            reader = _LineReader(sock)
            try:
                head = cls._handshake(sock, reader, secret, deadline)
            except (ConnectionError, OSError) as e:
                last = e
                sock.close()
                continue
            if not head or "ray_address" not in head:
                sock.close()
                raise RendezvousError(
                    f"{host}:{port} did not answer as our head launcher (MASTER_PORT in use by "
                    "something else, or a different job's token)"
                )
            return cls(sock, str(head["ray_address"]), reader)
        raise RendezvousError(
            f"could not reach node 0's launcher at {host}:{port} within {timeout:.0f}s ({last}): check that node 0 "
            "started (its log), MASTER_ADDR/MASTER_PORT, or raise --join-timeout"
        )

    @staticmethod
    def _handshake(
        sock: socket.socket, reader: _LineReader, secret: str | None, deadline: float
    ) -> dict[str, Any] | None:
        """Prove the token to the head and check its proof; the head's reply, or None."""
        challenge = reader.read(timeout=max(1.0, deadline - time.monotonic()))
        if not challenge or "challenge" not in challenge:
            return None
        mine = secrets.token_hex(16)
        _send(sock, {"hello": _mac(secret, "worker", challenge["challenge"]), "challenge": mine})
        try:
            head = reader.read(timeout=max(1.0, deadline - time.monotonic()))
        except ConnectionError:  # the head drops a peer whose hello is wrong
            raise ConnectionError(
                "node 0's launcher dropped this node after its token proof: the nodes do not "
                "share the job's Ray token (--ray-auth-token-file)"
            ) from None
        return head if _proves(secret, head, "proof", "head", mine) else None

    def report(self, rank: int, role: str, ok: bool, message: str = "") -> None:
        _send(self.sock, {"rank": rank, "role": role, "ok": ok, "message": message})

    def wait_exit(
        self, heartbeat_timeout: float, check: Callable[[], str | None] = lambda: None
    ) -> int:
        """The driver's exit code from node 0. `check()` returning a reason reports it and raises."""
        last_seen = time.monotonic()
        while True:
            problem = check()
            if problem:
                try:
                    _send(self.sock, {"failed": problem})
                except OSError:
                    log.warning("could not report %r to node 0", problem)
                raise RendezvousError(problem)
            try:
                msg = self._reader.read(timeout=0.5)
            except (ConnectionError, OSError) as e:
                raise RendezvousError(
                    f"lost node 0's launcher ({e}) before it sent an exit code"
                ) from None
            now = time.monotonic()
            if msg is None:
                if now - last_seen > heartbeat_timeout:
                    raise RendezvousError(f"no heartbeat from node 0 for {heartbeat_timeout:.0f}s")
                continue
            last_seen = now
            if "exit" in msg:
                return int(msg["exit"])

    def close(self) -> None:
        self.sock.close()
