"""Fidelity benchmark of the DP baseline-covariate generator on ACTG 320, against MST and AIM.

ACTG 320 (Hammer et al., N Engl J Med 1997;337:725-733; scikit-survival ``load_aids``):
1,151 patients, 12 columns: age, CD4, months of prior zidovudine and time to the first
AIDS-defining event or death (binned on the public edges of ``SCHEMA``), hemophilia, IV
drug use, Karnofsky score, race/ethnicity, sex, CD4 stratum, the treatment arm ``tx`` and
the event indicator. (``txgrp`` is left out: it repeats ``tx``.)

For each seed: a 70/30 split (805 training rows), then, at each epsilon (delta 1e-5), in the
same run and on the same binned columns:

- ``carecourse``: :class:`learned.baseline.MixtureGenerator` (DP-SGD through Opacus);
- ``mst`` and ``aim``: MST (McKenna, Miklau and Sheldon, J Priv Confid 2021;11(3)) and AIM
  (McKenna, Mullins, Sheldon and Miklau, PVLDB 2022;15(11):2599-2612) as implemented by
  dpmm 0.1.9 (Mahiou, Ganev et al., arXiv:2506.00322), whose Private-PGM sampler is not
  the one in mbi 1.1.0 that smartnoise-synth 1.0.8 pins (and whose regressions, fixed in
  mbi 2.0, inflate MST and AIM error). They get the same public domain (the bin counts), so
  none spends budget on preprocessing;
- ``bootstrap``: a resample of the training rows (what sampling noise alone costs);
- ``real``: the training rows themselves (for train-on-real AUC).

Each synthetic table has as many rows as the training table. Figures, averaged over seeds:

- ``tvd1``, ``tvd2``: mean total-variation distance of the 1-way and 2-way marginals of the
  binned columns, synthetic against the training rows;
- ``corr``: mean absolute difference of the pairwise Pearson correlations of the binned
  columns' codes (bins in order, categories in their stated order);
- ``tstr_auc``: train on synthetic, test on real: a logistic regression of the event
  indicator on the one-hot baseline columns (not time), fitted on the synthetic rows, AUC on
  the real 30% holdout;
- ``rate_diff``: the event rate of the indinavir arm minus that of the control arm.

    python benchmarks/fidelity.py [--seeds 5] [--epsilons 1,3] [--methods carecourse,mst,aim]

needs the ``bench`` extra (``pip install -e ".[bench]"``) and dpmm installed beside it
without its pins (``pip install --no-deps dpmm==0.1.9 disjoint-set==0.7.4 opendp==0.12.1``:
dpmm pins networkx<3 and numpy 1.26, which carecourse cannot run on; its MST and AIM run on
the newer versions). Writes ``benchmarks/results/fidelity.json`` (flat keys, e.g.
``tvd2_carecourse_eps1``) and ``fidelity.png``.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import multiprocessing as mp
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from learned.baseline import Categorical, MixtureConfig, MixtureGenerator, Numeric, Schema

HERE = Path(__file__).resolve().parent
DELTA = 1e-5
TRAIN_SHARE = 0.7

#: Public bins and categories, from the trial's design and the data set's documentation
#: (learned/datasets.py), not from the data: CD4 at most 200 at screening (edges up to twice
#: that), follow-up of at most one year (quarters), prior zidovudine in doubling months.
SCHEMA = Schema((
    Numeric("age", (13.0, 25.0, 35.0, 45.0, 55.0, 80.0)),
    Numeric("cd4", (0.0, 50.0, 100.0, 150.0, 200.0, 400.0)),
    Numeric("priorzdv", (0.0, 6.0, 12.0, 24.0, 48.0, 96.0, 360.0)),
    Numeric("time", (0.0, 91.0, 182.0, 273.0, 366.0)),
    Categorical("hemophil", ("0", "1")),
    Categorical("ivdrug", ("1", "2", "3")),
    Categorical("karnof", ("70", "80", "90", "100")),
    Categorical("raceth", ("1", "2", "3", "4", "5", "6")),
    Categorical("sex", ("1", "2")),
    Categorical("strat2", ("0", "1")),
    Categorical("tx", ("0", "1")),
    Categorical("event", ("0", "1")),
))
OUTCOMES = ("event", "time")

#: The generator's settings for the benchmark: the event indicator and its time as outcome
#: heads (so that the event's association with the arm and the covariates is a parameter),
#: 8 classes for the rest. Chosen from runs at epsilon 1 on this data set (two other
#: splits): hyperparameter search on the private data is itself not accounted for (see
#: Papernot and Steinke, ICLR 2022), so these figures are optimistic in that respect.
CARECOURSE = MixtureConfig(outcomes=("event", "time"), head_scale=0.7, scale=0.3)


def load_table() -> pd.DataFrame:
    """ACTG 320 as one row per patient: the baseline covariates, the event indicator (AIDS
    or death) and the time to it or to the end of follow-up, in days."""
    from learned.datasets import load_dataset

    data = load_dataset("actg320")
    base = data.baseline.drop(columns=["txgrp"])
    states = data.events[data.events["kind"] == "state"]
    first = states.groupby("patient_id")["time"].min()
    t = data.end.copy()
    t.loc[first.index] = first
    base = base.assign(event=np.where(base.index.isin(first.index), "1", "0"),
                       time=t.reindex(base.index).to_numpy())
    return base.reset_index(drop=True)


# --- metrics over binned codes [rows, columns] --------------------------------------------

def _marginal(codes: np.ndarray, cols: tuple[int, ...], sizes: list[int]) -> np.ndarray:
    flat = np.ravel_multi_index(tuple(codes[:, c] for c in cols), [sizes[c] for c in cols])
    return np.bincount(flat, minlength=int(np.prod([sizes[c] for c in cols]))) / len(codes)


def tvd(a: np.ndarray, b: np.ndarray, way: int, sizes: list[int]) -> float:
    """Mean total-variation distance of all ``way``-way marginals."""
    pairs = itertools.combinations(range(a.shape[1]), way)
    return float(np.mean([0.5 * np.abs(_marginal(a, p, sizes) - _marginal(b, p, sizes)).sum()
                          for p in pairs]))


def corr_diff(a: np.ndarray, b: np.ndarray) -> float:
    def corr(x: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            c = np.corrcoef(x.T.astype(float))
        return np.nan_to_num(c)  # a constant column correlates with nothing
    iu = np.triu_indices(a.shape[1], 1)
    return float(np.mean(np.abs(corr(a)[iu] - corr(b)[iu])))


def _design(codes: np.ndarray, predictors: list[int], sizes: list[int]) -> np.ndarray:
    return np.hstack([np.eye(sizes[c])[codes[:, c]] for c in predictors])


def tstr_auc(train: np.ndarray, test: np.ndarray, sizes: list[int]) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    y_col = SCHEMA.names.index("event")
    predictors = [j for j, n in enumerate(SCHEMA.names) if n not in OUTCOMES]
    y = train[:, y_col]
    if len(np.unique(y)) < 2:  # a synthesizer that never (or always) has the event
        return 0.5
    clf = LogisticRegression(max_iter=2000).fit(_design(train, predictors, sizes), y)
    score = clf.predict_proba(_design(test, predictors, sizes))[:, 1]
    return float(roc_auc_score(test[:, y_col], score))


def rate_diff(codes: np.ndarray) -> float:
    tx, ev = codes[:, SCHEMA.names.index("tx")], codes[:, SCHEMA.names.index("event")]
    arms = [ev[tx == k].mean() if (tx == k).any() else np.nan for k in (0, 1)]
    return float(arms[1] - arms[0])


# --- synthesizers: (training codes, epsilon, seed) -> synthetic codes ---------------------

Synth = Callable[[pd.DataFrame, np.ndarray, float, int], np.ndarray]


def _carecourse(config: MixtureConfig) -> Synth:
    def run(train: pd.DataFrame, codes: np.ndarray, eps: float, seed: int) -> np.ndarray:
        gen = MixtureGenerator(SCHEMA, config).fit(train, epsilon=eps, delta=DELTA, seed=seed)
        return SCHEMA.encode(gen.sample(len(train), seed=seed))
    return run


def _dpmm_compat() -> None:
    """dpmm 0.1.9 gives its Identity operator the dtype ``np.float64`` (a type), which SciPy
    1.15 and later refuse in LSMR (AIM's first estimate); give it ``np.dtype(np.float64)``,
    which is what the type means. Nothing else is changed."""
    from dpmm.models.base import matrix

    if getattr(matrix.Identity, "_carecourse_patched", False):
        return
    init = matrix.Identity.__init__

    def patched(self: object, n: int, dtype: object = np.float64) -> None:
        init(self, n, dtype)
        self.dtype = np.dtype(dtype)  # type: ignore[attr-defined]
    matrix.Identity.__init__ = patched
    matrix.Identity._carecourse_patched = True


def _dpmm(model: str) -> Synth:
    def run(train: pd.DataFrame, codes: np.ndarray, eps: float, seed: int) -> np.ndarray:
        from numpy.random import RandomState

        _dpmm_compat()
        if model == "mst":
            from dpmm.models.mst import MSTGM as GM
        else:
            from dpmm.models.aim import AIMGM as GM
        frame = pd.DataFrame(codes, columns=SCHEMA.names)
        gm = GM(epsilon=eps, delta=DELTA, n_jobs=1)
        gm.set_domain(dict(zip(SCHEMA.names, SCHEMA.sizes, strict=True)))
        gm.set_random_state(RandomState(seed))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            gm.fit(frame)
            out = gm.generate(n_records=len(codes))
        return out[SCHEMA.names].to_numpy(dtype=np.int64)
    return run


def synth_bootstrap(train: pd.DataFrame, codes: np.ndarray, eps: float, seed: int
                    ) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return codes[rng.integers(0, len(codes), len(codes))]


METHODS: dict[str, Synth] = {
    "carecourse": _carecourse(CARECOURSE), "mst": _dpmm("mst"), "aim": _dpmm("aim"),
    # Ablations (--methods mixture_only,independent): the same generator without the
    # outcome heads, and with one class (independent columns).
    "mixture_only": _carecourse(MixtureConfig()),
    "independent": _carecourse(MixtureConfig(components=1)),
}


def evaluate(synth: np.ndarray, train: np.ndarray, test: np.ndarray) -> dict[str, float]:
    sizes = SCHEMA.sizes
    return {"tvd1": tvd(synth, train, 1, sizes), "tvd2": tvd(synth, train, 2, sizes),
            "corr": corr_diff(synth, train), "tstr_auc": tstr_auc(synth, test, sizes),
            "rate_diff": rate_diff(synth)}


@functools.cache
def _data() -> tuple[pd.DataFrame, np.ndarray]:
    table = load_table()
    return table, SCHEMA.encode(table, source="actg320")


def split(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seed ``seed``'s 70/30 split: training and holdout row indices."""
    table, _ = _data()
    order = np.random.default_rng(1000 + seed).permutation(len(table))
    cut = int(TRAIN_SHARE * len(table))
    return order[:cut], order[cut:]


def fit_one(seed: int, method: str, eps: float) -> tuple[str, dict[str, float] | str, float]:
    """One method's synthetic table for one seed's split at one epsilon, evaluated: (key,
    figures or the error, CPU seconds). ``real`` and ``bootstrap`` take no epsilon."""
    import torch

    torch.set_num_threads(1)  # tiny models on a shared machine: no contended pool
    table, codes = _data()
    tr, te = split(seed)
    train, test = codes[tr], codes[te]
    key = method if method in ("real", "bootstrap") else f"{method}_eps{eps:g}"
    t0 = time.process_time()
    try:
        if method == "real":
            synth = train
        elif method == "bootstrap":
            synth = synth_bootstrap(table.iloc[tr], train, eps, seed)
        else:
            synth = METHODS[method](table.iloc[tr].reset_index(drop=True), train, eps, seed)
    except Exception as e:  # a peer that fails on this platform is reported, not fatal
        return key, f"{type(e).__name__}: {str(e).splitlines()[0][:200]}", 0.0
    return key, evaluate(synth, train, test), time.process_time() - t0


def _cache_key(job: tuple[int, str, float]) -> str:
    """What a fit's result depends on: seed, method, epsilon and, for carecourse, its
    settings (a changed config is fitted anew)."""
    seed, method, eps = job
    config = json.dumps({**CARECOURSE.__dict__, "outcomes": list(CARECOURSE.outcomes)}) \
        if method == "carecourse" else ""
    return f"{seed}|{method}|{eps:g}|{config}"


def _read_cache(path: Path) -> dict[str, dict]:
    if not path.is_file():
        return {}
    out = {}
    for line in path.read_text().splitlines():
        try:
            entry = json.loads(line)
            out[entry["job"]] = entry
        except (ValueError, KeyError):
            continue  # a line cut by an interrupted write
    return out


def run(seeds: int, epsilons: list[float], methods: list[str], *, jobs: int = 1,
        progress: bool = True, cache: Path | None = None,
        checkpoint: Callable[[dict[str, float | int | str]], None] | None = None
        ) -> dict[str, float | int | str]:
    """Every method on every seed's split at every epsilon, ``jobs`` fits at a time (each
    in its own process); the figures averaged over the seeds (``checkpoint`` gets those
    of the fits done so far after each fit). A fit that fails is recorded as
    ``error_<method>_eps<E>`` and the run goes on. With ``cache``, each fit's figures are
    appended to that file and fits already there are not run again (the fits are
    deterministic given seed, method, epsilon and settings)."""
    from concurrent.futures import ProcessPoolExecutor, as_completed

    from tqdm import tqdm

    # The cheap fits first, then epsilon by epsilon and method by method over the seeds,
    # so that a run cut short has every method at the first epsilon on several seeds.
    todo = [(s, m, 0.0) for s in range(seeds) for m in ("real", "bootstrap")]
    todo += [(s, m, e) for e in epsilons for m in methods for s in range(seeds)]
    scores: dict[str, list[dict[str, float]]] = {}
    seconds: dict[str, list[float]] = {}
    errors: dict[str, str] = {}
    table, _ = _data()
    cut = len(split(0)[0])
    done = _read_cache(cache) if cache is not None else {}

    def record(job: tuple[int, str, float], key: str, result: dict[str, float] | str,
               cpu: float) -> None:
        if isinstance(result, str):
            errors[key] = result
            return
        scores.setdefault(key, []).append(result)
        seconds.setdefault(key, []).append(cpu)
        if cache is not None and _cache_key(job) not in done:
            with cache.open("a") as f:  # one line per fit: a cut run resumes from here
                f.write(json.dumps({"job": _cache_key(job), "key": key, "result": result,
                                    "cpu": cpu}) + "\n")

    for job in [j for j in todo if _cache_key(j) in done]:
        entry = done[_cache_key(job)]
        record(job, entry["key"], entry["result"], entry["cpu"])
    todo = [j for j in todo if _cache_key(j) not in done]
    bar = tqdm(total=len(todo), desc="fidelity", unit="fit", disable=not progress)
    ctx = mp.get_context("spawn")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
        futures = {pool.submit(fit_one, *job): job for job in todo}
        for fut in as_completed(futures):
            key, result, cpu = fut.result()
            record(futures[fut], key, result, cpu)
            if not isinstance(result, str):
                bar.set_postfix_str(f"{key} tvd2 {result['tvd2']:.3f}")
            bar.update()
            if checkpoint is not None:
                checkpoint(summarize(scores, seconds, errors, seeds, cut, len(table)))
    bar.close()
    return summarize(scores, seconds, errors, seeds, cut, len(table))


def summarize(scores: dict[str, list[dict[str, float]]], seconds: dict[str, list[float]],
              errors: dict[str, str], seeds: int, cut: int, rows: int
              ) -> dict[str, float | int | str]:
    out: dict[str, float | int | str] = {
        "dataset": "actg320", "rows": rows, "train_rows": cut, "seeds": seeds,
        "delta": DELTA, "columns": len(SCHEMA.names),
        "peers": "MST and AIM from dpmm 0.1.9 (its own Private-PGM, not mbi 1.1.0)",
        "carecourse_config": json.dumps({**CARECOURSE.__dict__,
                                         "outcomes": list(CARECOURSE.outcomes)}),
        "metrics_against": "the training rows (tvd, corr); the 30% holdout (tstr_auc)"}
    for key, rows in scores.items():
        out[f"fits_{key}"] = len(rows)
        for metric in rows[0]:
            vals = [r[metric] for r in rows]
            name = f"{metric}_{key}"
            out[name] = round(float(np.mean(vals)), 4)
            out[f"{name}_sd"] = round(float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0, 4)
    for key, s in seconds.items():
        out[f"cpu_seconds_per_fit_{key}"] = round(float(np.mean(s)), 2)
    for key, e in errors.items():
        out[f"error_{key}"] = e
    return out


def table_text(out: dict[str, float | int | str], epsilons: list[float], methods: list[str]
               ) -> str:
    metrics = ("tvd1", "tvd2", "corr", "tstr_auc", "rate_diff")
    rows = [f"{'method':<18}" + "".join(f"{m:>11}" for m in metrics)]
    keys = [f"{m}_eps{e:g}" for e in epsilons for m in methods] + ["bootstrap", "real"]
    for key in keys:
        cells = "".join(f"{out.get(f'{m}_{key}', float('nan')):>11.3f}" for m in metrics)
        rows.append(f"{key:<18}{cells}")
    return "\n".join(rows)


def plot(out: dict[str, float | int | str], epsilons: list[float], methods: list[str],
         path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = ("tvd2", "tstr_auc", "rate_diff")
    fig, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics), 3.6))
    keys = [f"{m}_eps{e:g}" for e in epsilons for m in methods] + ["bootstrap", "real"]
    for ax, metric in zip(axes, metrics, strict=True):
        vals = [float(out.get(f"{metric}_{k}", np.nan)) for k in keys]
        err = [float(out.get(f"{metric}_{k}_sd", 0.0)) for k in keys]
        ax.bar(range(len(keys)), vals, yerr=err, color=["C0" if "carecourse" in k else
                                                       "C7" if k in ("bootstrap", "real")
                                                       else "C1" for k in keys])
        ax.set_xticks(range(len(keys)), keys, rotation=60, ha="right", fontsize=8)
        ax.set_title(metric)
    fig.suptitle(f"ACTG 320, {out['train_rows']} training rows, {out['seeds']} seeds")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--epsilons", default="1,3")
    ap.add_argument("--methods", default="carecourse,mst,aim")
    ap.add_argument("--jobs", type=int, default=2, help="fits run at a time (processes)")
    ap.add_argument("--fresh", action="store_true",
                    help="ignore the fits recorded by earlier runs (results/.fidelity_fits.jsonl)")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "fidelity.json")
    args = ap.parse_args()
    epsilons = [float(e) for e in args.epsilons.split(",")]
    methods = args.methods.split(",")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        sys.exit(f"unknown method(s) {unknown}; choose from {list(METHODS)}")
    if {"mst", "aim"} & set(methods):
        try:
            import dpmm  # noqa: F401
        except ImportError:
            sys.exit("MST and AIM need dpmm: pip install --no-deps dpmm==0.1.9 "
                     "disjoint-set==0.7.4 opendp==0.12.1 (or pass --methods carecourse)")
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def write(out: dict[str, float | int | str]) -> None:
        tmp = args.out.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(out, indent=2) + "\n")
        tmp.replace(args.out)

    cache = args.out.parent / f".{args.out.stem}_fits.jsonl"
    if args.fresh:
        cache.unlink(missing_ok=True)
    out = run(args.seeds, epsilons, methods, jobs=args.jobs, cache=cache, checkpoint=write)
    print(table_text(out, epsilons, methods))
    write(out)
    plot(out, epsilons, methods, args.out.with_suffix(".png"))
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
