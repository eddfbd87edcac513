"""The C part of amphora: the fast path of the JSON transcoder (amphora/_transcoder.c).

Optional: without a C compiler the package installs without it and amphora.jsonpickle
does all the work in Python (the same documents, more slowly). Everything else is in
pyproject.toml.
"""
from setuptools import Extension, setup

setup(ext_modules=[Extension("amphora._transcoder", ["src/amphora/_transcoder.c"],
                             optional=True)])
