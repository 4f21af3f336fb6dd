"""Real clinical data sets that ship inside installable packages, in the common event form.

Each data set is registered with what it holds (states, covariates, time unit and origin)
and where it comes from (the paper and the package that ships it). They are read from the
installed packages, never downloaded: ``pip install 'carecourse[learn]'`` installs
scikit-survival and lifelines.

>>> sorted(dataset_names())
['actg175', 'actg320', 'lymph_node', 'stanford_heart']
>>> info = get_dataset("actg320")
>>> info.patients, list(info.states)
(1151, ['randomized', 'aids', 'death'])
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from learned.events import EventData, make_event_data
from modules.errors import ConfigError, DataError, Problem

__all__ = ["DatasetInfo", "register_dataset", "dataset_names", "get_dataset", "load_dataset"]


@dataclass(frozen=True)
class DatasetInfo:
    """What a built-in data set is. ``loader`` returns its :class:`EventData`."""

    name: str
    title: str
    #: The study and the paper to cite.
    source: str
    #: The installable package that ships the data, and how it is read from it.
    package: str
    #: Patients in the data set, as its documentation gives them (checked on load).
    patients: int
    origin: str
    #: State code -> meaning; the first is every patient's initial state.
    states: Mapping[str, str]
    #: Covariate -> meaning (codes spelled out).
    covariates: Mapping[str, str]
    loader: Callable[[], EventData]
    #: Other event codes (observations) -> meaning.
    other_events: Mapping[str, str] = field(default_factory=dict)
    time_unit: str = "days"

    @property
    def initial_state(self) -> str:
        return next(iter(self.states))


_REGISTRY: dict[str, DatasetInfo] = {}


def register_dataset(info: DatasetInfo) -> None:
    """Add a data set; a name that is already registered raises ValueError."""
    if info.name in _REGISTRY:
        raise ValueError(f"a data set named {info.name!r} is already registered")
    _REGISTRY[info.name] = info


def dataset_names() -> list[str]:
    return list(_REGISTRY)


def get_dataset(name: str) -> DatasetInfo:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown data set {name!r}; built-in: "
                          f"{', '.join(_REGISTRY)} (carecourse datasets lists them)") from None


def load_dataset(name: str) -> EventData:
    """The data set ``name`` in the common event form. Raises :class:`ConfigError` when
    the package that ships it is not installed, and :class:`DataError` when the installed
    copy does not have the documented number of patients."""
    info = get_dataset(name)
    data = info.loader()
    if data.patients != info.patients:
        raise DataError([Problem(info.package, "", f"{info.name} has {data.patients} patients, "
                                 f"not the documented {info.patients}; the installed package "
                                 "ships another version of the data")])
    return data


def _package_dir(package: str, dataset: str) -> Path:
    """The folder of an installed package, found without importing it (lifelines takes
    seconds to import)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"the {dataset} data set ships in the {package} package, which is not "
                          "installed; pip install 'carecourse[learn]'")
    return Path(next(iter(spec.submodule_search_locations)))


def _lifelines_csv(filename: str, dataset: str, **read: object) -> pd.DataFrame:
    path = _package_dir("lifelines", dataset) / "datasets" / filename
    if not path.is_file():
        raise ConfigError(f"{path}: missing from the installed lifelines; reinstall it "
                          "(pip install --force-reinstall lifelines)")
    return pd.read_csv(path, **read)  # type: ignore[arg-type]


