"""Glue between Snakemake rule scripts and the library.

A rule script is a few lines::

    from bcpath.workflow import run_rule
    run_rule(snakemake, "bcpath.steps.slides:inspect_slide_step")

``run_rule`` sends logging to the rule's log file (and stderr), calls the step with the
job's inputs/outputs/params, and on failure writes one clear message to the log plus a
failure record that the workflow's onerror/onsuccess handlers gather into
results/cohort/failures.csv. A later successful run of the same rule for the same slide
removes the stale record.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import functools
import importlib
import json
import logging
import os
import sys
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FAILURE_FIELDS = ("slide_id", "rule", "error", "log", "time")
COHORT = "cohort"  # slide_id of the failure record of a cohort-level job
FAILURES_DIR = "results/cohort/failures"  # failure records, relative to the run folder


@dataclass(frozen=True)
class FinishedJob:
    """What the onerror/onsuccess handlers know of a Snakemake job: rule, wildcards, first log
    file and its ``params.failure_record`` (None when the rule has none)."""

    rule: str
    wildcards: dict[str, str]
    log: str | None = None
    record: str | None = None


def configure_logging(log_path: str | None, level: int = logging.INFO) -> None:
    """Log to the rule's log file and to stderr (entry points only; libraries never do this)."""
    console = logging.StreamHandler(sys.stderr)
    # A job's final error goes to its log only: the run's summary prints it once at the end.
    console.addFilter(lambda record: not getattr(record, "log_file_only", False))
    handlers: list[logging.Handler] = [console]
    if log_path:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_path, mode="w"))
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=handlers,
        force=True,
    )


def _resolve(step: str | Callable[..., Any]) -> Callable[..., Any]:
    if callable(step):
        return step
    module_name, _, function_name = step.partition(":")
    return getattr(importlib.import_module(module_name), function_name)


def write_failure_record(record_path: str | os.PathLike[str], slide_id: str, rule: str, error: str, log: str | None) -> None:
    from bcpath.io import write_json

    write_json(
        record_path,
        {
            "slide_id": slide_id,
            "rule": rule,
            "error": error,
            "log": log or "",
            "time": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        },
    )


def guard_job_processes() -> bool:
    """Make every process this job starts die with it (Linux; call first thing in a job).

    A job killed by SIGKILL (the out-of-memory killer, ``kill -9``) cannot stop its worker
    processes itself, and they would go on writing outputs after Snakemake has cleaned up. So
    the job becomes the leader of its own process group, and a small guard process, forked
    before that and left in the caller's group, waits on a pipe: when the job ends without
    saying so (killed), the guard kills the job's whole group. The guard forwards SIGINT,
    SIGTERM and SIGHUP to the group, so Ctrl-C still reaches the job. The job also gets
    SIGTERM when its parent (Snakemake) dies. Returns False where this is not possible.
    """
    import atexit
    import signal

    if not sys.platform.startswith("linux") or os.environ.get("BCPATH_JOB_GUARD", "1") == "0":
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        parent = os.getppid()
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG: die with Snakemake
        if os.getppid() != parent:  # the parent died before the line above
            os._exit(1)
    except (OSError, AttributeError):
        pass
    job = os.getpid()
    read_end, write_end = os.pipe()
    guard = os.fork()
    if guard == 0:  # the guard: only system calls, never returns
        try:
            os.close(write_end)

            def forward(signum: int, _frame: Any) -> None:
                with contextlib.suppress(OSError):
                    os.killpg(job, signum)

            for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                signal.signal(signum, forward)
            if os.read(read_end, 1) != b"d":  # end of file without "done": the job was killed
                with contextlib.suppress(OSError):
                    os.killpg(job, signal.SIGKILL)
        finally:
            os._exit(0)
    os.close(read_end)
    try:
        os.setpgid(0, 0)
    except OSError:  # e.g. already a session leader: the guard just waits and exits
        pass
    atexit.register(lambda: os.write(write_end, b"d"))
    return True


