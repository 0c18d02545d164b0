"""The per-trial progress table: the same in both stages, a node column only on a cluster."""

from __future__ import annotations

import pytest

from sketchtune.progress import alive_nodes, build_reporter


@pytest.fixture(scope="module")
def trials(tmp_path_factory):
    """Three running cv trials with one result each, as Tune holds them while a stage runs.

    Tune's Trial asks Ray only for the session folder under which it stages driver files (the
    reporter prints that path); a folder of the test's own stands in for it, so no Ray is
    started: the table is built from the trials' results alone.
    """
    import ray
    import ray.train._internal.storage as tune_storage
    from ray.train._internal.storage import StorageContext
    from ray.tune.experiment import Trial

    storage = str(tmp_path_factory.mktemp("ray"))
    session = str(tmp_path_factory.mktemp("session"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tune_storage, "_get_ray_train_session_dir", lambda: session)
        out = []
        for k in range(3):
            t = Trial("trial", config={"job": {"params": {}, "fold": k}}, stub=True,
                      trial_id=f"cv{k}", storage=StorageContext(storage, "cv-test"))
            t.init_local_path()  # as Tune does before it starts a trial
            t.set_status(Trial.RUNNING)
            t.update_last_result({"epoch": 2, "val_acc": 0.25 * (k + 1), "best_val_acc": 0.8,
                                  "backbone": "test_resnet", "candidate_id": "c0ffee",
                                  "node_ip": f"10.0.0.{k + 1}", "training_iteration": 2})
            out.append(t)
        assert not ray.is_initialized()
        yield out


@pytest.fixture
def tune_verbosity_1():
    """Tune's global verbosity as the search stage's `tune.run` leaves it (ray.verbose: 1)."""
    from ray.tune.utils import log

    before = log.verbosity
    log.set_verbosity(1)
    yield
    log.set_verbosity(before)


def _table(reporter, trials, capsys) -> list[str]:
    reporter.report(trials, False)  # an intermediate report, not the last one
    lines = capsys.readouterr().out.splitlines()
    return [line for line in lines if line.startswith("| ")]  # header and rows, no rules


def test_build_reporter_shows_each_trial_while_the_stage_runs(trials, tune_verbosity_1, capsys):
    rows = _table(build_reporter(nodes=1), trials, capsys)
    header = [c.strip() for c in rows[0].strip("|").split("|")]
    assert header[header.index("fold"):] == ["fold", "epoch", "val_acc", "best", "backbone",
                                             "candidate"]
    body = [[c.strip() for c in r.strip("|").split("|")] for r in rows[1:]]
    assert [(r[header.index("fold")], r[header.index("val_acc")]) for r in body] == \
        [("0", "0.25"), ("1", "0.5"), ("2", "0.75")]


def test_build_reporter_node_column_only_with_more_than_one_node(trials, tune_verbosity_1,
                                                                  capsys):
    assert "node" not in _table(build_reporter(nodes=1), trials, capsys)[0]
    rows = _table(build_reporter(nodes=2), trials, capsys)
    header = [c.strip() for c in rows[0].strip("|").split("|")]
    col = header.index("node")
    assert [r.strip("|").split("|")[col].strip() for r in rows[1:]] == \
        ["10.0.0.1", "10.0.0.2", "10.0.0.3"]


def test_alive_nodes_counts_only_alive_nodes(monkeypatch):
    import ray

    monkeypatch.setattr(ray, "nodes", lambda: [{"Alive": True}, {"Alive": False}])
    assert alive_nodes() == 1
    monkeypatch.setattr(ray, "nodes", lambda: [{"Alive": True}, {"Alive": True}])
    assert alive_nodes() == 2
