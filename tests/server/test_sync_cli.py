"""``glasscockpit sync``: the token from a file or the environment, the real run id."""

from __future__ import annotations

from glasscockpit.agent.transport.spill import SpillWriter
from glasscockpit.cli import main as cli_main
from glasscockpit.protocol import Bye, Hello, encode
from tests.conftest import free_port
from tests.server.harness import live_server
from tests.server.test_persist import SPECS, frames_of

TOKEN = "sync-file-token"


def spill(path, run: str, instance: str, n: int) -> None:
    writer = SpillWriter(path)
    writer.append(encode(Hello(run, 0, SPECS, {"instance": instance})))
    for f in [*frames_of(run, n), Bye(run, n + 1)]:
        writer.append(encode(f))
    writer.close()


def test_sync_reads_the_token_from_a_file_and_reports_the_stored_id(
    tmp_path, capsys, monkeypatch
):
    monkeypatch.delenv("GLASSCOCKPIT_TOKEN", raising=False)
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    path = tmp_path / "later.gcp"
    spill(path, "later", "process-b", 5)
    with live_server(free_port(), token=TOKEN) as s:
        # Another process already stored a run under this id.
        s.store.hello(Hello("later", 0, SPECS, {"instance": "process-a"}))
        args = ["sync", str(path), "--server", s.http, "--quiet"]
        assert cli_main([*args, "--token-file", str(token_file)]) == 0
        out = capsys.readouterr()
        assert "run later (stored as later-2" in out.out
        assert "5 frame(s)" in out.out or "6 frame(s)" in out.out
        assert TOKEN not in out.out + out.err
        assert s.store.get("later-2") is not None
        assert s.store.get("later-2").status == "finished"  # type: ignore[union-attr]
        # Syncing again resumes the same run: nothing twice.
        assert cli_main([*args, "--token-file", str(token_file)]) == 0
        assert "0 frame(s) uploaded" in capsys.readouterr().out
        # From the environment, without a warning.
        monkeypatch.setenv("GLASSCOCKPIT_TOKEN", TOKEN)
        assert cli_main(args) == 0
        assert "warning" not in capsys.readouterr().err


def test_a_token_on_the_command_line_works_but_warns(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("GLASSCOCKPIT_TOKEN", raising=False)
    path = tmp_path / "r.gcp"
    spill(path, "r", "p", 2)
    with live_server(free_port(), token=TOKEN) as s:
        args = ["sync", str(path), "--server", s.http, "--quiet", "--token", TOKEN]
        assert cli_main(args) == 0
        assert "visible to other users" in capsys.readouterr().err


def test_a_missing_token_file_is_a_clear_error(tmp_path, capsys):
    args = ["sync", str(tmp_path / "x.gcp"), "--token-file", str(tmp_path / "no")]
    assert cli_main(args) == 2
    assert "cannot read the token" in capsys.readouterr().err


def test_sync_of_a_live_runs_spill_resumes_it(tmp_path, capsys):
    # The same instance (live frames, then its spill file) is one run.
    path = tmp_path / "same.gcp"
    spill(path, "same", "one", 4)
    with live_server(free_port()) as s:
        s.store.hello(Hello("same", 0, SPECS, {"instance": "one"}))
        for f in frames_of("same", 2):
            s.store.ingest(f)
        assert cli_main(["sync", str(path), "--server", s.http, "--quiet"]) == 0
        out = capsys.readouterr().out
        assert "stored as" not in out
        assert "3 frame(s) uploaded, 2 already on the server" in out
        assert sorted(s.store.runs) == ["same"]
