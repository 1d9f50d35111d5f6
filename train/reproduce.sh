#!/usr/bin/env bash
# Every command that makes the shipped emoji models, in order, at one scale:
#
#   bash train/reproduce.sh cpu     2 CPU cores, JOBS=2. The bf16 run of sessions 21-22 from a clean
#                                   clone, per stage at its measured step rates (one core per job, none
#                                   beside it): VAE beside the DAE backbone 22 min, the other backbones
#                                   beside the VAE decoder's fine-tune 21, the default's stage A alone
#                                   on both cores 34, the rows beside the default's two generators 72.5,
#                                   the rows' class generators 9, export + evaluation + ship 20: about
#                                   179 min (3.0 h; sessions 19-20's fp32-upstream run: 203). Since
#                                   then: stages 1-2 as one, each row's class generator chained after
#                                   its stage A, the default's evaluation first, the VAE latents and
#                                   cosine anchors cached across stage-A runs: about 166 min projected
#                                   from the same step times. Session 23: attention written out in bf16
#                                   on a CPU (train/cpu_attention.py; stage A 1.3x, text generator 1.6x,
#                                   backbones 1.3x per step): run from a clean clone, 38 / 30 / 59 min
#                                   for stages 1-3, 128 min through export (evaluation ~20 more)
#   bash train/reproduce.sh gpu     one GPU: the gpu-* presets, the λ sweep and backbone runs side by side
#   bash train/reproduce.sh test    tiny presets, seconds (tests/test_reproduce.py)
#
# bash reads this file while it runs it: do not edit it during a run (run the recipe from its own clone).
# A step whose output exists is skipped, so a killed run continues where it stopped (each script
# also resumes from its own checkpoint with --resume). Environment: DATA (emoji .npz), RUNS (output
# root, default runs/<scale>), JOBS (steps run side by side), STAGE (stop after: backbones, tokenizers
# (the default model's stage A and the rows'), generators, export; default: all,
# then evaluate the export and print the tables), LAMBDAS and DEFAULT_LAM (the λ sweep and the main
# model's λ), TRAIN_FLAGS (added to every training command, e.g. "--max-minutes 8" on a machine
# lent for a fixed time). Each step and stage prints its wall time.
#
# What it makes (the model card's two tables come from the metrics.json files):
#   vae, vae-decoder                   the latent space every tokenizer's flow runs in (AutoencoderKL),
#                                      and its decoder fine-tuned on whole images (what ships)
#   backbones/{dino,mae,clip,dae,random}  in-house SSL backbones; features/ a separate one for the FDs
#   tok-<backbone>-lam<λ>              stage A: λ sweep on the main backbone, the others at the default λ
#   gen-<backbone>-lam<λ>              stage B: class generator (subcategories) per tokenizer
#   tok-main, text-main                the default model's own stage A and text generator, where the
#                                      scale gives it a longer preset than the ablations (cpu); else the
#                                      ablation run on the main backbone at the default λ is the default
#   main                               the default model with both generators (cpu: the class generator
#                                      trained last; else the text one); export/ every model with its
#                                      generators, evaluated; ship/ what ships
#   tok-<main>-lam<λ>-seed1            a second seed of the main backbone's default-λ row: the tables'
#                                      noise band (evaluated, not shipped)
#
# On a lent GPU with no network (what this project gets): carry data/emoji64.npz and the CLIP-style
# caption cache (runs/<cpu>/backbones/clip/caption_vectors.npz -> $RUNS/backbones/clip/, MiniLM is not
# there), run `JOBS=4 STAGE=tokenizers TRAIN_FLAGS="--max-minutes 8" bash train/reproduce.sh gpu` (a
# call is 10 minutes at most there; a later call with the same command resumes each run), bring back $RUNS/backbones,
# $RUNS/features and each tok-*/model (cast to fp16 there if the files must be under 16 MiB), then
# run the rest here: stage B, export and evaluation need no GPU at this size.
set -euo pipefail
cd "$(dirname "$0")/.."

