"""The service's performance benchmark: the real server against a floor and a native baseline.

`python -m bench` runs the matrix and writes bench/results/latest.{json,md,png};
`python -m bench.profile` samples a loaded worker to show where a request's time goes.
"""
