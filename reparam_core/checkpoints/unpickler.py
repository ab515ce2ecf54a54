"""An unpickler that extracts tensors from any torch file and never executes anything from it.

Training scripts pickle far more than tensors: yacs ``CfgNode`` configs (a ``dict`` subclass),
``argparse.Namespace``, OmegaConf configs, NumPy scalars, mmengine's ``HistoryBuffer``... torch's
own weights-only unpickler refuses many of these outright. This one resolves exactly two kinds of
global: torch's tensor-rebuild functions (and a few plain data constructors such as
``OrderedDict``), which it calls, and everything else, which becomes *inert*: never imported,
never called. An object of an unknown class keeps its pickled items and state as plain data
(dict subclasses become dicts, other objects their state); a call of an unknown function becomes
``None``. Globals that can only mean code execution (``os.system``, ``eval``, ``subprocess``,
``importlib``, ``getattr``, ...) make the whole file refused, naming them.

``torch.load(..., pickle_module=SAFE_PICKLE, weights_only=False)`` uses it for both the zip and
the legacy format; torch handles the storages (``persistent_load``) itself.
"""

from __future__ import annotations

import _compat_pickle
import builtins
import codecs
import collections
import pickle
from collections.abc import Callable
from types import SimpleNamespace
from typing import IO, Any, ClassVar

import torch
import torch._utils

from ..errors import CheckpointError

# Modules whose every global means running code, and single globals that do.
_REFUSED_MODULES = frozenset(
    {
        "os", "posix", "nt", "subprocess", "sys", "importlib", "runpy", "shutil", "socket", "pty",
        "code", "codeop", "pickle", "_pickle", "marshal", "ctypes", "multiprocessing", "signal",
        "webbrowser", "asyncio", "threading", "operator", "functools", "io", "_io", "posixpath",
        "pdb", "timeit", "trace", "ssl", "http", "urllib", "ftplib", "smtplib", "telnetlib", "tempfile",
    }
)  # fmt: skip
_REFUSED_TORCH = ("torch.load", "torch.hub", "torch.jit", "torch.ops", "torch._ops", "torch.classes",
                  "torch.serialization", "torch.storage._load_from_bytes", "torch.package",
                  "torch.utils.cpp_extension", "torch._C", "torch.distributed", "torch.compile")  # fmt: skip
_REFUSED_GLOBALS = frozenset(
    {"types.FunctionType", "types.LambdaType", "types.CodeType", "types.MethodType", "types.ModuleType",
     "types.BuiltinFunctionType"}
)  # fmt: skip
_SAFE_BUILTINS = frozenset(
    {"set", "frozenset", "list", "dict", "tuple", "int", "float", "complex", "bool", "str", "bytes",
     "bytearray", "slice", "range", "object"}
)  # fmt: skip


def _rebuild_from_type_v2(func: Any, new_type: Any, args: tuple[Any, ...], state: Any) -> Any:
    """torch's ``_rebuild_from_type_v2`` without the subclass and its state: a plain tensor."""
    if func not in _REBUILD:
        raise CheckpointError(f"tensor rebuilt by an unexpected function {func!r}")
    return func(*args)


