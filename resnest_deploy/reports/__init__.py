"""What a user reads: markdown, CSV and charts of typed results, rendered in one place.

One module per result: ``conversion`` (a conversion, its calibration tournament and search),
``bench`` (latency rows), ``pipeline`` (the pipeline's report). Algorithms return typed results and
never format them; the CLI prints what these return.
"""
