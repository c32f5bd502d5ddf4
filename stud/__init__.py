"""stud: the Scalable TLS Unwrapping Daemon, rebuilt in Python."""

__version__ = "0.4.0"
