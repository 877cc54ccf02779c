"""Build-time export of the crystal colour classifiers to ONNX.

Only this package imports the training frameworks (torch, scikit-learn, skl2onnx); the service
reads the ONNX files and the manifest it writes and needs onnxruntime alone.
"""
