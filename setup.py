"""The compiled parts: the relay data path (stud/_flow.c) and the shared session cache
(stud/_sesscache.c), the session-ticket keys (stud/_ticketkeys.c). Everything else is in
pyproject.toml.

optional=True: without a C compiler or Python headers the install still succeeds and stud
runs the pure-Python relay (stud.relay.Relay), which CI tests too, without a shared session
cache (-C warns).
"""

from setuptools import Extension, setup

FLAGS = ["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter", "-Wno-missing-field-initializers"]

setup(ext_modules=[Extension(f"stud.{name}", [f"stud/{name}.c"], optional=True,
                             depends=["stud/_openssl.h", "stud/_shm.h"], extra_compile_args=FLAGS)
                   for name in ("_flow", "_sesscache", "_ticketkeys")])
