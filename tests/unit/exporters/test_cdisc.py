"""A built arm's CDISC datasets (columns, labels, values), their SAS transport files read
back with an independent reader (pandas), and the FHIR ResearchStudy / ResearchSubject
resources linked to the patients' bundles."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from exporters.cdisc import LABELS, covariate_names
from exporters.fhir import STUDY_FILE
from exporters.trial import build_arm
from exporters.validate import validate_fhir_paths
from modules.errors import OutputError
from modules.loader import load_library
from simulator.cohort import TableSource, cohort_programs, read_baseline_table
from simulator.engine import compile_library
from simulator.protocol import load_protocol

DATA = Path(__file__).resolve().parents[2] / "data" / "trial"
SAS_EPOCH = dt.date(1960, 1, 1)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    p = load_protocol(DATA / "protocol.yaml")
    p = dataclasses.replace(p, arm=dataclasses.replace(p.arm, size=40))
    lib = load_library(p.modules_dir)
    programs = cohort_programs(p, lib, compile_library(lib))
    src = TableSource.filtered(read_baseline_table(DATA / "baseline.csv"), "baseline.csv",
                               p.baseline.where, protocol=p)
    out = tmp_path_factory.mktemp("arm") / "arm"
    summary = build_arm(p, src, programs, out, progress=False)
    return p, summary, out


def read_xpt(path: Path) -> pd.DataFrame:
    """pandas' own XPORT reader; text comes back as bytes."""
    frame = pd.read_sas(path, format="xport")
    for c in frame.columns:
        if frame[c].dtype == object:
            frame[c] = [v.decode() if isinstance(v, bytes) else v for v in frame[c]]
    return frame


def same_numbers(a: pd.Series, b: pd.Series) -> bool:
    # pandas reads an exact IBM-float zero as 5.4e-79 (pandas issue #50670): compare with
    # an absolute tolerance far below any value a dataset holds.
    x, y = a.to_numpy(dtype=float), b.to_numpy(dtype=float)
    return bool(np.all(np.isclose(x, y, rtol=1e-12, atol=1e-70, equal_nan=True)))


def test_files_and_record(built):
    p, summary, out = built
    names = sorted(f.name for f in out.iterdir())
    assert names == ["adeff.csv", "adeff.xpt", "adsl.csv", "adsl.xpt", "adtte.csv",
                     "adtte.xpt", "baseline.csv", "build.json", "consort.png", "dm.csv",
                     "dm.xpt", "fhir", "protocol.yaml"]
    record = json.loads((out / "build.json").read_text())
    assert record["consort"]["enrolled"] == 40 and record["primary_endpoint"] == "PFS"
    assert record["learned"] == {"models": [], "privacy": None}
    assert (out / "protocol.yaml").read_bytes() == (DATA / "protocol.yaml").read_bytes()
    with pytest.raises(OutputError, match="not an empty folder"):
        build_arm(p, None, {}, out, progress=False)  # type: ignore[arg-type]


def test_adsl_and_dm_columns(built):
    p, summary, out = built
    adsl = pd.read_csv(out / "adsl.csv", keep_default_na=False)
    for col in ("STUDYID", "USUBJID", "SUBJID", "AGE", "AGEU", "SEX", "RACE", "ETHNIC", "ARM",
                "ARMCD", "TRT01P", "TRT01A", "ITTFL", "SAFFL", "SYNFL", "RANDDT", "TRTSDT",
                "EOSSTT", "DTHFL", "DTHDT", "LSTALVDT"):
        assert col in adsl.columns, col
    assert len(adsl) == 40 and adsl["USUBJID"].is_unique
    assert set(adsl["STUDYID"]) == {"TCOURSE"} and set(adsl["TRT01P"]) == {"Standard of care"}
    assert set(adsl["ITTFL"]) == {"Y"} and set(adsl["SYNFL"]) == {"Y"}
    assert set(adsl["SEX"]) <= {"M", "F"}
    dead = adsl["DTHFL"] == "Y"
    assert (adsl.loc[dead, "DCSREAS"] == "DEATH").all() and (adsl.loc[~dead, "DTHDT"] == "").all()
    # baseline covariates under SAS names, the id column left out
    assert {"CD4", "HEMOPHIL", "KARNOF", "BL_AGE"} <= set(adsl.columns)
    assert "PID" not in adsl.columns
    dm = pd.read_csv(out / "dm.csv", keep_default_na=False)
    assert list(dm.columns[:4]) == ["STUDYID", "DOMAIN", "USUBJID", "SUBJID"]
    assert set(dm["DOMAIN"]) == {"DM"} and list(dm["USUBJID"]) == list(adsl["USUBJID"])
    assert list(dm["RFSTDTC"]) == list(adsl["RANDDT"])  # ISO 8601 text in SDTM


