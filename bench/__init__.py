"""The service's performance benchmark: `make bench`, docs/performance.md."""
