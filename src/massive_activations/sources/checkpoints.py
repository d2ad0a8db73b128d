"""Where checkpoints come from, and loading them into a ready model.

Two sources yield the same thing, a :class:`LoadedCheckpoint`:

- :class:`HubSource`: ``EleutherAI/pythia-<size>[-deduped]`` at revision ``step<N>`` through
  huggingface_hub, fetching only the files a model needs, into a size-capped cache.
- :class:`FolderSource`: ``<root>/<model>/step<N>/`` in Hugging Face format, where root is any
  store URL (a local folder, or ``s3://…``, copied to a local cache first).

Weights are checked before transformers sees them, so a corrupted or truncated file is an error
naming the file rather than a crash deep in torch.
"""

from __future__ import annotations

import gc
import hashlib
import importlib
import json
import logging
import os
import random
import re
import shutil
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import torch

from massive_activations.errors import BadInputError
from massive_activations.sources.catalog import Architecture, select_steps
from massive_activations.sources.families import repo_of, resolve_family
from massive_activations.sources.hub_cache import HubCache
from massive_activations.sources.model_parts import check_config
from massive_activations.sources.weights import in_dtype
from massive_activations.store import Store, StoreError

log = logging.getLogger(__name__)
_T = TypeVar("_T")

WEIGHT_CANDIDATES = ("model.safetensors", "model.safetensors.index.json",
                     "pytorch_model.bin", "pytorch_model.bin.index.json")
# whichever a repository has: a fast tokenizer (tokenizer.json), or what one is built from (a
# SentencePiece model, as Llama-era repos such as LLM360/Amber ship; GPT-2 style vocab and merges)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "vocab.json", "merges.txt")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
DEFAULT_CACHE = Path(os.environ.get("MA_CACHE_DIR", Path.home() / ".cache" / "massive_activations"))


class CheckpointError(Exception):
    """A checkpoint that cannot be had."""


class CheckpointNotFoundError(CheckpointError):
    """The model, revision or file does not exist: retrying cannot help."""


class CorruptCheckpointError(CheckpointError):
    """A weight or config file that is unreadable, truncated, or does not match its config."""


class TransientSourceError(CheckpointError):
    """The source failed in a way that may pass (connection, timeout, 5xx, 429)."""


@dataclass
class LoadedCheckpoint:
    model_name: str
    step: int
    model: Any  # a transformers causal LM (model_parts finds its blocks), eval mode, device and dtype
    tokenizer: Any
    architecture: Architecture
    source: str
    path: Path
    # a model dispatched with a device map reads offloaded weights from the checkpoint's files: they
    # stay pinned (and a dtype-converted copy stays) until this is closed, when the model is released
    keep: ExitStack | None = None


class CheckpointSource(Protocol):
    kind: str

    def describe(self) -> dict[str, Any]: ...

    def steps(self, model: str) -> list[int]: ...

    def fetch(self, model: str, step: int) -> Path: ...

    def checkout(self, model: str, step: int, weights: bool = True) -> AbstractContextManager[Path]:
        """The checkpoint's folder, kept (not evicted from a cache) until the block ends; without
        ``weights``, the config and tokenizer files may be all it holds."""
        ...

    @property
    def remote(self) -> bool:
        """Whether a checkpoint is downloaded before use (so fetching ahead of use pays)."""
        ...

    def prefetch(self, model: str, step: int) -> str | None:
        """Download the checkpoint and keep it until :meth:`release` of the returned token."""
        ...

    def release(self, token: str | None) -> None: ...


