"""Topology as code for operators: export formats, comparison with a live broker, and apply.

`formats` renders and parses the definitions (JSON, YAML, a Markdown table), `live` reads what a
broker has (management HTTP API or passive declares), `compare` says how the two differ, and
`apply` declares the code's topology only when nothing on the broker conflicts with it.
"""