def _encode(text: str, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles of bytes use it (text to bytes, nothing else)."""
    if not isinstance(text, str) or codecs.lookup(encoding).name not in {"iso8859-1", "utf-8", "ascii"}:
        raise CheckpointError(f"_codecs.encode with {encoding!r} refused")
    return text.encode(encoding)


_REBUILD = {
    torch._utils._rebuild_tensor,
    torch._utils._rebuild_tensor_v2,
    torch._utils._rebuild_parameter,
    torch._utils._rebuild_parameter_with_state,
}
_CALLABLE: dict[str, Any] = {
    "torch._utils._rebuild_tensor": torch._utils._rebuild_tensor,
    "torch._utils._rebuild_tensor_v2": torch._utils._rebuild_tensor_v2,
    "torch._utils._rebuild_parameter": torch._utils._rebuild_parameter,
    "torch._utils._rebuild_parameter_with_state": torch._utils._rebuild_parameter_with_state,
    "torch._tensor._rebuild_from_type_v2": _rebuild_from_type_v2,
    "collections.OrderedDict": collections.OrderedDict,
    "torch.Size": torch.Size,
    "torch.device": torch.device,
    "_codecs.encode": _encode,
    **{f"builtins.{name}": getattr(builtins, name) for name in _SAFE_BUILTINS},
}
_DATA_TYPES = frozenset({collections.OrderedDict, *(getattr(builtins, name) for name in _SAFE_BUILTINS)})
_DTYPES = {f"torch.{name}": value for name, value in vars(torch).items() if isinstance(value, torch.dtype)}


class Global:
    """A pickled reference to a class or function that is never imported: only its name."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"<{self.name}>"


class Inert:
    """An object of a never-imported class (or the result of a never-made call): its pickled
    arguments, dict items, list items and state, kept as data."""

    def __init__(self, origin: str, args: Any = ()) -> None:
        self.origin, self.args = origin, args
        self.items: dict[Any, Any] = {}
        self.list_items: list[Any] = []
        self.state: Any = None

    def __setitem__(self, key: Any, value: Any) -> None:
        self.items[key] = value

    def append(self, item: Any) -> None:
        self.list_items.append(item)

    def extend(self, items: Any) -> None:
        self.list_items.extend(items)

    def __setstate__(self, state: Any) -> None:
        self.state = state


class SafeUnpickler(pickle._Unpickler):  # the pure-Python unpickler: every opcode is ours to handle
    dispatch: ClassVar[dict[int, Callable[[Any], None]]] = dict(pickle._Unpickler.dispatch)

    ignored: set[str]  # names of the globals made inert (shared by a pickle module's unpicklers)
    # State of the pure-Python unpickler (not in typeshed's stubs).
    stack: list[Any]
    proto: int
    fix_imports: bool
    append: Callable[[Any], None]

    def __init__(self, file: IO[bytes], **kwargs: Any) -> None:
        super().__init__(file, **kwargs)

    def find_class(self, module: str, name: str) -> Any:
        if self.proto < 3 and self.fix_imports:  # Python 2 names, as protocol 2 pickles write them
            if (module, name) in _compat_pickle.NAME_MAPPING:
                module, name = _compat_pickle.NAME_MAPPING[(module, name)]
            elif module in _compat_pickle.IMPORT_MAPPING:
                module = _compat_pickle.IMPORT_MAPPING[module]
        qualified = f"{module}.{name}"
        if module.split(".")[0] in _REFUSED_MODULES or qualified in _REFUSED_GLOBALS:
            raise RefusedGlobal(qualified)
        if qualified.startswith(_REFUSED_TORCH):
            raise RefusedGlobal(qualified)
        if module == "builtins" and name not in _SAFE_BUILTINS:
            raise RefusedGlobal(qualified)
        if qualified in _CALLABLE:
            return _CALLABLE[qualified]
        if qualified in _DTYPES:
            return _DTYPES[qualified]
        self.ignored.add(qualified)
        return Global(qualified)

    def _call(self, func: Any, args: tuple[Any, ...]) -> Any:
        if isinstance(func, Global):
            return Inert(func.name, args)
        if isinstance(func, Inert) or not any(func is known for known in _CALLABLE.values()):
            raise CheckpointError(f"the pickle calls {func!r}, which is not a known constructor")
        return func(*args)

    def load_reduce(self) -> None:
        args = self.stack.pop()
        self.stack[-1] = self._call(self.stack[-1], args)

    def load_newobj(self) -> None:
        args = self.stack.pop()
        cls = self.stack.pop()
        self.append(self._new(cls, args))

    def load_newobj_ex(self) -> None:
        kwargs = self.stack.pop()
        args = self.stack.pop()
        cls = self.stack.pop()
        self.append(self._new(cls, (*args, *kwargs.values())))

    def _new(self, cls: Any, args: tuple[Any, ...]) -> Any:
        if isinstance(cls, Global):
            return Inert(cls.name, args)
        if isinstance(cls, type) and cls in _DATA_TYPES:
            return cls.__new__(cls, *args)
        raise CheckpointError(f"the pickle creates an object of {cls!r}, which is not a known data type")

    def _instantiate(self, klass: Any, args: tuple[Any, ...]) -> None:  # protocol 0/1 INST and OBJ
        self.append(self._call(klass, args) if not isinstance(klass, Global) else Inert(klass.name, args))

    def load_build(self) -> None:
        state = self.stack.pop()
        target = self.stack[-1]
        if isinstance(target, Inert):
            target.state = state
        # Real objects (tensors, OrderedDicts) are never given state from the file: a tensor's
        # pickled state is hooks and attributes, which a state dict does not need.

    dispatch[pickle.REDUCE[0]] = load_reduce
    dispatch[pickle.NEWOBJ[0]] = load_newobj
    dispatch[pickle.NEWOBJ_EX[0]] = load_newobj_ex
    dispatch[pickle.BUILD[0]] = load_build


class RefusedGlobal(pickle.UnpicklingError):
    """The pickle names a global that can only mean running code."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


def safe_pickle_module(ignored: set[str]) -> SimpleNamespace:
    """What ``torch.load(pickle_module=...)`` needs of a pickle module, recording the names of the
    globals it made inert into ``ignored``."""
    unpickler = type("SafeUnpickler", (SafeUnpickler,), {"ignored": ignored})

    def load(file: IO[bytes], **kwargs: Any) -> Any:
        return unpickler(file, **kwargs).load()

    return SimpleNamespace(__name__="reparam_safe_pickle", Unpickler=unpickler, load=load)


def plain(value: Any) -> Any:
    """Inert objects replaced by plain data: items as a dict, list items as a list, else the state."""
    if isinstance(value, Inert):
        if value.items:
            return {k: plain(v) for k, v in value.items.items()}
        if value.list_items:
            return [plain(v) for v in value.list_items]
        return plain(value.state) if value.state is not None else None
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, Global):
        return None
    return value