def device_map_of(device: str) -> dict[str, Any] | None:
    """``map`` or ``map:<gpu>=<size>,…,cpu=<size>``: transformers' ``device_map="auto"`` (accelerate) with
    those ``max_memory`` caps: the model is spread over the GPUs, then the CPU, then offloaded to disk.
    None for a single device."""
    if device != "map" and not device.startswith("map:"):
        return None
    from accelerate.utils import convert_file_size_to_int

    memory: dict[int | str, str] = {}
    for item in filter(None, device[4:].split(",")):
        where, sep, size = item.partition("=")
        key: int | str = int(where) if where.isdigit() else where
        try:
            convert_file_size_to_int(size)
        except ValueError as err:
            raise BadInputError(f"device {device!r}: size {size!r} of {where!r} is not a size like 20GiB") from err
        if not sep or not (isinstance(key, int) or key == "cpu"):
            raise BadInputError(f"device {device!r}: each cap is <gpu index>=<size> or cpu=<size>, got {item!r}")
        if isinstance(key, int) and key >= torch.cuda.device_count():
            raise BadInputError(f"device {device!r}: GPU {key} asked for, but this machine has "
                             f"{torch.cuda.device_count()}")
        memory[key] = size
    return {"device_map": "auto", **({"max_memory": memory} if memory else {})}


def resolve_device(device: str) -> torch.device:
    """'auto' picks CUDA when present; 'map…' (``device_map_of``) the first device of the map; anything
    else must be a device torch knows."""
    if device_map_of(device) is not None:
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise BadInputError(f"unknown device {device!r}; use auto, cpu, cuda, cuda:N or "
                            "map[:0=20GiB,cpu=64GiB]") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise BadInputError(f"device {device!r} asked for, but CUDA is not available on this machine")
    return dev


def resolve_dtype(dtype: str) -> torch.dtype:
    if dtype not in DTYPES:
        raise BadInputError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


# --- the Hub ----------------------------------------------------------------------------------
def _transport_errors() -> tuple[type[BaseException], ...]:
    """Connection-level errors of whichever HTTP client huggingface_hub uses (httpx or httpx2)."""
    found: list[type[BaseException]] = [TimeoutError, ConnectionError]
    for name in ("httpx2", "httpx", "requests"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        err = getattr(module, "TransportError", None) or getattr(module.exceptions, "ConnectionError", None)
        if err is not None:
            found.append(err)
    return tuple(found)


class HubUnreachableError(Exception):
    """Offline mode is on, or the endpoint's host name does not resolve: retrying cannot help."""


def unreachable_reason(err: BaseException) -> str:
    """Why the Hub cannot be reached at all ("" when it may be a passing fault), from the error's causes."""
    from huggingface_hub.errors import OfflineModeIsEnabled

    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, OfflineModeIsEnabled):
            return "offline mode is on (HF_HUB_OFFLINE=1) and the file is not in the cache"
        if isinstance(seen, socket.gaierror):
            return f"the endpoint's host name does not resolve ({seen})"
        seen = seen.__cause__ or seen.__context__
    return ""


def _is_transient(err: BaseException) -> bool:
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    if isinstance(err, _transport_errors()):
        return True
    if isinstance(err, HfHubHTTPError) and err.response is not None:
        code = err.response.status_code
        return code == 429 or code >= 500
    # huggingface_hub reports a failed HEAD with no cached copy this way; the cause says why.
    if isinstance(err, LocalEntryNotFoundError) and err.__cause__ is not None:
        return _is_transient(err.__cause__)
    return False


# Endpoints whose downloads exhausted their retries, and when: later downloads from them fail at once
# for BREAKER_S, so a dead endpoint fails a whole run within one file's worst case, not one per checkpoint.
BREAKER_S = 300.0
_failed_endpoints: dict[str, float] = {}
_failed_lock = threading.Lock()
# transformers' from_pretrained patches PreTrainedModel.tie_weights / init_weights and torch's init
# functions process-wide while it runs (transformers.initialization.no_tie_weights, no_init_weights): two
# loads at once could restore each other's patch and leave weight tying off for the process. One load at
# a time; reading and converting the files stays parallel.
_from_pretrained_lock = threading.Lock()
_schedules: dict[tuple[str, str, Any], dict[int, str]] = {}  # (endpoint, repo, family): listed once per process
_schedules_lock = threading.Lock()


