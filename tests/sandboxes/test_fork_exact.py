"""Exact forks on both backends: the fork holds the parent's interpreter state (values drawn at
random, clocks read, functions, classes, files, random's state), stays isolated from it, and
falls back to replaying the parent's calls, saying why, when something cannot be copied."""

from __future__ import annotations

import re
import time

import pytest

from agentrl.sandboxes import SandboxClosedError, SandboxError, SandboxPool

from .conftest import SMALL

# Everything the parent builds; printed as reprs that do not contain memory addresses.
BUILD_STATE = """\
import random, time, dataclasses, os
drawn = random.random()
clock = time.time()
table = {'drawn': drawn, 'clock': clock, 'tags': {'alpha', 'beta', 'gamma'}, 'nested': [1, (2, 3)]}
def scaled(n, k=drawn):
    return n * k
class Account:
    rate = 0.5
    def __init__(self, owner):
        self.owner = owner
    def interest(self, amount):
        return amount * self.rate
@dataclasses.dataclass
class Point:
    x: int
    y: float = drawn
account = Account('ada')
point = Point(3)
shift = lambda v: v + clock
def make_counter():
    count = 0
    def bump():
        nonlocal count
        count += 1
        return count
    def peek():
        return count
    return bump, peek
bump, peek = make_counter()
bump(); bump()
os.makedirs('data/deep')
open('notes.txt', 'w').write('drawn %r' % drawn)
open('data/deep/blob.bin', 'wb').write(bytes(range(256)) * 4)
open('/tmp/scratch.txt', 'w').write('scratch')
"""

SHOW_STATE = """\
print(repr(drawn), repr(clock))
print(table)
print(scaled(2), account.owner, account.interest(10), point, shift(1), peek())
print(dataclasses.fields(point)[1].default == drawn, isinstance(account, Account))
print(sorted(os.listdir('.')), open('notes.txt').read(), open('/tmp/scratch.txt').read())
print(open('data/deep/blob.bin', 'rb').read() == bytes(range(256)) * 4)
"""


# What agent code commonly holds: ABCs, properties, dataclasses, named tuples, generics,
# decorators, recursion, library objects in mid-iteration, aliasing and cycles.
LIBRARY_OBJECTS = r'''
import abc, collections, dataclasses, datetime, decimal, fractions, functools, io, itertools
import heapq, math, random, re, statistics, string, typing
counter = 0
def bump():
    global counter
    counter += 1
    return counter
class Shape(abc.ABC):
    @abc.abstractmethod
    def area(self): ...
class Square(Shape):
    def __init__(self, s): self.s = s
    def area(self): return self.s ** 2
    @property
    def side(self): return self.s
    @classmethod
    def unit(cls): return cls(1)
    @staticmethod
    def name(): return 'square'
    @functools.cached_property
    def diag(self): return self.s * math.sqrt(2)
class Base:
    def hello(self): return 'base'
class Child(Base):
    def hello(self): return 'child+' + super().hello()
    class Inner:
        v = 7
@dataclasses.dataclass(frozen=True, slots=True)
class Frozen:
    a: int
    b: tuple = (1, 2)
Pt = collections.namedtuple('Pt', 'x y')
class TPt(typing.NamedTuple):
    x: int
    y: int = 5
T = typing.TypeVar('T')
class Stack(typing.Generic[T]):
    def __init__(self): self.items = []
def deco(f):
    @functools.wraps(f)
    def wrapper(*a): return ('wrapped', f(*a))
    return wrapper
@deco
def plus(a, b=2): return a + b
def fact(n): return 1 if n < 2 else n * fact(n - 1)
def even(n): return n == 0 or odd(n - 1)
def odd(n): return n != 0 and even(n - 1)
part = functools.partial(plus, 10)
pat = re.compile(r'(\d+)-(\w+)', re.I)
when = datetime.datetime(2024, 5, 1, 12, 30)
dec = decimal.Decimal('1.10') + decimal.Decimal('2.205')
decimal.getcontext().prec = 6
frac = fractions.Fraction(3, 7)
dq = collections.deque([1, 2, 3], maxlen=5)
cnt = collections.Counter('mississippi')
dd = collections.defaultdict(lambda: 'missing')
dd['a'] = 1
od = collections.OrderedDict(b=2, a=1)
it = iter([10, 20, 30]); next(it)
count = itertools.count(5); next(count)
buf = io.StringIO('line1\nline2\n'); buf.readline()
err = ValueError('bad', 3)
sq = Square(3); _ = sq.diag
fz = Frozen(4)
st = Stack(); st.items.append(1)
heap = [5, 1, 8, 3]; heapq.heapify(heap)
rng = random.Random(42); rng.random()
matrix = [[i * j for j in range(4)] for i in range(3)]
nested = {'k': [{'deep': {1, 2, 3}}], 't': (1, [2, 3])}
alias_a = [1, 2]; alias_b = alias_a
cyc = []; cyc.append(cyc)
big = {i: str(i) for i in range(1000)}
letters = string.ascii_letters
stats = statistics.mean([1, 2, 3, 4])
'''
SHOW_LIBRARY_OBJECTS = r'''
print(bump(), counter, sq.area(), sq.side, Square.unit().area(), Square.name(), round(sq.diag, 4))
print(isinstance(sq, Shape))
print(Child().hello(), Child.Inner.v, fz, Pt(1, 2), TPt(3), type(st).__name__, st.items)
print(plus(1), plus.__name__, plus.__wrapped__(1, 1), fact(10), even(10), odd(7), part(5))
print(pat.findall('12-ab 3-CD'), when.isoformat(), dec, decimal.getcontext().prec, decimal.Decimal(1) / 7, frac * 2)
print(dq, cnt.most_common(2), dd['zz'], list(od), next(it), next(count), buf.readline().strip(), repr(err))
print(heapq.heappop(heap), rng.random(), matrix, nested, alias_a is alias_b, cyc[0] is cyc, len(big), big[999], stats)
try:
    Shape()
except TypeError as e:
    print('abstract ok')
try:
    fz.a = 3
except dataclasses.FrozenInstanceError:
    print('frozen ok')
def boom(): return 1 / 0
'''


