"""``python -m spade_tts.importance`` = ``spade score``, so that ``accelerate launch --num_processes N
-m spade_tts.importance key=value ...`` starts one scorer per process (one per GPU) over shared runs."""
import sys

from spade_tts.cli import main

if __name__ == "__main__":
    sys.exit(main(["score", *sys.argv[1:]]))
