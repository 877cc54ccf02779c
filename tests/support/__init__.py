"""What the tests share besides fixtures (those are in tests/conftest.py): the example rows, fake
models, ONNX builders, and helpers for the end-to-end, export and deploy tests. `tests/` is on
`sys.path` (pyproject.toml), so they import as `from support.<module> import ...`."""
