"""``python -m spade_tts.distill`` = ``spade distill``, so that ``accelerate launch -m spade_tts.distill
--recipe recipes/distill.yaml student=...`` starts one trainer per process with the same arguments."""
import sys

from spade_tts.cli import main

if __name__ == "__main__":
    sys.exit(main(["distill", *sys.argv[1:]]))
