"""Upload FHIR transaction bundles to a FHIR R4 server, dependably.

What makes an upload dependable here:

* **Order.** The organization and practitioner bundles go first, one after the other,
  because every patient bundle refers to its providers by conditional references that
  the server resolves against them.
* **Idempotency.** A patient bundle's entries are sent as ``PUT <Type>/<id>`` with the ids
  the exporter derived from the run seed (the file keeps Synthea's ``POST`` form; the
  uploader rewrites the request lines only). A request retried after its response was lost
  therefore updates the same resources instead of creating a second patient. Provider
  entries keep their ``POST`` with ``ifNoneExist`` on their identifier, which is
  idempotent too and also reuses providers the server already has.
* **Retries.** Connection errors, timeouts, 408, 429 and 5xx are retried with exponential
  backoff and full jitter; a ``Retry-After`` header (seconds or an HTTP date) is honoured.
  Any other 4xx stops with the server's OperationOutcome shown: retrying would not help.
* **Journal.** Every bundle the server accepted is appended, with its SHA-256, to
  ``upload-journal.jsonl`` in the output folder (flushed and fsynced line by line, one
  line per write, so concurrent writers and a killed process leave whole lines). A rerun
  sends only what the journal does not hold for that server; ``--force`` sends all again.
* **Secrets.** A bearer token (``--token`` or ``$CARECOURSE_FHIR_TOKEN``) goes into the
  Authorization header only; it is never printed, journaled or put in an error message.
  TLS certificates are verified unless the user says ``--insecure``; ``--ca-cert`` adds a
  private CA.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import hashlib
import os
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import orjson
import tenacity

from exporters.fhir import SHARED_FILES, patient_bundle_file, provider_bundle_files
from modules.errors import CarecourseError, ConfigError

__all__ = ["JOURNAL_NAME", "TOKEN_ENV", "Journal", "ServerOptions", "UploadError", "UploadSink",
           "UploadSummary", "Uploader", "bundle_folder", "upload_folder", "verify"]

JOURNAL_NAME = "upload-journal.jsonl"
TOKEN_ENV = "CARECOURSE_FHIR_TOKEN"
FHIR_JSON = "application/fhir+json"
#: Statuses worth another try: the server is busy, restarting or briefly broken.
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


class UploadError(CarecourseError):
    """The server refused a bundle, could not be reached, or the folder holds no bundles."""


@dataclass(frozen=True)
class ServerOptions:
    """Where and how to upload. ``token`` is kept out of ``repr``."""

    url: str
    token: str | None = field(default=None, repr=False)
    verify: bool = True
    ca_cert: Path | None = None
    concurrency: int = 4
    retries: int = 8
    timeout: float = 120.0
    backoff_base: float = 0.5
    max_backoff: float = 30.0

    def check(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"--server {self.display_url!r} is not an http(s) URL; give the "
                              f"server's FHIR base, e.g. http://localhost:8080/fhir")
        if self.concurrency < 1:
            raise ConfigError(f"--concurrency must be at least 1, got {self.concurrency}")
        if self.retries < 0:
            raise ConfigError(f"--retries must be 0 or more, got {self.retries}")
        if self.ca_cert is not None and not self.ca_cert.is_file():
            raise ConfigError(f"--ca-cert {self.ca_cert}: no such file; give a PEM file with "
                              f"the CA that signed the server's certificate")

    @property
    def base(self) -> str:
        return self.url.rstrip("/")

    @property
    def display_url(self) -> str:
        """The URL without any user:password part, safe to print."""
        p = urlsplit(self.url)
        host = p.hostname or ""
        netloc = f"{host}:{p.port}" if p.port else host
        return urlunsplit((p.scheme, netloc, p.path, "", ""))


@dataclass
class UploadSummary:
    sent: int = 0
    skipped: int = 0
    resources: int = 0
    retries: int = 0
    seconds: float = 0.0
    failures: list[str] = field(default_factory=list)

    @property
    def bundles_per_second(self) -> float:
        return self.sent / self.seconds if self.seconds else 0.0

    @property
    def resources_per_second(self) -> float:
        return self.resources / self.seconds if self.seconds else 0.0


# --------------------------------------------------------------------------- journal


class Journal:
    """The bundles a server accepted, as JSON lines appended to ``upload-journal.jsonl``.

    Safe to share between threads (a lock) and processes (each record is one ``O_APPEND``
    write of a whole line). A line cut short by a killed process is ignored on reading:
    its bundle is simply sent again, which the idempotent requests make harmless.
    """

    def __init__(self, folder: Path, server: str) -> None:
        self.path = folder / JOURNAL_NAME
        self.server = server
        self._lock = threading.Lock()
        self._fd: int | None = None
        self.accepted: dict[str, dict[str, Any]] = {}
        self.damaged_lines = 0
        if self.path.exists():
            try:
                text = self.path.read_bytes()
            except OSError as exc:
                raise UploadError(f"{self.path}: cannot read the upload journal "
                                  f"({exc.strerror}); fix its permissions or delete it to "
                                  f"upload everything again") from None
            for line in text.splitlines():
                try:
                    rec = orjson.loads(line)
                except orjson.JSONDecodeError:
                    self.damaged_lines += 1
                    continue
                if isinstance(rec, dict) and rec.get("server") == server and "bundle" in rec:
                    self.accepted[rec["bundle"]] = rec

    def has(self, name: str, sha256: str) -> bool:
        rec = self.accepted.get(name)
        return rec is not None and rec.get("sha256") == sha256

    def record(self, name: str, sha256: str, types: Counter[str], status: int) -> None:
        rec = {"server": self.server, "bundle": name, "sha256": sha256,
               "resources": sum(types.values()), "types": dict(types), "status": status,
               "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
        line = orjson.dumps(rec) + b"\n"
        with self._lock:
            if self._fd is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            os.write(self._fd, line)
            os.fsync(self._fd)
            self.accepted[name] = rec

    def sent_types(self) -> Counter[str]:
        """Resources by type in every bundle the server accepted."""
        total: Counter[str] = Counter()
        for rec in self.accepted.values():
            total.update(rec.get("types", {}))
        return total

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


# --------------------------------------------------------------------------- bundles


def prepare_bundle(name: str, data: bytes) -> tuple[bytes, Counter[str]]:
    """Check that ``data`` is a transaction or batch bundle and make its requests
    idempotent: a ``POST`` of a resource with an id and no ``ifNoneExist`` becomes
    ``PUT <Type>/<id>``. Returns the bytes to send and the resources by type."""
    try:
        bundle = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise UploadError(f"{name}: not JSON ({exc}); upload only the bundles carecourse "
                          f"wrote, or fix the file") from None
    if (not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle"
            or bundle.get("type") not in ("transaction", "batch")):
        raise UploadError(f"{name}: not a FHIR transaction or batch Bundle; remove it from "
                          f"the folder or export again with --format fhir")
    types: Counter[str] = Counter()
    for i, entry in enumerate(bundle.get("entry") or []):
        res = entry.get("resource") if isinstance(entry, dict) else None
        req = entry.get("request") if isinstance(entry, dict) else None
        if not isinstance(res, dict) or not isinstance(req, dict):
            raise UploadError(f"{name}: entry {i} has no resource or request; the bundle is "
                              f"damaged, export it again")
        types[res.get("resourceType", "?")] += 1
        if req.get("method") == "POST" and not req.get("ifNoneExist") and res.get("id"):
            entry["request"] = {"method": "PUT", "url": f"{res['resourceType']}/{res['id']}"}
    return orjson.dumps(bundle), types


def bundle_folder(path: Path) -> tuple[Path, Path]:
    """(folder with the bundles, folder for the journal) for what the user named: a run's
    output folder (bundles in its ``fhir/``) or the bundle folder itself."""
    if not path.is_dir():
        raise UploadError(f"{path}: no such folder; give the --out folder of a run made "
                          f"with --format fhir")
    if (path / "fhir").is_dir():
        return path / "fhir", path
    if path.name == "fhir":
        return path, path.parent
    return path, path


def _ordered_files(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.glob("*.json") if not p.name.startswith("."))
    first = [folder / n for n in SHARED_FILES if (folder / n).is_file()]
    rest = [p for p in files if p.name not in SHARED_FILES]
    if not rest and not first:
        hint = (" (it has ndjson/: bulk files are for a server's $import, which this command "
                "does not do)" if (folder.parent / "ndjson").is_dir() else "")
        raise UploadError(f"{folder}: no FHIR bundles to upload{hint}; export with "
                          f"--format fhir")
    return first + rest


# --------------------------------------------------------------------------- HTTP


class _Transient(Exception):
    """A failure worth retrying; ``retry_after`` is the server's wish in seconds."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """Parse a Retry-After header: delay-seconds or an HTTP date (RFC 9110, 10.2.3)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def outcome_text(resp: httpx.Response) -> str:
    """The issues of an OperationOutcome body, one per line, or the start of the body."""
    try:
        body = resp.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and body.get("resourceType") == "OperationOutcome":
        lines = []
        for issue in body.get("issue") or []:
            where = ", ".join(issue.get("expression") or issue.get("location") or [])
            text = issue.get("diagnostics") or (issue.get("details") or {}).get("text") or ""
            lines.append(f"  {issue.get('severity', '?')} {issue.get('code', '?')}: {text}"
                         + (f" (at {where})" if where else ""))
        if lines:
            return "OperationOutcome:\n" + "\n".join(lines)
    snippet = resp.text[:500].strip()
    return f"response body: {snippet}" if snippet else "empty response body"


