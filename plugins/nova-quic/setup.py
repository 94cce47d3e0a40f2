"""The compiled data path (nova_quic/datapath.c), a plain shared library that
nova_quic.datapath loads with ctypes: it needs gcc and libssl-dev, not Python's
headers. optional: where it cannot be built, pip installs the package without it
and the endpoint runs its Python fast path (nova doctor says so)."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("nova_quic._datapath", sources=["nova_quic/datapath.c"],
                             libraries=["crypto"], extra_compile_args=["-O2", "-pthread"],
                             extra_link_args=["-pthread"], optional=True)])
