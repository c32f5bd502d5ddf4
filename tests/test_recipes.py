"""docs/deployment.md's recipes, run as written: each block marked `<!-- file: NAME -->` is
written out with only ports, certificate and log paths moved to the test's own, then the real
peers (Varnish, nginx, HAProxy, logrotate) and the real stud run it on loopback and curl goes
through."""

from __future__ import annotations

import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from helpers import Proc, Stud, free_port, scrape, tool_env, wait_for

DOC = Path(__file__).parent.parent / "docs" / "deployment.md"
BLOCK = re.compile(r"<!-- file: (\S+) -->\n```[^\n]*\n(.*?)```", re.S)
FILES = dict(BLOCK.findall(DOC.read_text()))
T = 15.0


class Recipe:
    """The recipe's files in a directory, with its ports replaced by free ones."""

    def __init__(self, tmp: Path, pem: str) -> None:
        self.dir = tmp
        self.ports = {p: free_port() for p in (443, 4443, 6081, 6086, 8000, 8080, 9100)}
        self.subs = {"/etc/stud/site.pem": pem,
                     "/etc/letsencrypt/live/example.com": str(tmp / "live"),
                     "/var/log/stud": str(tmp / "log"), "/run/stud.pid": str(tmp / "stud.pid")}

    def text(self, name: str) -> str:
        text = FILES[name]
        for old, new in self.subs.items():
            text = text.replace(old, new)
        for old, new in self.ports.items():
            text = re.sub(rf"(?<=[:\s\"]){old}\b", str(new), text)
        return text

    def write(self, name: str) -> Path:
        path = self.dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.text(name))
        return path

    def port(self, documented: int) -> int:
        return self.ports[documented]


def curl(port: int, *args: str, interface: str | None = None) -> subprocess.CompletedProcess:
    cmd = ["curl", "-sk", "--max-time", "10", "-D", "-", f"https://127.0.0.1:{port}/", *args]
    if interface:
        cmd += ["--interface", interface]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=T, env=tool_env())


def header(response: str, name: str) -> str:
    m = re.search(rf"^{name}: (.*?)\r?$", response, re.M | re.I)
    return m.group(1) if m else ""


@pytest.fixture
def recipe(tmp_path, pem):
    return Recipe(tmp_path, pem)


@pytest.fixture
def app(procs, recipe, tmp_path):
    """The application: Python's http.server on the recipe's port 8000."""
    root = tmp_path / "www"
    root.mkdir()
    (root / "index.html").write_text("app ok\n")
    port = recipe.port(8000)
    p = Proc([sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "--directory",
              str(root), str(port)], tmp_path / "app.out", env=tool_env())
    procs.append(p)
    wait_for(lambda: subprocess.run(["curl", "-s", f"http://127.0.0.1:{port}/"],
                                    capture_output=True, timeout=T, env=tool_env()
                                    ).returncode == 0, T)
    return port


def run_stud(procs, recipe, name: str, workers: int = 1) -> Stud:
    s = Stud(["--config", str(recipe.write(name))], recipe.dir / f"{name}.out".replace("/", "-"),
             recipe.port(443))
    procs.append(s)
    return s.wait_ready(workers)


def need(path: str) -> str:
    return path if Path(path).exists() else pytest.skip(f"{path} is not installed")


def test_varnish(procs, recipe, app):
    varnishd = need("/usr/sbin/varnishd")
    vcl = recipe.write("varnish/default.vcl")
    workdir = recipe.dir / "varnish-work"
    # (-j none: no jail, so that Varnish reads the test's private directory as root does)
    p = Proc([varnishd, "-F", "-j", "none", "-n", str(workdir), "-a",
              f"127.0.0.1:{recipe.port(6086)},PROXY", "-a", f"127.0.0.1:{recipe.port(6081)}",
              "-f", str(vcl), "-p", "auto_restart=off"], recipe.dir / "varnish.out",
             env=tool_env())
    procs.append(p)
    wait_for(lambda: "Child launched OK" in p.output() or p.proc.poll() is not None, 30)
    assert p.proc.poll() is None, p.output()
    run_stud(procs, recipe, "varnish/stud.conf", workers=2)
    r = curl(recipe.port(443), "-H", "Host: www.example.com", "--resolve",
             f"localhost:{recipe.port(443)}:127.0.0.1")
    assert r.stdout.endswith("app ok\n"), r.stdout + r.stderr
    assert header(r.stdout, "X-Client-IP") == "127.0.0.1"
    assert header(r.stdout, "X-TLS") == "true"
    assert header(r.stdout, "X-TLS-Version").startswith("TLSv1.")


