"""Upstream transports: one per backend type, all behind `gateway.upstream.base.Transport`."""
