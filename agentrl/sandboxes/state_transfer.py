"""Copying a REPL server's interpreter state into another sandbox: what makes `fork()` exact.

Runs inside the sandbox. Like `repl_server`, this file is standard library only and is handed to
the sandbox as source text (the server loads it as the module ``state_transfer`` before it
answers its first ping); the host never imports or runs it. The host relays the bytes from the
parent's server to the child's server without reading them: only sandboxed code unpickles them,
in the child, which belongs to the same trajectory as the parent.

A snapshot has two parts, each a pickle:

- ``meta`` (plain data): the files under the writable roots (work dir, /tmp, /dev/shm) with their
  modes, modification times and directory listing order; the current directory, the environment,
  the umask, ``sys.path``, the recursion limit; the modules imported since the server started, in
  import order; the cell counter and the cells' source lines (for tracebacks);
- ``live``: the cell namespace, random's state (and numpy's legacy global state when numpy is
  imported) and decimal's context, written by `StatePickler`, which copies what plain pickle
  cannot: functions, classes and lambdas defined in cells (their code objects through marshal,
  their closures with shared cells kept shared), modules (by name), and objects that are
  attributes of an imported module (``random.random``'s generator, ``dataclasses.MISSING``,
  ``sys.stdout``) by reference, so identity checks keep working in the copy. Sets are rebuilt in
  the parent's iteration order and checked.

The child restores ``meta`` first (files, then imports), then ``live``. What a snapshot cannot
hold (an open file, a generator, a thread still running, a raw file descriptor, a fifo, a module
imported from the work dir) is named in the answer instead, and the host falls back to replaying
the parent's calls. Restoring that cannot reproduce something exactly (a set whose order depends
on object addresses) says so, and the fork is marked inexact.
"""

import _pickle
import importlib
import io
import linecache
import marshal
import os
import stat
import struct
import sys
import threading
import types

FORMAT = 1
_LENGTH = struct.Struct(">Q")
# Types whose identity never matters: never looked up in the module-attribute table.
_VALUES = frozenset({int, float, complex, str, bytes, bool, type(None), tuple, range, slice})
# Types pickle already writes by reference (modules, classes, functions are handled apart).
_BY_NAME = frozenset({types.ModuleType, types.FunctionType, types.BuiltinFunctionType})
# Long lists, tuples, dicts and sets of only these are written by the plain C pickler in one go
# (the per-object hook costs more than the pickling itself).
_FLAT = frozenset({int, float, complex, str, bytes, bool, type(None)})
_FLAT_MIN_LENGTH = 256
_REORDER_SUFFIX = ".agentrl-reorder"


class Untransferable(Exception):
    """Something in the interpreter cannot be copied; the message names it."""


class _EmptyCell:
    """Marks a closure cell that holds no value yet (a name assigned later in the outer scope)."""


# ---- reconstructors (the child calls these while unpickling; they must stay module-level) ----


def _load_code(data):
    return marshal.loads(data)


def _make_cell():
    return types.CellType()


def _make_function(code, globals_, name, closure):
    return types.FunctionType(code, globals_, name, None, closure)


def _set_function_state(function, state):
    function.__defaults__ = state["defaults"]
    function.__kwdefaults__ = state["kwdefaults"]
    function.__qualname__ = state["qualname"]
    function.__module__ = state["module"]
    function.__doc__ = state["doc"]
    function.__annotations__ = state["annotations"]
    function.__dict__.update(state["dict"])
    for cell, value in zip(function.__closure__ or (), state["closure"]):
        if value is not _EmptyCell:
            cell.cell_contents = value


def _make_class(metaclass, name, bases, skeleton):
    return metaclass(name, bases, dict(skeleton))


def _set_class_state(cls, state):
    abstract = state.pop("__abstractmethods__", None)
    for key, value in state.items():
        setattr(cls, key, value)
    if abstract is not None:
        cls.__abstractmethods__ = abstract


def _make_type_variable(kind, name, constraints, options):
    return kind(name, *constraints, **options)


def _make_cached_property(function, attrname):
    import functools

    prop = functools.cached_property(function)
    prop.attrname = attrname
    return prop


# ---- what counts as the user's ----------------------------------------------------------------


