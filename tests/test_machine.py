"""runtime.machine.nvidia_smi: the one nvidia-smi query the runtime and the benchmark share.

No NVIDIA driver here: a stand-in `nvidia-smi` script on PATH answers the exact queries the real tool gets
(named as a stand-in; anything else it is asked makes it fail, as the real tool does)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

STAND_IN = """#!/bin/sh
case "$*" in
  "--query-gpu=name,driver_version,memory.total --format=csv,noheader,nounits")
    echo "NVIDIA H100 80GB HBM3, 550.54.15, 81559";;
  "--query-gpu=name --format=csv,noheader,nounits")
    echo "NVIDIA H100 80GB HBM3";;
  "--query-compute-apps=pid,used_memory --format=csv,noheader,nounits")
    echo "4242, 1536"; echo "77, 12";;
  *) echo "Invalid combination of input arguments: $*" >&2; exit 2;;
esac
"""


def put_on_path(monkeypatch, folder: Path, script: str) -> None:
    tool = folder / "nvidia-smi"
    tool.write_text(script)
    tool.chmod(tool.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")


def test_stand_in_nvidia_smi_answers_every_caller(monkeypatch, tmp_path: Path):
    from bench.host import nvidia_gpus
    from bench.worker import gpu_memory_mb
    from runtime.backends import OnnxRuntimeBackend
    from runtime.machine import nvidia_smi

    put_on_path(monkeypatch, tmp_path, STAND_IN)
    assert nvidia_smi("gpu", ["name", "driver_version", "memory.total"]) == [
        ["NVIDIA H100 80GB HBM3", "550.54.15", "81559"]]
    assert nvidia_gpus() == [{"name": "NVIDIA H100 80GB HBM3", "driver": "550.54.15", "memory": "81559 MiB"}]
    assert OnnxRuntimeBackend._gpu_name() == "NVIDIA H100 80GB HBM3"
    assert gpu_memory_mb(4242) == 1536.0 and gpu_memory_mb(77) == 12.0 and gpu_memory_mb(5) is None
    assert nvidia_smi("gpu", ["uuid"]) == []  # the stand-in refuses an unknown query, exit 2


@pytest.mark.parametrize("script", [None, "#!/bin/sh\necho 'NVIDIA-SMI has failed because it could not "
                                          "communicate with the NVIDIA driver.'\nexit 9\n"])
def test_no_driver_means_no_gpu(monkeypatch, tmp_path: Path, script: str | None):
    """Without nvidia-smi, or with one that cannot reach a driver (it prints its error on stdout), no GPU."""
    from bench.host import nvidia_gpus
    from bench.worker import gpu_memory_mb
    from runtime.backends import OnnxRuntimeBackend
    from runtime.machine import nvidia_smi

    if script is None:
        monkeypatch.setenv("PATH", str(tmp_path))
    else:
        put_on_path(monkeypatch, tmp_path, script)
    assert nvidia_smi("gpu", ["name"]) == [] and nvidia_gpus() == []
    assert OnnxRuntimeBackend._gpu_name() == "cuda" and gpu_memory_mb() is None


def test_int8_files_made_for_tensorrt_are_flagged_only_on_cpus_without_int8_dot_products(monkeypatch):
    import platform

    import runtime.machine
    from runtime.backend_base import Backend
    from runtime.backends import int8_saturation_warning
    from runtime.contract import CALIBRATION_KEY

    def backend(flavour: str, precision: str = "int8", device: str = "cpu") -> Backend:
        opened = Backend()
        opened.name, opened.precision, opened.device = "onnxruntime", precision, device
        opened.metadata = {CALIBRATION_KEY: json.dumps({"flavour": flavour})}
        return opened

    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(runtime.machine, "cpu_flags", lambda: {"avx2", "fma"})
    assert "m.onnx" in int8_saturation_warning(backend("tensorrt"), "m.onnx")
    assert int8_saturation_warning(backend("cpu-tuned"), "m.onnx") is None
    assert int8_saturation_warning(backend("tensorrt", precision="fp16"), "m.onnx") is None
    assert int8_saturation_warning(backend("tensorrt", device="NVIDIA H100"), "m.onnx") is None
    for flag in ("avx512_vnni", "avx_vnni", "amx_int8"):
        monkeypatch.setattr(runtime.machine, "cpu_flags", lambda flag=flag: {"avx2", flag})
        assert int8_saturation_warning(backend("tensorrt"), "m.onnx") is None
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")  # the 16-bit sums are an x86 path
    monkeypatch.setattr(runtime.machine, "cpu_flags", lambda: {"asimd"})
    assert int8_saturation_warning(backend("tensorrt"), "m.onnx") is None