def test_fork_holds_the_parents_exact_state(sandbox):
    built = sandbox.run(BUILD_STATE)
    assert built.ok, built.stderr
    before = sandbox.run(SHOW_STATE)
    assert before.ok, before.stderr
    with sandbox.fork() as child:
        assert child.fork_exact, child.fork_note
        assert child.fork_note == ""
        after = child.run(SHOW_STATE)
        assert after.ok, after.stderr
        assert after.stdout == before.stdout
        # random's generator state came along: the next draws are the same number.
        next_draw = "print(repr(random.random()))"
        assert child.run(next_draw).stdout == sandbox.run(next_draw).stdout
        # A closure's shared cell stays shared: both functions see the same counter.
        assert child.run("bump()\nprint(peek())").stdout == "3\n"


def test_common_python_objects_are_copied_exactly(sandbox):
    built = sandbox.run(LIBRARY_OBJECTS)
    assert built.ok, built.stderr
    with sandbox.fork() as child:
        assert child.fork_exact, child.fork_note
        expected = sandbox.run(SHOW_LIBRARY_OBJECTS)
        assert expected.ok and "abstract ok" in expected.stdout and "frozen ok" in expected.stdout
        assert child.run(SHOW_LIBRARY_OBJECTS).stdout == expected.stdout
        # Tracebacks through copied functions show the parent's cell and line.
        failing = "def twice():\n    return fact('x')\ntwice()"
        assert child.run(failing).stderr == sandbox.run(failing).stderr


def test_the_forks_later_writes_stay_its_own(sandbox):
    sandbox.run("items = [1]\nopen('shared.txt', 'w').write('parent')")
    with sandbox.fork() as child:
        assert child.fork_exact
        child.run("items.append('child')\nopen('shared.txt', 'w').write('child')\nopen('mine.txt', 'w').write('x')")
        sandbox.run("items.append('parent')\nopen('parents.txt', 'w').write('p')")
        assert child.run("import os\nprint(items, open('shared.txt').read(), sorted(os.listdir('.')))").stdout == (
            "[1, 'child'] child ['mine.txt', 'shared.txt']\n"
        )
        assert sandbox.run("import os\nprint(items, open('shared.txt').read(), sorted(os.listdir('.')))").stdout == (
            "[1, 'parent'] parent ['parents.txt', 'shared.txt']\n"
        )
        assert sandbox.read_file("shared.txt") == b"parent"
        assert child.read_file("shared.txt") == b"child"


def test_the_fork_is_another_sandbox_that_cannot_see_the_parents_processes(sandbox):
    namespaces = "import os\nprint(os.readlink('/proc/self/ns/pid'), os.readlink('/proc/self/ns/mnt'))"
    sandbox.run("import os")
    with sandbox.fork() as child:
        assert child.fork_exact
        parent_ns = sandbox.run(namespaces).stdout.split()
        child_ns = child.run(namespaces).stdout.split()
        assert len(parent_ns) == len(child_ns) == 2
        assert parent_ns[0] != child_ns[0] and parent_ns[1] != child_ns[1]
        # Only the child's own init and server are visible to it.
        listed = child.run("print(sorted(int(p) for p in os.listdir('/proc') if p.isdigit()))").stdout
        assert len(eval(listed)) <= 2


def test_sets_iterate_in_the_parents_order(sandbox):
    # Removals leave a large table with few elements, and string sets collide: adding the
    # elements again in their order gives another order unless the table is rebuilt.
    code = (
        "kept = set(range(40))\n"
        "for i in range(40):\n"
        "    if i not in (1, 8, 17, 33):\n"
        "        kept.discard(i)\n"
        "words = {'k%d' % i for i in range(0, 3000, 7)}\n"
        "frozen = frozenset({'a', 'b', 'c', 'zz', 'q'})\n"
    )
    sandbox.run(code)
    show = "print(list(kept), list(words)[:20], list(frozen))"
    before = sandbox.run(show).stdout
    with sandbox.fork() as child:
        assert child.fork_exact, child.fork_note
        assert child.run(show).stdout == before


