"""``axolotl-savefix plan CONFIG.yml``: the checkpoint plan before paying for the run (see :mod:`axolotl_savefix.cli`).

The plan itself is :mod:`rules.plan`'s; here the YAML is read (one-line errors for mistaken files),
and, without ``--steps-per-epoch``, Axolotl is imported (lazily: only here) to load the config and
prepare the data, so the step count is Axolotl's own, and one checkpoint's size is estimated from
the model's shapes on the meta device.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import yaml

from ..rules import checkpoints, disk
from ..rules.plan import Plan, Settings, make_plan
from .errors import InputError


def _first_line(text: str) -> str:
    return next((line.strip() for line in str(text).splitlines() if line.strip()), "")


def _config_file(path: Path) -> Path:
    """The YAML file ``path`` names; a folder with one ``*.yml``/``*.yaml`` is that file, as in Axolotl's ``load_cfg``."""
    text = str(path)
    if text.startswith(("http:/", "https:/")):  # Path("https://x") reads "https:/x"
        raise InputError(f"{text} is a URL: plan reads a local file and never waits on the network; download it first")
    if path.is_dir():
        found = sorted([*path.glob("*.yml"), *path.glob("*.yaml")])
        if len(found) == 1:
            return found[0]  # what Axolotl's load_cfg (choose_config) takes
        if not found:
            raise InputError(f"{path} is a folder with no .yml or .yaml file in it: give the Axolotl config file")
        names = ", ".join(p.name for p in found)
        raise InputError(f"{path} is a folder with {len(found)} YAML files ({names}): give the one to plan")
    return path


def _read_yaml(path: Path) -> dict[str, Any]:
    """The config file's keys; :class:`InputError` (one line naming the file) for anything that is not a YAML mapping."""
    try:
        with path.open(encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{path} is a folder: give the Axolotl config file") from None
    except PermissionError:
        raise InputError(f"{path}: cannot read it (permission denied)") from None
    except UnicodeDecodeError as err:
        raise InputError(f"{path}: not a text file (byte {err.start} is not UTF-8)") from None
    except OSError as err:
        raise InputError(f"{path}: cannot read it ({err.strerror or err})") from None
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise InputError(f"{path}{where}: not valid YAML: {err.problem or err.context}") from None
    except yaml.YAMLError as err:
        raise InputError(f"{path}: not valid YAML: {_first_line(str(err))}") from None
    if data is None:
        raise InputError(f"{path} is empty: an Axolotl config is a YAML mapping of keys (base_model, datasets, ...)")
    if not isinstance(data, dict):
        kind = "a list" if isinstance(data, list) else f"the {type(data).__name__} {data!r:.40}"
        raise InputError(f"{path} holds {kind}, not a YAML mapping of config keys (base_model, datasets, ...)")
    return data


def plan_from_steps(raw: dict[str, Any], steps_per_epoch: int) -> Plan:
    settings = Settings.from_config(raw)
    max_steps = settings.max_steps or math.ceil(settings.num_epochs * steps_per_epoch)
    output_dir = raw.get("output_dir") or "./model-out"
    return make_plan(
        settings,
        steps_per_epoch * settings.grad_accum,
        max_steps,
        free_bytes=_available(output_dir),
    )


def _available(output_dir: str) -> int:
    """Free bytes of ``output_dir`` plus what its ``checkpoint-N`` folders use (a rerun reuses their room)."""
    return disk.free_bytes(output_dir) + sum(disk.dir_bytes(p) for p in checkpoints.checkpoints(output_dir))


def _lora_params(model: Any, cfg: Any) -> int:
    import torch

    targets = set(cfg.lora_target_modules or [])
    r = int(cfg.lora_r or 8)
    count = 0
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear) or name.endswith("lm_head"):
            continue
        if cfg.lora_target_linear or name.rsplit(".", 1)[-1] in targets:
            count += r * (module.in_features + module.out_features)
    return count


def estimate_bytes(cfg: Any) -> tuple[int, int]:
    """One checkpoint's bytes and the final model's (weights only) from the model's shapes (meta device) and the config."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(cfg.base_model_config or cfg.base_model, trust_remote_code=bool(cfg.trust_remote_code))
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config)
    total = sum(p.numel() for p in model.parameters())
    adapter = cfg.adapter in ("lora", "qlora")
    trainable = _lora_params(model, cfg) if adapter else total
    dtype = getattr(cfg, "torch_dtype", None)
    dtype_bytes = getattr(dtype, "itemsize", 4) if dtype is not None else 4
    return disk.estimate_checkpoint_bytes(
        total, trainable, dtype_bytes, cfg.optimizer, adapter_only=adapter, save_only_model=bool(cfg.save_only_model)
    ), disk.estimate_checkpoint_bytes(total, trainable, dtype_bytes, cfg.optimizer, adapter_only=adapter, save_only_model=True)


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """Axolotl logs to stdout; the plan (and --json) must be the only thing there."""
    moved = []
    for logger in [logging.getLogger(), *map(logging.getLogger, list(logging.root.manager.loggerDict))]:
        for handler in getattr(logger, "handlers", []):
            if isinstance(handler, logging.StreamHandler) and handler.stream is sys.stdout:
                handler.setStream(sys.stderr)
                moved.append(handler)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        for handler in moved:
            handler.setStream(sys.stdout)


class TokenizerNeeded(Exception):
    """Axolotl's data preparation read more of the tokenizer than its name: load the real one."""


