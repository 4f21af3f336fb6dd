"""The uploader's parts that need no server: idempotent requests, Retry-After, the journal,
and keeping credentials out of anything printed."""

from __future__ import annotations

import email.utils
import json
from collections import Counter

import orjson
import pytest

from exporters.upload import (
    JOURNAL_NAME,
    Journal,
    ServerOptions,
    UploadError,
    prepare_bundle,
    retry_after_seconds,
)
from modules.errors import ConfigError


def bundle(*entries: dict) -> bytes:
    return orjson.dumps({"resourceType": "Bundle", "type": "transaction", "entry": list(entries)})


def test_posts_become_puts_of_stable_ids_but_conditional_creates_stay():
    data = bundle(
        {"fullUrl": "urn:uuid:p1", "resource": {"resourceType": "Patient", "id": "p1"},
         "request": {"method": "POST", "url": "Patient"}},
        {"fullUrl": "urn:uuid:o1", "resource": {"resourceType": "Organization", "id": "o1"},
         "request": {"method": "POST", "url": "Organization", "ifNoneExist": "identifier=x|1"}})
    body, types = prepare_bundle("b.json", data)
    entries = json.loads(body)["entry"]
    assert entries[0]["request"] == {"method": "PUT", "url": "Patient/p1"}
    assert entries[0]["fullUrl"] == "urn:uuid:p1"  # references inside keep resolving
    assert entries[1]["request"]["method"] == "POST" and entries[1]["request"]["ifNoneExist"]
    assert types == Counter({"Patient": 1, "Organization": 1})


@pytest.mark.parametrize("data, message", [
    (b"{not json", "not JSON"),
    (orjson.dumps({"resourceType": "Patient"}), "not a FHIR transaction"),
    (orjson.dumps({"resourceType": "Bundle", "type": "collection"}), "not a FHIR transaction"),
    (bundle({"request": {"method": "POST"}}), "entry 0 has no resource"),
])
def test_files_that_are_not_transaction_bundles_are_named(data, message):
    with pytest.raises(UploadError, match=f"x.json: {message}"):
        prepare_bundle("x.json", data)


def test_retry_after_in_seconds_or_as_an_http_date():
    assert retry_after_seconds("7") == 7.0
    assert retry_after_seconds(None) is None
    assert retry_after_seconds("soon") is None
    now = 1_700_000_000.0
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert retry_after_seconds(date, now=now) == pytest.approx(30, abs=1)
    assert retry_after_seconds(email.utils.formatdate(now - 30, usegmt=True), now=now) == 0.0


def test_journal_records_per_server_and_survives_a_cut_line(tmp_path):
    j = Journal(tmp_path, "http://a/fhir")
    j.record("one.json", "h1", Counter({"Patient": 1, "Encounter": 3}), 200)
    j.close()
    Journal(tmp_path, "http://b/fhir").record("two.json", "h2", Counter({"Patient": 1}), 200)
    with open(tmp_path / JOURNAL_NAME, "ab") as f:
        f.write(b'{"server": "http://a/fhir", "bundle": "thr')  # a writer killed mid-line
    again = Journal(tmp_path, "http://a/fhir")
    assert again.has("one.json", "h1")
    assert not again.has("one.json", "changed")  # a changed file is sent again
    assert not again.has("two.json", "h2")  # accepted by another server only
    assert again.damaged_lines == 1
    assert again.sent_types() == Counter({"Patient": 1, "Encounter": 3})


def test_credentials_never_appear_in_what_is_printed():
    o = ServerOptions(url="https://user:pw@example.org:8443/fhir", token="tok-123")
    assert o.display_url == "https://example.org:8443/fhir"
    assert "tok-123" not in repr(o) and "pw" not in o.display_url


@pytest.mark.parametrize("kwargs, message", [
    ({"url": "example.org/fhir"}, "not an http"),
    ({"url": "http://x/fhir", "concurrency": 0}, "concurrency"),
    ({"url": "http://x/fhir", "retries": -1}, "retries"),
    ({"url": "http://x/fhir", "ca_cert": "/no/such.pem"}, "no such file"),
])
def test_impossible_options_are_refused(kwargs, message, tmp_path):
    from pathlib import Path

    if "ca_cert" in kwargs:
        kwargs = {**kwargs, "ca_cert": Path(kwargs["ca_cert"])}
    with pytest.raises(ConfigError, match=message):
        ServerOptions(**kwargs).check()


def test_shared_bundles_go_first_providers_then_a_trial_study(tmp_path):
    from exporters.upload import _ordered_files

    for name in ("a_patient.json", "researchStudy.json", "practitionerInformation.json",
                 "hospitalInformation.json", "z_patient.json"):
        (tmp_path / name).write_text("{}")
    assert [p.name for p in _ordered_files(tmp_path)] == [
        "hospitalInformation.json", "practitionerInformation.json", "researchStudy.json",
        "a_patient.json", "z_patient.json"]