def _under(path, roots):
    return any(path == root or path.startswith(root.rstrip("/") + "/") for root in roots)


def _user_module(module, roots):
    """Whether `module` was loaded from a file the sandboxed program could write."""
    path = getattr(module, "__file__", None)
    return isinstance(path, str) and _under(os.path.abspath(path), roots)


def _importable(obj):
    """Whether pickle can find `obj` again by its module and qualified name."""
    try:
        target = sys.modules.get(obj.__module__)
        for part in obj.__qualname__.split("."):
            if target is None or part == "<locals>":
                return False
            target = getattr(target, part, None)
    except Exception:  # a missing or odd __module__ or __qualname__
        return False
    return target is obj


class _ModuleIndex:
    """id(object) -> (module name, attribute) for the objects imported modules hold, and
    id(module dict) -> module name; so the copy refers to the child's own objects.

    Walking every attribute of every imported module costs more than pickling a small state, so
    the index is kept from one snapshot to the next: `refresh` walks only the modules imported,
    replaced or changed in size since it last ran (the server calls it once at start, through
    `prepare`). An attribute rebound to another object while its module's size stays the same
    is missed (the new object is copied by value, like any object no module holds); an entry
    gone stale is never used: `attribute` and `module_dict` check that the module still holds
    the object.
    """

    def __init__(self):
        self.seen = {}  # module name -> (id(module), number of attributes) when last walked
        self.objects, self.dicts = {}, {}

    def refresh(self):
        for name, module in list(sys.modules.items()):
            if type(module) is not types.ModuleType:
                continue
            mark = (id(module), len(module.__dict__))
            if self.seen.get(name) != mark:
                self.seen[name] = mark
                self._walk(name, module)

    def _walk(self, name, module):
        self.dicts[id(module.__dict__)] = name
        skip = _VALUES | _BY_NAME | {type}
        for attribute, value in list(module.__dict__.items()):
            kind = type(value)
            if kind in skip or issubclass(kind, type):
                continue  # values, and what pickle finds by name anyway (classes, functions)
            if self.attribute(value) is None:  # the first module that holds it, while it does
                self.objects[id(value)] = (name, attribute)

    def attribute(self, obj):
        """(module name, attribute) of a module that holds `obj`, or None."""
        reference = self.objects.get(id(obj))
        if reference is None:
            return None
        module = sys.modules.get(reference[0])
        return reference if module is not None and module.__dict__.get(reference[1]) is obj else None

    def module_dict(self, obj):
        """The name of the module whose `__dict__` is `obj`, or None."""
        name = self.dicts.get(id(obj))
        module = sys.modules.get(name) if name is not None else None
        return name if module is not None and module.__dict__ is obj else None


_MODULE_INDEX = _ModuleIndex()


