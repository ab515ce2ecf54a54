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
from torch import Tensor

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
# How torch pickles sparse, nested and quantized tensors: not weights a conversion can take.
_NON_STRIDED = frozenset(
    {"torch.serialization._get_layout", "torch._utils._rebuild_sparse_tensor",
     "torch._utils._rebuild_nested_tensor", "torch._utils._rebuild_qtensor"}
)  # fmt: skip
# Constructors whose cost is bounded by their pickled arguments (no range, bytes(n), str(...),
# and no set/frozenset, which would hash arbitrarily shared tuples).
_SAFE_BUILTINS = frozenset({"list", "dict", "tuple", "int", "float", "complex", "bool", "slice", "object"})
# Harmless builtins that are not called either: they stay inert like any other class.
_INERT_BUILTINS = frozenset({"str", "bytes", "bytearray", "range", "set", "frozenset", "Ellipsis"})


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


def _rebuild_parameter(data: Any, requires_grad: Any, backward_hooks: Any, state: Any = None) -> Tensor:
    """torch's ``_rebuild_parameter(_with_state)``: the tensor alone (no hooks, no attributes)."""
    if not isinstance(data, Tensor):
        raise CheckpointError("a parameter rebuilt from something that is not a tensor")
    return data.detach()


_REBUILD = {torch._utils._rebuild_tensor, torch._utils._rebuild_tensor_v2, _rebuild_parameter}
_CALLABLE: dict[str, Any] = {
    "torch._utils._rebuild_tensor": torch._utils._rebuild_tensor,
    "torch._utils._rebuild_tensor_v2": torch._utils._rebuild_tensor_v2,
    "torch._utils._rebuild_tensor_v3": torch._utils._rebuild_tensor_v3,  # dtypes without typed storage
    "torch._utils._rebuild_parameter": _rebuild_parameter,
    "torch._utils._rebuild_parameter_with_state": _rebuild_parameter,
    "torch._tensor._rebuild_from_type_v2": _rebuild_from_type_v2,
    "collections.OrderedDict": collections.OrderedDict,
    "torch.Size": torch.Size,
    "torch.device": torch.device,
    "_codecs.encode": _encode,
    **{f"builtins.{name}": getattr(builtins, name) for name in _SAFE_BUILTINS},
}
_DATA_TYPES = frozenset({collections.OrderedDict, *(getattr(builtins, name) for name in _SAFE_BUILTINS)})
# Classes torch's own persistent_load compares storage types with: returned, never called.
_TYPES: dict[str, Any] = {
    "torch.storage.UntypedStorage": torch.UntypedStorage,
    "torch.UntypedStorage": torch.UntypedStorage,
}
MAX_DEPTH = 200  # nesting of pickled containers that ``plain`` follows
MAX_NODES = 1_000_000  # containers and objects that ``plain`` visits
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

    record: Loading  # what one torch.load saw (shared by the module's unpicklers)
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
        if qualified in _NON_STRIDED:
            raise CheckpointError("sparse (or other non-strided) tensors are not read; save dense weights")
        if module.split(".")[0] in _REFUSED_MODULES or qualified in _REFUSED_GLOBALS:
            raise RefusedGlobal(qualified)
        if qualified.startswith(_REFUSED_TORCH):
            raise RefusedGlobal(qualified)
        if module == "builtins" and name not in _SAFE_BUILTINS | _INERT_BUILTINS:
            raise RefusedGlobal(qualified)
        if qualified in _CALLABLE:
            return _CALLABLE[qualified]
        if qualified in _DTYPES:
            return _DTYPES[qualified]
        if qualified in _TYPES:
            return _TYPES[qualified]
        self.record.ignored.add(qualified)
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

    _guarded: Callable[[Any], Any] | None = None

    @property  # type: ignore[override]
    def persistent_load(self) -> Callable[[Any], Any]:
        return self._guarded or self._refuse_persistent_id

    @persistent_load.setter
    def persistent_load(self, load: Callable[[Any], Any]) -> None:
        """torch installs its storage loader here: checked before torch sees a storage id."""
        record = self.record

        def guarded(pid: Any) -> Any:
            record.check_storage(pid)
            return load(pid)

        self._guarded = guarded

    def _refuse_persistent_id(self, pid: Any) -> Any:
        raise CheckpointError("the pickle references external storage, which a plain pickle cannot have")


