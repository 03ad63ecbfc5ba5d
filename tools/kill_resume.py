"""Kills `python -m jaxguard.train` at random points, resumes it, and compares the result.

    .venv/bin/python tools/kill_resume.py --tries 30            # the toy task, a few minutes
    .venv/bin/python tools/kill_resume.py --tries 10 --modes time --repo /path/to/old/checkout

Each try starts a run in a fresh workdir and SIGKILLs it, either after a random delay (`time`:
uniform over the part of an uninterrupted run after its start-up line, so the kills fall in
training, checkpointing and the final test) or at a random event (`event`: a train step, the
start of a save, between the `latest/` and `best/` saves, after a validation pass, or before
the report is written, through the test-only hook `JAXGUARD_TEST_PAUSE_AT`). Then it
resumes the way a scheduler would (`--resume` when the workdir has `checkpoints/latest`, else
the same command again) and counts the try as
`identical` (log.csv bytes and test_metrics.json, timings aside, equal to an uninterrupted
run's), `different`, or `stuck` (the resume failed or timed out). `--repo` runs another
checkout (its `jaxguard` first on PYTHONPATH) to measure a version from before a change.
Prints a Markdown table and writes it with the per-try records as JSON to `--out`.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAUSED = "JAXGUARD_TEST_PAUSED"
STARTED = "steps per epoch"  # In the line a run prints once it is built.


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tries", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cfg", default="tests/toy_config.py", help="Relative to --repo.")
    parser.add_argument("--repo", default=HERE, help="The checkout to run (default: this one).")
    parser.add_argument("--modes", default="time,event", help="time, event or both.")
    parser.add_argument("--out", default="/tmp/kill_resume", help="Workdirs and the report.")
    parser.add_argument("--timeout", type=float, default=300.0, help="Seconds per process.")
    return parser.parse_args(argv)


def environment(repo: str, pause: str | None = None) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([repo, os.path.join(repo, "tests")])}
    env.pop("JAXGUARD_TEST_PAUSE_AT", None)
    if pause:
        env["JAXGUARD_TEST_PAUSE_AT"] = pause
    return env


def command(args, workdir: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "jaxguard.train", "--cfg", args.cfg, "--workdir", workdir, *extra]


def start(args, workdir: str, pause: str | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        command(args, workdir),
        cwd=args.repo,
        env=environment(args.repo, pause),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(process: subprocess.Popen, marker: str) -> bool:
    """Reads stderr until a line holds `marker` (True) or the process ends (False)."""
    for line in process.stderr:
        if marker in line:
            return True
    return False


def outputs(workdir: str) -> tuple[bytes, dict] | None:
    """`log.csv` bytes and `test_metrics.json` without timings and paths; None if missing."""
    try:
        with open(os.path.join(workdir, "log.csv"), "rb") as f:
            log = f.read()
        with open(os.path.join(workdir, "test_metrics.json")) as f:
            metrics = json.load(f)
    except (OSError, ValueError):
        return None
    for key in ("train_seconds", "workdir"):
        metrics.pop(key, None)
    return log, metrics


def reference_run(args) -> tuple[tuple[bytes, dict], float]:
    """The uninterrupted outputs and the seconds from the start-up line to the exit."""
    workdir = os.path.join(args.out, "reference")
    process = start(args, workdir)
    if not wait_for(process, STARTED):
        sys.exit(f"the reference run failed: {process.wait()}")
    started = time.monotonic()
    process.stderr.read()
    if process.wait(timeout=args.timeout) != 0:
        sys.exit("the reference run failed")
    return outputs(workdir), time.monotonic() - started


def kill_at_time(args, workdir: str, delay: float) -> str:
    """SIGKILLs the run `delay` seconds after its start-up line; returns where it was."""
    process = start(args, workdir)
    if not wait_for(process, STARTED):
        return f"ended before start-up (exit {process.wait()})"
    time.sleep(delay)
    finished = process.poll() is not None
    process.kill()
    process.wait()
    return f"{delay:.2f} s after start-up" + (" (had finished)" if finished else "")


def kill_at_event(args, workdir: str, point: str) -> str:
    """SIGKILLs the run when it pauses at `point`; returns where it was."""
    process = start(args, workdir, pause=point)
    reached = wait_for(process, PAUSED)
    process.kill()
    process.wait()
    return point if reached else f"{point} (never reached)"


def resume(args, workdir: str) -> tuple[int, str]:
    """Continues like a scheduler: `--resume` when there are checkpoints, else a fresh start."""
    has_checkpoints = os.path.isdir(os.path.join(workdir, "checkpoints", "latest"))
    extra = ("--resume",) if has_checkpoints else ()
    try:
        result = subprocess.run(
            command(args, workdir, *extra),
            cwd=args.repo,
            env=environment(args.repo),
            capture_output=True,
            text=True,
            timeout=args.timeout,
        )
    except subprocess.TimeoutExpired:
        return -1, "timed out"
    lines = result.stderr.strip().splitlines()
    return result.returncode, lines[-1] if lines else ""


def event_points(rng: random.Random, epochs: int = 5, steps: int = 40) -> str:
    kind = rng.choice(["step", "save", "between_latest_and_best", "evaluate", "report"])
    last = {"step": steps, "report": 1}.get(kind, epochs)
    return f"{kind}:{rng.randint(1, last)}"


def one_try(args, index: int, mode: str, rng: random.Random, reference, span: float) -> dict:
    workdir = os.path.join(args.out, f"try{index:03d}")
    shutil.rmtree(workdir, ignore_errors=True)
    if mode == "time":
        where = kill_at_time(args, workdir, rng.uniform(0.0, span))
    else:
        where = kill_at_event(args, workdir, event_points(rng))
    code, last_line = resume(args, workdir)
    got = outputs(workdir)
    outcome = "stuck" if code != 0 or got is None else "identical"
    if outcome == "identical" and got != reference:
        outcome = "different"
    return {"try": index, "mode": mode, "killed": where, "outcome": outcome, "resume": last_line}


def report(records: list[dict], args, span: float) -> str:
    lines = [
        f"kill/resume: {len(records)} tries, repo {args.repo}, cfg {args.cfg}, seed {args.seed}",
        f"(time mode: kills uniform over the {span:.1f} s after start-up)",
        "",
        "| mode | tries | identical | different | stuck |",
        "|---|---|---|---|---|",
    ]
    for mode in sorted({r["mode"] for r in records}) + ["all"]:
        chosen = [r for r in records if mode in ("all", r["mode"])]
        outcomes = ("identical", "different", "stuck")
        counts = [sum(r["outcome"] == outcome for r in chosen) for outcome in outcomes]
        lines.append(f"| {mode} | {len(chosen)} | " + " | ".join(map(str, counts)) + " |")
    bad = [r for r in records if r["outcome"] != "identical"]
    lines.append("")
    lines += [f"- try {r['try']} ({r['killed']}): {r['outcome']}: {r['resume']}" for r in bad]
    return "\n".join(lines)


def main(argv=None) -> None:
    args = parse_args(argv)
    args.repo = os.path.abspath(args.repo)
    os.makedirs(args.out, exist_ok=True)
    modes = args.modes.split(",")
    rng = random.Random(args.seed)
    reference, span = reference_run(args)
    records = []
    for index in range(args.tries):
        record = one_try(args, index, modes[index % len(modes)], rng, reference, span)
        print(json.dumps(record), flush=True)
        records.append(record)
    text = report(records, args, span)
    print(text)
    with open(os.path.join(args.out, "report.md"), "w") as f:
        f.write(text + "\n")
    with open(os.path.join(args.out, "records.json"), "w") as f:
        json.dump(records, f, indent=1)


if __name__ == "__main__":
    main()