class StatePickler(_pickle.Pickler):
    """A pickler for a cell namespace (see the module docstring for what it adds)."""

    def __init__(self, file, namespace, roots):
        super().__init__(file, protocol=5)
        self.namespace = namespace
        self.roots = roots
        _MODULE_INDEX.refresh()
        self.modules = _MODULE_INDEX
        self.sets = {}
        self.flat = {}
        self.alive = []

    def persistent_id(self, obj):
        kind = type(obj)
        if kind in _VALUES:
            if kind is tuple and len(obj) >= _FLAT_MIN_LENGTH and _flat(obj):
                return self._flat_container(obj)  # random's state is 625 numbers
            return None
        if obj is self.namespace:
            return ("namespace",)
        reference = self.modules.attribute(obj)
        if reference is not None:
            return ("attribute",) + reference
        if kind is dict:
            name = self.modules.module_dict(obj)
            if name is not None:
                return ("module_dict", name)
            if len(obj) >= _FLAT_MIN_LENGTH and _flat(obj) and _flat(obj.values()):
                return self._flat_container(obj)
        elif kind is list:
            if len(obj) >= _FLAT_MIN_LENGTH and _flat(obj):
                return self._flat_container(obj)
        elif kind is set or kind is frozenset:
            index = self.sets.get(id(obj))
            if index is not None:
                return ("set_ref", index)
            self.sets[id(obj)] = index = len(self.sets)
            self.alive.append(obj)  # a set made by a __reduce__ must not free its id mid-dump
            items = list(obj)
            if len(items) >= _FLAT_MIN_LENGTH and _flat(items):
                items = _pickle.dumps(items, protocol=5)
            return ("set", index, kind is frozenset, items, _table_size(obj))
        return None

    def _flat_container(self, obj):
        """A long list, tuple or dict of plain values, pickled apart in one C call (kept shared)."""
        index = self.flat.get(id(obj))
        if index is not None:
            return ("flat_ref", index)
        self.flat[id(obj)] = index = len(self.flat)
        self.alive.append(obj)
        return ("flat", index, _pickle.dumps(obj, protocol=5))

    def reducer_override(self, obj):
        kind = type(obj)
        if kind is types.FunctionType:
            return self._reduce_function(obj)
        if isinstance(obj, type):
            return self._reduce_class(obj)
        if kind is types.ModuleType:
            return self._reduce_module(obj)
        if kind is types.CodeType:
            return _load_code, (marshal.dumps(obj),)
        if kind is types.CellType:
            return _make_cell, ()
        if kind is property:
            return property, (obj.fget, obj.fset, obj.fdel, obj.__doc__)
        if kind is staticmethod or kind is classmethod:
            return kind, (obj.__func__,)
        if kind.__module__ == "functools" and kind.__name__ == "cached_property":
            return _make_cached_property, (obj.func, obj.attrname)
        if kind.__module__ == "typing" and kind.__name__ == "TypeVar" and not _importable(obj):
            # Pickled by name by default, which fails for one defined in a cell.
            options = {"bound": obj.__bound__, "covariant": obj.__covariant__, "contravariant": obj.__contravariant__}
            return _make_type_variable, (kind, obj.__name__, obj.__constraints__, options)
        return NotImplemented

    def _reduce_function(self, function):
        if _importable(function):
            return NotImplemented
        closure = function.__closure__ or ()
        state = {
            "defaults": function.__defaults__,
            "kwdefaults": function.__kwdefaults__,
            "qualname": function.__qualname__,
            "module": function.__module__,
            "doc": function.__doc__,
            "annotations": function.__annotations__,
            "dict": function.__dict__,
            "closure": tuple(_cell_value(cell) for cell in closure),
        }
        # The cells are created empty with the function and filled from its state, after the
        # function is in pickle's memo: a closure may refer to the function itself.
        args = (function.__code__, function.__globals__, function.__name__, closure or None)
        return _make_function, args, state, None, None, _set_function_state

    def _reduce_class(self, cls):
        if _importable(cls):
            return NotImplemented
        metaclass = type(cls)
        if metaclass is not type and metaclass.__qualname__ != "ABCMeta":
            raise Untransferable(
                "class %s has the metaclass %s, which cannot be copied"
                % (cls.__qualname__, metaclass.__qualname__)
            )
        slots = cls.__dict__.get("__slots__")
        slot_names = {slots} if isinstance(slots, str) else set(slots or ())
        skeleton = {"__module__": cls.__module__, "__qualname__": cls.__qualname__}
        if slots is not None:
            skeleton["__slots__"] = slots
        if "__orig_bases__" in cls.__dict__:
            # typing.Generic's __init_subclass__ reads it when the class is made.
            skeleton["__orig_bases__"] = cls.__dict__["__orig_bases__"]
        skip = {"__dict__", "__weakref__", "_abc_impl", "__module__", "__slots__"} | slot_names
        state = {key: value for key, value in cls.__dict__.items() if key not in skip}
        return _make_class, (metaclass, cls.__name__, cls.__bases__, skeleton), state, None, None, _set_class_state

    def _reduce_module(self, module):
        name = getattr(module, "__name__", None)
        if sys.modules.get(name) is not module:
            raise Untransferable("the module object %r is not an imported module" % (name,))
        if _user_module(module, self.roots):
            raise Untransferable("module %s was imported from %s" % (name, module.__file__))
        return importlib.import_module, (name,)


def _flat(values):
    return _FLAT.issuperset(map(type, values))