def _cert_problem(exc: BaseException) -> ssl.SSLCertVerificationError | None:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


class Uploader:
    """One HTTP client (a connection pool of ``concurrency``) talking to one server."""

    def __init__(self, options: ServerOptions) -> None:
        options.check()
        self.options = options
        headers = {"Accept": FHIR_JSON, "Content-Type": FHIR_JSON,
                   "Prefer": "return=minimal", "User-Agent": "carecourse-uploader"}
        if options.token:
            headers["Authorization"] = f"Bearer {options.token}"
        verify: bool | ssl.SSLContext = options.verify
        if options.verify and options.ca_cert is not None:
            verify = ssl.create_default_context(cafile=str(options.ca_cert))
        n = options.concurrency
        self.client = httpx.Client(
            headers=headers, verify=verify, follow_redirects=False,
            timeout=httpx.Timeout(options.timeout, connect=min(10.0, options.timeout)),
            limits=httpx.Limits(max_connections=n, max_keepalive_connections=n))
        self.retries = 0
        self._lock = threading.Lock()

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> Uploader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # The backoff: tenacity's exponential wait with full jitter, unless the server said
    # when to come back.
    def _wait(self, state: tenacity.RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        wish = getattr(exc, "retry_after", None)
        if wish is not None:
            return min(float(wish), max(self.options.max_backoff, 1.0) * 4)
        return tenacity.wait_random_exponential(multiplier=self.options.backoff_base,
                                                max=self.options.max_backoff)(state)

    def _count_retry(self, state: tenacity.RetryCallState) -> None:
        with self._lock:
            self.retries += 1

    def request(self, method: str, url: str, what: str, content: bytes | None = None,
                retries: int | None = None) -> httpx.Response:
        """Send with retries on transient failures; return the final 2xx response, or
        raise :class:`UploadError` naming ``what`` and the server's explanation."""
        attempts = (self.options.retries if retries is None else retries) + 1
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(attempts), wait=self._wait,
            retry=tenacity.retry_if_exception_type((_Transient, httpx.TransportError)),
            before_sleep=self._count_retry, reraise=True)
        try:
            for attempt in retrying:
                with attempt:
                    try:
                        resp = self.client.request(method, url, content=content)
                    except httpx.TransportError as exc:
                        if _cert_problem(exc):
                            raise
                        raise _Transient(f"{type(exc).__name__}: {exc}") from exc
                    if resp.status_code in RETRY_STATUSES:
                        raise _Transient(f"HTTP {resp.status_code}: {outcome_text(resp)}",
                                         retry_after_seconds(resp.headers.get("Retry-After")))
                    return self._accepted(resp, what)
        except _Transient as exc:
            raise UploadError(
                f"{what}: gave up after {attempts} attempt(s) to {self.options.display_url}; "
                f"last failure: {exc}\nIs the server running and reachable? Rerun the same "
                f"command to resume: the journal keeps what was accepted") from None
        except httpx.TransportError as exc:
            cert = _cert_problem(exc)
            if cert is not None:
                raise UploadError(
                    f"{what}: the TLS certificate of {self.options.display_url} is not trusted "
                    f"({cert.verify_message or cert}); pass --ca-cert FILE with the CA that "
                    f"signed it, or --insecure for a throwaway test server") from None
            raise UploadError(f"{what}: {exc}") from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _accepted(self, resp: httpx.Response, what: str) -> httpx.Response:
        if resp.is_success:
            return resp
        hint = ""
        if resp.status_code in (401, 403):
            hint = (f"\nThe server refused the credentials: pass a valid bearer token with "
                    f"--token or ${TOKEN_ENV}")
        elif resp.status_code == 404:
            hint = "\nIs --server the FHIR base URL (the one that answers /metadata)?"
        elif resp.status_code == 413:
            hint = "\nThe bundle is larger than the server accepts; raise its request limit"
        elif 300 <= resp.status_code < 400:
            hint = f"\nThe server redirects to {resp.headers.get('Location')}; use that URL"
        raise UploadError(f"{what}: {self.options.display_url} answered HTTP "
                          f"{resp.status_code} {resp.reason_phrase}\n{outcome_text(resp)}{hint}")

    def check_server(self) -> dict[str, Any]:
        """Read the CapabilityStatement: the server is up, answers FHIR and speaks R4."""
        resp = self.request("GET", f"{self.options.base}/metadata", "GET /metadata",
                            retries=min(self.options.retries, 3))
        try:
            cap = resp.json()
        except ValueError:
            cap = None
        if not isinstance(cap, dict) or cap.get("resourceType") != "CapabilityStatement":
            raise UploadError(f"{self.options.display_url}/metadata is not a FHIR "
                              f"CapabilityStatement; is --server the FHIR base URL?")
        version = str(cap.get("fhirVersion") or "")
        if version and not version.startswith("4.0"):
            raise UploadError(f"{self.options.display_url} speaks FHIR {version}; carecourse "
                              f"writes R4 (4.0.1): point --server at an R4 endpoint")
        return cap

    def send_bundle(self, name: str, data: bytes) -> tuple[bytes, Counter[str], int]:
        """Post one bundle; return what was sent, its resources by type and the status."""
        body, types = prepare_bundle(name, data)
        resp = self.request("POST", self.options.base, name, content=body)
        if resp.content:
            try:
                reply = resp.json()
            except ValueError:
                reply = None
            if isinstance(reply, dict) and reply.get("type") == "batch-response":
                bad = [e.get("response", {}).get("status", "?") for e in reply.get("entry", [])
                       if not str(e.get("response", {}).get("status", "")).startswith("2")]
                if bad:
                    raise UploadError(f"{name}: the server rejected {len(bad)} batch "
                                      f"entr{'y' if len(bad) == 1 else 'ies'} ({bad[0]} ...)")
        return body, types, resp.status_code

    def count(self, rtype: str) -> int:
        resp = self.request("GET", f"{self.options.base}/{rtype}?_summary=count",
                            f"count {rtype}", retries=min(self.options.retries, 3))
        total = resp.json().get("total")
        if not isinstance(total, int):
            raise UploadError(f"{self.options.display_url} gave no total for "
                              f"{rtype}?_summary=count; it cannot be verified by counting")
        return total


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------- driver


