"""Both ends of the candidate proxy (inside the sandbox). Standard library only.

The *candidate process* runs the prelude and the program, then :func:`serve` answers requests (call, get/set an
attribute or item, len, iter, isinstance, str) on the objects it holds. The *test process* holds :class:`Remote`:
the program's names become :class:`Handle` proxies, and every call crosses the process boundary and returns plain
data rebuilt by :func:`_sandbox_wire.decode`. Nothing the program does to its own interpreter reaches the test
process, which alone writes verdicts, on a pipe the candidate never holds.
"""

import builtins
import sys

import _sandbox_wire as wire

_NO_RAISE = ("SystemExit", "KeyboardInterrupt", "GeneratorExit")  # these would end the test process itself


class CandidateGone(BaseException):
    """The candidate process ended (or broke the protocol) while the tests needed it. ``BaseException``, so that a
    test's ``except Exception`` or ``assertRaises(Exception)`` cannot mistake it for the program's behaviour."""


# ------------------------------------------------------------------------------------------------ candidate side
class _Objects:
    def __init__(self):
        self.by_hid, self.hid_of = {}, {}

    def handle(self, obj):
        name = named(obj)
        if name is not None:  # a standard-library class or function: the test process looks it up itself
            return ["N", name]
        hid = self.hid_of.get(id(obj))
        if hid is None:
            hid = len(self.by_hid) + 1
            self.by_hid[hid], self.hid_of[id(obj)] = obj, hid
        flags = "c" if callable(obj) else ""
        if isinstance(obj, type):
            flags += "t"
            if issubclass(obj, BaseException):
                base = next((b.__name__ for b in obj.__mro__ if b.__module__ == "builtins" and not b.__flags__ & (1 << 9)), "Exception")
                flags += "x:" + base + ":" + str(obj.__name__)
        return ["h", hid, flags]

    def resolve(self, hid, _flags):
        if hid not in self.by_hid:
            raise wire.WireError(f"unknown handle {hid}")
        return self.by_hid[hid]


def _exception_reply(exc, objects):
    t = type(exc)
    try:
        message = str(exc)[:2000]
    except BaseException:  # noqa: BLE001 - the program's own __str__
        message = "<unprintable>"
    heap = bool(t.__flags__ & (1 << 9))
    if t.__name__ in _NO_RAISE and not heap:
        return ["exc", "RuntimeError", "RuntimeError", f"the program raised {t.__name__}({message}) during the test", 0]
    base = next((b.__name__ for b in t.__mro__ if b.__module__ == "builtins" and not b.__flags__ & (1 << 9)), "Exception")
    ref = objects.handle(t) if heap else ["h", 0]
    return ["exc", str(t.__name__), base, message, ref[1] if ref[0] == "h" else ref]


def named(obj):
    """``[module, qualname]`` when ``obj`` is a module-level object of the standard library (``int``, ``len``,
    ``datetime.datetime``, ``collections.deque``) that the other side can look up itself; else None."""
    module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    if type(module) is not str or type(qualname) is not str or module.split(".")[0] not in sys.stdlib_module_names:
        return None
    try:
        found = resolve_named(module, qualname)
    except Exception:  # noqa: BLE001
        return None
    return [module, qualname] if found is obj else None


def resolve_named(module, qualname):
    import importlib

    if str(module).split(".")[0] not in sys.stdlib_module_names:
        raise wire.WireError(f"{module} is not a standard-library module")
    value = importlib.import_module(str(module))
    for part in str(qualname).split("."):
        value = getattr(value, part)
    return value


def resolve_for_tests(module, qualname):
    """:func:`resolve_named` for a name the *program* sent: only a class (of an ordinary metaclass) or a function
    is accepted, never an instance such as ``unittest.mock.ANY``, which compares equal to everything."""
    import abc
    import types

    value = resolve_named(module, qualname)
    if isinstance(value, type) and type(value) in (type, abc.ABCMeta):
        return value
    if isinstance(value, (types.FunctionType, types.BuiltinFunctionType, types.ModuleType)):
        return value
    raise wire.WireError(f"{module}.{qualname} is not a class or function")


_MUTABLE = ((list, "list"), (dict, "dict"), (set, "set"))


def _replace(target, value):
    if isinstance(target, list):
        target[:] = value
    else:
        target.clear()
        target.update(value)


class _Called:
    """A call's result plus the new contents of the list, dict and set arguments it changed in place."""

    def __init__(self, value, changed):
        self.value, self.changed = value, changed


