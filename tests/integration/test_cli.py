"""The command line as a user runs it: populations, reproducibility, bad input, modules."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from simulator.cli import main
from tests.conftest import SHARED, SYNTHEA_MODULES, need_shared

CSV_FILES = ("patients", "encounters", "conditions", "medications", "observations", "procedures",
             "immunizations", "allergies", "careplans", "devices", "imaging_studies", "supplies")
FIXED = ["--reference-date", "2024-06-30", "--no-progress"]


def run_cli(*args: object) -> int:
    """Run the CLI in-process; argparse's own usage errors come back as their exit code."""
    try:
        return main([str(a) for a in args])
    except SystemExit as exc:
        return int(exc.code or 0)


def digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def rows(folder: Path, name: str) -> list[dict[str, str]]:
    with open(folder / "csv" / f"{name}.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_run_writes_synthea_csv_and_a_summary(tmp_path, capsys):
    out = tmp_path / "out"
    assert run_cli("run", "-p", 25, "-s", 7, "--out", out, *FIXED) == 0
    for name in CSV_FILES:
        assert (out / "csv" / f"{name}.csv").is_file(), name
    patients = rows(out, "patients")
    assert len(patients) == 25
    ids = {p["Id"] for p in patients}
    encounters = rows(out, "encounters")
    assert encounters and {e["PATIENT"] for e in encounters} <= ids
    assert rows(out, "immunizations")  # the CDC schedule gives every child vaccines
    text = capsys.readouterr().out
    assert "Simulated 25 patients" in text and "alive:" in text and "mean age" in text
    # nothing but the csv folder is left behind
    assert sorted(p.name for p in out.iterdir()) == ["csv"]


def test_same_seed_same_bytes_with_one_or_two_processes(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    formats = ("--format", "csv,fhir,ndjson,ccda")
    assert run_cli("run", "-p", 30, "-s", 11, "--out", a, *formats, *FIXED) == 0
    assert run_cli("run", "-p", 30, "-s", 11, "--out", b, "--processes", 2, *formats,
                   *FIXED) == 0
    assert digest(a) == digest(b)
    assert len([k for k in digest(a) if k.startswith("fhir/")]) == 32
    assert run_cli("run", "-p", 30, "-s", 12, "--out", c, *FIXED) == 0
    assert digest(a)["csv/patients.csv"] != digest(c)["csv/patients.csv"]


def test_filters_age_gender_state(tmp_path):
    out = tmp_path / "o"
    assert run_cli("run", "-p", 20, "--age-range", "30-40", "--gender", "F", "--state", "MA",
                   "--out", out, "--years-of-history", 0, *FIXED) == 0
    patients = rows(out, "patients")
    assert {p["GENDER"] for p in patients} == {"F"}
    assert {p["STATE"] for p in patients} == {"Massachusetts"}
    for p in patients:
        born = int(p["BIRTHDATE"][:4])
        assert 2024 - 41 <= born <= 2024 - 30


@pytest.mark.parametrize("args, message", [
    (["--state", "Atlantis"], "--state 'Atlantis' is not a US state"),
    (["--age-range", "90-10"], "age range"),
    (["--end-date", "2001-01-01"], "is before --reference-date"),
    (["--module", "no_such_module"], "--module 'no_such_module' is not a top-level module"),
    (["--format", "csv,pdf"], "unknown format 'pdf'"),
    (["--modules-dir", "/nonexistent/modules"], "module library folder not found"),
    (["--processes", "0"], "must be at least 1"),
])
def test_bad_options_exit_2_with_a_message(tmp_path, capsys, args, message):
    out = tmp_path / "o"
    assert run_cli("run", "-p", 2, "--out", out, *FIXED, *args) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err
    assert not (out / "csv").exists()


def test_unwritable_output_folder(tmp_path, capsys):
    if os.geteuid() == 0:
        target = Path("/proc/carecourse-cannot-write-here")
    else:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        target = ro / "out"
    assert run_cli("run", "-p", 2, "--out", target, *FIXED) == 2
    assert "output folder is not writable" in capsys.readouterr().err


def test_broken_module_library_names_file_and_state(tmp_path, capsys):
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "bad.json").write_text(json.dumps({"name": "bad", "states": {
        "Initial": {"type": "Initial", "direct_transition": "Sub"},
        "Sub": {"type": "CallSubmodule", "submodule": "nowhere/gone", "direct_transition": "T"},
        "T": {"type": "Terminal"}}}))
    out = tmp_path / "o"
    assert run_cli("run", "-p", 2, "--modules-dir", lib, "--out", out, *FIXED) == 2
    err = capsys.readouterr().err
    assert "bad.json" in err and "states.Sub.submodule" in err and "nowhere/gone" in err
    assert not (out / "csv").exists()


def test_modules_list_validate_graph(tmp_path, capsys):
    assert run_cli("modules", "list") == 0
    listing = capsys.readouterr().out
    assert "modules," in listing
    first = listing.split()[0]
    svg = tmp_path / "g.svg"
    assert run_cli("modules", "graph", first, "--out", svg) == 0
    assert svg.read_text().lstrip().startswith(("<?xml", "<svg"))
    assert run_cli("modules", "graph", first, "--out", tmp_path / "g.pdf") == 2


def test_validate_synthea_library_and_invalid_fixtures(capsys):
    need_shared()
    assert run_cli("modules", "validate", SYNTHEA_MODULES) == 0
    assert "242 module file(s) checked: 0 error(s)" in capsys.readouterr().out
    assert run_cli("modules", "validate", SHARED / "test-fixtures" / "invalid") == 1
    out = capsys.readouterr().out
    assert "Module specifies GMF version 99" in out
    assert "contains an invalid distribution" in out


def test_synthea_library_population_of_1000(tmp_path):
    """All of Synthea's modules at once, 1,000 lives, through the installed console script."""
    need_shared()
    out = tmp_path / "synthea"
    proc = subprocess.run(
        [sys.executable, "-m", "simulator.cli", "run", "-p", "1000", "-s", "3",
         "--modules-dir", str(SYNTHEA_MODULES), "--processes", "2", "--out", str(out), *FIXED],
        capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(rows(out, "patients")) == 1000
    conditions = rows(out, "conditions")
    assert len({c["CODE"] for c in conditions}) > 50  # many modules took part