def _progress(total: int, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, unit="bundle", disable=not enabled, dynamic_ncols=True,
                smoothing=0.1, desc="upload")


def send_all(uploader: Uploader, journal: Journal, items: Iterable[tuple[str, Callable[[], bytes]]],
             *, force: bool = False, keep_going: bool = False,
             progress: Any = None, summary: UploadSummary | None = None) -> UploadSummary:
    """Upload ``(name, read)`` items with ``concurrency`` requests in flight, journaling
    each accepted bundle. Stops at the first refusal unless ``keep_going``."""
    summary = summary or UploadSummary()
    t0 = time.perf_counter()
    window = uploader.options.concurrency * 2
    pool = ThreadPoolExecutor(max_workers=uploader.options.concurrency,
                              thread_name_prefix="upload")
    running: dict[Future[Any], str] = {}
    stop = threading.Event()

    def one(name: str, read: Callable[[], bytes]) -> int:
        if stop.is_set():
            return -1
        data = read()
        digest = sha256(data)
        if not force and journal.has(name, digest):
            return -2
        _, types, status = uploader.send_bundle(name, data)
        journal.record(name, digest, types, status)
        return sum(types.values())

    def collect(done: Iterable[Future[Any]]) -> None:
        for fut in done:
            running.pop(fut)
            try:
                n = fut.result()
            except UploadError as exc:
                summary.failures.append(str(exc))
                if not keep_going:
                    stop.set()
                continue
            if n == -2:
                summary.skipped += 1
            elif n >= 0:
                summary.sent += 1
                summary.resources += n
            if progress is not None:
                progress.update(1)
                elapsed = time.perf_counter() - t0
                progress.set_postfix(resources=summary.resources,
                                     res_per_s=f"{summary.resources / elapsed:.0f}"
                                     if elapsed else "-", refresh=False)

    try:
        for name, read in items:
            if stop.is_set():
                break
            running[pool.submit(one, name, read)] = name
            if len(running) >= window:
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                collect(done)
        while running:
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            collect(done)
    except BaseException:
        stop.set()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    finally:
        pool.shutdown(wait=True)
        summary.seconds += time.perf_counter() - t0
        summary.retries = uploader.retries
    return summary