def _call(target, args_doc, kwargs_doc, dec, objects):
    args, kwargs = dec(args_doc), dec(kwargs_doc)
    value = target(*args, **kwargs)
    docs = [(str(i), d, a) for i, (d, a) in enumerate(zip(args_doc[1], args))]
    docs += [("k:" + str(k), d, kwargs.get(dec(k))) for k, d in kwargs_doc[1]]
    changed = {}
    for key, doc, arg in docs:
        if isinstance(arg, (list, dict, set)):
            new = wire.encode(arg, objects.handle)
            if new != doc:
                changed[key] = new
    return _Called(value, changed)


def _dispatch(req, objects):
    op, args = req[0], req[1:]
    hooks = {"N": lambda body, _one: resolve_named(*body)}
    dec = lambda doc: wire.decode(doc, objects.resolve, hooks)  # noqa: E731
    target = objects.resolve(args[0], "")
    if op == "call":
        return _call(target, args[1], args[2], dec, objects)
    if op == "getattr":
        return getattr(target, str(args[1]))
    if op == "setattr":
        return setattr(target, str(args[1]), dec(args[2]))
    if op == "getitem":
        return target[dec(args[1])]
    if op == "setitem":
        target[dec(args[1])] = dec(args[2])
        return None
    if op == "delitem":
        del target[dec(args[1])]
        return None
    if op == "len":
        return len(target)
    if op == "iter":
        return list(target)
    if op == "contains":
        return dec(args[1]) in target
    if op == "isinstance":
        return isinstance(dec(args[1]), target)
    if op == "str":
        return str(target)
    if op == "repr":
        return repr(target)
    if op == "replace":
        return _replace(target, dec(args[1]))
    raise wire.WireError(f"unknown request {op!r}")


def serve(ns, req_fd, resp_fd, from_prelude=None):
    """Send the program's names (not those the prelude bound and the program left alone: the test process runs
    the prelude itself), then answer requests until the test process closes the pipe."""
    objects = _Objects()
    table = {}
    from_prelude = from_prelude or {}
    for name, value in list(ns.items()):
        if name.startswith("__") or (name in from_prelude and from_prelude[name] is value):
            continue
        try:
            if type(value).__name__ == "module" and not type(value).__flags__ & (1 << 9):
                table[name] = ["m", str(value.__name__)]
            elif named(value) is not None:  # e.g. `from collections import deque`: the tests use their own
                table[name] = ["N", named(value)]
            else:
                table[name] = wire.encode(value, objects.handle)
        except Exception:  # noqa: BLE001 - a name that cannot cross is simply absent
            pass
    wire.send(resp_fd, ["loaded", table])
    while True:
        try:
            req = wire.recv(req_fd)
        except EOFError:
            return
        try:
            result = _dispatch(req, objects)
            kind = next((k for base, k in _MUTABLE if isinstance(result, base)), None)
            if isinstance(result, _Called):
                reply = ["ok", wire.encode(result.value, objects.handle), result.changed]
            elif kind and req[0] in ("getattr", "getitem"):  # the tests may mutate it in place: keep a handle
                reply = ["ok", ["m", [objects.handle(result)[1], kind, wire.encode(result, objects.handle)]]]
            else:
                reply = ["ok", wire.encode(result, objects.handle)]
        except MemoryError:
            raise
        except BaseException as e:  # noqa: BLE001 - every failure goes back to the test as an exception
            reply = _exception_reply(e, objects)
        wire.send(resp_fd, reply)


# ------------------------------------------------------------------------------------------------ test side
class Handle:
    """An object of the program's, living in the candidate process. Identity comparisons only; no truth value."""

    __slots__ = ("_remote", "_hid", "_flags", "__weakref__")

    def __init__(self, remote, hid, flags):
        object.__setattr__(self, "_remote", remote)
        object.__setattr__(self, "_hid", hid)
        object.__setattr__(self, "_flags", flags)

    def _ask(self, op, *args):
        return self._remote.request(op, self._hid, *args)

    def __call__(self, *args, **kwargs):
        value = self._ask("call", self._remote.encode(list(args)), self._remote.encode(kwargs))
        if self._remote.plain_only and self._remote.saw_handle:
            raise TypeError("the program returned an object of its own (a class instance or function), which is "
                            "not plain data; check and asserts suites compare plain data only")
        for key, doc in (self._remote.changed or {}).items():  # arguments the program changed in place
            arg = kwargs.get(key[2:]) if key.startswith("k:") else args[int(key)] if key.isdigit() and int(key) < len(args) else None
            _overwrite(arg, self._remote.decode(doc))
        return value

    def __getattr__(self, name):
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        return self._ask("getattr", name)

    def __setattr__(self, name, value):
        self._ask("setattr", name, self._remote.encode(value))

    def __getitem__(self, key):
        return self._ask("getitem", self._remote.encode(key))

    def __setitem__(self, key, value):
        self._ask("setitem", self._remote.encode(key), self._remote.encode(value))

    def __delitem__(self, key):
        self._ask("delitem", self._remote.encode(key))

    def __len__(self):
        value = self._ask("len")
        if type(value) is not int:
            raise TypeError("len() of the program's object is not an int")
        return value

    def __iter__(self):
        return iter(self._ask("iter"))

    def __contains__(self, item):
        return self._ask("contains", self._remote.encode(item)) is True

    def __instancecheck__(self, obj):
        return type(obj) is Handle and self._ask("isinstance", self._remote.encode(obj)) is True

    def __eq__(self, other):
        return self is other

    def __ne__(self, other):
        return self is not other

    __hash__ = object.__hash__

    def __bool__(self):
        raise TypeError("the truth value of an object of the program's own class is not plain data; test a value")

    def __str__(self):
        value = self._ask("str")
        return value if type(value) is str else "<program object>"

    def __repr__(self):
        try:
            value = self._ask("repr")
        except Exception:  # noqa: BLE001
            value = None
        return value if type(value) is str else "<program object>"


