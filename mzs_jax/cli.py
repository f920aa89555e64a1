"""The `mzs` command: a table of subcommands, each living in its own module (DESIGN §3).

Every subcommand module defines `add_arguments(parser)` and `run(args) -> int | None`.
`args.config` is the loaded ml_collections config (with `--config.key=value` overrides applied),
or None when the subcommand was given no `--config`; `args.workdir` is a `pathlib.Path` or None.
Modules are imported lazily so that `mzs --help` is instant and needs no torch.
"""

from __future__ import annotations

import argparse
import importlib
import pathlib
import sys

from mzs_jax import host_memory

# name -> (module, help). The module provides add_arguments(parser) and run(args).
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("mzs_jax.demo", "whole method end to end on phantoms, offline, in minutes"),
    "make-phantoms": ("mzs_jax.data.phantom_cli", "write procedural phantoms in real formats"),
    "train-clip": ("mzs_jax.train.clip_task", "stage 1: contrastive fine-tuning (sharded jit)"),
    "eval-retrieval": ("mzs_jax.pipeline.retrieval", "ROCO-protocol top-1/top-2 retrieval"),
    "export": ("mzs_jax.weights_cli:export", "workdir checkpoint -> open_clip safetensors"),
    "import": ("mzs_jax.weights_cli:import", "open_clip weights -> workdir checkpoint"),
    "segment": ("mzs_jax.pipeline.zeroshot", "stage 2: saliency -> DPFEM -> CRF -> box -> mask"),
    "train-weak": ("mzs_jax.pipeline.weak", "stage 3: ResUNet on pseudo-masks (sharded jit)"),
    "evaluate": ("mzs_jax.pipeline.evaluate_cli", "IoU/Dice/AUC per case, seeds, paired t-test"),
    "bench": ("mzs_jax.bench_cli", "run bench/ scripts and write one Markdown table"),
}
# Commands whose runs are train steps: they print which host-malloc path ran (`host_memory`).
_TRAINING = ("demo", "train-clip", "train-weak")


class ConfigError(ValueError):
    """A bad config file or `--config.key=value` override; the message names the key or file."""


def split_config_args(argv: list[str]) -> tuple[list[str], list[str]]:
    """Separate `--config FILE[:arg]` and `--config.key=value` from the other arguments."""
    config_args, rest = [], []
    it = iter(argv)
    for a in it:
        if a == "--config" or (a.startswith("--config.") and "=" not in a):
            value = next(it, None)
            if value is None:
                raise ConfigError(f"{a} needs a value")
            config_args.append(f"{a}={value}")
        elif a.startswith(("--config=", "--config.")):
            config_args.append(a)
        else:
            rest.append(a)
    return config_args, rest


def load_config(config_args: list[str]):
    """Load an ml_collections config file and apply overrides through `config_flags`.

    Every error is a `ConfigError` naming the file, or the full dotted key of a bad override."""
    if not config_args:
        return None
    if not any(a.startswith("--config=") for a in config_args):
        raise ConfigError("--config.key=value overrides given without --config FILE.py")
    from mzs_jax.resources import config_path

    given = next(a.split("=", 1)[1] for a in config_args if a.startswith("--config="))
    path = config_path(given)
    config_args = [f"--config={path}" if a == f"--config={given}" else a for a in config_args]
    file_part = path.split(":", 1)[0]
    if not pathlib.Path(file_part).is_file():
        raise ConfigError(f"config file not found: {file_part}")
    base = _parse_config(path, [f"--config={path}"])
    for a in config_args:
        if a.startswith("--config."):
            _check_key(base, a.split("=", 1)[0].removeprefix("--config."), file_part)
    return _parse_config(path, config_args)


