"""The one input/output contract every exported model follows, so the service needs one code path.

A model takes `input` of shape [batch, 4] (the four crystal measurements) and returns
`probabilities` of shape [batch, 3]: column 0, 1, 2 is blue, green, yellow.
"""

INPUT_NAME = "input"
OUTPUT_NAME = "probabilities"
BATCH_DIM = "batch"
N_FEATURES = 4
CLASSES = (0, 1, 2)
N_CLASSES = len(CLASSES)
