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

Nothing is imported here, so importing one adapter does not load the others' dependencies.
"""
