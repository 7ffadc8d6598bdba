"""The README is executable: its commands, exactly as it gives them, from a scratch copy of the
repository (relative paths, the default out/), each exits 0 and prints what the README says.

The commands are read from README.md's own code blocks, so this test follows the README when it
changes. Only the work is shortened (overrides appended to every train.py command, --num_samples
to story_samples, --max_new_tokens to the published architecture's sampler, which compiles each
window length anew); the install steps of the Quick start are what CI itself runs
before this test. The files the README's commands name but a fresh clone cannot have (the
published `out/ckpt-500.pth`, a Hugging Face GPT-2 directory, BlinkDL RWKV-4 `.pth` files, a
tokenizer.json, `data/*.txt`, BlinkDL RWKV-6/7 World `.pth` files) are built small here, at the paths the README names. Commands that
need the GPT-2 BPE file run when MICRORWKV_GPT2_BPE names it (CI has it) and are named in a
warning otherwise; the few commands left out are listed in SKIPPED with the reason, and a
command the README repeats word for word runs once, where it first appears.
"""

import os
import pathlib
import re
import shlex
import shutil
import subprocess
import sys
import time
import warnings

import pytest

from tests.helpers import REPO, gpt2_bpe_path, make_tokenizer_json

torch = pytest.importorskip("torch", reason="torch is the test extra: pip install -e '.[test]'")
transformers = pytest.importorskip("transformers", reason="transformers is the test extra: pip install -e '.[test]'")

pytestmark = pytest.mark.slow

# The shortening: appended to every train.py command that trains.
SHORT_TRAINING = ["--config.num_train_steps=4", "--config.eval_every=4", "--config.valid_story_samples=0",
                  "--config.eval_batches=1", "--config.log_every=2"]
SHORT_EVALUATION = ["--config.valid_story_samples=0"]       # appended to eval_only runs
# The Quick start's training samples 2 stories (its summary shows the valid-story rate); the
# other runs none (each would compile its sampler again: the CI budget; sample.py's commands and
# story_samples run the samplers).
QUICK_START_TRAINING = "python train.py --config configs/tiny.py"
# Commands left out, with the reason (matched against the command as the README writes it).
SKIPPED = {
    "pip install": "the install: CI's own .ci/run installs exactly so before this test",
    "python3 -m venv": "the install: CI's own .ci/run installs exactly so before this test",
    ". .venv/bin/activate": "the install: CI's own .ci/run installs exactly so before this test",
    "python -m pytest": "the test command itself (CI runs it)",
    "configs/tinystories.py": "the table-size model (151M parameters): minutes per step on 2 CPU cores",
    "story_samples out/ref": "the published architecture has no recurrent sampler and compiles each window "
                             "length anew (16 minutes)",
    "bench.py text": "the race itself (nanoGPT's files, 7 minutes); tests/test_benchmarks.py runs it shortened",
    "tune=lora": "LoRA on a BlinkDL RWKV-7 .pth, trained, exported and run in the rwkv package by "
                 "tests/families/test_adapting.py (the CI budget)",
    "out/lora_rwkv7 --to pth": "the export of the LoRA run above (tests/families/test_adapting.py)",
    "--ckpt big-model --fsdp 8": "sample.py's parameters split over 8 devices: tests/test_sampling.py runs it "
                                 "(--fsdp 4 --tensor 2, and --fsdp 3 refused) against one device (the CI budget)",
}
# What each script prints, as the README says (stdout and stderr together).
TEXT_SCORES = r"held-out text of [\d,]+ bytes, every byte scored: full context \(.*\) [\d.]+ nats/byte"
PRINTS = [
    ("eval_only=True", rf"eval: ({TEXT_SCORES}|val_loss [\d.]+ nats/token)"),
    ("configs/eval_", rf"eval: {TEXT_SCORES}"),
    ("train.py", rf"\ndone: .*\n  (validation loss [\d.]+ nats/token on all \d+ held-out documents.*|{TEXT_SCORES}.*)\n"
                 r"  checkpoint: \S+\n  loss curves: \S+loss.png\n  next: python sample.py"),
    ("sample.py", r"sample.py: \d+ tokens generated, time to first token \d+ ms, .* tokens/s after it"),
    ("microrwkv_jax.plot", r"loss.png"),
    ("story_samples", r"valid stories: \d+/\d+"),
    ("microrwkv_jax.data.prepare", r"training tokens"),
    ("convert_torch_ckpt.py out/ckpt-500", r"ckpt-500"),
    ("convert_torch_ckpt.py RWKV-x070", r"RWKV-x070.*\n(.*\n)*  tokenizer: world"),
    ("convert_torch_ckpt.py out/rwkv7 --to pth", r"exported out/rwkv7 -> out/rwkv7.pth\n  model: RWKV-7: "),
]
# The Quick start first, then the published weights (their converted directory is sampled in
# "Sampling"), then every other section in the README's order.
FIRST_SECTIONS = ("Quick start", "Using the published MicroRWKV weights")
NEEDS_GPT2_BPE = ("ckpt-500", "tokenizer=gpt2", "--tokenizer gpt2", "path/to/gpt2", "eval_gpt2")


