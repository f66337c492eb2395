"""The streaming core: everything that turns PCM chunks into partial and final text.

Nothing in this package imports ray; the deployments in ``serve/`` only move data
between these pieces, the socket and each other.
"""