class HubSource:
    """Training checkpoints from the Hugging Face Hub (or any server speaking its protocol).

    A model is a catalogued Pythia name or a repository ``org/name``; its family (``families.py``;
    found from the repository, or given) says how its revisions are named. Its checkpoint schedule
    is the family's known one (Pythia) or its branches, listed once per process through the Hub's
    refs API; offline, the revisions already in the download cache.

    Downloads are retried in exactly one layer, this class: each attempt is one metadata request
    without huggingface_hub's own retries (``timeout_s``), then the download; ``retries`` more
    attempts follow with jittered exponential backoff. Worst case before a file fails:
    ``worst_case_s()``. Prefect does not retry a download again. Listing a repository's branches
    goes through the same layer, with the same worst case.
    """

    kind = "hub"
    remote = True

    def __init__(self, cache_dir: str | os.PathLike[str] | None = None, max_cache_gb: float = 200.0,
                 endpoint: str | None = None, retries: int = 5, backoff_s: float = 1.0,
                 max_backoff_s: float = 60.0, timeout_s: float = 30.0, seed: int | None = None,
                 family: str | dict[str, Any] | None = None):
        if max_cache_gb <= 0 or retries < 0 or timeout_s <= 0:
            raise BadInputError(f"need max_cache_gb > 0, retries >= 0, timeout_s > 0; got {max_cache_gb}, {retries}, "
                             f"{timeout_s}")
        self.cache_dir = Path(cache_dir or DEFAULT_CACHE / "hub")
        self.max_cache_bytes = int(max_cache_gb * 2**30)
        self.cache = HubCache(self.cache_dir, self.max_cache_bytes)
        self.endpoint = endpoint or os.environ.get("HF_ENDPOINT")
        self.retries, self.backoff_s, self.max_backoff_s = retries, backoff_s, max_backoff_s
        self.timeout_s = timeout_s
        self.family = family
        self._jitter = random.Random(seed)

    def describe(self) -> dict[str, Any]:
        """Where checkpoints come from, as ``make_source`` takes it (a family given by hand included)."""
        return {"kind": self.kind, "endpoint": self.endpoint or "https://huggingface.co",
                **({"family": self.family} if self.family else {})}

    def steps(self, model: str) -> list[int]:
        return sorted(self.schedule(model))

    def schedule(self, model: str) -> dict[int, str]:
        """Step -> revision name of the model's training run."""
        repo = repo_of(model)
        fam = resolve_family(self.family, repo)
        if fam.steps:
            return {step: fam.step_name.format(step=step) for step in fam.steps}
        key = (self.describe()["endpoint"], repo, fam)
        with _schedules_lock:
            if key not in _schedules:
                branches = self._branches(repo)
                found = fam.schedule(branches)
                if not found:  # not remembered: the branches may appear (or a download cache fill) later
                    from huggingface_hub import constants

                    offline = " (HF_HUB_OFFLINE is set: only revisions already in the download cache are known)"
                    raise CheckpointNotFoundError(
                        f"{repo} has no revision of family {fam.name!r} (they look like {', '.join(fam.examples)}); "
                        f"its branches: {sorted(branches)[:10]}{offline if constants.HF_HUB_OFFLINE else ''}")
                _schedules[key] = found
            return _schedules[key]

    def _branches(self, repo: str) -> list[str]:
        """The repository's branches (the Hub's refs API); offline, the revisions in the download cache."""
        from huggingface_hub import constants
        from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

        if constants.HF_HUB_OFFLINE:
            refs = self.cache_dir / f"models--{repo.replace('/', '--')}" / "refs"
            return sorted(p.name for p in refs.iterdir()) if refs.is_dir() else []

        def listing() -> list[str]:  # HfApi.list_repo_refs waits without a timeout: a silent endpoint would hang
            response = get_session().get(f"{self.describe()['endpoint']}/api/models/{repo}/refs",
                                         headers=build_hf_headers(), timeout=self.timeout_s)
            hf_raise_for_status(response)
            return [branch["name"] for branch in response.json()["branches"]]

        return self._retrying(listing, repo, None, f"{repo}: listing its revisions")

    def worst_case_s(self) -> float:
        """Seconds before a file on an endpoint that never answers fails: every attempt's metadata
        request times out, with the longest backoffs between them."""
        backoffs = sum(min(self.max_backoff_s, self.backoff_s * 2**a) * 1.5 for a in range(self.retries))
        return (self.retries + 1) * self.timeout_s + backoffs

    def _endpoint_failed(self) -> str:
        key = self.describe()["endpoint"]
        with _failed_lock:
            when = _failed_endpoints.get(key)
            if when is not None and time.monotonic() - when < BREAKER_S:
                return f"{key} failed every attempt {time.monotonic() - when:.0f} s ago; not tried again for now"
            _failed_endpoints.pop(key, None)
        return ""

    def _attempt(self, repo: str, filename: str, revision: str, before: Callable[[int], None] | None,
                 repo_type: str = "model") -> Path:
        from huggingface_hub import constants, get_hf_file_metadata, hf_hub_download, hf_hub_url

        if not constants.HF_HUB_OFFLINE:  # offline, the cache answers or OfflineModeIsEnabled says why
            meta = get_hf_file_metadata(hf_hub_url(repo, filename, revision=revision, endpoint=self.endpoint,
                                                   repo_type=repo_type),
                                        timeout=self.timeout_s, retry_on_errors=False)
            if before is not None and meta.size is not None:
                before(meta.size)
        with self.cache.downloading():
            path = Path(hf_hub_download(repo, filename, revision=revision, cache_dir=self.cache_dir,
                                        endpoint=self.endpoint, etag_timeout=self.timeout_s, repo_type=repo_type))
        if not path.exists():  # e.g. removed from under us by a process that does not pin
            raise TransientSourceError(f"{repo}@{revision}/{filename}: missing after its download")
        return path

    def _download(self, repo: str, filename: str, revision: str,
                  before: Callable[[int], None] | None = None, repo_type: str = "model") -> Path:
        return self._retrying(lambda: self._attempt(repo, filename, revision, before, repo_type), repo, revision,
                              f"{repo}@{revision}/{filename}")

    def dataset_files(self, repo: str, revision: str) -> list[str]:
        """Every file of a dataset repository at a revision (the Hub's tree API, recursive, page by page,
        through the one retry layer); offline, the files of that revision in the download cache."""
        from huggingface_hub import constants
        from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

        if constants.HF_HUB_OFFLINE:
            folder = self.cache_dir / f"datasets--{repo.replace('/', '--')}"
            ref = folder / "refs" / revision
            commit = ref.read_text().strip() if ref.is_file() else revision
            snapshot = folder / "snapshots" / commit
            if not snapshot.is_dir():
                raise HubUnreachableError(f"{repo}@{revision}: offline mode is on (HF_HUB_OFFLINE=1) and the "
                                          f"revision is not in the download cache {self.cache_dir}")
            return sorted(p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*") if p.is_file())

        def listing() -> list[str]:  # the tree API pages its answer (a Link header names the next page)
            url: str | None = f"{self.describe()['endpoint']}/api/datasets/{repo}/tree/{revision}?recursive=true"
            files: list[str] = []
            while url:
                response = get_session().get(url, headers=build_hf_headers(), timeout=self.timeout_s)
                hf_raise_for_status(response)
                files += [entry["path"] for entry in response.json() if entry.get("type") == "file"]
                url = response.links.get("next", {}).get("url")
            return sorted(files)

        return self._retrying(listing, repo, revision, f"{repo}@{revision}: listing its files")

    def dataset_file(self, repo: str, revision: str, filename: str) -> tuple[Path, str]:
        """A dataset file, downloaded (or found in the cache), and the commit it came from."""
        path = self._download(repo, filename, revision, repo_type="dataset")
        parts = path.parts
        commit = parts[len(parts) - 1 - len(Path(filename).parts)]  # …/snapshots/<commit>/<filename>
        return path, commit

    def _retrying(self, call: Callable[[], _T], repo: str, revision: str | None, what: str) -> _T:
        """The one retry layer: every request to the endpoint (a file, the refs listing) goes through it."""
        from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

        for attempt in range(self.retries + 1):
            if reason := self._endpoint_failed():
                raise TransientSourceError(f"{what}: {reason}")
            try:
                return call()
            except RevisionNotFoundError as err:
                raise CheckpointNotFoundError(f"{repo} has no revision {revision!r}") from err
            except RepositoryNotFoundError as err:
                raise CheckpointNotFoundError(f"no repository {repo!r} on {self.describe()['endpoint']}") from err
            except Exception as err:  # noqa: BLE001 - classified just below
                if reason := unreachable_reason(err):
                    raise HubUnreachableError(f"{what}: {reason}") from err
                if not (isinstance(err, TransientSourceError) or _is_transient(err)):
                    raise
                if attempt == self.retries:
                    with _failed_lock:
                        _failed_endpoints[self.describe()["endpoint"]] = time.monotonic()
                    raise TransientSourceError(f"{what}: still failing after {self.retries + 1} attempts: {err}") \
                        from err
                delay = min(self.max_backoff_s, self.backoff_s * 2**attempt) * (0.5 + self._jitter.random())
                log.warning("%s: %s; retrying in %.1fs (attempt %d/%d)", what, type(err).__name__, delay,
                            attempt + 1, self.retries)
                time.sleep(delay)
        raise AssertionError("unreachable")

    def _optional(self, repo: str, filename: str, revision: str,
                  before: Callable[[int], None] | None = None) -> Path | None:
        from huggingface_hub.errors import RemoteEntryNotFoundError

        try:
            return self._download(repo, filename, revision, before)
        except RemoteEntryNotFoundError:
            return None

    def _revision(self, model: str, step: int) -> tuple[str, str]:
        """(repo, revision) of a checkpoint, both validated."""
        schedule = self.schedule(model)
        select_steps(step, list(schedule))
        return repo_of(model), schedule[step]

    @contextmanager
    def checkout(self, model: str, step: int, weights: bool = True) -> Iterator[Path]:
        repo, revision = self._revision(model, step)
        with self.cache.pinned(repo, revision):
            yield self._fetch(repo, revision, weights)

    def fetch(self, model: str, step: int) -> Path:
        with self.checkout(model, step) as path:
            return path

    def prefetch(self, model: str, step: int) -> str | None:
        repo, revision = self._revision(model, step)
        token = self.cache.lease(repo, revision)
        try:
            self._fetch(repo, revision)
        except BaseException:
            self.cache.release(token)
            raise
        return token

    def release(self, token: str | None) -> None:
        if token is not None:
            self.cache.release(token)

    def _fetch(self, repo: str, revision: str, weights: bool = True) -> Path:
        total = 0

        def fits(size: int) -> None:  # refuse a cap below one checkpoint before downloading its weights
            nonlocal total
            total += size
            self.cache.check_fits(repo, revision, total)

        config = self._download(repo, "config.json", revision, fits)
        needed = ["config.json"]
        if weights:
            needed.append(self._fetch_weights(repo, revision, fits).name)
        for name in TOKENIZER_FILES:
            self._optional(repo, name, revision)
        self.cache.evict()  # this revision is pinned: only others go
        missing = [name for name in needed if not (config.parent / name).exists()]
        if missing:
            raise TransientSourceError(f"{repo}@{revision}: {missing} missing after the download")
        return config.parent

    def _fetch_weights(self, repo: str, revision: str, fits: Callable[[int], None]) -> Path:
        for name in WEIGHT_CANDIDATES:
            weights = self._optional(repo, name, revision, fits)
            if weights is None:
                continue
            if name.endswith(".index.json"):
                for shard in sorted(set(json.loads(weights.read_text())["weight_map"].values())):
                    self._download(repo, shard, revision, fits)
            return weights
        raise CheckpointNotFoundError(f"{repo}@{revision} has none of {', '.join(WEIGHT_CANDIDATES)}")


# --- a folder (local or on the store) ---------------------------------------------------------
_STEP_DIR = re.compile(r"^step(\d+)$")


class FolderSource:
    """Checkpoints laid out as ``<root>/<model>/step<N>/`` (config.json, weights, tokenizer files)."""

    kind = "folder"

    def __init__(self, root: str | Store, cache_dir: str | os.PathLike[str] | None = None):
        self.store = root if isinstance(root, Store) else Store(root)
        self.cache_dir = Path(cache_dir or DEFAULT_CACHE / "folders")

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "root": self.store.url}

    def models(self) -> list[str]:
        return sorted({k.split("/", 1)[0] for k in self.store.list("") if "/step" in k}) \
            if self.store.scheme == "s3" else sorted(p.name for p in Path(self.store.root).iterdir()
                                                     if p.is_dir() and any(p.glob("step*/config.json")))

    def steps(self, model: str) -> list[int]:
        found = sorted({int(m.group(1)) for key in self.store.list(model)
                        if key.endswith("/config.json")
                        and (m := _STEP_DIR.match(key.split("/")[-2]))})
        if not found:
            raise CheckpointNotFoundError(f"no checkpoints of {model!r} under {self.store.url}")
        return found

    @contextmanager
    def checkout(self, model: str, step: int, weights: bool = True) -> Iterator[Path]:
        yield self.fetch(model, step)

    @property
    def remote(self) -> bool:
        return self.store.scheme != "file"

    def prefetch(self, model: str, step: int) -> str | None:
        self.fetch(model, step)  # the folder cache has no cap: nothing to keep
        return None

    def release(self, token: str | None) -> None:
        pass

    def fetch(self, model: str, step: int) -> Path:
        prefix = f"{model}/step{step}"
        if not self.store.exists(f"{prefix}/config.json"):
            raise CheckpointNotFoundError(f"no checkpoint {self.store.url_for(prefix)} (no config.json)")
        if self.store.scheme == "file":
            return Path(self.store.path(prefix))
        root_id = hashlib.sha256(self.store.url.encode()).hexdigest()[:12]
        local = self.cache_dir / root_id / model / f"step{step}"
        if (local / ".complete").exists():
            return local
        tmp = local.with_name(f".{local.name}.tmp-{uuid.uuid4().hex}")
        try:
            self.store.download(prefix, tmp)
            (tmp / ".complete").touch()
            shutil.rmtree(local, ignore_errors=True)
            os.replace(tmp, local)
        except StoreError as err:
            raise CheckpointNotFoundError(str(err)) from err
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return local


