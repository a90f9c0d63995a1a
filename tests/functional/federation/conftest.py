"""Fixtures of the federation tests (the harness lives in ``federation_harness``)."""

from federation_harness import etcd, federation  # noqa: F401