def _table_size(a_set):
    """How many slots the hash table of `a_set` has (its iteration order depends on it)."""
    # A small table lives inside the object (8 slots); a larger one is allocated apart, at 16
    # bytes a slot.
    extra = sys.getsizeof(a_set) - sys.getsizeof(type(a_set)())
    return extra // 16 if extra else 8


def _cell_value(cell):
    try:
        return cell.cell_contents
    except ValueError:
        return _EmptyCell


class StateUnpickler(_pickle.Unpickler):
    """Reads what `StatePickler` wrote, into the child's namespace."""

    def __init__(self, file, namespace):
        super().__init__(file)
        self.namespace = namespace
        self.sets = {}
        self.flat = {}
        self.set_items = []

    def persistent_load(self, pid):
        kind = pid[0]
        if kind == "namespace":
            return self.namespace
        if kind == "module_dict":
            return importlib.import_module(pid[1]).__dict__
        if kind == "attribute":
            return getattr(importlib.import_module(pid[1]), pid[2])
        if kind == "flat":
            made = self.flat[pid[1]] = _pickle.loads(pid[2])
            return made
        if kind == "flat_ref":
            return self.flat[pid[1]]
        if kind == "set_ref":
            if pid[1] not in self.sets:
                # A set that contains (through other objects) a reference to itself: an empty
                # placeholder now, filled when its own entry has been read.
                self.sets[pid[1]] = set()
            return self.sets[pid[1]]
        if kind == "set":
            _, index, frozen, items, table = pid
            if type(items) is bytes:
                items = _pickle.loads(items)
            if frozen:
                if index in self.sets:
                    raise _unpickling_error("a frozenset refers to itself")
                made = self.sets[index] = _frozenset_in_order(items, table)
            else:
                made = self.sets.setdefault(index, set())
                made.update(items)
            self.set_items.append((made, items, table))
            return made
        raise _unpickling_error("unknown persistent id %r" % (kind,))


def _unpickling_error(message):
    return _pickle.UnpicklingError(message)


def _frozenset_in_order(items, table):
    """A frozenset of `items` that iterates in their order when one of the ways a frozenset
    can be built gives that (it cannot be changed afterwards); else the plain one."""
    made = frozenset(items)
    if _same_order(made, items):
        return made
    for source in (set(items), _placed_set(items, table)):
        if source is not None:
            other = frozenset(source)  # copies the source's table, or refills one in its order
            if _same_order(other, items):
                return other
    return made


def _placed_set(items, table):
    made = set()
    return made if _place_in_table(made, items, table) else None


def _same_order(made, items):
    return len(made) == len(items) and all(a is b for a, b in zip(made, items))


def _fix_set_orders(set_items):
    """Make every rebuilt set iterate in the parent's order; describe the ones that cannot.

    Adding the elements in the parent's order usually gives the parent's order. When it does
    not (the parent's table is larger after removals, or elements collided), the set is built
    again in a table of the parent's size with `_place_in_table`.
    """
    problems = []
    for made, items, table in set_items:
        if _same_order(made, items):
            continue
        if type(made) is set:
            made.clear()
            if _place_in_table(made, items, table) and _same_order(made, items):
                continue
            made.clear()
            made.update(items)
        kinds = sorted({type(item).__name__ for item in items})
        problems.append(
            "a %s of %d %s object(s) iterates in another order than in the parent"
            % (type(made).__name__, len(items), "/".join(kinds))
        )
    return problems


# CPython's set probing (Objects/setobject.c): a key goes to the first free slot of its probe
# sequence. Only used to choose where the elements go; the result is checked by iterating.
_LINEAR_PROBES = 9
_PERTURB_SHIFT = 5
_SIZE_T = (1 << 64) - 1


def _probe_sequence(hash_value, mask):
    perturb = hash_value & _SIZE_T
    i = perturb & mask
    while True:
        yield i
        if i + _LINEAR_PROBES <= mask:
            for j in range(i + 1, i + _LINEAR_PROBES + 1):
                yield j
        perturb >>= _PERTURB_SHIFT
        i = (i * 5 + 1 + perturb) & mask


class _Placeholder:
    """A key that sits in one chosen slot of a set's table while the elements are added."""

    __slots__ = ("slot",)

    def __init__(self, slot):
        self.slot = slot

    def __hash__(self):
        return self.slot

    def __eq__(self, other):
        return self is other


