"""`edge_command` (registered as `edgespec edge`): one flushed line with the HTTP address, serves, stops cleanly on SIGINT; bad options exit 2."""

import json
import signal
import subprocess
import sys
import urllib.request

import typer
from typer.testing import CliRunner

from edgespec.edge.cli import edge_command

from edge_helpers import LOOPBACK, free_port

APP = typer.Typer()
APP.command()(edge_command)


def test_bad_options_exit_2_with_a_message(tmp_path):
    runner = CliRunner()
    result = runner.invoke(APP, ["--verifier", "nohost"])
    assert result.exit_code == 2 and "HOST:PORT" in result.output
    result = runner.invoke(APP, ["--verifier", "127.0.0.1:1", "--q-mode", "dense"])
    assert result.exit_code == 2 and "q_mode" in result.output
    empty = tmp_path / "token"
    empty.write_text("\n")
    result = runner.invoke(APP, ["--verifier", "127.0.0.1:1", "--auth-token-file", str(empty)])
    assert result.exit_code == 2 and "empty" in result.output


def test_runs_prints_its_address_and_stops_on_sigint(toy_pair):
    draft, _ = toy_pair
    code = "import typer; from edgespec.edge.cli import edge_command; typer.run(edge_command)"
    args = [sys.executable, "-c", code, "--verifier", f"{LOOPBACK}:{free_port()}", "--draft", str(draft.path),
            "--http-host", LOOPBACK, "--http-port", "0", "--pipeline", "--threads", "1"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("edgespec edge: serving on http://"), (line, proc.stderr.read() if proc.poll() is not None else "")
        url = line.split()[4]
        with urllib.request.urlopen(f"{url}/v1/models", timeout=10) as r:
            assert json.load(r)["object"] == "list"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
        assert "Traceback" not in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
