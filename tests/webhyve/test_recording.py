"""asciicast v2 recordings: what the API records, the real asciinema CLI plays; a crash keeps the events."""
import json
import os
import subprocess
import sys

from tests.webhyve.conftest import wait_for
from webhyve.sessions.recording import Recording

ASCIINEMA = os.path.join(os.path.dirname(sys.executable), "asciinema")


def asciinema_cat(path):
    return subprocess.run([ASCIINEMA, "cat", str(path)], capture_output=True, timeout=60)


def test_record_type_mark_download_and_asciinema_cat(client, shell_vm, tmp_path):
    """Start, type `help`, flip a tunable (a marker), stop, download: a v2 file asciinema plays."""
    started = client.post("/api/v1/vms/sh/recording")
    assert started.status_code == 201 and started.json["active"]
    assert client.post("/api/v1/vms/sh/recording").status_code == 409
    client.post("/api/v1/vms/sh/console", json={"data": "help\r"})
    assert wait_for(lambda: "cli; hlt" in client.get("/api/v1/vms/sh/console").json["text"])
    client.put("/api/v1/tunables/hw.vmm.halt_detection", json={"value": 0})
    stopped = client.delete("/api/v1/vms/sh/recording")
    assert stopped.status_code == 200 and not stopped.json["active"]
    listed = client.get("/api/v1/recordings").json["recordings"]
    assert [r["id"] for r in listed] == [started.json["id"]] and listed[0]["vm"] == "sh"
    cast = client.get("/api/v1/recordings/%s?download=1" % started.json["id"])
    assert cast.mimetype == "application/x-asciicast" and "attachment" in cast.headers["Content-Disposition"]
    lines = cast.get_data(as_text=True).splitlines()
    header, events = json.loads(lines[0]), [json.loads(line) for line in lines[1:]]
    assert header["version"] == 2 and (header["width"], header["height"]) == (80, 25)
    assert ["m", "hw.vmm.halt_detection: 1 -> 0"] in [e[1:] for e in events]
    times = [e[0] for e in events]
    assert times == sorted(times)
    saved = tmp_path / "downloaded.cast"
    saved.write_bytes(cast.get_data())
    played = asciinema_cat(saved)
    assert played.returncode == 0, played.stderr
    assert b"cpuid LEAF [SUB]" in played.stdout and b"webhyve>" in played.stdout


def test_recording_survives_a_crash(tmp_path):
    """A recorder process killed mid-recording: every event it wrote is on disk, and asciinema plays it."""
    path = tmp_path / "crash.cast"
    script = ("import os, sys\nfrom webhyve.sessions.recording import Recording\n"
              "r = Recording(sys.argv[1], 'crash', 80, 25)\n"
              "r.output(b'before the crash\\r\\n')\nr.marker('about to die')\nr.output('caf\\u00e9 \\u2713\\r\\n'.encode()[:-3])\n"
              "os.kill(os.getpid(), 9)\n")
    done = subprocess.run([sys.executable, "-c", script, str(path)], timeout=60)
    assert done.returncode == -9
    lines = path.read_text().splitlines()
    assert json.loads(lines[1])[1:] == ["o", "before the crash\r\n"]
    assert json.loads(lines[2])[1:] == ["m", "about to die"]
    played = asciinema_cat(path)
    assert played.returncode == 0 and b"before the crash" in played.stdout


def test_split_utf8_is_joined(tmp_path):
    """A multibyte character split across two output batches is written whole, not as two replacements."""
    rec = Recording(str(tmp_path / "u.cast"), "u", 80, 25)
    data = "café ✓".encode()
    rec.output(data[:4])
    rec.output(data[4:])
    rec.stop()
    events = [json.loads(line) for line in (tmp_path / "u.cast").read_text().splitlines()[1:]]
    assert "".join(e[2] for e in events) == "café ✓"
