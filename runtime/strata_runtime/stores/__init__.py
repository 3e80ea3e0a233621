"""Connections to Redis, SQL and vector backends, each able to degrade to an embedded store."""