def _file_items(files: list[Path]) -> Iterator[tuple[str, Callable[[], bytes]]]:
    for p in files:
        yield p.name, p.read_bytes


def upload_folder(path: Path, options: ServerOptions, *, force: bool = False,
                  keep_going: bool = False, progress: bool = True) -> UploadSummary:
    """Upload a run's FHIR bundles: providers first, then patients, resuming from the
    journal. Raises :class:`UploadError` on the first refused bundle (or, with
    ``keep_going``, after trying all of them)."""
    options.check()
    folder, journal_dir = bundle_folder(path)
    files = _ordered_files(folder)
    journal = Journal(journal_dir, options.base)
    summary = UploadSummary()
    with Uploader(options) as up:
        up.check_server()
        bar = _progress(len(files), progress)
        try:
            providers = [p for p in files if p.name in SHARED_FILES]
            patients = [p for p in files if p.name not in SHARED_FILES]
            # Providers (and a trial's study) strictly first, one at a time: patients
            # refer to them.
            for p in providers:
                send_all(up, journal, _file_items([p]), force=force, progress=bar,
                         summary=summary)
                if summary.failures:
                    break
            if not summary.failures:
                send_all(up, journal, _file_items(patients), force=force,
                         keep_going=keep_going, progress=bar, summary=summary)
        finally:
            bar.close()
            journal.close()
    if summary.failures:
        head = summary.failures[0]
        more = (f"\n... and {len(summary.failures) - 1} more refused bundle(s)"
                if len(summary.failures) > 1 else "")
        raise UploadError(f"{head}{more}\n{summary.sent} bundle(s) were accepted and are in "
                          f"the journal {journal.path}; fix the cause and rerun to send the "
                          f"rest")
    return summary


