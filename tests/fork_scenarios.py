"""Scenarios for tests/test_workers.py that need a fresh, single-threaded process.

The test process has usually imported torch by the time these tests run, and a process with
other threads never forks (compiler.workers.can_fork), so each scenario runs here, in its own
interpreter: ``python tests/fork_scenarios.py NAME`` prints one JSON object.
"""
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from compiler import pipeline as P                              # noqa: E402
from compiler.errors import DefcError                           # noqa: E402
from compiler.workers import MISSING, can_fork, map_forked      # noqa: E402

MODELS = ["llama-3.1-8b", "qwen3-8b", "llama-3.1-70b", "qwen3-235b-a22b", "gpt-oss-20b"]


def _square(x):
    time.sleep(0.01)
    return (os.getpid(), x * x)


def order():
    out = {}
    for jobs in (1, 2, 3):
        got = map_forked(list(range(20)), _square, jobs)
        out[str(jobs)] = {"values": [v for _, v in got], "processes": len({p for p, _ in got}),
                          "here": os.getpid() in {p for p, _ in got}}
    return out


def failure():
    def work(x):
        time.sleep(0.005)
        if x == 5:
            raise ValueError("bad item")
        return x + 100
    got = map_forked(list(range(12)), work, 3)
    return {"values": [None if v is MISSING else v for v in got]}


def crash():
    parent = os.getpid()

    def work(x):
        if os.getpid() != parent:
            os._exit(7)                         # a crash, not an exception
        time.sleep(0.05)                        # the worker gets items meanwhile
        return -x
    got = map_forked(list(range(10)), work, 2)
    return {"values": [None if v is MISSING else v for v in got]}


def same_definitions():
    opts = P.CompileOptions(quantization=["all"], out=os.environ["SCENARIO_OUT"])
    one = P.models_definitions(MODELS, opts, jobs=1)
    shared = P.models_definitions(MODELS, opts, jobs=3)
    instances_same = True
    for a, b in zip(one, shared):       # instances: evaluated again where a worker made the docs
        name = next(iter(a.instances))
        instances_same &= set(a.instances) == set(b.instances) and \
            a.instances[name][0].axes == b.instances[name][0].axes
    return {"slugs": [m.model.slug for m in shared],
            "docs_same": [m.docs for m in shared] == [m.docs for m in one],
            "servings_same": [m.servings for m in shared] == [m.servings for m in one],
            "from_workers": sum(m.texts is not None for m in shared),
            "instances_same": instances_same}


def bad_model():
    models = list(MODELS)
    models.insert(int(os.environ["SCENARIO_WHERE"]), os.environ["SCENARIO_CONFIG"])
    opts = P.CompileOptions(out=os.environ["SCENARIO_OUT"])
    errors = []
    for jobs in (1, 3):
        try:
            P.models_definitions(models, opts, jobs=jobs)
            errors.append(None)
        except DefcError as e:
            errors.append(str(e))
    return {"errors": errors}


if __name__ == "__main__":
    result = {"can_fork": can_fork()}
    result.update(globals()[sys.argv[1]]())
    print(json.dumps(result))
