"""Full-fidelity runs and what is built on them: the run cache, final evaluation, proxy fidelity, the report.

The search (`search/`) and its CLI use this package; it never imports the search: studies and trials reach it
as module sources and design lists.
"""
