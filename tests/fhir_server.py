"""A real FHIR R4 server on 127.0.0.1 for tests and the upload benchmark, and a proxy in
front of it that injects faults.

The server is SEKMET (PyPI ``sekmet-fhir``): FastAPI over SQLite, atomic transactions with
urn:uuid and conditional-reference resolution, inbound validation with fhir.resources. It
runs in its own process so that a test can kill and restart it.
"""

from __future__ import annotations

import http.server
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalFhirServer:
    """``with LocalFhirServer(tmp) as srv: srv.base`` is a fresh, empty server."""

    def __init__(self, folder: Path, *, port: int | None = None, tokens: list[str] | None = None,
                 validation: str = "strict", tls: tuple[Path, Path] | None = None) -> None:
        self.folder = folder
        self.port = port or free_port()
        self.tls = tls
        self.base = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}/fhir"
        self.proc: subprocess.Popen[bytes] | None = None
        folder.mkdir(parents=True, exist_ok=True)
        auth = ("server_auth:\n  types: [bearer]\n  tokens: [" + ", ".join(tokens) + "]\n"
                if tokens else "")
        (folder / "settings.yaml").write_text(
            f"base_url: {self.base}\nport: {self.port}\ndb_path: {folder / 'fhir.db'}\n"
            f"data_dir: {folder / 'data'}\nlog_inbound: false\n"
            f"simulator:\n  enabled: false\nvalidation:\n  inbound: \"{validation}\"\n{auth}")

    def start(self, timeout: float = 60.0) -> LocalFhirServer:
        env = {**os.environ, "SEKMET_CONFIG": str(self.folder / "settings.yaml")}
        self.log = open(self.folder / "server.log", "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "sekmet.main:app_factory", "--factory",
             "--host", "127.0.0.1", "--port", str(self.port), "--log-level", "warning",
             *(["--ssl-certfile", str(self.tls[0]), "--ssl-keyfile", str(self.tls[1])]
               if self.tls else [])],
            cwd=self.folder, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"FHIR server exited: see {self.folder / 'server.log'}")
            try:
                if httpx.get(f"{self.base}/metadata", timeout=2,
                             verify=False).status_code < 500:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"FHIR server did not start in {timeout} s")

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
        if getattr(self, "log", None):
            self.log.close()

    def __enter__(self) -> LocalFhirServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- reading back
    def count(self, rtype: str, query: str = "", headers: dict[str, str] | None = None) -> int:
        sep = "&" if query else ""
        r = httpx.get(f"{self.base}/{rtype}?{query}{sep}_summary=count", timeout=60,
                      headers=headers, verify=False)
        r.raise_for_status()
        return r.json()["total"]

    def read(self, reference: str) -> httpx.Response:
        return httpx.get(f"{self.base}/{reference}", timeout=60, verify=False)


def self_signed_cert(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 signed by itself (so it is its own CA), and its key."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    folder.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "carecourse test server")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@dataclass
class FaultPlan:
    """What the proxy does with request number k (0-based), cycling through ``cycle``:
    ``ok`` forwards; ``429`` and ``503`` answer without forwarding (429 with Retry-After);
    ``drop`` closes the connection without forwarding; ``lost`` forwards, lets the server
    commit, and then closes the connection without answering, so the client cannot know."""

    cycle: tuple[str, ...] = ("ok", "429", "ok", "503", "ok", "drop", "ok", "lost", "ok", "ok")
    retry_after: int = 1
    seen: list[str] = field(default_factory=list)
    #: For each 429: (body hash, time answered); the next try of that body must wait.
    throttled: dict[int, float] = field(default_factory=dict)
    early_retries: int = 0


class FaultProxy:
    """A threaded HTTP proxy to ``upstream`` that misbehaves according to a :class:`FaultPlan`."""

    def __init__(self, upstream: str, plan: FaultPlan) -> None:
        self.upstream = upstream.rstrip("/")
        self.plan = plan
        self.port = free_port()
        self.lock = threading.Lock()
        self.client = httpx.Client(timeout=120)
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _handle(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                key = hash(body)
                with proxy.lock:
                    k = len(proxy.plan.seen)
                    action = proxy.plan.cycle[k % len(proxy.plan.cycle)]
                    if self.command == "GET":
                        action = "ok"  # faults on uploads only, not on /metadata or counts
                    proxy.plan.seen.append(action)
                    since = proxy.plan.throttled.pop(key, None)
                    if since is not None and time.monotonic() - since < proxy.plan.retry_after - 0.05:
                        proxy.plan.early_retries += 1
                if action in ("drop",):
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if action in ("429", "503"):
                    with proxy.lock:
                        if action == "429":
                            proxy.plan.throttled[key] = time.monotonic()
                    payload = (b'{"resourceType":"OperationOutcome","issue":[{"severity":"error",'
                               b'"code":"transient","diagnostics":"injected fault"}]}')
                    self.send_response(int(action))
                    if action == "429":
                        self.send_header("Retry-After", str(proxy.plan.retry_after))
                    self.send_header("Content-Type", "application/fhir+json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() in ("content-type", "accept", "authorization", "prefer")}
                resp = proxy.client.request(self.command, proxy.upstream + self.path[len("/fhir"):],
                                            content=body, headers=headers)
                if action == "lost":
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.send_response(resp.status_code)
                self.send_header("Content-Type", resp.headers.get("content-type", "application/json"))
                self.send_header("Content-Length", str(len(resp.content)))
                self.end_headers()
                self.wfile.write(resp.content)

            do_GET = do_POST = do_PUT = _handle

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.base = f"http://127.0.0.1:{self.port}/fhir"

    def __enter__(self) -> FaultProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.client.close()
