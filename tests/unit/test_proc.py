"""proc.py against a fake /proc tree."""

from __future__ import annotations

from pathlib import Path

import pytest

from netwarden.proc import ProcReader, unit_and_container

CID = "a" * 12 + "0123456789abcdef" * 3 + "b" * 4


def mkproc(
    root: Path,
    pid: int,
    comm: str,
    ppid: int,
    start: int,
    *,
    tgid: int | None = None,
    uid: int = 1000,
    cmdline: bytes = b"",
    cgroup: str = "0::/user.slice/user-1000.slice/session-2.scope\n",
    exe: str | None = "/usr/bin/x",
) -> None:
    d = root / str(pid)
    d.mkdir()
    rest = ["S", str(ppid)] + ["0"] * 17 + [str(start), "0", "0"]
    (d / "stat").write_text(f"{pid} ({comm}) " + " ".join(rest) + "\n")
    (d / "status").write_text(
        f"Name:\t{comm}\nTgid:\t{tgid or pid}\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\n"
        f"Gid:\t{uid}\t{uid}\t{uid}\t{uid}\n"
    )
    (d / "cmdline").write_bytes(cmdline)
    (d / "cgroup").write_text(cgroup)
    if exe:
        (d / "exe").symlink_to(exe)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    mkproc(tmp_path, 1, "systemd", 0, 1, uid=0, cgroup="0::/init.scope\n")
    mkproc(tmp_path, 100, "sshd", 1, 50, uid=0, cgroup="0::/system.slice/ssh.service\n")
    mkproc(tmp_path, 200, "bash", 100, 60)
    mkproc(tmp_path, 300, "curl) evil (x", 200, 70, cmdline=b"curl\0-s\0http://x/\x1b[2J\0")
    mkproc(tmp_path, 301, "worker", 200, 70, tgid=300)
    return tmp_path


def users(uid: int) -> str | None:
    return {0: "root", 1000: "alice"}.get(uid)


def test_info_reads_everything_and_escapes(tree: Path) -> None:
    r = ProcReader(str(tree), user_name=users)
    p = r.info(300)
    assert (p.pid, p.ppid, p.uid, p.user) == (300, 200, 1000, "alice")
    assert p.comm == "curl) evil (x"
    assert p.cmdline == "curl -s http://x/\\x1b[2J"
    assert p.exe == "/usr/bin/x"
    assert p.unit == "session-2.scope" and p.container is None
    assert r.info(100).unit == "ssh.service"


def test_thread_id_describes_its_process(tree: Path) -> None:
    p = ProcReader(str(tree), user_name=users).info(301)
    assert p.pid == 300 and p.comm == "curl) evil (x"


def test_kernel_fields_win_and_survive_a_vanished_process(tree: Path) -> None:
    r = ProcReader(str(tree), user_name=users)
    p = r.info(300, comm="isc-net-0000\n", uid=0)
    assert p.comm == "isc-net-0000\\n" and p.uid == 0 and p.user == "root"
    gone = r.info(999, comm="oneshot", uid=1000, gid=1000)
    assert (gone.pid, gone.comm, gone.uid, gone.gid, gone.user) == (
        999,
        "oneshot",
        1000,
        1000,
        "alice",
    )
    assert gone.exe is None and gone.cmdline is None and r.vanished == 1


def test_recycled_pid_is_not_confused(tree: Path) -> None:
    r = ProcReader(str(tree), user_name=users)
    assert r.info(300).cmdline is not None
    # the kernel saw pid 300 with another start time: the /proc entry is someone else
    p = r.info(300, start_time=12345, comm="old")
    assert p.comm == "old" and p.cmdline is None


def test_cache_by_pid_and_start(tree: Path) -> None:
    r = ProcReader(str(tree), user_name=users)
    a = r.info(200)
    (tree / "200" / "cmdline").write_bytes(b"changed")
    assert r.info(200) is a


def test_ancestors(tree: Path) -> None:
    r = ProcReader(str(tree), user_name=users)
    assert r.ancestors(300) == [(200, "bash"), (100, "sshd"), (1, "systemd")]


def test_huge_cmdline_is_capped(tmp_path: Path) -> None:
    mkproc(tmp_path, 5, "x", 1, 1, cmdline=b"A" * 100000)
    p = ProcReader(str(tmp_path), user_name=users).info(5)
    assert p.cmdline is not None and len(p.cmdline) == 4096 and p.cmdline.endswith("…")


@pytest.mark.parametrize(
    ("path", "unit", "container"),
    [
        ("/system.slice/nginx.service", "nginx.service", None),
        (
            "/user.slice/user-1000.slice/user@1000.service/app.slice/foo.service",
            "foo.service",
            None,
        ),
        (f"/system.slice/docker-{CID}.scope", None, CID),
        (f"/kubepods.slice/kubepods-burstable.slice/cri-containerd-{CID}.scope", None, CID),
        (f"/docker/{CID}", None, CID),
        ("/lxc.payload.web1/init.scope", "init.scope", "web1"),
        ("/", None, None),
    ],
)
def test_unit_and_container(path: str, unit: str | None, container: str | None) -> None:
    assert unit_and_container(path) == (unit, container)


def test_real_proc_self() -> None:
    import os

    p = ProcReader().info(os.getpid())
    assert p.pid == os.getpid() and p.cmdline and "python" in (p.exe or "")


def test_a_process_being_reaped_keeps_its_pid(tree: Path) -> None:
    # /proc/PID/status of a zombie being reaped shows Tgid 0
    status = tree / "300" / "status"
    status.write_text(status.read_text().replace("Tgid:\t300", "Tgid:\t0"))
    p = ProcReader(str(tree), user_name=users).info(300)
    assert p.pid == 300 and p.comm == "curl) evil (x"
