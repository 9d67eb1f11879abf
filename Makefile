# roadseg: every entry point a user types. `make demo` sets up and runs the main job; `make test` the tests.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
DATA ?= ../shared/data/kitti_road
VIDEO ?= ../shared/data/kitti_raw/2011_09_26_drive_0001_image_02.mp4
SOURCE ?= $(VIDEO)
CHECKPOINT ?= models/fcn8s_efficientnet_lite0.pt
BUILD ?= build
CONFIG ?= cpu
STAMP := $(VENV)/.roadseg-installed

.PHONY: setup setup-runtime setup-rtx setup-openvino setup-fleet test lint train eval export calibrate engine stream demo bench bench-cameras pipeline clean

## setup: the full development environment (torch pinned, CPU onnxruntime, test tools) in $(VENV)
setup: $(STAMP)
$(STAMP): requirements/train.txt requirements/onnx.txt requirements/runtime.txt requirements/runtime-cpu.txt requirements/dev.txt pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -r requirements/train.txt -r requirements/runtime.txt \
		-r requirements/runtime-cpu.txt -r requirements/dev.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $@

## setup-runtime: a slim runtime-only environment (numpy, OpenCV, onnxruntime; no torch) in .venv-runtime
## (OPENVINO=1 adds the optional OpenVINO CPU backend)
setup-runtime:
	test -x .venv-runtime/bin/python || python3 -m venv .venv-runtime
	.venv-runtime/bin/python -m pip install -q -r requirements/runtime.txt -r requirements/runtime-cpu.txt \
		$(if $(OPENVINO),-r requirements/runtime-openvino.txt)

## setup-openvino: add the optional OpenVINO CPU backend to $(VENV); `--backend auto` then measures it
OPENVINO_STAMP := $(VENV)/.roadseg-openvino-installed
setup-openvino: $(OPENVINO_STAMP)
$(OPENVINO_STAMP): requirements/runtime-openvino.txt | setup
	$(PY) -m pip install -q -r requirements/runtime-openvino.txt
	touch $@

## setup-fleet: Ray Data + Ray Serve (requirements/fleet.txt) into $(VENV) for fleet/ (docs/fleet.md)
FLEET_STAMP := $(VENV)/.roadseg-fleet-installed
setup-fleet: $(FLEET_STAMP)
$(FLEET_STAMP): requirements/fleet.txt | setup
	$(PY) -m pip install -q -r requirements/fleet.txt
	touch $@

## setup-rtx: NVIDIA TensorRT-RTX into $(VENV) with numpy, OpenCV and onnx (no torch): builds real engines
## without a GPU, from models/ when there is no torch (pinned; ~100 MB)
RTX_STAMP := $(VENV)/.roadseg-rtx-installed
setup-rtx: $(RTX_STAMP)
$(RTX_STAMP): requirements/tensorrt-rtx.txt requirements/tensorrt-rtx-module.txt requirements/runtime.txt \
		requirements/onnx.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -r requirements/tensorrt-rtx.txt
	# The module is an sdist whose declared dependencies live on NVIDIA's index: the wheels above are them.
	$(PY) -m pip install -q --no-deps --no-build-isolation -r requirements/tensorrt-rtx-module.txt
	$(PY) -c "import tensorrt_rtx; print('TensorRT-RTX', tensorrt_rtx.__version__)"
	touch $@

## test: the whole test suite (sets up first, with the optional OpenVINO and TensorRT-RTX backends its tests use)
test: setup setup-openvino setup-rtx setup-fleet
	$(PY) -m pytest -q

## lint: ruff
lint: setup
	$(VENV)/bin/ruff check .

## train: train CONFIG (cpu|lite0|full|smoke) on DATA into runs/train/CONFIG
TRAIN_ARGS ?=
train: setup
	$(PY) -m train --config $(CONFIG) --data $(DATA) $(TRAIN_ARGS)

## eval: KITTI report-block metrics of CHECKPOINT (.pt, .onnx or engine): provenance, spread, PR curve, worst images
EVAL_SPLIT ?= report
WORST ?= 12
eval: setup
	$(PY) -m train.evaluate --model $(CHECKPOINT) --data $(DATA) --split $(EVAL_SPLIT) \
		--json runs/eval/metrics.json --pr-curve runs/eval/pr_curve.png --worst $(WORST) runs/eval/worst

## bench: latency + accuracy of every backend/precision here -> runs/bench/latest.{json,md,png} (QUICK=1: < 5 min once its ONNX files are cached; the first run makes them)
SIZES ?= 160x576,256x832,384x1248
bench: setup
	$(PY) -m bench --checkpoint $(CHECKPOINT) --build $(BUILD) --data $(DATA) --video $(VIDEO) \
		$(if $(QUICK),--quick,--sizes $(SIZES))

