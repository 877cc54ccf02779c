"""The model contract: what every exported ONNX file offers, so the service needs one code path.

A model takes `input` of shape [batch, 4] (the four crystal measurements) and returns
`probabilities` of shape [batch, classes], one column per line of labels.txt. The service owns
this contract; the build step (`export/`) imports it, never the other way round.
"""

INPUT_NAME = "input"
OUTPUT_NAME = "probabilities"
BATCH_DIM = "batch"
N_FEATURES = 4