def _place_in_table(made, items, table):
    """Fill the empty set `made` with `items` so that it iterates in their order, in a table
    of `table` slots; whether that was possible.

    Iteration follows slot order, so the elements need increasing slots, each on its probe
    sequence, and every slot an element probes before its own must be taken when it is added:
    by an element added before it, or by a placeholder removed at the end. `_choose_slots`
    finds such slots and an order to add the elements in; `_grow_table` gives the set a table
    of the parent's size first.
    """
    if len(items) > 50000:
        return False
    mask = table - 1
    hashes = [hash(item) for item in items]
    plan = _choose_slots(hashes, mask, strict=True) or _choose_slots(hashes, mask, strict=False)
    if plan is None:
        return False
    order, blockers, slots, direct = plan
    taken = set(slots) | blockers
    free = [slot for slot in range(table) if slot not in taken]
    seeds = [items[index] for index in direct[: table // 8 - 1]]
    leftover = _grow_table(made, table, free, seeds)
    if leftover is None:
        return False
    placeholders = [_Placeholder(slot) for slot in sorted(blockers)]
    if (len(made) + len(placeholders) + len(items) - len(seeds)) * 5 >= mask * 3:
        return False  # the table would grow again while the elements are added
    made.update(placeholders)
    planted = set(map(id, seeds))
    for index in order:
        if id(items[index]) not in planted:
            made.add(items[index])
    for placeholder in placeholders + leftover:
        made.discard(placeholder)
    return _table_size(made) == table


def _grow_table(made, table, free, seeds):
    """Grow the empty set `made` to a table of `table` slots, holding `seeds` (elements that
    sit in their first probe slot); return the placeholders it holds then, or None.

    A set grows when an addition makes its used-or-deleted slots reach 3/5 of the table, to the
    smallest power of two above four times its elements, putting them back in their first free
    probe slot. So `table // 8` keys go in (the seeds, made up with placeholders), and then
    placeholders are added and removed (which leaves deleted slots) until an addition makes the
    set grow to `table`; that placeholder stays, to be removed at the end. Every placeholder's
    hash is one of the `free` slots, so in the grown table none sits where an element goes or
    probes.
    """
    if table == 8:
        if seeds:
            return None
        return []
    keys = list(seeds) + [_Placeholder(slot) for slot in free[: table // 8 - 1 - len(seeds)]]
    if len(keys) != table // 8 - 1:
        return None
    made.update(keys)
    kept = keys[len(seeds) :]
    for slot in free:
        placeholder = _Placeholder(slot)
        made.add(placeholder)
        if _table_size(made) >= table:
            kept.append(placeholder)
            break
        made.discard(placeholder)
    return kept if _table_size(made) == table else None


def _choose_slots(hashes, mask, strict, budget=20000, candidates=32):
    """Slots for elements with these hashes, increasing in their order, each on its probe
    sequence: (order to add them in, slots placeholders must hold, the slots), or None.

    A depth-first search over each element's first `candidates` distinct probe slots. `strict`
    allows no placeholders: every slot an element probes before its own belongs to another
    element (then removing nothing leaves the table as the parent's would be when its set only
    grew). Gives up after `budget` steps.
    """
    count = len(hashes)
    # Each element's distinct probe slots, computed as the search needs them; the slots before
    # the chosen one are its path.
    options = [[] for _ in range(count)]
    sequences = [_probe_sequence(hash_value, mask) for hash_value in hashes]

    def option(k, choice):
        known = options[k]
        while len(known) <= choice:
            if len(known) >= candidates or len(known) > mask:
                return None
            for slot in sequences[k]:
                if slot not in known:
                    known.append(slot)
                    break
        return known[choice]

    slots = [-1] * count
    held = set()  # the slots of elements 0..k-1
    tried = [0] * count
    k, steps = 0, 0
    while 0 <= k < count:
        steps += 1
        if steps > budget:
            return None
        previous = slots[k - 1] if k else -1
        placed = False
        while True:
            choice = tried[k]
            slot = option(k, choice)
            if slot is None:
                break
            tried[k] += 1
            if slot <= previous or slot > mask - (count - 1 - k):
                continue
            # Strict: a probed slot below this one that no element holds can never be filled.
            if strict and any(p < slot and p not in held for p in options[k][:choice]):
                continue
            slots[k] = slot
            held.add(slot)
            placed = True
            break
        if placed:
            k += 1
            if k == count:
                plan = _order_for(slots, options, strict)
                if plan is not None:
                    return plan
                k -= 1  # a cycle (or an unheld slot): try the last element's next slot
                held.discard(slots[k])
        else:
            tried[k] = 0
            slots[k] = -1
            k -= 1
            if k >= 0:
                held.discard(slots[k])
    return None


def _order_for(slots, options, strict):
    """An order to add elements in so each finds the slots it probes before its own taken:
    (order, placeholder slots, slots), or None when there is none."""
    owner = {slot: index for index, slot in enumerate(slots)}
    after = {index: [] for index in range(len(slots))}
    waiting = [0] * len(slots)
    blockers = set()
    paths = [options[index][: options[index].index(slot)] for index, slot in enumerate(slots)]
    for index, path in enumerate(paths):
        for probed in path:
            if probed in owner:
                after[owner[probed]].append(index)
                waiting[index] += 1
            elif strict:
                return None
            else:
                blockers.add(probed)
    ready = [index for index in range(len(slots)) if not waiting[index]]
    order = []
    while ready:
        index = ready.pop()
        order.append(index)
        for later in after[index]:
            waiting[later] -= 1
            if not waiting[later]:
                ready.append(later)
    if len(order) != len(slots):
        return None
    direct = [index for index in order if not paths[index]]
    return order, blockers, slots, direct


# ---- files ------------------------------------------------------------------------------------


def _collect_files(roots, problems):
    """The files under `roots`: {"roots": [(root, mode, mtime_ns)], "listings": {directory:
    names in listing order}, "entries": {path: (kind, mode, mtime_ns, data)}}."""
    tree = {"roots": [], "listings": {}, "entries": {}}
    inodes = {}
    for root in roots:
        if not os.path.isdir(root):
            continue
        info = os.lstat(root)
        tree["roots"].append((root, info.st_mode, info.st_mtime_ns))
        stack = [root]
        while stack:
            directory = stack.pop()
            names = tree["listings"][directory] = os.listdir(directory)
            for name in names:
                path = os.path.join(directory, name)
                try:
                    entry = _read_entry(path, inodes)
                except OSError as exc:
                    problems.append("cannot read %s: %s" % (path, _short(exc)))
                    continue
                if entry is None:
                    problems.append("%s is a special file (fifo, socket or device)" % path)
                    continue
                tree["entries"][path] = entry
                if entry[0] == "dir":
                    stack.append(path)
    return tree


def _read_entry(path, inodes):
    info = os.lstat(path)
    mode, mtime = info.st_mode, info.st_mtime_ns
    if stat.S_ISDIR(mode):
        return ("dir", mode, mtime, None)
    if stat.S_ISLNK(mode):
        return ("symlink", mode, mtime, os.readlink(path))
    if not stat.S_ISREG(mode):
        return None
    key = (info.st_dev, info.st_ino)
    if info.st_nlink > 1 and key in inodes:
        return ("hardlink", mode, mtime, inodes[key])
    inodes[key] = path
    with open(path, "rb") as f:
        return ("file", mode, mtime, f.read())


def _clear(directory):
    for name in os.listdir(directory):
        path = os.path.join(directory, name)
        if os.path.isdir(path) and not os.path.islink(path):
            _clear(path)
            os.rmdir(path)
        else:
            os.unlink(path)


def _restore_files(tree, roots, problems, empty=()):
    """Make the files under `roots` what `tree` describes: contents, modes, times, listing order.
    The roots in `empty` are known to be empty (they are not listed and cleared first)."""
    listings, entries = tree["listings"], tree["entries"]
    hardlinks, directories = [], []

    def fill(directory):
        # Newest first: tmpfs lists the most recently created entry first; `_reorder` fixes
        # the order on kernels that do otherwise.
        for name in reversed(listings.get(directory, ())):
            path = os.path.join(directory, name)
            if path not in entries:
                continue
            kind, mode, mtime, data = entries[path]
            if kind == "dir":
                os.mkdir(path)
                fill(path)
                directories.append((path, mode, mtime))
            elif kind == "symlink":
                os.symlink(data, path)
                os.utime(path, ns=(mtime, mtime), follow_symlinks=False)
            elif kind == "hardlink":
                hardlinks.append((data, path))
            else:
                with open(path, "wb") as f:
                    f.write(data)
                os.chmod(path, stat.S_IMODE(mode))
                os.utime(path, ns=(mtime, mtime))

    for root in roots:
        if root not in empty and os.path.isdir(root):
            _clear(root)
    for root, _, _ in tree["roots"]:
        fill(root)
    for target, path in hardlinks:
        os.link(target, path)
    for directory, names in listings.items():
        if len(names) < 2:
            continue  # one order only (every entry was made, or making it raised)
        if os.listdir(directory) != names and not _reorder(directory, names):
            problems.append("the entries of %s are listed in another order than in the parent" % directory)
    # Directory modes and times last (creating entries changes them), children before parents.
    for path, mode, mtime in directories:
        os.chmod(path, stat.S_IMODE(mode))
        os.utime(path, ns=(mtime, mtime))
    for root, mode, mtime in tree["roots"]:
        try:
            os.chmod(root, stat.S_IMODE(mode))
            os.utime(root, ns=(mtime, mtime))
        except OSError:
            pass  # a root that belongs to another user (/tmp in a container) keeps its own


def _reorder(directory, names):
    """Rename entries in place until `directory` lists them as `names` (a rename moves an entry
    to one end of the listing; which end depends on the kernel). Whether it worked."""
    for sequence in (list(reversed(names)), list(names)):
        for name in sequence:
            path = os.path.join(directory, name)
            os.rename(path, path + _REORDER_SUFFIX)
            os.rename(path + _REORDER_SUFFIX, path)
        if os.listdir(directory) == names:
            return True
    return False


# ---- process-wide state -----------------------------------------------------------------------


def _running_threads(server):
    own = {server.main_ident}
    return [
        thread.name
        for thread in threading.enumerate()
        if thread.ident not in own and not thread.name.startswith(server.capture_thread_prefix)
    ]


def _extra_fds(server):
    """File descriptors opened by cells and still open (they cannot be copied)."""
    names = os.listdir("/proc/self/fd")
    found = []
    for name in names:
        fd = int(name)
        if fd in server.baseline_fds:
            continue
        try:
            target = os.readlink("/proc/self/fd/%d" % fd)
        except OSError:
            continue  # the descriptor of the listing itself, closed by now
        found.append("file descriptor %d is open (%s)" % (fd, target))
    return found


def _live_extras():
    """Generator and context state kept in modules rather than in the namespace."""
    extras = {}
    if "random" in sys.modules:
        extras["random"] = sys.modules["random"].getstate()
    if "decimal" in sys.modules:
        extras["decimal"] = sys.modules["decimal"].getcontext()
    if "numpy.random" in sys.modules:
        extras["numpy"] = sys.modules["numpy.random"].get_state()
    if "warnings" in sys.modules:
        extras["warnings"] = list(sys.modules["warnings"].filters)
    return extras


def _apply_live_extras(extras):
    if "random" in extras:
        importlib.import_module("random").setstate(extras["random"])
    if "decimal" in extras:
        importlib.import_module("decimal").setcontext(extras["decimal"])
    if "numpy" in extras:
        importlib.import_module("numpy.random").set_state(extras["numpy"])
    if "warnings" in extras:
        warnings = importlib.import_module("warnings")
        warnings.filters[:] = extras["warnings"]
        warnings._filters_mutated()


def _logging_handlers():
    """Loggers with handlers: their streams and locks cannot be copied, and a copy without them
    would print differently."""
    logging = sys.modules.get("logging")
    if logging is None:
        return []
    loggers = [logging.root] + list(logging.Logger.manager.loggerDict.values())
    return [
        "logging is configured (the %s logger has handlers)" % logger.name
        for logger in loggers
        if isinstance(logger, logging.Logger) and logger.handlers
    ]


def _dump_live(live, namespace, roots):
    buffer = io.BytesIO()
    StatePickler(buffer, namespace, roots).dump(live)
    return buffer.getvalue()


def _why_not_picklable(namespace, roots):
    """Which names of the namespace cannot be copied, one line each (slow; only on failure)."""
    found = []
    for name, value in list(namespace.items()):
        if name == "__builtins__":
            continue
        try:
            StatePickler(io.BytesIO(), namespace, roots).dump(value)
        except Exception as exc:
            found.append("%s: %s" % (name, _short(exc)))
    return found


def _short(exc):
    text = "%s: %s" % (type(exc).__name__, exc)
    return text if len(text) <= 300 else text[:300] + "..."


# ---- the two operations -----------------------------------------------------------------------


def prepare():
    """Called once by the server at start, after its preloaded imports: index the modules'
    attributes now, so that the first snapshot does not pay for it."""
    _MODULE_INDEX.refresh()



def snapshot(server):
    """The parent's side: ({"ok": True}, blob) or ({"untransferable": [reasons]}, b"")."""
    roots = server.state_roots
    problems = ["a thread started by a cell is still running (%s)" % name for name in _running_threads(server)]
    problems += _extra_fds(server)
    problems += _logging_handlers()
    modules = []
    for name, module in list(sys.modules.items()):
        if name in server.baseline_modules or not isinstance(module, types.ModuleType):
            continue
        if _user_module(module, roots):
            problems.append("module %s was imported from %s" % (name, module.__file__))
        modules.append(name)
    files = _collect_files(roots, problems)
    if problems:
        # Name the variables too (an open file shows above as a descriptor, here by its name).
        return {"untransferable": problems + _why_not_picklable(server.namespace, roots)}, b""
    meta = {
        "format": FORMAT,
        "python": sys.version,
        "files": files,
        "cwd": os.getcwd(),
        "environ": dict(os.environ),
        "umask": _umask(),
        "path": list(sys.path),
        "recursion_limit": sys.getrecursionlimit(),
        "modules": modules,
        "cells": server.cells,
        "lines": {key: value for key, value in linecache.cache.items() if key.startswith(server.cell_prefix)},
    }
    live = {"namespace": dict(server.namespace), "extras": _live_extras()}
    try:
        live_blob = _dump_live(live, server.namespace, roots)
    except Exception as exc:
        reasons = _why_not_picklable(server.namespace, roots) or [_short(exc)]
        return {"untransferable": reasons}, b""
    meta_blob = _pickle.dumps(meta, protocol=5)
    return {"ok": True}, _LENGTH.pack(len(meta_blob)) + meta_blob + live_blob


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def restore(server, blob):
    """The child's side: replace this server's state with the snapshot's.

    Returns {"ok": True, "inexact": [what differs from the parent]}; raises on anything that
    makes the copy unusable (the host then discards this sandbox).
    """
    (meta_len,) = _LENGTH.unpack_from(blob)
    meta = _pickle.loads(blob[_LENGTH.size : _LENGTH.size + meta_len])
    if meta.get("format") != FORMAT or meta.get("python") != sys.version:
        raise RuntimeError("the snapshot was made by another interpreter (%s)" % meta.get("python"))
    problems = []
    # A fork's server that has run nothing yet still has the empty roots it started with.
    empty = server.empty_roots if server.untouched else ()
    server.untouched = False
    _restore_files(meta["files"], server.state_roots, problems, empty)
    os.chdir(meta["cwd"])
    if dict(os.environ) != meta["environ"]:  # a fork's server starts with the parent's first one
        os.environ.clear()
        os.environ.update(meta["environ"])
    os.umask(meta["umask"])
    sys.path[:] = meta["path"]
    sys.setrecursionlimit(meta["recursion_limit"])
    for name in meta["modules"]:
        if name not in sys.modules:
            importlib.import_module(name)
    unpickler = StateUnpickler(io.BytesIO(memoryview(blob)[_LENGTH.size + meta_len :]), server.namespace)
    live = unpickler.load()
    server.namespace.clear()
    server.namespace.update(live["namespace"])
    _apply_live_extras(live["extras"])
    server.cells = meta["cells"]
    linecache.cache.update(meta["lines"])
    problems += _fix_set_orders(unpickler.set_items)
    return {"ok": True, "inexact": problems}
