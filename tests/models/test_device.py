"""Device and dtype options: parsing, clear errors (a missing GPU included), uploads and step timing on the CPU."""

import time

import pytest
import torch
from typer.testing import CliRunner

from edgespec.models.device import (
    DeviceError, StepClock, device_options, resolve_device, resolve_dtype, timed_s, upload,
)

no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without a GPU")


def test_devices_and_dtypes_parse():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_dtype("bfloat16") is torch.bfloat16 and resolve_dtype("fp16") is torch.float16
    assert resolve_dtype(torch.float32) is torch.float32
    opts = device_options("cpu", "bf16")
    assert (opts.device.type, opts.dtype, opts.cuda_graphs) == ("cpu", torch.bfloat16, False)


@pytest.mark.parametrize("device,needle", [("tpu", "unknown device"), ("meta", "unsupported device"), ("", "unknown device")])
def test_unknown_devices_are_refused(device, needle):
    with pytest.raises(DeviceError, match=needle):
        resolve_device(device)


@no_gpu
def test_cuda_without_a_gpu_is_refused_in_one_line():
    with pytest.raises(DeviceError, match="torch sees no CUDA GPU") as info:
        device_options("cuda", "float32")
    assert str(info.value).startswith("--device: ") and "\n" not in str(info.value)


def test_bad_dtype_and_graphs_without_cuda_name_their_option():
    with pytest.raises(DeviceError, match="^--dtype: unknown dtype 'int8'"):
        device_options("cpu", "int8")
    with pytest.raises(DeviceError, match="^--cuda-graphs: "):
        device_options("cpu", "float32", cuda_graphs=True)


def test_upload_is_the_tensor_itself_on_the_cpu_and_timing_measures():
    t = torch.arange(4)
    assert upload(t, torch.device("cpu")) is t
    assert timed_s(lambda: time.sleep(0.01), torch.device("cpu")) >= 0.009
    clock = StepClock(torch.device("cpu"))
    time.sleep(0.01)
    clock.stop()
    assert 0.009 <= clock.seconds() < 5


runner = CliRunner()


@no_gpu
@pytest.mark.parametrize("command", [
    ["generate", "--prompt", "w3"],
    ["bench", "sd-vs-ad"],
    ["profile", "--out", "PROFILE"],
    ["serve", "--port", "0"],
])
@pytest.mark.parametrize("options,needle", [
    (["--device", "cuda"], "--device: device 'cuda' asked for, but torch sees no CUDA GPU"),
    (["--dtype", "int4"], "--dtype: unknown dtype 'int4'"),
    (["--device", "cpu", "--cuda-graphs"], "--cuda-graphs: CUDA graphs need a CUDA device"),
    (["--cuda-graphs", "--no-cuda-graphs"], "--cuda-graphs: give --cuda-graphs or --no-cuda-graphs, not both"),
])
def test_commands_refuse_unusable_device_options_with_exit_2(tmp_path, command, options, needle):
    from edgespec.cli import app

    args = [str(tmp_path / "p.json") if a == "PROFILE" else a for a in command]
    res = runner.invoke(app, [*args, *options])
    assert res.exit_code == 2, res.output
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0], res.output