class Remote:
    """The test process's connection to the candidate process."""

    def __init__(self, req_fd, resp_fd):
        self.req_fd, self.resp_fd = req_fd, resp_fd
        self.handles, self.exceptions = {}, {}
        self.gone = ""
        self.changed = None
        self.saw_handle = False
        self.plain_only = False  # check/asserts suites: a call must return plain data (as HumanEval/MBPP expect)

    def _recv(self):
        try:
            return wire.recv(self.resp_fd)
        except (EOFError, OSError, wire.WireError, RecursionError, ValueError) as e:
            self.gone = self.gone or f"the program ended or broke the protocol ({type(e).__name__}: {e})"[:300]
            raise CandidateGone(self.gone) from None

    def loaded(self):
        """The program's names as test-side values (modules are imported by the test process itself)."""
        msg = self._recv()
        if type(msg) is not list or len(msg) != 2 or msg[0] not in ("loaded", "exc"):
            raise CandidateGone("malformed first message from the program")
        return msg[1]

    def make_handle(self, hid, flags):
        self.saw_handle = True
        if hid not in self.handles:
            if "x:" in flags:  # an exception class of the program's: a local class of the same name and base
                base_name, _, name = flags.split("x:", 1)[1].partition(":")
                self.handles[hid] = self._exception_class(hid, name, base_name)
            else:
                self.handles[hid] = Handle(self, hid, flags)
        return self.handles[hid]

    def _exception_class(self, hid, name, base_name):
        if hid not in self.exceptions:
            base = getattr(builtins, base_name, Exception)
            if not (isinstance(base, type) and issubclass(base, Exception)):
                base = Exception
            self.exceptions[hid] = type(str(name)[:100] or "ProgramError", (base,), {"__module__": "program"})
        return self.exceptions[hid]

    def encode(self, value):
        def handle_of(obj):
            if isinstance(obj, Handle) and obj._remote is self:
                return ["h", obj._hid]
            name = named(obj)
            if name is not None:
                return ["N", name]
            raise TypeError(f"cannot pass a test-side {type(obj).__name__} to the program (plain data only)")

        return wire.encode(value, handle_of)

    def decode(self, doc):
        hooks = {"m": self._mutable, "N": lambda body, _one: resolve_for_tests(*body)}
        if not self.plain_only:  # unittest suites get numpy arrays back as arrays (check/asserts: lists, as before)
            hooks["A"] = _array
        return wire.decode(doc, self.make_handle, hooks)

    def _mutable(self, body, decode_one):
        hid, kind, value = int(body[0]), str(body[1]), decode_one(body[2])
        cls = {"list": RemoteList, "dict": RemoteDict, "set": RemoteSet}.get(kind)
        if cls is None or type(value) is not cls.__mro__[2]:
            raise wire.WireError("bad mutable container")
        return cls(value, self, hid)

    def request(self, op, hid, *args):
        if self.gone:
            raise CandidateGone(self.gone)
        try:
            wire.send(self.req_fd, [op, hid, *args])
        except OSError as e:
            self.gone = f"the program ended ({e})"
            raise CandidateGone(self.gone) from None
        reply = self._recv()
        error = None
        self.changed, self.saw_handle = None, False
        try:
            if type(reply) is list and reply[0] == "ok" and len(reply) in (2, 3):
                if len(reply) == 3 and op == "call" and type(reply[2]) is dict:
                    self.changed = reply[2]
                return self.decode(reply[1])
            if type(reply) is list and reply[0] == "exc" and len(reply) == 5:
                error = self._exception(*reply[1:])
        except (wire.WireError, TypeError, ValueError, IndexError, KeyError, RecursionError) as e:
            self.gone = f"malformed reply from the program ({type(e).__name__})"
            raise CandidateGone(self.gone) from None
        if error is None:
            self.gone = "malformed reply from the program"
            raise CandidateGone(self.gone)
        raise error

    def _exception(self, name, base_name, message, hid):
        if type(hid) is list:  # a standard-library exception class, e.g. json.JSONDecodeError
            cls = resolve_for_tests(*hid[1])
            if not (isinstance(cls, type) and issubclass(cls, Exception)):
                cls = RuntimeError
        elif hid:
            cls = self._exception_class(int(hid), name, base_name)
        else:
            cls = getattr(builtins, str(name), None)
            if not (isinstance(cls, type) and issubclass(cls, BaseException)) or cls.__name__ in _NO_RAISE:
                cls = RuntimeError
        try:
            return cls(str(message))
        except Exception:  # noqa: BLE001 - e.g. UnicodeDecodeError needs five arguments: build it bare
            exc = cls.__new__(cls)
            exc.args = (str(message),)
            return exc