def test_nginx(procs, recipe):
    nginx = need("/usr/sbin/nginx")
    site = recipe.write("nginx/site.conf")
    conf = recipe.dir / "nginx.conf"
    conf.write_text(f"daemon off;\npid {recipe.dir}/nginx.pid;\nerror_log stderr;\n"
                    f"events {{}}\nhttp {{\naccess_log off;\n"
                    f"client_body_temp_path {recipe.dir}/tmp;\ninclude {site};\n}}\n")
    procs.append(Proc([nginx, "-c", str(conf), "-p", str(recipe.dir)], recipe.dir / "ng.out",
                      env=tool_env()))
    run_stud(procs, recipe, "nginx/stud.conf")
    r = wait_for(lambda: (x := curl(recipe.port(443))).stdout.endswith("\n") and x, T)
    assert r.stdout.endswith("client=127.0.0.1 proxy=127.0.0.1\n"), r.stdout


def test_haproxy(procs, recipe, app):
    haproxy = need("/usr/sbin/haproxy")
    procs.append(Proc([haproxy, "-db", "-f", str(recipe.write("haproxy/haproxy.cfg"))],
                      recipe.dir / "haproxy.out", env=tool_env()))
    run_stud(procs, recipe, "haproxy/stud.conf")
    r = wait_for(lambda: (x := curl(recipe.port(443), "--resolve",
                                    f"site.test:{recipe.port(443)}:127.0.0.1")).stdout and x, T)
    r = curl(recipe.port(443))
    assert r.stdout.endswith("app ok\n"), r.stdout + r.stderr
    assert header(r.stdout, "X-Client") == "127.0.0.1"


def test_l4_balancer_passes_the_real_client(procs, recipe):
    """The client connects from 127.0.0.2 to the balancer; nginx, behind stud, sees
    127.0.0.2 in the PROXY header (the balancer and stud talk from 127.0.0.1)."""
    haproxy, nginx = need("/usr/sbin/haproxy"), need("/usr/sbin/nginx")
    site = recipe.write("nginx/site.conf")
    conf = recipe.dir / "nginx.conf"
    conf.write_text(f"daemon off;\npid {recipe.dir}/nginx.pid;\nerror_log stderr;\n"
                    f"events {{}}\nhttp {{\naccess_log off;\ninclude {site};\n}}\n")
    procs.append(Proc([nginx, "-c", str(conf), "-p", str(recipe.dir)], recipe.dir / "ng.out",
                      env=tool_env()))
    procs.append(Proc([haproxy, "-db", "-f", str(recipe.write("l4/balancer.cfg"))],
                      recipe.dir / "haproxy.out", env=tool_env()))
    run_stud(procs, recipe, "l4/stud.conf")
    r = wait_for(lambda: (x := curl(recipe.port(4443), interface="127.0.0.2")).stdout and x, T)
    assert r.stdout.endswith("client=127.0.0.2 proxy=127.0.0.2\n"), r.stdout + r.stderr