# --- loading ----------------------------------------------------------------------------------
def check_weights(path: Path) -> list[Path]:
    """Open every weight file's header (and index) before loading, naming the one that is bad."""
    from safetensors import safe_open

    files = sorted(path.glob("*.safetensors")) or sorted(path.glob("*.bin"))
    if not files:
        raise CorruptCheckpointError(f"{path}: no weight file (*.safetensors or *.bin)")
    for file in files:
        try:
            if file.suffix == ".safetensors":
                with safe_open(str(file), framework="pt") as fh:
                    for key in fh.keys():
                        fh.get_slice(key).get_shape()
            else:
                torch.load(file, map_location="cpu", weights_only=True, mmap=True)
        except Exception as err:  # noqa: BLE001 - every failure here means the file is unusable
            raise CorruptCheckpointError(f"{file}: unreadable weight file ({type(err).__name__}: {err})") from err
    return files


def load_from_dir(path: Path, model_name: str, step: int, device: str = "auto", dtype: str = "float32",
                  source: str = "folder", keep: ExitStack | None = None) -> LoadedCheckpoint:
    """``keep``: with a device map, what must outlive the load (the converted copy) is entered there."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    dev, torch_dtype, mapping = resolve_device(device), resolve_dtype(dtype), device_map_of(device)
    try:
        config = AutoConfig.from_pretrained(path)
    except Exception as err:  # noqa: BLE001
        raise CorruptCheckpointError(f"{path / 'config.json'}: unreadable config ({err})") from err
    check_config(config)  # an architecture capture cannot read fails before its weights are read
    files = check_weights(path)
    if mapping:
        keep = keep if keep is not None else ExitStack()
        (DEFAULT_CACHE / "offload").mkdir(parents=True, exist_ok=True)
        mapping = mapping | {"offload_folder": keep.enter_context(tempfile.TemporaryDirectory(
            dir=DEFAULT_CACHE / "offload"))}  # one per load: concurrent loads never share it
    with ExitStack() as scratch:
        converted = in_dtype(path, files, torch_dtype, DEFAULT_CACHE / "converted")  # no second copy in RAM
        folder = (keep if mapping else scratch).enter_context(converted)
        try:
            with _from_pretrained_lock:
                model, info = AutoModelForCausalLM.from_pretrained(folder, config=config, dtype=torch_dtype,
                                                                 output_loading_info=True, **(mapping or {}))
        except Exception as err:  # noqa: BLE001
            raise CorruptCheckpointError(f"{files[0]}: weights do not fit {path / 'config.json'} ({err})") from err
    problems = {k: v for k, v in info.items() if k in ("missing_keys", "mismatched_keys") and v}
    if problems:
        raise CorruptCheckpointError(f"{files[0]}: weights do not fit the config: {problems}")
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = model.eval() if mapping else model.to(dev).eval()  # a mapped model is placed by its map
    return LoadedCheckpoint(model_name=model_name, step=step, model=model, tokenizer=tokenizer,
                            architecture=Architecture.from_config(model_name, config, model), source=source,
                            path=path, keep=keep if mapping else None)


def load_checkpoint(source: CheckpointSource, model: str, step: int, device: str = "auto",
                    dtype: str = "float32") -> LoadedCheckpoint:
    """Pinned in the cache until the weights are in memory; with a device map (which may leave weights
    on disk), until the loaded checkpoint's ``keep`` is closed."""
    describe = json.dumps(source.describe())
    if device_map_of(device) is None:
        with source.checkout(model, step) as path:
            return load_from_dir(path, model, step, device=device, dtype=dtype, source=describe)
    keep = ExitStack()
    try:
        path = keep.enter_context(source.checkout(model, step))
        return load_from_dir(path, model, step, device=device, dtype=dtype, source=describe, keep=keep)
    except BaseException:
        keep.close()
        raise