scale=${1:?usage: bash train/reproduce.sh cpu|gpu|test}
DATA=${DATA:-data/emoji64.npz}
UNSEEN=${UNSEEN:-data/emoji64-fluent.npz}  # a style no training sees, scored apart (skipped if absent)
RUNS=${RUNS:-runs/$scale}
JOBS=${JOBS:-2}
STAGE=${STAGE:-all}
read -r -a EXTRA <<<"${TRAIN_FLAGS:-}"
LAMBDAS=${LAMBDAS:-0 0.1 1 inf}  # the λ sweep; λ = inf is the frozen token, λ = 0 the free one
DEFAULT_LAM=${DEFAULT_LAM:-0.1}  # the main model's λ (small, as in the paper); must be one of LAMBDAS
case $scale in
  cpu)
    # The DAE-style backbone's [cls] carries the image (ridge probe 15.9 dB / 51 % identification after
    # 8 CPU minutes, the others 14 dB / 12-16 %), so at this scale it is the main backbone.
    MAIN=dae
    # The ablation rows get equal, short budgets (cpu-xs, 400 steps, in bf16 autocast like the default's
    # stage A: 1.37x and 1.85x faster than fp32 on two measured pairs, quality inside the seed band on
    # one and mixed on the other; the model card's tables); the default model a longer run (cpu-main).
    # Everything else in bf16 autocast too since session 21 (one core each, fp32 and bf16 side by side:
    # VAE 0.875 -> 0.64 s/step, its decoder fine-tune 2.79 -> 1.77, DAE-style backbone 0.60 -> 0.49,
    # DINO-style 3.46 -> 2.51; the quality of what they make: MODEL_CARD.md, session 21).
    VAE=(--preset cpu --precision bf16) VAE_DECODER=(--preset cpu-decoder --precision bf16)
    PRE=(--preset cpu-s --precision bf16) TOK=(--preset cpu-xs --steps 400 --precision bf16)
    GEN=(--preset cpu-xs --precision bf16)
    # The default model's stage A: one run of 4,000 steps, the last 1,200 with the LR decaying to 0
    # (the cooldown of a warmup-stable-decay schedule), in bf16 autocast, with a 16-channel token map
    # in the decoder (a per-position linear read-out of z at its input). Session 16: 16.29 dB / 92.9 %
    # identification in 34 min on both cores, where session 9's two fp32 runs of 11,310 steps without
    # the map (171 min as trained, ~94 alone) gave 16.05 dB / 90.7 %, and one bf16 run of 4,000 steps
    # without it 15.67 dB / 85.0 % (session 14).
    MAIN_TOK=(--preset cpu-main --precision bf16)
    # The default model's generators: longer runs than the ablation rows', with the same cooldown.
    # (The class generator: 24,000 steps, session 14: at T = 0.4 its class probe 42.0 % against the
    # 6,000-step one's 33.2 % at T = 0.7, gFD 0.059 against 0.067; 18 min on both cores.) Both in bf16
    # autocast since session 20: on the recipe's own tokenizer the class generator ran 1.70x faster
    # per step on one core (0.058 against 0.098 s) with the same loss curve (0.4863 against 0.4859 over
    # steps 13.5k-15.5k) and, the mean of three sampling seeds, class probe 37.1 against 37.4 % and
    # gFD 0.034 against 0.035; the text generator 1.25x faster (31 against 39 min on one core), text top-5
    # 21.2 against 20.8 % and text gFD 0.040 against 0.044 (the same three seeds).
    MAIN_GEN=(--preset cpu-xs --steps 24000 --decay-steps 6000 --precision bf16)
    MAIN_TEXT=(--preset cpu-xs --steps 3000 --decay-steps 1000 --precision bf16)
    # Sampler defaults shipped in every freshly trained model: measured on the default model with
    # train/decode_sweep.py (decoder steps, τ, time-grid shift) and train/guidance_sweep.py (cfg scale): the model
    # card's sampler tables; the generator temperature too (guidance_sweep.py --temperature: of the T
    # whose class gFD stays inside the sampling-seed band of T = 1's, the one with the best class probe).
    # The guidance intervals (guidance_sweep.py --cfg-interval, session 24, three sampling seeds): the
    # class generator guided all the way, [0, 1], class probe 40.6 against 36.8 % at the paper's
    # [0.3, 0.9] for the same gFD; the text generator over [0.15, 0.9], text gFD 0.039 against 0.044.
    # The decoder's τ = 0.6 (session 25): identification 92.6 against 91.4 %, class probe 42.1 against
    # 40.9 % at a lower gFD, for 0.09 dB of PSNR (evaluate.py; decode and guidance sweeps, two more seeds).
    EVAL=() SHIP_STEPS=4 SHIP_TAU=0.6 SHIP_SHIFT=0.33 SHIP_CFG=4 SHIP_GEN_T=0.85
    SHIP_CFG_INTERVAL=(0 1) SHIP_TEXT_CFG_INTERVAL=(0.15 0.9)
    declare -A PRE_STEPS=([dino]=150 [mae]=800 [clip]=400 [dae]=2500 [random]=0)
    FEATURES_METHOD=clip
    export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$((2 / JOBS > 0 ? 2 / JOBS : 1))}
    ;;
  gpu)
    MAIN=dae
    VAE=(--preset gpu) VAE_DECODER=(--preset cpu-decoder --batch-size 128) PRE=(--preset gpu-s) TOK=(--preset gpu-b) MAIN_TOK=("${TOK[@]}") GEN=(--preset gpu-b) EVAL=() SHIP_STEPS=8
    MAIN_GEN=("${GEN[@]}") MAIN_TEXT=("${GEN[@]}") SHIP_TAU=1 SHIP_SHIFT=1 SHIP_CFG=1.5 SHIP_GEN_T=1
    SHIP_CFG_INTERVAL=(0.3 0.9) SHIP_TEXT_CFG_INTERVAL=(0.3 0.9)  # the paper's, until measured there
    declare -A PRE_STEPS=([dino]=3000 [mae]=6000 [clip]=2500 [dae]=6000 [random]=0)
    FEATURES_METHOD=dino
    ;;
  test)
    MAIN=dae
    VAE=(--preset test) VAE_DECODER=(--preset test --crop-size 0) PRE=(--preset test) TOK=(--preset test) GEN=(--preset test)
    MAIN_TOK=(--preset test --steps 6 --decay-steps 2 --token-map-channels 2) MAIN_GEN=("${GEN[@]}") MAIN_TEXT=("${GEN[@]}")
    EVAL=(--n 8) SHIP_STEPS=2 SHIP_TAU=0.7 SHIP_SHIFT=0.5 SHIP_CFG=2.5 SHIP_GEN_T=0.7
    SHIP_CFG_INTERVAL=(0.1 1) SHIP_TEXT_CFG_INTERVAL=(0.2 0.9)
    declare -A PRE_STEPS=([dino]=2 [mae]=2 [clip]=2 [dae]=2 [random]=0)
    FEATURES_METHOD=mae
    ;;
  *) echo "unknown scale $scale (cpu, gpu or test)" >&2; exit 2 ;;
