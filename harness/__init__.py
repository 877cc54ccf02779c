"""What tests, `make bench`, `make soak` and the multi-replica run share to start servers, send
them load and count what came back: one copy of each, so their figures mean the same thing.

- harness.server: free ports, a server process (start, wait until ready, stop, its workers).
- harness.load: one load client, one tally, one percentile definition.
- harness.bodies: request bodies for the models a manifest lists.
"""
