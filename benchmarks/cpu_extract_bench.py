"""End-to-end CPU extraction: exact fp32 against the fast path, as a user runs it (issue 19).

Each configuration is the real command, ``socialfeat extract`` in a fresh process (start-up,
weights loading, decoding workers and the model on the same cores), on one 60-s 640x480
H.264 + AAC talking-face video with a released-size Social-MAE (random weights). Runs are
interleaved over ``--rounds``; printed per configuration: clips/s (wall clock, whole command),
CPU seconds per clip (all its processes: robust to other jobs on a shared machine), and
against fp32 the cosine of each embedding (joint, audio, visual). First, a model-only table:
``encode`` on one thread, CPU seconds per clip, which other jobs on a shared machine barely
move (wall-clock figures there do move, by 2x and more).

Probe effect (``--probe-videos``): talking-face videos with white noise added to their
speech, at levels of two overlapping ranges (the label: noisy or clean; voices, words and
backgrounds vary independently), are embedded with fp32 and with the fast path; a logistic
regression predicts the label from each embedding, leave-one-video-out. Printed: balanced accuracy fitted and tested on fp32, on the
fast path, and fitted on fp32 but applied to fast-path embeddings.

``--emulate`` runs every configuration as a CPU without AMX would (on an AMX machine):
``avx512`` (AVX512-VNNI, e.g. AMD Zen 4, Intel Ice Lake), ``avx2-vnni`` (AVX2 with AVX-VNNI,
Intel laptop and desktop CPUs since Alder Lake) or ``avx2`` (e.g. AMD Zen 2/3, Intel before Ice
Lake): AMX permission refused through an LD_PRELOAD shim (noamx.c, compiled here
with cc), and oneDNN / MKL / FBGEMM / ATen held to that instruction set by their environment
variables.

  python benchmarks/cpu_extract_bench.py                      # this CPU as it is
  python benchmarks/cpu_extract_bench.py --emulate avx2 --configs fp32,int8,int8-joint
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import wave
from pathlib import Path

import numpy as np
import torch
from _media import require_tools, speech_wav, talking_video

import socialfeat
from socialfeat.models import create_model, save_checkpoint
from socialfeat.models.fast import cpu_description

HERE = Path(__file__).resolve().parent
CONFIGS = {"fp32": ["--precision", "fp32"], "int8": ["--precision", "int8"],
           "int8-joint": ["--precision", "int8", "--embeddings", "joint"], "bf16": ["--precision", "bf16"],
           "fast": ["--precision", "fast"], "fast-joint": ["--precision", "fast", "--embeddings", "joint"]}
ISA_ENV = {"avx512": {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"},
           "avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ATEN_CPU_CAPABILITY": "avx2",
                    "FBGEMM_ENABLE_INSTRUCTIONS": "AVX2"},
           "avx2-vnni": {"ONEDNN_MAX_CPU_ISA": "AVX2_VNNI", "MKL_ENABLE_INSTRUCTIONS": "AVX2",
                         "ATEN_CPU_CAPABILITY": "avx2", "FBGEMM_ENABLE_INSTRUCTIONS": "AVX2"}}
VOICES = ["en+m1", "en+f1", "en+m3", "en+f3", "en+m4", "en+f4", "en+m2"]
WORDS = ["The meeting starts at nine and ends before lunch.", "Please tell me about your family and friends.",
         "I walked to the station in the rain yesterday.", "We could try again next week if you like.",
         "My brother plays the piano every Sunday evening.", "Nobody expected the results to be so clear."]
COLORS = ["0x336699", "0x993333", "0x339933", "0x999933", "0x663399", "0x996633"]


def emulation_env(mode: str, tmp: Path) -> dict[str, str]:
    """Environment for child processes that makes this CPU behave as one without AMX."""
    if mode == "none":
        return {}
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        sys.exit("--emulate needs a C compiler (cc) for the noamx shim")
    lib = tmp / "noamx.so"
    subprocess.run([cc, "-O2", "-shared", "-fPIC", "-o", str(lib), str(HERE / "noamx.c"), "-ldl"], check=True)
    return {"LD_PRELOAD": str(lib), **ISA_ENV[mode]}


def run_extract(videos: Path, out: Path, ckpt: Path, extra: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the command and its workers) of one ``socialfeat extract``."""
    exe = Path(sys.executable).parent / "socialfeat"
    cmd = [str(exe) if exe.exists() else sys.executable, *([] if exe.exists() else ["-m", "socialfeat.cli"]),
           "extract", str(videos), "-o", str(out), "--weights", str(ckpt), "--no-progress", *extra]
    if out.exists():
        out.unlink()
    shutil.rmtree(str(out) + ".parts", ignore_errors=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode not in (0, 3):
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stderr}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def embeddings(path: Path) -> dict[str, np.ndarray]:
    df = socialfeat.load_features(path, embeddings="all")
    out = {}
    for kind in ("joint", "audio", "visual"):
        cols = [c for c in df.columns if c.startswith(f"{kind}_")]
        if cols:
            out[kind] = df[cols].to_numpy(np.float64)
    return out


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def timing_table(videos: Path, ckpt: Path, configs: list[str], rounds: int, env: dict[str, str], tmp: Path) -> None:
    times: dict[str, list[tuple[float, float]]] = {c: [] for c in configs}
    for r in range(rounds):
        for name in (configs if r % 2 == 0 else configs[::-1]):  # interleaved, order alternating
            times[name].append(run_extract(videos, tmp / f"{name}.h5", ckpt, CONFIGS[name], env))
            print(f"  round {r + 1} {name}: {times[name][-1][0]:.1f} s wall, {times[name][-1][1]:.1f} s CPU",
                  flush=True)
    n = len(socialfeat.load_features(tmp / f"{configs[0]}.h5", embeddings=None))
    ref = embeddings(tmp / "fp32.h5") if "fp32" in configs else None
    base = statistics.median(w for w, _ in times["fp32"]) if "fp32" in configs else None
    print(f"\n{'config':12s} {'clips/s (wall)':>15s} {'x fp32':>7s} {'CPU s/clip':>11s}  min cosine to fp32 "
          f"(joint / audio / visual)")
    for name in configs:
        wall = statistics.median(w for w, _ in times[name])
        cpu = statistics.median(c for _, c in times[name])
        cos = ""
        if ref is not None and name != "fp32":
            got = embeddings(tmp / f"{name}.h5")
            cos = " / ".join(f"{cosine(ref[k], got[k]).min():.5f}" if k in got else "-"
                             for k in ("joint", "audio", "visual"))
        speed = f"{base / wall:7.2f}" if base else ""
        print(f"{name:12s} {n / wall:15.3f} {speed:>7s} {cpu / n:11.2f}  {cos}")


