"""The TensorRT backend's sampler (the shared ring routing, one captured solver step per
shape and ring parity, recapture after a shape change, capture failure) on an emulated device, against the
independent plain-loop oracle: no TensorRT or GPU needed, so CI checks its control flow.

The fakes keep device memory in one byte array addressed like real pointers. Each fake
engine runs the exported fp32 ONNX graph of the tiny bundle (ONNX Runtime, CPU) on the
tensors at the addresses it is given, so what is checked is the backend's own work: the
buffers, the routing between stages, the capture and replay. "Capture" records the engine
runs and copies instead of executing them, as stream capture does; a launch replays them.
"""

import numpy as np
import pytest
from sampler_oracle import CASE_IDS, CASES, case_inputs, oracle_sample, rel_err

from v2m.core.errors import BackendUnavailable
from v2m.runtime import sampler
from v2m.runtime.backends import trt_backend as tb

ort = pytest.importorskip("onnxruntime")

_NP = {"float32": np.float32, "float16": np.float16, "int64": np.int64}


class FakeCuda:
    def __init__(self, fail_capture=False):
        self.mem = np.zeros(1 << 24, dtype=np.uint8)
        self.top = 256
        self.capturing = None
        self.fail_capture = fail_capture
        self.launches = self.captures = self.destroyed = self.copies = 0
        self.freed = []

    def malloc(self, nbytes):
        ptr, self.top = self.top, self.top + -(-max(int(nbytes), 256) // 256) * 256
        assert self.top < self.mem.size, "fake device memory exhausted"
        return ptr

    def free(self, ptr):
        self.freed.append(ptr)

    def view(self, ptr, shape, dtype=np.float32):
        n = int(np.prod(shape)) * np.dtype(dtype).itemsize
        return self.mem[ptr : ptr + n].view(dtype).reshape(shape)

    def upload(self, ptr, a):
        a = np.ascontiguousarray(a)
        self.mem[ptr : ptr + a.nbytes] = a.view(np.uint8).reshape(-1)

    def download(self, ptr, shape, dtype=np.float32):
        return self.view(ptr, shape, dtype).copy()

    def _do(self, op):
        if self.capturing is not None:
            self.capturing.append(op)
        else:
            op()

    def copy(self, dst, src, nbytes):
        self.copies += 1

        def op():
            self.mem[dst : dst + nbytes] = self.mem[src : src + nbytes].copy()

        self._do(op)

    def sync(self):
        pass

    def capture(self, enqueue):
        if self.fail_capture:
            raise BackendUnavailable("CUDA error cudaErrorStreamCaptureUnsupported")
        self.capturing = []
        enqueue()
        graph, self.capturing = self.capturing, None
        self.captures += 1
        return graph

    def launch(self, graph):
        self.launches += 1
        for op in graph:
            op()

    def destroy(self, graph):
        self.destroyed += 1


class FakeEngine:
    """An exported graph run by ONNX Runtime on the fake device's memory."""

    def __init__(self, cuda, graph_path, info):
        self.cuda, self.name = cuda, info.name
        self.sess = ort.InferenceSession(str(graph_path), providers=["CPUExecutionProvider"])
        self.inputs, self.outputs = info.input_names, info.output_names
        self.max_shapes = {k: v[2] for k, v in info.profile_shapes().items()}
        self.dtypes = {t["name"]: t["dtype"] for t in (*info.inputs, *info.outputs)}
        self.shapes, self.runs, self.shape_changes = {}, 0, 0
        self._last_out = {}

    def set_shapes(self, shapes):
        for k, v in shapes.items():
            assert all(s <= m for s, m in zip(v, self.max_shapes[k])), (k, v)
            if self.shapes.get(k) != tuple(v):
                self.shape_changes += 1
        self.shapes.update({k: tuple(v) for k, v in shapes.items()})

    def output_shape(self, name):
        feeds = {k: np.zeros(self.shapes[k], _NP[self.dtypes[k]]) for k in self.inputs}
        return self.sess.run([name], feeds)[0].shape

    def run(self, addresses):
        addr = dict(addresses)
        assert set(addr) == {*self.inputs, *self.outputs}
        assert not {addr[k] for k in self.inputs} & {addr[k] for k in self.outputs}, "an output aliases an input"

        def op():
            self.runs += 1
            feeds = {k: self.cuda.view(addr[k], self.shapes[k], _NP[self.dtypes[k]]).copy() for k in self.inputs}
            for name, value in zip(self.outputs, self.sess.run(self.outputs, feeds)):
                self.cuda.upload(addr[name], np.ascontiguousarray(value, dtype=_NP[self.dtypes[name]]))

        self.cuda._do(op)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from v2m.export.exporter import export_bundle
    from v2m.models.bundle import init_bundle

    d = tmp_path_factory.mktemp("trt_loop")
    src = init_bundle("tiny", d / "bundle", seed=0)
    export_bundle(src, d / "exported", check=False)
    return src, d / "exported"


def make_backend(exported, fail_capture=False, graphs=True, max_shapes=2):
    from v2m.core.bundle import load_config
    from v2m.core.manifest import load_manifest

    _, out = exported
    man = load_manifest(out)
    be = object.__new__(tb.TensorRTBackend)
    be.cfg, be.device, be.precision = load_config(out), "cuda:0", "fp32"
    cuda = FakeCuda(fail_capture)
    from v2m.runtime.backends.base import runtime_graphs

    engines = {n: FakeEngine(cuda, man.graph_path(n), man.graph(n)) for n in runtime_graphs(be.cfg)}
    be._setup(engines, cuda, graphs, max_shapes)
    return be


@pytest.fixture(scope="module")
def oracle_dit(exported):
    from v2m.models.bundle import load_component

    return load_component(exported[0], "dit")


def _plan(opts, cond):
    return sampler.Plan.make(sampler.SamplerOptions(**opts), True, cond.has_negative)


@pytest.mark.parametrize("case", CASES[:4] + CASES[6:], ids=CASE_IDS[:4] + CASE_IDS[6:])
@pytest.mark.parametrize("graphs", [True, False], ids=["graph", "enqueue"])
def test_loop_matches_oracle(exported, oracle_dit, case, graphs):
    be = make_backend(exported, graphs=graphs)
    noise, cond, oracle_kw, opts = case_inputs(be.cfg, case, b=2, length=13)
    seen = []
    got = be.sample(noise, cond, _plan(opts, cond), seen.append)
    ref = oracle_sample(oracle_dit, noise, cond.curve, cond.text, cond.text_mask, **oracle_kw)
    assert rel_err(got, ref) <= 1e-4, rel_err(got, ref)
    assert seen == list(range(opts["steps"]))
    stages = 2 if case["solver"] == "heun" else 1
    assert be.engines["step"].runs == opts["steps"] * stages + (stages if graphs else 0)  # + the warm-up step
    assert be.cuda.captures == (2 if graphs else 0) and be.cuda.launches == (opts["steps"] if graphs else 0)
    assert be.cuda.copies == 0  # the ring routes the state: no device-to-device copy


def test_step_names_nothing_makes_are_one_line(exported):
    from v2m.core.errors import BundleError
    from v2m.runtime.backends.engine_sampler import StageRing, step_bindings

    with pytest.raises(BundleError, match="takes \\['mystery'\\]"):
        step_bindings(StageRing(1), ["x", "mystery"], ["x_out", "d", "k_next"], {}, {}, "step engine")


def test_one_graph_reused_then_recaptured_after_a_shape_change(exported):
    be = make_backend(exported)
    noise, cond, _, opts = case_inputs(be.cfg, dict(solver="heun", shift=1.0), b=1, length=11)
    plan = _plan(opts, cond)
    x1 = be.sample(noise, cond, plan)
    x2 = be.sample(noise, cond, plan)
    assert np.array_equal(x1, x2) and be.cuda.captures == 2 and be.cuda.launches == 2 * opts["steps"]
    short = case_inputs(be.cfg, dict(solver="heun", shift=1.0), b=1, length=7, seed=1)
    be.sample(short[0], short[1], plan)  # another shape: the first shape's graphs (even, odd) are dropped
    assert be.cuda.destroyed == 2 and be.cuda.captures == 4
    x4 = be.sample(noise, cond, plan)  # back: recaptured (TensorRT's rule), same answer
    assert np.array_equal(x1, x4) and be.cuda.captures == 6


def test_capture_failure_falls_back_with_a_warning(exported, oracle_dit, caplog):
    be = make_backend(exported, fail_capture=True)
    noise, cond, oracle_kw, opts = case_inputs(be.cfg, CASES[1], b=1, length=9)
    got = be.sample(noise, cond, _plan(opts, cond))
    ref = oracle_sample(oracle_dit, noise, cond.curve, cond.text, cond.text_mask, **oracle_kw)
    assert rel_err(got, ref) <= 1e-4
    assert not be.cuda_graphs and "capture failed" in caplog.text


def test_lru_frees_buffers(exported):
    be = make_backend(exported, max_shapes=2)
    for n in (8, 7, 6):
        noise, cond, _, opts = case_inputs(be.cfg, CASES[0], b=1, length=n)
        be.sample(noise, cond, _plan(opts, cond))
    assert len(be._shapes) == 2 and len(be.cuda.freed) > 10  # the oldest shape's buffers


def test_batch_beyond_the_profile_is_refused(exported):
    be = make_backend(exported)
    assert be.max_batch(2) == 4 and be.max_batch(3) == 4
    noise, cond, _, opts = case_inputs(be.cfg, CASES[0], b=5, length=6)
    with pytest.raises(Exception, match="exceed the engine's profile"):
        be.sample(noise, cond, _plan(opts, cond))


def test_encode_and_decode_through_engines(exported):
    """encoder and VAE engines: host in, host out, per-call buffers freed."""
    from v2m.models.bundle import load_component

    be = make_backend(exported)
    z = np.random.default_rng(0).standard_normal((1, be.cfg.latent_channels, 5)).astype(np.float32)
    import torch

    with torch.no_grad():
        ref = load_component(exported[0], "vae")(torch.from_numpy(z)).numpy()
    np.testing.assert_allclose(be.decode(z), ref, atol=1e-3)
    freed = len(be.cuda.freed)
    px = np.random.default_rng(1).standard_normal((3, 3, be.cfg.image_size, be.cfg.image_size)).astype(np.float32)
    assert be.encode_frames(px).shape == (3, be.cfg.feature_dim)
    assert len(be.cuda.freed) == freed + 2
