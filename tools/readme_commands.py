"""Runs every command of the README's ```bash blocks that needs no download and no data outside the
repository, in order, in a checkout (default: a fresh clone of this one), and reports each.

    python tools/readme_commands.py            # a fresh clone in a temporary directory
    python tools/readme_commands.py --here     # this checkout (after `make demo`, say)

Commands are skipped only for a reason printed beside them: a download, data at an absolute path or a
placeholder, GPUs, a server that never exits, or `make test` (CI's own command).
"""

import argparse
import pathlib
import re
import shlex
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
SKIP = (
    (re.compile(r"--download\b"), "downloads a data set"),
    (re.compile(r"(?:folder|tfrecord|voc):/|\s/data/"), "needs data outside the repository"),
    (re.compile(r"folder:my_images|<a run>"), "a placeholder for the reader's own folder or run"),
    (re.compile(r"-m trainers\.(study|tune)\b"), "trains several nets for hours on CIFAR-10 (tfds, --download)"),
    (re.compile(r"--gpus\b"), "needs GPUs"),
    (re.compile(r"\btensorboard\b"), "starts a server that runs until stopped"),
    (re.compile(r"^make test\b"), "CI's own command (.ci/run)"),
    (re.compile(r"^trainers\.imagenet|-m trainers\.imagenet"), "needs ImageNet"),
)


def commands(readme):
    """(line number, command) of each command in ```bash blocks, continuation lines joined."""
    found, block, pending, start = [], False, "", 0
    for number, line in enumerate(readme.read_text().splitlines(), 1):
        if line.startswith("```"):
            block = line.strip() == "```bash"
            continue
        if not block or not line.strip():
            continue
        text = line.split("  #")[0].rstrip() if "  #" in line else line.rstrip()
        if not pending:
            start = number
        if text.endswith("\\"):
            pending += text[:-1] + " "
            continue
        found.append((start, (pending + text).strip()))
        pending = ""
    return found


def skip_reason(command):
    for pattern, reason in SKIP:
        if pattern.search(command):
            return reason
    return None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--here", action="store_true", help="run in this checkout instead of a fresh clone")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per command")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        where = ROOT
        if not args.here:
            where = pathlib.Path(scratch) / "clone"
            subprocess.run(["git", "clone", "-q", str(ROOT), str(where)], check=True)
        failed = 0
        for line, command in commands(where / "README.md"):
            reason = skip_reason(command)
            if reason:
                print(f"SKIP  README:{line}  {command}\n      ({reason})", flush=True)
                continue
            shell = command
            if shell.startswith("python "):
                shell = ".venv/bin/" + shell  # the README's python is the environment `make demo` made
            start = time.perf_counter()
            result = subprocess.run(shell, shell=True, cwd=where, capture_output=True, text=True, timeout=args.timeout)
            took = time.perf_counter() - start
            status = "ok" if result.returncode == 0 else f"FAIL (exit {result.returncode})"
            print(f"{status:4}  README:{line}  {command}  [{took:.0f} s]", flush=True)
            if result.returncode:
                failed += 1
                print(shlex.join(["$", shell]), "\n", (result.stdout + result.stderr)[-3000:], flush=True)
        print(f"\n{failed} failed" if failed else "\nall README commands that can run here ran")
        return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