@pytest.mark.parametrize(
    "holder, expected",
    [
        ("handle = open('kept.txt')",
         ["handle: TypeError: cannot pickle '_io.TextIOWrapper' object", "file descriptor"]),
        ("numbers = (i * i for i in range(5))\nnext(numbers)",
         ["numbers: TypeError: cannot pickle 'generator' object"]),
    ],
    ids=["open-file", "generator"],
)
def test_what_cannot_be_copied_makes_the_fork_replay(sandbox, holder, expected):
    sandbox.write_file("kept.txt", "line one\nline two\n")
    assert sandbox.run(holder).ok
    with sandbox.fork() as child:
        assert not child.fork_exact
        assert child.fork_note.startswith("replayed 2 call(s) instead of copying the state: ")
        for part in expected:
            assert part in child.fork_note
        # The replayed fork has the object again, in the same position.
        check = "print(handle.readline())" if "handle" in holder else "print(list(numbers))"
        assert child.run(check).stdout == sandbox.run(check).stdout


def test_fork_of_a_closed_sandbox_raises(make_sandbox):
    sandbox = make_sandbox()
    sandbox.close()
    with pytest.raises(SandboxClosedError, match="closed"):
        sandbox.fork()


def test_fork_of_a_sandbox_whose_interpreter_died_raises_one_clear_error(sandbox):
    # The call returns, then a timer thread of the cell ends the interpreter: it dies between
    # calls, so nothing has told the caller yet.
    result = sandbox.run("import os, threading\nx = 1\nthreading.Timer(0.2, os._exit, (3,)).start()")
    assert result.ok
    deadline = time.monotonic() + 60  # a bound for a hung test; the loop ends at the death
    while sandbox.ping(timeout=1) and time.monotonic() < deadline:
        time.sleep(0.1)
    # ping noticed the death and forgot the interpreter: the state is empty, the fork is fresh.
    with sandbox.fork() as child:
        assert child.fork_exact and child.run("print('x' in globals())").stdout == "False\n"
    # Dying unnoticed (no ping in between) is the error case.
    sandbox.run("import os, threading\ny = 2\nthreading.Timer(0.2, os._exit, (3,)).start()")
    _wait_until_the_interpreter_exits(sandbox)
    died = "cannot fork this .* sandbox: its interpreter exited .* after its last call"
    with pytest.raises(SandboxError, match=died):
        sandbox.fork()
    assert sandbox.run("print('y' in globals())").stdout == "False\n"  # a fresh interpreter


def _wait_until_the_interpreter_exits(sandbox, limit: float = 60.0) -> None:
    """Watch the interpreter's process (bwrap) or container (docker) from the host, without a
    call or a ping that would tell the sandbox about the death."""
    def exited() -> bool:
        process = getattr(sandbox, "_process", None)
        if process is not None:
            return process.poll() is not None
        container = sandbox._container
        container.reload()
        return container.status != "running"

    deadline = time.monotonic() + limit
    while not exited():
        assert time.monotonic() < deadline, "the interpreter did not exit"
        time.sleep(0.05)


def test_forks_copy_into_warm_pool_sandboxes(backend):
    with SandboxPool(size=3, backend=backend, **SMALL) as pool:
        with pool.sandbox() as parent:
            parent.run("import random\nvalue = random.random()")
            deadline = time.monotonic() + 30
            while pool.stats()["sandbox/pool_idle"] < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
            starts = pool.stats()["sandbox/starts"]
            child = parent.fork()
            try:
                assert child.fork_exact
                assert child.run("print(repr(value))").stdout == parent.run("print(repr(value))").stdout
                assert pool.stats()["sandbox/pool_in_use"] == 2
                assert pool.stats()["sandbox/starts"] == starts  # taken warm, not started
            finally:
                pool.release(child)


def test_a_forked_tool_env_continues_from_the_same_random_draw(backend):
    from agentrl.envs.tool_env import Task, ToolEnv
    from agentrl.tools.python import PythonTool

    env = ToolEnv(
        tools=[PythonTool(backend=backend, timeout=5.0, memory_mb=128, pids=32)],
        tasks=[Task("Draw a number.")],
        reward_fn=lambda task, episode: 0.0,
        max_turns=4,
        call_timeout=60.0,
    )
    env.reset(seed=0)
    first, *_ = env.step("<python>import random\nx = random.random()\nprint(repr(x))</python>")
    drawn = re.search(r"0\.\d+", first).group()
    twin = env.fork()
    try:
        again, *_ = twin.step("<python>print(repr(x))</python>")
        assert re.search(r"0\.\d+", again).group() == drawn
        draw = "<python>print(repr(random.random()))</python>"
        ours = re.search(r"0\.\d+", env.step(draw)[0]).group()
        theirs = re.search(r"0\.\d+", twin.step(draw)[0]).group()
        assert ours == theirs
        assert twin.tools["python"].sandbox.fork_exact
    finally:
        twin.close()
        env.close()
