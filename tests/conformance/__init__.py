"""The conformance suite: one behaviour specification, run against every storage kind
(see ``tests/conftest.py``)."""