def _parse_config(path: str, config_args: list[str]):
    from absl import flags
    from ml_collections import config_flags

    file_part = path.split(":", 1)[0]
    # config_flags loads every file as module "config_config"; a stale one would lend its
    # get_config to a file that defines none.
    sys.modules.pop("config_config", None)
    fv = flags.FlagValues()
    argv = ["mzs", *config_args]
    config_flags.DEFINE_config_file(
        "config", default=None, flag_values=fv, lock_config=True, sys_argv=argv
    )
    try:
        fv(argv)
        return fv.config
    except (flags.Error, KeyError, AttributeError, ValueError, TypeError) as e:
        text = str(e)
        if "has no attribute 'get_config'" in text:
            raise ConfigError(f"{file_part}: defines no get_config(arg=None)") from e
        if "Error whilst parsing config file" in text:  # get_config raised: keep its last line
            last = text.strip().splitlines()[-1]
            raise ConfigError(f"{file_part}: get_config failed: {last}") from e
        raise ConfigError(f"bad config {path}: {text}") from e
    except SyntaxError as e:
        raise ConfigError(f"{file_part}:{e.lineno}: syntax error: {e.msg}") from e
    except Exception as e:  # noqa: BLE001 - whatever get_config raised, named with its file
        raise ConfigError(f"{file_part}: get_config failed: {type(e).__name__}: {e}") from e


def _check_key(config, dotted: str, file_part: str) -> None:
    """An override must name an existing key: the error gives the full path and the known keys."""
    import difflib

    import ml_collections

    node, done = config, []
    for part in dotted.split("."):
        if not isinstance(node, ml_collections.ConfigDict):
            raise ConfigError(
                f"--config.{dotted}: {'.'.join(done)} is a value, not a group of keys "
                f"(in {file_part})"
            )
        if part not in node:
            keys = sorted(node.keys())
            close = difflib.get_close_matches(part, keys, n=1)
            hint = f"; did you mean {'.'.join([*done, close[0]])}?" if close else ""
            where = f"under {'.'.join(done)}" if done else "at the top level"
            raise ConfigError(
                f"--config.{dotted}: unknown config key {'.'.join([*done, part])!r} in "
                f"{file_part} (keys {where}: {', '.join(keys)}){hint}"
            )
        node, done = node[part], [*done, part]


def _resolve(name: str):
    target, _ = COMMANDS[name]
    module_name, _, prefix = target.partition(":")
    module = importlib.import_module(module_name)
    add = getattr(module, f"add_{prefix}_arguments" if prefix else "add_arguments")
    run = getattr(module, f"run_{prefix}" if prefix else "run")
    return add, run


def _top_help() -> str:
    width = max(len(n) for n in COMMANDS)
    lines = [
        "usage: mzs SUBCOMMAND [--config FILE.py] [--config.key=value ...] [--workdir DIR]",
        "",
        "MedZeroSeg in JAX. Subcommands:",
    ]
    lines += [f"  {n.ljust(width)}  {h}" for n, (_, h) in COMMANDS.items()]
    lines += ["", "Run `mzs SUBCOMMAND --help` for its options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_top_help())
        return 0
    name = argv[0]
    if name not in COMMANDS:
        print(f"mzs: unknown subcommand {name!r}\n\n{_top_help()}", file=sys.stderr)
        return 2
    try:  # before the subcommand's module (and JAX's thread pools) loads
        memory = host_memory.keep_freed_memory()
    except ValueError as e:
        print(f"mzs {name}: error: {e}", file=sys.stderr)
        return 2
    add, run = _resolve(name)
    parser = argparse.ArgumentParser(prog=f"mzs {name}", description=COMMANDS[name][1])
    parser.add_argument(
        "--config",
        metavar="FILE.py[:arg]",
        help="ml_collections config file; override keys with --config.key=value",
    )
    parser.add_argument(
        "--workdir",
        type=pathlib.Path,
        help="directory for checkpoints, metrics and outputs",
    )
    add(parser)
    try:
        config_args, rest = split_config_args(argv[1:])
        args = parser.parse_args(rest)
        args.config = load_config(config_args)
    except ConfigError as e:
        print(f"mzs {name}: error: {e}", file=sys.stderr)
        return 2
    if name in _TRAINING:  # after the arguments parsed: a bad one stays a one-line error
        print(memory, file=sys.stderr)
    try:
        return int(run(args) or 0)
    except KeyboardInterrupt:
        print(f"mzs {name}: error: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except (ConfigError, ValueError, OSError) as e:
        # One clear line naming the file or key; the traceback is noise for a user's bad input
        # (OSError: a missing or unwritable path, a full disk - the message names the path).
        if "MZS_TRACEBACK" in __import__("os").environ:
            raise
        print(f"mzs {name}: error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
