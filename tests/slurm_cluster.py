"""A real one-node SLURM (munged + slurmctld + slurmd) in a temporary folder, for tests and measurements.

Everything is private to one cluster: its own munge key and socket, free TCP
ports, state/spool/log folders, so two test sessions on one machine do not
meet. The daemons run in the foreground as children of this process; `stop()`
ends them by PID (never by name), after cancelling the cluster's jobs, and
every wait has a timeout. What it relies on of slurm-wlm 22.05 (Debian's): README.md, "SLURM".

    python tests/slurm_cluster.py DIR     # start one by hand; prints SLURM_CONF; Enter stops it
"""
from __future__ import annotations

import os
import pwd
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "scontrol", "sinfo", "squeue", "scancel", "srun")
INSTALL = ("apt-get install -y --no-install-recommends slurmctld slurmd slurm-client munge "
           "(see .ci/run)")
SBIN = ("/usr/sbin", "/usr/bin", "/sbin", "/bin")


def which(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path=os.pathsep.join(SBIN))


def unavailable() -> str | None:
    """Why a cluster cannot be started here, or None."""
    missing = [n for n in DAEMONS + CLIENTS if not which(n)]
    if missing:
        return f"SLURM/munge not installed (missing {', '.join(missing)}); install with: {INSTALL}"
    if os.geteuid() != 0:
        return "the test SLURM runs slurmd and its jobs as root; run the SLURM tests as root"
    try:
        pwd.getpwnam("munge")
    except KeyError:
        return "no 'munge' user (the munge package creates it)"
    return None


