"""The ClientApp's caches in a long-lived process (a node worker serves many messages of many runs): the built
job is reused within a run and built again for another run; an edited experiment file is read again."""

import os

from flowerkit import SMALL

from bouquet.app.flower_job import experiment_of, load_job, run_name


def test_a_job_is_built_once_per_run():
    rc = {"experiment": SMALL, "algorithm": "fedavg", "seed": 0}
    first = load_job(rc, run_id=11)
    assert load_job(dict(rc), run_id=11) is first  # every message of run 11
    assert load_job(rc, run_id=12) is not first  # another run reads its data afresh


def test_an_edited_experiment_file_is_read_again(tmp_path):
    path = tmp_path / "exp.toml"
    path.write_text(SMALL)
    rc = {"config": str(path), "algorithm": "fedavg", "seed": 0}
    assert experiment_of(rc)[0].run.rounds == 3
    name = run_name(rc, 7)
    path.write_text(SMALL.replace("rounds = 3", "rounds = 4"))
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # a later modification time, whatever the clock
    assert experiment_of(rc)[0].run.rounds == 4
    assert run_name(rc, 7) != name  # and its nodes keep the new run's states apart