esac
[[ " $LAMBDAS " == *" $DEFAULT_LAM "* ]] || { echo "DEFAULT_LAM $DEFAULT_LAM is not in LAMBDAS" >&2; exit 2; }
mkdir -p "$RUNS/logs"

# run NAME DONE CMD...: skip when DONE exists (a training run's log.jsonl: when it logged "done", not
# a --max-minutes stop), else run it with a log, at most JOBS at once.
finished() { [[ -e $1 ]] && { [[ $1 != *log.jsonl ]] || grep -q '"event": "done"' "$1"; }; }
run() {
  local name=$1 done_file=$2; shift 2
  if finished "$done_file"; then echo "skip  $name (done: $done_file)"; return; fi
  while (( $(jobs -rp | wc -l) >= JOBS )); do wait -n || true; done  # finish() collects statuses
  echo "start $name -> $RUNS/logs/$name.log ($(date +%H:%M:%S))"
  ( t0=$SECONDS; "$@" >"$RUNS/logs/$name.log" 2>&1 && echo "done  $name in $(( (SECONDS - t0) / 60 )) min $(( (SECONDS - t0) % 60 )) s" \
      || { echo "FAIL  $name (see $RUNS/logs/$name.log)"; exit 1; } ) &
  PIDS+=($!)
}
# finish: wait for every step started since the last finish; stop the recipe if any failed (bash keeps
# the status of a finished child for `wait PID`, also one that `wait -n` already reaped).
PIDS=()
STAGE_T0=$SECONDS
finish() {
  local failed=0
  for p in "${PIDS[@]}"; do wait "$p" || failed=1; done
  PIDS=()
  (( failed == 0 )) || { echo "stopping: a step failed" >&2; exit 1; }
  echo "stage finished in $(( (SECONDS - STAGE_T0) / 60 )) min (recipe so far: $(( SECONDS / 60 )) min)"
  STAGE_T0=$SECONDS
}
stop_after() { [[ $STAGE == "$1" ]] && { echo "stopped after $1 (STAGE=$1)"; exit 0; }; return 0; }
tok() { echo "$RUNS/tok-$1-lam$2"; }
gen() { echo "$RUNS/gen-$1-lam$2"; }
# The default model: its own stage A run when its preset differs from the ablations', else the ablation
# run on the main backbone at the default λ.
if [[ "${MAIN_TOK[*]}" != "${TOK[*]}" ]]; then
  OWN_MAIN=1 MAIN_TOK_RUN=$RUNS/tok-main