def clean_env(extra: dict | None = None) -> dict:
    """os.environ without SLURM/launcher variables of an enclosing job, plus extra."""
    drop = ("SLURM_", "SBATCH_", "SRUN_", "SALLOC_", "PMI_", "PMIX_", "HYDRA_", "MPIR_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env.update(extra or {})
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return not Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z")


class SlurmCluster:
    def __init__(self, folder: Path):
        self.folder = Path(folder).resolve()
        self.conf = self.folder / "slurm.conf"
        self.node = socket.gethostname().split(".")[0]
        # Two CPUs per core: fedmpi's waiting ranks sleep and rank 0 mostly waits, so the tests run
        # 3 ranks (server + 2 workers) with --ntasks-per-node on a 2-core machine (sbatch refuses
        # --overcommit together with --ntasks-per-node). slurmd takes the declared count as given.
        self.cpus = 2 * (os.cpu_count() or 1)
        # Job ids start at a random number: pip's MPICH names its shared-memory segment after the
        # PMI job id (srun --mpi=pmi2: JOBID.STEPID), and a segment left in /dev/shm by a killed
        # step makes the next step with the same ids spin forever in MPI_Init. Every fresh cluster
        # starting at job 1 would meet the leftovers of earlier ones (or of a concurrent session).
        self.first_job_id = random.randrange(100_000, 60_000_000)
        # A requeued job may start again cred_expire seconds later (default 120 s), at the next
        # scheduling pass (sched_interval, bf_interval: 60 s and 30 s by default; 1 s here).
        self.requeue_delay = 5
        self.procs: dict[str, subprocess.Popen] = {}
        self.munge_dir: Path | None = None
        self.env = clean_env({"SLURM_CONF": str(self.conf)})

    # ---- start -------------------------------------------------------------------------------
    def start(self, timeout: float = 30) -> "SlurmCluster":
        self.folder.mkdir(parents=True, exist_ok=True)
        try:
            self._start_munge()
            self._write_conf()
            for daemon in ("slurmctld", "slurmd"):
                log = open(self.folder / f"{daemon}.stderr", "w")
                self.procs[daemon] = subprocess.Popen(
                    [which(daemon), "-D"], env=self.env, stdin=subprocess.DEVNULL, stdout=log,
                    stderr=subprocess.STDOUT, start_new_session=True)
            self._wait_idle(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _start_munge(self) -> None:
        # munged runs as the munge user and insists on a folder it owns that others may enter but not
        # write (0755), and a key only it can read.
        munge = pwd.getpwnam("munge")
        self.munge_dir = Path(tempfile.mkdtemp(prefix="fedmpi-munge-"))
        key = self.munge_dir / "munge.key"
        key.write_bytes(os.urandom(1024))
        for path in (self.munge_dir, key):
            os.chown(path, munge.pw_uid, munge.pw_gid)
        key.chmod(0o400)
        self.munge_dir.chmod(0o755)
        self.socket = self.munge_dir / "munge.socket"
        cmd = [which("munged"), "-F", f"--socket={self.socket}",
               f"--key-file={key}", f"--pid-file={self.munge_dir / 'munged.pid'}",
               f"--log-file={self.munge_dir / 'munged.log'}", f"--seed-file={self.munge_dir / 'munged.seed'}"]
        self.procs["munged"] = subprocess.Popen(
            cmd, user=munge.pw_uid, group=munge.pw_gid, extra_groups=[], stdin=subprocess.DEVNULL,
            stdout=open(self.folder / "munged.stderr", "w"), stderr=subprocess.STDOUT, start_new_session=True)
        self._until(lambda: self.socket.exists(), 10, "munged did not create its socket")

    def _write_conf(self) -> None:
        d = self.folder
        (d / "state").mkdir(exist_ok=True)
        (d / "spool").mkdir(exist_ok=True)
        self.conf.write_text(f"""\
ClusterName=fedmpitest
FirstJobId={self.first_job_id}
SlurmctldHost={self.node}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.socket},cred_expire={self.requeue_delay}
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerParameters=sched_interval=1,bf_interval=1
MpiDefault=none
SlurmdParameters=config_overrides
ReturnToService=2
KillWait=15
MinJobAge=300
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd.pid
SlurmctldLogFile={d}/slurmctld.log
SlurmdLogFile={d}/slurmd.log
NodeName={self.node} NodeAddr=127.0.0.1 CPUs={self.cpus} State=UNKNOWN
PartitionName=test Nodes=ALL Default=YES MaxTime=INFINITE State=UP
""")

    def _wait_idle(self, timeout: float) -> None:
        def idle():
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with {proc.returncode}\n{self.logs()}")
            r = self.run("sinfo", "-h", "-o", "%T", check=False, timeout=10)
            return r.returncode == 0 and r.stdout.strip() == "idle"
        self._until(idle, timeout, "the SLURM node did not become idle")

    def _until(self, condition, timeout: float, what: str, interval: float = 0.1) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} within {timeout} s\n{self.logs()}")
            time.sleep(interval)

    # ---- use ---------------------------------------------------------------------------------
    def run(self, *cmd: str, check: bool = True, timeout: float = 30, env: dict | None = None,
            cwd: Path | None = None) -> subprocess.CompletedProcess:
        """A SLURM command against this cluster; never waits longer than timeout."""
        r = subprocess.run([which(cmd[0]) or cmd[0], *cmd[1:]], env={**self.env, **(env or {})},
                           cwd=cwd, capture_output=True, text=True, timeout=timeout)
        if check and r.returncode:
            raise RuntimeError(f"{' '.join(cmd)}: exit {r.returncode}\n{r.stdout}{r.stderr}")
        return r

    def job(self, job_id: str) -> dict[str, str]:
        """`scontrol show job -o` as a dict (JobState, ExitCode, Restarts, StdOut, ...)."""
        out = self.run("scontrol", "show", "job", "-o", job_id).stdout
        return dict(item.split("=", 1) for item in out.split() if "=" in item)

    def wait_job(self, job_id: str, timeout: float, states=("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT",
                                                            "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED"),
                 interval: float = 0.2) -> dict[str, str]:
        """Poll `scontrol show job` until the job reaches one of states; returns its record."""
        deadline = time.monotonic() + timeout
        while True:
            info = self.job(job_id)
            if info.get("JobState") in states:
                return info
            if time.monotonic() > deadline:
                self.run("scancel", job_id, check=False)  # so that it does not hold the node for later jobs
                raise AssertionError(f"job {job_id} still {info.get('JobState')} after {timeout} s:\n"
                                     f"{info}\n{self.logs()}")
            time.sleep(interval)

    def logs(self, lines: int = 15) -> str:
        parts = []
        for path in sorted(self.folder.glob("*.log")) + sorted(self.folder.glob("*.stderr")):
            tail = path.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"--- {path.name} (last {lines} lines)\n" + "\n".join(tail))
        return "\n".join(parts)

    # ---- stop --------------------------------------------------------------------------------
    def stop(self) -> None:
        """Cancel this cluster's jobs, stop the daemons by PID, remove the munge folder. Never raises."""
        if self.procs.get("slurmctld") and self.procs["slurmctld"].poll() is None:
            try:
                jobs = self.run("squeue", "-h", "-o", "%i", check=False, timeout=10).stdout.split()
                if jobs:
                    self.run("scancel", *jobs, check=False, timeout=10)
                    self._until(lambda: not self.run("squeue", "-h", "-o", "%i", check=False,
                                                     timeout=10).stdout.split(), 20, "jobs did not end")
            except (RuntimeError, subprocess.TimeoutExpired) as e:
                print(f"slurm_cluster: {e}", file=sys.stderr)
        for name in ("slurmd", "slurmctld", "munged"):
            proc = self.procs.pop(name, None)
            if proc and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=5)
        self._kill_strays()
        if self.munge_dir:
            shutil.rmtree(self.munge_dir, ignore_errors=True)
            self.munge_dir = None

    def _kill_strays(self) -> None:
        """Processes started by this cluster's slurmd that outlived it (they carry its SLURM_CONF)."""
        marker = f"SLURM_CONF={self.conf}".encode()
        for pid in filter(str.isdigit, os.listdir("/proc")):
            if int(pid) == os.getpid():
                continue
            try:
                environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if marker in environ and _alive(int(pid)):
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass


def main() -> None:
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="fedmpi-slurm-"))
    reason = unavailable()
    if reason:
        sys.exit(f"slurm_cluster: {reason}")
    cluster = SlurmCluster(folder).start()
    try:
        print(f"export SLURM_CONF={cluster.conf}   # node {cluster.node}, {cluster.cpus} CPUs declared; "
              "Enter stops it",
              flush=True)
        sys.stdin.readline()
    finally:
        cluster.stop()


if __name__ == "__main__":
    main()
