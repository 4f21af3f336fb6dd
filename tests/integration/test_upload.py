"""The uploader against a real FHIR R4 server on 127.0.0.1 (SEKMET, in its own process):
everything arrives once, references resolve on the server, reruns send nothing, and
faults (throttling, 5xx, dropped and lost responses, a killed server, a killed uploader)
lose nothing and duplicate nothing."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from exporters.fhir import PROVIDER_FILES, FhirSink
from exporters.upload import JOURNAL_NAME, ServerOptions, UploadError, upload_folder
from simulator.population import RunConfig, run_population
from tests.conftest import SYNTHEA_MODULES
from tests.fhir_server import FaultPlan, FaultProxy, LocalFhirServer
from tests.integration.test_cli import run_cli

SECRET = "s3cr3t-token-never-printed"


def export(out: Path, n: int, *, synthea: bool, history: int = 3, seed: int = 5) -> Path:
    modules_dir = SYNTHEA_MODULES if synthea and SYNTHEA_MODULES.is_dir() else None
    config = RunConfig(population=n, seed=seed, reference_date=dt.date(2024, 6, 30),
                       years_of_history=history, modules_dir=modules_dir, out=out, processes=2)
    run_population(config, [FhirSink(end=config.end, years_of_history=history)], progress=False)
    return out


def expected_types(out: Path) -> Counter[str]:
    """Resources by type in the exported files, read independently of the uploader."""
    seen: dict[str, set[str]] = {}
    for p in (out / "fhir").glob("*.json"):
        for e in json.loads(p.read_bytes())["entry"]:
            seen.setdefault(e["resource"]["resourceType"], set()).add(e["resource"]["id"])
    return Counter({t: len(ids) for t, ids in seen.items()})


def assert_server_holds_exactly(srv: LocalFhirServer, expected: Counter[str]) -> None:
    found = {t: srv.count(t) for t in expected}
    assert found == dict(expected)


def journal_lines(out: Path) -> list[dict]:
    path = out / JOURNAL_NAME
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def fresh_journal(out: Path) -> None:
    (out / JOURNAL_NAME).unlink(missing_ok=True)


@pytest.fixture(scope="module")
def full_run(tmp_path_factory) -> Path:
    """100 patients through Synthea's whole module library: every resource type we export."""
    return export(tmp_path_factory.mktemp("up100"), 100, synthea=True)


@pytest.fixture(scope="module")
def small_run(tmp_path_factory) -> Path:
    return export(tmp_path_factory.mktemp("up40"), 40, synthea=False, history=10)


def test_100_patients_arrive_whole_references_resolve_and_a_rerun_sends_nothing(
        full_run, tmp_path, capsys):
    expected = expected_types(full_run)
    assert {"Patient", "Encounter", "Observation", "ImagingStudy", "Device"} <= set(expected)
    with LocalFhirServer(tmp_path / "srv") as srv:  # strict inbound validation
        assert run_cli("upload", full_run, "--server", srv.base, "--no-progress",
                       "--verify") == 0
        out = capsys.readouterr().out
        assert "Uploaded 102 bundle(s)" in out and "every resource sent is on the server" in out
        assert_server_holds_exactly(srv, expected)

        # References resolved on the server: each patient's encounters point at it, and the
        # conditional provider references became real Organization/Practitioner ids.
        for p in sorted((full_run / "fhir").glob("*_*.json"))[:25]:
            entries = [e["resource"] for e in json.loads(p.read_bytes())["entry"]]
            pid = entries[0]["id"]
            n_enc = sum(r["resourceType"] == "Encounter" for r in entries)
            assert srv.count("Encounter", f"subject=Patient/{pid}") == n_enc
            if n_enc:
                enc = srv.read(f"Encounter?subject=Patient/{pid}&_count=1").json()
                resource = enc["entry"][0]["resource"]
                for ref in (resource["serviceProvider"]["reference"],
                            resource["participant"][0]["individual"]["reference"]):
                    assert "?" not in ref and srv.read(ref).status_code == 200, ref

        # A second upload sends nothing and changes nothing.
        assert run_cli("upload", full_run, "--server", srv.base, "--no-progress") == 0
        assert "Uploaded 0 bundle(s)" in capsys.readouterr().out
        assert len(journal_lines(full_run)) == 102
        assert_server_holds_exactly(srv, expected)

        # --force sends again: PUT with stable ids updates, it never duplicates.
        some = sorted((full_run / "fhir").glob("*_*.json"))[:5]
        folder = tmp_path / "five" / "fhir"
        folder.mkdir(parents=True)
        for p in some:
            (folder / p.name).write_bytes(p.read_bytes())
        assert run_cli("upload", folder.parent, "--server", srv.base, "--no-progress",
                       "--force") == 0
        assert_server_holds_exactly(srv, expected)


