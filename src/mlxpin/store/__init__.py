"""Bytes on disk: the cache layout, records and stamps, byte sources, fetch and verify,
ranged downloads, bundles (export/import), gc."""
