"""The fault-injection parts of benchmarks/soak.py, one module per fault kind.

Each module has `run(ctx)` (ctx: `common.Context`) returning a list of
`common.part(...)` dicts; soak.py groups them by section into the JSON and
the Markdown table.
"""