def step_target(script: str | os.PathLike[str]) -> str:
    """The ``"module:function"`` a rule script hands to :func:`run_rule`.

    Raises:
        ValueError: the script names no step with ``run_rule(snakemake, "module:function")``.
    """
    import re

    text = Path(script).read_text()
    found = re.search(r"""run_rule\(\s*snakemake\s*,\s*["']([\w.]+:\w+)["']""", text)
    if found is None:
        raise ValueError(f"{script}: no run_rule(snakemake, \"module:function\") call")
    return found.group(1)


def module_source_file(module: str, package_root: str | os.PathLike[str] | None = None) -> Path:
    """The source file of a bcpath module, found without importing it (parse time stays fast)."""
    root = Path(package_root) if package_root is not None else Path(__file__).resolve().parent
    parts = module.split(".")
    if parts[0] != root.name:
        raise ValueError(f"{module}: not a module of {root.name}")
    base = root.joinpath(*parts[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    raise ValueError(f"{module}: no source file under {root}")


def _bcpath_imports(tree: Any, root: Path) -> set[str]:
    """bcpath modules imported anywhere in ``tree`` (``from bcpath.x import y``: bcpath.x, and
    bcpath.x.y when that is a module)."""
    import ast

    found: set[str] = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        for name in names:
            if name.split(".")[0] != root.name:
                continue
            try:
                module_source_file(name, root)
            except ValueError:
                continue
            found.add(name)
    return found


def _strip_docstrings(tree: Any) -> Any:
    import ast

    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (
            isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
            and body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)
        ):
            node.body = body[1:] or [ast.Pass()]
    return tree


@functools.cache
def _module_code(path: str, root: str, stamp: tuple[int, int]) -> tuple[str, frozenset[str]]:
    """(sha256 of the module's syntax tree without docstrings — comments, formatting and
    documentation do not count as a code change —, bcpath modules it imports anywhere).
    Cached per file state (``stamp``: mtime_ns, size)."""
    import ast
    import hashlib

    tree = ast.parse(Path(path).read_bytes())
    imports = frozenset(_bcpath_imports(tree, Path(root)))
    return hashlib.sha256(ast.dump(_strip_docstrings(tree)).encode()).hexdigest(), imports


def step_code_version(script: str | os.PathLike[str], package_root: str | os.PathLike[str] | None = None) -> str:
    """A rule's code version: changes when the library code behind the rule changes.

    The step the rule's script runs (:func:`step_target`) and every bcpath module it can reach:
    the step's module, the modules that module imports at its top and that the step function
    and the functions and classes of its module it uses import, then everything those import
    (anywhere in them), transitively: a steps module's other steps do not count. The version is
    the sha256 (first 16 hex digits) of bcpath's version and those modules' code, comments and
    docstrings left out.

    A rule gives it as a ``params`` entry. Snakemake reruns a job whose params changed (its
    default rerun triggers include params), so upgrading bcpath reruns the rules whose code
    changed (all of them when the version changes) and no other. It is the same on every
    parse while the code is unchanged: a normal rerun recomputes nothing.
    """
    import ast
    import hashlib

    from bcpath import __version__

    root = Path(package_root) if package_root is not None else Path(__file__).resolve().parent

    def code(name: str) -> tuple[str, frozenset[str]]:
        path = module_source_file(name, root)
        info = path.stat()
        return _module_code(str(path), str(root), (info.st_mtime_ns, info.st_size))

    module, _, function = step_target(script).partition(":")
    tree = ast.parse(module_source_file(module, root).read_bytes())
    top = ast.Module(body=[n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))], type_ignores=[])
    # The step function and the functions/classes of its module that it uses, transitively.
    defs = {n.name: n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}
    used: set[str] = set()
    todo = [function]
    while todo:
        name = todo.pop()
        if name in defs and name not in used:
            used.add(name)
            todo += [n.id for n in ast.walk(defs[name]) if isinstance(n, ast.Name) and n.id in defs]
    reached = {module: code(module)[0]}
    pending = _bcpath_imports(top, root).union(*(_bcpath_imports(defs[name], root) for name in used))
    while pending:
        name = pending.pop()
        if name not in reached:
            digest, imports = code(name)
            reached[name] = digest
            pending |= imports - set(reached)
    version = hashlib.sha256(f"bcpath {__version__}\n{module}:{function}\n".encode())
    for name in sorted(reached):
        version.update(f"{name} {reached[name]}\n".encode())
    return version.hexdigest()[:16]


