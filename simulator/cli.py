"""The ``carecourse`` command line.

This is the one place that wires the packages together: exporters and learned models are
imported inside the commands that need them, so ``carecourse run`` starts without loading
torch (a run whose modules have learned keys imports ``learned.runtime`` through
``RunConfig.extensions``). Every deliberate error prints one clear message and exits with
status 2; ``modules validate`` exits 1 when it finds problems.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from collections.abc import Callable
from pathlib import Path

from modules.errors import CarecourseError, ConfigError

__all__ = ["main", "build_parser"]

FORMATS = ("csv", "fhir", "ndjson", "ccda")


def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date; use YYYY-MM-DD") from None


def _age_range(text: str) -> tuple[int, int]:
    parts = text.split("-")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise argparse.ArgumentTypeError(f"{text!r} is not an age range; use LOW-HIGH, e.g. 18-65")
    lo, hi = int(parts[0]), int(parts[1])
    if lo > hi or hi > 140:
        raise argparse.ArgumentTypeError(f"{text!r} is not a valid age range: need 0 <= LOW <= HIGH <= 140")
    return lo, hi


def _positive(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return v


def _non_negative(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be 0 or more")
    return v


def _number(ok: Callable[[float], bool], hint: str) -> Callable[[str], float]:
    """An argparse type: a number for which ``ok`` holds, else "TEXT HINT"."""
    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not ok(v):
            raise argparse.ArgumentTypeError(f"{text!r} {hint}")
        return v
    return parse


_float = _number(lambda v: True, "")  # any number, inf included (epsilon inf: no privacy)
_fraction = _number(lambda v: 0 < v < 1, "must be between 0 and 1, e.g. 0.3")
_days = _number(lambda v: 0 < v < float("inf"), "must be a positive number of days")


def _pairs(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        a, sep, b = part.partition("=")
        if not sep or not a.strip() or not b.strip():
            raise argparse.ArgumentTypeError(f"{text!r}: write SYNTHETIC=REAL pairs separated "
                                             "by commas, e.g. sex=gender,SNOMED-CT|1234=aids")
        out[a.strip()] = b.strip()
    return out


def _formats(text: str) -> tuple[str, ...]:
    chosen = tuple(f.strip().lower() for f in text.split(",") if f.strip())
    bad = [f for f in chosen if f not in FORMATS]
    if bad or not chosen:
        raise argparse.ArgumentTypeError(f"unknown format {', '.join(map(repr, bad)) or repr(text)}; "
                                         f"known: {', '.join(FORMATS)}")
    return chosen


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="carecourse",
                                description="Synthetic patient lives through GMF disease modules.")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="simulate a population and write it out")
    r.add_argument("-p", "--population", type=_positive, default=10, help="patients to simulate")
    r.add_argument("-s", "--seed", type=_non_negative, default=0, help="run seed")
    r.add_argument("--age-range", type=_age_range, default=(0, 100), metavar="LOW-HIGH",
                   help="ages at the reference date (default 0-100)")
    r.add_argument("--gender", choices=("M", "F"), help="only this sex")
    r.add_argument("--state", help="US state (name or two-letter code) where patients live")
    r.add_argument("--reference-date", type=_date, default=None, metavar="YYYY-MM-DD",
                   help="the date ages refer to (default: today, UTC)")
    r.add_argument("--end-date", type=_date, default=None, metavar="YYYY-MM-DD",
                   help="simulate to this date (default: the reference date)")
    r.add_argument("--years-of-history", type=_non_negative, default=10, metavar="N",
                   help="export only the last N years of records (0 = all; default 10)")
    r.add_argument("--modules-dir", type=Path, help="module library folder (default: embedded)")
    r.add_argument("--module", action="append", default=[], metavar="NAME",
                   help="run only this top-level module (repeatable)")
    r.add_argument("--out", type=Path, default=Path("output"), help="output folder")
    r.add_argument("--format", type=_formats, default=("csv",),
                   help="output formats, comma-separated: csv, fhir, ndjson, ccda (default csv)")
    r.add_argument("--processes", type=_positive, default=1, help="worker processes")
    r.add_argument("--workers", type=_positive, metavar="N",
                   help="run on a local Dask cluster of N worker processes")
    r.add_argument("--scheduler", metavar="ADDRESS",
                   help="run on an existing Dask cluster (tcp://HOST:8786)")
    r.add_argument("--partition-size", type=_positive, default=None, metavar="N",
                   help="patients per Dask partition (default: a hundredth of the "
                        "population, between 10 and 100)")
    r.add_argument("--lenient", action="store_true",
                   help="load modules with transitions to missing states (error only if taken)")
    r.add_argument("--learned-fallback", action="store_true",
                   help="run learned transitions and delays by their GMF fallbacks (no "
                        "model files needed, nothing learned loaded)")
    r.add_argument("--validate", action="store_true",
                   help="validate FHIR resources as they are written (fhir/ndjson formats)")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    r.add_argument("--fhir-server", metavar="URL",
                   help="also upload each patient to this FHIR R4 base URL as it is simulated")
    _server_options(r, upload_flag="--fhir-server")
    r.set_defaults(func=_cmd_run)

    u = sub.add_parser("upload", help="upload exported FHIR bundles to a FHIR R4 server")
    u.add_argument("folder", type=Path,
                   help="a run's --out folder (bundles in its fhir/) or the bundle folder")
    u.add_argument("--server", required=True, metavar="URL",
                   help="the server's FHIR base URL, e.g. http://localhost:8080/fhir")
    u.add_argument("--keep-going", action="store_true",
                   help="after a refused bundle, go on with the others (exit 1 at the end)")
    u.add_argument("--no-progress", action="store_true", help="no progress bar")
    _server_options(u, upload_flag="--server")
    u.set_defaults(func=_cmd_upload)

    v = sub.add_parser("validate", help="validate FHIR R4 files or folders (.json, .ndjson)")
    v.add_argument("paths", nargs="+", type=Path)
    v.add_argument("--max-errors", type=_non_negative, default=50, metavar="N",
                   help="print at most N errors (all are counted; default 50)")
    v.set_defaults(func=_cmd_validate)

    m = sub.add_parser("modules", help="list, validate and draw disease modules")
    msub = m.add_subparsers(dest="modules_command", required=True)
    ml = msub.add_parser("list", help="list the top-level modules of a library")
    ml.add_argument("--modules-dir", type=Path, help="module library folder (default: embedded)")
    ml.set_defaults(func=_cmd_modules_list)
    mv = msub.add_parser("validate", help="validate module files or folders")
    mv.add_argument("paths", nargs="+", type=Path)
    mv.add_argument("--strict", action="store_true", help="treat warnings as errors")
    mv.set_defaults(func=_cmd_modules_validate)
    mg = msub.add_parser("graph", help="draw a module's state graph")
    mg.add_argument("name", help="module name in the library, or a module file")
    mg.add_argument("--out", type=Path, required=True, help="FILE.svg or FILE.png")
    mg.add_argument("--modules-dir", type=Path, help="module library folder (default: embedded)")
    mg.set_defaults(func=_cmd_modules_graph)

    d = sub.add_parser("datasets", help="list the built-in real data sets; summarise one, "
                                        "or your own event data")
    dsub = d.add_subparsers(dest="datasets_command")
    dl = dsub.add_parser("list", help="list the built-in data sets (the default)")
    dl.set_defaults(func=_cmd_datasets_list)
    ds = dsub.add_parser("show", help="counts per state, transition and covariate")
    ds.add_argument("name", help="a built-in data set (carecourse datasets lists them), a "
                                 "folder of FHIR bundles or ndjson files, carecourse CSV "
                                 "output (a run's --out folder), or an event table (.csv, "
                                 ".tsv, .parquet) with --baseline")
    _data_source_arguments(ds)
    ds.add_argument("--top", type=_positive, default=15, metavar="N",
                    help="show at most N codes and transitions (default 15)")
    ds.set_defaults(func=_cmd_datasets_show)
    d.set_defaults(func=_cmd_datasets_list)

    e = sub.add_parser("evaluate", help="compare a synthetic population with the real data it "
                                        "learned from: fidelity, utility, privacy")
    e.add_argument("--real", required=True, metavar="DATA",
                   help="the real data the generator learned from: a built-in data set, an "
                        "event table (with --real-baseline), FHIR, or carecourse CSV output")
    e.add_argument("--synthetic", required=True, metavar="DATA",
                   help="the synthetic population: a carecourse run's --out folder (CSV or "
                        "FHIR), an event table (with --synthetic-baseline), or a baseline "
                        "table alone (covariates only)")
    hold = e.add_mutually_exclusive_group()
    hold.add_argument("--holdout", metavar="DATA",
                      help="real patients the generator never saw (same kinds of source)")
    hold.add_argument("--holdout-fraction", type=_fraction, metavar="F",
                      help="hold out this share of --real's patients, split as "
                           "learned.evaluate.split_holdout does with --seed")
    e.add_argument("--seed", type=_non_negative, default=0,
                   help="seed of the holdout split, bootstrap and folds (default 0)")
    for who in ("real", "synthetic", "holdout"):
        e.add_argument(f"--{who}-baseline", type=Path, metavar="FILE",
                       help=f"the baseline table that goes with an event table as --{who}")
    _table_arguments(e)
    e.add_argument("--reference-date", type=_date, metavar="YYYY-MM-DD",
                   help="FHIR / CSV output: end of follow-up of the living")
    e.add_argument("--origin-state", metavar="CODE",
                   help="re-time data counted from birth (carecourse output, FHIR): time 0 "
                        "is the first entry into this state (a code, its code without the "
                        "system, or its display)")
    e.add_argument("--rename", type=_pairs, default={}, metavar="SYNTHETIC=REAL,...",
                   help="synthetic covariate names and state codes to read as the real ones")
    e.add_argument("--outcome", metavar="NAME",
                   help="utility outcome: a state (entered by --horizon) or a two-valued "
                        "covariate (default: the first state after the initial one)")
    e.add_argument("--horizon", type=_days, metavar="DAYS",
                   help="a state outcome counts when entered by this day (default: the "
                        "median real follow-up)")
    e.add_argument("--follow-up", type=_days, metavar="DAYS",
                   help="censor every population at this day (default: the longest real "
                        "follow-up)")
    e.add_argument("--bins", type=_positive, default=10, metavar="N",
                   help="bins of numeric covariates (default 10)")
    e.add_argument("--model", default="logistic",
                   help="utility classifier: logistic or boosting (default logistic)")
    e.add_argument("--resamples", type=_positive, default=1000, metavar="N",
                   help="bootstrap resamples of each AUC interval (default 1000)")
    e.add_argument("--out", type=Path, required=True, metavar="DIR",
                   help="report folder: report.html, metrics.json, figures/")
    e.add_argument("--no-progress", action="store_true", help="no progress bar")
    e.set_defaults(func=_cmd_evaluate)
    _trial_parser(sub)
    _learn_parser(sub)
    return p


def _data_source_arguments(p: argparse.ArgumentParser) -> None:
    """How one data source is read (``datasets show``, ``learn``; see ``_read_source``)."""
    p.add_argument("--baseline", type=Path, metavar="FILE",
                   help="the baseline-covariate table that goes with an event table")
    _table_arguments(p)
    p.add_argument("--reference-date", type=_date, metavar="YYYY-MM-DD",
                   help="FHIR / CSV output: end of follow-up of the living (default: the "
                        "latest date)")


def _table_arguments(p: argparse.ArgumentParser) -> None:
    """How event tables are read (``datasets show``, ``evaluate``)."""
    p.add_argument("--columns", metavar="ROLE=COLUMN,...",
                   help="the tables' column names, e.g. patient=pid,time=date,code=event "
                        "(roles: patient, time, code, kind, value, display, "
                        "baseline_patient, origin, end)")
    p.add_argument("--time-unit", choices=("days", "weeks", "months", "years"),
                   default="days", help="unit of numeric times in an event table")
    p.add_argument("--date-format", metavar="FORMAT",
                   help="strftime format of dates in an event table (default ISO 8601)")
    p.add_argument("--categorical", action="append", default=[], metavar="COLUMN",
                   help="a numeric baseline column that is categorical (repeatable)")
    p.add_argument("--initial-state", metavar="STATE",
                   help="the state every patient of an event table starts in")


def _trial_parser(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser("trial", help="synthetic and hybrid control arms for clinical trials")
    tsub = t.add_subparsers(dest="trial_command", required=True)
    tb = tsub.add_parser("build", help="build a synthetic control arm from a protocol file")
    tb.add_argument("protocol", type=Path, help="the trial protocol (YAML)")
    tb.add_argument("--out", type=Path, required=True,
                    help="output folder (new or empty): CDISC datasets, FHIR, build record")
    tb.add_argument("--no-progress", action="store_true", help="no progress bar")
    tb.add_argument("--budget", type=_number(lambda x: x > 0, "a positive epsilon"),
                    metavar="E",
                    help="refuse a baseline.source.fit that would take the data set's total "
                         "epsilon in its privacy ledger past E")
    tb.add_argument("--ledger-dir", type=Path, metavar="DIR",
                    help="the folder of privacy ledgers (default: $CARECOURSE_LEDGER_DIR, "
                         "else ~/.carecourse/ledgers)")
    tb.add_argument("--device", choices=("auto", "cpu", "cuda"), default="cpu",
                    help="where baseline.source.fit trains (default: cpu)")
    tb.set_defaults(func=_cmd_trial_build)
    tc = tsub.add_parser("compare", help="compare a synthetic arm with real arm data; "
                                         "optionally build a hybrid control arm")
    tc.add_argument("--synthetic", type=Path, required=True, metavar="DIR",
                    help="the --out folder of 'carecourse trial build'")
    tc.add_argument("--real", type=Path, required=True, metavar="CSV",
                    help="the real control arm: one row per subject, time, event, covariates")
    tc.add_argument("--treatment", type=Path, metavar="CSV",
                    help="a real treatment arm (same columns)")
    tc.add_argument("--hybrid", action="store_true",
                    help="also analyse real control + synthetic patients with a commensurate "
                         "prior (needs --treatment)")
    tc.add_argument("--endpoint", metavar="PARAMCD",
                    help="the time-to-event endpoint (default: the protocol's primary)")
    tc.add_argument("--time", default="time", metavar="COLUMN",
                    help="column of the time to event or censoring (default: time)")
    tc.add_argument("--event", default="event", metavar="COLUMN",
                    help="column that is 1 for an event, 0 for censoring (default: event)")
    tc.add_argument("--time-unit", choices=("days", "weeks", "months", "years"),
                    default="days", help="unit of --time (default: days)")
    tc.add_argument("--covariates", metavar="A,B,...",
                    help="Table 1 covariates (default: the columns both control arms have)")
    tc.add_argument("--categorical", action="append", default=[], metavar="COLUMN",
                    help="a numeric covariate to treat as categorical (repeatable)")
    tc.add_argument("--horizon", type=float, metavar="DAYS",
                    help="horizon of the largest Kaplan-Meier gap (default: the shorter "
                         "follow-up)")
    tc.add_argument("--match-censoring", action="store_true",
                    help="censor the synthetic arm as the real control arm is censored "
                         "(times drawn from its reverse Kaplan-Meier curve) before comparing; "
                         "build the arm without a data cut-off for this")
    tc.add_argument("--seed", type=int, default=0,
                    help="seed of --match-censoring's draws (default: 0)")
    tc.add_argument("--spike", type=float, default=0.5,
                    help="hybrid: prior probability that the arms are commensurate (0.5)")
    tc.add_argument("--slab-scale", type=float, default=1.0,
                    help="hybrid: scale of the half-normal prior of the discrepancy "
                         "otherwise, on the log-hazard scale (1.0)")
    tc.add_argument("--out", type=Path, metavar="DIR",
                    help="report folder (default: DIR/compare of the synthetic arm)")
    tc.set_defaults(func=_cmd_trial_compare)


def _learn_parser(sub: argparse._SubParsersAction) -> None:
    lp = sub.add_parser(
        "learn", help="train a DP transition and dwell-time model on real data and derive a "
                      "GMF module from it",
        description="Train the differentially private hazard model of a data set's states, "
                    "write its weights and model card, charge the data set's privacy "
                    "ledger, and derive a GMF module whose transitions use the model.")
    lp.add_argument("--data", required=True, metavar="DATA",
                    help="a built-in data set, a folder of FHIR bundles or ndjson, or an "
                         "event table with --baseline (as carecourse datasets show reads it)")
    _data_source_arguments(lp)
    lp.add_argument("--epsilon", type=_float, required=True, metavar="E",
                    help="privacy budget of this run (inf: no privacy, for synthetic data)")
    lp.add_argument("--delta", type=_float, default=1e-5, metavar="D",
                    help="delta of the guarantee, below 1/patients (default 1e-5)")
    lp.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                    help="where to train (default auto: CUDA when there is a GPU)")
    lp.add_argument("--out", type=Path, required=True, metavar="DIR",
                    help="new folder for the module, weights, card and pictures")
    lp.add_argument("--budget", type=_float, metavar="E",
                    help="refuse to run if the data set's total epsilon would pass E")
    lp.add_argument("--ledger-dir", type=Path, metavar="DIR",
                    help="folder of privacy ledgers (default $CARECOURSE_LEDGER_DIR or "
                         "~/.carecourse/ledgers)")
    g = lp.add_argument_group("model (public choices)")
    g.add_argument("--covariate", action="append", default=[], metavar="SPEC",
                   help="a covariate with public bounds: NAME=LOW:HIGH, NAME=A,B,C (levels), "
                        "or NAME when a built-in data set documents its bounds (repeatable)")
    g.add_argument("--bin-days", type=_float, metavar="DAYS",
                   help="width of the time bins (default 30, or the data set's documented)")
    g.add_argument("--bins", type=_positive, metavar="N",
                   help="bins modelled, spanning the follow-up; the last bin's hazard goes on "
                        "after (default 24, or the data set's documented)")
    g.add_argument("--time-knots", type=_non_negative, default=4, metavar="K",
                   help="knots of the piecewise-linear baseline hazard; 0: a parameter per "
                        "bin (default 4)")
    g.add_argument("--structure", choices=("auto", "public", "dp"), default="auto",
                   help="states and transitions: public (stated or documented) or chosen "
                        "by DP counts (default: public when known)")
    g.add_argument("--states", metavar="A,B,...",
                   help="the public list of states (others are not states here)")
    g.add_argument("--edges", metavar="A>B,...", help="the public transitions")
    g.add_argument("--max-transitions", type=_positive, default=4, metavar="K",
                   help="transitions of one patient used (default 4)")
    g.add_argument("--min-count", type=_float, default=10.0, metavar="N",
                   help="least noisy count of patients for a transition to be kept "
                        "(default 10)")
    g.add_argument("--count-share", type=_float, default=0.2, metavar="F",
                   help="share of epsilon for the counts of --structure dp (default 0.2)")
    t = lp.add_argument_group("training")
    t.add_argument("--epochs", type=_positive, default=30, help="(default 30)")
    t.add_argument("--batch-size", type=_non_negative, default=0,
                   help="expected patients per batch (default 0: a quarter of the patients, "
                        "128 to 2048)")
    t.add_argument("--lr", type=_float, default=0.03, help="Adam's learning rate (default 0.03)")
    t.add_argument("--max-grad-norm", type=_float, default=5.0,
                   help="per-patient clipping norm (default 5)")
    t.add_argument("--seed", type=_non_negative, default=0)
    m = lp.add_argument_group("derived module")
    m.add_argument("--name", help="module name (default: the data set's)")
    m.add_argument("--start-age", type=_float, default=0.0, metavar="YEARS",
                   help="patients enter the initial state at this age (default 0: birth)")
    m.add_argument("--code", action="append", default=[], metavar="STATE=SYSTEM|CODE|DISPLAY",
                   help="record entering STATE as this condition (repeatable)")
    lp.add_argument("--no-progress", action="store_true", help="no progress bar")
    lp.set_defaults(func=_cmd_learn)


def _server_options(p: argparse.ArgumentParser, upload_flag: str) -> None:
    g = p.add_argument_group(f"FHIR server (with {upload_flag})")
    g.add_argument("--token", help="bearer token (better: the CARECOURSE_FHIR_TOKEN "
                                   "environment variable, which other users cannot see)")
    g.add_argument("--concurrency", type=_positive, default=4,
                   help="requests in flight at once (default 4)")
    g.add_argument("--retries", type=_non_negative, default=8,
                   help="retries of a request after connection errors, 429 or 5xx (default 8)")
    g.add_argument("--timeout", type=_positive, default=120, metavar="SECONDS",
                   help="time allowed for one request (default 120)")
    g.add_argument("--insecure", action="store_true",
                   help="do not verify the server's TLS certificate (throwaway servers only)")
    g.add_argument("--ca-cert", type=Path, metavar="FILE",
                   help="PEM file with the CA that signed the server's certificate")
    g.add_argument("--force", action="store_true",
                   help="send again what the upload journal says the server already accepted")
    g.add_argument("--verify", action="store_true",
                   help="afterwards, count resources by type on the server and compare")


def _server(args: argparse.Namespace, url: str):
    import os

    from exporters.upload import TOKEN_ENV, ServerOptions

    if args.insecure and args.ca_cert:
        raise ConfigError("--insecure and --ca-cert contradict each other; choose one")
    options = ServerOptions(url=url, token=args.token or os.environ.get(TOKEN_ENV) or None,
                            verify=not args.insecure, ca_cert=args.ca_cert,
                            concurrency=args.concurrency, retries=args.retries,
                            timeout=float(args.timeout))
    options.check()
    return options


def _print_verify(options, journal) -> int:
    from exporters.upload import verify

    rows = verify(options, journal)
    missing = 0
    print(f"verify: resources by type on {options.display_url}")
    print(f"  {'type':24s} {'sent':>8s} {'on server':>10s}")
    for rtype, sent, found in rows:
        note = ""
        if found < sent:
            note = f"  MISSING {sent - found}"
            missing += sent - found
        elif found > sent:
            note = f"  +{found - sent} (data from elsewhere, or duplicates)"
        print(f"  {rtype:24s} {sent:8d} {found:10d}{note}")
    print("verify: every resource sent is on the server" if not missing
          else f"verify: {missing} resource(s) missing on the server")
    return 1 if missing else 0


def _cmd_upload(args: argparse.Namespace) -> int:
    from exporters.upload import Journal, bundle_folder, upload_folder

    options = _server(args, args.server)
    try:
        s = upload_folder(args.folder, options, force=args.force, keep_going=args.keep_going,
                          progress=not args.no_progress)
    except KeyboardInterrupt:
        print("carecourse: interrupted; what the server accepted is in the upload journal, "
              "rerun the same command to send the rest", file=sys.stderr)
        return 130
    print(f"Uploaded {s.sent} bundle(s), {s.resources} resource(s) in {s.seconds:.1f} s "
          f"({s.bundles_per_second:.1f} bundles/s, {s.resources_per_second:.0f} resources/s) "
          f"to {options.display_url}; {s.skipped} already there by the journal, "
          f"{s.retries} retried request(s)")
    if args.verify:
        _, journal_dir = bundle_folder(args.folder)
        return _print_verify(options, Journal(journal_dir, options.base))
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from simulator.demographics import US_STATES
    from simulator.population import RunConfig, run_population

    state = args.state
    if state is not None:
        from simulator.demographics import normalize_state
        try:
            state = normalize_state(state)
        except ValueError:
            raise ConfigError(f"--state {args.state!r} is not a US state; use a name such as "
                              f"Massachusetts or a code such as MA ({len(US_STATES)} known)") from None
    ref = args.reference_date or dt.datetime.now(dt.UTC).date()
    config = RunConfig(
        population=args.population, seed=args.seed, age_range=args.age_range,
        gender=args.gender, state=state, reference_date=ref, end_date=args.end_date,
        years_of_history=args.years_of_history, modules_dir=args.modules_dir,
        modules=tuple(args.module), out=args.out, processes=args.processes,
        lenient=args.lenient, learned_fallback=args.learned_fallback,
        # Imported (in every worker) only when a module has learned keys, so a run of
        # rule modules does not load torch.
        extensions=("learned.runtime",),
    )
    sinks = []
    if "csv" in args.format:
        from exporters.csv import CsvSink
        sinks.append(CsvSink(years_of_history=config.years_of_history, end=config.end))
    if "fhir" in args.format:
        from exporters.fhir import FhirSink
        sinks.append(FhirSink(years_of_history=config.years_of_history, end=config.end,
                              validate=args.validate))
    if "ndjson" in args.format:
        from exporters.fhir import NdjsonSink
        sinks.append(NdjsonSink(years_of_history=config.years_of_history, end=config.end,
                                transaction_time=f"{config.end_date or config.reference_date}"
                                                 f"T00:00:00Z", validate=args.validate))
    if "ccda" in args.format:
        from exporters.ccda import CcdaSink
        sinks.append(CcdaSink(years_of_history=config.years_of_history, end=config.end))
    upload = None
    if args.fhir_server:
        from exporters.upload import UploadSink
        upload = UploadSink(_server(args, args.fhir_server), config.out,
                            years_of_history=config.years_of_history, end=config.end,
                            force=args.force)
        upload.start()
        sinks.append(upload)
    elif args.verify or args.force or args.token:
        raise ConfigError("--verify, --force and --token go with --fhir-server URL")
    if args.workers or args.scheduler:
        from simulator.cluster import run_on_dask
        if args.processes != 1:
            raise ConfigError("--processes is for runs without Dask; with --workers or "
                              "--scheduler the cluster's workers do the work")
        if args.workers and args.scheduler:
            raise ConfigError("give --workers N (a local cluster) or --scheduler ADDRESS "
                              "(an existing one), not both")
        summary = run_on_dask(config, sinks, workers=args.workers, scheduler=args.scheduler,
                              partition_size=args.partition_size,
                              progress=not args.no_progress)
        where = (f", Dask: {args.workers} local worker(s)" if args.workers
                 else f", Dask scheduler {args.scheduler}")
    else:
        summary = run_population(config, sinks, progress=not args.no_progress)
        where = ""
    _print_summary(summary, config, where)
    if upload is not None:
        journal = upload.accepted()
        print(f"  uploaded: {len(journal.accepted)} bundle(s) accepted by "
              f"{upload.options.display_url} (journal {journal.path})")
        if args.verify:
            return _print_verify(upload.options, journal)
    return 0


def _print_summary(summary, config, where: str = "") -> None:
    rate = summary.patients / summary.seconds if summary.seconds else 0.0
    where = where or f", {config.processes} process(es)"
    print(f"Simulated {summary.patients} patients in {summary.seconds:.1f} s "
          f"({rate:.1f} patients/s{where}), seed {config.seed}, "
          f"to {config.end_date or config.reference_date}")
    print(f"  alive: {summary.alive}   dead: {summary.dead}   mean age: {summary.mean_age:.1f} years")
    if summary.conditions:
        print("  most common conditions (patients):")
        for name, n in summary.conditions.most_common(10):
            print(f"    {n:6d}  {name}")
    print(f"  output: {config.out.resolve()}")


def _cmd_validate(args: argparse.Namespace) -> int:
    from exporters.validate import validate_fhir_paths

    report = validate_fhir_paths(args.paths)
    for p in report.problems[: args.max_errors]:
        print(f"error: {p}")
    if len(report.problems) > args.max_errors:
        print(f"... {len(report.problems) - args.max_errors} more error(s) not shown")
    print(f"{report.files} file(s), {report.resources} resource(s), "
          f"{len(report.problems)} error(s)")
    for kind, n in report.by_kind.most_common():
        print(f"  {n:6d}  {kind}")
    return 1 if report.problems else 0


def _cmd_modules_list(args: argparse.Namespace) -> int:
    from modules.loader import load_library

    lib = load_library(args.modules_dir, lenient=True, check_models=False)
    for key in lib.top_level():
        m = lib.modules[key]
        print(f"{key:40s} {len(m.states):4d} states  {m.name}")
    subs = len(lib.modules) - len(lib.top_level())
    print(f"{len(lib.top_level())} modules, {subs} submodules in {lib.root}")
    return 0


def _cmd_modules_validate(args: argparse.Namespace) -> int:
    from modules.loader import validate_paths

    count, errors, warnings = validate_paths(args.paths)
    for w in warnings:
        print(f"warning: {w}")
    for e in errors:
        print(f"error: {e}")
    bad = len(errors) + (len(warnings) if args.strict else 0)
    print(f"{count} module file(s) checked: {len(errors)} error(s), {len(warnings)} warning(s)")
    return 1 if bad else 0


def _cmd_modules_graph(args: argparse.Namespace) -> int:
    from modules.draw import draw_module
    from modules.loader import load_library, load_module_file

    p = Path(args.name)
    # A drawing needs the states and transitions, not the models learned keys point to.
    if p.suffix == ".json" and p.is_file():
        module = load_module_file(p, lenient=True, check_models=False)
    else:
        module = load_library(args.modules_dir, lenient=True, check_models=False).get(args.name)
    suffix = args.out.suffix.lower()
    if suffix not in (".svg", ".png"):
        raise ConfigError(f"--out {args.out}: the drawing format follows the suffix; use .svg or .png")
    out = draw_module(module.graph, args.out)
    print(f"wrote {out} ({module.graph.number_of_nodes()} states)")
    return 0


def _cmd_datasets_list(args: argparse.Namespace) -> int:
    from learned.describe import catalogue

    print(catalogue())
    return 0


def _cmd_datasets_show(args: argparse.Namespace) -> int:
    from learned.describe import describe

    source = _read_source(args, args.name)
    print(describe(source.data, source.info, top=args.top))
    return 0


def _read_source(args: argparse.Namespace, name: str):
    """The data source ``name`` read with the options of ``_data_source_arguments``."""
    from learned.sources import read_source

    return read_source(name, baseline=args.baseline, table=_table_options(args),
                       reference_date=args.reference_date)


def _table_options(args: argparse.Namespace):
    from learned.sources import TableOptions

    return TableOptions(columns=args.columns, time_unit=args.time_unit,
                        date_format=args.date_format, categorical=tuple(args.categorical),
                        initial_state=args.initial_state)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    import importlib.util

    missing = [name for name, module in (("lifelines", "lifelines"), ("scikit-learn", "sklearn"),
                                         ("scipy", "scipy"))
               if importlib.util.find_spec(module) is None]
    if missing:
        raise ConfigError(f"carecourse evaluate needs {', '.join(missing)}; "
                          "pip install 'carecourse[learn]'")
    from learned.evaluate import EvaluateOptions, evaluate, split_holdout
    from learned.sources import is_table, read_source

    options = EvaluateOptions(bins=args.bins, outcome=args.outcome, horizon=args.horizon,
                              follow_up=args.follow_up, model=args.model,
                              resamples=args.resamples, seed=args.seed,
                              progress=not args.no_progress)
    options.check()
    table = _table_options(args)
    named = [args.real, args.synthetic] + ([args.holdout] if args.holdout else [])
    if table.given() and not any(is_table(n) for n in named):
        raise ConfigError(f"{', '.join(table.given())} go(es) with event tables (.csv, .tsv, "
                          "parquet), and none of --real, --synthetic, --holdout is one")

    def read(label: str, name: str, baseline: Path | None):
        own = table if is_table(name) else None
        try:
            # A table without its baseline is read as covariates alone (the baseline
            # generator's samples, a covariate table of the real data).
            return read_source(name, baseline=baseline, table=own,
                               reference_date=args.reference_date if not is_table(name)
                               and not _is_dataset(name) else None, baseline_only=True)
        except ConfigError as exc:
            raise ConfigError(f"--{label}: {exc}") from None

    real = read("real", args.real, args.real_baseline)
    synthetic = read("synthetic", args.synthetic, args.synthetic_baseline)
    if args.holdout_baseline and not args.holdout:
        raise ConfigError("--holdout-baseline goes with --holdout DATA")
    inputs = {"real": f"{args.real} ({real.kind}, {real.data.patients} patients)",
              "synthetic": f"{args.synthetic} ({synthetic.kind}, "
                           f"{synthetic.data.patients} patients)"}
    train, holdout = real.data, None
    if args.holdout:
        holdout = read("holdout", args.holdout, args.holdout_baseline).data
        inputs["holdout"] = f"{args.holdout} ({holdout.patients} patients)"
    elif args.holdout_fraction:
        train, holdout = split_holdout(real.data, args.holdout_fraction, args.seed)
        inputs["holdout"] = (f"{holdout.patients} of the {real.data.patients} real patients "
                             f"({args.holdout_fraction:g}, seed {args.seed}); the other "
                             f"{train.patients} are the training data")
    else:
        inputs["holdout"] = "none"
    if args.reference_date and not any(
            s.kind in ("fhir", "csv") for s in (real, synthetic)) and args.holdout is None:
        raise ConfigError("--reference-date goes with FHIR data or carecourse CSV output, and "
                          "no input is one")
    if args.origin_state:
        inputs["origin state"] = args.origin_state
    inputs["options"] = (f"bins {options.bins}, model {options.model}, {options.resamples} "
                         f"bootstrap resamples, seed {options.seed}")
    report = evaluate(train, synthetic.data, holdout=holdout, options=options,
                      origin_state=args.origin_state, rename=args.rename, inputs=inputs)
    out = report.write(args.out)
    _print_evaluation(report.metrics, out)
    return 0


def _is_dataset(name: str) -> bool:
    from learned.datasets import dataset_names

    return name in dataset_names()


def _print_evaluation(m, out: Path) -> None:
    from learned.evaluate_report import readings

    print(f"Evaluated {m.synthetic_patients} synthetic against {m.real_patients} real "
          f"patients" + (f" and {m.holdout_patients} held out" if m.holdout_patients else ""))
    for section, lines in readings(m).items():
        print(f"  {section}:")
        for line in lines:
            print(f"    {line}")
    print(f"  report: {(out / 'report.html').resolve()}")
    print(f"  metrics: {(out / 'metrics.json').resolve()}")
def _cmd_trial_build(args: argparse.Namespace) -> int:
    from exporters.trial import build_arm, check_out
    from modules.extensions import uses_learned_keys
    from simulator.cohort import TableSource, cohort_programs, protocol_library, read_baseline_table
    from simulator.engine import compile_library
    from simulator.population import load_extensions
    from simulator.protocol import load_protocol

    protocol = load_protocol(args.protocol)
    b = protocol.baseline
    if args.budget is not None and b.source != "fit":
        raise ConfigError("--budget limits what baseline.source.fit spends; this protocol "
                          "fits nothing (the budget of learned course models was charged by "
                          "carecourse learn)")
    check_out(args.out)
    library = protocol_library(protocol)
    learned_course = any(uses_learned_keys(m.spec) for m in library.modules.values())
    if learned_course:
        # Modules derived by carecourse learn: their learned keys run on learned.runtime.
        load_extensions(("learned.runtime",))
    programs = cohort_programs(protocol, library, compile_library(library))
    fitted = None
    entries: list[dict] = []
    if b.source in ("generator", "fit") or learned_course:
        from learned.trial_inputs import card_entry, course_cards
    if b.source == "dataset":
        from learned.datasets import load_dataset

        assert b.dataset is not None
        frame = load_dataset(b.dataset).baseline.reset_index(drop=True)
        source = TableSource.filtered(frame, f"data set {b.dataset}", b.where,
                                      replace=b.replace, protocol=protocol)
    elif b.source == "file":
        assert b.path is not None
        source = TableSource.filtered(read_baseline_table(b.path), str(b.path), b.where,
                                      replace=b.replace, protocol=protocol)
    elif b.source == "generator":
        from learned.trial_inputs import generator_source

        assert b.generator is not None
        source = generator_source(b.generator, f"{protocol.path}: baseline.source.generator")
        entries.append(card_entry(b.generator, "baseline generator"))
    else:
        from learned.ledger import default_ledger_dir
        from learned.trial_inputs import fit_generator

        fitted = fit_generator(protocol, ledger_dir=args.ledger_dir or default_ledger_dir(),
                               budget=args.budget, device=args.device,
                               progress=not args.no_progress)
        source = fitted.source
    if learned_course:
        entries += [card_entry(c, "disease course")
                    for c in course_cards(library, protocol.modules)]
    attach = learned = None
    if entries or fitted is not None:
        from learned.ledger import default_ledger_dir
        from learned.trial_inputs import learned_record

        ledger_dir = args.ledger_dir or default_ledger_dir()

        def attach(folder: Path) -> list[str]:
            if fitted is None:
                return []
            fitted.source.generator.save(folder / "generator")
            return ["generator/"]

        def learned(folder: Path) -> dict:
            found = list(entries)
            if fitted is not None:
                e = card_entry(folder / "generator", "baseline generator")
                e.update(path="generator/card.json", weights="generator/weights.pt")
                found.insert(0, e)
            return learned_record(found, ledger_dir=ledger_dir)

    summary = build_arm(protocol, source, programs, args.out, learned=learned, attach=attach,
                        progress=not args.no_progress)
    if fitted is not None:
        fitted.ledger.complete(fitted.spend.id, [str(args.out / "generator")])
    print(f"Built {protocol.arm.name!r} of {protocol.name} ({protocol.study_id}): "
          f"{summary.result.consort.enrolled} patients")
    for line in summary.result.consort.lines():
        print(f"  {line}")
    if summary.learned["models"]:
        for m in summary.learned["models"]:
            eps = m["epsilon"]
            print(f"  model ({m['role']}): {m['path']}, epsilon "
                  f"{'none (no privacy)' if eps is None else f'{eps:.3g}'}, delta {m['delta']}")
        for p in summary.learned["privacy"]:
            line = (f"  privacy spent on {p['data']}: epsilon {p['epsilon']:.3g} "
                    f"(added: {p['epsilon_added']:.3g}), delta {p['delta']:.3g}"
                    if p["epsilon"] != "inf" else f"  {p['data']}: used WITHOUT privacy")
            if "ledger" in p:
                line += (f"; the ledger's total over {p['ledger']['releases']} release(s): "
                         f"epsilon {p['ledger']['epsilon']:.3g}"
                         if p["ledger"]["epsilon"] != "inf" else "")
            print(line)
    print(f"  output: {args.out.resolve()} ({', '.join(summary.files)})")
    return 0


def _cmd_trial_compare(args: argparse.Namespace) -> int:
    import importlib.util

    import orjson

    missing = [m for m in ("lifelines", "scipy") if importlib.util.find_spec(m) is None]
    if missing:
        raise ConfigError(f"trial compare needs {' and '.join(missing)}; pip install "
                          "'carecourse[trial]'")

    from exporters.trial_report import km_figure, render_report, smd_figure, write_atomic
    from learned.arms import compare_arms, match_censoring, read_real_arm, read_synthetic_arm
    from learned.borrowing import commensurate_borrowing, hybrid_weights

    if args.hybrid and args.treatment is None:
        raise ConfigError("--hybrid needs --treatment CSV: the hybrid analysis estimates the "
                          "treatment effect against real control + synthetic patients")
    synthetic, record, paramcd = read_synthetic_arm(args.synthetic, args.endpoint)
    cols = dict(time=args.time, event=args.event, time_unit=args.time_unit)
    real = read_real_arm(args.real, "real control", **cols)
    treatment = read_real_arm(args.treatment, "real treatment", **cols) \
        if args.treatment is not None else None
    if args.match_censoring:
        synthetic = match_censoring(synthetic, real, args.seed)
    covariates = [c.strip() for c in args.covariates.split(",")] if args.covariates else None
    hybrid = None
    extra = {}
    if args.hybrid:
        assert treatment is not None
        hybrid = commensurate_borrowing(treatment, real, synthetic, spike=args.spike,
                                        slab_scale=args.slab_scale)
        extra["hybrid"] = hybrid_weights(real, synthetic, hybrid)
    comparison = compare_arms(synthetic, real, treatment, covariates=covariates,
                              categorical=args.categorical, horizon=args.horizon,
                              extra_curves=extra)
    out = args.out or args.synthetic / "compare"
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--out {out}: cannot create the folder ({exc.strerror})") from None
    endpoint = next(e for e in record["endpoints"] if e["paramcd"] == paramcd)
    km_figure(comparison.survival, out / "km.png", title=f"{endpoint['name']} ({paramcd})",
              horizon=comparison.horizon)
    smd_figure(comparison.table, out / "smd.png")
    images = {"km": out / "km.png", "smd": out / "smd.png"}
    if (args.synthetic / "consort.png").is_file():
        images["consort"] = args.synthetic / "consort.png"
    h = comparison.synthetic_vs_real
    figures = {"endpoint": paramcd, "synthetic_n": synthetic.n, "real_n": real.n,
               "max_abs_smd": comparison.max_abs_smd, "hr_synth_vs_real": h.hr,
               "hr_synth_vs_real_low": h.low, "hr_synth_vs_real_high": h.high,
               "ci_contains_1": h.ci_contains_1, "logrank_p": comparison.logrank_p,
               "km_max_gap": comparison.km_max_gap, "horizon_days": comparison.horizon,
               "censoring_matched": bool(args.match_censoring),
               "synthetic_events": synthetic.events, "real_events": real.events}
    for s in comparison.survival:
        figures[f"median_{s.arm.replace(' ', '_')}"] = s.median
    for key, hr in (("trt_vs_real", comparison.treatment_vs_real),
                    ("trt_vs_synth", comparison.treatment_vs_synthetic)):
        if hr is not None:
            figures.update({f"hr_{key}": hr.hr, f"hr_{key}_low": hr.low,
                            f"hr_{key}_high": hr.high})
    if hybrid is not None:
        figures.update({"hr_hybrid": hybrid.hr, "hr_hybrid_low": hybrid.low,
                        "hr_hybrid_high": hybrid.high,
                        "effective_borrowed": hybrid.effective_borrowed,
                        "borrowed_share": hybrid.borrowed_share,
                        "p_commensurate": hybrid.p_commensurate})
    context = {"title": f"{record['name']}: synthetic control arm against real data",
               "build": record, "consort": record["consort"], "endpoint": endpoint,
               "comparison": comparison, "hybrid": hybrid,
               "learned": record.get("learned") or {"models": [], "privacy": []},
               "real_file": str(args.real),
               "treatment_file": str(args.treatment) if args.treatment else ""}
    render_report(context, images, out / "report.html")
    write_atomic(out / "compare.json", orjson.dumps(figures, option=orjson.OPT_INDENT_2
                                                    | orjson.OPT_SERIALIZE_NUMPY))
    print(f"{record['name']}: {paramcd}, synthetic n={synthetic.n} vs real n={real.n}")
    smd = comparison.max_abs_smd
    print(f"  largest |SMD|: {smd:.3f}" + (" (above 0.1)" if smd > 0.1 else "")
          if smd is not None else "  no common covariates for Table 1")
    print(f"  HR synthetic vs real control: {h.hr:.3f} (95% CI {h.low:.3f}-{h.high:.3f})")
    print(f"  largest Kaplan-Meier gap to day {comparison.horizon:g}: "
          f"{comparison.km_max_gap:.3f}")
    if comparison.treatment_vs_real is not None:
        for label, hr in (("real control", comparison.treatment_vs_real),
                          ("synthetic control", comparison.treatment_vs_synthetic)):
            assert hr is not None
            print(f"  HR treatment vs {label}: {hr.hr:.3f} (95% CI {hr.low:.3f}-{hr.high:.3f})")
    if hybrid is not None:
        print(f"  HR treatment vs hybrid control: {hybrid.hr:.3f} (95% CrI {hybrid.low:.3f}-"
              f"{hybrid.high:.3f}); {hybrid.effective_borrowed:.1f} of {hybrid.synthetic_n} "
              "synthetic patients borrowed")
    print(f"  report: {(out / 'report.html').resolve()}")
    return 0


def _edges(text: str | None) -> tuple[tuple[str, str], ...]:
    if not text:
        return ()
    out = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        a, sep, b = part.partition(">")
        if not sep or not a.strip() or not b.strip():
            raise ConfigError(f"--edges {text!r}: write FROM>TO pairs separated by commas, "
                              "e.g. randomized>aids,aids>death")
        out.append((a.strip(), b.strip()))
    return tuple(out)


def _codes(items: list[str]) -> tuple[tuple[str, str, str, str], ...]:
    out = []
    for item in items:
        state, sep, rest = item.partition("=")
        parts = rest.split("|")
        if not sep or len(parts) not in (2, 3) or not all(p.strip() for p in parts[:2]):
            raise ConfigError(f"--code {item!r}: write STATE=SYSTEM|CODE|DISPLAY, e.g. "
                              "aids=SNOMED-CT|62479008|AIDS")
        display = parts[2].strip() if len(parts) == 3 else parts[1].strip()
        out.append((state.strip(), parts[0].strip(), parts[1].strip(), display))
    return tuple(out)


def _cmd_learn(args: argparse.Namespace) -> int:
    from learned.covariates import Covariate
    from learned.learn import FHIR_SOURCES, PUBLIC, LearnConfig, learn
    from learned.ledger import default_ledger_dir

    source = _read_source(args, args.data)
    data, info = source.data, source.info
    facts = PUBLIC.get(info.name) if info is not None else None
    known = dict(facts.covariates) if facts else {}
    config = LearnConfig(
        epsilon=args.epsilon, delta=args.delta,
        covariates=tuple(Covariate.parse(c, known) for c in args.covariate),
        bin_days=args.bin_days or (facts.bin_days if facts else 30.0),
        max_bins=args.bins or (facts.bins if facts else 24), time_knots=args.time_knots,
        structure=args.structure,
        states=tuple(x.strip() for x in (args.states or "").split(",") if x.strip()),
        edges=_edges(args.edges), max_transitions=args.max_transitions,
        min_count=args.min_count, count_share=args.count_share, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, max_grad_norm=args.max_grad_norm,
        seed=args.seed, device=args.device, name=args.name, start_age=args.start_age,
        codes=_codes(args.code), budget=args.budget)
    result = learn(data, config, args.out, ledger_dir=args.ledger_dir or default_ledger_dir(),
                   facts=facts, sources=FHIR_SOURCES if source.kind in ("fhir", "csv") else None,
                   progress=not args.no_progress)
    print(f"  module:  {result.module}  (carecourse run --modules-dir {args.out})")
    print(f"  model:   {result.weights} and its card {result.card}")
    print(f"  ledger:  {result.ledger}")
    print(f"  figures: {', '.join(str(p) for p in result.pictures)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CarecourseError as exc:
        print(f"carecourse: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        extra = ("; the patients the server accepted are in the upload journal, rerun the "
                 "same command to send the rest" if getattr(args, "fhir_server", None) else "")
        parts = Path(getattr(args, "out", "") or ".") / "parts"
        kept = len(list(parts.glob("part-*"))) if (
            getattr(args, "workers", None) or getattr(args, "scheduler", None)) else 0
        if kept:
            extra += (f"; the {kept} partition(s) that finished are kept in {parts}: rerun "
                      f"the same command to compute only the missing ones")
        print(f"carecourse: interrupted; no output files were written{extra}", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into a command that stopped reading (head)
        sys.stderr.close()
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
