"""GcControl: automatic GC off inside the loop, a collection at every Nth step only, back on after."""
import gc

from flip_scale.train.gc_control import GcControl


class Cycle:
    def __init__(self):
        self.me = self


def cycles_alive() -> int:
    return sum(1 for o in gc.get_objects() if type(o) is Cycle)


def test_collects_only_at_every_nth_step_and_restores_automatic_gc():
    assert gc.isenabled()
    gcc = GcControl(every_steps=5, full_every=0).start()
    try:
        assert not gc.isenabled()
        before = gc.get_count()[0]
        for step in range(1, 5):
            for _ in range(2000):      # far past the gen-0 threshold (700): no collection runs
                Cycle()
            assert gcc.step(step) == 0.0
        assert gc.get_count()[0] >= before + 4 * 2000 * 0.9
        assert cycles_alive() >= 8000  # unreachable cycles wait for the scheduled collection
        gcc.step(5)
        assert cycles_alive() == 0 and gcc.collections == 1 and gcc.collect_s > 0
    finally:
        gcc.stop()
    assert gc.isenabled() and gc.get_freeze_count() == 0


def test_every_nth_collection_is_full():
    gcc = GcControl(every_steps=1, full_every=2).start()
    seen = []
    cb = lambda phase, info: seen.append(info["generation"]) if phase == "start" else None  # noqa: E731
    gc.callbacks.append(cb)
    try:
        for step in range(1, 5):
            gcc.step(step)
    finally:
        gc.callbacks.remove(cb)
        gcc.stop()
    assert seen == [1, 2, 1, 2]


def test_zero_leaves_python_gc_alone():
    gcc = GcControl(every_steps=0).start()
    assert gc.isenabled() and gc.get_freeze_count() == 0
    assert gcc.step(10) == 0.0
    gcc.stop()
    assert gc.isenabled()