def run_rule(snakemake: Any, step: str | Callable[..., Any]) -> None:
    """Run one library step for a Snakemake job, recording failures.

    The step is called as ``step(input=..., output=..., params=..., threads=..., wildcards=...)``
    with Snakemake's named-list objects. On failure the message goes to the job's log and to a
    failure record: ``params.failure_record`` when the rule has one, else
    :func:`job_record_path` under ``results/cohort/failures``.
    """
    guard_job_processes()
    log_path = snakemake.log[0] if len(snakemake.log) else None
    configure_logging(log_path)
    logger = logging.getLogger("bcpath.rule")
    rule = snakemake.rule
    slide_id = dict(snakemake.wildcards.items()).get("slide", "cohort")
    # Rules without params.failure_record write to the path the onerror handler looks for.
    record = getattr(snakemake.params, "failure_record", None) or str(
        job_record_path(FAILURES_DIR, rule, dict(snakemake.wildcards.items()))
    )
    job_id = os.environ.get("SLURM_JOB_ID")
    where = f"SLURM job {job_id} on {os.uname().nodename}" if job_id else f"local process {os.getpid()} on {os.uname().nodename}"
    logger.info("%s for %s: %s, %d thread(s)", rule, slide_id, where, snakemake.threads)
    try:
        _resolve(step)(
            input=snakemake.input,
            output=snakemake.output,
            params=snakemake.params,
            threads=snakemake.threads,
            wildcards=snakemake.wildcards,
        )
    except Exception as error:
        from bcpath.errors import BcpathError

        file_only = {"log_file_only": bool(log_path)}
        if isinstance(error, BcpathError):
            message = str(error)
            logger.error("%s", message, extra=file_only)
        else:
            message = f"slide {slide_id}: unexpected error in {rule}: {type(error).__name__}: {error}; see the log for the traceback"
            logger.error("%s\n%s", message, traceback.format_exc(), extra=file_only)
        if record:
            try:
                write_failure_record(record, slide_id, rule, message, log_path)
            except OSError as record_error:  # e.g. a full disk: the run's onerror handler records the job instead
                logger.error("could not write the failure record %s: %s", record, record_error)
        # The console gets the message once, in the run's failure summary (rules/common.smk).
        sys.exit(1)
    if record:
        Path(record).unlink(missing_ok=True)
    logger.info("%s done for %s; peak RSS %.0f MB", rule, slide_id, peak_rss_mb())


PEAK_RSS_PATTERN = r"done for (?P<slide>\S+); peak RSS (?P<mb>\d+) MB"
"""Regex of run_rule's last log line: bench/wsi_scale.py reads the exact peak from it (Snakemake's
benchmarks/ sample RSS every 30 s after a job's first 15 s, so they can miss a long job's peak)."""


def visible_cuda_devices(dev_dir: str | os.PathLike[str] = "/dev") -> int:
    """How many NVIDIA GPUs this machine's processes can use, without importing torch.

    Rule files call it at parse time. ``CUDA_VISIBLE_DEVICES``, when set, wins: its ids up to
    the first empty or negative one (as CUDA reads it: "" and "-1" hide every GPU). Else the
    driver's device files ``/dev/nvidia0``, ``/dev/nvidia1``, ... are counted.
    """
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        count = 0
        for device_id in visible.split(","):
            device_id = device_id.strip()
            if not device_id or device_id.startswith("-"):
                break
            count += 1
        return count
    return sum(1 for path in Path(dev_dir).glob("nvidia*") if path.name[len("nvidia") :].isdigit())


