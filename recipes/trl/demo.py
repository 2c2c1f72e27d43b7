"""Multi-domain GRPO with modular gradient surgery on a laptop CPU, in a few minutes.

    python recipes/trl/demo.py --config recipes/trl/demo.yaml                          # surgery=modular
    python recipes/trl/demo.py --config recipes/trl/demo.yaml --surgery none           # naive mixing
    python recipes/trl/demo.py --config recipes/trl/demo.yaml --compare none,modular   # both, and a comparison

A tiny Qwen2-architecture model is built locally (no download), warm-started with TRL's SFTTrainer
on three digit-string transforms that share one prompt format (copy, reverse, sort: see mgs_tools.toy),
then trained with ``MGSGRPOTrainer`` on a mixture holding the same number of prompts of each domain
in every generation batch.

Each run goes to its own folder, ``<runs_dir>/<arm>`` (``runs/demo/modular``, ``runs/demo/none``, …; the
arm is named by the surgery settings that differ from their defaults) unless ``--output_dir`` is given:
``rewards.json`` (per-step per-domain reward means, surgery statistics, the settings), ``summary.md`` (the
table printed at the end), ``rewards.png`` and ``metrics.jsonl`` (every metric TRL logged, one line per
step; the terminal shows only progress bars and the table). ``--compare`` runs several ``surgery`` arms and
then ``compare_runs.py`` over their folders. ``--help`` lists the demo's flags; docs/demo.md has measured
runs.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import sys
import textwrap
import time
from dataclasses import dataclass, field, fields

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import yaml  # noqa: E402
from transformers import PrinterCallback, ProgressCallback, TrainerCallback  # noqa: E402
from trl import SFTConfig, SFTTrainer, TrlParser  # noqa: E402

from compare_runs import CompareError, compare  # noqa: E402  (recipes/trl/compare_runs.py, beside this script)
from mgs.methods import resolve_method  # noqa: E402
from mgs.integration import SETTINGS  # noqa: E402
from mgs_tools.toy import TRANSFORMS, char_tokenizer, domain_rows, sft_dataset, tiny_causal_lm, transform_reward  # noqa: E402
from trl_mgs import MGSGRPOConfig, MGSGRPOTrainer, check_trl_compatible, interleave_domains  # noqa: E402

PROG = "python recipes/trl/demo.py"
CONFIG = "recipes/trl/demo.yaml"


@dataclass
class DemoArguments:
    """The demo's own knobs; every GRPO setting is an ``MGSGRPOConfig`` field (``domains`` picks toy domains)."""

    runs_dir: str = field(default="runs/demo", metadata={
        "help": "Each run is written to <runs_dir>/<arm> (the arm: surgery and the surgery settings that differ from "
                "their defaults), unless --output_dir names the folder."})
    compare: str = field(default="", metadata={
        "help": "Comma-separated surgery values (e.g. none,modular): run each arm, then write the comparison "
                "(one picture, one table) to <runs_dir>/compare_<arm>_<arm>."})
    digits: int = field(default=4, metadata={"help": "Length of the digit strings."})
    prompts_per_domain: int = field(default=2000, metadata={"help": "GRPO prompts per domain."})
    hidden_size: int = field(default=64, metadata={"help": "Hidden size of the tiny model."})
    num_layers: int = field(default=2, metadata={"help": "Decoder layers of the tiny model."})
    sft_steps: int = field(default=60, metadata={"help": "Supervised warm-start steps (0: none)."})
    sft_learning_rate: float = field(default=3e-3, metadata={"help": "Learning rate of the warm start."})
    summary_fraction: float = field(default=0.2, metadata={"help": "Share of steps averaged for the start/end columns."})


# -- the command line: errors before work, short help ----------------------------------------------------------


