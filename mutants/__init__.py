"""Rule-removing mutations of the security code (`python -m mutants.run`, `make mutants`).

`rules.toml` lists one mutation per security rule: a verbatim `find` that occurs exactly once in
`file`, its `replace` (the smallest edit that removes the rule), and the `tests` that must fail
when the rule is gone. `run.py` applies each to a temporary copy of the tree and runs those tests.
"""
