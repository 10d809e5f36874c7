"""The run's garbage collector (analysis.stages.memory.collector_on_run_objects): inside a run it walks only what the
run made, and everything it set aside is collectable again afterwards."""
import gc
import weakref

from analysis.stages.memory import collector_on_run_objects


class Node:
    def __init__(self):
        self.other = self


def test_the_collector_walks_the_runs_objects_and_gives_back_what_it_froze():
    before = Node()                                # a cycle alive when the run starts
    before_ref = weakref.ref(before)
    assert gc.get_freeze_count() == 0
    with collector_on_run_objects():
        assert gc.get_freeze_count() > 1000        # the imports' objects and ``before`` are set aside
        inside = Node()
        inside_ref = weakref.ref(inside)
        del inside
        gc.collect()
        assert inside_ref() is None                # a cycle the run made and dropped is collected in the run
        del before
        gc.collect()
        assert before_ref() is not None            # frozen: not walked while the run goes on
    assert gc.get_freeze_count() == 0
    gc.collect()
    assert before_ref() is None                    # unfrozen: collected once the run is over