def _categories(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """Integer-coded categorical columns as categories of their codes ("0", "1", ...)."""
    out = frame.copy()
    for c in columns:
        codes = out[c].astype(float)
        text = codes.map(lambda v: "" if np.isnan(v) else f"{v:g}")
        out[c] = pd.Categorical(text.where(codes.notna()))
    return out


def _events(rows: list[tuple[str, float, str, str, float]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["patient_id", "time", "code", "kind", "value"])


# --- ACTG 320 --------------------------------------------------------------------------

_ACTG320_COVARIATES = {
    "age": "age at enrolment, years",
    "cd4": "baseline CD4 count, cells/mm3",
    "hemophil": "hemophiliac (0 no, 1 yes)",
    "ivdrug": "intravenous drug use (1 never, 2 currently, 3 previously)",
    "karnof": "Karnofsky performance score (70, 80, 90, 100)",
    "priorzdv": "months of prior zidovudine (ZDV) use",
    "raceth": "race/ethnicity (1 White non-Hispanic, 2 Black non-Hispanic, 3 Hispanic, "
              "4 Asian/Pacific Islander, 5 American Indian/Alaskan Native, 6 other)",
    "sex": "sex (1 male, 2 female)",
    "strat2": "CD4 stratum at screening (0 CD4 <= 50, 1 CD4 > 50)",
    "tx": "treatment arm (0 control: ZDV + 3TC; 1 ZDV + 3TC + indinavir)",
    "txgrp": "treatment group (1 ZDV + 3TC, 2 ZDV + 3TC + IDV, 3 d4T + 3TC, "
             "4 d4T + 3TC + IDV)",
}


def _load_actg320() -> EventData:
    _package_dir("sksurv", "actg320")
    from sksurv.datasets import load_aids

    x, y_aids = load_aids(endpoint="aids")
    _, y_death = load_aids(endpoint="death")
    # "censor"/"time": the first AIDS-defining event or death; "censor_d"/"time_d": death,
    # and time_d is the end of follow-up. A composite event at the time of death is a
    # death without an AIDS diagnosis before it.
    event, t = y_aids["censor"], y_aids["time"]
    dead, td = y_death["censor_d"], y_death["time_d"]
    ids = [str(i + 1) for i in range(len(x))]
    rows = []
    for pid, e, ti, d, tdi in zip(ids, event, t, dead, td, strict=True):
        if e and not (d and ti == tdi):
            rows.append((pid, float(ti), "aids", "state", np.nan))
        if d:
            rows.append((pid, float(tdi), "death", "state", np.nan))
    base = _categories(x.reset_index(drop=True), ["hemophil", "ivdrug", "karnof", "raceth",
                                                  "sex", "strat2", "tx", "txgrp"])
    base.insert(0, "patient_id", ids)
    return make_event_data(_events(rows), base, name="actg320", origin=ACTG320.origin,
                           end=pd.Series(np.asarray(td, dtype=float), index=ids),
                           initial_state="randomized", events_file="sksurv load_aids",
                           baseline_file="sksurv load_aids")


ACTG320 = DatasetInfo(
    name="actg320",
    title="ACTG 320: indinavir added to two nucleoside analogues in advanced HIV",
    source="Hammer SM, Squires KE, Hughes MD, et al. A controlled trial of two nucleoside "
           "analogues plus indinavir in persons with human immunodeficiency virus infection "
           "and CD4 cell counts of 200 per cubic millimeter or less. N Engl J Med "
           "1997;337:725-733. Data as in Hosmer DW, Lemeshow S, May S. Applied Survival "
           "Analysis, 2nd ed. Wiley, 2008.",
    package="scikit-survival (sksurv.datasets.load_aids)",
    patients=1151,
    origin="randomization",
    states={"randomized": "randomized, alive and free of AIDS-defining events",
            "aids": "first AIDS-defining event (from the composite endpoint, when it precedes "
                    "death)",
            "death": "death (absorbing)"},
    covariates=_ACTG320_COVARIATES,
    loader=_load_actg320,
)

# --- ACTG 175 --------------------------------------------------------------------------

_ACTG175_COVARIATES = {
    "age": "age at baseline, years",
    "wtkg": "weight at baseline, kg",
    "hemo": "hemophilia (0 no, 1 yes)",
    "homo": "homosexual activity (0 no, 1 yes)",
    "drugs": "history of intravenous drug use (0 no, 1 yes)",
    "karnof": "Karnofsky score (0-100)",
    "oprior": "non-zidovudine antiretroviral therapy before the study (0 no, 1 yes)",
    "z30": "zidovudine in the 30 days before the study (0 no, 1 yes)",
    "zprior": "zidovudine before the study (0 no, 1 yes)",
    "preanti": "days of antiretroviral therapy before the study",
    "race": "race (0 white, 1 non-white)",
    "gender": "gender (0 female, 1 male)",
    "str2": "antiretroviral history (0 naive, 1 experienced)",
    "strat": "antiretroviral history stratum (1 naive, 2 > 1 and <= 52 weeks, 3 > 52 weeks)",
    "symptom": "symptomatic at baseline (0 no, 1 yes)",
    "treat": "treatment (0 zidovudine only, 1 other)",
    "arms": "arm (0 zidovudine, 1 zidovudine + didanosine, 2 zidovudine + zalcitabine, "
            "3 didanosine)",
    "cd40": "CD4 count at baseline, cells/mm3",
    "cd80": "CD8 count at baseline, cells/mm3",
}
_ACTG175_CATEGORICAL = ["hemo", "homo", "drugs", "oprior", "z30", "zprior", "race", "gender",
                        "str2", "strat", "symptom", "treat", "arms"]


def _load_actg175() -> EventData:
    raw = _lifelines_csv("ACTG175.csv", "actg175", index_col=0)
    ids = raw["pidnum"].astype(int).astype(str).tolist()
    rows = []
    for pid, r in zip(ids, raw.itertuples(index=False), strict=True):
        if r.cens == 1:
            rows.append((pid, float(r.days), "failure", "state", np.nan))
        for t, code, v in ((0.0, "cd4", r.cd40), (140.0, "cd4", r.cd420),
                           (672.0, "cd4", r.cd496), (0.0, "cd8", r.cd80),
                           (140.0, "cd8", r.cd820)):
            if not np.isnan(v):
                rows.append((pid, t, code, "observation", float(v)))
    base = _categories(raw[list(_ACTG175_COVARIATES)], _ACTG175_CATEGORICAL)
    base.insert(0, "patient_id", ids)
    return make_event_data(_events(rows), base, name="actg175", origin=ACTG175.origin,
                           end=pd.Series(raw["days"].astype(float).to_numpy(), index=ids),
                           initial_state="randomized", events_file="lifelines ACTG175.csv",
                           baseline_file="lifelines ACTG175.csv")


ACTG175 = DatasetInfo(
    name="actg175",
    title="ACTG 175: nucleoside monotherapy against combination therapy in HIV "
          "(CD4 200-500)",
    source="Hammer SM, Katzenstein DA, Hughes MD, et al. A trial comparing nucleoside "
           "monotherapy with combination therapy in HIV-infected adults with CD4 cell counts "
           "from 200 to 500 per cubic millimeter. N Engl J Med 1996;335:1081-1090.",
    package="lifelines (lifelines/datasets/ACTG175.csv)",
    patients=2139,
    origin="randomization",
    states={"randomized": "randomized, event-free",
            "failure": "the composite endpoint: a decline of CD4 count of at least 50%, an "
                       "AIDS-defining event or death, whichever came first (follow-up ends "
                       "there)"},
    covariates=_ACTG175_COVARIATES,
    loader=_load_actg175,
    other_events={"cd4": "CD4 count (cells/mm3) at baseline (day 0), week 20 (day 140) and "
                         "week 96 (day 672, missing for 797 patients); measured on schedule, "
                         "so week 96 can come after a failure",
                  "cd8": "CD8 count (cells/mm3) at baseline and week 20"},
)

# --- GBSG-2 lymph-node-positive breast cancer -------------------------------------------

_LYMPH_COVARIATES = {
    "age": "age at diagnosis, years",
    "menopause": "menopausal status (1 premenopausal, 2 postmenopausal)",
    "hormone": "hormone therapy (1 no, 2 yes)",
    "size": "tumour size, mm",
    "grade": "tumour grade (1, 2, 3)",
    "nodes": "number of positive lymph nodes",
    "prog_recp": "progesterone receptor, fmol/mg",
    "estrg_recp": "estrogen receptor, fmol/mg",
}


def _load_lymph_node() -> EventData:
    raw = _lifelines_csv("lymph_node.csv", "lymph_node", index_col=0)
    ids = [str(int(i)) for i in raw.index]
    rows = []
    # censrec is 1 for every death too: a "recurrence" on the day of death (21 patients) is
    # a death without recurrence; otherwise rectime is the recurrence and survtime death.
    for pid, r in zip(ids, raw.itertuples(index=False), strict=True):
        if r.censrec == 1 and not (r.censdead == 1 and r.rectime == r.survtime):
            rows.append((pid, float(r.rectime), "recurrence", "state", np.nan))
        if r.censdead == 1:
            rows.append((pid, float(r.survtime), "death", "state", np.nan))
    base = _categories(raw[list(_LYMPH_COVARIATES)].reset_index(drop=True),
                       ["menopause", "hormone", "grade"])
    base.insert(0, "patient_id", ids)
    return make_event_data(_events(rows), base, name="lymph_node", origin=LYMPH_NODE.origin,
                           end=pd.Series(raw["survtime"].astype(float).to_numpy(), index=ids),
                           initial_state="diagnosed", events_file="lifelines lymph_node.csv",
                           baseline_file="lifelines lymph_node.csv")


LYMPH_NODE = DatasetInfo(
    name="lymph_node",
    title="GBSG-2: node-positive breast cancer, recurrence and death (illness-death)",
    source="Schumacher M, Bastert G, Bojar H, et al. Randomized 2 x 2 trial evaluating "
           "hormonal treatment and the duration of chemotherapy in node-positive breast "
           "cancer patients. J Clin Oncol 1994;12:2086-2093; Schmoor C, Sauerbrei W, "
           "Bastert G, Schumacher M. Role of isolated locoregional recurrence of breast "
           "cancer: results of four prospective studies. J Clin Oncol 2000;18:1696-1708. "
           "Data as in Hosmer, Lemeshow and May, Applied Survival Analysis, 2nd ed., 2008.",
    package="lifelines (lifelines/datasets/lymph_node.csv)",
    patients=686,
    origin="diagnosis (the date in diagdateb)",
    states={"diagnosed": "diagnosed and treated, recurrence-free",
            "recurrence": "tumour recurrence",
            "death": "death (absorbing)"},
    covariates=_LYMPH_COVARIATES,
    loader=_load_lymph_node,
)

# --- Stanford heart transplant -----------------------------------------------------------

_STANFORD_COVARIATES = {
    "age": "age at acceptance minus 48, years",
    "year": "year of acceptance, in years since 1 November 1967",
    "surgery": "prior bypass surgery (0 no, 1 yes)",
}


def _load_stanford() -> EventData:
    raw = _lifelines_csv("stanford_heart.csv", "stanford_heart")
    raw["transplant"] = raw["transplant"].astype(int)
    rows = []
    ends: dict[str, float] = {}
    base_rows = []
    for pid, g in raw.groupby("id", sort=True):
        p = str(int(pid))
        g = g.sort_values("start")
        tx = g[g["transplant"] == 1]
        if len(tx):
            rows.append((p, float(tx["start"].iloc[0]), "transplant", "state", np.nan))
        last = g.iloc[-1]
        if last["event"] == 1:
            rows.append((p, float(last["stop"]), "death", "state", np.nan))
        ends[p] = float(last["stop"])
        first = g.iloc[0]
        base_rows.append({"patient_id": p, "age": float(first["age"]),
                          "year": float(first["year"]), "surgery": int(first["surgery"])})
    base = _categories(pd.DataFrame(base_rows), ["surgery"])
    return make_event_data(_events(rows), base, name="stanford_heart",
                           origin=STANFORD_HEART.origin, end=pd.Series(ends),
                           initial_state="waiting", events_file="lifelines stanford_heart.csv",
                           baseline_file="lifelines stanford_heart.csv")


STANFORD_HEART = DatasetInfo(
    name="stanford_heart",
    title="Stanford heart transplant programme: waiting list, transplant, death",
    source="Crowley J, Hu M. Covariance analysis of heart transplant survival data. J Am Stat "
           "Assoc 1977;72:27-36 (the data of R's survival::heart).",
    package="lifelines (lifelines/datasets/stanford_heart.csv)",
    patients=103,
    origin="acceptance into the transplant programme",
    states={"waiting": "accepted, on the waiting list",
            "transplant": "received a heart transplant",
            "death": "death (absorbing)"},
    covariates=_STANFORD_COVARIATES,
    loader=_load_stanford,
)

for _info in (ACTG320, ACTG175, LYMPH_NODE, STANFORD_HEART):
    register_dataset(_info)