def readme_blocks():
    """[(section heading, language, text)] of README.md's fenced code blocks, in order."""
    section, blocks, current = "", [], None
    for line in (REPO / "README.md").read_text().splitlines():
        stripped = line.strip()
        if current is None and line.startswith("#"):
            section = line.lstrip("#").strip()
        elif stripped.startswith("```") and current is None:
            current = (section, stripped[3:].strip(), [])
        elif stripped.startswith("```"):
            blocks.append((current[0], current[1], "\n".join(current[2])))
            current = None
        elif current is not None:
            current[2].append(line)
    return blocks


def bash_commands(text: str) -> list:
    """The commands of a bash block: continuation lines joined, comments dropped, `&&` chains split."""
    commands = []
    for line in text.replace("\\\n", " ").splitlines():
        for part in line.split(" && "):
            words = shlex.split(part, comments=True)
            if words:
                commands.append(shlex.join(words))
    return commands


def commands_in_order() -> list:
    """[(kind "bash" or "python", text)] of every README command, in the order they run."""
    blocks = readme_blocks()
    first = [b for name in FIRST_SECTIONS for b in blocks if b[0].startswith(name)]
    ordered = first + [b for b in blocks if b not in first]
    out = []
    for _, language, text in ordered:
        if language == "bash":
            out += [("bash", command) for command in bash_commands(text)]
        elif language == "python":
            out.append(("python", text))
    return out


def summary_pattern() -> str:
    """A regex of the main job's summary as the README shows it (its unlabelled block that starts
    with "done:"), the numbers free."""
    shown = next(text for _, language, text in readme_blocks() if language == "" and text.lstrip().startswith("done:"))
    pattern = re.sub(r"\d+(\\\.\d+)?", lambda _: r"[\d.]+", re.escape(shown.strip()))
    return pattern.replace(r"\+", "[+-]")


def shortened(command: str) -> str:
    if command == QUICK_START_TRAINING:
        return command + " " + " ".join(SHORT_TRAINING) + " --config.valid_story_samples=2"
    if command.startswith("python train.py") and "eval_only=True" not in command and "configs/eval_" not in command:
        return command + " " + " ".join(SHORT_TRAINING)
    if command.startswith("python train.py"):
        return command + " " + " ".join(SHORT_EVALUATION)
    if "story_samples" in command:
        return command + " --num_samples 2"
    if command.startswith("python sample.py") and "ckpt-500" in command:
        # The published architecture has no recurrent form: each new token reruns its window and
        # each window length compiles anew (the README says so), minutes for the default 200.
        return command + " --max_new_tokens 3"
    return command


def make_fixtures(root: pathlib.Path) -> None:
    """The files the README's commands name that a fresh clone lacks, small, at the named paths."""
    from microrwkv_jax import model_config
    from microrwkv_jax.data.stories import generate_stories
    from microrwkv_jax.families.rwkv4.checkpoint_names import parameter_map, rwkv4_config
    from torch_reference.published import save_published_checkpoint
    from tests.families.published_helpers import torch_model

    (root / "data").mkdir()
    stories = generate_stories(400, 11)[0]
    (root / "data" / "TinyStories-sample.txt").write_text("<|endoftext|>".join(stories))
    (root / "my.txt").write_bytes(("\r\n\r\n".join(stories) + "\r\n").encode())     # "your own text"
    (root / "out").mkdir()
    published, args = torch_model(3, vocab_size=50304)            # the published model reads GPT-2 tokens
    save_published_checkpoint(root / "out" / "ckpt-500.pth", published, args)
    torch.manual_seed(0)
    for name in ("gpt2", "gpt2-xl"):
        gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=50257, n_positions=1024, n_embd=32,
                                                                    n_layer=2, n_head=4)).eval()
        gpt2.save_pretrained(root / "path" / "to" / name)
    make_tokenizer_json(root / "20B_tokenizer.json", vocab_size=320)
    vocab = 320                                                  # the tokenizer's
    rwkv = transformers.RwkvForCausalLM(transformers.RwkvConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2,
                                                                context_length=128, intermediate_size=128)).eval()
    config = rwkv4_config(vocab, 32, 2, 128)
    sd = rwkv.state_dict()
    blinkdl = {blink: sd[name].to(torch.bfloat16) for name, blink, _, _, _ in parameter_map(config)}
    for name in ("RWKV-4-Pile-1B5-20220903-8040.pth", "RWKV-4-Pile-7B-....pth"):
        torch.save(blinkdl, root / name)
    from benchmarks.rwkv_package_peer import random_state_dict, save_pth
    from microrwkv_jax.families import FAMILIES
    for name, arch, fields in (("RWKV-x070-World-0.1B-v2.8-20241210-ctx4096.pth", "rwkv7", {"lora_dims": (32,) * 4}),
                               ("RWKV-x060-World-1B6-v2.1-20240328-ctx4096.pth", "rwkv6", {"lora_dims": (32, 64)})):
        config = model_config(arch, n_layer=2, n_embd=64, n_head=1, **fields)      # the World vocabulary, 65,536
        save_pth(random_state_dict(FAMILIES[arch].torch_checkpoint.parameter_map(config)), root / name, "bfloat16")


