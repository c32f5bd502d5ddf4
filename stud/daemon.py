"""Daemon plumbing: the process-wide settings of a Unix daemon (the file descriptor limit,
logging, the pidfile, going to the background, workers' privileges)."""

from __future__ import annotations

import grp
import os
import pwd
import resource

from stud.config import Config, ConfigError
from stud.log import log


def raise_fd_limit() -> None:
    """Every connection costs two descriptors: take all the kernel allows."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (OSError, ValueError):
            pass
    log.info(f"{{core}} file descriptor limit: {soft}")


def configure_log(cfg: Config) -> None:
    """Apply the logging options; raises ConfigError if the log file cannot be opened."""
    try:
        # --daemon has no terminal to talk to: like stud, it implies syslog (or a log file).
        log.configure(level="error" if cfg.quiet else cfg.log_level,
                      use_syslog=cfg.syslog or (cfg.daemon and not cfg.log_file),
                      facility=cfg.syslog_facility, path=cfg.log_file)
    except OSError as e:
        raise ConfigError(f"log-file: cannot open '{cfg.log_file}': {e.strerror}") from None


class Pidfile:
    """--pidfile: opened before going to the background (the error is then still seen),
    written with the daemon's PID, removed at exit."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self.fh = None
        if path:
            try:
                self.fh = open(path, "w")  # noqa: SIM115 - written after daemonizing
            except OSError as e:
                raise ConfigError(f"pidfile: cannot write '{path}': {e.strerror}") from None

    def write(self) -> None:
        if self.fh:
            self.fh.write(f"{os.getpid()}\n")
            self.fh.close()

    def remove(self) -> None:
        if self.path:
            try:
                os.unlink(self.path)
            except OSError:
                pass


def daemonize() -> None:
    """Fork into the background; /dev/null is opened before any chroot (stud's issue #146)."""
    os.chdir("/")
    devnull = os.open(os.devnull, os.O_RDWR)
    pid = os.fork()
    if pid:
        print(f"{{core}} Daemonized as pid {pid}.", flush=True)
        os._exit(0)
    os.setsid()
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)
    log.info(f"Successfully daemonized as pid {os.getpid()}.")


def drop_privileges(cfg: Config, jail: bool = True) -> None:
    """chroot (unless not jail: the OCSP fetcher needs the resolver's files), then setgroups,
    setgid, setuid: for workers, before any client is served."""
    # Look the names up before chroot: the jail usually has no /etc/passwd.
    pw = pwd.getpwnam(cfg.user) if cfg.user else None
    gid = grp.getgrnam(cfg.group).gr_gid if cfg.group else pw.pw_gid if pw else None
    if cfg.chroot and jail:
        os.chroot(cfg.chroot)
        os.chdir("/")
    if gid is None:
        return
    if os.getuid() == 0:
        os.setgroups([gid])  # the original kept root's supplementary groups
    os.setgid(gid)
    if pw is not None:
        os.setuid(pw.pw_uid)
