"""A real two-node Slurm cluster on this one machine, for the tests and for trying the templates.

    python tests/slurm_cluster.py start     # prints `export SLURM_CONF=...`; daemons keep running
    python tests/slurm_cluster.py status
    python tests/slurm_cluster.py stop      # stops only the PIDs `start` recorded, removes the network

How (measured on Debian 12 with Slurm 22.05, issue 7 item 5):
- `munged` (as user munge), `slurmctld -D` and one `slurmd -D -N nodeK` per node run as root, each
  started in its own session so its PID is known; only those PIDs are stopped afterwards.
- Each slurmd gets its own network namespace (veth pair on a bridge, 10.77.0.0/24, inside this
  machine only), entered with `nsenter --net=` (`ip netns exec` remounts /sys: slurmd then finds
  no cgroup filesystem and exits) and `unshare --uts` for its own hostname, which gloo and the
  rendezvous resolve through /etc/hosts entries added here and removed on stop.
  Where bridges are not allowed, all slurmds run on loopback with distinct ports.
- Inside a namespaced job 127.0.0.1 is the node's own; the controller listens on the bridge address.
- The configuration lives in the state directory and is found through SLURM_CONF (exported to
  jobs by sbatch's default --export=ALL), so the machine's /etc/slurm is left alone.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

NAME = "flipsl"                      # prefix of every namespace, link and host name created here
SUBNET = "10.77.0"
CTL_HOST = f"{NAME}ctl"
HOSTS_BEGIN = f"# >>> {NAME} test cluster (tests/slurm_cluster.py) >>>"
HOSTS_END = f"# <<< {NAME} test cluster <<<"
DEFAULT_STATE = Path(os.environ.get("FLIP_SLURM_STATE", "/tmp/flip-scale-slurm"))
PACKAGES = ["slurmctld", "slurmd", "slurm-client", "munge"]
MUNGE_SOCKET = "/run/munge/munge.socket.2"
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
            "DEADLINE", "PREEMPTED"}


class ClusterUnavailable(RuntimeError):
    """The daemons cannot run here; the message says why (tests print it when they skip)."""


def _run(cmd, check=True, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, check=check, **kw)


def _free_port(host="0.0.0.0") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def ensure_installed() -> None:
    if all(shutil.which(b) for b in ("slurmctld", "slurmd", "sbatch", "munged")):
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise ClusterUnavailable("Slurm is not installed and apt-get as root is not available to install "
                                 + " ".join(PACKAGES))
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *PACKAGES]):
        r = _run(cmd, check=False, env=env, timeout=600)
        if r.returncode:
            raise ClusterUnavailable(f"`{' '.join(cmd)}` failed: {(r.stderr or r.stdout).strip()[-500:]}")


class SlurmCluster:
    def __init__(self, state_dir: Path | str = DEFAULT_STATE, nodes: int = 2, cpus_per_node: int = 2):
        self.state = Path(state_dir)
        self.nodes = [f"{NAME}node{k}" for k in range(1, nodes + 1)]
        self.cpus = cpus_per_node
        self.conf = self.state / "slurm.conf"
        self.pids: dict[str, int] = {}
        self.mode = "netns"              # or "loopback"
        self.created: dict[str, list] = {"netns": [], "links": [], "hosts": False}

    # ---------------------------------------------------------------- public
    @property
    def env(self) -> dict:
        """Environment for sbatch/squeue/scontrol against this cluster."""
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def start(self, timeout_s: float = 60.0) -> "SlurmCluster":
        if os.geteuid() != 0:
            raise ClusterUnavailable("the test cluster needs root (munged, slurmd, network namespaces)")
        if self._load_record():
            if self.alive():
                raise ClusterUnavailable(f"a test cluster is already running from {self.state} "
                                         f"(stop it with `python tests/slurm_cluster.py stop`)")
            self.stop()  # leftovers of an interrupted session: what its record names, nothing else
        ensure_installed()
        self.state.mkdir(parents=True, exist_ok=True)
        try:
            self._start_munge()
            self._setup_network()
            self._write_conf()
            self._start_daemons()
            self._wait_idle(timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if not self.pids and not any(self.created.values()):
            self._load_record()
        if "slurmctld" in self.pids and self._pid_alive(self.pids["slurmctld"]):
            _run(["scancel", "--full", "--quiet", "-p", "debug"], check=False, env=self.env, timeout=20)
            end = time.time() + 15
            while time.time() < end and _run(["squeue", "-h"], check=False, env=self.env, timeout=20).stdout.strip():
                time.sleep(0.5)
        # Job processes left in our own namespaces (slurmstepd, tasks) are ours too.
        leftovers = []
        for ns in self.created["netns"]:
            r = _run(["ip", "netns", "pids", ns], check=False)
            leftovers += [int(p) for p in r.stdout.split() if p.strip().isdigit()]
        order = [p for n, p in self.pids.items() if n.startswith("slurmd")] + \
                [self.pids[n] for n in ("slurmctld", "munged") if n in self.pids]
        self._terminate(order)
        self._terminate([p for p in leftovers if p not in order])
        for ns in self.created["netns"]:
            _run(["ip", "netns", "del", ns], check=False)
        for link in self.created["links"]:
            _run(["ip", "link", "del", link], check=False)
        if self.created["hosts"]:
            self._edit_hosts(add=False)
        self.pids, self.created = {}, {"netns": [], "links": [], "hosts": False}
        record = self.state / "cluster.json"
        if record.exists():
            record.unlink()

    def alive(self) -> bool:
        return bool(self.pids) and all(self._pid_alive(p) for p in self.pids.values())

    # --- job helpers (real sbatch / squeue / scontrol)
    def sbatch(self, args: list[str], env_extra: dict | None = None, cwd=None) -> int:
        r = _run(["sbatch", "--parsable", *map(str, args)], check=False, env={**self.env, **(env_extra or {})},
                 cwd=cwd, timeout=60)
        if r.returncode:
            raise RuntimeError(f"sbatch failed: {r.stderr.strip()}")
        return int(r.stdout.strip().split(";")[0])

    def job_info(self, job_id: int) -> dict:
        r = _run(["scontrol", "show", "job", "-o", str(job_id)], check=False, env=self.env, timeout=20)
        info = {}
        for tok in r.stdout.split():
            if "=" in tok:
                k, v = tok.split("=", 1)
                info.setdefault(k, v)
        return info

    def squeue_state(self, job_id: int) -> str:
        r = _run(["squeue", "-h", "-j", str(job_id), "-o", "%T"], check=False, env=self.env, timeout=20)
        return r.stdout.strip()

    def wait_job(self, job_id: int, timeout_s: float = 300.0, poll_s: float = 0.5, until=None) -> dict:
        """Poll squeue every poll_s until the job leaves the queue (or `until(state)` holds)."""
        end = time.time() + timeout_s
        while time.time() < end:
            state = self.squeue_state(job_id)
            if until is not None and until(state):
                return self.job_info(job_id)
            if not state or state in TERMINAL:
                info = self.job_info(job_id)
                if info.get("JobState") in TERMINAL:
                    return info
            time.sleep(poll_s)
        raise TimeoutError(f"job {job_id} still {self.squeue_state(job_id)!r} after {timeout_s:.0f} s\n"
                           + self.logs_tail())

    def logs_tail(self, n: int = 20) -> str:
        out = []
        for log in sorted(self.state.glob("*.log")):
            lines = log.read_text(errors="replace").splitlines()[-n:]
            out.append(f"--- {log.name}\n" + "\n".join(lines))
        return "\n".join(out)

    # ---------------------------------------------------------------- internals
    @staticmethod
    def _pid_alive(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        try:  # a zombie we started ourselves counts as gone
            return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
        except (OSError, IndexError):
            return False

    def _terminate(self, pids: list[int], grace_s: float = 10.0) -> None:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        end = time.time() + grace_s
        for pid in pids:
            while self._pid_alive(pid) and time.time() < end:
                self._reap(pid)
                time.sleep(0.1)
            if self._pid_alive(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self._reap(pid)

    @staticmethod
    def _reap(pid: int) -> None:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass

    def _save_record(self) -> None:
        rec = {"pids": self.pids, "created": self.created, "mode": self.mode, "nodes": self.nodes}
        (self.state / "cluster.json").write_text(json.dumps(rec, indent=1))

    def _load_record(self) -> bool:
        path = self.state / "cluster.json"
        if not path.exists():
            return False
        rec = json.loads(path.read_text())
        self.pids, self.created, self.mode = rec["pids"], rec["created"], rec["mode"]
        return True

    def _spawn(self, name: str, cmd: list[str], **kw) -> int:
        log = open(self.state / f"{name}.stdout", "ab")
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, **kw)
        log.close()
        self.pids[name] = proc.pid
        self._save_record()
        return proc.pid

    def _munge_works(self) -> bool:
        if not shutil.which("munge"):
            return False
        try:
            cred = _run(["munge", "-n"], check=False, timeout=10)
            return cred.returncode == 0 and _run(["unmunge"], input=cred.stdout, check=False,
                                                 timeout=10).returncode == 0
        except subprocess.TimeoutExpired:
            return False

    def _start_munge(self) -> None:
        if self._munge_works():  # a munged already serves this machine: use it, leave it running
            return
        key = Path("/etc/munge/munge.key")
        if not key.exists():
            key.parent.mkdir(parents=True, exist_ok=True)
            key.write_bytes(os.urandom(1024))
        for d in (key.parent, Path("/run/munge"), Path("/var/lib/munge"), Path("/var/log/munge")):
            d.mkdir(parents=True, exist_ok=True)
            shutil.chown(d, "munge", "munge")
        shutil.chown(key, "munge", "munge")
        key.chmod(0o400)
        self._spawn("munged", ["munged", "-F", "--force"], user="munge", group="munge")
        end = time.time() + 15
        while time.time() < end:
            if self._munge_works():
                return
            time.sleep(0.2)
        raise ClusterUnavailable("munged did not start: "
                                 + (self.state / "munged.stdout").read_text(errors="replace")[-500:])

    def _setup_network(self) -> None:
        """Bridge + one namespace per node; falls back to loopback when that is not allowed."""
        bridge = f"{NAME}br0"
        try:
            for link in [bridge] + [f"{NAME}v{k}" for k in range(1, len(self.nodes) + 1)]:
                if _run(["ip", "link", "show", link], check=False).returncode == 0:
                    raise ClusterUnavailable(f"network link {link} already exists: another test cluster? "
                                             f"(`python tests/slurm_cluster.py stop` or `ip link del {link}`)")
            _run(["ip", "link", "add", bridge, "type", "bridge"])
            self.created["links"].append(bridge)
            _run(["ip", "addr", "add", f"{SUBNET}.1/24", "dev", bridge])
            _run(["ip", "link", "set", bridge, "up"])
            for k, node in enumerate(self.nodes, start=1):
                ns, host_end, node_end = f"{NAME}-{node}", f"{NAME}v{k}", f"{NAME}p{k}"
                _run(["ip", "netns", "add", ns])
                self.created["netns"].append(ns)
                _run(["ip", "link", "add", host_end, "type", "veth", "peer", "name", node_end])
                self.created["links"].append(host_end)
                _run(["ip", "link", "set", host_end, "master", bridge])
                _run(["ip", "link", "set", host_end, "up"])
                _run(["ip", "link", "set", node_end, "netns", ns])
                nsx = ["nsenter", f"--net=/run/netns/{ns}"]
                _run(nsx + ["ip", "addr", "add", f"{SUBNET}.{10 + k}/24", "dev", node_end])
                _run(nsx + ["ip", "link", "set", node_end, "up"])
                _run(nsx + ["ip", "link", "set", "lo", "up"])
            self._save_record()
            last = f"{SUBNET}.{10 + len(self.nodes)}"
            r = _run(["nsenter", f"--net=/run/netns/{NAME}-{self.nodes[0]}", "ping", "-c1", "-W2", last],
                     check=False) if shutil.which("ping") else None
            if r is not None and r.returncode:
                raise subprocess.CalledProcessError(r.returncode, "ping", r.stdout, r.stderr)
            self.addr = {CTL_HOST: f"{SUBNET}.1", **{n: f"{SUBNET}.{10 + k}" for k, n in enumerate(self.nodes, 1)}}
        except subprocess.CalledProcessError as e:
            print(f"slurm_cluster: namespaces/bridge not usable ({(e.stderr or '').strip()}); "
                  f"using loopback nodes", file=sys.stderr)
            for ns in self.created["netns"]:
                _run(["ip", "netns", "del", ns], check=False)
            for link in self.created["links"]:
                _run(["ip", "link", "del", link], check=False)
            self.created["netns"], self.created["links"] = [], []
            self.mode = "loopback"
            self.addr = {CTL_HOST: "127.0.0.1", **{n: "127.0.0.1" for n in self.nodes}}
        self._edit_hosts(add=True)

    def _edit_hosts(self, add: bool) -> None:
        hosts = Path("/etc/hosts")
        lines, skipping = [], False
        for line in hosts.read_text().splitlines():
            if line == HOSTS_BEGIN:
                skipping = True
            if not skipping:
                lines.append(line)
            if line == HOSTS_END:
                skipping = False
        if add:
            lines += [HOSTS_BEGIN] + [f"{a} {n}" for n, a in self.addr.items()] + [HOSTS_END]
            self.created["hosts"] = True
            self._save_record()
        # Rewrite in place: /etc/hosts may be a bind mount that cannot be replaced by rename.
        with open(hosts, "r+") as f:
            f.seek(0)
            f.write("\n".join(lines) + "\n")
            f.truncate()

    def _write_conf(self) -> None:
        s = self.state
        ctl_port = _free_port() if self.mode == "loopback" else 6817
        if self.mode == "netns":  # the controller is on the host side: make sure its port is free there
            try:
                with socket.socket() as sock:
                    sock.bind(("0.0.0.0", ctl_port))
            except OSError:
                ctl_port = _free_port()
        lines = [
            "# Written by tests/slurm_cluster.py: a two-node test cluster on one machine.",
            "ClusterName=fliptest",
            # slurmctld only runs on a host whose hostname is the SlurmctldHost name.
            f"SlurmctldHost={socket.gethostname().split('.')[0]}({self.addr[CTL_HOST]})",
            "MailProg=/bin/true",
            f"SlurmctldPort={ctl_port}",
            "AuthType=auth/munge", "CredType=cred/munge",
            "SlurmUser=root", "SlurmdUser=root",
            f"StateSaveLocation={s}/ctld", f"SlurmdSpoolDir={s}/spool-%n",
            f"SlurmctldPidFile={s}/slurmctld.pid", f"SlurmdPidFile={s}/slurmd-%n.pid",
            f"SlurmctldLogFile={s}/slurmctld.log", f"SlurmdLogFile={s}/slurmd-%n.log",
            "SlurmctldDebug=info", "SlurmdDebug=info",
            "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none",
            "SelectType=select/cons_tres", "SelectTypeParameters=CR_CPU",
            "MpiDefault=none",
            "JobCompType=jobcomp/filetxt", f"JobCompLoc={s}/jobcomp.txt",
            "JobAcctGatherType=jobacct_gather/none", "AccountingStorageType=accounting_storage/none",
            "SlurmdParameters=config_overrides",
            "ReturnToService=2", "MinJobAge=600", "KillWait=5", "InactiveLimit=0", "SlurmdTimeout=60",
            "JobRequeue=1",
        ]
        used = {ctl_port}
        for node in self.nodes:
            port = 6818
            if self.mode == "loopback":
                port = _free_port()
                while port in used:
                    port = _free_port()
            used.add(port)
            lines.append(f"NodeName={node} NodeAddr={self.addr[node]} NodeHostname={node} Port={port} "
                         f"CPUs={self.cpus} RealMemory=1000 State=UNKNOWN")
        lines.append("PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP")
        (s / "ctld").mkdir(parents=True, exist_ok=True)
        self.conf.write_text("\n".join(lines) + "\n")

    def _start_daemons(self) -> None:
        env = self.env
        # -c: start from an empty queue (a job left from an earlier, interrupted session must not run).
        self._spawn("slurmctld", ["slurmctld", "-D", "-c", "-f", str(self.conf)], env=env)
        for k, node in enumerate(self.nodes, start=1):
            slurmd = f"exec slurmd -D -N {node} -f {self.conf}"
            if self.mode == "netns":
                cmd = ["nsenter", f"--net=/run/netns/{NAME}-{node}", "unshare", "--uts", "sh", "-c",
                       f"hostname {node} && {slurmd}"]
            else:
                cmd = ["sh", "-c", slurmd]
            self._spawn(f"slurmd-{node}", cmd, env=env)

    def wait_nodes_idle(self, timeout_s: float = 60.0) -> None:
        """Every node idle (no job completing on it)."""
        self._wait_idle(timeout_s)

    def _wait_idle(self, timeout_s: float) -> None:
        end = time.time() + timeout_s
        states = ""
        while time.time() < end:
            for name, pid in self.pids.items():
                if not self._pid_alive(pid):
                    raise ClusterUnavailable(f"{name} exited at start-up:\n{self.logs_tail()}")
            r = _run(["sinfo", "-h", "-N", "-o", "%N %t"], check=False, env=self.env, timeout=20)
            states = r.stdout.strip()
            got = dict(line.split() for line in states.splitlines() if len(line.split()) == 2)
            if all(got.get(n) == "idle" for n in self.nodes):
                return
            time.sleep(0.3)
        raise ClusterUnavailable(f"nodes not idle after {timeout_s:.0f} s ({states!r}):\n{self.logs_tail()}")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    cmd = argv[0] if argv else "status"
    cluster = SlurmCluster()
    if cmd == "start":
        try:
            cluster.start()
        except ClusterUnavailable as e:
            print(f"cannot start the test cluster: {e}", file=sys.stderr)
            return 1
        print(f"test cluster up ({cluster.mode}): nodes {', '.join(cluster.nodes)}; state in {cluster.state}")
        print(f"export SLURM_CONF={cluster.conf}")
        return 0
    if cmd == "stop":
        cluster.stop()
        print("test cluster stopped")
        return 0
    if cmd == "status":
        up = cluster._load_record() and cluster.alive()
        print(f"test cluster {'up' if up else 'down'}" + (f": export SLURM_CONF={cluster.conf}" if up else ""))
        return 0 if up else 1
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main())
