"""Offline evaluation: splits, ranking metrics, CTR proxies, tuning and reports.

Modules
-------
splits     train/test splits that share one id vocabulary (temporal, leave-one-out,
           stratified, Cornac-style ratio) and validation splits for tuning
metrics    precision/recall/NDCG/MAP/hit rate/MRR at k, AUC, coverage, novelty,
           bootstrap intervals
protocol   what counts as relevant and recommendable; scores any model against test
ctr        position-based click model, style-affinity lift and fidelity of renders
live_ctr   live CTR per variant and position from the service's feedback log
tuning     grid search on a validation split carved from training
report     JSON record (data fingerprint, versions) and HTML report
runner     the config-driven run behind ``stylerec evaluate``
cli        the ``evaluate`` subcommand
adapters   the visual ``StyleRecommender`` behind the interface the protocol scores
bench*     ``stylerec bench``: speed and memory of every stage (see ``bench.py``);
           ``bench_service``: the load test of ``stylerec serve``

See ``docs/evaluation.md``.
"""
