"""Fault-injection scenarios for sinagotd (DESIGN.md §8, §10): real processes, no mocks."""
