"""carecourse learned transitions: everything trained on real data.

Data in (the first part of the learned-transitions issue):

- :mod:`learned.events`: the common event form (:class:`~learned.events.EventData`) and its
  validation;
- :mod:`learned.tables`: CSV and Parquet event tables with a baseline-covariate table;
- :mod:`learned.fhir`: FHIR R4 bundles and Bulk Data ndjson;
- :mod:`learned.datasets`: real clinical data sets shipped inside installable packages
  (ACTG 320, ACTG 175, GBSG-2 lymph node, Stanford heart transplant);
- :mod:`learned.describe`: the summaries ``carecourse datasets`` prints;
- :mod:`learned.synthetic`: carecourse's own CSV output;
- :mod:`learned.sources`: one way of naming a data source, for every command.

Evaluation (``carecourse evaluate``):

- :mod:`learned.evaluate`: fidelity, utility and privacy of a synthetic population against
  the real data, as typed metrics; :mod:`learned.evaluate_metrics` the measurements,
  :mod:`learned.evaluate_report` the pictures and the HTML report.

Generators:

- :mod:`learned.baseline`: the DP generator of baseline covariates (mixed numeric and
  categorical), with exact conditional sampling for eligibility criteria.

Learned transitions (``carecourse learn``):

- :mod:`learned.covariates`: covariates with public bounds, and their encoding;
- :mod:`learned.hazard`: the DP discrete-time competing-risks model of exits and dwell
  times (DP-SGD through Opacus, the patient as privacy unit);
- :mod:`learned.privacy`: Gaussian mechanisms, RDP composition, noise calibration,
  partition selection;
- :mod:`learned.ledger`: the privacy ledger of each data set;
- :mod:`learned.derive`: a module's structure and stays from event data, and its GMF JSON;
- :mod:`learned.modelfile`: weights (state_dict) and model cards;
- :mod:`learned.learn`: the whole of ``carecourse learn``;
- :mod:`learned.runtime`: the ``hazard`` kind the engine runs ``learned_transition`` and
  ``learned_delay`` with (importing it registers the kind).

Nothing is imported here, so importing one adapter does not load the others' dependencies.
"""
