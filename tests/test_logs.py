"""Rank-aware logging: rank 0 prints progress plain, other ranks only warnings/errors with a
"[rank N host]" prefix; every rank's full log (debug included) lands in RUN/logs/rank<N>.log."""
import logging
import subprocess
import sys
import textwrap

from conftest import ROOT

SCRIPT = textwrap.dedent("""
    import logging, sys
    from flip_scale.logs import setup_rank_logging
    run_dir, rank = sys.argv[1], int(sys.argv[2])
    log = setup_rank_logging(run_dir, rank, host="node7")
    log.info("step 10/200 loss 4.1")
    logging.getLogger("flip_scale.data.loader").warning("shard s3://b/00012.tar skipped")
    log.debug("loader state: 3 streams")
    try:
        1 / 0
    except ZeroDivisionError:
        log.exception("checkpoint write failed")
""")


def run_rank(tmp_path, rank):
    r = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path), str(rank)], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stderr


def test_rank0_prints_progress_others_only_prefixed_warnings_and_every_rank_keeps_a_file(tmp_path):
    err0, err3 = run_rank(tmp_path, 0), run_rank(tmp_path, 3)
    lines0 = err0.splitlines()
    assert lines0[0] == "step 10/200 loss 4.1"
    assert lines0[1] == "[rank 0 node7] WARNING shard s3://b/00012.tar skipped"
    assert lines0[2] == "[rank 0 node7] ERROR checkpoint write failed"
    assert "ZeroDivisionError" in err0 and "loader state" not in err0
    lines3 = err3.splitlines()
    assert lines3[0] == "[rank 3 node7] WARNING shard s3://b/00012.tar skipped"
    assert lines3[1] == "[rank 3 node7] ERROR checkpoint write failed"
    assert "step 10/200" not in err3 and "loader state" not in err3
    for rank in (0, 3):
        text = (tmp_path / "logs" / f"rank{rank}.log").read_text()
        for want in ("INFO flip_scale: step 10/200", "WARNING flip_scale.data.loader: shard", "DEBUG flip_scale: loader",
                     "ERROR flip_scale: checkpoint write failed", "ZeroDivisionError"):
            assert want in text, (rank, want, text)
        assert f"rank {rank} node7" in text


def test_setup_is_idempotent_and_does_not_propagate(tmp_path, capsys):
    from flip_scale.logs import close_rank_logging, setup_rank_logging

    try:
        setup_rank_logging(None, 1, host="h")
        log = setup_rank_logging(None, 1, host="h")
        assert len([h for h in log.handlers if getattr(h, "_flip_rank_handler", False)]) == 1
        log.warning("once")
        log.info("hidden")
        assert capsys.readouterr().err == "[rank 1 h] WARNING once\n"
    finally:
        close_rank_logging()
    assert not logging.getLogger("flip_scale").handlers