def encode_only(arch: str, configs: list[str], rounds: int, batch: int) -> None:
    """Child process: ``encode`` of random inputs on one thread, CPU seconds per clip per
    configuration, interleaved (a figure that other jobs on the machine barely move)."""
    from socialfeat.encoder import BatchEncoder, resolve_precision

    torch.set_num_threads(1)
    torch.manual_seed(0)
    kw = create_model(arch).info.model_kwargs
    audio = torch.randn(batch, kw["audio_length"], 128)
    video = torch.randn(batch, 3, kw["img_size"], kw["img_size"], kw["n_frame"])
    encoders = {}
    for name in configs:
        opts = dict(zip(CONFIGS[name][::2], CONFIGS[name][1::2]))
        torch.manual_seed(0)
        encoders[name] = BatchEncoder(create_model(arch).eval(), torch.device("cpu"), batch, [],
                                      resolve_precision(opts["--precision"], torch.device("cpu")),
                                      tuple(opts.get("--embeddings", "all").split(",")))
    cpu = {name: [] for name in configs}
    with torch.inference_mode():
        for r in range(rounds + 1):  # the first round warms up
            for name, enc in encoders.items():
                amp = torch.autocast("cpu", dtype=torch.bfloat16, enabled=enc.bf16)
                start = time.process_time()
                with amp:
                    enc.model.encode(audio, video, kinds=enc.kinds)
                if r:
                    cpu[name].append((time.process_time() - start) / batch)
    base = statistics.median(cpu[configs[0]])
    for name in configs:
        med = statistics.median(cpu[name])
        print(f"{name:12s} {med:8.3f} CPU s/clip  {base / med:5.2f}x {configs[0]}  "
              f"(1 thread, batch {batch}, {rounds} rounds)", flush=True)