def verify(options: ServerOptions, journal: Journal) -> list[tuple[str, int, int]]:
    """(type, sent, on the server) for every resource type the journal says was accepted.
    On a server that held nothing before, the two agree exactly; more on the server means
    other data (or duplicates), fewer means resources went missing."""
    sent = journal.sent_types()
    with Uploader(options) as up:
        return [(t, sent[t], up.count(t)) for t in sorted(sent)]


# --------------------------------------------------------------------------- streaming


class _StreamWriter:
    """Uploads each patient as the engine finishes it, through :func:`send_all` running
    in a background thread that reads a bounded queue (so a slow server slows the
    simulation down instead of filling memory)."""

    def __init__(self, sink: UploadSink) -> None:
        import queue

        self.sink = sink
        self.uploader = Uploader(sink.options)
        self.journal = Journal(sink.out, sink.options.base)
        self.queue: queue.Queue[tuple[str, Callable[[], bytes]] | None] = queue.Queue(
            maxsize=sink.options.concurrency * 2)
        self.summary = UploadSummary()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="upload-stream", daemon=True)
        self.thread.start()

    def _items(self) -> Iterator[tuple[str, Callable[[], bytes]]]:
        while (item := self.queue.get()) is not None:
            yield item

    def _run(self) -> None:
        try:
            send_all(self.uploader, self.journal, self._items(), force=self.sink.force,
                     summary=self.summary)
        except BaseException as exc:  # handed to the simulating thread in write/close
            self.error = exc

    def _raise_failure(self) -> None:
        if self.summary.failures:
            raise UploadError(f"{self.summary.failures[0]}\nThe journal {self.journal.path} "
                              f"keeps what the server accepted; fix the cause and rerun the "
                              f"same command to send the rest")
        if self.error is not None:
            raise self.error

    def write(self, person: Any) -> None:
        import queue

        name, data = patient_bundle_file(person, end=self.sink.end,
                                         years_of_history=self.sink.years_of_history)
        while True:
            self._raise_failure()
            if not self.thread.is_alive():
                raise UploadError("the upload thread stopped unexpectedly")
            try:
                self.queue.put((name, lambda: data), timeout=0.2)
                return
            except queue.Full:
                continue

    def close(self) -> None:
        try:
            if self.thread.is_alive():
                while True:
                    try:
                        self.queue.put(None, timeout=0.2)
                        break
                    except Exception:  # queue.Full while the thread drains it
                        if not self.thread.is_alive():
                            break
                self.thread.join()
            self._raise_failure()
        finally:
            self.journal.close()
            self.uploader.close()