# stream/bench-stream: MODEL= picks a model (default: the best in build/ for this machine, exported first when
# build/ has none); STREAM_ARGS= adds runtime/stream.py options (--headless, --output out.mp4, --view ...).
STREAM_ARGS ?=
SOAK_FRAMES ?= 10000
STREAM_MODEL = $(if $(MODEL),--model $(MODEL))
STREAM_NEEDS = $(if $(MODEL)$(wildcard $(BUILD)/*.onnx $(BUILD)/*.engine $(BUILD)/*.plan),,export)

## stream: stream SOURCE (file, folder, glob, URL, camera:N; several in one batch) with a window when there is a display
.PHONY: bench-stream bench-cameras
stream: setup $(STREAM_NEEDS)
	$(PY) runtime/stream.py $(SOURCE) $(STREAM_MODEL) $(STREAM_ARGS)

## bench-stream: the runtime's floors on CPU: overhead <= 10 %, latency targets (e2e p50 <= 1.15x inference with mp4, 1.10x without), live >= 95 %, soak
bench-stream: setup $(STREAM_NEEDS)
	$(PY) -m bench.stream $(STREAM_MODEL) --frames $(SOAK_FRAMES) --json runs/bench_stream.json

## bench-cameras: CAMERAS (default 1,2,4,8) cameras batched into one model against the single-camera loop and
## inference alone: total and per-camera FPS, frame age, batch sizes, the multi-camera targets
CAMERAS ?= 1,2,4,8
bench-cameras: setup $(STREAM_NEEDS)
	$(PY) -m bench.multicam $(STREAM_MODEL) --cameras $(CAMERAS) --json runs/bench_cameras.json

# export/calibrate/engine: each stage reruns only when its inputs changed (file dependencies here, content
# hashes and the engine's cache key inside the Python stages).
PRECISION ?= fp16
# Every module the export stage imports (runtime/, kitti/, train/ and export/ itself): a change to any of them can
# change the ONNX, so none may leave a stale one in place. Calibration follows through model.fp32.onnx.
EXPORT_SRC := $(wildcard export/*.py kitti/*.py train/*.py runtime/*.py)
CALIBRATION_SRC := $(wildcard calibration/*.py)

## export: CHECKPOINT -> BUILD/model.fp32.onnx + model.fp16.onnx, behind the parity and accuracy gates
export: $(BUILD)/model.fp32.onnx
$(BUILD)/model.fp32.onnx: $(wildcard $(CHECKPOINT)) $(EXPORT_SRC) | setup
	$(PY) -m export --checkpoint $(CHECKPOINT) --build $(BUILD) --data $(DATA)

## calibrate: calibration set, INT8 Q/DQ per method (entropy, percentile, minmax), best kept, accuracy table
calibrate: $(BUILD)/model.int8.onnx
$(BUILD)/model.int8.onnx: $(BUILD)/model.fp32.onnx $(CALIBRATION_SRC) | setup
	$(PY) -m calibration --build $(BUILD) --source $(DATA) --data $(DATA)

## engine: checkpoint -> ONNX -> calibration -> BUILD/model.PRECISION.engine (TensorRT + a CUDA GPU, or
## TensorRT-RTX with or without a GPU: `make setup-rtx`); BATCH=M: up to M frames a call (M cameras batched)
BATCH ?= 1
# With torch in $(VENV): the full chain from the checkpoint. Without (make setup-rtx alone, or a device): the
# checkpoint's shipped ONNX files in models/ (export/shipped.py checks they belong to it).
HAVE_TORCH := $(shell test -x $(PY) && $(PY) -c "import importlib.util as u, sys; sys.exit(u.find_spec('torch') is None)" 2>/dev/null && echo yes)
engine: $(if $(HAVE_TORCH),calibrate)
	$(PY) -m engine --precision $(PRECISION) --batch $(BATCH) --build $(BUILD) --checkpoint $(CHECKPOINT) --data $(DATA)

## demo: stream SOURCE headless through the best model (build/, else the INT8 shipped in models/) -> runs/demo/;
## needs only the slim runtime (.venv-runtime: numpy, OpenCV, onnxruntime; no torch)
demo: setup-runtime
	.venv-runtime/bin/python -m runtime.demo $(SOURCE) --out runs/demo

# pipeline: every stage handing the next exactly what it needs, in a reduced CPU configuration.
PIPELINE ?= runs/pipeline
PIPELINE_TRAIN ?= --config cpu --epochs 4 --max-steps-per-epoch 20
## pipeline: train (minutes) -> export -> calibrate -> engine (skipped without TensorRT) -> stream -> bench
pipeline: setup
	$(PY) -m train $(PIPELINE_TRAIN) --data $(DATA) --output-dir $(PIPELINE)/train --no-progress
	$(MAKE) --no-print-directory calibrate CHECKPOINT=$(PIPELINE)/train/best.pt BUILD=$(PIPELINE)/build
	$(PY) -m engine --precision int8 --build $(PIPELINE)/build --checkpoint $(PIPELINE)/train/best.pt \
		--data $(DATA) || { code=$$?; [ $$code -eq 3 ] && echo "pipeline: engine skipped (no TensorRT/CUDA here)"; \
		[ $$code -eq 3 ]; }
	$(PY) runtime/stream.py $(VIDEO) --model $(PIPELINE)/build/model.int8_cpu.onnx --headless --quiet \
		--output $(PIPELINE)/stream.mp4 --save-masks $(PIPELINE)/masks --stats-json $(PIPELINE)/stream.json
	$(PY) -m bench --quick --no-full --checkpoint $(PIPELINE)/train/best.pt --build $(PIPELINE)/build \
		--data $(DATA) --video $(VIDEO) --out $(PIPELINE)/bench
	@echo "pipeline: every stage ran; outputs in $(PIPELINE)/"

## clean: remove build/ and runs/ (never models/)
clean:
	rm -rf $(BUILD) runs
