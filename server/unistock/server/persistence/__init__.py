"""Persistence in Redis: key layout, record codecs, the group-commit writer and readers.

Depends on the domain; the actor runtime and the transports depend on it.
"""
