"""liger/bench/serve.py: the largest-batch search (doubling + bisection) against injected memory checks, and a
probe's handling of out-of-memory errors."""

import math
import time

import pytest
import torch

from liger.bench.serve import find_max_batch, probe


def counting(limit):
    tried = []

    def fits(batch):
        tried.append(batch)
        return batch <= limit

    return fits, tried


@pytest.mark.parametrize("limit", [1, 2, 7, 100, 1000, 65535])
def test_search_finds_the_exact_boundary(limit):
    fits, tried = counting(limit)
    found = find_max_batch(fits, start=1, max_batch=1 << 20, tolerance=0)
    assert found == dict(max_batch=limit, first_failing=limit + 1, stopped="bracket")
    assert len(tried) <= 2 * math.ceil(math.log2(limit + 1)) + 2  # logarithmic, not a scan
    assert len(set(tried)) == len(tried)  # nothing probed twice


def test_search_tolerance_cap_start_and_nothing_fits():
    fits, tried = counting(1000)
    found = find_max_batch(fits, start=1, max_batch=1 << 20, tolerance=0.05)
    assert found["stopped"] == "bracket" and found["max_batch"] <= 1000 < found["first_failing"]
    assert found["first_failing"] - found["max_batch"] <= 0.05 * found["max_batch"]
    assert find_max_batch(counting(1000)[0], max_batch=300)["stopped"] == "max_batch"
    assert find_max_batch(counting(1000)[0], max_batch=300)["max_batch"] == 300
    # a start that does not fit: bisected downwards to the exact boundary
    assert find_max_batch(counting(5)[0], start=64, tolerance=0) == dict(max_batch=5, first_failing=6,
                                                                        stopped="bracket")
    assert find_max_batch(counting(0)[0], start=4, tolerance=0) == dict(max_batch=0, first_failing=1,
                                                                       stopped="bracket")


def test_search_stops_at_its_deadline_with_a_lower_bound():
    def slow(batch):
        time.sleep(0.02)
        return batch <= 10**6

    found = find_max_batch(slow, max_batch=1 << 30, deadline=time.time() + 0.1)
    assert found["stopped"] == "time" and 1 <= found["max_batch"] < 10**6


class _State:
    def __init__(self, nbytes, fail_at_step=None):
        self.bytes, self.fail_at_step, self.steps = nbytes, fail_at_step, 0

    def step(self, token, position):
        self.steps += 1
        if self.steps == self.fail_at_step:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    def nbytes(self):
        return self.bytes

    def captured(self):
        return True

    def close(self):
        self.closed = True


def test_probe_counts_a_footprint_over_the_limit_and_an_oom_as_not_fitting():
    cpu = torch.device("cpu")
    ok = probe(lambda: _State(100), 4, 32, 10, steps=2, warmup=1, device=cpu, base_bytes=50, limit_bytes=150)
    assert ok["fits"] and ok["footprint_bytes"] == 150 and len(ok["latency_s_runs"]) == 2
    assert ok["tokens_per_s"] == pytest.approx(4 / ok["latency_s"])
    over = probe(lambda: _State(101), 4, 32, 10, steps=2, warmup=1, device=cpu, base_bytes=50, limit_bytes=150)
    assert not over["fits"] and "over the limit" in over["error"]
    states = []

    def make():
        states.append(_State(1, fail_at_step=2))
        return states[-1]

    oom = probe(make, 4, 32, 10, steps=2, warmup=1, device=cpu, base_bytes=0, limit_bytes=None)
    assert oom == dict(batch_size=4, fits=False, error="out of memory") and states[0].closed

    def broken():
        raise RuntimeError("shape mismatch")  # a bug is not a memory limit: it is raised

    with pytest.raises(RuntimeError, match="shape mismatch"):
        probe(broken, 4, 32, 10, steps=2, warmup=1, device=cpu, base_bytes=0, limit_bytes=None)
