"""Cluster mode: nodes of one webhyve console registered in Redis (docs/cluster.md)."""
