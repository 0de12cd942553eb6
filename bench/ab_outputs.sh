#!/usr/bin/env bash
# A/B of outputs: two installs of v2m (each a venv's bin/ folder), the same inputs and seeds;
# prints one line per output with both sha256 prefixes, IDENTICAL or DIFFERENT.
#   bash bench/ab_outputs.sh OLD_VENV/bin NEW_VENV/bin [WORKDIR]
# Covers: .wav and muxed .mp4 (tiny bundle, torch), the demo bundle on ONNX Runtime, Heun with a
# negative prompt and curve guidance, a windowed long video, and batch mode (B = 3).
set -u
OLD=${1:?old venv bin}; NEW=${2:?new venv bin}
export OMP_NUM_THREADS=1
mkdir -p "${3:-/tmp/ab}" && cd "${3:-/tmp/ab}"
if [ ! -f clips/c3.mp4 ]; then
  mkdir -p clips
  $OLD/python - <<'PY'
from v2m.runtime.synth import make_test_video
make_test_video("clips/c1.mp4", duration_s=3.0, cuts=(0.8, 1.9))
make_test_video("clips/c2.mp4", duration_s=5.0, fps=30, cuts=(1.0, 2.5, 4.0))
make_test_video("clips/c3.mp4", duration_s=2.0, fps=24, cuts=(0.6,))
make_test_video("long.mp4", duration_s=14.0, cuts=(2.0, 5.0, 9.0, 12.0))
PY
  $OLD/v2m init-model --preset tiny --seed 0 -o tiny >/dev/null
  python3 - <<'PY'
import json, shutil
shutil.copytree("tiny", "tiny-win", dirs_exist_ok=True)
c = json.load(open("tiny-win/config.json")); c["sampler"]["max_frames"] = 64; json.dump(c, open("tiny-win/config.json", "w"))
PY
fi
for side in old new; do
  B=$OLD; [ $side = new ] && B=$NEW
  rm -rf out-$side; mkdir -p out-$side
  for c in c1 c2 c3; do
    $B/v2m generate clips/$c.mp4 -o out-$side/$c.wav --model tiny --backend torch --seed 7 --steps 8 -q >/dev/null
    $B/v2m generate clips/$c.mp4 -o out-$side/$c.mp4 --model tiny --backend torch --seed 7 --steps 8 -q >/dev/null
    $B/v2m generate clips/$c.mp4 -o out-$side/$c-demo.wav --model demo --backend onnxruntime --seed 3 --prompt "punchy drums" -q >/dev/null
    $B/v2m generate clips/$c.mp4 -o out-$side/$c-heun.wav --model tiny --backend torch --seed 5 --steps 6 --solver heun --negative-prompt "noise" --curve-guidance 1 -q >/dev/null
  done
  $B/v2m generate long.mp4 -o out-$side/long.wav --model tiny-win --backend torch --seed 11 --steps 4 -q >/dev/null
  $B/v2m generate clips -o out-$side/batch --model tiny --backend torch --seed 9 --steps 5 --format wav --batch-size 3 -q >/dev/null
done
cd out-old && for f in $(find . -name "*.wav" -o -name "*.mp4" | sort); do
  a=$(sha256sum $f | cut -c1-16); b=$(sha256sum ../out-new/$f 2>/dev/null | cut -c1-16)
  echo "$f old=$a new=$b $([ "$a" = "$b" ] && echo IDENTICAL || echo DIFFERENT)"
done