def _array(body, decode_one):
    value = decode_one(body[1])
    try:
        import numpy
    except ImportError:
        return value
    return numpy.array(value, dtype=numpy.dtype(str(body[0])))


# ------------------------------------------------------------------------------------------------ containers
def _overwrite(target, new):
    """Give the test's own list, dict or set argument the contents the program left in it."""
    for base in (list, dict, set):
        if isinstance(target, base) and type(new) is base:
            if base is list:
                list.__setitem__(target, slice(None), new)
            else:
                base.clear(target)
                base.update(target, new)
            return


class _Synced:
    """A local copy of one of the program's lists, dicts or sets, read through an attribute or item. Comparisons
    use the local copy (plain data); every in-place change is applied locally, then the whole contents are written
    back to the program's object, so ``obj.items.append(3)`` works as with shared memory."""

    _MUTATORS = ()

    def _bind(self, remote, hid, parent=None, key=None):
        self._remote, self._hid, self._parent, self._key = remote, hid, parent, key

    def _sync(self):
        if getattr(self, "_remote", None) is None:
            return
        base = type(self).__mro__[2]
        self._remote.request("replace", self._hid, self._remote.encode(base(self)))
        if self._parent is not None:  # keep the container it was read from up to date
            type(self._parent).__mro__[2].__setitem__(self._parent, self._key, base(self))

    def _child(self, key, value):
        if getattr(self, "_remote", None) is not None and type(value) in (list, dict, set):
            child = self._remote.request("getitem", self._hid, self._remote.encode(key))
            if isinstance(child, _Synced):
                child._parent, child._key = self, key
                return child
        return value

    def __copy__(self):
        return type(self).__mro__[2](self)

    def __deepcopy__(self, memo):
        import copy

        return copy.deepcopy(type(self).__mro__[2](self), memo)

    def __reduce_ex__(self, protocol):
        return (type(self).__mro__[2], (type(self).__mro__[2](self),))


def _mutators(cls):
    base = cls.__mro__[2]
    for name in cls._MUTATORS:
        def method(self, *args, _name=name, **kwargs):
            result = getattr(base, _name)(self, *args, **kwargs)
            self._sync()
            return self if _name.startswith("__i") else result

        method.__name__ = name
        setattr(cls, name, method)
    return cls


@_mutators
class RemoteList(_Synced, list):
    _MUTATORS = ("append", "extend", "insert", "remove", "pop", "clear", "sort", "reverse", "__setitem__",
                 "__delitem__", "__iadd__", "__imul__")

    def __init__(self, value=(), remote=None, hid=0):
        list.__init__(self, value)
        self._bind(remote, hid)

    def __getitem__(self, index):
        value = list.__getitem__(self, index)
        return value if isinstance(index, slice) else self._child(index, value)


@_mutators
class RemoteDict(_Synced, dict):
    _MUTATORS = ("__setitem__", "__delitem__", "pop", "popitem", "clear", "update", "setdefault", "__ior__")

    def __init__(self, value=(), remote=None, hid=0):
        dict.__init__(self, value)
        self._bind(remote, hid)

    def __getitem__(self, key):
        return self._child(key, dict.__getitem__(self, key))


@_mutators
class RemoteSet(_Synced, set):
    _MUTATORS = ("add", "discard", "remove", "pop", "clear", "update", "difference_update", "intersection_update",
                 "symmetric_difference_update", "__ior__", "__iand__", "__isub__", "__ixor__")

    def __init__(self, value=(), remote=None, hid=0):
        set.__init__(self, value)
        self._bind(remote, hid)