def test_faults_lose_nothing_and_duplicate_nothing(small_run, tmp_path):
    fresh_journal(small_run)
    expected = expected_types(small_run)
    plan = FaultPlan()
    with LocalFhirServer(tmp_path / "srv", validation="off") as srv, \
            FaultProxy(srv.base, plan) as proxy:
        options = ServerOptions(url=proxy.base, concurrency=4, retries=10, backoff_base=0.05,
                                max_backoff=1.0)
        summary = upload_folder(small_run, options, progress=False)
        assert summary.sent == 42 and summary.retries > 0
        assert {"429", "503", "drop", "lost"} <= set(plan.seen)
        assert plan.early_retries == 0  # Retry-After was honoured
        # "lost" requests were committed by the server and then sent again: still no
        # duplicate, because the uploader PUTs stable ids.
        assert_server_holds_exactly(srv, expected)
        assert len(journal_lines(small_run)) == 42


def test_server_killed_and_restarted_mid_upload(small_run, tmp_path):
    fresh_journal(small_run)
    expected = expected_types(small_run)
    srv = LocalFhirServer(tmp_path / "srv", validation="off").start()
    try:
        options = ServerOptions(url=srv.base, concurrency=2, retries=20, backoff_base=0.2,
                                max_backoff=2.0)
        result: dict[str, object] = {}

        def go() -> None:
            try:
                result["summary"] = upload_folder(small_run, options, progress=False)
            except BaseException as exc:  # reported by the assertion below
                result["error"] = exc

        t = threading.Thread(target=go)
        t.start()
        deadline = time.monotonic() + 60
        while len(journal_lines(small_run)) < 8 and time.monotonic() < deadline:
            time.sleep(0.05)
        srv.kill()
        killed_at = len(journal_lines(small_run))
        time.sleep(1.0)
        srv.start()
        t.join(120)
        assert not t.is_alive() and "error" not in result, result
        assert 8 <= killed_at < 42
        assert_server_holds_exactly(srv, expected)
    finally:
        srv.stop()


def test_killed_uploader_resumes_from_its_journal(small_run, tmp_path):
    fresh_journal(small_run)
    expected = expected_types(small_run)
    with LocalFhirServer(tmp_path / "srv", validation="off") as srv:
        cmd = [sys.executable, "-m", "simulator.cli", "upload", str(small_run), "--server",
               srv.base, "--no-progress", "--concurrency", "2"]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while len(journal_lines(small_run)) < 10 and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        done = len(journal_lines(small_run))
        assert 10 <= done < 42
        # A line cut short by the kill is tolerated: its bundle is simply sent again.
        with open(small_run / JOURNAL_NAME, "ab") as f:
            f.write(b'{"server": "' + srv.base.encode() + b'", "bund')
        rerun = subprocess.run(cmd, capture_output=True, text=True, check=False)
        assert rerun.returncode == 0, rerun.stderr
        assert f"Uploaded {42 - done} bundle(s)" in rerun.stdout
        assert f"{done} already there by the journal" in rerun.stdout
        assert_server_holds_exactly(srv, expected)


def test_a_refused_bundle_shows_the_operation_outcome_and_is_not_journaled(
        small_run, tmp_path, capsys):
    bad = tmp_path / "bad"
    (bad / "fhir").mkdir(parents=True)
    patients = sorted((small_run / "fhir").glob("*_*.json"))[:5]
    for p in [*(small_run / "fhir" / n for n in PROVIDER_FILES), *patients]:
        (bad / "fhir" / p.name).write_bytes(p.read_bytes())
    victim = bad / "fhir" / patients[2].name
    bundle = json.loads(victim.read_bytes())
    bundle["entry"][0]["resource"]["birthDate"] = "yesterday"
    victim.write_text(json.dumps(bundle))
    with LocalFhirServer(tmp_path / "srv") as srv:
        code = run_cli("upload", bad, "--server", srv.base, "--no-progress", "--keep-going",
                       "--concurrency", "1")
        err = capsys.readouterr().err
        assert code == 2
        assert victim.name in err and "OperationOutcome" in err and "HTTP 4" in err
        names = {r["bundle"] for r in journal_lines(bad)}
        # --keep-going sent the others: the two provider bundles and four patients
        assert victim.name not in names and len(names) == 6