def test_adtte_matches_the_subjects(built):
    p, summary, out = built
    adtte = pd.read_csv(out / "adtte.csv", keep_default_na=False)
    assert set(adtte["PARAMCD"]) == {"PFS", "OS", "TTT"}
    pfs = adtte[adtte["PARAMCD"] == "PFS"].reset_index(drop=True)
    for s, row in zip(summary.result.subjects, pfs.itertuples(), strict=True):
        v = s.endpoints["PFS"]
        assert row.AVAL == pytest.approx(v.value, abs=1e-4)
        assert row.CNSR == (1 if v.censored else 0)
        assert row.STARTDT == s.index_date.isoformat()
        assert dt.date.fromisoformat(row.ADT) == (
            dt.datetime.combine(s.index_date, dt.time()) + dt.timedelta(days=v.value)).date()
        assert row.EVNTDESC == v.description
    adeff = pd.read_csv(out / "adeff.csv", keep_default_na=False)
    assert set(adeff["PARAMCD"]) == {"PROG180", "ALIVE365", "CD4D90"}
    alive = adeff[adeff["PARAMCD"] == "ALIVE365"]
    assert set(alive["AVALC"]) <= {"Y", "N"} and set(alive["ADY"]) == {365.0}


@pytest.mark.parametrize("name", ["adsl", "adtte", "adeff", "dm"])
def test_xpt_reads_back_with_pandas(built, name):
    _, _, out = built
    csv = pd.read_csv(out / f"{name}.csv", keep_default_na=False, dtype=str)
    xpt = read_xpt(out / f"{name}.xpt")
    assert list(xpt.columns) == list(csv.columns) and len(xpt) == len(csv)
    assert all(len(c) <= 8 for c in xpt.columns)
    for col in csv.columns:
        if col in ("RANDDT", "TRTSDT", "EOSDT", "DTHDT", "LSTALVDT", "STARTDT", "ADT"):
            days = [(dt.date.fromisoformat(d) - SAS_EPOCH).days if d else np.nan
                    for d in csv[col]]
            assert same_numbers(xpt[col], pd.Series(days, dtype=float)), col
        elif pd.api.types.is_numeric_dtype(xpt[col]):
            # a numeric variable; missing values are empty cells in the CSV
            nums = pd.to_numeric(csv[col].replace("", np.nan))
            assert same_numbers(xpt[col], nums), col
        else:
            assert [str(v) for v in xpt[col]] == [str(v) for v in csv[col]], col


def test_xpt_labels_are_the_cdisc_ones(built):
    import pyreadstat

    _, _, out = built
    _, meta = pyreadstat.read_xport(str(out / "adsl.xpt"), metadataonly=True)
    labels = dict(zip(meta.column_names, meta.column_labels, strict=True))
    assert labels["USUBJID"] == "Unique Subject Identifier"
    assert labels["TRT01P"] == "Planned Treatment for Period 01"
    assert labels["CD4"] == "Baseline cd4"
    assert meta.original_variable_types["RANDDT"].startswith("DATE")
    assert all(len(v) <= 40 for v in LABELS.values())


def test_covariate_names_are_unique_sas_names():
    names = covariate_names(["a b", "a-b", "9lives", "USUBJID", "averyverylongname",
                             "averyverylongnam2"])
    assert len(set(names.values())) == 6
    assert all(len(n) <= 8 and n.replace("_", "").isalnum() and not n[0].isdigit()
               for n in names.values())
    assert names["USUBJID"] != "USUBJID"


def test_fhir_bundles_link_subjects_to_patients_and_the_study(built):
    p, summary, out = built
    fhir = out / "fhir"
    report = validate_fhir_paths([fhir])
    assert not report.problems, report.problems[:5]
    study = json.loads((fhir / STUDY_FILE).read_text())["entry"][0]
    assert study["resource"]["resourceType"] == "ResearchStudy"
    ident = study["resource"]["identifier"][0]
    assert study["request"]["ifNoneExist"] == f"identifier={ident['system']}|{ident['value']}"
    subjects = []
    for f in sorted(fhir.glob("*.json")):
        if f.name in (STUDY_FILE, "hospitalInformation.json", "practitionerInformation.json"):
            continue
        bundle = json.loads(f.read_text())
        res = [e["resource"] for e in bundle["entry"]]
        patient = res[0]
        rs = [r for r in res if r["resourceType"] == "ResearchSubject"]
        assert len(rs) == 1
        assert rs[0]["individual"]["reference"] == f"urn:uuid:{patient['id']}"
        assert rs[0]["study"]["reference"] == \
            f"ResearchStudy?identifier={ident['system']}|{ident['value']}"
        subjects.append(rs[0]["identifier"][0]["value"])
    adsl = pd.read_csv(out / "adsl.csv")
    assert sorted(subjects) == sorted(adsl["USUBJID"])