else
  OWN_MAIN=0 MAIN_TOK_RUN=$(tok "$MAIN" "$DEFAULT_LAM") MAIN_GEN_RUN=$(gen "$MAIN" "$DEFAULT_LAM")
fi

# The runs: the λ sweep on the main backbone, the other backbones at the default λ.
BACKBONES=(random clip mae dino dae)
PAIRS=()
for lam in $LAMBDAS; do PAIRS+=("$MAIN:$lam"); done
for b in "${BACKBONES[@]}"; do [[ $b == "$MAIN" ]] || PAIRS+=("$b:$DEFAULT_LAM"); done
# The fine-tuned decoder, the same latents; every stage-A run encodes the training images with the VAE
# (and, at 0 < λ < inf, its backbone's original tokens): kept once in a cache for the runs after it.
SPACE=(--space vae --vae "$RUNS/vae-decoder/vae" --cache-dir "$RUNS/stage-a-cache")

# 1. The latent space and the backbones, one stage on JOBS lanes: the VAE then its decoder fine-tuned on
#    whole images on one lane (the VAE trains on 32 px crops and decodes whole images far worse than
#    crops until then: see train_vae.py), the main backbone beside it (the two that the default model's
#    stage A needs, so they start first), then the other backbones and a separate feature network for
#    the Fréchet distances (another seed: none of the compared backbones measures itself), in the
#    order that ends both lanes together at the cpu scale's measured times (one core each, session 21:
#    VAE 22 + its decoder 7.75, DAE 21, CLIP 6, DINO 7, MAE 8, feature network 6.5 min: about 40.5 min,
#    where sessions 19-21 ran them as two stages, 22 + 21 min at the same rates).
latent_space() {
  finished "$RUNS/vae/log.jsonl" || python train/train_vae.py "${VAE[@]}" --data "$DATA" --out "$RUNS/vae" \
    --resume "${EXTRA[@]}" || return 1
  python train/train_vae.py "${VAE_DECODER[@]}" --finetune-decoder "$RUNS/vae/vae" --data "$DATA" \
    --out "$RUNS/vae-decoder" --resume "${EXTRA[@]}"
}
run latent-space "$RUNS/vae-decoder/log.jsonl" latent_space
backbone() {
  local b=$1 done_file=$RUNS/backbones/$1/log.jsonl
  [[ $b == random ]] && done_file=$RUNS/backbones/$b/backbone.safetensors  # trains nothing
  run "backbone-$b" "$done_file" \
    python train/pretrain_backbone.py --method "$b" "${PRE[@]}" --steps "${PRE_STEPS[$b]}" \
    --data "$DATA" --out "$RUNS/backbones/$b" --resume "${EXTRA[@]}"
}
backbone "$MAIN"
for b in clip dino mae features dae random; do  # every backbone of BACKBONES
  if [[ $b == features ]]; then
    run features "$RUNS/features/log.jsonl" \
      python train/pretrain_backbone.py --method "$FEATURES_METHOD" "${PRE[@]}" \
      --steps "${PRE_STEPS[$FEATURES_METHOD]}" --seed 1 --data "$DATA" --out "$RUNS/features" --resume "${EXTRA[@]}"
  elif [[ $b != "$MAIN" ]]; then
    backbone "$b"
  fi
done
finish; stop_after backbones