class UploadSink:
    """``carecourse run --fhir-server URL``: every patient's bundle goes to the server as
    soon as it is simulated, with the uploader's retries, idempotent requests and journal
    (in the run's output folder, so a rerun of the same command skips what was accepted).
    Call :meth:`start` once, in the main process, before the run."""

    name = "upload"

    def __init__(self, options: ServerOptions, out: Path, *, years_of_history: int = 0,
                 end: float | None = None, force: bool = False) -> None:
        options.check()
        self.options = options
        self.out = out
        self.years_of_history = years_of_history
        self.end = end
        self.force = force

    def start(self) -> None:
        """Check the server and send the provider bundles, which patients refer to."""
        self.out.mkdir(parents=True, exist_ok=True)
        journal = Journal(self.out, self.options.base)
        try:
            with Uploader(self.options) as up:
                up.check_server()
                for name, data in provider_bundle_files():
                    s = send_all(up, journal, [(name, lambda d=data: d)], force=self.force)
                    if s.failures:
                        raise UploadError(s.failures[0])
        finally:
            journal.close()

    def open(self, folder: Path) -> _StreamWriter:
        return _StreamWriter(self)

    def merge(self, parts: list[Path], out: Path) -> None:
        """Nothing to move: the bundles are on the server and in the journal."""

    def accepted(self) -> Journal:
        return Journal(self.out, self.options.base)
