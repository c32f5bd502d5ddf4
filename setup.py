"""The compiled relay data path (stud/_flow.c). Everything else is in pyproject.toml.

optional=True: without a C compiler or Python headers the install still succeeds and stud
runs the pure-Python relay (stud.relay.PyFlow), which CI tests too.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("stud._flow", ["stud/_flow.c"], optional=True,
                             extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter",
                                                 "-Wno-missing-field-initializers"])])