class CheckpointHandle:
    """One checkpoint, loaded at most once for every piece of work done on it, then released.

    Loading is lazy: work the store already holds never loads (nor downloads) anything. A failed
    load is not remembered, so a retried piece of work tries again. ``shared`` keeps what several
    pieces compute from the loaded model alike (hidden states, baseline losses) until release.
    """

    def __init__(self, source: CheckpointSource, model: str, step: int, device: str = "auto",
                 dtype: str = "float32"):
        resolve_dtype(dtype)
        self.source, self.model, self.step, self.device, self.dtype = source, model, step, device, dtype
        self._loaded: LoadedCheckpoint | None = None
        self._lock = threading.Lock()
        self._shared: dict[Any, Any] = {}
        self._shared_lock = threading.Lock()

    def shared(self, key: Any, make: Callable[[], Any]) -> Any:
        """``make()``, computed once per key while the checkpoint is loaded."""
        with self._shared_lock:
            if key not in self._shared:
                self._shared[key] = make()
            return self._shared[key]

    def get(self) -> LoadedCheckpoint:
        with self._lock:
            if self._loaded is None:
                self._loaded = load_checkpoint(self.source, self.model, self.step, self.device, self.dtype)
            return self._loaded

    def release(self) -> None:
        with self._shared_lock:
            self._shared = {}
        with self._lock:
            loaded, self._loaded = self._loaded, None
        keep = loaded.keep if loaded is not None else None
        del loaded
        gc.collect()
        if keep is not None:  # the model is gone: its offloaded files may go too
            keep.close()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def make_source(kind: str, root: str | None = None, endpoint: str | None = None,
                cache_dir: str | None = None, storage_options: dict[str, Any] | None = None,
                cache_gb: float = 200.0, download_retries: int = 5,
                download_timeout_s: float = 30.0, family: str | None = None) -> CheckpointSource:
    """A source from plain values (as flow parameters carry them)."""
    if kind == "hub":
        return HubSource(cache_dir=cache_dir, endpoint=endpoint, max_cache_gb=cache_gb, retries=download_retries,
                         timeout_s=download_timeout_s, family=family)
    if kind == "folder":
        if not root:
            raise BadInputError("a folder source needs a root URL (a local folder or s3://bucket/prefix)")
        return FolderSource(Store(root, storage_options=storage_options), cache_dir=cache_dir)
    raise BadInputError(f"unknown checkpoint source kind {kind!r}; use 'hub' or 'folder'")
