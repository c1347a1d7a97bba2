"""Real test media made with ffmpeg and espeak-ng (recipes from the project's notes).

Everything is deterministic: fixed text, fixed byte patterns for corruption.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

DATA = Path(__file__).parent / "data"
SPEECH = ("Hello, this is a synthetic speech track for testing the social feature extractor. "
          "We are counting: one, two, three, four, five, six, seven, eight.")


def run(*args: str) -> None:
    subprocess.run(list(args), check=True, capture_output=True)


def require_tools() -> None:
    missing = [t for t in ("ffmpeg", "ffprobe", "espeak-ng") if shutil.which(t) is None]
    if missing:
        raise RuntimeError(f"test media need {', '.join(missing)}: run the install command in README.md")


def speech_wav(out: Path, seconds: float, text: str = SPEECH, voice: str = "en") -> Path:
    raw = out.with_name(out.stem + "_raw.wav")
    run("espeak-ng", "-v", voice, "-s", "150", "-w", str(raw), text)
    run("ffmpeg", "-v", "error", "-y", "-i", str(raw), "-af", f"apad,atrim=0:{seconds}", "-ar", "16000",
        "-ac", "1", str(out))
    raw.unlink()
    return out


def talking_video(out: Path, seconds: float = 10.0, size: str = "320x240", fps: int = 25,
                  vcodec: tuple[str, ...] = ("-c:v", "libx264", "-preset", "veryfast", "-crf", "23", "-g", "50"),
                  acodec: tuple[str, ...] = ("-c:a", "aac", "-b:a", "64k"), audio: Path | None = None,
                  extra: tuple[str, ...] = ("-movflags", "+faststart"), color: str = "0x336699") -> Path:
    """A face moving over a coloured background with an espeak-ng speech track."""
    audio = audio or speech_wav(out.parent / f".{out.stem}_speech.wav", seconds)
    w, h = (int(x) for x in size.split("x"))
    run("ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", f"color=c={color}:s={size}:r={fps}:d={seconds}",
        "-loop", "1", "-i", str(DATA / "face.png"), "-i", str(audio),
        "-filter_complex",
        f"[0:v][1:v]overlay=x='{w // 2 - 40}+{w // 4}*sin(2*PI*t/6)':y='{h // 2 - 48}+{h // 8}*cos(2*PI*t/4)'"
        ":shortest=1,format=yuv420p[v]",
        "-map", "[v]", "-map", "2:a", "-t", str(seconds), *vcodec, *acodec, "-ar", "16000", *extra, str(out))
    return out


def make_corpus(root: Path) -> dict[str, Path]:
    """A folder tree of good, odd and broken files; returns name -> path."""
    require_tools()
    root.mkdir(parents=True, exist_ok=True)
    (root / "nested" / "deeper").mkdir(parents=True, exist_ok=True)
    speech = speech_wav(root.parent / "speech10.wav", 10.0)
    f: dict[str, Path] = {}
    f["talk"] = talking_video(root / "talk.mp4", audio=speech)
    f["mkv"] = talking_video(root / "nested" / "interview two.mkv", audio=speech, extra=())
    f["webm"] = talking_video(root / "nested" / "deeper" / "séance_ü.webm", seconds=6.0,
                              vcodec=("-c:v", "libvpx", "-b:v", "300k", "-deadline", "realtime", "-cpu-used", "8"),
                              acodec=("-c:a", "libopus", "-b:a", "32k"), extra=())
    f["noaudio"] = root / "noaudio.mp4"
    run("ffmpeg", "-v", "error", "-y", "-i", str(f["talk"]), "-an", "-c:v", "copy", str(f["noaudio"]))
    f["vfr"] = root / "vfr.mp4"
    run("ffmpeg", "-v", "error", "-y", "-i", str(f["talk"]), "-vf", "select='lt(mod(n,10),6)'",
        "-fps_mode", "vfr", "-c:v", "libx264", "-preset", "veryfast", "-c:a", "copy", str(f["vfr"]))
    f["rotated"] = root / "rotated90.mp4"
    run("ffmpeg", "-v", "error", "-y", "-i", str(f["talk"]), "-c", "copy", "-metadata:s:v:0", "rotate=90",
        str(f["rotated"]))
    f["short"] = talking_video(root / "short.mp4", seconds=3.0)
    data = f["talk"].read_bytes()
    f["truncated"] = root / "truncated.mp4"
    f["truncated"].write_bytes(data[: len(data) // 2])
    moovend = root.parent / "moovend.mp4"
    run("ffmpeg", "-v", "error", "-y", "-i", str(f["talk"]), "-c", "copy", str(moovend))
    f["nomoov"] = root / "truncated_nomoov.mp4"
    f["nomoov"].write_bytes(moovend.read_bytes()[:20000])
    f["corrupt"] = root / "corrupt_mid.mp4"
    f["corrupt"].write_bytes(data[:30000] + b"\xff" * 8000 + data[38000:])
    f["empty"] = root / "empty.mp4"
    f["empty"].write_bytes(b"")
    f["text"] = root / "notes.mp4"
    f["text"].write_text("this is a text file renamed to .mp4\n")
    f["audio_only"] = root / "audio_only.m4a"
    run("ffmpeg", "-v", "error", "-y", "-i", str(f["talk"]), "-vn", "-c:a", "copy", str(f["audio_only"]))
    f["audio_only_mp4"] = root / "audio_only.mp4"
    run("ffmpeg", "-v", "error", "-y", "-i", str(f["talk"]), "-vn", "-c:a", "copy", str(f["audio_only_mp4"]))
    return f


TRAIN_SPEAKERS = [("0x336699", "en", "Good morning, how are you today? I am fine, thank you very much."),
                  ("0x993333", "en-us", "Seven apples and three oranges are waiting on the kitchen table."),
                  ("0x339933", "de", "Guten Tag, das Wetter ist heute sehr schoen und warm."),
                  ("0x999933", "fr", "Bonjour, nous parlons lentement de la musique et des livres."),
                  ("0x663399", "es", "Hola, me gusta caminar por la playa cuando hace sol.")]


def make_training_corpus(root: Path, seconds: float = 8.0, size: str = "160x120") -> list[Path]:
    """Distinct recordings (background colour, voice and words differ) for pretraining tests."""
    require_tools()
    root.mkdir(parents=True, exist_ok=True)
    out = []
    for i, (color, voice, text) in enumerate(TRAIN_SPEAKERS):
        wav = speech_wav(root.parent / f"speech_{i}.wav", seconds, text=text, voice=voice)
        out.append(talking_video(root / f"speaker_{i}.mp4", seconds=seconds, size=size, audio=wav, color=color))
    return out


def tone_wav(out: Path, seconds: float, kind: str, amplitude: float = 0.2) -> Path:
    """Silence or white noise of a given amplitude, 16 kHz mono."""
    src = "anullsrc=r=16000:cl=mono" if kind == "silence" else f"anoisesrc=a={amplitude}:c=white:r=16000:seed=7"
    run("ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", src, "-t", str(seconds), "-ac", "1", str(out))
    return out


SENTENCES = ["The meeting starts at nine and ends before lunch.", "Please tell me about your family and friends.",
             "I walked to the station in the rain yesterday.", "We could try again next week if you like."]


def make_task_corpus(root: Path, seconds: float = 6.0, size: str = "160x120") -> dict[str, Path]:
    """Recordings whose sound is speech, silence or noise (a class a model can learn),
    and noise at several loudness levels (a continuous target); returns name -> path."""
    require_tools()
    root.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    colors = ["0x336699", "0x993333", "0x339933", "0x999933"]
    for i in range(4):
        # two sentences: speech fills the whole recording, so every clip really is speech
        wav = speech_wav(root.parent / f"task_speech_{i}.wav", seconds, text=f"{SENTENCES[i]} {SENTENCES[i - 1]}")
        files[f"speech_{i}"] = talking_video(root / f"speech_{i}.mp4", seconds, size, audio=wav, color=colors[i])
        wav = tone_wav(root.parent / f"task_silence_{i}.wav", seconds, "silence")
        files[f"silence_{i}"] = talking_video(root / f"silence_{i}.mp4", seconds, size, audio=wav,
                                              color=colors[(i + 1) % 4])
        wav = tone_wav(root.parent / f"task_noise_{i}.wav", seconds, "noise", amplitude=0.3)
        files[f"noise_{i}"] = talking_video(root / f"noise_{i}.mp4", seconds, size, audio=wav,
                                            color=colors[(i + 2) % 4])
    for i, amp in enumerate([0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 0.9]):
        wav = tone_wav(root.parent / f"task_level_{i}.wav", seconds, "noise", amplitude=amp)
        files[f"level_{i}"] = talking_video(root / f"level_{i}.mp4", seconds, size, audio=wav,
                                            color=colors[i % 4])
    return files


def trimmed_utterance(out: Path, text: str) -> float:
    """An espeak-ng utterance with its leading/trailing silence cut; returns its duration (s)."""
    raw = out.with_name(out.stem + "_raw.wav")
    run("espeak-ng", "-s", "160", "-w", str(raw), text)
    trim = "silenceremove=start_periods=1:start_threshold=-45dB"
    run("ffmpeg", "-v", "error", "-y", "-i", str(raw), "-af", f"{trim},areverse,{trim},areverse", "-ar", "16000",
        "-ac", "1", str(out))
    raw.unlink()
    out_probe = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0",
                                str(out)], capture_output=True, text=True, check=True)
    return float(out_probe.stdout.strip())


def speech_at_known_times(root: Path, seconds: float = 14.0) -> tuple[Path, list[tuple[float, float]]]:
    """A talking-face video whose audio is silence with two utterances at known times;
    returns the video and the true (onset, offset) of each utterance."""
    require_tools()
    root.mkdir(parents=True, exist_ok=True)
    d1 = trimmed_utterance(root / "u1.wav", "hello there how are you doing today my good friend")
    d2 = trimmed_utterance(root / "u2.wav", "we are counting one two three four five six seven")
    on1, on2 = 1.5, 1.5 + d1 + 3.0
    track = root / "vad_track.wav"
    run("ffmpeg", "-v", "error", "-y", "-i", str(root / "u1.wav"), "-i", str(root / "u2.wav"), "-filter_complex",
        f"[0:a]adelay={int(on1 * 1000)}:all=1[a];[1:a]adelay={int(on2 * 1000)}:all=1[b];"
        f"[a][b]amix=inputs=2:normalize=0,apad,atrim=0:{seconds}[out]", "-map", "[out]", "-ar", "16000", "-ac", "1",
        str(track))
    video = talking_video(root / "two_utterances.mp4", seconds=seconds, audio=track)
    return video, [(on1, on1 + d1), (on2, on2 + d2)]


ASTRONAUT = DATA / "astronaut_face.png"  # scikit-image's public-domain astronaut, face crop (120x144)


def face_video(out: Path, faces: list[tuple[str, str]], seconds: float = 6.0, size: str = "480x360",
               flip_second: bool = True) -> Path:
    """The astronaut face composited at positions given as ffmpeg expressions of t, e.g.
    [("100+150*sin(2*PI*t/6)", "120")], with speech audio; 25 fps constant frame rate."""
    audio = speech_wav(out.parent / f".{out.stem}_speech.wav", seconds)
    inputs = ["-f", "lavfi", "-i", f"color=c=0x445566:s={size}:r=25:d={seconds}"]
    graph, last = [], "[0:v]"
    for i, (x, y) in enumerate(faces):
        inputs += ["-loop", "1", "-i", str(ASTRONAUT)]
        src = f"[{i + 1}:v]"
        if flip_second and i == 1:
            graph.append(f"{src}hflip[f{i}]")
            src = f"[f{i}]"
        graph.append(f"{last}{src}overlay=x='{x}':y='{y}':shortest=1[v{i}]")
        last = f"[v{i}]"
    graph.append(f"{last}format=yuv420p[v]")
    n = len(faces)
    run("ffmpeg", "-v", "error", "-y", *inputs, "-i", str(audio), "-filter_complex", ";".join(graph),
        "-map", "[v]", "-map", f"{n + 1}:a", "-t", str(seconds), "-c:v", "libx264", "-preset", "veryfast", "-crf", "20",
        "-c:a", "aac", "-ar", "16000", str(out))
    return out