class Loading:
    """What one ``torch.load`` through the safe module saw: globals made inert, storages named by
    the pickle (each capped by the file's size), storage keys a legacy file lists as stored."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.ignored: set[str] = set()
        self.storages: set[str] = set()
        self.listed: set[str] = set()

    def check_storage(self, pid: Any) -> None:
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] in ("storage", b"storage")):
            raise CheckpointError("the pickle references something other than a tensor storage")
        storage_type, key, numel = pid[1], pid[2], pid[4]
        if not isinstance(key, str) or not isinstance(numel, int) or numel < 0:
            raise CheckpointError("malformed tensor storage reference")
        size = 1 if storage_type is torch.UntypedStorage else getattr(storage_type, "dtype", None)
        if size is None or isinstance(storage_type, Global):
            raise CheckpointError(f"storage of an unknown type {storage_type!r}")
        element = size if isinstance(size, int) else size.itemsize
        if numel * element > self.max_bytes:
            raise CheckpointError(
                f"a tensor storage of {numel * element} bytes in a {self.max_bytes}-byte file"
            )
        self.storages.add(key)

    def check_legacy_coverage(self) -> None:
        """A legacy file lists the storages whose bytes follow; one not listed would be returned
        with whatever memory it was allocated on."""
        missing = self.storages - self.listed
        if missing:
            raise CheckpointError(f"{len(missing)} tensor storages have no data in the file")


class RefusedGlobal(pickle.UnpicklingError):
    """The pickle names a global that can only mean running code."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


def safe_pickle_module(record: Loading) -> SimpleNamespace:
    """What ``torch.load(pickle_module=...)`` needs of a pickle module, recording into ``record``."""
    unpickler = type("SafeUnpickler", (SafeUnpickler,), {"record": record})

    def load(file: IO[bytes], **kwargs: Any) -> Any:
        value = unpickler(file, **kwargs).load()
        if isinstance(value, list) and all(isinstance(k, str) for k in value):
            record.listed.update(value)  # the legacy format's list of stored storage keys
        return value

    return SimpleNamespace(__name__="reparam_safe_pickle", Unpickler=unpickler, load=load)


def plain(value: Any) -> Any:
    """Inert objects replaced by plain data: items as a dict, list items as a list, else the state.
    Shared objects are converted once (a pickle can share them exponentially often), cycles are
    kept as cycles, and nesting and size are capped."""
    memo: dict[int, Any] = {}
    count = 0

    def convert(item: Any, depth: int) -> Any:
        nonlocal count
        if isinstance(item, Tensor):
            return item.detach() if type(item) is not Tensor else item
        if not isinstance(item, (Inert, Global, dict, list, tuple)):
            return item
        if id(item) in memo:
            return memo[id(item)]
        count += 1
        if depth > MAX_DEPTH or count > MAX_NODES:
            raise CheckpointError(f"pickled objects nested deeper than {MAX_DEPTH} or more than {MAX_NODES}")
        if isinstance(item, Global):
            return None
        if isinstance(item, Inert):
            memo[id(item)] = None  # a cycle through the object itself reads as None
            content = item.items or item.list_items or item.state
            result = convert(content, depth + 1) if content is not None else None
            memo[id(item)] = result
            return result
        if isinstance(item, dict):
            out: dict[Any, Any] = {}
            memo[id(item)] = out
            for key, inner in item.items():
                out[key] = convert(inner, depth + 1)
            return out
        converted: list[Any] = []
        memo[id(item)] = converted
        converted.extend(convert(inner, depth + 1) for inner in item)
        return converted

    return convert(value, 0)