def test_certbot_renewal_is_picked_up(procs, recipe, app, pki):
    """A renewal as certbot makes it: new files in archive/, the live/ links moved."""
    live, archive = recipe.dir / "live", recipe.dir / "archive"
    live.mkdir()
    archive.mkdir()

    def renew(n: int) -> str:
        pem = Path(pki.make(["localhost"], name=f"renewal{n}"))
        text = pem.read_text()
        key_at = text.index("-----BEGIN PRIVATE KEY-----")
        (archive / f"fullchain{n}.pem").write_text(text[:key_at])
        (archive / f"privkey{n}.pem").write_text(text[key_at:])
        for name in ("fullchain", "privkey"):
            tmp = live / f"{name}.tmp"
            tmp.symlink_to(archive / f"{name}{n}.pem")
            tmp.replace(live / f"{name}.pem")
        return subprocess.run(["openssl", "x509", "-noout", "-serial"], input=text[:key_at],
                              capture_output=True, text=True, timeout=T,
                              env=tool_env()).stdout.strip()

    first = renew(1)
    s = run_stud(procs, recipe, "certbot/stud.conf")

    def serial() -> str:
        out = subprocess.run(["openssl", "s_client", "-connect",
                              f"127.0.0.1:{recipe.port(443)}"], stdin=subprocess.DEVNULL,
                             capture_output=True, text=True, timeout=T, env=tool_env()).stdout
        cert = out[out.index("-----BEGIN CERTIFICATE"):out.index("-----END CERTIFICATE")] + \
            "-----END CERTIFICATE-----\n"
        return subprocess.run(["openssl", "x509", "-noout", "-serial"], input=cert,
                              capture_output=True, text=True, timeout=T,
                              env=tool_env()).stdout.strip()

    assert serial() == first
    second = renew(2)
    wait_for(lambda: "generation 2 serving" in s.output(), T)
    assert serial() == second != first


def test_logrotate_with_sigusr1(procs, recipe, app):
    logrotate = need("/usr/sbin/logrotate")
    (recipe.dir / "log").mkdir()
    s = Stud(["--config", str(recipe.write("logrotate/stud.conf"))], recipe.dir / "stud.out",
             recipe.port(443))
    procs.append(s)
    log = recipe.dir / "log" / "stud.log"
    wait_for(lambda: log.exists() and "online" in log.read_text(), T)
    assert curl(recipe.port(443)).stdout.endswith("app ok\n")
    wait_for(lambda: "closed" in log.read_text() or "client=" in log.read_text(), T)
    conf = recipe.write("logrotate/stud")
    state = recipe.dir / "logrotate.state"
    subprocess.run([logrotate, "-f", "-s", str(state), str(conf)], check=True, timeout=T,
                   capture_output=True, env=tool_env())
    rotated = recipe.dir / "log" / "stud.log.1"
    assert rotated.exists() and "online" in rotated.read_text()
    wait_for(lambda: log.exists() and "log file reopened" in log.read_text(), T)
    before = rotated.read_text()
    assert curl(recipe.port(443)).stdout.endswith("app ok\n")
    wait_for(lambda: "client=" in log.read_text(), T)
    assert rotated.read_text() == before  # nothing more goes to the rotated file
    assert s.proc.poll() is None


def test_prometheus_rules_name_metrics_stud_serves(procs, recipe, app):
    yaml = pytest.importorskip("yaml")
    scrape_cfg = yaml.safe_load(recipe.text("prometheus/prometheus.yml"))
    target = scrape_cfg["scrape_configs"][0]["static_configs"][0]["targets"][0]
    rules = yaml.safe_load(FILES["prometheus/stud-alerts.yml"])["groups"][0]["rules"]
    port = int(target.rsplit(":", 1)[1])
    recipe.dir.joinpath("m.conf").write_text(
        f'frontend = "[127.0.0.1]:{recipe.port(443)}"\nbackend = "[127.0.0.1]:{app}"\n'
        f'metrics = "[127.0.0.1]:{port}"\npem-file = "{recipe.subs["/etc/stud/site.pem"]}"\n'
        'session-store = "redis://127.0.0.1:1/0"\nticket-key-seed = "seed"\n'
        'client-verify = optional\n'
        f'client-verify-ca = "{recipe.subs["/etc/stud/site.pem"]}"\n')
    recipe.dir.joinpath("seed").write_text("00" * 32)
    s = Stud(["--config", str(recipe.dir / "m.conf")], recipe.dir / "m.out", recipe.port(443))
    procs.append(s)
    s.wait_ready()
    wait_for(lambda: scrape(port), T)
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=T).read().decode()
    families = dict(re.findall(r"^# TYPE (\w+) (\w+)$", text, re.M))
    served = {*families, *(f"{n}_total" for n, kind in families.items() if kind == "counter")}
    for rule in rules:
        for name in re.findall(r"\b(stud_\w+)", rule["expr"]):
            assert name in served, (rule["alert"], name)
