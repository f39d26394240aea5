"""The candidate process's side of the proxy (inside the sandbox). Standard library only.

The *candidate process* runs the prelude and the program, then :func:`serve` answers requests (call, get/set an
attribute or item, len, iter, isinstance, str) on the objects it holds. The test process's side
(:mod:`.remote`) turns the program's names into handles and rebuilds every reply as plain data
(:func:`.wire.decode`). Nothing the program does to its own interpreter reaches the test process, which alone
writes verdicts, on a pipe the candidate never holds. Standard-library names (:func:`named`) cross by name.
"""

import sys

from . import wire

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