class _NameOnlyTokenizer:
    """What Axolotl's data preparation reads of the tokenizer when the prepared set is on disk: its name.

    ``name_or_path`` goes into the prepared set's hash; any other attribute raises
    :class:`TokenizerNeeded` (not an AttributeError, so ``hasattr`` cannot swallow it).
    """

    def __init__(self, name: str) -> None:
        self.name_or_path = name

    def __getattr__(self, attr: str) -> Any:
        raise TokenizerNeeded(attr)


def prepared_on_disk(cfg: Any) -> bool:
    """Whether Axolotl's prepared data set for ``cfg`` is in ``dataset_prepared_path`` (then no tokenizer is needed)."""
    if any(cfg.get(k) for k in ("added_tokens_overrides", "tokenizer_use_mistral_common", "processor_type", "streaming",
                                "pretraining_dataset", "push_dataset_to_hub", "skip_prepare_dataset", "rl")):  # fmt: skip
        return False
    try:
        from axolotl.utils.data.shared import generate_dataset_hash_from_config, get_prepared_dataset_path
    except ImportError:
        return False
    for datasets in (cfg.datasets, cfg.test_datasets):
        if datasets:
            folder = get_prepared_dataset_path(cfg, generate_dataset_hash_from_config(cfg, datasets, cfg.tokenizer_config))
            if not any(Path(folder).glob("*")):
                return False
    return True


def _datasets(cfg: Any) -> Any:
    """Axolotl's ``load_datasets``; without the tokenizer when the prepared set is on disk."""
    if prepared_on_disk(cfg):
        from axolotl.utils.data import prepare_datasets

        try:
            train, _, total, _ = prepare_datasets(cfg, _NameOnlyTokenizer(cfg.tokenizer_config))
            return SimpleNamespace(train_dataset=train, total_num_steps=total)
        except TokenizerNeeded:
            pass
    from axolotl.common.datasets import load_datasets

    return load_datasets(cfg=cfg)


def plan_from_data(path: Path, raw: dict[str, Any]) -> Plan:
    """The plan with Axolotl's own step count: ``load_cfg``, then the data (the prepared set if on disk)."""
    with _stdout_to_stderr():
        from axolotl.cli.config import load_cfg

    with _stdout_to_stderr():  # again: importing Axolotl configured its handlers
        cfg = load_cfg(str(path))
        meta = _datasets(cfg)
        checkpoint_bytes, final_bytes = estimate_bytes(cfg)
    settings = Settings.from_config(raw)  # the keys as the user wrote them, before Axolotl derives ratios
    world = int(cfg.world_size or 1)
    max_steps = cfg.max_steps or meta.total_num_steps
    if settings.streamed:  # no length (an IterableDataset): Transformers' one epoch is the whole run
        batches = max_steps * settings.grad_accum
    elif cfg.sample_packing:  # Axolotl's own packed count: steps per epoch times accumulation
        batches = max(1, round(meta.total_num_steps * settings.grad_accum / settings.num_epochs))
    else:
        batches = math.ceil(math.ceil(len(meta.train_dataset) / cfg.micro_batch_size) / world)
    return make_plan(
        settings,
        batches,
        max_steps,
        checkpoint_bytes=checkpoint_bytes,
        free_bytes=_available(cfg.output_dir),
        final_bytes=final_bytes,
    )


@contextlib.contextmanager
def _axolotl_output(verbose: bool) -> Iterator[Path | None]:
    """Everything written to fd 1 and 2 inside (Axolotl, torch, C extensions): stderr with ``verbose``, else a log file.

    Yields the log's path (None with ``verbose``); the caller deletes it when all went well.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    log = None if verbose else tempfile.NamedTemporaryFile(prefix="axolotl-savefix-plan-", suffix=".log", delete=False)
    target = os.dup(2) if log is None else log.fileno()
    os.dup2(target, 1)
    os.dup2(target, 2)
    try:
        yield None if log is None else Path(log.name)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, target):
            os.close(fd)
        if log is not None:
            with contextlib.suppress(OSError):
                log.close()


def _schema_message(err: Any, raw: dict[str, Any]) -> str:
    """A pydantic ValidationError as one line: the config key, what is wrong, the value."""
    errors = err.errors()
    first = errors[0]
    key_parts: list[str] = []
    node: Any = raw
    for part in first.get("loc", ()):
        if isinstance(part, int) and isinstance(node, list) and part < len(node):
            key_parts.append(f"[{part}]")
            node = node[part]
        elif isinstance(part, str) and isinstance(node, dict) and part in node:
            key_parts.append(("." if key_parts else "") + part)
            node = node[part]
        else:
            break
    key = "".join(key_parts)
    head = tuple(first.get("loc", ()))[:1]
    same = [e for e in errors if tuple(e.get("loc", ()))[:1] == head]  # a union's branches: one key, several messages
    msgs = " or ".join(dict.fromkeys(str(e.get("msg", "")).removeprefix("Value error, ") for e in same))
    shown = f"{key}: {msgs} (got {node!r:.60})" if key else msgs
    more = len(errors) - len(same)
    return f"Axolotl's config schema refuses it: {shown}" + (f" (and {more} more; --verbose shows them)" if more > 0 else "")


def _axolotl_failure(err: BaseException, raw: dict[str, Any], set_offline: bool, log: Path | None) -> str:
    if type(err).__name__ == "ValidationError" and hasattr(err, "errors"):
        text = _schema_message(err, raw)
    else:
        text = f"Axolotl could not load it: {type(err).__name__}: {_first_line(str(err)) or 'no message'}"
        if set_offline and any(w in str(err).lower() for w in ("offline", "couldn't connect", "cached", "hub")):
            text += " (plan runs offline: HF_HUB_OFFLINE=0 lets it download, or give --steps-per-epoch N)"
    if log is not None:
        text += f"; Axolotl's log: {log}"
    return text
