"""Crystal colour service: the exported ONNX classifiers behind a Falcon app."""