def gpu_request(device: str | None, dev_dir: str | os.PathLike[str] = "/dev") -> int:
    """A torch rule's ``gpu`` resource: 1 when its job will run on CUDA, else 0.

    ``device`` is the rule's configured device: "cuda..." asks for a GPU, any other value
    ("cpu", "mps") does not, and None (CUDA when available, as the steps choose) asks for one
    when this machine shows a GPU (:func:`visible_cuda_devices`). On a machine without one the
    torch rules then run side by side instead of one at a time behind the profile's
    ``resources: gpu: 1``. On a cluster the login node may show none: profiles/slurm asks for
    GPUs per rule with ``set-resources``.
    """
    if device:
        return 1 if str(device).startswith("cuda") else 0
    return 1 if visible_cuda_devices(dev_dir) > 0 else 0


def half_the_cores(local_cores: int | None, cap: int) -> int:
    """Threads of a rule that would otherwise hold a small machine: half of a local run's cores
    (at least 1, at most ``cap``), so a model training runs beside another training or the
    per-slide jobs, and tile_slide starts while a 1-thread training holds one core. On 2 cores
    the default demo run took 11:58 this way, 14:00-14:56 with 2-thread trainings one at a time.

    ``local_cores`` is None on a cluster (and inside a cluster job, which must see the threads it
    was submitted with): then 2, the rules' fixed value before; profiles/slurm sets the GPU
    rules' threads itself.
    """
    if local_cores is None:
        return 2
    return max(1, min(cap, int(local_cores) // 2))


def peak_rss_mb() -> float:
    """Peak resident memory of this process (VmHWM) or of its largest finished child, MB.

    VmHWM, not getrusage's maxrss, for the process itself: Linux carries maxrss over exec, so a
    job started by a large parent (Snakemake, pytest) would report the parent's size."""
    import resource

    unit_kb = 1 / 1024 if sys.platform == "darwin" else 1  # maxrss: bytes on macOS, kB on Linux
    own_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * unit_kb
    try:
        with open("/proc/self/status") as status:
            own_kb = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
    except (OSError, StopIteration, ValueError):  # no /proc (macOS): maxrss
        pass
    children_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * unit_kb
    return max(own_kb, children_kb) / 1024.0


def collect_failures(
    records_dir: str | os.PathLike[str],
    out_csv: str | os.PathLike[str],
    slide_ids: Iterable[str] | None = None,
    extra: Iterable[dict[str, str]] = (),
) -> list[dict[str, str]]:
    """Gather failure records into a CSV (header only when nothing failed).

    Records of slides no longer in the cohort are ignored; cohort-level jobs' records
    (slide_id ``cohort``) are kept. ``extra`` rows (records that could not be written) are
    added.
    """
    from bcpath.io import atomic_path

    wanted = {*slide_ids, COHORT} if slide_ids is not None else None
    rows = []
    folder = Path(records_dir)
    if folder.is_dir():
        for path in sorted(folder.glob("*.json")):
            try:
                record = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError):
                continue
            if wanted is None or record.get("slide_id") in wanted:
                rows.append({field: str(record.get(field, "")) for field in FAILURE_FIELDS})
    rows += [{field: str(row.get(field, "")) for field in FAILURE_FIELDS} for row in extra]
    with atomic_path(out_csv) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=FAILURE_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    return rows


def job_record_path(records_dir: str | os.PathLike[str], rule: str, wildcards: dict[str, str], record: str | None = None) -> Path:
    """Where a job's failure record lives: its ``params.failure_record`` when it has one, else
    ``{records_dir}/{slide or 'cohort'}.{rule}[.{other wildcards}].json``."""
    if record:
        return Path(record)
    others = ".".join(str(v) for k, v in sorted(wildcards.items()) if k != "slide")
    name = ".".join(part for part in (wildcards.get("slide", COHORT), rule, others) if part)
    return Path(records_dir) / f"{name}.json"


def record_failed_jobs(jobs: Iterable[FinishedJob], records_dir: str | os.PathLike[str], run_started: float) -> list[dict[str, str]]:
    """Write a failure record for every failed job that left none in this run.

    A job killed by SIGKILL (the out-of-memory killer, a time limit) or one that could not write
    its record (full disk) never reaches ``run_rule``'s error path; the workflow's onerror
    handler passes Snakemake's own list of failed jobs here, so failures.csv lists every
    failure whatever ended it. Records written by the job itself during this run (newer than
    ``run_started``, a ``time.time()``) are kept as they are.

    Returns:
        the rows of records that could not be written (pass them to :func:`collect_failures`).
    """
    unwritten = []
    for job in jobs:
        path = job_record_path(records_dir, job.rule, job.wildcards, job.record)
        try:
            if path.stat().st_mtime >= run_started:
                continue
        except OSError:
            pass
        slide = job.wildcards.get("slide")
        what = f"slide {slide}: {job.rule}" if slide else f"{job.rule} ({', '.join(f'{k}={v}' for k, v in job.wildcards.items()) or COHORT})"
        message = (
            f"{what} stopped without reporting an error: the job was killed (e.g. by the out-of-memory killer, "
            "a time limit or a signal) or could not write its record (disk full?); see its log"
            f"{f' {job.log}' if job.log else ''}, give the rule more memory (--set-resources {job.rule}:mem_mb=...) if it ran out, and rerun"
        )
        try:
            write_failure_record(path, slide or COHORT, job.rule, message, job.log)
        except OSError:
            time = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
            unwritten.append({"slide_id": slide or COHORT, "rule": job.rule, "error": message, "log": job.log or "", "time": time})
    return unwritten


def clear_finished_jobs(jobs: Iterable[FinishedJob], records_dir: str | os.PathLike[str]) -> None:
    """Remove stale failure records of jobs that succeeded in this run (any rule)."""
    for job in jobs:
        job_record_path(records_dir, job.rule, job.wildcards, job.record).unlink(missing_ok=True)


def write_partial_table(table: Any, out_csv: str | os.PathLike[str], inputs: Iterable[str | os.PathLike[str]]) -> None:
    """Write a cohort table that the onerror handler built from the slides that succeeded.

    The file is dated just before the oldest of ``inputs`` that exists, so Snakemake's mtime
    check reruns the table's own rule as soon as all of its inputs can be made (bad slide fixed
    or dropped from the cohort) and never takes the partial table for a complete one.
    """
    from bcpath.io import atomic_path

    with atomic_path(out_csv) as tmp:
        table.to_csv(tmp, index=False)
    times = [Path(p).stat().st_mtime for p in inputs if Path(p).exists()]
    if times:
        stamp = min(times) - 1.0
        os.utime(out_csv, (stamp, stamp))


_YAML_NULLS = frozenset({"null", "Null", "NULL", "~"})


def closed_schema(schema: Any) -> Any:
    """A copy of ``schema`` in which every object with ``properties`` and no
    ``additionalProperties`` of its own is closed (``additionalProperties: false``), so a typo'd
    key anywhere in the config is an error, in sections added later too."""
    if isinstance(schema, dict):
        copy: dict[str, Any] = {key: closed_schema(value) for key, value in schema.items()}
        if "properties" in copy and "additionalProperties" not in copy:
            copy["additionalProperties"] = False
        return copy
    if isinstance(schema, list):
        return [closed_schema(item) for item in schema]
    return schema


def _allowed(schema: dict[str, Any]) -> str:
    """What a schema node accepts, in words: "allowed: integer ≥ 16 and ≤ 8192"."""
    if "enum" in schema:
        return "allowed: " + ", ".join("null" if v is None else str(v).lower() if isinstance(v, bool) else str(v) for v in schema["enum"])
    types = schema.get("type", [])
    types = [types] if isinstance(types, str) else list(types)
    words = {"object": "a mapping such as {key: value}", "array": "a list such as [a, b]"}
    parts = [" or ".join(words.get(t, t) for t in types)] if types else []
    for key, sign in (("minimum", "≥"), ("exclusiveMinimum", ">"), ("maximum", "≤"), ("exclusiveMaximum", "<")):
        if key in schema:
            parts.append(f"{sign} {schema[key]}")
    text = "allowed: " + " ".join(parts[:1]) + (" " + " and ".join(parts[1:]) if len(parts) > 1 else "")
    return text + (f" ({schema['description']})" if schema.get("description") else "")


def config_problems(config: dict[str, Any], schema: dict[str, Any]) -> list[str]:
    """One line per problem in ``config``: the key path, the bad value, what is allowed and, for
    an unknown key, the closest known one ("did you mean tiling.mpp?"). Every object of the
    schema is closed (:func:`closed_schema`). Empty when the config is valid."""
    import difflib

    import jsonschema

    validator = jsonschema.Draft202012Validator(closed_schema(schema))
    problems = []
    for error in sorted(validator.iter_errors(config), key=lambda e: [str(p) for p in e.absolute_path]):
        where = ".".join(str(p) for p in error.absolute_path)
        prefix = f"{where}." if where else ""
        if error.validator == "additionalProperties" and isinstance(error.instance, dict):
            known = list(error.schema.get("properties", {}))
            for key in sorted(set(error.instance) - set(known)):
                close = difflib.get_close_matches(str(key), known, n=1, cutoff=0.6)
                hint = f"did you mean {prefix}{close[0]}?" if close else f"known keys{f' under {where}' if where else ''}: {', '.join(known)}"
                problems.append(f"config: unknown key {prefix}{key} ({hint})")
            continue
        hint = ""
        if error.validator == "enum" and isinstance(error.instance, str):
            close = difflib.get_close_matches(error.instance, [str(v) for v in error.schema["enum"]], n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]}?" if close else ""
        problems.append(f"config {where or '(top level)'}: {error.instance!r} is not allowed; {_allowed(error.schema)}{hint}")
    if config.get("cohort") and config.get("samples"):
        problems.append(
            f"config: cohort ({config['cohort']}) and samples ({config['samples']}) are both set; give one: "
            "cohort=DIR (every slide in a folder) or samples=FILE.tsv (a sample sheet)"
        )
    return problems


