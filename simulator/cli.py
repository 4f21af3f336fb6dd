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
    r.add_argument("--partition-size", type=_positive, default=100, metavar="N",
                   help="patients per Dask partition (default 100)")
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
                                 "folder of FHIR bundles or ndjson files, or an event table "
                                 "(.csv, .tsv, .parquet) with --baseline")
    _data_options(ds)
    ds.add_argument("--top", type=_positive, default=15, metavar="N",
                    help="show at most N codes and transitions (default 15)")
    ds.set_defaults(func=_cmd_datasets_show)
    d.set_defaults(func=_cmd_datasets_list)
    _learn_parser(sub)
    return p


def _data_options(p: argparse.ArgumentParser) -> None:
    """The options that say how to read data (``datasets show`` and ``learn``)."""
    p.add_argument("--baseline", type=Path, metavar="FILE",
                   help="the baseline-covariate table that goes with an event table")
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
    p.add_argument("--reference-date", type=_date, metavar="YYYY-MM-DD",
                   help="FHIR: end of follow-up of the living (default: the latest date)")


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None


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
    _data_options(lp)
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


def _read_data(args: argparse.Namespace, name: str):
    """(EventData, DatasetInfo or None, how it was read: "dataset", "table" or "fhir") of
    a data argument, with the data options."""
    from learned.datasets import dataset_names, get_dataset, load_dataset

    path = Path(name)
    table = path.name.lower().endswith((".csv", ".csv.gz", ".tsv", ".tsv.gz", ".parquet",
                                        ".pq"))
    table_options = [flag for flag, given in (
        ("--baseline", args.baseline), ("--columns", args.columns),
        ("--date-format", args.date_format), ("--categorical", args.categorical),
        ("--initial-state", args.initial_state), ("--time-unit", args.time_unit != "days"))
        if given]
    if table_options and not table:
        raise ConfigError(f"{', '.join(table_options)} go(es) with an event table "
                          f"(.csv, .tsv, .parquet), not with {name}")
    if args.reference_date and (table or name in dataset_names()):
        raise ConfigError("--reference-date goes with FHIR data (a folder of bundles or ndjson)")
    if name in dataset_names():
        return load_dataset(name), get_dataset(name), "dataset"
    if table:
        from learned.tables import TableColumns, read_event_tables

        if args.baseline is None:
            raise ConfigError(f"{path}: an event table needs its baseline table; give "
                              "--baseline FILE (one row per patient: id and covariates)")
        columns = TableColumns.parse(args.columns) if args.columns else None
        data = read_event_tables(path, args.baseline, columns=columns,
                                 time_unit=args.time_unit, date_format=args.date_format,
                                 categorical=tuple(args.categorical),
                                 initial_state=args.initial_state)
        return data, None, "table"
    if path.exists():
        from learned.fhir import read_fhir

        return read_fhir(path, reference_date=args.reference_date), None, "fhir"
    raise ConfigError(f"{name!r} is neither a built-in data set ("
                      f"{', '.join(dataset_names())}) nor an existing file or folder")


def _cmd_datasets_show(args: argparse.Namespace) -> int:
    from learned.describe import describe

    data, info, _how = _read_data(args, args.name)
    print(describe(data, info, top=args.top))
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

    data, info, how = _read_data(args, args.data)
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
                   facts=facts, sources=FHIR_SOURCES if how == "fhir" else None,
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
        print(f"carecourse: interrupted; no output files were written{extra}", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into a command that stopped reading (head)
        sys.stderr.close()
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
