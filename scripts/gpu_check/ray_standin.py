"""A stand-in for the ``ray`` package, for the GPU check's verl step only (never for training).

verl 0.9.1 imports Ray at module level (``verl/protocol.py``, ``single_controller/base/worker.py``, the
rollout and checkpoint-engine modules that ``engine_workers`` pulls in), but building an
``ActorRolloutRefWorker`` in-process and running ``update_actor`` does not need a Ray runtime. Ray's wheel
is far too big to carry to the GPU machine, so :func:`install` serves every ``ray`` / ``ray.*`` import from
here: each attribute is a placeholder class, made on first access and recorded. Calling any of them (or
instantiating it) raises :class:`RayCalled`, so if the engine path ever calls into Ray the step stops and
says where, instead of running on a fake. The one exception is ``ray.remote`` used as a class or function
decorator at import time, which returns its argument unchanged (the decorated class is then used directly,
as the tests' harness does); those uses are counted too. :func:`report` says what was touched.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import types


class RayCalled(RuntimeError):
    """The code under test called into Ray, which the stand-in does not provide."""


_accessed: set[str] = set()
_decorated: list[str] = []
_called: list[str] = []


class _Meta(type):
    def __call__(cls, *args, **kwargs):
        _called.append(cls.__qualname__)
        raise RayCalled(f"{cls.__qualname__}(...) was called: the verl engine path calls into Ray")

    def __getattr__(cls, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _placeholder(f"{cls.__qualname__}.{name}")


_placeholders: dict[str, type] = {}


def _placeholder(qualname: str) -> type:
    if qualname not in _placeholders:
        _accessed.add(qualname)
        cls = _Meta(qualname.rsplit(".", 1)[-1], (), {"__module__": "ray_standin", "__qualname__": qualname})
        _placeholders[qualname] = cls
    return _placeholders[qualname]


def _remote(*args, **kwargs):
    """``@ray.remote`` and ``@ray.remote(num_cpus=...)``: the decorated object, unchanged."""
    if len(args) == 1 and not kwargs and callable(args[0]):
        _decorated.append(getattr(args[0], "__qualname__", repr(args[0])))
        return args[0]
    if not args:
        return _remote
    _called.append("ray.remote")
    raise RayCalled("ray.remote was called with arguments the stand-in does not serve")


class _Module(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        qualname = f"{self.__name__}.{name}"
        if qualname == "ray.remote":
            _accessed.add(qualname)
            return _remote
        full = f"{self.__name__}.{name}"
        if full in sys.modules:  # a submodule imported earlier
            return sys.modules[full]
        return _placeholder(qualname)


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path=None, target=None):
        if fullname == "ray" or fullname.startswith("ray."):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        module = _Module(spec.name)
        module.__path__ = []  # a package: any submodule imports
        module.__version__ = "0+mgs.standin"
        module.__file__ = __file__
        return module

    def exec_module(self, module):
        pass


_installed = False


def install() -> None:
    """Serve ``ray`` from this stand-in in this process (before anything imports verl); idempotent."""
    global _installed
    if _installed:
        return
    if any(name == "ray" or name.startswith("ray.") for name in sys.modules):
        raise RuntimeError("ray is already imported: install the stand-in before importing verl")
    sys.meta_path.insert(0, _Finder())
    _installed = True


def report() -> dict:
    """What the run touched: placeholder names accessed, ``@ray.remote`` decorations, calls (each a failure)."""
    return {"accessed": sorted(_accessed), "decorated": len(_decorated), "called": list(_called)}
