"""The frameworks the export reads, one module each, in one table.

A module supplies its Framework by names (Framework.of in base.py): NAME, FILES and a function
for each step, how to recognise, load, convert and check its models.
A model of a known framework needs no code, only --model NAME=PATH; a new framework is a new
module and one entry in FRAMEWORKS.
"""

from export.frameworks import onnx_file, pytorch, sklearn
from export.frameworks.base import Framework

FRAMEWORKS: dict[str, Framework] = {
    framework.name: framework for framework in map(Framework.of, (sklearn, pytorch, onnx_file))
}
