"""Build glue: pyproject.toml holds the metadata; this wires the cffi build of the C data path."""
from setuptools import setup

setup(cffi_modules=["csrc/build_datapath.py:ffibuilder"])