def model_table(arch: str, configs: list[str], rounds: int, env: dict[str, str]) -> None:
    print("\nmodel only (encode, random inputs):", flush=True)
    proc = subprocess.run([sys.executable, __file__, "--arch", arch, "--configs", ",".join(configs),
                           "--rounds", str(rounds), "--encode-only"], env={**os.environ, **env},
                          capture_output=True, text=True)
    print(proc.stdout + (proc.stderr if proc.returncode else ""), flush=True)


def noisy_speech(out: Path, speech: Path, noise_std: float, seed: int) -> Path:
    """``speech`` (16-bit mono wav) with white noise of standard deviation ``noise_std`` added."""
    with wave.open(str(speech)) as f:
        params, pcm = f.getparams(), np.frombuffer(f.readframes(f.getnframes()), np.int16)
    noise = np.random.default_rng(seed).standard_normal(pcm.size) * noise_std * 32767
    mixed = np.clip(pcm + noise, -32768, 32767).astype(np.int16)
    with wave.open(str(out), "wb") as f:
        f.setparams(params)
        f.writeframes(mixed.tobytes())
    return out


def probe_corpus(folder: Path, n_videos: int, seconds: float) -> dict[str, int]:
    """Talking-face videos labelled 1 (noisy recording) or 0 (clean); the noise levels of the
    two classes overlap (log-uniform over 0.03-0.3 and 0.005-0.05), so that the probe is not
    perfect; voices, words and backgrounds vary independently of the label."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    labels = {}
    for i in range(n_videos):
        noisy = i % 2
        low, high = (0.03, 0.3) if noisy else (0.005, 0.05)
        std = float(np.exp(rng.uniform(np.log(low), np.log(high))))
        text = " ".join(WORDS[(i + j) % len(WORDS)] for j in range(3))
        speech = speech_wav(folder.parent / f"probe_{i}.wav", seconds, text=text, voice=VOICES[i % len(VOICES)])
        wav = noisy_speech(folder.parent / f"probe_{i}_noisy.wav", speech, std, seed=i)
        path = talking_video(folder / f"probe_{i:02d}.mp4", seconds, "640x480", audio=wav,
                             color=COLORS[(i * 7 // 3) % len(COLORS)])
        labels[path.name] = noisy
    return labels


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1e-2):
    """L2-regularised logistic regression on standardised features (LBFGS); returns predict."""
    mean, std = x.mean(0), x.std(0) + 1e-8
    xt = torch.tensor((x - mean) / std, dtype=torch.float64)
    yt = torch.tensor(y, dtype=torch.float64)
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(xt @ w + b, yt) + l2 * (w ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    w_, b_ = w.detach().numpy(), b.item()
    return lambda z: (((z - mean) / std) @ w_ + b_ > 0).astype(int)


def balanced_accuracy(y: np.ndarray, pred: np.ndarray) -> float:
    return float(np.mean([(pred[y == c] == c).mean() for c in np.unique(y)]))


def probe_table(videos: Path, labels: dict[str, int], ckpt: Path, fast: str, env: dict[str, str], tmp: Path,
                l2: float) -> None:
    feats = {}
    for name in ("fp32", fast):
        run_extract(videos, tmp / f"probe_{name}.h5", ckpt, CONFIGS[name], env)
        feats[name] = socialfeat.load_features(tmp / f"probe_{name}.h5", embeddings="all")
    df = feats["fp32"]
    y = df.path.map(lambda p: labels[Path(p).name]).to_numpy()
    groups = df.path.to_numpy()
    print(f"\nprobe: noisy or clean recording from each embedding, {len(y)} clips of {len(labels)} videos, "
          f"leave-one-video-out logistic regression (L2 {l2}), balanced accuracy")
    print(f"{'embedding':10s} {'fp32':>6s} {fast:>10s} {'fp32 probe on ' + fast:>24s}")
    for kind in ("joint", "audio", "visual"):
        cols = [c for c in df.columns if c.startswith(f"{kind}_")]
        xs = {n: f[cols].to_numpy(np.float64) for n, f in feats.items()}
        if np.isnan(xs[fast]).all():
            continue
        preds = {"fp32": np.zeros_like(y), fast: np.zeros_like(y), "cross": np.zeros_like(y)}
        for g in np.unique(groups):
            test = groups == g
            for name in ("fp32", fast):
                predict = fit_logistic(xs[name][~test], y[~test], l2)
                preds[name][test] = predict(xs[name][test])
                if name == "fp32":
                    preds["cross"][test] = predict(xs[fast][test])
        print(f"{kind:10s} {balanced_accuracy(y, preds['fp32']):6.3f} {balanced_accuracy(y, preds[fast]):10.3f} "
              f"{balanced_accuracy(y, preds['cross']):24.3f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="social-mae")
    p.add_argument("--seconds", type=float, default=60.0, help="length of the timed video")
    p.add_argument("--configs", default="fp32,fast,fast-joint", help=f"comma-separated, from {', '.join(CONFIGS)}")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--emulate", choices=["none", *ISA_ENV], default="none")
    p.add_argument("--probe-videos", type=int, default=12, help="0: no probe")
    p.add_argument("--probe-seconds", type=float, default=8.0)
    p.add_argument("--probe-config", default="fast")
    p.add_argument("--probe-l2", type=float, default=1.0, help="ridge penalty of the probe")
    p.add_argument("--no-e2e", action="store_true", help="only the model-only table (and the probe)")
    p.add_argument("--omp-passive", action="store_true",
                   help="OMP_WAIT_POLICY=PASSIVE in the runs: on a machine shared with other jobs, OpenMP threads "
                        "waiting at barriers otherwise spin and inflate CPU time (measured 1.9x on 2 busy cores)")
    p.add_argument("--encode-only", action="store_true", help=argparse.SUPPRESS)  # the model-only child
    args = p.parse_args()
    configs = [c for c in args.configs.split(",") if c]
    if args.encode_only:
        return encode_only(args.arch, configs, args.rounds, batch=2)
    require_tools()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        env = emulation_env(args.emulate, tmp)
        if args.omp_passive:
            env["OMP_WAIT_POLICY"] = "PASSIVE"
        torch.manual_seed(0)
        ckpt = save_checkpoint(create_model(args.arch), tmp / "model.pt")
        speech = speech_wav(tmp / "speech.wav", args.seconds, text=" ".join(WORDS * 3))
        (tmp / "timed").mkdir()
        talking_video(tmp / "timed" / "interview.mp4", args.seconds, "640x480", audio=speech)
        load = os.getloadavg()
        print(f"# {args.arch}, one {args.seconds:.0f}-s 640x480 H.264 + AAC video, CLI defaults otherwise "
              f"(2 workers, batch 2 on the CPU); {os.cpu_count()} cores, torch {torch.__version__}")
        print(f"# CPU: {cpu_description()}; the runs emulate: {args.emulate} {env or ''}")
        print(f"# load average before: {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}", flush=True)
        model_table(args.arch, configs, args.rounds, env)
        if not args.no_e2e:
            timing_table(tmp / "timed", ckpt, configs, args.rounds, env, tmp)
        if args.probe_videos:
            labels = probe_corpus(tmp / "probe", args.probe_videos, args.probe_seconds)
            probe_table(tmp / "probe", labels, ckpt, args.probe_config, env, tmp, args.probe_l2)
        load = os.getloadavg()
        print(f"# load average after: {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")


if __name__ == "__main__":
    main()
