"""Resource lanes and their clock (the offloaded run's queues): who is served when, in the order
SimPy's resources served them."""

from __future__ import annotations

from dataclasses import dataclass, field

from moesim.sim.resources import Clock, Lane


@dataclass(eq=False)
class Job:
    name: str
    seconds: float | None
    """None: dropped when its turn comes."""
    log: list = field(default_factory=list)

    def start(self, now_s: float) -> float | None:
        self.log.append(("start", self.name, now_s))
        return self.seconds

    def finish(self, start_s: float, end_s: float) -> None:
        self.log.append(("end", self.name, start_s, end_s))


def test_free_lane_serves_first_requester_then_by_priority_and_request_order():
    clock, log = Clock(), []
    lane = Lane(clock)
    lane.request(Job("background", 1.0, log), 0.0, priority=2)  # free lane: served at once, any priority
    lane.request(Job("prefetch-a", 1.0, log), 0.0, priority=1)
    lane.request(Job("demand", 1.0, log), 0.0, priority=0)
    lane.request(Job("prefetch-b", 1.0, log), 0.5, priority=1)
    clock.run_all()
    starts = [(name, t) for kind, name, t, *_ in log if kind == "start"]
    assert starts == [("background", 0.0), ("demand", 1.0), ("prefetch-a", 2.0), ("prefetch-b", 3.0)]


def test_dropped_job_takes_no_time():
    clock, log = Clock(), []
    lane = Lane(clock)
    for name, seconds in (("a", 2.0), ("dropped", None), ("b", 1.0)):
        lane.request(Job(name, seconds, log), 0.0)
    clock.run_all()
    assert [e for e in log if e[0] == "end"] == [("end", "a", 0.0, 2.0), ("end", "b", 2.0, 3.0)]
    assert ("start", "dropped", 2.0) in log


def test_ties_in_scheduling_order_and_run_before_stops_short():
    """Two lanes free at the same instant serve their next jobs in the order their releases were
    scheduled; ``run_before(t)`` leaves what happens at ``t`` itself for later."""
    clock, log = Clock(), []
    lanes = [Lane(clock), Lane(clock)]
    for i, lane in enumerate(lanes):
        lane.request(Job(f"first{i}", 1.0, log), 0.0)
    for i, lane in reversed(list(enumerate(lanes))):
        lane.request(Job(f"second{i}", 1.0, log), 0.0)
    clock.run_before(1.0)
    assert [e[1] for e in log] == ["first0", "first1"]
    clock.run_all()
    assert [e[1] for e in log if e[0] == "start"][2:] == ["second0", "second1"]
