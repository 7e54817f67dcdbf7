"""Load test of ``fracture-qi serve``: signed-in nurses adjudicating and QI leads on the dashboard,
all at once, through the real server (issue 18; targets: next case <= 1 s, dashboard first
render <= 5 s after its kernel is up, no error, no lost decision).

Usage (on a copy of a screened cohort: it writes decisions and accounts)::

    fracture-qi synth /tmp/fqi-load/cohort --patients 100 --seed 11 --fast
    fracture-qi index  --manifest /tmp/fqi-load/cohort/data_manifest.yaml
    fracture-qi screen --manifest /tmp/fqi-load/cohort/data_manifest.yaml
    .venv/bin/python benchmarks/team_server_load.py --manifest /tmp/fqi-load/cohort/data_manifest.yaml \\
        --nurses 8 --viewers 5 --minutes 3 --out benchmark-results/team_server_load.json

What it does: builds a worklist ``bench-load-<time>`` holding every screened study (the audit
rate set to 1, a fifth double read, so there are cases for everyone), creates accounts
``bench.nurse.N`` and ``bench.viewer.N``, starts the team server with its default limits, and
runs one thread per person speaking what a browser speaks: the sign-in form, the app page
(Voila starts a kernel and runs the notebook), the kernel websocket (v1 protocol) with the
widget messages the page would send.

* A **nurse** reads each case for ``--read-seconds`` (drawn 2-6 s by default), answers "Not
  confirmed" and presses Save; *next case* is the time from the click to the app showing the
  next case (the status line says "Saved ... Case opened"). An audit-sample case is saved as
  a blind read and then needs "Next case" pressed: that wait is timed the same way.
* A **dashboard viewer** opens the dashboard, keeps it open ``--hold-seconds``, closes it (as
  the browser does: the websocket closes, the kernel is shut down) and opens it again. *Kernel
  up* is when the page's first code cell arrives (Voila streams each cell as the kernel
  finishes it, and the first is the parameters cell: it arrives as soon as the kernel
  answers); *first render after the kernel is up* is from then to the widget states arriving
  over the websocket (what the page needs to draw the tiles and charts).

At the end every decision a nurse saw acknowledged ("Saved (decision #N") must be in the
database under her name (none lost, none twice), and the server log must hold no traceback.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import statistics
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil
import requests

PASSWORD = "load test passphrase only"
V1 = "v1.kernel.websocket.jupyter.org"


@dataclass
class Person:
    name: str
    role: str
    page_s: list[float] = field(default_factory=list)
    ttfb_s: list[float] = field(default_factory=list)
    first_render_s: list[float] = field(default_factory=list)
    next_case_s: list[float] = field(default_factory=list)
    acknowledged: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------
# a browser, as the server sees one
# --------------------------------------------------------------------------------------------
def sign_in(url: str, user: str) -> requests.Session:
    s = requests.Session()
    s.get(url + "login", timeout=60)
    r = s.post(url + "login", data={"username": user, "password": PASSWORD,
                                    "_xsrf": s.cookies.get("_xsrf", "")},
               allow_redirects=False, timeout=120)
    if r.status_code != 302:
        raise RuntimeError(f"{user}: sign-in answered {r.status_code}")
    return s


#: ipywidgets 8: the control comm speaks version 1.0.0, widget models 2.1.0
CONTROL_VERSION, WIDGET_VERSION = "1.0.0", "2.1.0"


def _pack(comm_id: str, data: dict[str, Any], msg_type: str = "comm_msg",
          version: str = WIDGET_VERSION) -> bytes:
    hdr = {"msg_id": uuid.uuid4().hex, "msg_type": msg_type, "username": "load",
           "session": uuid.uuid4().hex, "date": "", "version": "5.3"}
    content = {"comm_id": comm_id, "data": data}
    if msg_type == "comm_open":
        content["target_name"] = "jupyter.widget.control"
    parts = [json.dumps(x).encode() for x in (hdr, {}, {"version": version}, content)]
    ch = b"shell"
    offsets = [8 * (1 + 1 + len(parts) + 1)]
    offsets.append(offsets[-1] + len(ch))
    for p in parts:
        offsets.append(offsets[-1] + len(p))
    return (len(offsets).to_bytes(8, "little") + b"".join(o.to_bytes(8, "little")
                                                         for o in offsets) + ch + b"".join(parts))


def _unpack(frame: bytes) -> dict[str, Any] | None:
    try:
        n = int.from_bytes(frame[:8], "little")
        offs = [int.from_bytes(frame[8 * (i + 1): 8 * (i + 2)], "little") for i in range(n)]
        parts = [frame[offs[i]: offs[i + 1]] for i in range(1, n - 1)]
        return {"header": json.loads(parts[0]), "content": json.loads(parts[3])}
    except (ValueError, IndexError):
        return None


class AppPage:
    """One open app page: its kernel websocket and the widget models it shows."""

    def __init__(self, url: str, port: int, session: requests.Session, app: str) -> None:
        self.url, self.session = url, session
        t0 = time.perf_counter()
        r = session.get(url + f"app/{app}", stream=True, timeout=600)
        body = b""
        self.ttfb = float("nan")
        for chunk in r.iter_content(chunk_size=None):
            body += chunk
            # Voila sends each cell as the kernel finishes it: the first code cell (the
            # parameters) arrives as soon as the kernel is up and answering
            if self.ttfb != self.ttfb and b"jp-CodeCell" in body:
                self.ttfb = time.perf_counter() - t0
        self.page_s = time.perf_counter() - t0
        if r.status_code != 200:
            raise RuntimeError(f"{app}: the page answered {r.status_code} {r.reason}")
        m = re.search(rb'"kernelId": "([0-9a-f-]{36})"', body)
        if not m:
            raise RuntimeError(f"{app}: no kernel id in the page")
        self.kernel_id = m.group(1).decode()
        import websocket

        cookie = "; ".join(f"{k}={v}" for k, v in session.cookies.items())
        self.ws = websocket.create_connection(
            f"ws://127.0.0.1:{port}/api/kernels/{self.kernel_id}/channels"
            f"?session_id={uuid.uuid4().hex}", header=[f"Cookie: {cookie}"],
            subprotocols=[V1], timeout=600)
        self.models: dict[str, dict[str, Any]] = {}
        self.by_class: dict[str, str] = {}
        control = uuid.uuid4().hex
        self.ws.send_binary(_pack(control, {}, "comm_open", CONTROL_VERSION))
        self.ws.send_binary(_pack(control, {"method": "request_states"},
                                  version=CONTROL_VERSION))
        t1 = time.perf_counter()
        self.wait(lambda msg: msg["content"].get("data", {}).get("method") == "update_states",
                  180)
        self.states_s = time.perf_counter() - t1
        self.first_render_s = time.perf_counter() - t0 - self.ttfb

    def _absorb(self, msg: dict[str, Any]) -> None:
        data = msg["content"].get("data") or {}
        if data.get("method") == "update_states":
            for mid, st in data.get("states", {}).items():
                self.models[mid] = dict(st.get("state", {}))
                for c in self.models[mid].get("_dom_classes", []):
                    self.by_class.setdefault(c, mid)
        elif data.get("method") == "update":
            mid = msg["content"].get("comm_id")
            self.models.setdefault(mid, {}).update(data.get("state", {}))

    def wait(self, done: Callable[[dict[str, Any]], bool], timeout: float) -> dict[str, Any]:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            self.ws.settimeout(max(end - time.monotonic(), 0.1))
            raw = self.ws.recv()
            msg = _unpack(raw) if isinstance(raw, bytes) else None
            if msg is None or msg["header"].get("msg_type") != "comm_msg":
                continue
            self._absorb(msg)
            if done(msg):
                return msg
        raise TimeoutError("no answer from the app")

    def value(self, css: str) -> str:
        return str(self.models.get(self.by_class.get(css, ""), {}).get("value", ""))

    def send(self, css: str, data: dict[str, Any]) -> None:
        self.ws.send_binary(_pack(self.by_class[css], data))

    def wait_status(self, words: tuple[str, ...], timeout: float = 120,
                    fresh: bool = True) -> str:
        """The status line once an update to it (after now, if *fresh*) holds one of *words*."""
        sid = self.by_class["fqi-status"]

        def done(msg: dict[str, Any]) -> bool:
            return msg["content"].get("comm_id") == sid and any(
                w in self.value("fqi-status") for w in words)

        if not fresh and any(w in self.value("fqi-status") for w in words):
            return self.value("fqi-status")
        self.wait(done, timeout)
        return self.value("fqi-status")

    def close(self) -> None:
        self.ws.close()
        self.session.post(self.url + f"voila/api/shutdown/{self.kernel_id}", timeout=60,
                          headers={"X-XSRFToken": self.session.cookies.get("_xsrf", "")})


# --------------------------------------------------------------------------------------------
# the people
# --------------------------------------------------------------------------------------------
DONE = ("Saved (decision #", "Not saved", "Something went wrong")


def nurse(p: Person, url: str, port: int, until: float, read_s: tuple[float, float]) -> None:
    try:
        page = AppPage(url, port, sign_in(url, p.name), "adjudicate")
        p.page_s.append(page.page_s)
        p.first_render_s.append(page.first_render_s)
        page.wait_status(("Case opened", "No cases left"), fresh=False)
        while time.monotonic() < until and "No cases left" not in page.value("fqi-status"):
            time.sleep(random.uniform(*read_s))
            page.send("fqi-decision", {"method": "update", "state": {"index": 1},
                                       "buffer_paths": []})
            time.sleep(0.2)  # the widget update reaches the kernel before the click
            t = time.perf_counter()
            page.send("fqi-save", {"method": "custom", "content": {"event": "click"}})
            status = page.wait_status(DONE)
            if "Saved (decision #" not in status:
                p.errors.append(re.sub("<[^>]+>", "", status)[:200])
                break
            p.acknowledged.append(int(re.search(r"decision #(\d+)", status).group(1)))
            if "blind read" in status:  # an audit-sample case: "Next case" after the save
                t = time.perf_counter()
                page.send("fqi-after-next", {"method": "custom", "content": {"event": "click"}})
                page.wait_status(("Case opened", "No cases left"))
            p.next_case_s.append(time.perf_counter() - t)
        page.close()
    except Exception as e:  # noqa: BLE001 - a load test reports every failure
        p.errors.append(f"{type(e).__name__}: {e}")


def viewer(p: Person, url: str, port: int, until: float, hold_s: float) -> None:
    try:
        session = sign_in(url, p.name)
        while time.monotonic() < until:
            page = AppPage(url, port, session, "dashboard")
            p.page_s.append(page.page_s)
            p.ttfb_s.append(page.ttfb)
            p.first_render_s.append(page.first_render_s)
            if "fqi-tiles-box" not in page.by_class:
                p.errors.append("the dashboard's tiles were not among the widgets")
            time.sleep(hold_s)
            page.close()
    except Exception as e:  # noqa: BLE001
        p.errors.append(f"{type(e).__name__}: {e}")


# --------------------------------------------------------------------------------------------
def _stats(xs: list[float]) -> dict[str, float | int]:
    if not xs:
        return {"n": 0}
    s = sorted(xs)
    return {"n": len(s), "median": round(statistics.median(s), 3),
            "p90": round(s[min(len(s) - 1, int(0.9 * len(s)))], 3), "max": round(s[-1], 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--manifest", required=True, type=Path)
    ap.add_argument("--nurses", type=int, default=8)
    ap.add_argument("--viewers", type=int, default=5)
    ap.add_argument("--minutes", type=float, default=3.0)
    ap.add_argument("--read-seconds", type=float, nargs=2, default=(2.0, 6.0))
    ap.add_argument("--hold-seconds", type=float, default=15.0)
    ap.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args = ap.parse_args()

    from fracture_qi.accounts import add_user, get_account
    from fracture_qi.adjudication.worklist import AdjudicationSettings, build_worklist
    from fracture_qi.dashboards.app import QIDashboard
    from fracture_qi.serve import free_port
    from fracture_qi.store import open_store
    from fracture_qi.store.schema import AdjudicationEvent
    from fracture_qi.team.launch import TeamSettings, start_team_server

    engine = open_store(str(args.manifest))
    audit = f"bench-load-{int(time.time())}"
    wl = build_worklist(engine, audit=audit, settings=AdjudicationSettings(
        audit_negative_rate=1.0, double_read_rate=0.2))
    print(f"worklist {audit}: {wl.n_flagged} flagged, {wl.n_audit_negative} audit sample, "
          f"{wl.n_double_read} double read")
    people = ([Person(f"bench.nurse.{i + 1}", "nurse") for i in range(args.nurses)]
              + [Person(f"bench.viewer.{i + 1}", "qi_lead") for i in range(args.viewers)])
    for p in people:
        if get_account(engine, p.name) is None:
            add_user(engine, p.name, p.role, PASSWORD, by="load test")
    QIDashboard.from_manifest(args.manifest)  # as fracture-qi serve warms the cube
    port = free_port()
    log_path = (args.out.parent if args.out else Path(".")) / f"team-load-{port}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "wb")  # noqa: SIM115
    settings = TeamSettings(manifest=args.manifest, port=port, audit=audit)
    proc = start_team_server(settings, stdout=log, stderr=log, supervised=False)
    url = f"http://127.0.0.1:{port}/"
    while True:
        try:
            if requests.get(url + "healthz", timeout=5).status_code == 200:
                break
        except requests.RequestException:
            time.sleep(0.3)
    peak_mb, peak_kernels, stop = [0.0], [0], threading.Event()

    def sample() -> None:
        while not stop.is_set():
            try:
                tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(True)]
                peak_mb[0] = max(peak_mb[0], sum(p.memory_info().rss for p in tree) / 2**20)
                peak_kernels[0] = max(peak_kernels[0], len(tree) - 1)
            except psutil.Error:
                pass
            stop.wait(1.0)

    threading.Thread(target=sample, daemon=True).start()
    t_start = time.monotonic()
    until = t_start + args.minutes * 60
    threads = [threading.Thread(target=nurse, args=(p, url, port, until,
                                                    tuple(args.read_seconds)))
               if p.role == "nurse" else
               threading.Thread(target=viewer, args=(p, url, port, until, args.hold_seconds))
               for p in people]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - t_start
    stop.set()
    proc.terminate()
    proc.wait(timeout=60)
    log.close()

    from sqlalchemy import select

    with engine.connect() as conn:
        stored = [(r.id, r.reviewer) for r in conn.execute(
            select(AdjudicationEvent.id, AdjudicationEvent.reviewer).where(
                AdjudicationEvent.reviewer.like("bench.nurse.%")))]
    acked = {(i, p.name) for p in people for i in p.acknowledged}
    lost = sorted(acked - set(stored))
    nurses = [p for p in people if p.role == "nurse"]
    viewers = [p for p in people if p.role != "nurse"]
    traceback = "Traceback" in log_path.read_text(errors="replace")
    result = {
        "nurses": len(nurses), "viewers": len(viewers), "minutes": args.minutes,
        "wall_s": round(wall, 1), "cpus": psutil.cpu_count(),
        "load_average": [round(x, 1) for x in psutil.getloadavg()],
        "nurse_app_page_s": _stats([x for p in nurses for x in p.page_s]),
        "next_case_s": _stats([x for p in nurses for x in p.next_case_s]),
        "decisions_acknowledged": len(acked), "decisions_stored": len(stored),
        "decisions_lost": len(lost),
        "dashboard_page_s": _stats([x for p in viewers for x in p.page_s]),
        "dashboard_kernel_up_s": _stats([x for p in viewers for x in p.ttfb_s]),
        "dashboard_first_render_after_kernel_s": _stats(
            [x for p in viewers for x in p.first_render_s]),
        "errors": [f"{p.name}: {e}" for p in people for e in p.errors],
        "traceback_in_server_log": traceback,
        "peak_server_rss_mb": round(peak_mb[0]), "peak_kernels": peak_kernels[0],
        "people": [asdict(p) for p in people],
    }
    for k in ("nurse_app_page_s", "next_case_s", "dashboard_page_s", "dashboard_kernel_up_s",
              "dashboard_first_render_after_kernel_s"):
        print(f"{k:40} {result[k]}")
    print(f"decisions: {len(acked)} acknowledged, {len(stored)} stored, {len(lost)} lost; "
          f"errors: {len(result['errors'])}; traceback in server log: {traceback}; "
          f"peak {result['peak_kernels']} kernels, {result['peak_server_rss_mb']} MB")
    for e in result["errors"][:10]:
        print("  error:", e)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1, default=str))
        print(f"written {args.out} (server log {log_path})")


if __name__ == "__main__":
    main()