# 2. The default model's own stage A, the recipe's longest step, alone on every core: one process on
#    both cores runs as many stage-A steps as two one-core lanes together (62.5 against 33 + 33
#    images/s, session 13), so beside other steps it would take twice as long and leave a lane idle.
ALL_THREADS=$((JOBS * ${OMP_NUM_THREADS:-1}))
if (( OWN_MAIN )); then
  run tok-main "$MAIN_TOK_RUN/log.jsonl" \
    env OMP_NUM_THREADS="$ALL_THREADS" python train/train_tokenizer.py "${MAIN_TOK[@]}" --data "$DATA" \
    --backbone "$RUNS/backbones/$MAIN" "${SPACE[@]}" --lam "$DEFAULT_LAM" --out "$MAIN_TOK_RUN" \
    --resume "${EXTRA[@]}"
  finish
fi

# 3. The ablation rows, each a chain on one lane: its stage A ([cls] embedding + decoder), then its class
#    generator (stage B; each row's gFD needs one); with STAGE=tokenizers, stage A only. Beside them the
#    default model's two generators, one after the other on one lane: the text generator from the
#    tokenizer, then the class generator from its output (a tokenizer folder keeps the generator it
#    has). Neither depends on the other (each trains on the same cached tokens), so this order makes the
#    same model as class-then-text. As one pool of jobs the lanes end within a row of each other;
#    the run of sessions 21-22 still had the rows' class generators as a stage after all the stage As.
MAIN_RUN=$RUNS/main  # the default model with both generators: what export takes
MAIN_TEXT_RUN=$RUNS/text-main
text_generator() {  # THREADS TOKENIZER_RUN OUT_RUN
  finished "$3/log.jsonl" && { echo "skip  main-text (done: $3/log.jsonl)"; return; }
  env OMP_NUM_THREADS="$1" python train/train_generator.py "${MAIN_TEXT[@]}" --data "$DATA" \
    --tokenizer "$2/model" --cond text --out "$3" --resume "${EXTRA[@]}"
}
main_generators() {
  text_generator "$1" "$MAIN_TOK_RUN" "$MAIN_TEXT_RUN" || return 1
  env OMP_NUM_THREADS="$1" python train/train_generator.py "${MAIN_GEN[@]}" --data "$DATA" \
    --tokenizer "$MAIN_TEXT_RUN/model" --cond class --label subcategory --out "$MAIN_RUN" --resume "${EXTRA[@]}"
}
(( OWN_MAIN )) && run main-generators "$MAIN_RUN/log.jsonl" main_generators "${OMP_NUM_THREADS:-1}"
row() {  # BACKBONE LAM
  local b=$1 lam=$2
  finished "$(tok "$b" "$lam")/log.jsonl" || python train/train_tokenizer.py "${TOK[@]}" --data "$DATA" \
    --backbone "$RUNS/backbones/$b" "${SPACE[@]}" --lam "$lam" --out "$(tok "$b" "$lam")" --resume "${EXTRA[@]}" \
    || return 1
  [[ $STAGE == tokenizers ]] && return 0
  python train/train_generator.py "${GEN[@]}" --data "$DATA" --tokenizer "$(tok "$b" "$lam")/model" \
    --cond class --label subcategory --out "$(gen "$b" "$lam")" --resume "${EXTRA[@]}"
}
for pair in "${PAIRS[@]}"; do
  b=${pair%%:*} lam=${pair##*:}
  row_done=$(gen "$b" "$lam")/log.jsonl
  [[ $STAGE == tokenizers ]] && row_done=$(tok "$b" "$lam")/log.jsonl
  run "row-$b-lam$lam" "$row_done" row "$b" "$lam"
done
SEED_TWIN=$(tok "$MAIN" "$DEFAULT_LAM")-seed1  # stage A only: its reconstructions give the noise band
run "tok-$MAIN-lam$DEFAULT_LAM-seed1" "$SEED_TWIN/log.jsonl" \
  python train/train_tokenizer.py "${TOK[@]}" --data "$DATA" --backbone "$RUNS/backbones/$MAIN" \
  "${SPACE[@]}" --lam "$DEFAULT_LAM" --seed 1 --out "$SEED_TWIN" --resume "${EXTRA[@]}"
finish
stop_after tokenizers

# 4. Where the default model is an ablation row (no run of its own), its text generator on every core.
if (( ! OWN_MAIN )); then
  run main-text "$MAIN_RUN/log.jsonl" text_generator "$ALL_THREADS" "$MAIN_GEN_RUN" "$MAIN_RUN"
  finish
fi
stop_after generators

# 5. Export for evaluation: fp16 weights (each backbone once) with every generator, and the feature
#    network. The main model first (the app's default), then every ablation row (with its own run on
#    the main backbone at the default λ, when the default model had a longer one).
EXPORT=(--model "reptok-emoji=$MAIN_RUN/model")
for pair in "${PAIRS[@]}"; do
  b=${pair%%:*} lam=${pair##*:}
  [[ $OWN_MAIN == 0 && $b == "$MAIN" && $lam == "$DEFAULT_LAM" ]] && continue
  EXPORT+=(--model "$b-lam$lam=$(gen "$b" "$lam")/model")
done
run export "$RUNS/export/features/config.json" \
  python train/export.py "${EXPORT[@]}" --features "$RUNS/features" --data "$DATA" --no-manifold \
  --out "$RUNS/export" --decode-steps "$SHIP_STEPS" --decode-temperature "$SHIP_TAU" \
  --decode-shift "$SHIP_SHIFT" --cfg-scale "$SHIP_CFG" --generate-temperature "$SHIP_GEN_T" \
  --cfg-interval "${SHIP_CFG_INTERVAL[@]}" --text-cfg-interval "${SHIP_TEXT_CFG_INTERVAL[@]}"
finish; stop_after export

# 6. Evaluate what ships, on the held-out split: metrics.json next to each exported model's weights,
#    so the model card's numbers are re-measured from the exported files alone. The seed twin (not
#    shipped) is evaluated from its run folder: its reconstruction metrics give the noise band.
[[ -f $UNSEEN ]] && EVAL+=(--unseen-data "$UNSEEN")
EVAL+=(--cache-dir "$RUNS/eval-cache")  # the class probe's bank of training features, computed once
# The default model first: it has both generators, so its evaluation is the longest (6 min against the
# rows' 4 in sessions 19-20, where it came last and left a lane idle).
MODELS=("$RUNS/export/models/reptok-emoji")
for model in "$RUNS"/export/models/*/; do [[ $model == */reptok-emoji/ ]] || MODELS+=("${model%/}"); done
for model in "${MODELS[@]}"; do
  run "eval-$(basename "$model")" "$model/metrics.json" \
    python train/evaluate.py --model "$model" --data "$DATA" --features "$RUNS/export/features" \
    --label subcategory "${EVAL[@]}"