def validate_config(config: dict[str, Any], schema: dict[str, Any]) -> None:
    """Raise one :class:`~bcpath.errors.BcpathError` listing :func:`config_problems`, if any."""
    from bcpath.errors import BcpathError

    problems = config_problems(config, schema)
    if problems:
        raise BcpathError("\n".join(problems))


def coerce_command_line_values(config: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    """Turn nested ``--config`` strings back into the numbers/booleans the schema asks for.

    Snakemake parses ``--config demo='{n_slides: 24}'`` with YAML's BaseLoader, so values
    arrive as strings ("24", and "null" for null at any level). Only values whose
    schema type is number, integer or boolean (and not string) are converted, and only when
    YAML reads them as that type, plus members of untyped enums (``enabled: [auto, true,
    false]``); everything else is left for validation to report.
    Mutates and returns ``config``.
    """
    import yaml

    wanted = {"integer": (int,), "number": (int, float), "boolean": (bool,)}
    for key, value in config.items():
        prop = schema.get("properties", {}).get(key)
        if not isinstance(prop, dict):
            continue
        if isinstance(value, dict):
            coerce_command_line_values(value, prop)
            continue
        types = prop.get("type", [])
        types = [types] if isinstance(types, str) else list(types)
        if not types and "enum" in prop and isinstance(value, str):
            # An untyped enum such as ["auto", true, false]: take the YAML value when it is a member.
            try:
                parsed = yaml.safe_load(value)
            except yaml.YAMLError:
                continue
            if any(type(parsed) is type(member) and parsed == member for member in prop["enum"]):
                config[key] = parsed
            continue
        if isinstance(value, str) and value.strip() in _YAML_NULLS and "null" in types:
            config[key] = None  # `--config samples=null` arrives as the string "null"
            continue
        if not isinstance(value, str) or "string" in types:
            continue
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            continue
        if parsed is None and "null" in types:
            config[key] = None
        elif any(isinstance(parsed, wanted.get(t, ())) for t in types) and not (
            isinstance(parsed, bool) and "boolean" not in types
        ):
            config[key] = parsed
    return config
