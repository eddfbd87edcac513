"""Encryption: keyrings of data keys, and sealed records (see amphora.storage.encrypted)."""
