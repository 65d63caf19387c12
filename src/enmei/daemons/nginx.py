"""nginx (Debian ``nginx-light`` or ``nginx``) in a temp dir: ``daemon off``, a master and 2 workers.

Choices, and why:

* ``nginx -p ROOT/ -c ROOT/nginx.conf -e stderr``: the prefix, conf and the error log of start-up (before
  the conf is read nginx would open ``/var/log/nginx/error.log``) all in the dir; the conf's own
  ``error_log stderr`` goes to enmei's capture; pid and every temp path inside the dir.
* ``daemon off; master_process on; worker_processes 2``: the foreground master enmei supervises, with
  real workers that the master respawns itself when one dies.
* Workers run as ``www-data`` (Debian's user) when enmei is root; otherwise as the caller.
* stop: ``SIGQUIT``, nginx's graceful shutdown (workers finish their requests); SIGTERM is its fast one.
* probe: HTTP GET of ``/`` (answered ``200 ok`` by the conf itself, no files needed).
* ``pre_start``: ``nginx -t`` of the same conf — a broken conf is a config error, not a crash loop.
"""

from __future__ import annotations

import http.client
import os
import subprocess
from pathlib import Path
from typing import Any

from enmei.daemons.base import Daemon, RequestFailed, run_as_user, which
from enmei.daemons.registry import register

__all__ = ["Nginx"]

_TEMPS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")


def _conf(root: Path, port: int, user: str | None, temps: list[str]) -> str:
    temp_lines = "\n".join(f"    {t}_temp_path {root}/tmp/{t};" for t in temps)
    return (f"# enmei daemon kit: nginx in {root}\n"
            "daemon off;\n"
            "master_process on;\n"
            "worker_processes 2;\n"
            + (f"user {user};\n" if user else "")
            + f"pid {root}/nginx.pid;\n"
            "error_log stderr notice;\n"
            "events {\n    worker_connections 256;\n}\n"
            "http {\n"
            "    access_log off;\n"
            f"{temp_lines}\n"
            "    server {\n"
            f"        listen 127.0.0.1:{port};\n"
            "        location / {\n"
            "            default_type text/plain;\n"
            '            return 200 "ok\\n";\n'
            "        }\n"
            "    }\n"
            "}\n")


@register
class Nginx(Daemon):
    kind = "nginx"
    package = "nginx-light"

    @classmethod
    def binaries(cls) -> dict[str, str]:
        return {"nginx": which(cls.kind, "nginx", cls.package, "/usr/sbin/nginx")}

    @classmethod
    def create(cls, root: Path, port: int, binaries: dict[str, str]) -> Nginx:
        d = cls(root, port)
        nginx = binaries["nginx"]
        pw = run_as_user("www-data")
        (root / "tmp").mkdir()
        # A module built out (nginx-light has no uwsgi/scgi in some builds) has no *_temp_path directive.
        built = subprocess.run([nginx, "-V"], capture_output=True, text=True, check=False, timeout=30).stderr
        temps = [t for t in _TEMPS if f"--without-http_{t}_module" not in built]
        conf = root / "nginx.conf"
        conf.write_text(_conf(root, port, pw.pw_name if pw else None, temps))
        os.chmod(conf, 0o644)
        common = ["-p", f"{root}/", "-c", str(conf), "-e", "stderr"]
        d.argv = [nginx, *common]
        d.pre_start = [[nginx, "-t", "-q", *common]]
        d.stop_signal = "SIGQUIT"
        d.config_file = conf
        d.probe = {"name": "http", "kind": "http", "url": f"http://127.0.0.1:{port}/", "interval_s": 0.5,
                   "timeout_s": 1.0, "fail_after": 3}
        return d

    def unit_table(self) -> dict[str, Any]:
        table = super().unit_table()
        table["stop_timeout_s"] = 10  # SIGQUIT waits for open requests; then SIGKILL
        table["startup_timeout_s"] = 30
        return table

    def request(self, timeout_s: float = 1.0) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout_s)
        try:
            conn.request("GET", "/")
            resp = conn.getresponse()
            body = resp.read()
        except OSError as exc:
            raise RequestFailed(f"GET / on 127.0.0.1:{self.port}: {exc}") from exc
        finally:
            conn.close()
        if resp.status != 200 or body != b"ok\n":
            raise RequestFailed(f"GET / on 127.0.0.1:{self.port}: {resp.status} {body[:80]!r}")

    def break_text(self, good: str) -> str:
        return good.replace("http {\n", "http {\n    no_such_directive_enmei on;\n", 1)
