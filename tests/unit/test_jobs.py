"""
Tests for L{lips.jobs} (job files, the tables as C{lips job status} and C{lips armors}
show them) and the command line's C{submit}, C{job status} and C{armors} where they do
not need a cluster.
"""

from __future__ import annotations

import io
import json
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from lips import cli, jobs
from lips.armor import ArmorRow, armor_id
from lips.armor.ftm import AppRow, AppState, ArmorEntry
from lips.tuples import Tuples

GOOD = """
name = "primes"
strategy = "simplex"
timeout = 60

[[task]]
name = "count"
target = "myapp.tasks:count"
args = [1, 100]
timeout = 5
"""


class JobFileTests(SynchronousTestCase):
    def write(self, text: str, name: str = "job.toml") -> Path:
        path = Path(self.mktemp())
        path.mkdir()
        (path / name).write_text(text)
        return path / name

    def test_a_good_file(self) -> None:
        name, job = jobs.load_job(self.write(GOOD))
        self.assertEqual(name, "primes")
        self.assertEqual(job["strategy"], "simplex")
        self.assertEqual(job["timeout"], 60)
        (task,) = job["tasks"]
        self.assertEqual(
            (task["name"], task["target"], task["args"]), ("count", "myapp.tasks:count", [1, 100])
        )

    def test_the_name_defaults_to_the_stem(self) -> None:
        text = GOOD.replace('name = "primes"\n', "")
        name, _ = jobs.load_job(self.write(text, "my_job.toml"))
        self.assertEqual(name, "my-job")

    def assertRefused(self, text: str, *words: str) -> None:
        path = self.write(text)
        with self.assertRaises(jobs.JobFileError) as e:
            jobs.load_job(path)
        message = str(e.exception)
        self.assertIn(str(path), message)
        for word in words:
            self.assertIn(word, message)

    def test_refusals_name_the_file_and_the_key(self) -> None:
        self.assertRefused(GOOD + "colour = 1\n", "'colour'")
        self.assertRefused(
            GOOD.replace("timeout = 5", "timeout = 5\nretries = 2"), "task 1", "'retries'"
        )
        self.assertRefused(GOOD.replace('"myapp.tasks:count"', '"not a target"'), "target")
        self.assertRefused(GOOD.replace('name = "primes"', 'name = "Primes!"'), "name")
        self.assertRefused('name = "a"\n', "[[task]]")
        self.assertRefused("name = [", "not TOML")
        self.assertRefused(
            GOOD.replace(
                'strategy = "simplex"', 'strategy = "simplex"\n[requirements]\nreplicas = 1'
            ),
            "strategy or the requirements",
        )

    def test_an_unreadable_file(self) -> None:
        with self.assertRaises(jobs.JobFileError) as e:
            jobs.load_job("/nonexistent/job.toml")
        self.assertIn("/nonexistent/job.toml", str(e.exception))

    def test_options(self) -> None:
        job = jobs.job_from_options("a.b:c", [1, "x"], strategy="simplex", task_timeout=2.0)
        self.assertEqual(job["tasks"][0]["args"], [1, "x"])
        self.assertEqual(job["tasks"][0]["timeout"], 2.0)
        with self.assertRaises(jobs.JobFileError):
            jobs.job_from_options("nope")

    def test_new_names_are_names(self) -> None:
        name = jobs.new_app_name()
        self.assertEqual(jobs.check_app_name(name, "x"), name)


class FakeSpace:
    """The blocking client's rdp and atomic, over a list of tuples."""

    def __init__(self, tuples: list[tuple[Any, ...]]) -> None:
        self.tuples = tuples

    def _match(self, template: tuple[Any, ...], values: tuple[Any, ...]) -> bool:
        from lips.tuples import make_template

        return make_template(template).matches(values)

    def rdp(self, template: tuple[Any, ...]) -> tuple[Any, ...] | None:
        return next((t for t in self.tuples if self._match(template, t)), None)

    def atomic(self, steps: list[Any]) -> tuple[Any, ...]:
        return tuple(Tuples(tuple(t for t in self.tuples if s.template.matches(t))) for s in steps)


