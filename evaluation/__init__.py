"""Offline evaluation: splits, ranking metrics, CTR proxies, tuning and reports.

Modules
-------
splits     train/test splits that share one id vocabulary (temporal splits never cut
           a (user, time) group; global cut-off with a test window; rolling-origin
           folds; leave-one-out, stratified, Cornac-style ratio) and validation splits
backtest   the rolling-origin backtest (the H&M default): windows, tuning before the
           first cut-off, pooled metrics, paired comparison with the best baseline
catalogs   declared candidate catalogs; refuses candidates derived from test events
audit      the leak audit every record starts with
metrics    precision/recall/NDCG/MAP/hit rate/MRR at k, AUC, coverage, novelty,
           bootstrap intervals (optionally resampling users over (user, window) pairs)
protocol   what counts as relevant and recommendable; scores any model against test
ctr        position-based click model, style-affinity lift and fidelity of renders
live_ctr   live CTR per variant and position from the service's feedback log
tuning     grid search on a validation split carved from training
report     JSON record (data fingerprint, versions) and HTML report
runner     the config-driven run behind ``stylerec evaluate``
cli        the ``evaluate`` subcommand
adapters   the visual ``StyleRecommender`` and chains of candidate sources behind the
           interface the protocol scores
bench*     ``stylerec bench``: speed and memory of every stage (see ``bench.py``);
           ``bench_service``: the load test of ``stylerec serve``

See ``docs/evaluation.md``.
"""
