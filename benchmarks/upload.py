"""Upload benchmark: bundles and resources per second into a local FHIR R4 server at
concurrency 1, 4 and 8.

One export (Synthea's module library, 10 years of history) is uploaded three times, each
time into a fresh, empty SEKMET server on 127.0.0.1 (FastAPI over SQLite, the server the
integration tests use), with inbound validation off so that the figures are about moving
bundles, not about the server's validator. The server runs in its own process on the same
machine, so on a 2-core machine the uploader and the server share the cores: treat the
figures as the rate this pair reaches, the server being the usual bottleneck. Figures are
printed and written to benchmarks/results/upload.json.

    python benchmarks/upload.py [--patients 100] [--modules-dir DIR]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # for tests.fhir_server
DEFAULT_MODULES = HERE.parent.parent / "shared" / "synthea" / "modules"


def main() -> None:
    from exporters.fhir import FhirSink
    from exporters.upload import ServerOptions, upload_folder
    from simulator.population import RunConfig, run_population
    from tests.fhir_server import LocalFhirServer

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patients", type=int, default=100)
    ap.add_argument("--modules-dir", type=Path, default=DEFAULT_MODULES)
    ap.add_argument("--years-of-history", type=int, default=10)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "upload.json")
    args = ap.parse_args()
    if not args.modules_dir.is_dir():
        sys.exit(f"{args.modules_dir}: module library not found (pass --modules-dir)")
    figures: dict[str, float | int | str] = {"patients": args.patients,
                                             "years_of_history": args.years_of_history,
                                             "server": "sekmet-fhir (SQLite), validation off"}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        config = RunConfig(population=args.patients, seed=1, out=out, processes=2,
                           reference_date=dt.date(2025, 1, 1), modules_dir=args.modules_dir,
                           years_of_history=args.years_of_history)
        run_population(config, [FhirSink(years_of_history=args.years_of_history,
                                         end=config.end)], progress=False)
        mb = sum(p.stat().st_size for p in (out / "fhir").glob("*.json")) / 1e6
        figures["bundle_mb_total"] = round(mb, 1)
        for c in (1, 4, 8):
            (out / "upload-journal.jsonl").unlink(missing_ok=True)
            with LocalFhirServer(Path(tmp) / f"server-c{c}", validation="off") as srv:
                s = upload_folder(out, ServerOptions(url=srv.base, concurrency=c),
                                  progress=True)
            figures[f"bundles_per_second_c{c}"] = round(s.bundles_per_second, 2)
            figures[f"resources_per_second_c{c}"] = round(s.resources_per_second, 1)
            figures["bundles"] = s.sent
            figures["resources"] = s.resources
            print(f"concurrency {c}: {s.sent} bundles, {s.resources} resources in "
                  f"{s.seconds:.1f} s: {s.bundles_per_second:.2f} bundles/s, "
                  f"{s.resources_per_second:.0f} resources/s, {s.retries} retries")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
