"""CPU steal (bench/cpu_steal.py): read from /proc/stat, measured over an interval, reported by the main job."""
import json
import sys

import pytest

from bert_from_scratch.bench import cpu_steal
from bert_from_scratch.bench.cpu_steal import StealMeter, cpu_jiffies, steal_note

# the cpu line's fields: user nice system idle iowait irq softirq steal guest guest_nice
STAT = "cpu  {user} 0 {system} {idle} 5 0 7 {steal} 300 0\ncpu0 1 2 3 4 5 6 7 8 9 10\nintr 1 2 3\n"


def write_stat(path, user, system, idle, steal):
    path.write_text(STAT.format(user=user, system=system, idle=idle, steal=steal))


def test_the_cpu_line_gives_all_ticks_and_the_stolen_ones(tmp_path):
    """Eight fields are the total (guest time is inside user already): 1000 + 200 + 500 + 5 + 7 + 88 = 1800."""
    stat = tmp_path / "stat"
    write_stat(stat, user=1000, system=200, idle=500, steal=88)
    assert cpu_jiffies(str(stat)) == (1800, 88)


@pytest.mark.parametrize("text", ["", "intr 1 2 3\n", "cpu  1 2 3\n", "cpu  a b c d e f g h\n"])
def test_an_unreadable_stat_gives_none(tmp_path, text):
    stat = tmp_path / "stat"
    stat.write_text(text)
    assert cpu_jiffies(str(stat)) is None
    assert cpu_jiffies(str(tmp_path / "missing")) is None
    assert StealMeter(str(tmp_path / "missing")).share() is None


def test_the_share_is_of_the_interval_not_since_boot(tmp_path):
    """Since boot 88 of 1,800 ticks were stolen (5%); in the interval 500 of 1,000 (50%). A meter that divided the
    counters themselves, not their differences, would say 5% or 33%."""
    stat = tmp_path / "stat"
    write_stat(stat, user=1000, system=200, idle=500, steal=88)
    meter = StealMeter(str(stat))
    write_stat(stat, user=1400, system=250, idle=550, steal=588)
    assert meter.share() == pytest.approx(0.5)
    assert StealMeter(str(stat)).share() is None          # no tick has passed


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/stat is Linux's")
def test_this_machine_reports_a_share():
    meter = StealMeter()
    sum(i * i for i in range(2_000_000))                  # let a few ticks pass
    share = meter.share()
    assert share is None or 0.0 <= share <= 1.0


def test_the_note_appears_from_five_percent():
    assert steal_note(None, "x") == steal_note(0.0, "x") == steal_note(0.049, "x") == ""
    note = steal_note(0.41, "training")
    assert note == "; the VM's host took 41% of the CPU time during training (CPU steal), so it ran slower than usual"


def test_the_main_job_reports_steal_at_start_and_end(tmp_path, monkeypatch, capsys):
    """A host taking 40% of every interval: the estimate's line and the held-out report's say so, and
    results.json keeps the share."""
    from bert_from_scratch.cli import main
    from test_cli import TINY

    clock = {"total": 0, "steal": 0}

    def jiffies(path="/proc/stat"):
        clock["total"] += 100
        clock["steal"] += 40
        return clock["total"], clock["steal"]

    monkeypatch.setattr(cpu_steal, "cpu_jiffies", jiffies)
    out = tmp_path / "run"
    assert main(["pretrain", *TINY, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "the VM's host took 40% of the CPU time during that measurement (CPU steal)" in printed
    assert "the VM's host took 40% of the CPU time during training (CPU steal)" in printed
    assert json.loads((out / "results.json").read_text())["cpu_steal_share"] == pytest.approx(0.4)