class TableViewTests(SynchronousTestCase):
    def test_the_tree(self) -> None:
        space = FakeSpace(
            [
                ArmorEntry(armor_id("ftm"), "ftm", "", "n1").to_tuple(),
                ArmorEntry(armor_id("sm.app"), "surrogate-manager", "ftm", "n2", "app").to_tuple(),
                ArmorEntry(armor_id("exec.app.t1"), "execution", "sm.app", "n1", "app").to_tuple(),
                ArmorRow(
                    armor_id("exec.app.t1"), "execution", armor_id("sm.app"), "n1", 1, "app"
                ).as_tuple(),
            ]
        )
        views = jobs.read_armors(space)
        self.assertEqual([v.armor for v in views], ["exec.app.t1", "ftm", "sm.app"])
        lines = jobs.armor_tree(views)
        self.assertEqual(len(lines), 3)
        self.assertTrue(lines[0].startswith("ftm (ftm) on n1"))
        self.assertTrue(lines[1].startswith("  sm.app (surrogate-manager [app]) on n2"))
        self.assertTrue(lines[2].startswith("    exec.app.t1 (execution [app]) on n1"))
        self.assertIn("n1#1", lines[2])
        self.assertIn("not running", lines[1])
        self.assertEqual(jobs.armor_view(views[0])["running"], [["n1", 1]])

    def test_the_ftm_and_its_backup_manage_each_other(self) -> None:
        """The epoch holder is the root; a cycle without it still shows every ARMOR."""
        views = jobs.read_armors(
            FakeSpace(
                [
                    ArmorEntry(armor_id("ftm"), "ftm", "ftm.b-e1-2", "n1").to_tuple(),
                    ArmorEntry(armor_id("ftm.b-e1-2"), "ftm", "ftm", "n2").to_tuple(),
                    ArmorEntry(armor_id("heartbeat.e1-1"), "heartbeat", "ftm", "n1").to_tuple(),
                ]
            )
        )
        lines = jobs.armor_tree(views, "ftm")
        self.assertEqual(
            [line.split(" (")[0] for line in lines], ["ftm", "  ftm.b-e1-2", "  heartbeat.e1-1"]
        )
        self.assertEqual(len(jobs.armor_tree(views)), 3)
        self.assertEqual(
            jobs.epoch_holder(FakeSpace([("ftm-epoch", 2, "ftm.b-e1-2")])), "ftm.b-e1-2"
        )
        self.assertIsNone(jobs.epoch_holder(FakeSpace([])))

    def test_an_app_row(self) -> None:
        row = AppRow(
            "app",
            armor_id("submit.n1-1"),
            "simplex",
            AppState.DONE,
            {"tasks": []},
            {"ok": True, "result": {"t1": 4}, "reason": ""},
        )
        space = FakeSpace([row.to_tuple()])
        found = jobs.read_app(space, "app")
        assert found is not None
        view = jobs.app_view(found)
        self.assertEqual(view["state"], "done")
        self.assertEqual(view["result"], {"t1": 4})
        self.assertIsNone(jobs.read_app(space, "other"))


class FtmStatusTests(SynchronousTestCase):
    def test_the_ftms_status(self) -> None:
        import msgpack

        from lips.armor.ftm import FTM

        ftm = FTM(node="n1")
        value = ftm.status(3.0)
        self.assertEqual((value["id"], value["epoch"], value["node"]), ("ftm", 0, "n1"))
        space = FakeSpace([("ftm-stats", "ftm", msgpack.packb(value))])
        self.assertEqual(jobs.read_ftm_status(space), value)
        self.assertIsNone(jobs.read_ftm_status(FakeSpace([("ftm-stats", "ftm", b"\xc1")])))
        self.assertIsNone(jobs.read_ftm_status(FakeSpace([])))


class CommandLineTests(SynchronousTestCase):
    def run_cli(self, *argv: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        with redirect_stdout(out), redirect_stderr(err):
            try:
                code = cli.main(list(argv))
            except SystemExit as e:
                code = int(e.code or 0)
        return code, out.getvalue(), err.getvalue()

    def cluster(self) -> str:
        from lips.testing import Cluster

        return str(Cluster.create(Path(self.mktemp()), fixservers=1).path)

    def test_a_bad_job_file_is_status_2(self) -> None:
        path = Path(self.mktemp())
        path.mkdir()
        (path / "j.toml").write_text("colour = 1\n")
        code, _, err = self.run_cli(
            "submit", "-c", self.cluster(), "--node", "n1", str(path / "j.toml")
        )
        self.assertEqual(code, 2)
        self.assertIn("'colour'", err)

    def test_a_file_or_a_target(self) -> None:
        code, _, err = self.run_cli("submit", "-c", self.cluster(), "--node", "n1")
        self.assertEqual(code, 2)
        self.assertIn("--target", err)

    def test_a_bad_cluster_file_is_status_2(self) -> None:
        code, _, err = self.run_cli("job", "status", "-c", "/nonexistent.toml", "app")
        self.assertEqual(code, 2)
        self.assertIn("nonexistent", err)

    def test_the_result_is_printed_as_json(self) -> None:
        from lips.armor.ftm import JobResult
        from lips.armor.submit import Submission

        out = io.StringIO()
        with redirect_stdout(out), redirect_stderr(io.StringIO()):
            code = cli._submitted(
                "app", Submission("app", result=JobResult("app", True, {"t": b"x"}))
            )
        self.assertEqual(code, 0)
        self.assertEqual(json.loads(out.getvalue()), {"t": {"$bytes": "eA=="}})
        with redirect_stderr(io.StringIO()) as err:
            code = cli._submitted(
                "app", Submission("app", result=JobResult("app", False, None, "boom"))
            )
        self.assertEqual(code, 1)
        self.assertIn("boom", err.getvalue())
        with redirect_stderr(io.StringIO()):
            self.assertEqual(cli._submitted("app", Submission("app", refused="no")), 1)
            self.assertEqual(cli._submitted("app", TimeoutError("late")), 3)