def test_bearer_token_is_used_and_never_shown(small_run, tmp_path, capsys, monkeypatch):
    fresh_journal(small_run)
    with LocalFhirServer(tmp_path / "srv", tokens=[SECRET], validation="off") as srv:
        assert run_cli("upload", small_run, "--server", srv.base, "--no-progress") == 2
        err = capsys.readouterr().err
        assert "401" in err and "--token" in err
        assert run_cli("upload", small_run, "--server", srv.base, "--no-progress",
                       "--token", "wrong-token") == 2
        assert "wrong-token" not in capsys.readouterr().err
        monkeypatch.setenv("CARECOURSE_FHIR_TOKEN", SECRET)
        assert run_cli("upload", small_run, "--server", srv.base, "--no-progress",
                       "--verify") == 0
        shown = capsys.readouterr()
        assert SECRET not in shown.out + shown.err
        assert SECRET not in (small_run / JOURNAL_NAME).read_text()
        assert srv.count("Patient", headers={"Authorization": f"Bearer {SECRET}"}) == 40


def test_unreachable_server_is_one_clear_message(small_run, tmp_path, capsys):
    from tests.fhir_server import free_port

    url = f"http://127.0.0.1:{free_port()}/fhir"
    assert run_cli("upload", small_run, "--server", url, "--retries", "1",
                   "--no-progress") == 2
    err = capsys.readouterr().err
    assert "gave up after" in err and url in err and "Traceback" not in err
    assert run_cli("upload", tmp_path / "nothing", "--server", url) == 2
    assert "no such folder" in capsys.readouterr().err
    assert run_cli("upload", small_run, "--server", "ftp://x") == 2
    assert "not an http(s) URL" in capsys.readouterr().err


def test_run_streams_patients_to_the_server_and_resumes(tmp_path, capsys):
    out = tmp_path / "out"
    with LocalFhirServer(tmp_path / "srv", validation="off") as srv:
        args = ["run", "-p", 30, "-s", 7, "--reference-date", "2024-06-30", "--no-progress",
                "--processes", 2, "--format", "fhir", "--out", out, "--fhir-server", srv.base]
        assert run_cli(*args, "--verify") == 0
        printed = capsys.readouterr().out
        assert "32 bundle(s) accepted" in printed and "every resource sent" in printed
        assert_server_holds_exactly(srv, expected_types(out))
        # The streamed bundles are byte for byte the exported files: uploading the folder
        # afterwards finds them all in the journal and sends nothing.
        assert run_cli("upload", out, "--server", srv.base, "--no-progress") == 0
        assert "Uploaded 0 bundle(s)" in capsys.readouterr().out
        # Rerunning the same command into a new folder is idempotent on the server too.
        again = tmp_path / "again"
        assert run_cli(*args[:-4], "--out", again, "--fhir-server", srv.base) == 0
        assert_server_holds_exactly(srv, expected_types(out))


def test_tls_is_verified_by_default(small_run, tmp_path, capsys):
    from tests.fhir_server import self_signed_cert

    cert, key = self_signed_cert(tmp_path / "tls")
    fresh_journal(small_run)
    with LocalFhirServer(tmp_path / "srv", validation="off", tls=(cert, key)) as srv:
        assert srv.base.startswith("https://")
        assert run_cli("upload", small_run, "--server", srv.base, "--no-progress",
                       "--retries", "0") == 2
        err = capsys.readouterr().err
        assert "not trusted" in err and "--ca-cert" in err
        assert run_cli("upload", small_run, "--server", srv.base, "--no-progress",
                       "--ca-cert", cert) == 0
        assert "Uploaded 42 bundle(s)" in capsys.readouterr().out


def test_token_from_environment_is_not_in_process_listing(small_run, tmp_path):
    """The documented way to pass a token keeps it off the command line."""
    env = {**os.environ, "CARECOURSE_FHIR_TOKEN": SECRET}
    with LocalFhirServer(tmp_path / "srv", tokens=[SECRET], validation="off") as srv:
        fresh_journal(small_run)
        r = subprocess.run([sys.executable, "-m", "simulator.cli", "upload", str(small_run),
                            "--server", srv.base, "--no-progress"], env=env,
                           capture_output=True, text=True, check=False)
        assert r.returncode == 0, r.stderr
        assert SECRET not in r.stdout + r.stderr


def test_uploading_nothing_is_an_error(tmp_path):
    (tmp_path / "fhir").mkdir()
    with pytest.raises(UploadError, match="no FHIR bundles"):
        upload_folder(tmp_path, ServerOptions(url="http://127.0.0.1:1/fhir"))