done
run "eval-seed1" "$SEED_TWIN/model/metrics.json" \
  python train/evaluate.py --model "$SEED_TWIN/model" --data "$DATA" --features "$RUNS/export/features" \
  --label subcategory --steps "$SHIP_STEPS" --temperature "$SHIP_TAU" --shift "$SHIP_SHIFT" \
  --cfg-scale "$SHIP_CFG" --generate-temperature "$SHIP_GEN_T" --cfg-interval "${SHIP_CFG_INTERVAL[@]}" \
  --text-cfg-interval "${SHIP_TEXT_CFG_INTERVAL[@]}" "${EVAL[@]}"  # as the exported rows
finish

# 7. What ships: the main model whole; every ablation row as its tokenizer alone (the app only
#    reconstructs with them, and assets/ stays under 200 MB), with the metrics.json measured above
#    with its class generator; the feature network; the manifold of the main backbone's λ settings.
SHIP=(--model "reptok-emoji=$RUNS/export/models/reptok-emoji") ONLY=()
for model in "$RUNS"/export/models/*/; do
  name=$(basename "$model")
  [[ $name == reptok-emoji ]] || SHIP+=(--model "$name=${model%/}") ONLY+=(--tokenizer-only "$name")
done
run ship "$RUNS/ship/manifold.npz" \
  python train/export.py "${SHIP[@]}" "${ONLY[@]}" --features "$RUNS/features" --data "$DATA" --out "$RUNS/ship"
finish
python train/ablation_tables.py "$RUNS/ship" --seed-twin "$SEED_TWIN/model/metrics.json"
echo "done: bash train/reproduce.sh $scale -> $RUNS/ship (copy it over assets/ to ship it)"