class DemoError(SystemExit):
    """A usage error: one line on stderr, exit status 2 (raised as SystemExit, so no traceback)."""

    def __init__(self, message: str):
        message = " ".join(str(message).split())
        print(f"demo.py: error: {message}", file=sys.stderr)
        super().__init__(2)
        self.message = message


class DemoParser(TrlParser):
    """TrlParser whose errors are one line (argparse would print a usage line of every GRPOConfig flag first)."""

    def error(self, message: str):
        raise DemoError(f"{message} ({PROG} --help lists the demo's flags)")


def _parser() -> DemoParser:
    return DemoParser((DemoArguments, MGSGRPOConfig), prog=PROG)


def _flags(parser: DemoParser) -> list[str]:
    return [o for o in parser._option_string_actions if o.startswith("--")] + ["--config", "--help-all"]


def _did_you_mean(name: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(name, valid, n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else f"; {PROG} --help lists the demo's flags"


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def _check_flags(parser: DemoParser, argv: list[str]) -> None:
    valid = _flags(parser)
    for token in argv:
        if token.startswith("-") and not _is_number(token):
            name = token.split("=", 1)[0]
            if name not in valid:
                raise DemoError(f"unknown flag {name}{_did_you_mean(name, valid)}")


def _read_config(parser: DemoParser, argv: list[str]) -> dict:
    """The YAML named by ``--config``, checked: present, a mapping, every key a field."""
    if any(token.startswith("--config=") for token in argv):
        raise DemoError(f"write --config PATH with a space (TRL reads the path as the next argument): {PROG} --config {CONFIG}")
    if "--config" not in argv or argv.index("--config") + 1 >= len(argv):
        raise DemoError(f"pass the demo's settings with --config: {PROG} --config {CONFIG} "
                        f"(without them TRL's defaults ask for a GPU); {PROG} --help lists the flags")
    path = argv[argv.index("--config") + 1]
    if not os.path.isfile(path):
        raise DemoError(f"--config {path}: no such file; the demo's is {CONFIG} (run from the repository root)")
    with open(path) as f:
        config = yaml.safe_load(f)
    if not isinstance(config, dict):
        raise DemoError(f"--config {path} must hold a YAML mapping of flag names to values")
    dests = {a.dest for a in parser._actions} | {"env"}
    for key in config:
        if key not in dests:
            close = difflib.get_close_matches(str(key), sorted(dests), n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else f"; {PROG} --help lists the flags"
            raise DemoError(f"{path}: unknown key {key!r}{hint}")
    return config


def _given(argv: list[str], name: str) -> bool:
    flags = {f"--{name}", f"--{name.replace('_', '-')}"}
    return any(token.split("=", 1)[0] in flags for token in argv)


def _parse(parser: DemoParser, argv: list[str], config: dict) -> tuple[DemoArguments, MGSGRPOConfig]:
    try:
        demo, args = parser.parse_args_and_config(argv)
    except (ValueError, TypeError) as error:  # a field's validation (MGSGRPOConfig.__post_init__ and the like)
        raise DemoError(str(error)) from None
    if not (_given(argv, "output_dir") or "output_dir" in config):  # each arm its own folder
        return _parse(parser, argv + ["--output_dir", os.path.join(demo.runs_dir, arm_name(args))], config)
    args.domains = args.domains or list(TRANSFORMS)
    unknown = sorted(set(args.domains) - set(TRANSFORMS))
    if unknown:
        raise DemoError(f"unknown demo domains {unknown}; choose from {sorted(TRANSFORMS)}")
    return demo, args


_METAVARS = {"str": "TEXT", "int": "INT", "float": "FLOAT", "int or None": "INT", "list[str] or None": "NAME [NAME ...]"}


def help_text(parser: DemoParser) -> str:
    """``--help``: the demo's flags, the surgery settings, and where the full TRL list is."""
    actions = {a.dest: a for a in parser._actions}
    shipped = os.path.join(os.path.dirname(os.path.abspath(__file__)), "demo.yaml")
    yaml_values = yaml.safe_load(open(shipped)) if os.path.isfile(shipped) else {}

    def entry(flag: str, text: str, name: str, default) -> str:
        text += f" (default: {default!r}" + (f"; demo.yaml: {yaml_values[name]!r})" if name in yaml_values else ")")
        body = textwrap.fill(text, width=100, initial_indent=" " * 4, subsequent_indent=" " * 4)
        return f"  {flag}\n{body}"

    lines = [f"usage: {PROG} --config {CONFIG} [flags]", "",
             textwrap.fill(__doc__.split("\n\n")[0], width=104), "",
             "The demo's flags (DemoArguments):",
             f"  --config PATH\n    The demo's YAML (required): {CONFIG}. Flags override its values."]
    for f in fields(DemoArguments):
        kind = f.type if isinstance(f.type, str) else f.type.__name__  # HfArgumentParser resolves the annotations
        lines.append(entry(f"--{f.name} {_METAVARS.get(kind, kind.upper())}", f.metadata["help"], f.name, f.default))
    lines += ["", "Surgery settings (MGSGRPOConfig; every entry of mgs.integration.SETTINGS):"]
    for s in SETTINGS:
        value = f"{{{','.join(s.choices)}}}" if s.choices else _METAVARS.get(s.type, s.type.upper())
        lines.append(entry(f"--{s.name} {value}", s.help, s.name, actions[s.name].default))
    total = len({a.dest for a in parser._actions if a.option_strings and a.dest != "help"})
    lines += ["", "Every other MGSGRPOConfig / GRPOConfig field is a flag too (--max_steps 600, --learning_rate 3e-4, "
              "--report_to tensorboard, ...):",
              f"  {PROG} --help-all lists all {total} (TRL's own help).", "",
              "Outputs: <runs_dir>/<arm>/ summary.md, rewards.json, rewards.png, metrics.jsonl; docs/demo.md."]
    return "\n".join(lines)


# -- what ran ----------------------------------------------------------------------------------------------------


def surgery_settings(args) -> dict:
    """Every surgery setting (:data:`mgs.integration.SETTINGS`) and its value in this run, by flag name."""
    return {s.name: getattr(args, s.name) for s in SETTINGS}


def describe(args) -> str:
    """``surgery=modular surgery_granularity=parameter ...``: every surgery setting, as the flags spell it."""
    parts = []
    for name, value in surgery_settings(args).items():
        if isinstance(value, (list, tuple)):
            value = ",".join(map(str, value))
        parts.append(f"{name}={value}" + (f" (seed {args.seed})" if name == "surgery_seed" and value is None else ""))
    return "  ".join(parts)


def arm_name(args) -> str:
    """The run folder's name: ``surgery``, then every other surgery setting that differs from its default
    (``modular``, ``none``, ``modular-granularity_block-balance_norm``); the domain list is not part of it."""
    parts = [str(args.surgery)]
    for s in SETTINGS:
        value = getattr(args, s.name)
        if s.name not in ("surgery", "domains") and value != s.default:
            parts.append(f"{s.name.removeprefix('surgery_')}_{value}".replace(os.sep, "_").replace(" ", ""))
    return "-".join(parts)


TRAINING_KEYS = ("max_steps", "seed", "learning_rate", "num_generations", "per_device_train_batch_size",
                 "max_completion_length", "temperature", "beta")


def training_settings(demo: DemoArguments, args: MGSGRPOConfig) -> dict:
    """The GRPO and demo settings a comparison checks are the same across arms."""
    out = {k: getattr(args, k) for k in TRAINING_KEYS}
    out.update({f.name: getattr(demo, f.name) for f in fields(DemoArguments) if f.name not in ("runs_dir", "compare")})
    return out


def threads() -> dict:
    return {"torch_threads": torch.get_num_threads(), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")}


# -- the run -------------------------------------------------------------------------------------------------------


class QuietProgress(ProgressCallback):
    """TRL's progress bar without the metrics dict it prints at every logging step (those go to metrics.jsonl)."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        pass


class MetricsFile(TrainerCallback):
    """Every logged metrics dict, one JSON line per logging step (NaN written as null)."""

    def __init__(self, path: str):
        self.path = path
        open(path, "w").close()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in logs.items()}
            with open(self.path, "a") as f:
                f.write(json.dumps({"step": state.global_step, **clean}) + "\n")


def quiet(trainer, disable_tqdm: bool):
    """Swap the trainer's console logging for a bare progress bar (none with ``disable_tqdm``)."""
    trainer.pop_callback(ProgressCallback)
    trainer.pop_callback(PrinterCallback)
    if not disable_tqdm:
        trainer.add_callback(QuietProgress)
    return trainer


def preflight(args: MGSGRPOConfig) -> None:
    """Validate the surgery settings and build the method the trainer will build, so that a missing extra
    (``upgrad`` without torchjd) or a bad setting fails now, not after the warm start. (The grouping itself, e.g.
    ``head`` on the model's attention, is checked when the trainer builds the surgery on the model.)"""
    try:
        options = args.surgery_options(args.domains)
        if options.surgery != "none":
            resolve_method(options.method)
    except (ImportError, ValueError, TypeError) as error:
        raise DemoError(str(error)) from None


def warm_start(model, tokenizer, demo: DemoArguments, args: MGSGRPOConfig):
    """A short supervised start, so that GRPO's rewards begin well above zero but far from solved."""
    if demo.sft_steps == 0:
        return model, None
    config = SFTConfig(
        output_dir=os.path.join(args.output_dir, "warmup"), max_steps=demo.sft_steps, per_device_train_batch_size=32,
        learning_rate=demo.sft_learning_rate, lr_scheduler_type="constant", use_cpu=args.use_cpu, bf16=False,
        report_to="none", save_strategy="no", logging_steps=max(1, demo.sft_steps // 4), seed=args.seed,
        disable_tqdm=args.disable_tqdm, max_length=32, gradient_checkpointing=False,
    )
    data = sft_dataset(args.domains, n_per_domain=demo.sft_steps * 32 // len(args.domains) + 1,
                       length=demo.digits, seed=args.seed)
    trainer = quiet(SFTTrainer(model=model, args=config, train_dataset=data, processing_class=tokenizer),
                    args.disable_tqdm)
    trainer.train()
    try:
        os.rmdir(config.output_dir)  # SFTTrainer's output folder stays empty (save_strategy="no")
    except OSError:
        pass
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return trainer.model, losses


def grpo_dataset(demo: DemoArguments, args: MGSGRPOConfig):
    """Prompts of every domain, mixed with equal counts in every generation batch (other rows than the warm start's)."""
    prompts_per_batch = args.generation_batch_size // args.num_generations
    check_trl_compatible(args, prompts_per_batch)
    sources = {d: [{"prompt": r["prompt"], "digits": r["digits"]}
                   for r in domain_rows(d, demo.prompts_per_domain, demo.digits, seed=args.seed + 1)]
               for d in args.domains}
    proportions = {d: 1 / len(args.domains) for d in args.domains}
    return interleave_domains(sources, proportions, batch_size=prompts_per_batch, seed=args.seed, stopping="cycle")


def summarize(history: list[dict], domains: list[str], fraction: float) -> dict:
    """Per-step series from TRL's log history, and start/end means over the first and last ``fraction`` of steps."""
    steps = [h for h in history if "mgs/conflict_frac" in h]
    series = {d: [h.get(f"mgs/reward/{d}/mean") for h in steps] for d in domains}
    stats = {key: [h.get(f"mgs/{key}") for h in steps]
             for key in ("conflict_frac", "cosine_mean", "cosine_global", "change_ratio", "update_norm")}
    n = max(1, int(len(steps) * fraction))

    def mean(values):
        values = [v for v in values if v is not None and not math.isnan(v)]
        return sum(values) / len(values) if values else float("nan")

    table = {d: {"start": mean(series[d][:n]), "end": mean(series[d][-n:])} for d in domains}
    return {"steps": [h["step"] for h in steps], "rewards": series, "stats": stats, "table": table, "window": n,
            "conflict_frac": mean(stats["conflict_frac"]), "cosine_global": mean(stats["cosine_global"])}


def markdown(summary: dict, args: MGSGRPOConfig) -> str:
    n, steps, timing = summary["window"], len(summary["steps"]), summary["timing"]
    omp = timing["OMP_NUM_THREADS"]
    lines = [f"# demo run {summary['arm']}", "", describe(args), "",
             f"{steps} GRPO steps, seed {args.seed}; {timing['total_s']:.0f} s wall (warm start "
             f"{timing['warm_start_s']:.0f} s, GRPO {timing['grpo_s']:.0f} s); "
             f"torch threads: {timing['torch_threads']} (OMP_NUM_THREADS={omp if omp is not None else 'unset'})",
             "", f"| domain | reward, first {n} steps | reward, last {n} steps | change |", "|---|---|---|---|"]
    rows = summary["table"]
    for d, r in rows.items():
        lines.append(f"| {d} | {r['start']:.3f} | {r['end']:.3f} | {r['end'] - r['start']:+.3f} |")
    start = sum(r["start"] for r in rows.values()) / len(rows)
    end = sum(r["end"] for r in rows.values()) / len(rows)
    lines.append(f"| **mean** | {start:.3f} | {end:.3f} | {end - start:+.3f} |")
    lines += ["", f"mean over steps: conflict_frac {summary['conflict_frac']:.3f} of (module, domain pair) dot products "
              f"negative; whole-model cosine {summary['cosine_global']:+.3f}"]
    return "\n".join(lines) + "\n"


def reward_figure(summary: dict, title: str):
    """Per-domain reward curves (matplotlib's object API: the caller's backend is never changed)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.4), layout="constrained")
    ax = fig.subplots()
    window = max(1, len(summary["steps"]) // 20)
    for d, values in summary["rewards"].items():
        points = [(s, v) for s, v in zip(summary["steps"], values) if v is not None]
        xs, ys = [s for s, _ in points], [v for _, v in points]
        smooth = [sum(ys[max(0, i - window + 1) : i + 1]) / len(ys[max(0, i - window + 1) : i + 1]) for i in range(len(ys))]
        ax.plot(xs, smooth, label=d)
    ax.set_xlabel("GRPO step")
    ax.set_ylabel(f"mean reward (moving average of {window})")
    ax.set_ylim(0, 1)
    ax.legend()
    fig.suptitle(title, fontsize=8)
    return fig


def plot_title(args: MGSGRPOConfig) -> str:
    settings = describe(args).split("  ")
    half = (len(settings) + 1) // 2
    return "per-domain reward\n" + "  ".join(settings[:half]) + "\n" + "  ".join(settings[half:])


def run(demo: DemoArguments, args: MGSGRPOConfig) -> dict:
    """One arm: warm start, GRPO, then the table and the files in ``args.output_dir``."""
    import datasets

    os.makedirs(args.output_dir, exist_ok=True)
    per_batch = args.generation_batch_size // args.num_generations
    omp = os.environ.get("OMP_NUM_THREADS")
    print(f"MGS demo -> {args.output_dir}\n{describe(args)}\n"
          f"torch threads: {torch.get_num_threads()} (OMP_NUM_THREADS={omp if omp is not None else 'unset'}"
          + ("; on a busy or small machine OMP_NUM_THREADS=1 can be much faster: docs/demo.md)" if omp is None else ")"),
          flush=True)
    bars = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()  # SFTTrainer's dataset preparation bars
    try:
        start = time.perf_counter()
        tokenizer = char_tokenizer()
        model = tiny_causal_lm(hidden=demo.hidden_size, layers=demo.num_layers, seed=args.seed)
        print(f"1/2 warm start: {demo.sft_steps} SFT steps of 32 rows", flush=True)
        model, losses = warm_start(model, tokenizer, demo, args)
        warm = time.perf_counter() - start
        if losses:
            print(f"    loss {losses[0]:.2f} -> {losses[-1]:.2f} ({warm:.0f} s)", flush=True)
        print(f"2/2 GRPO: {args.max_steps} steps of {per_batch} prompts x {args.num_generations} completions "
              f"({len(args.domains)} domains, equal counts)", flush=True)
        trainer = MGSGRPOTrainer(model=model, reward_funcs=[transform_reward], args=args,
                                 train_dataset=grpo_dataset(demo, args), processing_class=tokenizer)
        quiet(trainer, args.disable_tqdm)
        trainer.add_callback(MetricsFile(os.path.join(args.output_dir, "metrics.jsonl")))
        trainer.train()
    finally:
        if bars:
            datasets.enable_progress_bars()
    seconds = time.perf_counter() - start
    summary = summarize(trainer.state.log_history, list(trainer.surgery.domains), demo.summary_fraction)
    summary.update({
        "arm": os.path.basename(os.path.normpath(args.output_dir)), "surgery": args.surgery,
        "settings": surgery_settings(args), "training": training_settings(demo, args), "seconds": seconds,
        "timing": {"total_s": seconds, "warm_start_s": warm, "grpo_s": seconds - warm, **threads()},
    })
    with open(os.path.join(args.output_dir, "rewards.json"), "w") as f:
        json.dump(summary, f, indent=1)
    table = markdown(summary, args)
    with open(os.path.join(args.output_dir, "summary.md"), "w") as f:
        f.write(table)
    reward_figure(summary, plot_title(args)).savefig(os.path.join(args.output_dir, "rewards.png"), dpi=100)
    print("\n" + table + f"\nwrote {args.output_dir}/: summary.md, rewards.json, rewards.png, metrics.jsonl "
          "(every logged metric)", flush=True)
    return summary


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    if "-h" in argv or "--help" in argv:
        print(help_text(parser))
        raise SystemExit(0)
    if "--help-all" in argv:
        parser.print_help()
        raise SystemExit(0)
    _check_flags(parser, argv)
    config = _read_config(parser, argv)
    demo, args = _parse(parser, argv, config)
    if not demo.compare:
        preflight(args)
        return run(demo, args)
    if _given(argv, "output_dir") or "output_dir" in config:
        raise DemoError("--compare writes each arm to <runs_dir>/<arm>; pass --runs_dir instead of --output_dir")
    arms = [a.strip() for a in demo.compare.split(",") if a.strip()]
    if len(arms) < 2 or len(set(arms)) < len(arms):
        raise DemoError(f"--compare takes two or more different surgery values, e.g. none,modular; got {demo.compare!r}")
    parsed = [_parse(parser, argv + ["--surgery", arm], config) for arm in arms]
    for _, arm_args in parsed:  # every arm's errors before any arm's work
        preflight(arm_args)
    folders = []
    for n, (arm_demo, arm_args) in enumerate(parsed):
        print(f"\n=== arm {n + 1}/{len(parsed)}: surgery={arm_args.surgery} ===", flush=True)
        run(arm_demo, arm_args)
        folders.append(arm_args.output_dir)
    print(f"\n=== comparison of {', '.join(arms)} ===", flush=True)
    try:
        names = [os.path.basename(os.path.normpath(f)) for f in folders]
        return compare(folders, os.path.join(demo.runs_dir, "compare_" + "_".join(names)))
    except CompareError as error:
        raise DemoError(str(error)) from None


if __name__ == "__main__":
    main(sys.argv[1:])