def scratch_copy(root: pathlib.Path) -> pathlib.Path:
    """The repository's files as a fresh clone has them (tracked and not ignored), at `root`."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True,
                            check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, root / name)
    return root


def run_command(kind: str, text: str, cwd: pathlib.Path, env: dict) -> subprocess.CompletedProcess:
    argv = ["bash", "-c", text] if kind == "bash" else [sys.executable, "-c", text]
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


def test_every_readme_command_runs_as_written(tmp_path):
    root = scratch_copy(tmp_path / "repo")
    make_fixtures(root)
    env = {**os.environ, "PATH": f"{pathlib.Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "MICRORWKV_COMPILATION_CACHE": str(tmp_path / "jax-cache"), "PYTHONPATH": ""}
    bpe = gpt2_bpe_path()
    left_out, failures, ran, next_line, seen = [], [], 0, None, set()
    for kind, text in commands_in_order():
        reason = next((why for key, why in SKIPPED.items() if key in text), None) if kind == "bash" else None
        if reason is None and (kind, text) in seen:
            reason = "the README repeats it; it ran where it first appears"
        seen.add((kind, text))
        if reason is None and bpe is None and any(key in text for key in NEEDS_GPT2_BPE):
            reason = "needs the GPT-2 BPE file (MICRORWKV_GPT2_BPE)"
        if reason:
            left_out.append(f"{text[:70]}: {reason}")
            continue
        command = shortened(text) if kind == "bash" else text
        started = time.perf_counter()
        done = run_command(kind, command, root, env)
        print(f"{time.perf_counter() - started:6.1f} s  {command[:100]}")     # (pytest -s shows where the time goes)
        ran += 1
        output = done.stdout + done.stderr
        if done.returncode != 0:
            failures.append(f"{command[:120]!r} exited {done.returncode}: {output.strip().splitlines()[-1:]}")
            continue
        if "WARNING" in output:        # (orbax's absl warnings on reading a checkpoint say nothing to act on)
            failures.append(f"{command[:120]!r} printed a warning: "
                            f"{[l for l in output.splitlines() if 'WARNING' in l][:2]}")
        expected = next((pattern for key, pattern in PRINTS if kind == "bash" and key in command), None)
        if expected and not re.search(expected, output):
            failures.append(f"{command[:120]!r} did not print {expected!r}; it printed {output[-600:]!r}")
        if next_line is None and command.startswith("python train.py --config configs/tiny.py "):
            # The Quick start's training: its summary as the README shows it, and its next: line.
            if not re.search(summary_pattern(), output):
                failures.append(f"the Quick start's summary is not the README's: {output[-600:]!r}")
            found = re.search(r"  next: (python sample\.py.*)", output)
            next_line = found.group(1) if found else None
    # train.py's own `next:` line, run as printed.
    assert next_line == 'python sample.py --prompt "One day"', next_line
    done = run_command("bash", next_line, root, env)
    assert done.returncode == 0 and re.search(dict(PRINTS)["sample.py"], done.stderr), done.stderr[-600:]
    bad = [line for line in left_out if "GPT-2 BPE" in line]
    if bad:
        warnings.warn("README commands not run without the GPT-2 BPE file: " + "; ".join(bad))
    assert not failures, "\n".join(failures)
    assert ran >= 25, (ran, left_out)
